"""The audit of personal data read by people, kept beside the outbox."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from gateway.errors import StoreError
from gateway.store.database import open_book

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    community TEXT NOT NULL,
    device_id TEXT NOT NULL,
    what TEXT NOT NULL,
    via TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_device ON audit (community, device_id);
-- Retention's hourly pass finds the reads to let go by it, under the outbox's write lock,
-- which alarms' commits wait for, rather than going through years of reads kept.
CREATE INDEX IF NOT EXISTS audit_time ON audit (at_ms);
"""


class Shown(NamedTuple):
    """A device whose personal data a person was shown whole, and which of it."""

    community: str
    device_id: str
    what: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at_ms: int
    actor: str
    role: str
    community: str
    device_id: str
    # Which personal data (gateway.api.privacy): the wearer's name, phone and emergency
    # contacts, the device's position, or both.
    what: str
    # The request that showed it.
    via: str


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._conn = open_book(path, _SCHEMA, "the audit")
        # Used from the API's worker threads (see open_book), one at a time.
        self._lock = threading.Lock()

    def close(self) -> None:
        # Once a call still running on a worker thread has ended.
        with self._lock:
            self._conn.close()

    def record(
        self,
        *,
        at_ms: int,
        actor: str,
        role: str,
        shown: Sequence[Shown],
        via: str,
    ) -> None:
        """One row per device whose personal data was shown whole; StoreError if it
        cannot be recorded (a full disk)."""
        with self._lock:
            try:
                self._conn.executemany(
                    "INSERT INTO audit (at_ms, actor, role, community, device_id, what, via)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ((at_ms, actor, role, community, device_id, what, via)
                     for community, device_id, what in shown),
                )  # fmt: skip
            except sqlite3.Error as exc:
                raise StoreError(f"the read could not be audited: {exc}", retryable=True) from exc

    def forget_before(self, before_ms: int, limit: int) -> int:
        """Removes at most `limit` of the oldest rows recorded before `before_ms`, found
        by their time's index; the newest stays, so that ids are never given again."""
        with self._lock:
            return self._conn.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at_ms < ?"
                " AND id < (SELECT max(id) FROM audit) ORDER BY at_ms, id LIMIT ?)",
                (before_ms, limit),
            ).rowcount

    def entries(
        self,
        *,
        limit: int = 100,
        actor: str | None = None,
        community: str | None = None,
        device_id: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first."""
        where = []
        params: list[object] = []
        for column, value in (("actor", actor), ("community", community), ("device_id", device_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        query = "SELECT id, at_ms, actor, role, community, device_id, what, via FROM audit"
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY id DESC LIMIT ?", (*params, limit))
            return [AuditEntry(*row) for row in rows]
