"""Recognises a redelivered message so that it never makes a second record downstream.

The broker redelivers what it did not see acknowledged, and a device may resend; both
arrive with the same `seq` (or the same `ts`). Each device keeps its last few keys.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from gateway.decode.record import DeviceRef


class RedeliveryFilter:
    def __init__(self, keys_per_device: int = 32) -> None:
        self._keys_per_device = keys_per_device
        # A device's keys as 64-bit ints in an array: saved after every batch the device
        # is in, as its bytes, which costs far less to make and to write than text.
        self._recent: dict[tuple[str, str], array[int]] = {}
        self._dirty: set[tuple[str, str]] = set()

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
        if len(recent) > self._keys_per_device:
            del recent[0]
        self._dirty.add(ident)
        return False

    def take_changes(self) -> list[tuple[str, str, bytes]]:
        """(community, device_id, keys) of devices changed since the last call, to persist."""
        recent = self._recent
        changes = [(c, d, recent[(c, d)].tobytes()) for c, d in self._dirty]
        self._dirty.clear()
        return changes

    def restore(self, saved: Iterable[tuple[str, str, bytes | str]]) -> None:
        for community, device_id, keys in saved:
            if isinstance(keys, str):
                # Saved as text before the keys were kept as bytes.
                kept = array("q", (int(k) for k in keys.split()))
            else:
                kept = array("q", keys)
            if len(kept) > self._keys_per_device:
                kept = kept[-self._keys_per_device :]
            self._recent[(community, device_id)] = kept
