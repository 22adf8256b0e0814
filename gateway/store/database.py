"""The SQLite file beside the outbox that the gateway's books share: alerts, silences,
notifications and the audit each open their own connection to it."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLite's primary result codes for a file that is not a database, or one whose pages
# contradict each other: a header or pages overwritten, or lost by a failing SD card.
_DAMAGED_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
# What SQLite keeps beside a database in WAL mode, which belongs with it.
_COMPANIONS = ("-wal", "-shm")


def open_book(
    path: Path, schema: str, what: str, *, recover_damaged: bool = False
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly), in WAL mode
    so that readers never wait for the ingest's writes, with `schema` made if missing.

    It may be used from a worker thread, one thread at a time: a write can wait for the
    file's write lock (held by the ingest's commits) for up to the busy timeout, and on
    the event loop that wait would hold up every alarm.

    `recover_damaged`: see `open_recovering`."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(schema)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    return open_recovering(path, connect, what, recover_damaged=recover_damaged)


def open_recovering(path: Path, connect: Callable[[], T], what: str, *, recover_damaged: bool) -> T:
    """`connect()`, its SQLite errors raised as StoreError naming `what` and `path`.

    With `recover_damaged`, a file that SQLite finds damaged is moved aside, with what
    SQLite keeps beside it, and a new one made: the gateway starts and takes alarms in,
    where it would otherwise stop at every start. Only the process that opens the file
    first may do it, before any other has it open."""
    try:
        return connect()
    except sqlite3.Error as exc:
        if not (recover_damaged and is_damaged(exc)):
            raise StoreError(f"cannot open {what} in {path}: {exc}", retryable=False) from exc
        damage = exc
    aside = move_aside(path)
    log.error(
        "%s in %s is damaged (%s): moved aside to %s, with all it held, and begun anew",
        what,
        path,
        damage,
        aside,
    )
    try:
        return connect()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {what} in {path}: {exc}", retryable=False) from exc


def is_damaged(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed because the file is damaged, not for want of room or a lock."""
    code: int = getattr(exc, "sqlite_errorcode", 0)
    return code & 0xFF in _DAMAGED_CODES


def move_aside(path: Path) -> Path:
    """Renames a database and its companions to the first free `<name>.damaged[-N]`,
    where they can be looked into or repaired; returns the new name."""
    number = 0
    while True:
        target = path.with_name(f"{path.name}.damaged" + (f"-{number}" if number else ""))
        if not any(_companion(target, s).exists() for s in ("", *_COMPANIONS)):
            break
        number += 1
    # The log first: a crash between the renames leaves no log beside the new file
    # that would be replayed into it.
    for suffix in (*_COMPANIONS, ""):
        source = _companion(path, suffix)
        if source.exists():
            os.replace(source, _companion(target, suffix))
    return target


def _companion(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)
