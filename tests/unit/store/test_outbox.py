import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.record import DeviceRef
from gateway.errors import StoreError
from gateway.store.outbox import (
    LOCK_TIMEOUT_S,
    LinePosition,
    Outbox,
    QuarantineEntry,
    begin_promptly,
)
from tests.unit.disk import fill_the_disk, make_room


def entry(reason: str = "not_json") -> QuarantineEntry:
    return QuarantineEntry(1, "community/a/b/c/telemetry", b"\x00raw", reason, "detail")


def test_lines_leave_in_order_and_only_when_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    for batch in range(5):
        outbox.commit([f"m v={i}i {batch}" for i in range(2)], [])
    assert outbox.depth() == 10
    first = outbox.peek(5)
    assert first.lines == ["m v=0i 0", "m v=1i 0", "m v=0i 1", "m v=1i 1", "m v=0i 2"]
    assert outbox.peek(5) == first
    # Batches leave whole: the third stays until its second line is written too.
    outbox.remove_through(first.through)
    assert outbox.depth() == 6
    assert outbox.depth(first.next) == 5
    rest = outbox.peek(100, first.next)
    assert rest.lines == ["m v=1i 2"] + [f"m v={i}i {b}" for b in (3, 4) for i in range(2)]
    outbox.remove_through(rest.through)
    assert outbox.depth() == 0
    outbox.commit(["m v=1i 9"], [])
    assert outbox.depth() == 1


