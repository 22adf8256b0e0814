"""Recognises a redelivered message so that it never makes a second record downstream.

The broker redelivers what it did not see acknowledged, and a device may resend; both
arrive with the same `seq` (or the same `ts`). Each device keeps its last few keys, or,
if more, all those it had in the last few batches: a connection lost while their
acknowledgements were on their way has the broker send all of them again.

The keys are saved with every batch, in the batch's transaction, so that a restart
forgets none. Writing each changed device's whole list every batch cost more than a
tenth of the telemetry's CPU; instead each batch adds only its new keys to a log, and
now and then the lists of the devices changed since are written whole, a slice per
batch, after which the log up to then goes.
"""

from __future__ import annotations

import marshal
import sys
from array import array
from collections import Counter
from dataclasses import dataclass

from gateway.config import GatewayConfig, IngestConfig, MqttConfig
from gateway.decode.record import DeviceRef

# The devices' lists are written whole once the log holds this many keys for each
# device changed since the last time: the log is read back only at a start.
LOG_KEYS_PER_DEVICE = 8
# Lists written whole with one batch, at most: a large fleet's are spread over batches
# rather than holding the outbox's write lock for long.
WHOLE_LISTS_PER_BATCH = 1000


def unacknowledged_batches(in_flight: int, batch_messages: int) -> int:
    """Full batches the broker's messages in flight to the gateway fill (`in_flight`, up
    to receive_maximum), and two more: all of them are committed, and sent again, when a
    connection is lost unnoticed while a backlog from a few devices drains."""
    return -(-in_flight // batch_messages) + 2


# Batches whose acknowledgements may still be on their way to the broker when the
# connection is lost (a batch is acknowledged as soon as it is committed, every 50 ms or
# so under load): a device keeps all its keys of these. The default config's.
UNACKNOWLEDGED_BATCHES = unacknowledged_batches(
    MqttConfig().receive_maximum, IngestConfig().commit_max_messages
)


Ident = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SavedKeys:
    """A lane's keys as saved: devices' lists written whole (bytes of 64-bit ints, or
    text from an older version) with the batch each was written with, and the log of
    keys each batch added, oldest first, as (batch number, keys)."""

    lists: list[tuple[str, str, bytes | str, int]]
    log: list[tuple[int, bytes]]

    def __bool__(self) -> bool:
        return bool(self.lists or self.log)


@dataclass(frozen=True, slots=True)
class KeysToSave:
    """What one batch adds to the saved keys."""

    batch: int
    # marshal's bytes of ([(community, device_id), ...], [key, ...]); None: no new key.
    added: bytes | None
    # Devices' lists, written whole with this batch.
    lists: list[tuple[str, str, bytes]]
    # Set when `lists` completes a whole writing: the log through this batch can go.
    log_through: int | None


class RedeliveryFilter:
    def __init__(
        self, keys_per_device: int = 32, unacknowledged: int = UNACKNOWLEDGED_BATCHES
    ) -> None:
        self._keys_per_device = keys_per_device
        self._unacknowledged = unacknowledged
        # A device's keys as 64-bit ints in an array: a list written whole is its bytes,
        # which cost far less to make and to write than text.
        self._recent: dict[Ident, array[int]] = {}
        # Keys added since the last batch was taken, and their devices.
        self._added_idents: list[Ident] = []
        self._added_keys: list[int] = []
        # Devices changed since the last whole writing began, and keys logged since.
        self._dirty: set[Ident] = set()
        self._logged = 0
        # Devices that had more than one key in a recent batch: (batch, keys) of each.
        self._bursts: dict[Ident, list[tuple[int, int]]] = {}
        # A whole writing under way: devices still to write, and the batch it covers.
        self._writing: list[Ident] = []
        self._writing_through = 0
        self._batch = 0

    @classmethod
    def configured(cls, config: GatewayConfig) -> RedeliveryFilter:
        """For the config's connections: as many messages in flight to the gateway as
        the broker may have unacknowledged, committed in batches of at most
        `ingest.commit_max_messages`."""
        mqtt = config.mqtt or MqttConfig()
        batches = unacknowledged_batches(mqtt.receive_maximum, config.ingest.commit_max_messages)
        return cls(unacknowledged=batches)

    def __len__(self) -> int:
        return len(self._recent)

    def is_redelivery(self, device: DeviceRef, key: int) -> bool:
        """True if `key` was seen for this device; otherwise remembers it."""
        ident = (device.community, device.device_id)
        if not self._remember(ident, key):
            return True
        self._added_idents.append(ident)
        self._added_keys.append(key)
        return False

    def _remember(self, ident: Ident, key: int) -> bool:
        """Adds the key to the device's list; False if it was there already."""
        recent = self._recent.get(ident)
        if recent is None:
            recent = self._recent[ident] = array("q")
        elif _holds(recent, key):
            return False
        recent.append(key)
        return True

    def _taken_in(self, idents: list[Ident], batch: int) -> None:
        """A batch's keys are in: each of its devices keeps its last few, or all those of
        its recent batches if more (the broker sends them all again after a crash or a
        lost connection that came before their acknowledgements), and its list is to be
        written whole before the log of them goes."""
        keys_per_device = self._keys_per_device
        recent = self._recent
        counts = Counter(idents)
        for ident, count in counts.items():
            # In a burst, its usual last few as well: the message that came just before
            # it (a reading, then those kept while the device's link was down) may be
            # unacknowledged too.
            burst = self._burst(ident, count, batch)
            keep = keys_per_device + burst if burst else keys_per_device
            kept = recent[ident]
            excess = len(kept) - keep
            if excess > 0:
                del kept[:excess]
        self._dirty.update(counts)
        self._logged += len(idents)

    def _burst(self, ident: Ident, count: int, batch: int) -> int:
        """Adds a device's keys in a batch to its recent bursts: how many keys it had in
        the batches that may not be acknowledged yet, or 0 if it had one in each."""
        bursts = self._bursts
        if count == 1 and ident not in bursts:
            return 0
        oldest = batch - self._unacknowledged + 1
        burst = [(b, n) for b, n in bursts.get(ident, ()) if b >= oldest]
        burst.append((batch, count))
        if any(n > 1 for _, n in burst):
            bursts[ident] = burst
            return sum(n for _, n in burst)
        bursts.pop(ident, None)
        return 0

    def take_changes(self) -> KeysToSave:
        """What to save with the batch just decoded."""
        self._batch += 1
        idents, keys = self._added_idents, self._added_keys
        added = marshal.dumps((idents, keys)) if keys else None
        self._taken_in(idents, self._batch)
        self._added_idents, self._added_keys = [], []
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
        # The batch each device's list was written with: the log's keys up to it are in
        # the list, or were dropped from it as old, and must not come back as the newest.
        written: dict[Ident, int] = {}
        newest = max([0, *(batch for *_, batch in saved.lists), *(batch for batch, _ in saved.log)])
        for community, device_id, keys, batch in saved.lists:
            if isinstance(keys, str):
                # Saved as text before the keys were kept as bytes.
                kept = array("q", (int(k) for k in keys.split()))
            else:
                kept = array("q", keys)
            ident = (community, device_id)
            self._recent[ident] = kept
            written[ident] = batch
            if len(kept) > 1 and batch > newest - self._unacknowledged:
                # Written with one of the batches whose acknowledgements may not have
                # reached the broker, and more than one key: maybe a burst of them (a
                # backlog's list is written whole with every batch, and its log goes).
                # Counted as of this batch, it is kept as long as it would have been, or
                # a little longer.
                self._bursts[ident] = [(batch, len(kept))]
            # Batches go on being numbered after the newest saved.
            self._batch = max(self._batch, batch)
        for batch, blob in saved.log:
            self._batch = max(self._batch, batch)
            idents, added = marshal.loads(blob)
            replayed: list[Ident] = []
            behind: list[Ident] = []
            for ident, key in zip(idents, added, strict=True):
                if written.get(ident, 0) < batch:
                    self._remember(ident, key)
                    replayed.append(ident)
                else:
                    behind.append(ident)
            self._taken_in(replayed, batch)
            # The list has these keys, or dropped them; their bursts still count.
            for ident, count in Counter(behind).items():
                self._burst(ident, count, batch)


_KEY_BYTES = 8


def _holds(keys: array[int], key: int) -> bool:
    """`key in keys`, in a third of the time: `in` makes an int object of each key in
    turn, and a new key is compared with all of them. The keys' bytes are searched
    instead; a match that straddles two keys is not one of them."""
    data = keys.tobytes()
    needle = key.to_bytes(_KEY_BYTES, sys.byteorder, signed=True)
    at = data.find(needle)
    while at >= 0:
        if at % _KEY_BYTES == 0:
            return True
        at = data.find(needle, at + 1)
    return False
