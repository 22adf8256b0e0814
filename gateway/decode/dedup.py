"""Recognises a redelivered message so that it never makes a second record downstream.

The broker redelivers what it did not see acknowledged, and a device may resend; both
arrive with the same `seq` (or the same `ts`). Each device keeps its last few keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from gateway.decode.record import DeviceRef


class RedeliveryFilter:
    def __init__(self, keys_per_device: int = 32) -> None:
        self._keys_per_device = keys_per_device
        self._recent: dict[tuple[str, str], deque[int]] = {}
        self._dirty: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._recent)

    def is_redelivery(self, device: DeviceRef, key: int) -> bool:
        """True if `key` was seen for this device; otherwise remembers it."""
        ident = (device.community, device.device_id)
        recent = self._recent.get(ident)
        if recent is None:
            recent = self._recent[ident] = deque(maxlen=self._keys_per_device)
        elif key in recent:
            return True
        recent.append(key)
        self._dirty.add(ident)
        return False

    def take_changes(self) -> list[tuple[str, str, str]]:
        """(community, device_id, keys) of devices changed since the last call, to persist."""
        changes = [(c, d, " ".join(map(str, self._recent[(c, d)]))) for c, d in self._dirty]
        self._dirty.clear()
        return changes

    def restore(self, saved: Iterable[tuple[str, str, str]]) -> None:
        for community, device_id, keys in saved:
            self._recent[(community, device_id)] = deque(
                (int(k) for k in keys.split()), maxlen=self._keys_per_device
            )
