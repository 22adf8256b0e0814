"""Recognises a redelivered message so that it never makes a second record downstream.

The broker redelivers what it did not see acknowledged, and a device may resend; both
arrive with the same `seq` (or the same `ts`). Each device keeps its last few keys, or
all those of the latest batch it was in, if more.

The keys are saved with every batch, in the batch's transaction, so that a restart
forgets none. Writing each changed device's whole list every batch cost more than a
tenth of the telemetry's CPU; instead each batch adds only its new keys to a log, and
now and then the lists of the devices changed since are written whole, a slice per
batch, after which the log up to then goes.
"""

from __future__ import annotations

import marshal
from array import array
from collections import Counter
from dataclasses import dataclass

from gateway.decode.record import DeviceRef

# The devices' lists are written whole once the log holds this many keys for each
# device changed since the last time: the log is read back only at a start.
LOG_KEYS_PER_DEVICE = 8
# Lists written whole with one batch, at most: a large fleet's are spread over batches
# rather than holding the outbox's write lock for long.
WHOLE_LISTS_PER_BATCH = 1000

Ident = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SavedKeys:
    """A lane's keys as saved: devices' lists written whole (bytes of 64-bit ints, or
    text from an older version), and the log of keys each batch added since, oldest
    first, as (batch number, keys)."""

    lists: list[tuple[str, str, bytes | str]]
    log: list[tuple[int, bytes]]

    def __bool__(self) -> bool:
        return bool(self.lists or self.log)


@dataclass(frozen=True, slots=True)
class KeysToSave:
    """What one batch adds to the saved keys."""

    batch: int
    # marshal's bytes of [community, device_id, key, community, ...]; None: no new key.
    added: bytes | None
    # Devices' lists, written whole.
    lists: list[tuple[str, str, bytes]]
    # Set when `lists` completes a whole writing: the log through this batch can go.
    log_through: int | None


class RedeliveryFilter:
    def __init__(self, keys_per_device: int = 32) -> None:
        self._keys_per_device = keys_per_device
        # A device's keys as 64-bit ints in an array: a list written whole is its bytes,
        # which cost far less to make and to write than text.
        self._recent: dict[Ident, array[int]] = {}
        # Keys added since the last batch was taken, flat: community, device id, key.
        self._added: list[str | int] = []
        # Devices changed since the last whole writing began, and keys logged since.
        self._dirty: set[Ident] = set()
        self._logged = 0
        # A whole writing under way: devices still to write, and the batch it covers.
        self._writing: list[Ident] = []
        self._writing_through = 0
        self._batch = 0

    def __len__(self) -> int:
        return len(self._recent)

    def is_redelivery(self, device: DeviceRef, key: int) -> bool:
        """True if `key` was seen for this device; otherwise remembers it."""
        ident = (device.community, device.device_id)
        recent = self._recent.get(ident)
        if recent is None:
            recent = self._recent[ident] = array("q")
        elif key in recent:
            return True
        recent.append(key)
        self._dirty.add(ident)
        self._added += ident
        self._added.append(key)
        return False

    def _trim(self, flat: list[str | int]) -> None:
        """Each device in a batch's keys keeps its last few, or all that batch's if it
        had more: a crash after the batch's commit and before its acknowledgement has
        the broker send all of them again."""
        keys_per_device = self._keys_per_device
        recent = self._recent
        for ident, count in Counter(zip(flat[0::3], flat[1::3], strict=True)).items():
            kept = recent[ident]  # type: ignore[index]
            excess = len(kept) - max(keys_per_device, count)
            if excess > 0:
                del kept[:excess]

    def take_changes(self) -> KeysToSave:
        """What to save with the batch just decoded."""
        self._batch += 1
        added = marshal.dumps(self._added) if self._added else None
        self._trim(self._added)
        self._logged += len(self._added) // 3
        self._added = []
        if (
            not self._writing
            and self._dirty
            and (self._logged >= LOG_KEYS_PER_DEVICE * len(self._dirty))
        ):
            self._writing = list(self._dirty)
            self._writing_through = self._batch
            self._dirty = set()
            self._logged = 0
        if not self._writing:
            return KeysToSave(self._batch, added, [], None)
        chunk = self._writing[-WHOLE_LISTS_PER_BATCH:]
        del self._writing[-WHOLE_LISTS_PER_BATCH:]
        recent = self._recent
        lists = [(c, d, recent[(c, d)].tobytes()) for c, d in chunk]
        done = None if self._writing else self._writing_through
        return KeysToSave(self._batch, added, lists, done)

    def restore(self, saved: SavedKeys) -> None:
        for community, device_id, keys in saved.lists:
            if isinstance(keys, str):
                # Saved as text before the keys were kept as bytes.
                kept = array("q", (int(k) for k in keys.split()))
            else:
                kept = array("q", keys)
            self._recent[(community, device_id)] = kept
        for batch, blob in saved.log:
            self._batch = max(self._batch, batch)
            flat = marshal.loads(blob)
            for index in range(0, len(flat), 3):
                ident = (flat[index], flat[index + 1])
                self._replay(ident, flat[index + 2])
            self._trim(flat)

    def _replay(self, ident: Ident, key: int) -> None:
        recent = self._recent.get(ident)
        if recent is None:
            recent = self._recent[ident] = array("q")
        elif key in recent:
            # Already in its list, written whole after this key was logged. (A crash
            # while the lists were being written may leave the log behind a list that
            # has since dropped this key; it comes back as the newest, and one newer key
            # of that device is forgotten.)
            return
        recent.append(key)
        # Its list is written whole before the log goes.
        self._dirty.add(ident)
        self._logged += 1
