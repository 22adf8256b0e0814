"""The latest values of each device, kept in memory from the committed batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.decode.record import DeviceRef, Event, FieldValue, Position, Reading, Record

# Bounded, so that a storm of unregistered device ids cannot grow memory without end.
MAX_DEVICES = 200_000


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
    def __init__(self) -> None:
        self._devices: dict[DeviceRef, DeviceLatest] = {}

    def get(self, device: DeviceRef) -> DeviceLatest | None:
        return self._devices.get(device)

    def devices(self) -> list[DeviceRef]:
        return list(self._devices)

    def listen(self, records: Sequence[Record]) -> None:
        """A pipeline record listener: runs after each batch commits."""
        for record in records:
            latest = self._devices.get(record.device)
            if latest is None:
                if len(self._devices) >= MAX_DEVICES:
                    continue
                latest = self._devices[record.device] = DeviceLatest()
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
