import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.errors import StoreError
from gateway.stats import Stats
from gateway.store.backoff import Backoff
from gateway.store.drain import OutboxDrain
from gateway.store.influx import RejectedLine, WriteResult
from gateway.store.outbox import Outbox, QuarantineEntry


class RecordingWriter:
    """Stands in for InfluxDB: keeps each write's lines, refuses lines marked bad, and
    fails the writes it is told to."""

    def __init__(self, fail_writes: Sequence[int] = ()) -> None:
        self.writes: list[list[str]] = []
        self._fail_writes = set(fail_writes)

    async def write(self, lines: list[str]) -> WriteResult:
        self.writes.append(list(lines))
        if len(self.writes) in self._fail_writes:
            raise StoreError("503: busy", retryable=True)
        rejected = tuple(RejectedLine(line, "400: bad") for line in lines if "bad" in line)
        expired = sum("old" in line for line in lines)
        return WriteResult(len(lines) - len(rejected) - expired, rejected, 1, expired)


def drain_of(
    outbox: Outbox, writer: RecordingWriter, stats: Stats, clock: ManualClock | None = None
) -> OutboxDrain:
    return OutboxDrain(
        outbox,
        writer,
        Backoff(1.0, 2.0),
        clock or ManualClock(),
        stats,
        batch_lines=5,
        linger_s=0.25,
    )


async def drained(drain: OutboxDrain) -> list[int | None]:
    wrote: list[int | None] = []
    while (count := await drain.drain_once()) != 0:
        wrote.append(count)
    return wrote


