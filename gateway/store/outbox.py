"""The durable local outbox between decoding and the time-series writer.

A SQLite database in WAL mode holds the line-protocol lines waiting to be written,
the quarantine of rejected messages, and the redelivery keys. Ingest commits a
whole batch in one transaction, and acknowledges the batch to the broker only
after that commit: a crash before it ends in redelivery, not loss.

A batch's lines are one row, a chunk, which the writer removes once all its lines are
written: a row per line had cost three times the CPU to insert, read back and delete
(measured: about 2.7 µs a line against 0.9).

Ingest and the writer each use their own connection, so that a slow database
write never waits behind a commit or the other way round.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import orjson

from gateway.decode.dedup import KeysToSave, SavedKeys
from gateway.errors import StoreError
from gateway.store.database import check_whole, damaged_error, is_damaged, open_recovering
from gateway.store.reserve import DiskReserve

if TYPE_CHECKING:
    from gateway.config import OutboxConfig

log = logging.getLogger(__name__)

_SCHEMA = """
-- `lines` is a JSON array of `line_count` lines; `first_line` numbers the first of
-- them, counting on from the chunk before, so that the depth is one subtraction.
-- AUTOINCREMENT: a chunk id is never used again, so that the writer's position in a
-- chunk evicted meanwhile never points into another.
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_line INTEGER NOT NULL,
    line_count INTEGER NOT NULL,
    lines BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_reason ON quarantine (reason);
