"""The alert book: every alert with its full history, kept beside the outbox until the
retention lets a closed one go (gateway.retention).

The rules engine decides when an alert fires and resolves; people acknowledge and
close it. Each step is recorded with who and when.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.decode.record import DeviceRef, Position
from gateway.errors import GatewayError
from gateway.registry import COMMUNITY, PLACE_TYPES, Place, Registry, Site, within
from gateway.rules.alert import AlertChange, AlertState, Repeat
from gateway.rules.engine import Track, TrackKey
from gateway.rules.presence import GroupKey
from gateway.rules.rate import RateWindows, SavedWindows
from gateway.store.database import add_columns, open_book, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    title TEXT NOT NULL,
    severity TEXT NOT NULL,
    life_safety INTEGER NOT NULL,
    community TEXT NOT NULL,
    device_type TEXT NOT NULL,
    device_id TEXT NOT NULL,
    port INTEGER,
    state TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    -- Null for an alert that ended while pending: nobody has anything to handle.
    fired_ms INTEGER,
    acknowledged_by TEXT,
    acknowledged_ms INTEGER,
    arrived_by TEXT,
    arrived_ms INTEGER,
    assigned_to TEXT,
    resolved_ms INTEGER,
    closed_by TEXT,
    closed_ms INTEGER,
    note TEXT,
    -- Where the alert fired, in WGS-84 degrees, as the record that fired it said; null
    -- when it said nothing. The latest values in memory are gone after a restart.
    lat REAL,
    lon REAL,
    -- Events that joined the alert after the one that made it (see merge_s), and when
    -- the last of them came.
    repeats INTEGER NOT NULL DEFAULT 0,
    repeated_ms INTEGER,
    -- Where the alert is, as the registry said when it began: JSON [area, compound,
    -- building, unit, lat, lon] (gateway.registry.Site); null in an earlier version's.
    site TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (state);
-- The open alerts alone, by device: those of a device or a community are found, and all
-- are counted by state, without going through the years of closed ones. Its condition is
-- the first term of _OPEN, which a query must hold as written for SQLite to use it.
CREATE INDEX IF NOT EXISTS alerts_open_device
    ON alerts (community, device_id, state, fired_ms) WHERE state != 'closed';
-- A page of the history, newest first, reads the newest alerts alone.
CREATE INDEX IF NOT EXISTS alerts_started ON alerts (started_ms);
CREATE TABLE IF NOT EXISTS alert_history (
    id INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL,
    state TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS alert_history_alert ON alert_history (alert_id);
CREATE TABLE IF NOT EXISTS rule_tracks (
    rule TEXT NOT NULL,
    community TEXT NOT NULL,
    device_id TEXT NOT NULL,
    port INTEGER NOT NULL,
    firing INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    clearing_since_ms INTEGER,
    alert_id TEXT NOT NULL,
    last_value REAL,
    held_ms INTEGER,
    PRIMARY KEY (rule, community, device_id, port)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS community_rates (
    community TEXT NOT NULL,
    -- JSON [[device_id, field, doubles], ...]: the series whose windows follow in turn
    series TEXT NOT NULL,
    -- each series' windows, each window as doubles: its port (-1: the device's own), how
    -- many doubles follow, then time (epoch ms) and value in turn (gateway.rules.rate)
    windows BLOB NOT NULL
);
-- When each device was last heard, by group: `seen` is a JSON object of device id to
-- epoch ms. What each judged batch heard is logged in `heard_log` as JSON
-- [[[community, device_type], {device id: ms}], ...], and folded in here every
-- HEARD_FOLD_BATCHES batches: a row a device written with every batch cost more than
-- judging the batch did.
CREATE TABLE IF NOT EXISTS heard (
    community TEXT NOT NULL,
    device_type TEXT NOT NULL,
    seen BLOB NOT NULL,
    PRIMARY KEY (community, device_type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heard_log (id INTEGER PRIMARY KEY, seen BLOB NOT NULL);
-- Life-safety alerts retention let go: a record of one sent again is known by it, where
-- an alarm never seen, from a device whose clock is years behind, is made.
CREATE TABLE IF NOT EXISTS let_go (alert_id TEXT PRIMARY KEY) WITHOUT ROWID;
-- The latest time before which retention let the ended alerts go, whatever it keeps now:
-- a record of one of them sent again, after retention was made longer, is known by it.
CREATE TABLE IF NOT EXISTS let_go_before (ms INTEGER NOT NULL);
"""
# Batches logged in `heard_log` before they are folded into `heard`: a fold rewrites the
# groups heard from, so it is done for many batches at once, and often enough that the
# log a restart reads stays small.
HEARD_FOLD_BATCHES = 50
# Columns added since the first release, for alert books made by earlier versions.
_ADDED_COLUMNS = (
    ("arrived_by", "TEXT"), ("arrived_ms", "INTEGER"), ("assigned_to", "TEXT"),
    ("lat", "REAL"), ("lon", "REAL"), ("repeats", "INTEGER NOT NULL DEFAULT 0"),
    ("repeated_ms", "INTEGER"), ("site", "TEXT"),
)  # fmt: skip
# SQLite's primary keys take no NULL; no port is stored as -1.
_NO_PORT = -1
RULES_ACTOR = "rules"
# The note of the history step an event that joined an alert leaves.
REPEATED = "repeated"
# The states each step of a person moves an alert out of. From any other state the alert
# keeps its own: one acknowledged after it resolved stays resolved.
MOVES_FROM: Mapping[AlertState, frozenset[AlertState]] = {
    AlertState.ACKNOWLEDGED: frozenset({AlertState.FIRING}),
    AlertState.ARRIVED: frozenset({AlertState.FIRING, AlertState.ACKNOWLEDGED}),
    AlertState.CLOSED: frozenset(AlertState) - {AlertState.CLOSED},
}
# The same, as the SQL value of the `state` column after each step.
_STATE_AFTER = {
    step: "CASE WHEN state IN ({}) THEN '{}' ELSE state END".format(
        ", ".join(f"'{state}'" for state in sorted(sources)), step
    )
    for step, sources in MOVES_FROM.items()
}
# The alerts the book counts open: pending, and fired but not yet closed by a person.
_OPEN = "state != 'closed' AND (fired_ms IS NOT NULL OR state = 'pending')"
_ENTRY_COLUMNS = (
    "alert_id, rule, title, severity, life_safety, community, device_type, device_id, port,"
    " state, started_ms, updated_ms, fired_ms, acknowledged_by, acknowledged_ms, arrived_by,"
    " arrived_ms, assigned_to, resolved_ms, closed_by, closed_ms, note, lat, lon, repeats,"
    " repeated_ms, site"
)


