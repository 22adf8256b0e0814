"""The SQLite files the gateway keeps: the outbox, which its books (alerts, silences,
the audit) share, each with a connection of its own, and the notification log beside it.

A file SQLite finds damaged is never tried again: the gateway stops, and the main
process's next start moves it aside and begins a new one (`open_recovering`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from gateway.errors import DamagedStoreError, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLite's primary result codes for a file that is not a database, or one whose pages
# contradict each other: a header or pages overwritten, or lost by a failing SD card.
_DAMAGED_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
# What SQLite keeps beside a database in WAL mode, which belongs with it.
_COMPANIONS = ("-wal", "-shm")
# Left beside a file found damaged while the gateway ran, for its next start.
_DAMAGE_NOTE = ".damage-found"


def open_book(
    path: Path,
    schema: str,
    what: str,
    *,
    recover_damaged: bool = False,
    migrate: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly), in WAL mode
    so that readers never wait for the ingest's writes, with `schema` made if missing.

    It may be used from a worker thread, one thread at a time: a write can wait for the
    file's write lock (held by the ingest's commits) for up to the busy timeout, and on
    the event loop that wait would hold up every alarm.

    `migrate` brings an earlier version's tables to this version's, its errors told as
    the opening's. `recover_damaged`: see `open_recovering`."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            if recover_damaged:
                check_whole(conn)
            conn.executescript(schema)
            if migrate is not None:
                migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    return open_recovering(path, connect, what, recover_damaged=recover_damaged)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A transaction that takes the file's write lock at once, committed at the end of
    the block, or rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class FoundDamaged(Exception):
    """SQLite's own check of a file found it damaged."""


def add_columns(conn: sqlite3.Connection, table: str, columns: Sequence[tuple[str, str]]) -> None:
    """Adds to `table` those of `columns` (name, type) an earlier version's lacks: rows
    made before them read NULL there."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns:
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def check_whole(conn: sqlite3.Connection) -> None:
    """SQLite's check of every page of the file's tables, which reads them all (0.9 s
    for 964 MB from a disk, nothing cached, measured): damage anywhere is found at a start rather than by a commit
    later, when an alarm may be in it. Raises FoundDamaged."""
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise FoundDamaged("; ".join(problems))


def open_recovering(path: Path, connect: Callable[[], T], what: str, *, recover_damaged: bool) -> T:
    """`connect()`, its SQLite errors raised as StoreError naming `what` and `path`; for a
    damaged file, DamagedStoreError, the damage noted beside it (`damaged_error`).

    With `recover_damaged`, a file that SQLite finds damaged, now (`connect` may raise
    FoundDamaged, from `check_whole`) or while the gateway last ran, is moved aside with
    what SQLite keeps beside it, and a new one made: the gateway starts and takes alarms
    in, where it would otherwise stop at every start. Only the process that opens the
    file first may do it, before any other has it open."""
    damage: object = damage_noted(path) if recover_damaged else None
    if damage is None:
        try:
            return connect()
        except FoundDamaged as exc:
            damage = exc
        except sqlite3.Error as exc:
            if not is_damaged(exc):
                raise StoreError(f"cannot open {what} in {path}: {exc}", retryable=False) from exc
            if not recover_damaged:
                raise damaged_error(path, f"cannot open {what}", exc) from exc
            damage = exc
    aside = move_aside(path)
    _companion(path, _DAMAGE_NOTE).unlink(missing_ok=True)
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


def damaged_error(path: Path, what: str, exc: sqlite3.Error) -> DamagedStoreError:
    """For `exc` when it `is_damaged`: notes the damage beside the file, for the next start
    to move it aside, and says so."""
    with contextlib.suppress(OSError):
        _companion(path, _DAMAGE_NOTE).write_text(f"{what}: {exc}\n", encoding="utf-8")
    log.critical(
        "%s: %s: %s is damaged; the gateway stops, and its next start moves it aside",
        what,
        exc,
        path,
    )
    return DamagedStoreError(f"{what}: {exc}: {path} is damaged")


def damage_noted(path: Path) -> str | None:
    """What `damaged_error` noted beside the file, if anything: the damage it found."""
    try:
        text = _companion(path, _DAMAGE_NOTE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return text.strip() or "damage found earlier"


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


def damaged_files(*paths: Path) -> int:
    """How many damaged files of these were moved aside and are still there: a disk that
    damages files is failing."""
    count = 0
    for path in paths:
        with contextlib.suppress(OSError):
            for name in os.listdir(path.parent):
                if _moved_aside(path.name, name):
                    count += 1
    return count


def _moved_aside(name: str, candidate: str) -> bool:
    rest = candidate.removeprefix(f"{name}.damaged")
    return rest != candidate and (rest == "" or (rest[0] == "-" and rest[1:].isdigit()))


def _companion(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)
