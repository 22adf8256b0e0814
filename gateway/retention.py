"""The gateway's own records let go once `retention` no longer keeps them: alerts
closed long ago with all that was kept of them (history, notifications, delivery
attempts, short links), silences long ended, and old reads of personal data.

Done a slice at a time, each slice its own short transaction, off the event loop: the
alert book shares the outbox's write lock with the telemetry's commits and the
alarms', and the notifier takes the notification log's on the event loop.

The days are counted by the gateway's clock, as InfluxDB counts its own retention: a
clock set years ahead would let go of everything, so keep it synchronised (NTP).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.api.audit import AuditLog
from gateway.clock import Clock
from gateway.config import RetentionConfig
from gateway.errors import StoreError
from gateway.notify.log import NotificationLog
from gateway.rules.book import AlertBook
from gateway.rules.silence import SilenceBook
from gateway.store.database import open_book, transaction

log = logging.getLogger(__name__)

# The first pass waits until the start's own work is done; then one an hour.
FIRST_PASS_S = 60.0
PASS_INTERVAL_S = 3600.0
# Alerts looked at, and audit rows removed, in one transaction: a few milliseconds of
# either file's write lock.
SLICE_ALERTS = 25
SLICE_AUDIT_ROWS = 500
# Between slices that wrote: SQLite's wait for a lock polls every 25 ms or so, and a
# commit waiting for it (an alarm's, the notifier's) would otherwise find the next slice
# holding it again (bench.retention).
SLICE_PAUSE_S = 0.05
# Since the beginning of time, for the first slice of alerts.
_FIRST = (-(1 << 62), "")


@dataclass(frozen=True, slots=True)
class Pruned:
    alerts: int = 0
    notifications: int = 0
    silences: int = 0
    audit_rows: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.alerts + other.alerts,
            self.notifications + other.notifications,
            self.silences + other.silences,
            self.audit_rows + other.audit_rows,
        )

    def __bool__(self) -> bool:
        return any((self.alerts, self.notifications, self.silences, self.audit_rows))


class Retention:
    def __init__(
        self,
        config: RetentionConfig,
        outbox_path: Path,
        notification_log_path: Path,
        silences: SilenceBook,
        clock: Clock,
    ) -> None:
        self._keep_alerts_ms = config.alerts_kept_ms
        self._keep_audit_ms = config.audit_kept_ms
        self._outbox_path = outbox_path
        self._log_path = notification_log_path
        self._silences = silences
        self._clock = clock
        # Opened on first use, in the worker thread; a slice under way holds the lock.
        self._lock = threading.Lock()
        self._book: sqlite3.Connection | None = None
        self._log: sqlite3.Connection | None = None
        self._audit: AuditLog | None = None
        self._closed = False

    def close(self) -> None:
        """Once a slice under way has ended."""
        with self._lock:
            self._closed = True
            for conn in (self._book, self._log):
                if conn is not None:
                    conn.close()
            if self._audit is not None:
                self._audit.close()

    async def run(self) -> None:
        await self._clock.sleep(FIRST_PASS_S)
        while True:
            try:
                pruned = Pruned()
                slices = self.slices()
                while (step := await asyncio.to_thread(next, slices, None)) is not None:
                    pruned += step
                    if step:
                        await self._clock.sleep(SLICE_PAUSE_S)
                if pruned:
                    log.info("let go of %s", _told(pruned))
            except (sqlite3.Error, StoreError) as exc:
                # Tried again at the next pass; a damaged file is the other stages' to
                # find and to stop the gateway for.
                log.warning("old records could not be let go: %s; again in an hour", exc)
            await self._clock.sleep(PASS_INTERVAL_S)

    def prune(self) -> Pruned:
        """Everything due now, in one go."""
        pruned = Pruned()
        for step in self.slices():
            pruned += step
        return pruned

    def slices(self) -> Iterator[Pruned]:
        """A pass, a slice at each step, which may each run on another thread."""
        if self._keep_alerts_ms is not None:
            yield from self._alerts(self._keep_alerts_ms)
        if self._keep_audit_ms is not None:
            yield from self._audit_rows(self._keep_audit_ms)

    def _alerts(self, keep_ms: int) -> Iterator[Pruned]:
        before_ms = self._clock.now_ms() - keep_ms
        # Read once a pass: a timer never takes up an alert already closed, and one let
        # go meanwhile only keeps its alert until the next pass.
        with self._lock:
            if self._closed:
                return
            held = AlertBook.held(self._open()[0])
        after: tuple[int, str] | None = _FIRST
        while after is not None:
            with self._lock:
                if self._closed:
                    return
                book, notifications = self._open()
                ended, after = AlertBook.ended(book, before_ms, after, SLICE_ALERTS, held)
                if not ended:
                    continue
                # The notifications first: a crash between the two leaves the alert, and
                # the next pass takes both. An alert with a notification still to go out
                # waits for the next pass.
                with transaction(notifications):
                    unfinished = NotificationLog.unfinished(notifications, ended)
                    ended = [alert_id for alert_id in ended if alert_id not in unfinished]
                    told = NotificationLog.forget(notifications, ended)
                with transaction(book):
                    forgotten = AlertBook.forget(book, ended, before_ms)
            yield Pruned(alerts=forgotten, notifications=told)
        with self._lock:
            if self._closed:
                return
            silences = self._silences.forget_ended(before_ms)
        yield Pruned(silences=silences)

    def _audit_rows(self, keep_ms: int) -> Iterator[Pruned]:
        before_ms = self._clock.now_ms() - keep_ms
        while True:
            with self._lock:
                if self._closed:
                    return
                if self._audit is None:
                    self._audit = AuditLog(self._outbox_path)
                removed = self._audit.forget_before(before_ms, SLICE_AUDIT_ROWS)
            if not removed:
                return
            yield Pruned(audit_rows=removed)

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        if self._book is None:
            self._book = open_book(self._outbox_path, "", "the alert book")
        if self._log is None:
            self._log = open_book(self._log_path, "", "the notification log")
        return self._book, self._log


def _told(pruned: Pruned) -> str:
    return (
        f"{pruned.alerts} alerts closed long ago, with {pruned.notifications} notifications;"
        f" {pruned.silences} silences long ended; {pruned.audit_rows} old reads of personal data"
    )
