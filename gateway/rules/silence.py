"""Silences: maintenance windows that mute alerts by device, place or rule.

A place is named as the registry names it, within its community: an area, a compound,
a building, or any of them together (building numbers repeat across the compounds of a
community: building 3 of one compound is not building 3 of the next).

A silence never mutes a life-safety alert (fire, SOS, fall, sewer gas, thermal
runaway): that alert goes out anyway, and the alert book records that a silence was
overridden.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.errors import GatewayError
from gateway.registry import RegisteredDevice, Registry, within
from gateway.rules.alert import AlertChange
from gateway.store.database import add_columns, open_book

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
    reason TEXT NOT NULL,
    area TEXT,
    compound TEXT
);
"""
# Columns added since the table was first made, with their types: silences made before
# them name no area or compound (NULL), and match as they did.
_ADDED_COLUMNS = (("area", "TEXT"), ("compound", "TEXT"))
_STORED = "community, area, compound, building, device_id, rule, starts_ms, ends_ms, author, reason"


class SilenceError(GatewayError):
    """A silence that cannot be made as asked."""


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    community: str | None
    area: str | None
    compound: str | None
    building: str | None
    device_id: str | None
    rule: str | None
    starts_ms: int
    ends_ms: int
    author: str
    reason: str

    def matches(
        self, change: AlertChange, registered: RegisteredDevice | None, now_ms: int
    ) -> bool:
        """`registered`: the change's device in the registry, for its place."""
        device = change.device
        return (
            self.starts_ms <= now_ms < self.ends_ms
            and self.community in (None, device.community)
            and self.device_id in (None, device.device_id)
            and self.rule in (None, change.rule)
            and all(
                wanted is None or wanted == getattr(registered, level, None)
                for level, wanted in (
                    ("area", self.area),
                    ("compound", self.compound),
                    ("building", self.building),
                )
            )
        )


def _migrate(conn: sqlite3.Connection) -> None:
    """An earlier version's silences, brought to this version's."""
    add_columns(conn, "silences", _ADDED_COLUMNS)


class SilenceBook:
    def __init__(self, path: Path, registry: Registry) -> None:
        self._registry = registry
        self._conn = open_book(path, _SCHEMA, "silences", migrate=_migrate)
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
        area: str | None = None,
        compound: str | None = None,
        building: str | None = None,
        device_id: str | None = None,
        rule: str | None = None,
        now_ms: int,
    ) -> Silence:
        if not author.strip() or not reason.strip():
            raise SilenceError("a silence needs an author and a reason")
        if ends_ms <= starts_ms:
            raise SilenceError("a silence must end after it starts")
        if ends_ms <= now_ms:
            # Times in seconds, say, rather than milliseconds: a silence of 1970.
            raise SilenceError(
                f"ends_ms {ends_ms} is already past (now {now_ms}, in ms since 1970)"
            )
        if not any((community, area, compound, building, device_id, rule)):
            raise SilenceError("a silence needs a device, a place or a rule to match")
        # Ids and place names repeat across the communities of one installation: a
        # silence for one community's br-1 must not mute another's.
        for level, named in (("an area", area), ("a compound", compound),
                             ("a building", building), ("a device", device_id)):  # fmt: skip
            if named and not community:
                raise SilenceError(f"{level} is named within its community")
        cell = (community or "", area, compound, building)
        if (area or compound or building) and not any(
            within(cell, place) for place in self._registry.places()
        ):
            # Matched against the place the registry gives a device, it would mute nothing.
            shown = "/".join(p for p in cell if p)
            raise SilenceError(f"no registered device is in {shown}")
        with self._lock:
            cursor = self._conn.execute(
                f"INSERT INTO silences ({_STORED})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (community, area, compound, building, device_id, rule, starts_ms, ends_ms,
                 author, reason),
            )  # fmt: skip
            silence = Silence(
                int(cursor.lastrowid or 0), community, area, compound, building, device_id,
                rule, starts_ms, ends_ms, author, reason,
            )  # fmt: skip
            # A new list, not an append: the event loop's thread may be going through it.
            self._active = [*self._active, silence]
        return silence

    def end(self, silence_id: int, now_ms: int, *, within: Collection[str] | None = None) -> None:
        """Ends a silence not yet expired at `now_ms`. It stays in the book, ended, as alerts'
        histories name it by its id, until retention lets it go with the others ended.
        `within`: the communities the silence must be of, or it is not found."""
        with self._lock:
            found = [
                s for s in self._active
                if s.id == silence_id and s.ends_ms > now_ms
                and (within is None or s.community in within)
            ]  # fmt: skip
            if not found:
                raise SilenceError(f"no silence {silence_id}")
            self._conn.execute("UPDATE silences SET ends_ms = ? WHERE id = ?", (now_ms, silence_id))
            ended = replace(found[0], ends_ms=now_ms)
            self._active = [ended if s.id == silence_id else s for s in self._active]

    def forget_ended(self, before_ms: int) -> int:
        """Removes silences that ended before `before_ms`; the newest stays whatever its
        end, so that ids, which alerts' histories name, are never given again."""
        with self._lock:
            removed = self._conn.execute(
                "DELETE FROM silences WHERE ends_ms < ? AND id < (SELECT max(id) FROM silences)",
                (before_ms,),
            ).rowcount
            if removed:
                self._active = self._load()
        return removed

    def current(self, now_ms: int) -> list[Silence]:
        """Silences not yet expired."""
        return [s for s in self._active if s.ends_ms > now_ms]

    def matching(self, change: AlertChange, now_ms: int) -> Silence | None:
        if not self._active:
            return None
        registered = self._registry.get(change.device.community, change.device.device_id)
        for silence in self._active:
            if silence.matches(change, registered, now_ms):
                return silence
        return None

    def _load(self) -> list[Silence]:
        rows = self._conn.execute(f"SELECT id, {_STORED} FROM silences")
        return [Silence(*row) for row in rows]
