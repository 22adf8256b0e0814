"""Alerts and their changes, as the rules stage hands them on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gateway.decode.record import DeviceRef, FieldValue
from gateway.rules.rule import Severity


class AlertState(StrEnum):
    """The lifecycle: pending (the condition holds, not yet for its duration) -> firing
    -> acknowledged (a person took it) -> arrived (someone reached the scene) -> resolved
    (the condition cleared) -> closed (a person handled it). A person may close an alert whose condition still holds; it may
    be acknowledged after it resolved. A pending alert whose condition breaks resolves
    without ever firing, and is announced to nobody."""

    PENDING = "pending"
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    ARRIVED = "arrived"
    RESOLVED = "resolved"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AlertChange:
    alert_id: str
    rule: str
    title: str
    severity: Severity
    life_safety: bool
    device: DeviceRef
    port: int | None
    state: AlertState
    started_ms: int
    at_ms: int
    # The reading or event that made the change, for the notification text.
    values: Mapping[str, FieldValue]
    # False for a pending alert, and for one that resolved while still pending: nothing
    # to announce to anyone.
    fired: bool = True
    # The silence that mutes it; never set on a life-safety alert.
    silenced_by: int | None = None
    # A silence that matched a life-safety alert, which goes out anyway.
    silence_overridden: int | None = None

    def summary(self) -> str:
        where = f"{self.device.community}/{self.device.device_id}"
        if self.port is not None:
            where += f" port {self.port}"
        text = f"[{self.severity}] {self.title} {self.state}: {where}"
        if self.silenced_by is not None:
            text += f" (muted by silence {self.silenced_by})"
        if self.silence_overridden is not None:
            text += f" (life-safety: silence {self.silence_overridden} overridden)"
        return text


@dataclass(frozen=True, slots=True)
class Repeat:
    """An event that joined an open alert instead of making one (see `merge_s`)."""

    alert_id: str
    at_ms: int
