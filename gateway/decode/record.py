"""The typed values a decoded device message becomes.

Everything after decoding (store, rules, notify) works on these, never on raw payloads.
"""

from __future__ import annotations

import marshal
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import NamedTuple

FieldValue = bool | int | float | str


class TimeSource(StrEnum):
    DEVICE = "device"
    # The message carried no `ts`; the gateway's receive time stands in for it.
    GATEWAY = "gateway"
    # A status with no `ts` that the broker kept (retained) and hands over with every
    # new subscription: the receive time stands in for it too, but the device may have
    # said it at any time before, so it is not a sign of life.
    RETAINED = "retained"


class DeviceRef(NamedTuple):
    community: str
    device_type: str
    device_id: str


class Position(NamedTuple):
    """A point in WGS-84 degrees, as devices and the registry give it."""

    lat: float
    lon: float

    @classmethod
    def in_fields(cls, fields: Mapping[str, FieldValue]) -> Position | None:
        """Where a record's fields say the device is; None unless both `lat` and `lon`
        are numbers (a bool is an int to Python, and no coordinate)."""
        lat, lon = fields.get("lat"), fields.get("lon")
        if isinstance(lat, bool) or isinstance(lon, bool):
            return None
        if isinstance(lat, float | int) and isinstance(lon, float | int):
            return cls(float(lat), float(lon))
        return None


class Reading(NamedTuple):
    """Periodic telemetry of one device, or of one port of it when `port` is set."""

    device: DeviceRef
    time_ms: int
    time_source: TimeSource
    fields: Mapping[str, FieldValue]
    seq: int | None = None
    port: int | None = None


class Event(NamedTuple):
    """A one-off occurrence: an alarm, a fall, an SOS, a lid opened."""

    device: DeviceRef
    time_ms: int
    time_source: TimeSource
    kind: str
    fields: Mapping[str, FieldValue]
    seq: int | None = None
    port: int | None = None


class StatusReport(NamedTuple):
    """A device's online state, from its retained status topic or its last will."""

    device: DeviceRef
    time_ms: int
    time_source: TimeSource
    online: bool
    seq: int | None = None


Record = Reading | Event | StatusReport


# --- handed between processes ---------------------------------------------------
# A batch's records cross from the telemetry process to the main one through the
# outbox, as plain tuples in marshal's format: several times cheaper to make and to
# read than pickled dataclasses. Both ends are the same installation; a format from
# another version fails to load, and the caller says so.

_READING, _EVENT, _STATUS = 0, 1, 2
_TIME_SOURCES = {source.value: source for source in TimeSource}
_GATEWAY = TimeSource.GATEWAY
_GATEWAY_TEXT, _DEVICE_TEXT = TimeSource.GATEWAY.value, TimeSource.DEVICE.value


def dump_records(records: Sequence[Record]) -> bytes:
    # Built by position from the named tuples' fields: attribute access, the enum's
    # `.value` and a tuple spliced into another cost a third of the time.
    rows: list[tuple[object, ...]] = []
    append = rows.append
    for r in records:
        d = r[0]
        source = _GATEWAY_TEXT if r[2] is _GATEWAY else _DEVICE_TEXT
        if type(r) is Reading:
            fields = r[3]
            if type(fields) is not dict:
                fields = dict(fields)
            append((_READING, d[0], d[1], d[2], r[1], source, fields, r[4], r[5]))
        elif type(r) is Event:
            fields = r[4]
            if type(fields) is not dict:
                fields = dict(fields)
            append((_EVENT, d[0], d[1], d[2], r[1], source, fields, r[5], r[6], r[3]))
        else:
            assert type(r) is StatusReport
            append((_STATUS, d[0], d[1], d[2], r[1], r[2].value, r[3], r[4]))
    return marshal.dumps(rows, 4)


def load_records(data: bytes) -> list[Record]:
    records: list[Record] = []
    append = records.append
    devices: dict[tuple[str, str, str], DeviceRef] = {}
    sources = _TIME_SOURCES
    # A named tuple's constructor is a Python function around tuple.__new__: calling
    # that directly, with the values in their order, spares a frame per record.
    new = tuple.__new__
    for row in marshal.loads(data):
        kind = row[0]
        key = row[1:4]
        device = devices.get(key)
        if device is None:
            device = devices[key] = new(DeviceRef, key)
        if kind == _READING:
            append(new(Reading, (device, row[4], sources[row[5]], row[6], row[7], row[8])))
        elif kind == _EVENT:
            append(new(Event, (device, row[4], sources[row[5]], row[9], row[6], row[7], row[8])))
        elif kind == _STATUS:
            append(new(StatusReport, (device, row[4], sources[row[5]], row[6], row[7])))
        else:
            raise ValueError(f"unknown record kind {kind!r}")
    return records