-- The quarantine's size, kept as rows come and go rather than summed at every commit.
CREATE TABLE IF NOT EXISTS quarantine_size (bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    client_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    PRIMARY KEY (client_id, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS handoffs (id INTEGER PRIMARY KEY, records BLOB NOT NULL);
-- The registry's series last written (gateway.store.series.device_info), and those
-- ended (each after the epoch ms it was first found ended, and a space), each sorted, a
-- line each, zlib-compressed: one row.
CREATE TABLE IF NOT EXISTS registry_series (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    series BLOB NOT NULL,
    ended BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS redelivery_log (
    lane TEXT NOT NULL,
    batch INTEGER NOT NULL,
    keys BLOB NOT NULL,
    PRIMARY KEY (lane, batch)
) WITHOUT ROWID;
"""

# The redelivery keys of each ingest lane, its devices' lists written whole (the log of
# keys added since is in `redelivery_log`): a message always arrives on the same lane,
# and the lanes commit independently, so each keeps its own. `batch` is the batch a list
# was written with: the log's keys up to it are in the list, or were dropped from it.
KEYS_TABLES = {"main": "redelivery_keys", "alarm": "alarm_redelivery_keys"}
_SCHEMA += "".join(
    f"""
CREATE TABLE IF NOT EXISTS {table} (
    community TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys BLOB NOT NULL,
    batch INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (community, device_id)
) WITHOUT ROWID;
"""
    for table in KEYS_TABLES.values()
)

# Share of the size bound freed beyond the excess when the outbox is full, so that
# the eviction does not run again for every batch.
_EVICT_HEADROOM = 0.05
# The share of `max_bytes` the quarantine may take, its oldest rows going first past it:
# one device sending large messages that are refused must not fill the bound, which only
# the lines waiting for the database are dropped to keep.
_QUARANTINE_SHARE = 0.25
_QUARANTINE_ROW_BYTES = "length(topic) + length(payload) + length(detail)"
# How long a connection waits for another's write lock before the commit fails.
LOCK_TIMEOUT_S = 30.0
# SQLite's own wait for another connection's write lock sleeps in growing steps of up
# to 100 ms, so it may wake tens of milliseconds after the lock is free. A connection
# that commits alarms tries again this often instead.
LOCK_POLL_S = 0.001
# Lines of an earlier version's outbox moved into one chunk: as many as one write sends.
_MOVED_CHUNK_LINES = 5000


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    received_ms: int
    topic: str
    payload: bytes
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class StoredQuarantine:
    id: int
    entry: QuarantineEntry


class LinePosition(NamedTuple):
    """How far the writer has come: the lines of chunk `chunk` before `line` are written,
    and all those of the chunks before it."""

    chunk: int = 0
    line: int = 0


# The start of what waits.
FIRST_LINE = LinePosition()


@dataclass(frozen=True, slots=True)
class PendingLines:
    """The oldest lines not yet written, with what to remove once they are."""

    lines: list[str]
    # The last chunk whose lines are now all taken: remove through it once written.
    through: int
    # Where the next lines start.
    next: LinePosition


# Writes more in a commit's transaction, and returns the lines it makes there, if any.
Write = Callable[[sqlite3.Connection], Sequence[str] | None]


@dataclass(frozen=True, slots=True)
class CommitResult:
    lines: int
    quarantined: int
    # Oldest lines dropped because the outbox reached its size bound, or the disk was full.
    evicted_lines: int


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 1 << 30,
        synchronous: str = "full",
        quarantine_max_rows: int = 100_000,
        reserve_bytes: int = 0,
        bulk_elsewhere: bool = False,
        recover_damaged: bool = False,
    ) -> None:
        """`bulk_elsewhere`: another process commits the bulk of the traffic, and this
        one's ingest commits alarms. Its commits then never copy the write-ahead log back
        into the database (a checkpoint, which can take a hundred milliseconds; the
        drain's and the other process's connections do it), and they take the write
        lock as soon as it is free.

        `reserve_bytes`: disk space set aside beside the database, given back when a
        commit finds the disk full (gateway.store.reserve); the main process sets it
        aside.

        `recover_damaged`: a file SQLite finds damaged is moved aside and a new one made
        (gateway.store.database.open_recovering); for the process that opens it first."""
        self.path = path
        self.reserve = DiskReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self.max_bytes = max_bytes
        self.quarantine_max_rows = quarantine_max_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        self._ingest, self._drain = open_recovering(
            path,
            partial(self._open, synchronous, bulk_elsewhere, check=recover_damaged),
            "the outbox",
            recover_damaged=recover_damaged,
        )
        # Each connection is used by one thread at a time: the stages call the outbox
        # from threads of their own, and a call that outlives its cancelled caller must
        # end before `close` frees the connection under it.
        self._ingest_turn = threading.Lock()
        self._drain_turn = threading.Lock()
        self._closed = False
        self._prompt = bulk_elsewhere
        self._page_size: int = self._ingest.execute("PRAGMA page_size").fetchone()[0]

    @classmethod
    def configured(
        cls, config: OutboxConfig, *, bulk_elsewhere: bool = False, recover_damaged: bool = False
    ) -> Outbox:
        return cls(
            config.path,
            max_bytes=config.max_bytes,
            synchronous=config.synchronous,
            quarantine_max_rows=config.quarantine_max_rows,
            reserve_bytes=config.reserve_bytes,
            bulk_elsewhere=bulk_elsewhere,
            recover_damaged=recover_damaged,
        )

    def _open(
        self, synchronous: str, bulk_elsewhere: bool, *, check: bool
    ) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The ingest's connection, with the file checked whole if `check`, the schema
        made and moved to this version's; and the drain's."""
        ingest = self._connect(synchronous)
        try:
            if check:
                check_whole(ingest)
            ingest.executescript(_SCHEMA)
            _move_single_lines(ingest)
            _add_list_batches(ingest)
            if bulk_elsewhere:
                ingest.execute("PRAGMA wal_autocheckpoint=0")
            return ingest, self._connect(synchronous)
        except BaseException:
            ingest.close()
            raise

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        # Autocommit mode: transactions are opened explicitly with BEGIN.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=LOCK_TIMEOUT_S
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Once the calls running on other threads have ended; later calls are refused."""
        # Refused from now, rather than when the locks are free: a thread calling in a
        # loop would otherwise take them again first, and again.
        self._closed = True
        with self._drain_turn, self._ingest_turn:
            self._drain.close()
            self._ingest.close()

    @contextlib.contextmanager
    def _turn(self, turn: threading.Lock) -> Iterator[None]:
        with turn:
            if self._closed:
                raise StoreError(f"{self.path}: the outbox is closed", retryable=False)
            yield

    def _failure(self, what: str, exc: sqlite3.Error) -> StoreError:
        """The error to raise for `exc`. Trying again helps where SQLite could not go on
        for now (a lock held, no room, an I/O error); a damaged file never heals."""
        if is_damaged(exc):
            return damaged_error(self.path, what, exc)
        return StoreError(f"{what}: {exc}", retryable=isinstance(exc, sqlite3.OperationalError))

    # --- ingest side -------------------------------------------------------

    def commit(
        self,
        lines: Sequence[str],
        quarantined: Sequence[QuarantineEntry],
        keys: KeysToSave | None = None,
        also: Write | None = None,
        *,
        lane: str = "main",
        handoff: bytes | None = None,
    ) -> CommitResult:
        """Store a batch in one transaction. Raises StoreError if it could not be made durable.

        `also` writes more in the same transaction: what the rules made of the batch, or
        a person's step on an alert, and returns the lines it makes there, if any.
        `handoff` is the batch's records for the rules of another process, which judges
        them later (see `handoffs`).
        """
        with self._turn(self._ingest_turn):
            conn = self._ingest
            made_room = 0
            gave_back = False
            while True:
                try:
                    if self._prompt:
                        begin_promptly(conn)
                    else:
                        conn.execute("BEGIN IMMEDIATE")
                    if lines:
                        _insert_lines(conn, lines)
                    if handoff is not None:
                        conn.execute("INSERT INTO handoffs (records) VALUES (?)", (handoff,))
                    if quarantined:
                        self._insert_quarantine(conn, quarantined)
                    if keys is not None:
                        self._save_keys(conn, keys, lane)
                    added: Sequence[str] | None = None
                    if also is not None:
                        added = also(conn)
                        if added:
                            _insert_lines(conn, added)
                    evicted = self._evict_if_full(conn)
                    conn.execute("COMMIT")
                    break
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if exc.sqlite_errorcode == sqlite3.SQLITE_FULL and not gave_back:
                        needed = _batch_bytes(lines, handoff, quarantined)
                        if not made_room:
                            made_room = self._make_room(conn, needed)
                            if made_room:
                                continue
                        # Still full: on a disk full to its last byte even dropping lines
                        # fails, as it writes to the log. The space set aside makes room for
                        # that, and with no lines to drop, for this batch: it may hold an alarm.
                        gave_back = True
                        if self.reserve.release():
                            made_room += self._make_room(conn, needed)
                            continue
                    raise self._failure("outbox commit failed", exc) from exc
                except BaseException:
                    # `also` refused (a lifecycle step that does not apply): nothing of it stays.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        if evicted:
            log.warning(
                "outbox reached its bound of %d bytes: dropped the %d oldest lines",
                self.max_bytes,
                evicted,
            )
        return CommitResult(len(lines) + len(added or ()), len(quarantined), evicted + made_room)

    def _make_room(self, conn: sqlite3.Connection, needed_bytes: int) -> int:
        """The disk is full before the outbox reached its bound: drop the oldest lines, as
        at the bound, so that newer readings and alarms can still be committed rather
        than wait in the broker, whose queue for a session is bounded too. Returns the
        lines dropped: none if there were none, or if even that could not be written."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            used = self._used_bytes(conn)
            # Twice the batch, and the headroom of the bound, so that the next batches
            # fit in the pages freed without another cut.
            wanted = 2 * needed_bytes + used * _EVICT_HEADROOM
            freed = lines = 0
            through = None
            # The oldest chunks only, as many as it takes: length() reads no blob.
            with contextlib.closing(
                conn.execute("SELECT id, line_count, length(lines) FROM chunks ORDER BY id")
            ) as chunks:
                for chunk_id, line_count, size in chunks:
                    if freed >= wanted:
                        break
                    through, freed, lines = chunk_id, freed + size, lines + line_count
            if through is None:
                conn.execute("ROLLBACK")
                return 0
            conn.execute("DELETE FROM chunks WHERE id <= ?", (through,))
            _count_evicted(conn, lines)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.error("the disk is full and no room could be made in the outbox: %s", exc)
            return 0
        log.warning(
            "the disk is full at %d bytes of outbox, below its bound of %d: dropped the %d "
            "oldest lines to make room",
            used,
            self.max_bytes,
            lines,
        )
        return int(lines)

    @staticmethod
    def _save_keys(conn: sqlite3.Connection, keys: KeysToSave, lane: str) -> None:
        if keys.added is not None:
            conn.execute(
                "INSERT OR REPLACE INTO redelivery_log (lane, batch, keys) VALUES (?, ?, ?)",
                (lane, keys.batch, keys.added),
            )
        if keys.lists:
            conn.executemany(
                f"INSERT OR REPLACE INTO {KEYS_TABLES[lane]} (community, device_id, keys, batch) "
                "VALUES (?, ?, ?, ?)",
                ((c, d, k, keys.batch) for c, d, k in keys.lists),
            )
        if keys.log_through is not None:
            conn.execute(
                "DELETE FROM redelivery_log WHERE lane = ? AND batch <= ?",
                (lane, keys.log_through),
            )

    def _insert_quarantine(
        self, conn: sqlite3.Connection, entries: Sequence[QuarantineEntry]
    ) -> None:
        size_bytes = _quarantine_bytes(conn)
        before = conn.execute("SELECT coalesce(max(id), 0) FROM quarantine").fetchone()[0]
        conn.executemany(
            "INSERT INTO quarantine (received_ms, topic, payload, reason, detail) "
            "VALUES (?, ?, ?, ?, ?)",
            ((e.received_ms, e.topic, e.payload, e.reason, e.detail) for e in entries),
        )
        self._add_counts(conn, (f"quarantined:{e.reason}" for e in entries))
        newest, added = conn.execute(
            f"SELECT max(id), sum({_QUARANTINE_ROW_BYTES}) FROM quarantine WHERE id > ?",
            (before,),
        ).fetchone()
        size_bytes += added
        # Keep the newest rows, as many as `quarantine_max_rows` and its share of the
        # bound take; the counters still count every rejection.
        cut = newest - self.quarantine_max_rows
        size_bytes -= conn.execute(
            f"SELECT coalesce(sum({_QUARANTINE_ROW_BYTES}), 0) FROM quarantine WHERE id <= ?",
            (cut,),
        ).fetchone()[0]
        budget = self.max_bytes * _QUARANTINE_SHARE
        if size_bytes > budget:
            rows = conn.execute(
                f"SELECT id, {_QUARANTINE_ROW_BYTES} FROM quarantine WHERE id > ? ORDER BY id",
                (cut,),
            )
            for row_id, row_bytes in rows:
                cut, size_bytes = row_id, size_bytes - row_bytes
                if size_bytes <= budget:
                    break
            rows.close()
        conn.execute("DELETE FROM quarantine WHERE id <= ?", (cut,))
        conn.execute("UPDATE quarantine_size SET bytes = ?", (size_bytes,))

    def _evict_if_full(self, conn: sqlite3.Connection) -> int:
        used = self._used_bytes(conn)
        if used <= self.max_bytes:
            return 0
        first, last = conn.execute("SELECT min(id), max(id) FROM chunks").fetchone()
        if first is None:
            return 0
        rows = last - first + 1
        # Free a little more than the excess, so that the next batches fit without another
        # cut; never the newest lines, which this very commit may have brought.
        excess = used - self.max_bytes * (1 - _EVICT_HEADROOM)
        count = min(rows - 1, max(1, math.ceil(excess / (used / rows))))
        if count <= 0:
            return 0
        (evicted,) = conn.execute(
            "SELECT coalesce(sum(line_count), 0) FROM chunks WHERE id < ?", (first + count,)
        ).fetchone()
        conn.execute("DELETE FROM chunks WHERE id < ?", (first + count,))
        _count_evicted(conn, evicted)
        return int(evicted)

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    @staticmethod
    def _add_counts(conn: sqlite3.Connection, names: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            counts.items(),
        )

    def redelivery_keys(self, lane: str = "main") -> SavedKeys:
        with self._turn(self._ingest_turn):
            try:
                lists = self._ingest.execute(
                    f"SELECT community, device_id, keys, batch FROM {KEYS_TABLES[lane]}"
                ).fetchall()
                log = self._ingest.execute(
                    "SELECT batch, keys FROM redelivery_log WHERE lane = ? ORDER BY batch", (lane,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._failure("reading the redelivery keys failed", exc) from exc
        return SavedKeys(
            [(str(c), str(d), k, int(b)) for c, d, k, b in lists],
            [(int(b), bytes(k)) for b, k in log],
        )

    def holds_redelivery_keys(self, lane: str = "main") -> bool:
        """Whether a lane saved any redelivery key, without reading them all."""
        with self._turn(self._ingest_turn):
            try:
                row = self._ingest.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {KEYS_TABLES[lane]}) "
                    "OR EXISTS (SELECT 1 FROM redelivery_log WHERE lane = ?)",
                    (lane,),
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._failure("reading the redelivery keys failed", exc) from exc
        return bool(row[0])

    # The subscription record is read and written outside the ingest's commits, from
    # the event loop, on a connection of its own: it changes at start-up and on the
    # rare connect that drops a retired filter.

    @contextlib.contextmanager
    def _apart(self, what: str) -> Iterator[sqlite3.Connection]:
        """A connection of its own; SQLite's errors raised as the outbox's (a damaged
        file stops the gateway, whichever of its stages finds it)."""
        try:
            with contextlib.closing(self._connect("normal")) as conn:
                yield conn
        except sqlite3.Error as exc:
            raise self._failure(what, exc) from exc

    def subscriptions(self, client_id: str) -> list[str] | None:
        """The topic filters a client id was configured with and that its session may
        still hold; None if never recorded."""
        with self._apart("reading the subscriptions failed") as conn:
            rows = conn.execute(
                "SELECT topic FROM subscriptions WHERE client_id = ? ORDER BY topic",
                (client_id,),
            ).fetchall()
        return [str(topic) for (topic,) in rows] if rows else None

    def record_subscriptions(self, client_id: str, topics: Iterable[str]) -> None:
        with self._apart("recording the subscriptions failed") as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO subscriptions (client_id, topic) VALUES (?, ?)",
                ((client_id, topic) for topic in topics),
            )

    def forget_subscriptions(self, client_id: str, topics: Iterable[str]) -> None:
        with self._apart("recording the subscriptions failed") as conn:
            conn.executemany(
                "DELETE FROM subscriptions WHERE client_id = ? AND topic = ?",
                ((client_id, topic) for topic in topics),
            )

    def registry_series(self) -> tuple[list[str], dict[str, int | None]]:
        """The registry's series as last written, and those ended, with when each was
        first found ended (None in an earlier version's record, which kept no time: see
        `write_registry_series`)."""
        with self._apart("reading the registry's series failed") as conn:
            row = conn.execute("SELECT series, ended FROM registry_series").fetchone()
        if row is None:
            return [], {}
        ended: dict[str, int | None] = {}
        for line in _unpack_lines(row[1]):
            # A series is the measurement's name and tags: it never begins with a digit.
            since, _, series = line.partition(" ")
            if since.isdigit():
                ended[series] = int(since)
            else:
                ended[line] = None
        return _unpack_lines(row[0]), ended

    @staticmethod
    def write_registry_series(
        conn: sqlite3.Connection, series: Collection[str], ended: Mapping[str, int]
    ) -> None:
        """Inside the caller's transaction, that of the points written for them."""
        conn.execute(
            "INSERT OR REPLACE INTO registry_series VALUES (0, ?, ?)",
            (_pack_lines(series), _pack_lines([f"{ms} {s}" for s, ms in ended.items()])),
        )

    def handoffs(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest batches of records handed over and not yet judged, with their ids;
        on the ingest connection, between its commits."""
        with self._turn(self._ingest_turn):
            try:
                rows = self._ingest.execute(
                    "SELECT id, records FROM handoffs ORDER BY id LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._failure("the records handed over could not be read", exc) from exc
        return [(int(i), bytes(records)) for i, records in rows]

    def handoffs_waiting(self) -> bool:
        """Whether records handed over wait to be judged; on the ingest connection."""
        with self._turn(self._ingest_turn):
            try:
                row = self._ingest.execute("SELECT EXISTS (SELECT 1 FROM handoffs)").fetchone()
            except sqlite3.Error as exc:
                raise self._failure("the records handed over could not be read", exc) from exc
        return bool(row[0])

    @staticmethod
    def drop_handoffs(conn: sqlite3.Connection, last_id: int) -> None:
        """Inside the transaction that commits what the rules made of them."""
        conn.execute("DELETE FROM handoffs WHERE id <= ?", (last_id,))

    # --- writer side -------------------------------------------------------

    def peek(self, limit: int, start: LinePosition = FIRST_LINE) -> PendingLines:
        """Up to `limit` of the oldest lines waiting, in the order they were stored, from
        `start` (the `next` of lines written before) if its chunk is still the first."""
        taken: list[str] = []
        through = 0
        with self._turn(self._drain_turn):
            try:
                chunks = self._drain.execute("SELECT id, line_count, lines FROM chunks ORDER BY id")
                for chunk_id, count, blob in chunks:
                    skip = start.line if chunk_id == start.chunk else 0
                    room = limit - len(taken)
                    taken.extend(orjson.loads(blob)[skip : skip + room])
                    if skip + room < count:
                        return PendingLines(taken, through, LinePosition(chunk_id, skip + room))
                    through = chunk_id
                    if len(taken) == limit:
                        break
            except sqlite3.Error as exc:
                raise self._failure("reading the outbox failed", exc) from exc
        return PendingLines(taken, through, FIRST_LINE)

    def remove_through(self, through: int, refused: Sequence[QuarantineEntry] = ()) -> None:
        """Drop the chunks the database accepted all lines of, up to `through`
        (`PendingLines.through`); quarantine the lines it refused, in one transaction."""
        with self._turn(self._drain_turn):
            conn = self._drain
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM chunks WHERE id <= ?", (through,))
                if refused:
                    self._insert_quarantine(conn, refused)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise self._failure("outbox update failed", exc) from exc

    def depth(self, start: LinePosition = FIRST_LINE) -> int:
        """Lines waiting, from `start` if its chunk is still the first: chunks leave only
        from the front, and number their lines on."""
        with self._turn(self._drain_turn):
            try:
                row = self._drain.execute(
                    "SELECT (SELECT first_line + line_count FROM chunks ORDER BY id DESC LIMIT 1), "
                    "id, first_line FROM chunks ORDER BY id LIMIT 1"
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._failure("reading the outbox failed", exc) from exc
        if row is None:
            return 0
        end, first_chunk, first_line = row
        written = start.line if first_chunk == start.chunk else 0
        return int(end - first_line - written)

    # --- inspection --------------------------------------------------------

    def quarantine(
        self, *, limit: int = 100, reason: str | None = None, before_id: int | None = None
    ) -> list[StoredQuarantine]:
        """Newest quarantined messages first; `before_id`: those older than that one, for
        the page after it."""
        query = "SELECT id, received_ms, topic, payload, reason, detail FROM quarantine"
        where: list[str] = []
        params: list[object] = []
        if reason is not None:
            where.append("reason = ?")
            params.append(reason)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._turn(self._drain_turn):
            rows = self._drain.execute(query + " ORDER BY id DESC LIMIT ?", (*params, limit))
            return [
                StoredQuarantine(
                    int(i), QuarantineEntry(int(r), str(t), bytes(p), str(why), str(d))
                )
                for i, r, t, p, why, d in rows
            ]

    def lines_containing(
        self,
        texts: str | Sequence[str],
        limit: int,
        keep: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """The newest `limit` lines waiting that contain each of `texts` (and that `keep`
        accepts), newest first: a device's recent points while no database takes them.
        Batches are read newest first until `limit` lines are found or none are left."""
        wanted = (texts,) if isinstance(texts, str) else tuple(texts)
        # JSON escapes each character on its own, so the escaped text is found in the
        # escaped lines exactly where the text is in the lines.
        needles = [orjson.dumps(text)[1:-1] for text in wanted]
        where = " AND ".join(["instr(lines, ?) > 0"] * len(needles)) or "1"
        found: list[str] = []
        with self._turn(self._drain_turn):
            chunks = self._drain.execute(
                f"SELECT lines FROM chunks WHERE {where} ORDER BY id DESC", needles
            )
            for (lines,) in chunks:
                found.extend(
                    line
                    for line in reversed(orjson.loads(lines))
                    if all(text in line for text in wanted) and (keep is None or keep(line))
                )
                if len(found) >= limit:
                    break
        return found[:limit]

    def counters(self) -> dict[str, int]:
        with self._turn(self._drain_turn):
            rows = self._drain.execute("SELECT name, value FROM counters")
            return {str(name): int(value) for name, value in rows}

    def size_bytes(self) -> int:
        with self._turn(self._drain_turn):
            return self._used_bytes(self._drain)

    @property
    def full_at_bytes(self) -> int:
        """The size from which the outbox is full: each time it passes its bound the
        oldest lines are dropped down to (1 - _EVICT_HEADROOM) of it, so an outbox losing
        lines for want of room never stays at its bound itself."""
        return int(self.max_bytes * (1 - 2 * _EVICT_HEADROOM))


def _quarantine_bytes(conn: sqlite3.Connection) -> int:
    """The quarantine's size; summed once, for an outbox made before it was kept."""
    row = conn.execute("SELECT bytes FROM quarantine_size").fetchone()
    if row is not None:
        return int(row[0])
    (size_bytes,) = conn.execute(
        f"SELECT coalesce(sum({_QUARANTINE_ROW_BYTES}), 0) FROM quarantine"
    ).fetchone()
    conn.execute("INSERT INTO quarantine_size (bytes) VALUES (?)", (size_bytes,))
    return int(size_bytes)


def _count_evicted(conn: sqlite3.Connection, lines: int) -> None:
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('outbox_evicted_lines', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (lines,),
    )


def _batch_bytes(
    lines: Sequence[str], handoff: bytes | None, quarantined: Sequence[QuarantineEntry]
) -> int:
    """About what a batch adds to the outbox."""
    return (
        sum(map(len, lines))
        + (len(handoff) if handoff is not None else 0)
        + sum(len(q.payload) + len(q.detail) for q in quarantined)
    )


def _insert_lines(conn: sqlite3.Connection, lines: Sequence[str]) -> None:
    conn.execute(
        "INSERT INTO chunks (first_line, line_count, lines) VALUES ("
        "coalesce((SELECT first_line + line_count FROM chunks ORDER BY id DESC LIMIT 1), 0), "
        "?, ?)",
        (len(lines), orjson.dumps(lines)),
    )


def _add_list_batches(conn: sqlite3.Connection) -> None:
    """An earlier version's lists of redelivery keys, which did not say with which batch
    they were written: as if before the first."""
    for table in KEYS_TABLES.values():
        columns = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}
        if "batch" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN batch INTEGER NOT NULL DEFAULT 0")


def _move_single_lines(conn: sqlite3.Connection) -> None:
    """Lines an earlier version kept a row each, moved into chunks in their order."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'lines'"
    ).fetchone()
    if exists is None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        last = 0
        while rows := conn.execute(
            "SELECT id, line FROM lines WHERE id > ? ORDER BY id LIMIT ?",
            (last, _MOVED_CHUNK_LINES),
        ).fetchall():
            _insert_lines(conn, [str(line) for _, line in rows])
            last = rows[-1][0]
        conn.execute("DROP TABLE lines")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def begin_promptly(
    conn: sqlite3.Connection,
    *,
    timeout_s: float = LOCK_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """BEGIN IMMEDIATE, trying again every LOCK_POLL_S while another connection holds
    the write lock, for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    conn.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            sleep(LOCK_POLL_S)
    finally:
        # Other statements on the connection keep SQLite's own wait.
        conn.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT_S * 1000)}")


def _pack_lines(lines: Collection[str]) -> bytes:
    return zlib.compress("\n".join(sorted(lines)).encode())


def _unpack_lines(packed: bytes) -> list[str]:
    text = zlib.decompress(packed).decode()
    return text.split("\n") if text else []