class AlertError(GatewayError):
    """A lifecycle step that does not apply to the alert as it is."""


@dataclass(frozen=True, slots=True)
class AlertStep:
    state: AlertState
    at_ms: int
    actor: str
    note: str | None


@dataclass(frozen=True, slots=True)
class AlertEntry:
    alert_id: str
    rule: str
    title: str
    severity: str
    life_safety: bool
    community: str
    device_type: str
    device_id: str
    port: int | None
    state: AlertState
    started_ms: int
    updated_ms: int
    # None while pending, and for an alert that ended while pending.
    fired_ms: int | None
    acknowledged_by: str | None
    acknowledged_ms: int | None
    arrived_by: str | None
    arrived_ms: int | None
    assigned_to: str | None
    resolved_ms: int | None
    closed_by: str | None
    closed_ms: int | None
    note: str | None
    # Where the alert fired, as the record that fired it said; None when it said nothing.
    position: Position | None = None
    # Events that joined it after the first (a resident pressing SOS again), and when
    # the last came.
    repeats: int = 0
    repeated_ms: int | None = None
    # Where it is, as the registry said when it began (its community alone for a device
    # it did not have); None in an earlier version's book.
    site: Site | None = None

    def where(self, registry: Registry) -> Site | None:
        """Where the alert is: where the registry had it when it began, or for an alert
        kept by an earlier version, where the registry has it now."""
        if self.site is not None:
            return self.site
        return registry.site(self.community, self.device_type, self.device_id)


def places_about(
    registry: Registry, community: str, place_type: str, place_id: str, site: Site | None
) -> list[Place]:
    """The registered places within the place an alert is about (a building on fire, a
    community), that place being where the alert began (`site`, see AlertEntry.site),
    whatever the registry calls it now: once a reload gives another compound a building
    3 too, lakeside's is east·lakeside·3, and 3 names both. For an alert kept without a
    site (an earlier version's), the places the registry now has of its name."""
    if site is None or place_type == COMMUNITY:
        return registry.places_within(community, place_type, place_id)
    level = 1 + PLACE_TYPES.index(place_type)
    began: Place = (
        community,
        site.area,
        site.compound if level > 1 else None,
        site.building if level > 2 else None,
    )
    named = registry.place_id(site, place_type)
    if named is None:
        return []
    # Its name alone may be another place's now, its own devices all taken out.
    return [p for p in registry.places_within(community, place_type, named) if within(began, p)]


