import asyncio
from collections.abc import Sequence
from pathlib import Path

from gateway.clock import ManualClock
from gateway.errors import StoreError
from gateway.stats import Stats
from gateway.store.backoff import Backoff
from gateway.store.drain import OutboxDrain
from gateway.store.influx import RejectedLine, WriteResult
from gateway.store.outbox import Outbox


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
        return WriteResult(len(lines) - len(rejected), rejected, 1)


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


async def test_a_batch_larger_than_a_write_goes_in_several_writes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    lines = [f"m v={i}i 1" for i in range(12)]
    outbox.commit(lines, [])
    writer = RecordingWriter()
    stats = Stats()
    assert await drain_of(outbox, writer, stats).drain_once() == 12
    assert writer.writes == [lines[:5], lines[5:10], lines[10:]]
    assert outbox.depth() == 0
    assert stats.lines_written == 12


async def test_a_failed_write_leaves_the_whole_batch_to_try_again(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    lines = [f"m v={i}i 1" for i in range(8)]
    outbox.commit(lines, [])
    writer = RecordingWriter(fail_writes=[2])
    stats = Stats()
    clock = ManualClock()
    drain = drain_of(outbox, writer, stats, clock)
    attempt = asyncio.ensure_future(drain.drain_once())
    # The failed write backs off on the clock.
    while not attempt.done():
        await asyncio.sleep(0)
        clock.advance(2.0)
    assert attempt.result() is None
    assert outbox.depth() == 8
    assert stats.write_failures == 1
    # Written again from its first line: a point written twice overwrites itself.
    assert await drain.drain_once() == 8
    assert writer.writes[2:] == [lines[:5], lines[5:]]
    assert outbox.depth() == 0


async def test_refused_lines_of_any_write_are_quarantined(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.commit([f"m v={i}i 1" for i in range(6)] + ["bad line"], [])
    stats = Stats()
    assert await drain_of(outbox, RecordingWriter(), stats).drain_once() == 7
    assert [q.entry.payload for q in outbox.quarantine()] == [b"bad line"]
    assert stats.lines_written == 6
    assert stats.lines_refused == 1


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
        # Each write took less than a full one, but more waited: no pause between them.
        assert [len(w) for w in writer.writes] == [4, 4, 4]
        # The last took less than a full write, all that waited: the drain lingers
        # for more before the next.
        outbox.commit(["m v=1i 9"], [])
        drain.wakeup.set()
        await settle()
        assert len(writer.writes) == 3
        clock.advance(0.25)
        await settle()
        assert writer.writes[-1] == ["m v=1i 9"]
        outbox.commit(["m v=2i 9"], [])
        drain.wakeup.set()
        await settle()
        assert len(writer.writes) == 4
        clock.advance(0.25)
        await settle()
        assert writer.writes[-1] == ["m v=2i 9"]
    finally:
        task.cancel()
