"""The notification log: every notification the gateway owes, and every attempt to
deliver it with its result, kept in a file of its own beside the outbox: its
transactions run on the event loop, where a wait for the telemetry process's commits
to the outbox would hold up every alarm behind them.

A notification is keyed by what it is about (alert, escalation step, receiver, kind),
so that a redelivered alert, a retry or a restart never makes a second one; a
notification once sent is never sent again. An escalation step is named by its chain
and its number in the chain, not by the place of the route that chose the chain, so
that a policy reloaded with its routes in another order sends no alert down another
chain.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.store.database import FoundDamaged, check_whole, is_damaged, open_book

# The detail of the attempt that holds a notification for its receiver's quiet hours,
# before the time it is held until.
QUIET_HOLD = "held until "

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
CREATE TABLE IF NOT EXISTS escalation_plan (
    alert_id TEXT NOT NULL,
    chain TEXT NOT NULL,
    step INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    -- waiting, done, or stopped (a person took the alert first)
    state TEXT NOT NULL,
    PRIMARY KEY (alert_id, chain, step)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS escalation_plan_due ON escalation_plan (state, due_ms);
CREATE TABLE IF NOT EXISTS notifications (
    key TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    channels TEXT NOT NULL,
    channel_index INTEGER NOT NULL,
    tries INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    -- pending, digest (waits to go out in a digest), sent, undelivered, or withdrawn
    -- (held, its alert was handled or over before it could go out)
    state TEXT NOT NULL,
    notice TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, due_ms);
CREATE INDEX IF NOT EXISTS notifications_alert ON notifications (alert_id);
CREATE TABLE IF NOT EXISTS short_links (
    code TEXT PRIMARY KEY,
    link TEXT NOT NULL
) WITHOUT ROWID;
"""
# Where earlier versions kept the plan, with the route's place in the policy instead of
# the chain's name.
ROUTE_STEPS = """
CREATE TABLE IF NOT EXISTS escalation_steps (
    alert_id TEXT NOT NULL,
    route INTEGER NOT NULL,
    step INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (alert_id, route, step)
) WITHOUT ROWID;
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
    # Held (quiet hours, a limit), and not sent: its alert was taken by a person or had
    # resolved by the time it could go out.
    WITHDRAWN = "withdrawn"


# A notification whose time is the end of quiet hours it was held for, and not since
# given another: its hold's record names that time.
_HELD_FOR_QUIET_HOURS = (
    "EXISTS (SELECT 1 FROM notification_attempts AS a"
    " WHERE a.alert_id = notifications.alert_id AND a.notification_key = notifications.key"
    f" AND a.result = '{AttemptResult.QUIET_HOURS}'"
    f" AND a.detail = '{QUIET_HOLD}' || notifications.due_ms)"
)


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


# How a notification sent in a digest names the digest, in its attempt's detail.
IN_DIGEST = "in digest "


@dataclass(frozen=True, slots=True)
class RecentSend:
    """A message a channel sent."""

    channel: str
    at_ms: int
    # The notification it took, or one of a digest's: all to the same number, if any.
    notification_key: str


@dataclass(frozen=True, slots=True)
class PlannedStep:
    alert_id: str
    # The escalation chain's name in the policy, and the step's number in it.
    chain: str
    step: int
    due_ms: int


@dataclass(frozen=True, slots=True)
class Notification:
    key: str
    alert_id: str
    channels: tuple[str, ...]
    channel_index: int
    tries: int
    due_ms: int
    state: str
    notice: str


_TABLES = ("notification_attempts", "escalation_steps", "notifications")


class NotificationLog:
    def __init__(
        self,
        path: Path,
        *,
        moved_from: Path | None = None,
        route_chains: Sequence[str] = (),
        recover_damaged: bool = False,
    ) -> None:
        """`moved_from`: the file an earlier version kept the log in, the outbox;
        what it holds is moved here once. `route_chains`: the escalation chain of each
        route of the policy in force, in order, which names the chain of the steps an
        earlier version planned by the route's place. `recover_damaged`: see
        gateway.store.database.open_recovering."""
        self.path = path
        self._conn = open_book(
            path, SCHEMA, "the notification log", recover_damaged=recover_damaged
        )
        if moved_from is not None and moved_from.exists():
            self._move_from(moved_from)
        self._name_chains(route_chains)

    def _move_from(self, old: Path) -> None:
        # Copied, then dropped there: a crash between the two copies it again, which
        # the keys make harmless.
        with closing(sqlite3.connect(old, isolation_level=None, timeout=30.0)) as source:
            found = {
                name
                for (name,) in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            tables = [table for table in _TABLES if table in found]
            if not tables:
                return
            if "escalation_steps" in tables:
                self._conn.executescript(ROUTE_STEPS)
            self._conn.execute("ATTACH DATABASE ? AS earlier", (str(old),))
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for table in tables:
                    self._conn.execute(
                        f"INSERT OR IGNORE INTO main.{table} SELECT * FROM earlier.{table}"
                    )
                self._conn.execute("COMMIT")
            finally:
                self._conn.execute("DETACH DATABASE earlier")
            for table in tables:
                source.execute(f"DROP TABLE {table}")

    def _name_chains(self, route_chains: Sequence[str]) -> None:
        found = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'escalation_steps'"
        ).fetchone()
        if found is None:
            return
        with self.transaction():
            rows = self._conn.execute(
                "SELECT alert_id, route, step, due_ms, state FROM escalation_steps"
            ).fetchall()
            # A route the policy no longer has leaves its steps to a chain of no name,
            # which the notifier treats as a chain taken out of the policy.
            self._conn.executemany(
                "INSERT OR IGNORE INTO escalation_plan VALUES (?, ?, ?, ?, ?)",
                (
                    (alert, route_chains[route] if route < len(route_chains) else "", step,
                     due_ms, state)
                    for alert, route, step, due_ms, state in rows
                ),
            )  # fmt: skip
            self._conn.execute("DROP TABLE escalation_steps")

    def close(self) -> None:
        self._conn.close()

    def damaged(self) -> bool:
        """Whether SQLite's check of the whole file finds it damaged."""
        try:
            check_whole(self._conn)
        except FoundDamaged:
            return True
        except sqlite3.Error as exc:
            return is_damaged(exc)
        return False

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Many writes, one commit: planning and recording stay off the alarm's path."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def record(self, attempt: DeliveryAttempt) -> None:
        self._conn.execute(
            "INSERT INTO notification_attempts (notification_key, alert_id, receiver, channel,"
            " at_ms, result, detail, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                attempt.notification_key, attempt.alert_id, attempt.receiver, attempt.channel,
                attempt.at_ms, str(attempt.result), attempt.detail, attempt.latency_ms,
            ),
        )  # fmt: skip

    # --- escalation steps ----------------------------------------------------------------

    def plan(self, steps: list[PlannedStep]) -> int:
        """Schedule an alert's steps; those planned already stay as they are."""
        return self._conn.executemany(
            "INSERT OR IGNORE INTO escalation_plan VALUES (?, ?, ?, ?, 'waiting')",
            ((s.alert_id, s.chain, s.step, s.due_ms) for s in steps),
        ).rowcount

    def planned(self, alert_id: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM escalation_plan WHERE alert_id = ? LIMIT 1", (alert_id,)
        ).fetchone()
        return row is not None

    def chains(self, alert_id: str) -> set[str]:
        """The escalation chains planned for an alert."""
        rows = self._conn.execute(
            "SELECT DISTINCT chain FROM escalation_plan WHERE alert_id = ?", (alert_id,)
        )
        return {chain for (chain,) in rows}

    def due_steps(self, now_ms: int) -> list[PlannedStep]:
        rows = self._conn.execute(
            "SELECT alert_id, chain, step, due_ms FROM escalation_plan"
            " WHERE state = 'waiting' AND due_ms <= ? ORDER BY due_ms, step",
            (now_ms,),
        )
        return [PlannedStep(*row) for row in rows]

    def finish_step(self, step: PlannedStep) -> None:
        self._conn.execute(
            "UPDATE escalation_plan SET state = 'done' WHERE alert_id = ? AND chain = ?"
            " AND step = ?",
            (step.alert_id, step.chain, step.step),
        )

    def stop_steps(self, alert_id: str) -> int:
        """Cancel what is still waiting for an alert that a person took."""
        return self._conn.execute(
            "UPDATE escalation_plan SET state = 'stopped' WHERE alert_id = ? AND state = 'waiting'",
            (alert_id,),
        ).rowcount

    def shift_due(self, step_ms: int) -> int:
        """Move what waits (steps, notifications) by a step of the wall clock, so that
        each keeps the delay it was given; how many moved."""
        steps = self._conn.execute(
            "UPDATE escalation_plan SET due_ms = due_ms + ? WHERE state = 'waiting'", (step_ms,)
        )
        # A digest's member waits as a pending one does (a retry, a limit's wait). One
        # held for the receiver's quiet hours, and not since, waits for a time of day,
        # which a step of the clock does not move (see Notifier._quiet_until_ms).
        notifications = self._conn.execute(
            "UPDATE notifications SET due_ms = due_ms + ? WHERE state IN ('pending', 'digest')"
            f" AND NOT {_HELD_FOR_QUIET_HOURS}",
            (step_ms,),
        )
        return steps.rowcount + notifications.rowcount

    def held_for_quiet_hours(self) -> list[Notification]:
        """The notifications waiting for the end of their receiver's quiet hours."""
        return self._select(f"state IN ('pending', 'digest') AND {_HELD_FOR_QUIET_HOURS}", ())

    def next_due_ms(self, busy: Collection[str] = ()) -> int | None:
        """When the next step or notification is due; `busy`: keys of notifications
        being sent, due until their send ends, left out."""
        row = self._conn.execute(
            "SELECT min(due_ms) FROM escalation_plan WHERE state = 'waiting'"
        ).fetchone()
        due = [int(row[0])] if row and row[0] is not None else []
        rows = self._conn.execute(
            "SELECT key, due_ms FROM notifications WHERE state = 'pending' ORDER BY due_ms"
        )
        for key, due_ms in rows:
            if key not in busy:
                due.append(int(due_ms))
                break
        rows.close()
        return min(due, default=None)

    # --- notifications -------------------------------------------------------------------

    def add(self, notification: Notification, now_ms: int) -> bool:
        """False if a notification with that key exists: it is never made twice."""
        return bool(
            self._conn.execute(
                "INSERT OR IGNORE INTO notifications VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    notification.key,
                    notification.alert_id,
                    ",".join(notification.channels),
                    notification.channel_index,
                    notification.tries,
                    notification.due_ms,
                    notification.state,
                    notification.notice,
                    now_ms,
                ),
            ).rowcount
        )

    def add_short_link(self, code: str, link: str) -> None:
        """Where a short code leads; the first link made for it stays."""
        self._conn.execute("INSERT OR IGNORE INTO short_links VALUES (?, ?)", (code, link))

    @staticmethod
    def unfinished(conn: sqlite3.Connection, alert_ids: Sequence[str]) -> set[str]:
        """Those of the alerts with a notification still to go out (an all-clear held
        for quiet hours, a retry, a digest) or an escalation step still waiting."""
        return {
            alert_id
            for alert_id in alert_ids
            if conn.execute(
                "SELECT 1 FROM notifications WHERE alert_id = ? AND state IN ('pending', 'digest')"
                " UNION ALL SELECT 1 FROM escalation_plan WHERE alert_id = ? AND state = 'waiting'"
                " LIMIT 1",
                (alert_id, alert_id),
            ).fetchone()
        }

    @staticmethod
    def forget(conn: sqlite3.Connection, alert_ids: Sequence[str]) -> int:
        """Removes all that was kept of the alerts' notifications, their short links too,
        inside the caller's transaction. How many notifications went."""
        params = [(alert_id,) for alert_id in alert_ids]
        codes = [
            code
            for param in params
            for (code,) in conn.execute(
                "SELECT json_extract(notice, '$.link_code') FROM notifications WHERE alert_id = ?",
                param,
            )
        ]
        conn.executemany("DELETE FROM short_links WHERE code = ?", ((c,) for c in codes if c))
        conn.executemany("DELETE FROM notification_attempts WHERE alert_id = ?", params)
        conn.executemany("DELETE FROM escalation_plan WHERE alert_id = ?", params)
        conn.executemany("DELETE FROM notifications WHERE alert_id = ?", params)
        return len(codes)

    def short_link(self, code: str) -> str | None:
        row = self._conn.execute("SELECT link FROM short_links WHERE code = ?", (code,)).fetchone()
        return None if row is None else str(row[0])

    def due(self, now_ms: int) -> list[Notification]:
        return self._select("state = 'pending' AND due_ms <= ?", (now_ms,))

    def waiting_for_digest(self) -> list[Notification]:
        return self._select("state = 'digest'", ())

    def get(self, key: str) -> Notification | None:
        found = self._select("key = ?", (key,))
        return found[0] if found else None

    def sends_since(self, since_ms: int) -> list[RecentSend]:
        """The messages the channels sent from `since_ms` on, oldest first: a digest once.
        Read back from the newest attempt, which the attempts' ids keep in order."""
        sends: list[RecentSend] = []
        digests: set[tuple[str, str]] = set()
        rows = self._conn.execute(
            "SELECT channel, at_ms, result, detail, notification_key FROM notification_attempts"
            " ORDER BY id DESC"
        )
        for channel, at_ms, result, detail, key in rows:
            if at_ms < since_ms:
                break
            if result != AttemptResult.SENT:
                continue
            if detail.startswith(IN_DIGEST):
                if (channel, detail) in digests:
                    continue
                digests.add((channel, detail))
            sends.append(RecentSend(channel, at_ms, key))
        rows.close()
        sends.reverse()
        return sends

    def update(self, key: str, *, state: str, channel_index: int, tries: int, due_ms: int) -> None:
        self._conn.execute(
            "UPDATE notifications SET state = ?, channel_index = ?, tries = ?, due_ms = ?"
            " WHERE key = ?",
            (state, channel_index, tries, due_ms, key),
        )

    def told_resolved(self, alert_id: str) -> bool:
        """Whether the all-clear of an alert was planned for anyone."""
        row = self._conn.execute(
            "SELECT 1 FROM notifications WHERE alert_id = ? AND key LIKE '%/resolved' LIMIT 1",
            (alert_id,),
        ).fetchone()
        return row is not None

    def sent(self, alert_id: str) -> list[Notification]:
        return self._select("alert_id = ? AND state = 'sent'", (alert_id,))

    def _select(self, where: str, args: tuple[object, ...]) -> list[Notification]:
        rows = self._conn.execute(
            "SELECT key, alert_id, channels, channel_index, tries, due_ms, state, notice"
            f" FROM notifications WHERE {where} ORDER BY due_ms, key",
            args,
        )
        return [
            Notification(key, alert, tuple(filter(None, channels.split(","))), index, tries,
                         due_ms, state, notice)
            for key, alert, channels, index, tries, due_ms, state, notice in rows
        ]  # fmt: skip

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