def _migrate(conn: sqlite3.Connection) -> None:
    """An earlier version's alert book, brought to this version's."""
    add_columns(conn, "alerts", _ADDED_COLUMNS)
    add_columns(conn, "rule_tracks", (("held_ms", "INTEGER"),))
    _move_last_seen(conn)
    _unkey_community_rates(conn)
    _move_rate_windows(conn)


@dataclass(frozen=True, slots=True)
class Kept:
    """An alert as the book has it, for judging a change of it."""

    state: AlertState
    # Where it is kept as being (see AlertEntry.site).
    site: Site | None
    # Its last change's time, which its next point comes after.
    updated_ms: int


class AlertBook:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = open_book(path, _SCHEMA, "the alert book", migrate=_migrate)

    def close(self) -> None:
        self._conn.close()

    def load_tracks(self) -> list[tuple[TrackKey, Track]]:
        rows = self._conn.execute(
            "SELECT rule, community, device_id, port, firing, since_ms, readings, "
            "clearing_since_ms, alert_id, last_value, held_ms FROM rule_tracks"
        )
        return [
            (
                (rule, community, device_id, None if port == _NO_PORT else port),
                Track(bool(firing), since_ms, readings, clearing, alert_id, last_value, held),
            )
            for rule, community, device_id, port, firing, since_ms, readings, clearing, alert_id, last_value, held in rows
        ]

    def load_last_seen(self) -> list[tuple[DeviceRef, int]]:
        groups = _heard_groups(self._conn)
        _replay_heard_log(self._conn, groups)
        return [
            (DeviceRef(community, device_type, device_id), seen_ms)
            for (community, device_type), times in groups.items()
            for device_id, seen_ms in times.items()
            if seen_ms is not None
        ]

    @staticmethod
    def write_rates(conn: sqlite3.Connection, saved: list[SavedWindows]) -> None:
        """Replace the saved rate windows with these, inside the caller's transaction."""
        conn.execute("DELETE FROM community_rates")
        conn.executemany("INSERT INTO community_rates VALUES (?, ?, ?)", saved)

    def load_rates(self) -> list[SavedWindows]:
        rows = self._conn.execute("SELECT community, series, windows FROM community_rates")
        return [(community, series, bytes(windows)) for community, series, windows in rows]

    @staticmethod
    def write(
        conn: sqlite3.Connection,
        changes: Sequence[AlertChange],
        tracks_changed: Sequence[tuple[TrackKey, Track]],
        tracks_gone: Sequence[TrackKey],
        seen: Sequence[tuple[GroupKey, dict[str, int | None]]] = (),
        repeats: Sequence[Repeat] = (),
        sites: Mapping[str, Site] | None = None,
    ) -> None:
        """What the rules decided, inside the caller's transaction: when devices were last
        heard from, the rule timers, new alerts, events that joined alerts, and alerts
        whose condition cleared. `sites`: where new alerts are, by alert id."""
        if seen:
            conn.execute("INSERT INTO heard_log (seen) VALUES (?)", (orjson.dumps(seen),))
            (logged,) = conn.execute("SELECT count(*) FROM heard_log").fetchone()
            if logged >= HEARD_FOLD_BATCHES:
                _fold_heard_log(conn)
        conn.executemany(
            "INSERT OR REPLACE INTO rule_tracks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (*key[:3], _NO_PORT if key[3] is None else key[3], int(t.firing), t.since_ms,
                 t.readings, t.clearing_since_ms, t.alert_id, t.last_value, t.held_ms)
                for key, t in tracks_changed
            ),
        )  # fmt: skip
        conn.executemany(
            "DELETE FROM rule_tracks WHERE rule = ? AND community = ? AND device_id = ? AND port = ?",
            ((*key[:3], _NO_PORT if key[3] is None else key[3]) for key in tracks_gone),
        )
        for change in changes:
            if change.state in (AlertState.PENDING, AlertState.FIRING):
                lat, lon = Position.in_fields(change.values) or (None, None)
                site = sites.get(change.alert_id) if sites else None
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO alerts (alert_id, rule, title, severity, life_safety,"
                    " community, device_type, device_id, port, state, started_ms, updated_ms,"
                    " fired_ms, lat, lon, site)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        change.alert_id, change.rule, change.title, str(change.severity),
                        int(change.life_safety), change.device.community,
                        change.device.device_type, change.device.device_id, change.port,
                        str(change.state), change.started_ms, change.at_ms,
                        change.at_ms if change.state is AlertState.FIRING else None, lat, lon,
                        None if site is None else _site_json(site),
                    ),
                ).rowcount  # fmt: skip
                if not inserted and change.state is AlertState.FIRING:
                    # Where it fired, if the record that fired it said; else where it began.
                    inserted = conn.execute(
                        "UPDATE alerts SET state = 'firing', updated_ms = max(updated_ms, ?),"
                        " fired_ms = ?,"
                        " lat = coalesce(?, lat), lon = coalesce(?, lon)"
                        " WHERE alert_id = ? AND state = 'pending'",
                        (change.at_ms, change.at_ms, lat, lon, change.alert_id),
                    ).rowcount
                if inserted:
                    AlertBook._step(
                        conn,
                        change.alert_id,
                        change.state,
                        change.at_ms,
                        RULES_ACTOR,
                        _silence_note(change),
                    )
            else:
                updated = conn.execute(
                    "UPDATE alerts SET state = CASE WHEN state = 'closed' THEN 'closed'"
                    " ELSE 'resolved' END, resolved_ms = ?, updated_ms = max(updated_ms, ?)"
                    " WHERE alert_id = ? AND resolved_ms IS NULL",
                    (change.at_ms, change.at_ms, change.alert_id),
                ).rowcount
                if updated:
                    AlertBook._step(
                        conn, change.alert_id, AlertState.RESOLVED, change.at_ms, RULES_ACTOR
                    )
        # After the changes: an event may join an alert made in the same batch.
        for repeat in repeats:
            joined = conn.execute(
                "UPDATE alerts SET repeats = repeats + 1, updated_ms = max(updated_ms, ?),"
                " repeated_ms = max(coalesce(repeated_ms, 0), ?) WHERE alert_id = ?",
                (repeat.at_ms, repeat.at_ms, repeat.alert_id),
            ).rowcount
            if joined:
                state = _read(conn, repeat.alert_id).state
                AlertBook._step(conn, repeat.alert_id, state, repeat.at_ms, RULES_ACTOR, REPEATED)

    # --- what people do; each step checked and made in one transaction ------------------

    def acknowledge(self, alert_id: str, who: str, at_ms: int) -> AlertEntry:
        with transaction(self._conn) as conn:
            AlertBook.record_acknowledge(conn, alert_id, who, at_ms)
        return self.get(alert_id)

    def arrive(self, alert_id: str, who: str, at_ms: int) -> AlertEntry:
        with transaction(self._conn) as conn:
            AlertBook.record_arrival(conn, alert_id, who, at_ms)
        return self.get(alert_id)

    def assign(self, alert_id: str, who: str, to: str, at_ms: int) -> AlertEntry:
        with transaction(self._conn) as conn:
            AlertBook.record_assignment(conn, alert_id, who, to, at_ms)
        return self.get(alert_id)

    def close_alert(self, alert_id: str, who: str, at_ms: int, note: str) -> AlertEntry:
        with transaction(self._conn) as conn:
            AlertBook.record_close(conn, alert_id, who, at_ms, note)
        return self.get(alert_id)

    # The record_* steps run inside the caller's transaction, so that the handling time
    # they make can commit with them. Each raises AlertError when it does not apply.

    @staticmethod
    def record_acknowledge(conn: sqlite3.Connection, alert_id: str, who: str, at_ms: int) -> None:
        entry = _read(conn, alert_id)
        if entry.acknowledged_by is not None or entry.state is AlertState.CLOSED:
            raise AlertError(
                f"alert {alert_id} is {entry.state}, acknowledged by {entry.acknowledged_by}"
            )
        _refuse_unfired(entry)
        conn.execute(
            "UPDATE alerts SET acknowledged_by = ?, acknowledged_ms = ?, updated_ms = ?,"
            f" state = {_STATE_AFTER[AlertState.ACKNOWLEDGED]} WHERE alert_id = ?",
            (who, at_ms, at_ms, alert_id),
        )
        AlertBook._step(conn, alert_id, AlertState.ACKNOWLEDGED, at_ms, who)

    @staticmethod
    def record_arrival(conn: sqlite3.Connection, alert_id: str, who: str, at_ms: int) -> None:
        """Someone reached the scene; reaching it acknowledges the alert too."""
        entry = _read(conn, alert_id)
        if entry.state is AlertState.CLOSED or entry.arrived_by is not None:
            raise AlertError(f"alert {alert_id} is {entry.state}, arrived: {entry.arrived_by}")
        _refuse_unfired(entry)
        if entry.acknowledged_by is None:
            AlertBook.record_acknowledge(conn, alert_id, who, at_ms)
        conn.execute(
            "UPDATE alerts SET arrived_by = ?, arrived_ms = ?, updated_ms = ?,"
            f" state = {_STATE_AFTER[AlertState.ARRIVED]} WHERE alert_id = ?",
            (who, at_ms, at_ms, alert_id),
        )
        AlertBook._step(conn, alert_id, AlertState.ARRIVED, at_ms, who)

    @staticmethod
    def record_assignment(
        conn: sqlite3.Connection, alert_id: str, who: str, to: str, at_ms: int
    ) -> None:
        entry = _read(conn, alert_id)
        if entry.state is AlertState.CLOSED:
            raise AlertError(f"alert {alert_id} is closed")
        if not to.strip():
            raise AlertError("an alert is assigned to a named person")
        conn.execute(
            "UPDATE alerts SET assigned_to = ?, updated_ms = ? WHERE alert_id = ?",
            (to, at_ms, alert_id),
        )
        AlertBook._step(conn, alert_id, entry.state, at_ms, who, f"assigned to {to}")

    @staticmethod
    def record_close(
        conn: sqlite3.Connection, alert_id: str, who: str, at_ms: int, note: str
    ) -> None:
        entry = _read(conn, alert_id)
        if entry.state is AlertState.CLOSED:
            raise AlertError(f"alert {alert_id} is already closed by {entry.closed_by}")
        if not note.strip():
            raise AlertError("closing an alert needs a note of what was found and done")
        conn.execute(
            f"UPDATE alerts SET state = {_STATE_AFTER[AlertState.CLOSED]}, closed_by = ?,"
            " closed_ms = ?, note = ?, updated_ms = ? WHERE alert_id = ?",
            (who, at_ms, note, at_ms, alert_id),
        )
        AlertBook._step(conn, alert_id, AlertState.CLOSED, at_ms, who, note)

    def get(self, alert_id: str) -> AlertEntry:
        return _read(self._conn, alert_id)

    def kept(self, alert_ids: Collection[str]) -> dict[str, Kept]:
        """How each of these alerts is in the book, by alert id; those not in the book
        left out. In one statement: a tick that finds a district's devices offline
        changes thousands."""
        rows = self._conn.execute(
            "SELECT alert_id, state, community, site, updated_ms FROM alerts"
            " WHERE alert_id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(list(alert_ids)).decode(),),
        )
        return {
            str(alert_id): Kept(AlertState(str(state)), _site(community, site), int(updated_ms))
            for alert_id, state, community, site, updated_ms in rows
        }

    def let_go_before_ms(self) -> int | None:
        """The latest time before which retention let the ended alerts go, if it did."""
        row = self._conn.execute("SELECT ms FROM let_go_before").fetchone()
        return None if row is None else int(row[0])

    def let_go_of(self, alert_ids: Collection[str]) -> set[str]:
        """Those of these alerts retention let go of (life-safety alerts, see `let_go`)."""
        rows = self._conn.execute(
            "SELECT alert_id FROM let_go WHERE alert_id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(list(alert_ids)).decode(),),
        )
        return {str(alert_id) for (alert_id,) in rows}

    @staticmethod
    def read(conn: sqlite3.Connection, alert_id: str) -> AlertEntry:
        """The alert as it is in the caller's transaction."""
        return _read(conn, alert_id)

    def count_fired_open(self) -> int:
        """Alerts that fired and no person has closed yet."""
        row = self._conn.execute(
            "SELECT count(*) FROM alerts WHERE state != 'closed' AND fired_ms IS NOT NULL"
        ).fetchone()
        return int(row[0])

    def open_alerts(
        self,
        *,
        communities: Collection[str] | None = None,
        devices: Collection[tuple[str, str]] | None = None,
    ) -> list[AlertEntry]:
        """Pending, and fired but not yet closed by a person, in order of start.
        `communities`: only alerts of these. `devices`: only alerts of these (community,
        device id)."""
        return AlertBook.open_in(self._conn, communities=communities, devices=devices)

    @staticmethod
    def open_in(
        conn: sqlite3.Connection,
        *,
        communities: Collection[str] | None = None,
        devices: Collection[tuple[str, str]] | None = None,
    ) -> list[AlertEntry]:
        """The open alerts as they are in the caller's transaction; see open_alerts."""
        where = [_OPEN]
        params: list[object] = []
        if communities is not None:
            where.append(f"community IN ({', '.join('?' * len(communities))})")
            params.extend(communities)
        if devices is not None:
            # One parameter for a page of thousands of devices: SQLite limits how many a
            # statement takes.
            where.append(
                "(community, device_id) IN (SELECT json_extract(value, '$[0]'),"
                " json_extract(value, '$[1]') FROM json_each(?))"
            )
            params.append(orjson.dumps(list(devices)).decode())
        # `+started_ms`: the open alerts read through their own index, then put in order,
        # rather than every alert ever kept gone through in order of start.
        rows = conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM alerts WHERE {' AND '.join(where)}"
            " ORDER BY +started_ms, alert_id",
            params,
        )
        return [_entry(row) for row in rows]

    def closed_then_resolved(self) -> list[AlertEntry]:
        """Alerts a person closed while their condition still held, which then cleared:
        their all-clear is owed as an open alert's is."""
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM alerts WHERE state = 'closed'"
            " AND fired_ms IS NOT NULL AND resolved_ms > closed_ms ORDER BY started_ms, alert_id"
        )
        return [_entry(row) for row in rows]

    def count_open(self) -> dict[AlertState, int]:
        """The open alerts (see open_alerts) by state; a state none is in is left out."""
        # `+state`: grouped through the index of open alerts, not the one of every
        # alert's state, which would go through every closed alert to skip it.
        rows = self._conn.execute(
            f"SELECT state, count(*) FROM alerts WHERE {_OPEN} GROUP BY +state"
        )
        return {AlertState(state): count for state, count in rows}

    def search(
        self,
        *,
        state: str | None = None,
        community: str | None = None,
        communities: Sequence[str] | None = None,
        rule: str | None = None,
        device_id: str | None = None,
        severity: str | None = None,
        since_ms: int | None = None,
        before: tuple[int, str] | None = None,
        limit: int = 500,
    ) -> list[AlertEntry]:
        """Alerts that fired (or are pending), in any state, newest first: by start, then
        by id. `communities`: only alerts of these. `before`: the (started_ms, alert_id)
        of the last alert of a page, for the page after it."""
        where = ["(fired_ms IS NOT NULL OR state = 'pending')"]
        params: list[object] = []
        for clause, value in (
            ("state = ?", state), ("community = ?", community), ("rule = ?", rule),
            ("device_id = ?", device_id), ("severity = ?", severity),
            ("started_ms >= ?", since_ms),
        ):  # fmt: skip
            if value is not None:
                where.append(clause)
                params.append(value)
        if communities is not None:
            where.append(f"community IN ({', '.join('?' * len(communities))})")
            params.extend(communities)
        if before is not None:
            # Alerts may share a start: the id orders them, so that a page ends exactly.
            where.append("(started_ms, alert_id) < (?, ?)")
            params.extend(before)
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM alerts WHERE {' AND '.join(where)}"
            " ORDER BY started_ms DESC, alert_id DESC LIMIT ?",
            (*params, limit),
        )
        return [_entry(row) for row in rows]

    @staticmethod
    def held(conn: sqlite3.Connection) -> set[str]:
        """The alerts rules' timers hold: a condition still holding after its alert was
        closed keeps the alert's id, and its clearing is recorded on the alert."""
        return {alert_id for (alert_id,) in conn.execute("SELECT alert_id FROM rule_tracks")}

    @staticmethod
    def ended(
        conn: sqlite3.Connection,
        before_ms: int,
        after: tuple[int, str],
        limit: int,
        held: Collection[str],
    ) -> tuple[list[str], tuple[int, str] | None]:
        """Of the `limit` alerts that started before `before_ms`, next after `after` (a
        start and an id), those closed by a person, or ended before they fired, that
        nothing has happened to since before `before_ms` (a clearing after the close
        is recorded on the alert, and its all-clear told) and that are not `held`.
        With them, where the next call goes on, or None when there are no more."""
        rows = conn.execute(
            "SELECT alert_id, started_ms, updated_ms < ?"
            " AND (state = 'closed' OR (fired_ms IS NULL AND state != 'pending'))"
            " FROM alerts WHERE started_ms < ? AND (started_ms, alert_id) > (?, ?)"
            " ORDER BY started_ms, alert_id LIMIT ?",
            (before_ms, before_ms, *after, limit),
        ).fetchall()
        if not rows:
            return [], None
        ended = [alert_id for alert_id, _, done in rows if done and alert_id not in held]
        last_id, last_start, _ = rows[-1]
        return ended, ((last_start, last_id) if len(rows) == limit else None)

    @staticmethod
    def forget(conn: sqlite3.Connection, alert_ids: Sequence[str], before_ms: int) -> int:
        """Removes the alerts and their history, inside the caller's transaction: those
        that ended before `before_ms` (AlertBook.ended)."""
        if conn.execute("UPDATE let_go_before SET ms = max(ms, ?)", (before_ms,)).rowcount == 0:
            conn.execute("INSERT INTO let_go_before (ms) VALUES (?)", (before_ms,))
        params = [(alert_id,) for alert_id in alert_ids]
        conn.executemany(
            "INSERT OR IGNORE INTO let_go (alert_id)"
            " SELECT alert_id FROM alerts WHERE alert_id = ? AND life_safety",
            params,
        )
        conn.executemany("DELETE FROM alert_history WHERE alert_id = ?", params)
        return conn.executemany("DELETE FROM alerts WHERE alert_id = ?", params).rowcount

    def history(self, alert_id: str) -> list[AlertStep]:
        rows = self._conn.execute(
            "SELECT state, at_ms, actor, note FROM alert_history WHERE alert_id = ? ORDER BY id",
            (alert_id,),
        )
        return [AlertStep(AlertState(s), at, actor, note) for s, at, actor, note in rows]

    @staticmethod
    def _step(
        conn: sqlite3.Connection,
        alert_id: str,
        state: AlertState,
        at_ms: int,
        actor: str,
        note: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO alert_history (alert_id, state, at_ms, actor, note) VALUES (?, ?, ?, ?, ?)",
            (alert_id, str(state), at_ms, actor, note),
        )


