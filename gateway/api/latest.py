"""The latest values of each device, kept in memory from the committed batches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.decode.record import DeviceRef, Event, FieldValue, Position, Reading, Record
from gateway.registry import Registry

# Bounded, so that a storm of unregistered device ids cannot grow memory without end.
# Registered devices are not counted: the registry bounds them, and a district's own
# must never lose their place to strays.
MAX_UNREGISTERED_DEVICES = 200_000


@dataclass(slots=True)
class DeviceLatest:
    time_ms: int = 0
    fields: dict[str, FieldValue] = field(default_factory=dict)
    # A charging shed's ports, each with its own latest values.
    ports: dict[int, dict[str, FieldValue]] = field(default_factory=dict)
    online: bool | None = None
    last_event: str | None = None
    last_event_ms: int | None = None
    # When the device last said where it is (`lat`, `lon` in `fields`).
    position_ms: int | None = None


class LatestValues:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._registered: dict[DeviceRef, DeviceLatest] = {}
        # Ordered by when each was last heard from, longest ago first: past the bound the
        # one let go is the one most likely silent by now, so that an unregistered device
        # heard after a storm of stray ids is still shown.
        self._unregistered: OrderedDict[DeviceRef, DeviceLatest] = OrderedDict()

    def use_registry(self, registry: Registry) -> None:
        """A reloaded registry: a device registered now is kept whatever the bound, one
        no longer registered is held as any unregistered device is."""
        self._registry = registry
        for device in [d for d in self._registered if not _registered(registry, d)]:
            self._unregistered[device] = self._registered.pop(device)
            if len(self._unregistered) > MAX_UNREGISTERED_DEVICES:
                self._unregistered.popitem(last=False)
        for device in [d for d in self._unregistered if _registered(registry, d)]:
            self._registered[device] = self._unregistered.pop(device)

    def get(self, device: DeviceRef) -> DeviceLatest | None:
        latest = self._registered.get(device)
        return self._unregistered.get(device) if latest is None else latest

    def unregistered(self) -> list[DeviceRef]:
        """The devices heard from that the registry does not list: a few, or a storm of
        stray ids, never the registry's hundreds of thousands to look through."""
        return list(self._unregistered)

    def listen(self, records: Sequence[Record]) -> None:
        """A pipeline record listener: runs after each batch commits."""
        for record in records:
            latest = self._registered.get(record.device)
            if latest is None:
                latest = self._keep(record.device)
            # Redelivered late messages must not roll the values back.
            if record.time_ms < latest.time_ms:
                continue
            latest.time_ms = record.time_ms
            if isinstance(record, Reading):
                if record.port is not None:
                    latest.ports.setdefault(record.port, {}).update(record.fields)
                else:
                    latest.fields.update(record.fields)
                    # Most readings carry no position: the cheap test first.
                    if "lat" in record.fields and Position.in_fields(record.fields) is not None:
                        latest.position_ms = record.time_ms
                # Telemetry is proof of life, whatever the last status said.
                latest.online = True
            elif isinstance(record, Event):
                # Where a fall or an SOS happened is the wearer's last known position.
                position = Position.in_fields(record.fields)
                if position is not None:
                    latest.fields.update(lat=position.lat, lon=position.lon)
                    latest.position_ms = record.time_ms
                latest.last_event = record.kind
                latest.last_event_ms = record.time_ms
                latest.online = True
            else:
                latest.online = record.online

    def _keep(self, device: DeviceRef) -> DeviceLatest:
        """The latest values to update of a device heard from that is not held as a
        registered one: an unregistered device's, now the last to let go, or a new
        device's."""
        unregistered = self._unregistered
        latest = unregistered.get(device)
        if latest is not None:
            unregistered.move_to_end(device)
            return latest
        latest = DeviceLatest()
        if _registered(self._registry, device):
            self._registered[device] = latest
            return latest
        if len(unregistered) >= MAX_UNREGISTERED_DEVICES:
            unregistered.popitem(last=False)
        unregistered[device] = latest
        return latest


def _registered(registry: Registry, device: DeviceRef) -> bool:
    return registry.get(device.community, device.device_id) is not None
