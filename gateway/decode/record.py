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


class DeviceRef(NamedTuple):
    community: str
    device_type: str
    device_id: str


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


def dump_records(records: Sequence[Record]) -> bytes:
    rows: list[tuple[object, ...]] = []
    for r in records:
        d = r.device
        head = (d.community, d.device_type, d.device_id, r.time_ms, r.time_source.value)
        if type(r) is Reading:
            rows.append((_READING, *head, _plain(r.fields), r.seq, r.port))
        elif type(r) is Event:
            rows.append((_EVENT, *head, _plain(r.fields), r.seq, r.port, r.kind))
        else:
            assert isinstance(r, StatusReport)
            rows.append((_STATUS, *head, r.online, r.seq))
    return marshal.dumps(rows, 4)


def load_records(data: bytes) -> list[Record]:
    records: list[Record] = []
    append = records.append
    devices: dict[tuple[str, str, str], DeviceRef] = {}
    # A named tuple's constructor is a Python function around tuple.__new__: calling
    # that directly, with the values in their order, spares a frame per record.
    new = tuple.__new__
    for row in marshal.loads(data):
        kind, community, device_type, device_id, time_ms, source = row[:6]
        key = (community, device_type, device_id)
        device = devices.get(key)
        if device is None:
            device = devices[key] = DeviceRef(community, device_type, device_id)
        time_source = _TIME_SOURCES[source]
        if kind == _READING:
            append(new(Reading, (device, time_ms, time_source, row[6], row[7], row[8])))
        elif kind == _EVENT:
            append(new(Event, (device, time_ms, time_source, row[9], row[6], row[7], row[8])))
        elif kind == _STATUS:
            append(new(StatusReport, (device, time_ms, time_source, row[6], row[7])))
        else:
            raise ValueError(f"unknown record kind {kind!r}")
    return records


def _plain(fields: Mapping[str, FieldValue]) -> dict[str, FieldValue]:
    return fields if type(fields) is dict else dict(fields)
