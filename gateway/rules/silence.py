"""Silences: maintenance windows that mute alerts by device, place or rule.

A silence never mutes a life-safety alert (fire, SOS, fall, sewer gas, thermal
runaway): that alert goes out anyway, and the alert book records that a silence was
overridden.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError
from gateway.registry import Registry
from gateway.rules.alert import AlertChange
from gateway.store.database import open_book

_SCHEMA = """
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY,
    community TEXT,
    building TEXT,
    device_id TEXT,
    rule TEXT,
    starts_ms INTEGER NOT NULL,
    ends_ms INTEGER NOT NULL,
    author TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


class SilenceError(GatewayError):
    """A silence that cannot be made as asked."""


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    community: str | None
    building: str | None
    device_id: str | None
    rule: str | None
    starts_ms: int
    ends_ms: int
    author: str
    reason: str

    def matches(self, change: AlertChange, building: str | None, now_ms: int) -> bool:
        device = change.device
        return (
            self.starts_ms <= now_ms < self.ends_ms
            and self.community in (None, device.community)
            and self.device_id in (None, device.device_id)
            and self.rule in (None, change.rule)
            and self.building in (None, building)
        )


class SilenceBook:
    def __init__(self, path: Path, registry: Registry) -> None:
        self._registry = registry
        self._conn = open_book(path, _SCHEMA, "silences")
        # Writes come from the API's worker threads (see open_book), one at a time.
        self._lock = threading.Lock()
        self._active = self._load()

    def close(self) -> None:
        # Once a call still running on a worker thread has ended.
        with self._lock:
            self._conn.close()

    def add(
        self,
        *,
        author: str,
        reason: str,
        starts_ms: int,
        ends_ms: int,
        community: str | None = None,
        building: str | None = None,
        device_id: str | None = None,
        rule: str | None = None,
    ) -> Silence:
        if not author.strip() or not reason.strip():
            raise SilenceError("a silence needs an author and a reason")
        if ends_ms <= starts_ms:
            raise SilenceError("a silence must end after it starts")
        if not any((community, building, device_id, rule)):
            raise SilenceError("a silence needs a device, a place or a rule to match")
        if building and not community:
            raise SilenceError("a building is named within its community")
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO silences (community, building, device_id, rule, starts_ms,"
                " ends_ms, author, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (community, building, device_id, rule, starts_ms, ends_ms, author, reason),
            )
            silence = Silence(
                int(cursor.lastrowid or 0), community, building, device_id, rule,
                starts_ms, ends_ms, author, reason,
            )  # fmt: skip
            # A new list, not an append: the event loop's thread may be going through it.
            self._active = [*self._active, silence]
        return silence

    def delete(self, silence_id: int) -> None:
        with self._lock:
            deleted = self._conn.execute("DELETE FROM silences WHERE id = ?", (silence_id,))
            if not deleted.rowcount:
                raise SilenceError(f"no silence {silence_id}")
            self._active = [s for s in self._active if s.id != silence_id]

    def current(self, now_ms: int) -> list[Silence]:
        """Silences not yet expired."""
        return [s for s in self._active if s.ends_ms > now_ms]

    def matching(self, change: AlertChange, now_ms: int) -> Silence | None:
        if not self._active:
            return None
        registered = self._registry.get(change.device.community, change.device.device_id)
        building = registered.building if registered else None
        for silence in self._active:
            if silence.matches(change, building, now_ms):
                return silence
        return None

    def _load(self) -> list[Silence]:
        rows = self._conn.execute(
            "SELECT id, community, building, device_id, rule, starts_ms, ends_ms, author, reason"
            " FROM silences"
        )
        return [Silence(*row) for row in rows]
