"""Alert state and rule timers kept on disk, beside the outbox, across restarts."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from gateway.errors import StoreError
from gateway.rules.engine import Track, TrackKey

_SCHEMA = """
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
    PRIMARY KEY (rule, community, device_id, port)
) WITHOUT ROWID;
"""
# SQLite's primary keys take no NULL; no port is stored as -1.
_NO_PORT = -1


class RuleStateStore:
    def __init__(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open rule state in {path}: {exc}", retryable=False) from exc

    def load(self) -> list[tuple[TrackKey, Track]]:
        rows = self._conn.execute(
            "SELECT rule, community, device_id, port, firing, since_ms, readings, "
            "clearing_since_ms, alert_id FROM rule_tracks"
        )
        return [
            (
                (rule, community, device_id, None if port == _NO_PORT else port),
                Track(bool(firing), since_ms, readings, clearing, alert_id),
            )
            for rule, community, device_id, port, firing, since_ms, readings, clearing, alert_id in rows
        ]

    def save(self, changed: Sequence[tuple[TrackKey, Track]], gone: Sequence[TrackKey]) -> None:
        if not changed and not gone:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR REPLACE INTO rule_tracks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        *key[:3],
                        _NO_PORT if key[3] is None else key[3],
                        int(t.firing),
                        t.since_ms,
                        t.readings,
                        t.clearing_since_ms,
                        t.alert_id,
                    )
                    for key, t in changed
                ),
            )
            conn.executemany(
                "DELETE FROM rule_tracks WHERE rule = ? AND community = ? AND device_id = ? AND port = ?",
                ((*key[:3], _NO_PORT if key[3] is None else key[3]) for key in gone),
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"saving rule state failed: {exc}", retryable=False) from exc

    def close(self) -> None:
        self._conn.close()