def test_lines_containing_finds_the_newest_first_across_batches(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.commit(["m,d=a v=1i 1", "m,d=b v=1i 1", 'm,d=a s="x\\"y" 2'], [])
    outbox.commit(["m,d=a v=3i 3", "m,d=b v=3i 3"], [])
    assert outbox.lines_containing("d=a", 2) == ["m,d=a v=3i 3", 'm,d=a s="x\\"y" 2']
    # Quotes and backslashes are found as they are written.
    assert outbox.lines_containing('"x\\"', 5) == ['m,d=a s="x\\"y" 2']
    assert outbox.lines_containing("d=c", 5) == []


def test_lines_containing_every_text_and_kept_are_looked_for_to_the_oldest(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.commit(["m,c=a,d=1 v=1i 1", "m,c=b,d=1 v=1i 1"], [])
    # Many newer batches of lines that hold only one of the texts, or are not kept.
    for t in range(2, 12):
        outbox.commit([f"m,c=b,d=1 v=1i {t}", f"m,c=a,d=10 v=1i {t}", f"e,c=a,d=1 v=1i {t}"], [])
    assert outbox.lines_containing((",c=a,", ",d=1"), 3) == [
        "e,c=a,d=1 v=1i 11", "m,c=a,d=10 v=1i 11", "e,c=a,d=1 v=1i 10",
    ]  # fmt: skip
    kept = outbox.lines_containing(
        (",c=a,", ",d=1"), 3, keep=lambda line: line.startswith("m,") and ",d=1 " in line
    )
    assert kept == ["m,c=a,d=1 v=1i 1"]


def test_lines_of_an_earlier_version_move_into_batches_in_order(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("CREATE TABLE lines (id INTEGER PRIMARY KEY, line TEXT NOT NULL)")
    old.executemany("INSERT INTO lines (line) VALUES (?)", [(f"m v={i}i 1",) for i in range(7000)])
    old.close()
    outbox = Outbox(path)
    assert outbox.depth() == 7000
    outbox.commit(["m v=7000i 1"], [])
    taken: list[str] = []
    position = LinePosition()
    while (pending := outbox.peek(3000, position)).lines:
        taken.extend(pending.lines)
        outbox.remove_through(pending.through)
        position = pending.next
    assert taken == [f"m v={i}i 1" for i in range(7001)]
    tables = {name for (name,) in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "lines" not in tables


def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path)
    keys = RedeliveryFilter()
    keys.is_redelivery(DeviceRef("hgy", "smoke_detector", "sd-1"), 7)
    outbox.commit(["m v=1i 1"], [entry()], keys.take_changes())
    outbox.close()
    again = Outbox(path)
    assert again.peek(10).lines == ["m v=1i 1"]
    restored = RedeliveryFilter()
    restored.restore(again.redelivery_keys())
    assert restored.is_redelivery(DeviceRef("hgy", "smoke_detector", "sd-1"), 7)
    (stored,) = again.quarantine()
    assert stored.entry == entry()
    assert again.counters() == {"quarantined:not_json": 1}


def test_refused_lines_are_quarantined_when_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.commit(["a v=1i 1", "b v= 1"], [])
    outbox.remove_through(outbox.peek(10).through, [entry("refused_by_database")])
    assert outbox.depth() == 0
    assert [q.entry.reason for q in outbox.quarantine()] == ["refused_by_database"]


def test_quarantine_keeps_the_newest_rows_and_counts_all(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", quarantine_max_rows=100)
    for _ in range(3):
        outbox.commit([], [entry("bad_crc")] * 60)
    assert len(outbox.quarantine(limit=1000)) == 100
    assert len(outbox.quarantine(reason="bad_crc", limit=5)) == 5
    assert outbox.counters()["quarantined:bad_crc"] == 180
    # Page after page, from the newest, each from the last one's oldest on.
    first = outbox.quarantine(limit=40)
    after = outbox.quarantine(limit=40, before_id=first[-1].id)
    assert [q.id for q in first + after] == [q.id for q in outbox.quarantine(limit=80)]


def test_a_quarantine_of_large_messages_leaves_the_bound_to_the_lines(tmp_path: Path) -> None:
    # A misbehaving device sends large messages, each refused and kept whole: without a
    # share of its own, the quarantine would fill the bound, and every commit would then
    # drop every line waiting for the database, its own batch's too.
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1 << 20)
    large = QuarantineEntry(1, "community/hgy/bracelet/br-9/telemetry", b"x" * 20_000,
                            "too_large", "20000 bytes")  # fmt: skip
    for _ in range(10):
        outbox.commit([], [large] * 10)
    readings = [f"bracelet,community=hgy,device_id=br-{i} heart_rate_bpm=70i 1" for i in range(10)]
    result = outbox.commit(readings, [])
    assert result.evicted_lines == 0
    assert outbox.peek(100).lines == readings
    # The newest refusals are kept, within a quarter of the bound, and all are counted.
    kept = outbox.quarantine(limit=1000)
    assert 0 < len(kept) * 20_000 <= (1 << 20) // 4
    assert kept[0].id == 100
    assert outbox.counters()["quarantined:too_large"] == 100


def test_reaching_the_size_bound_drops_oldest_lines_and_counts_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1 << 20)
    evicted = 0
    for batch in range(40):
        result = outbox.commit([f'm,batch={batch} pad="{"x" * 900}" {i}' for i in range(100)], [])
        evicted += result.evicted_lines
    assert evicted > 0
    assert outbox.size_bytes() <= (1 << 20) + 200_000
    assert outbox.counters()["outbox_evicted_lines"] == evicted
    # The newest batch is intact; the oldest went first.
    lines = outbox.peek(10_000).lines
    assert lines[-1].startswith("m,batch=39 ")
    assert not any(line.startswith("m,batch=0 ") for line in lines)
    assert outbox.depth() == 4000 - evicted


def test_a_full_disk_drops_the_oldest_lines_to_commit_the_batch(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1 << 30)
    for batch in range(30):
        outbox.commit([f'm,batch={batch} pad="{"x" * 900}" {i}' for i in range(100)], [])
    outbox.commit([], [entry()], handoff=b"records")
    fill_the_disk(outbox)
    result = outbox.commit([f'm,batch=new pad="{"y" * 900}" {i}' for i in range(100)], [])
    # Far below its bound: the lines dropped are the disk's doing, counted the same way.
    assert result.lines == 100 and 0 < result.evicted_lines < 3000
    assert outbox.counters()["outbox_evicted_lines"] == result.evicted_lines
    lines = outbox.peek(10_000).lines
    assert len(lines) == 3100 - result.evicted_lines == outbox.depth()
    assert lines[0].startswith(f"m,batch={result.evicted_lines // 100} ")
    assert lines[-100:] == [f'm,batch=new pad="{"y" * 900}" {i}' for i in range(100)]
    # Only lines waiting for the database make room: the rules' records and the
    # quarantine stay.
    assert [blob for _, blob in outbox.handoffs(10)] == [b"records"]
    assert len(outbox.quarantine()) == 1


def test_a_full_disk_with_no_lines_to_drop_fails_the_commit_whole_and_retryable(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    fill_the_disk(outbox)
    batch = [f'm pad="{"x" * 900}" {i}' for i in range(100)]
    with pytest.raises(StoreError, match="database or disk is full") as failed:
        outbox.commit(batch, [entry()], handoff=b"records")
    assert failed.value.retryable
    assert outbox.depth() == 0 and outbox.quarantine() == [] and outbox.handoffs(10) == []
    # Room again: the same batch commits.
    make_room(outbox)
    assert outbox.commit(batch, [entry()], handoff=b"records").evicted_lines == 0
    assert outbox.depth() == 100


def drain_until_refused(outbox: Outbox, errors: list[StoreError]) -> None:
    try:
        while True:
            pending = outbox.peek(50)
            outbox.depth(pending.next)
            outbox.remove_through(0)
    except StoreError as exc:
        errors.append(exc)


def commit_until_refused(outbox: Outbox, errors: list[StoreError], committed: list[int]) -> None:
    try:
        while True:
            outbox.commit(["m v=2i 2"], [])
            committed.append(1)
    except StoreError as exc:
        errors.append(exc)


def test_closing_while_other_threads_use_it_waits_for_their_calls_to_end(tmp_path: Path) -> None:
    # The stages call the outbox from threads; one whose caller was cancelled at a stop
    # may still run when the gateway closes it, which once freed its connection mid-call.
    for attempt in range(20):
        path = tmp_path / f"o{attempt}.sqlite3"
        outbox = Outbox(path)
        outbox.commit([f"m v={i}i 1" for i in range(100)], [])
        errors: list[StoreError] = []
        committed: list[int] = []
        threads = [
            threading.Thread(target=drain_until_refused, args=(outbox, errors)),
            threading.Thread(target=commit_until_refused, args=(outbox, errors, committed)),
        ]
        for thread in threads:
            thread.start()
        outbox.close()
        for thread in threads:
            thread.join(10)
        # Each call ran whole before the close, or was refused.
        assert [str(e) for e in errors] == [f"{path}: the outbox is closed"] * 2
        reopened = Outbox(path)
        assert reopened.depth() == 100 + len(committed)
        reopened.close()


def insert_line(conn: sqlite3.Connection, line: str) -> None:
    conn.execute(
        "INSERT INTO chunks (first_line, line_count, lines) VALUES (0, 1, ?)",
        (orjson.dumps([line]),),
    )


def holding_the_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    insert_line(other, "other v=1i 1")
    return other


def test_an_alarm_commit_takes_the_write_lock_once_another_connection_lets_it_go(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path, bulk_elsewhere=True)
    other = holding_the_write_lock(path)
    conn = sqlite3.connect(path, isolation_level=None, timeout=LOCK_TIMEOUT_S)
    waits: list[float] = []

    def other_commits(seconds: float) -> None:
        waits.append(seconds)
        other.execute("COMMIT")

    begin_promptly(conn, sleep=other_commits)
    insert_line(conn, "alarm v=1i 1")
    conn.execute("COMMIT")
    assert len(waits) == 1
    assert outbox.peek(10).lines == ["other v=1i 1", "alarm v=1i 1"]
    # Statements other than the commit's BEGIN keep SQLite's own wait.
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (int(LOCK_TIMEOUT_S * 1000),)


def test_an_alarm_commit_gives_up_when_the_lock_is_never_let_go(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    Outbox(path, bulk_elsewhere=True)
    other = holding_the_write_lock(path)
    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_promptly(conn, timeout_s=0, sleep=lambda _: None)
    assert not conn.in_transaction
    other.execute("ROLLBACK")
