"""The notification log: every notification the gateway owes, and every attempt to
deliver it with its result, kept beside the outbox.

A notification is keyed by what it is about (alert, escalation step, receiver, kind),
so that a redelivered alert, a retry or a restart never makes a second one; a
notification once sent is never sent again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS notification_attempts (
    id INTEGER PRIMARY KEY,
    notification_key TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    channel TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL,
    latency_ms REAL
);
CREATE INDEX IF NOT EXISTS notification_attempts_alert ON notification_attempts (alert_id);
"""


class AttemptResult(StrEnum):
    SENT = "sent"
    # Failed; tried again on the same channel after a backoff.
    RETRY = "retry"
    # Failed for good on this channel; the next channel takes it.
    FAILED = "failed"
    # Over the provider's limit: a critical alert moves to the next channel, others wait
    # for a digest.
    RATE_LIMITED = "rate_limited"
    # Merged into a digest message.
    DIGESTED = "digested"
    # Inside the receiver's quiet hours: held until they end.
    QUIET_HOURS = "quiet_hours"
    # Muted by a silence.
    SILENCED = "silenced"
    # Every channel of the receiver failed.
    UNDELIVERED = "undelivered"


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    notification_key: str
    alert_id: str
    receiver: str
    channel: str
    at_ms: int
    result: AttemptResult
    detail: str
    latency_ms: float | None


class NotificationLog:
    def __init__(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the notification log in {path}: {exc}", retryable=False
            ) from exc

    def close(self) -> None:
        self._conn.close()

    def record(self, attempt: DeliveryAttempt) -> None:
        self._conn.execute(
            "INSERT INTO notification_attempts (notification_key, alert_id, receiver, channel,"
            " at_ms, result, detail, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                attempt.notification_key, attempt.alert_id, attempt.receiver, attempt.channel,
                attempt.at_ms, str(attempt.result), attempt.detail, attempt.latency_ms,
            ),
        )  # fmt: skip

    def attempts(self, alert_id: str) -> list[DeliveryAttempt]:
        """Every attempt for one alert, oldest first."""
        rows = self._conn.execute(
            "SELECT notification_key, alert_id, receiver, channel, at_ms, result, detail,"
            " latency_ms FROM notification_attempts WHERE alert_id = ? ORDER BY id",
            (alert_id,),
        )
        return [
            DeliveryAttempt(key, alert, receiver, channel, at_ms, AttemptResult(result), detail,
                            latency_ms)
            for key, alert, receiver, channel, at_ms, result, detail, latency_ms in rows
        ]  # fmt: skip