async def test_writes_are_full_across_batches_and_a_batch_leaves_once_all_written(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    batches = [[f"m v={i}i {b}" for i in range(n)] for b, n in enumerate((3, 4, 8))]
    for lines in batches:
        outbox.commit(lines, [])
    writer = RecordingWriter()
    stats = Stats()
    drain = drain_of(outbox, writer, stats)
    assert await drain.drain_once() == 5
    # The first batch is written and gone; the second stays until all its lines are.
    assert outbox.depth() == 12
    assert stats.outbox_depth == 15
    assert await drain.drain_once() == 5
    assert await drained(drain) == [5]
    everything = [line for lines in batches for line in lines]
    assert writer.writes == [everything[:5], everything[5:10], everything[10:]]
    assert outbox.depth() == 0
    assert stats.lines_written == 15


async def test_a_failed_write_is_tried_again_from_where_the_last_good_one_ended(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    lines = [f"m v={i}i 1" for i in range(8)]
    outbox.commit(lines, [])
    writer = RecordingWriter(fail_writes=[2])
    stats = Stats()
    clock = ManualClock()
    drain = drain_of(outbox, writer, stats, clock)
    assert await drain.drain_once() == 5
    attempt = asyncio.ensure_future(drain.drain_once())
    # The failed write backs off on the clock.
    while not attempt.done():
        await asyncio.sleep(0)
        clock.advance(2.0)
    assert attempt.result() is None
    assert stats.write_failures == 1
    assert stats.last_write_error is not None
    assert outbox.depth() == 8
    assert await drain.drain_once() == 3
    assert writer.writes == [lines[:5], lines[5:], lines[5:]]
    assert outbox.depth() == 0
    # The health page no longer says the writes fail.
    assert stats.last_write_error is None


async def test_after_a_restart_a_batch_partly_written_is_written_from_its_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path)
    lines = [f"m v={i}i 1" for i in range(8)]
    outbox.commit(lines, [])
    assert await drain_of(outbox, RecordingWriter(), Stats()).drain_once() == 5
    outbox.close()
    writer = RecordingWriter()
    # Writing a point again overwrites it with itself: nothing is doubled.
    assert await drained(drain_of(Outbox(path), writer, Stats())) == [5, 3]
    assert writer.writes == [lines[:5], lines[5:]]


async def test_a_batch_evicted_while_partly_written_does_not_shorten_the_next(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1 << 20)
    pad = "x" * 9000
    outbox.commit([f'm,batch=0 pad="{pad}" {i}' for i in range(8)], [])
    writer = RecordingWriter()
    drain = drain_of(outbox, writer, Stats())
    assert await drain.drain_once() == 5
    # The database stays away while the outbox fills past its bound.
    evicted = 0
    for batch in range(1, 40):
        lines = [f'm,batch={batch} pad="{pad}" {i}' for i in range(8)]
        evicted += outbox.commit(lines, []).evicted_lines
    assert evicted > 0
    first = outbox.peek(1).lines[0]
    assert not first.startswith("m,batch=0 ")
    await drained(drain)
    written = [line for write in writer.writes[1:] for line in write]
    assert written[0] == first
    assert len(written) == 40 * 8 - evicted


async def test_refused_lines_are_quarantined(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.commit([f"m v={i}i 1" for i in range(3)] + ["bad line"], [])
    stats = Stats()
    assert await drain_of(outbox, RecordingWriter(), stats).drain_once() == 4
    assert [q.entry.payload for q in outbox.quarantine()] == [b"bad line"]
    assert stats.lines_written == 3
    assert stats.lines_refused == 1
    assert outbox.depth() == 0


async def test_lines_older_than_the_retention_are_counted_not_quarantined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.commit(["m,age=old v=1i 1", "m,age=old v=2i 2", "m v=3i 3"], [])
    stats = Stats()
    with caplog.at_level("WARNING", "gateway.store.drain"):
        assert await drain_of(outbox, RecordingWriter(), stats).drain_once() == 3
    assert outbox.quarantine() == [] and outbox.depth() == 0
    assert (stats.lines_written, stats.lines_expired) == (1, 2)
    assert "the database dropped 2 lines older than its retention policy keeps" in caplog.text


async def test_a_backlog_is_written_without_pause_and_light_traffic_lingers(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    for batch in range(3):
        outbox.commit([f"m v={i}i {batch}" for i in range(4)], [])
    writer = RecordingWriter()
    clock = ManualClock()
    drain = drain_of(outbox, writer, Stats(), clock)
    task = asyncio.ensure_future(drain.run())

    async def settle() -> None:
        for _ in range(50):
            await asyncio.sleep(0.001)

    try:
        await settle()
        # Full writes follow each other without a pause.
        assert [len(w) for w in writer.writes] == [5, 5, 2]
        # Each write was not full: the drain lingers for more before the next.
        for writes_before, line in ((3, "m v=1i 9"), (4, "m v=2i 9")):
            outbox.commit([line], [])
            drain.wakeup.set()
            await settle()
            assert len(writer.writes) == writes_before
            clock.advance(0.25)
            await settle()
            assert writer.writes[-1] == [line]
    finally:
        task.cancel()


class OutboxThatCannotRemoveOnce(Outbox):
    """An outbox on a full disk for one removal."""

    failed = False

    def remove_through(self, through: int, refused: Sequence[QuarantineEntry] = ()) -> None:
        if not self.failed:
            self.failed = True
            raise StoreError("outbox update failed: database or disk is full", retryable=True)
        super().remove_through(through, refused)


async def test_an_outbox_that_cannot_remove_what_was_written_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = OutboxThatCannotRemoveOnce(tmp_path / "o.sqlite3")
    lines = [f"m v={i}i 1" for i in range(3)]
    outbox.commit(lines, [])
    writer = RecordingWriter()
    stats = Stats()
    clock = ManualClock()
    drain = drain_of(outbox, writer, stats, clock)
    attempt = asyncio.ensure_future(drain.drain_once())
    # The drain backs off on the clock rather than stop the gateway.
    while not attempt.done():
        await asyncio.sleep(0)
        clock.advance(2.0)
    assert attempt.result() is None
    assert "database or disk is full" in caplog.text
    assert outbox.depth() == 3
    # Written again, which overwrites each point with itself, and then removed.
    assert await drain.drain_once() == 3
    assert writer.writes == [lines, lines]
    assert outbox.depth() == 0
