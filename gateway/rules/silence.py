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
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.errors import GatewayError
from gateway.registry import Placed, Registry, Site
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
# The longest silence: a building's renovation, a season's works on the sewers.
MAX_SILENCE_MS = 366 * 86_400_000
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

    def matches(self, change: AlertChange, placed: Placed | None, now_ms: int) -> bool:
        """`placed`: where the change's alert is (its device in the registry, or where
        the alert began)."""
        device = change.device
        return (
            self.starts_ms <= now_ms < self.ends_ms
            and self.community in (None, device.community)
            and self.device_id in (None, device.device_id)
            and self.rule in (None, change.rule)
            and all(
                wanted is None or wanted == getattr(placed, level, None)
                for level, wanted in (
                    ("area", self.area),
                    ("compound", self.compound),
                    ("building", self.building),
                )
            )
        )


@dataclass(frozen=True, slots=True)
class _Held:
    """The silences kept, by the community they are of (None: of every community), each
    community's in order of their ends with those ends beside them: the silences that
    can match at a time are those ending after it, found by bisection, however many
    ended before (a district's desks make thousands a year, kept for years, and a tick
    that finds tens of thousands of devices offline matches every change)."""

    by_community: Mapping[str | None, tuple[tuple[int, ...], tuple[Silence, ...]]]

    @staticmethod
    def of(silences: Iterable[Silence]) -> _Held:
        grouped: dict[str | None, list[Silence]] = {}
        for silence in silences:
            grouped.setdefault(silence.community, []).append(silence)
        by_community = {}
        for community, group in grouped.items():
            group.sort(key=_ends_then_id)
            by_community[community] = (tuple(s.ends_ms for s in group), tuple(group))
        return _Held(by_community)

    def silences(self) -> list[Silence]:
        return [s for _, group in self.by_community.values() for s in group]

    def unended(self, community: str | None, now_ms: int) -> tuple[Silence, ...]:
        ends, group = self.by_community.get(community, ((), ()))
        return group[bisect_right(ends, now_ms) :]


def _ends_then_id(silence: Silence) -> tuple[int, int]:
    return silence.ends_ms, silence.id


def _migrate(conn: sqlite3.Connection) -> None:
    """An earlier version's silences, brought to this version's."""
    add_columns(conn, "silences", _ADDED_COLUMNS)


class SilenceBook:
    def __init__(self, path: Path, registry: Registry, *, all_registered: bool = False) -> None:
        """`all_registered`: only registered devices are taken in (a community without
        one has none to mute)."""
        self._registry = registry
        self._all_registered = all_registered
        self._conn = open_book(path, _SCHEMA, "silences", migrate=_migrate)
        # Writes come from the API's worker threads (see open_book), one at a time.
        self._lock = threading.Lock()
        self._held = _Held.of(self._load())

    def use_registry(self, registry: Registry) -> None:
        """A reloaded registry: a device is silenced where it is registered now."""
        self._registry = registry

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
        if ends_ms <= now_ms:
            # Times in seconds, say, rather than milliseconds: a silence of 1970. Said
            # first: left out, the start is now, which the caller never gave.
            raise SilenceError(
                f"ends_ms {ends_ms} is already past (now {now_ms}, in ms since 1970)"
            )
        if ends_ms <= starts_ms:
            raise SilenceError("a silence must end after it starts")
        if ends_ms - max(starts_ms, now_ms) > MAX_SILENCE_MS:
            # Microseconds, say, rather than milliseconds: a silence of the year 57,970,
            # which would mute the community for good and never be let go.
            raise SilenceError(
                f"ends_ms {ends_ms} is more than a year after the silence starts (in ms "
                "since 1970): a longer one is a change of the rules, not a silence"
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
        placed = bool(area or compound or building) or bool(community and self._all_registered)
        if placed and not self._registry.holds(cell):
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
            # Made anew: the event loop's thread may be going through them.
            self._held = _Held.of([*self._held.silences(), silence])
        return silence

    def end(self, silence_id: int, now_ms: int, *, within: Collection[str] | None = None) -> None:
        """Ends a silence not yet expired at `now_ms`. It stays in the book, ended, as alerts'
        histories name it by its id, until retention lets it go with the others ended.
        `within`: the communities the silence must be of, or it is not found."""
        with self._lock:
            found = [
                s for s in self._held.silences()
                if s.id == silence_id and s.ends_ms > now_ms
                and (within is None or s.community in within)
            ]  # fmt: skip
            if not found:
                raise SilenceError(f"no silence {silence_id}")
            self._conn.execute("UPDATE silences SET ends_ms = ? WHERE id = ?", (now_ms, silence_id))
            ended = replace(found[0], ends_ms=now_ms)
            self._held = _Held.of(ended if s.id == silence_id else s for s in self._held.silences())

    def forget_ended(self, before_ms: int) -> int:
        """Removes silences that ended before `before_ms`; the newest stays whatever its
        end, so that ids, which alerts' histories name, are never given again."""
        with self._lock:
            removed = self._conn.execute(
                "DELETE FROM silences WHERE ends_ms < ? AND id < (SELECT max(id) FROM silences)",
                (before_ms,),
            ).rowcount
            if removed:
                self._held = _Held.of(self._load())
        return removed

    def current(self, now_ms: int) -> list[Silence]:
        """Silences not yet expired, in the order they were made."""
        held = self._held
        unended = [s for c in held.by_community for s in held.unended(c, now_ms)]
        return sorted(unended, key=_silence_id)

    def matching(
        self, change: AlertChange, now_ms: int, site: Site | None = None
    ) -> Silence | None:
        """The first made of the silences that mute `change` at `now_ms`, or None.
        `site`: where its alert began (see AlertEntry.where), if it did."""
        held = self._held
        community = change.device.community
        candidates = [*held.unended(community, now_ms), *held.unended(None, now_ms)]
        if not candidates:
            return None
        device = change.device
        placed = (
            site
            if site is not None
            else self._registry.site(community, device.device_type, device.device_id)
        )
        muting = [s for s in candidates if s.matches(change, placed, now_ms)]
        return min(muting, key=_silence_id, default=None)

    def _load(self) -> list[Silence]:
        rows = self._conn.execute(f"SELECT id, {_STORED} FROM silences")
        return [Silence(*row) for row in rows]


def _silence_id(silence: Silence) -> int:
    return silence.id
