"""The typed values a decoded device message becomes.

Everything after decoding (store, rules, notify) works on these, never on raw payloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

FieldValue = bool | int | float | str


class TimeSource(StrEnum):
    DEVICE = "device"
    # The message carried no `ts`; the gateway's receive time stands in for it.
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class DeviceRef:
    community: str
    device_type: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Reading:
    """Periodic telemetry of one device, or of one port of it when `port` is set."""

    device: DeviceRef
    time_ms: int
    time_source: TimeSource
    fields: Mapping[str, FieldValue]
    seq: int | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A one-off occurrence: an alarm, a fall, an SOS, a lid opened."""

    device: DeviceRef
    time_ms: int
    time_source: TimeSource
    kind: str
    fields: Mapping[str, FieldValue]
    seq: int | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A device's online state, from its retained status topic or its last will."""

    device: DeviceRef
    time_ms: int
    time_source: TimeSource
    online: bool
    seq: int | None = None


Record = Reading | Event | StatusReport