# How the history of an alert a silence muted begins its note.
MUTED = "muted by"


def was_muted(history: Sequence[AlertStep]) -> bool:
    """Whether a silence muted the alert: nobody was told of it."""
    return any(step.note is not None and step.note.startswith(MUTED) for step in history)


def _silence_note(change: AlertChange) -> str | None:
    if change.silenced_by is not None:
        return f"{MUTED} silence {change.silenced_by}"
    if change.silence_overridden is not None:
        return f"silence {change.silence_overridden} overridden: life-safety alerts are never muted"
    return None


def _refuse_unfired(entry: AlertEntry) -> None:
    """Nobody takes or reaches an alert that has not fired: the notices of an alert stop
    once a person took it, so one taken while pending would fire unannounced, and a
    pending condition may yet end without anything to handle."""
    if entry.fired_ms is not None:
        return
    if entry.state is AlertState.PENDING:
        raise AlertError(f"alert {entry.alert_id} is pending: it has not fired yet")
    raise AlertError(f"alert {entry.alert_id} never fired: its condition ended while pending")


def _read(conn: sqlite3.Connection, alert_id: str) -> AlertEntry:
    row = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM alerts WHERE alert_id = ?", (alert_id,)
    ).fetchone()
    if row is None:
        raise AlertError(f"no alert {alert_id}")
    return _entry(row)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _ms(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _entry(row: tuple[object, ...]) -> AlertEntry:
    (alert_id, rule, title, severity, life_safety, community, device_type, device_id, port,
     state, started_ms, updated_ms, fired_ms, acknowledged_by, acknowledged_ms, arrived_by,
     arrived_ms, assigned_to, resolved_ms, closed_by, closed_ms, note, lat, lon, repeats,
     repeated_ms, site) = row  # fmt: skip
    return AlertEntry(
        alert_id=str(alert_id),
        rule=str(rule),
        title=str(title),
        severity=str(severity),
        life_safety=bool(life_safety),
        community=str(community),
        device_type=str(device_type),
        device_id=str(device_id),
        port=_ms(port),
        state=AlertState(str(state)),
        started_ms=int(started_ms),  # type: ignore[call-overload]
        updated_ms=int(updated_ms),  # type: ignore[call-overload]
        fired_ms=_ms(fired_ms),
        acknowledged_by=_text(acknowledged_by),
        acknowledged_ms=_ms(acknowledged_ms),
        arrived_by=_text(arrived_by),
        arrived_ms=_ms(arrived_ms),
        assigned_to=_text(assigned_to),
        resolved_ms=_ms(resolved_ms),
        closed_by=_text(closed_by),
        closed_ms=_ms(closed_ms),
        note=_text(note),
        position=(
            Position(lat, lon) if isinstance(lat, float) and isinstance(lon, float) else None
        ),
        repeats=int(repeats or 0),  # type: ignore[call-overload]
        repeated_ms=_ms(repeated_ms),
        site=_site(community, site),
    )


def _site(community: object, stored: object) -> Site | None:
    return None if stored is None else Site(str(community), *orjson.loads(str(stored)))


def _site_json(site: Site) -> str:
    fields = [site.area, site.compound, site.building, site.unit, site.lat, site.lon]
    return orjson.dumps(fields).decode()


def _heard_groups(conn: sqlite3.Connection) -> dict[GroupKey, dict[str, int | None]]:
    rows = conn.execute("SELECT community, device_type, seen FROM heard")
    return {(community, device_type): orjson.loads(seen) for community, device_type, seen in rows}


def _replay_heard_log(
    conn: sqlite3.Connection, groups: dict[GroupKey, dict[str, int | None]]
) -> None:
    """The logged batches over `groups`, in the order they were judged. A device no
    longer watched (see LastHeard.forget) is None until it is heard again."""
    for (seen,) in conn.execute("SELECT seen FROM heard_log ORDER BY id"):
        for (community, device_type), times in orjson.loads(seen):
            groups.setdefault((community, device_type), {}).update(times)


def _fold_heard_log(conn: sqlite3.Connection) -> None:
    """Fold the logged batches into the groups they heard from, inside the caller's
    transaction."""
    logged: dict[GroupKey, dict[str, int | None]] = {}
    _replay_heard_log(conn, logged)
    for (community, device_type), times in logged.items():
        row = conn.execute(
            "SELECT seen FROM heard WHERE community = ? AND device_type = ?",
            (community, device_type),
        ).fetchone()
        if row is not None:
            times = {**orjson.loads(row[0]), **times}
        kept = {device_id: at_ms for device_id, at_ms in times.items() if at_ms is not None}
        conn.execute(
            "INSERT OR REPLACE INTO heard VALUES (?, ?, ?)",
            (community, device_type, orjson.dumps(kept)),
        )
    conn.execute("DELETE FROM heard_log")


def _unkey_community_rates(conn: sqlite3.Connection) -> None:
    """An earlier version kept a row a community in `community_rates`, keyed by it: a
    community's windows now take several rows, which its key refuses."""

    def keyed() -> bool:
        return any(row[5] for row in conn.execute("PRAGMA table_info(community_rates)"))

    if not keyed():
        return
    with transaction(conn):
        if not keyed():
            return
        conn.execute("ALTER TABLE community_rates RENAME TO community_rates_keyed")
        conn.execute(
            "CREATE TABLE community_rates (community TEXT NOT NULL, series TEXT NOT NULL,"
            " windows BLOB NOT NULL)"
        )
        conn.execute(
            "INSERT INTO community_rates SELECT community, series, windows"
            " FROM community_rates_keyed"
        )
        conn.execute("DROP TABLE community_rates_keyed")


def _move_rate_windows(conn: sqlite3.Connection) -> None:
    """An alert book of an earlier version kept a row a port's rate window, in
    `rate_windows`: moved into `community_rates`, in rows of a community's devices."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'rate_windows'").fetchone():
        return
    with transaction(conn):
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'rate_windows'").fetchone():
            return
        windows = RateWindows()
        rows = conn.execute("SELECT community, device_id, field, port, samples FROM rate_windows")
        for community, device_id, field, port, blob in rows.fetchall():
            samples = array("d")
            samples.frombytes(blob)
            windows.put((community, device_id, field), None if port == _NO_PORT else port, samples)
        AlertBook.write_rates(conn, windows.saved())
        conn.execute("DROP TABLE rate_windows")


def _move_last_seen(conn: sqlite3.Connection) -> None:
    """An alert book of an earlier version kept a row a device in `last_seen`: moved into
    `heard`, the later of two times kept."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'last_seen'").fetchone():
        return
    # Read and moved in one transaction: another connection may be moving them too.
    with transaction(conn):
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'last_seen'").fetchone():
            return
        groups = _heard_groups(conn)
        rows = conn.execute("SELECT community, device_type, device_id, seen_ms FROM last_seen")
        for community, device_type, device_id, seen_ms in rows.fetchall():
            times = groups.setdefault((community, device_type), {})
            times[device_id] = max(int(seen_ms), times.get(device_id, seen_ms))
        conn.executemany(
            "INSERT OR REPLACE INTO heard VALUES (?, ?, ?)",
            ((c, t, orjson.dumps(times)) for (c, t), times in groups.items()),
        )
        conn.execute("DROP TABLE last_seen")
