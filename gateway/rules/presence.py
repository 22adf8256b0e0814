"""When each device was last heard from, for absence rules.

One entry a device, for every registered device and every device heard: kept by
(community, device type), each a map from device id to epoch milliseconds, so that an
entry costs a map slot and no object of its own, and the offline sweep judges a whole
group against one deadline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from gateway.decode.record import DeviceRef

GroupKey = tuple[str, str]  # (community, device_type)
# When devices were heard, by group: (group, device id -> epoch ms, or None for a device
# no longer watched).
HeardTimes = list[tuple[GroupKey, dict[str, int | None]]]


class HeardGroup:
    """The devices of one type in one community."""

    __slots__ = ("fresh", "key", "seen_ms")

    def __init__(self, key: GroupKey) -> None:
        self.key = key
        # Device id -> when last heard.
        self.seen_ms: dict[str, int] = {}
        # Ids of the devices heard since the last `take_fresh`, to persist; when it
        # becomes non-empty, the group goes on `LastHeard.fresh_groups`.
        self.fresh: set[str] = set()


class LastHeard:
    __slots__ = ("fresh_groups", "groups")

    def __init__(self) -> None:
        self.groups: dict[GroupKey, HeardGroup] = {}
        # The groups whose `fresh` was empty when a device of theirs was heard.
        self.fresh_groups: list[HeardGroup] = []

    def group(self, community: str, device_type: str) -> HeardGroup:
        key = (community, device_type)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = HeardGroup(key)
        return group

    def hear(self, device: DeviceRef, at_ms: int) -> None:
        """A record from `device`. (RuleEngine.evaluate does this inline, once a record.)"""
        group = self.group(device.community, device.device_type)
        group.seen_ms[device.device_id] = at_ms
        if not group.fresh:
            self.fresh_groups.append(group)
        group.fresh.add(device.device_id)

    def forget(self, device: DeviceRef) -> None:
        """A device taken out of the registry (or registered as another type): no longer
        watched as this one, and so no longer saved."""
        group = self.groups.get((device.community, device.device_type))
        if group is None or group.seen_ms.pop(device.device_id, None) is None:
            return
        if not group.fresh:
            self.fresh_groups.append(group)
        group.fresh.add(device.device_id)

    def set(self, device: DeviceRef, at_ms: int) -> None:
        """Without marking it fresh: what start-up and a restored state say."""
        self.group(device.community, device.device_type).seen_ms[device.device_id] = at_ms

    def get(self, device: DeviceRef) -> int | None:
        group = self.groups.get((device.community, device.device_type))
        return None if group is None else group.seen_ms.get(device.device_id)

    def __len__(self) -> int:
        return sum(len(group.seen_ms) for group in self.groups.values())

    def __iter__(self) -> Iterator[tuple[DeviceRef, int]]:
        for (community, device_type), group in self.groups.items():
            for device_id, seen_ms in group.seen_ms.items():
                yield DeviceRef(community, device_type, device_id), seen_ms

    def type_of(self, community: str, device_id: str) -> str | None:
        """The type a device was heard as (rare: for devices the registry lacks)."""
        for (group_community, device_type), group in self.groups.items():
            if group_community == community and device_id in group.seen_ms:
                return device_type
        return None

    def take_fresh(self) -> HeardTimes:
        """Devices heard since the last call, with when, by group."""
        taken = []
        for group in self.fresh_groups:
            seen_ms = group.seen_ms
            taken.append(
                (group.key, {device_id: seen_ms.get(device_id) for device_id in group.fresh})
            )
            group.fresh.clear()
        self.fresh_groups.clear()
        return taken

    def update(self, saved: Iterable[tuple[DeviceRef, int]]) -> None:
        for device, at_ms in saved:
            self.set(device, at_ms)

    def shift(self, after_ms: int, by_ms: int) -> None:
        """Move the times later than `after_ms` by `by_ms`, without marking them fresh (a
        restart reads the clock anew: what was saved stays as it was heard)."""
        for group in self.groups.values():
            seen_ms = group.seen_ms
            for device_id, at_ms in seen_ms.items():
                if at_ms > after_ms:
                    seen_ms[device_id] = at_ms + by_ms
