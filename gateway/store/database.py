"""The SQLite file beside the outbox that the gateway's books share: alerts, silences,
notifications and the audit each open their own connection to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.errors import StoreError


def open_book(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly), in WAL mode
    so that readers never wait for the ingest's writes, with `schema` made if missing.

    It may be used from a worker thread, one thread at a time: a write can wait for the
    file's write lock (held by the ingest's commits) for up to the busy timeout, and on
    the event loop that wait would hold up every alarm."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(schema)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} in {path}: {exc}", retryable=False) from exc
    return conn
