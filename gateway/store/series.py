"""How records map to time series, as the device profiles declare."""

from __future__ import annotations

from gateway.decode.profile import ProfileSet
from gateway.decode.record import Event, FieldValue, Reading, Record, TimeSource
from gateway.registry import Registry
from gateway.store.point import Point

STATUS_MEASUREMENT = "device_status"


class SeriesMapper:
    def __init__(self, profiles: ProfileSet, registry: Registry) -> None:
        self._registry = registry
        self._telemetry: dict[str, str] = {}
        self._parts: dict[str, tuple[str, str]] = {}
        self._events: dict[str, str] = {}
        # A vendor profile shares its device type's series; the JSON profile names them.
        for profile in sorted(profiles.by_name.values(), key=lambda p: p.codec != "json"):
            device_type = profile.device_type
            self._telemetry.setdefault(device_type, profile.telemetry.measurement)
            if profile.telemetry.parts:
                parts = profile.telemetry.parts
                self._parts.setdefault(device_type, (parts.measurement, parts.key))
            if profile.events:
                self._events.setdefault(device_type, profile.events.measurement)

    def points(self, record: Record) -> list[Point]:
        device = record.device
        tags: list[tuple[str, str]] = [
            ("community", device.community),
            ("device_id", device.device_id),
        ]
        registered = self._registry.get(device.community, device.device_id)
        if registered is not None:
            tags.extend(registered.place_tags)
        fields: dict[str, FieldValue]
        if isinstance(record, Reading):
            fields = dict(record.fields)
            if record.port is None:
                measurement = self._telemetry[device.device_type]
            else:
                measurement, key = self._parts[device.device_type]
                tags.append((key, str(record.port)))
        elif isinstance(record, Event):
            measurement = self._events[device.device_type]
            tags.append(("event", record.kind))
            if record.port is not None:
                tags.append(("port", str(record.port)))
            fields = {k: v for k, v in record.fields.items() if k != "port"}
            fields["count"] = 1
        else:
            measurement = STATUS_MEASUREMENT
            tags.append(("device_type", device.device_type))
            fields = {"online": record.online}
        if record.time_source is TimeSource.GATEWAY:
            # The device sent no `ts`; mark the point so that dashboards can tell.
            fields["gateway_time"] = True
        return [Point(measurement, tuple(sorted(tags)), tuple(fields.items()), record.time_ms)]
