"""The ingest pipeline: a batch of messages is decoded, committed, then acknowledged.

    broker -> MessageSource -> Decoder -> RedeliveryFilter -> SeriesMapper -> Outbox
                                                           -> record listeners (rules)

A batch is acknowledged to the broker only after its commit; the records go to the
listeners only after it too, so that nothing downstream sees what a crash could undo.

Alarms (event topics) may come through a lane of their own: a second subscription
whose batches are decoded and committed while a telemetry batch is still being
decoded, so that an SOS never waits for thousands of readings queued before it.

The telemetry may also be taken in by another process (gateway.ingest.process), which
commits each batch's records as a handoff instead of judging them; this one's rules
judge the handoffs in order and remove them in the transaction that commits what they
decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from gateway.clock import Clock, SystemClock, sleep_unless_set
from gateway.decode.decoder import Decoder
from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.record import Record, dump_records, load_records
from gateway.decode.rejection import RejectReason
from gateway.errors import DamagedStoreError, DecodeError, StoreError
from gateway.ingest.lag import IngestLag
from gateway.ingest.message import InboundMessage
from gateway.registry import Registry
from gateway.rules.alert import AlertChange, Repeat
from gateway.rules.stage import AlertDecision, AlertStage
from gateway.stats import Stats
from gateway.store.backoff import Backoff
from gateway.store.outbox import CommitResult, Outbox, QuarantineEntry, Write
from gateway.store.series import SeriesMapper

log = logging.getLogger(__name__)

# A batch at least this large means traffic is heavy enough to linger for the next.
LINGER_MIN_MESSAGES = 20
# Messages decoded between two turns of the event loop (about 10 ms of work), so that an
# alarm's batch, notifications and API requests are not held up by a large batch.
DECODE_SLICE_MESSAGES = 200
# Handed-over batches judged in one commit: about as many records as one ingest batch.
JUDGE_MAX_BATCHES = 1
# A commit that failed (a full disk, the write lock held too long) is tried again after
# a delay growing from the first to the second, its messages unacknowledged meanwhile.
COMMIT_RETRY_INITIAL_S = 0.1
COMMIT_RETRY_MAX_S = 5.0

T = TypeVar("T")
RecordListener = Callable[[Sequence[Record]], None]
AlertListener = Callable[[Sequence[AlertChange]], None]
RepeatListener = Callable[[Sequence[Repeat]], None]
CountsListener = Callable[["BatchCounts"], None]
# Told the error of each failed commit, and None once commits succeed again.
CommitListener = Callable[[str | None], None]


class MessageSource(Protocol):
    async def next_batch(self, max_messages: int, linger_s: float) -> list[InboundMessage]: ...

    def ack(self, messages: Sequence[InboundMessage]) -> None: ...


@dataclass(frozen=True, slots=True)
class Batch:
    """What one batch of messages became, ready to commit."""

    lines: list[str]
    records: list[Record]
    quarantined: list[QuarantineEntry]
    redeliveries: int
    types: list[str]

    @staticmethod
    def joined(parts: Sequence[Batch]) -> Batch:
        if len(parts) == 1:
            return parts[0]
        return Batch(
            [line for part in parts for line in part.lines],
            [record for part in parts for record in part.records],
            [entry for part in parts for entry in part.quarantined],
            sum(part.redeliveries for part in parts),
            [kind for part in parts for kind in part.types],
        )


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """What a committed batch adds to the counters; sent on by a telemetry process."""

    messages: int
    types: Counter[str]
    rejected: Counter[str]
    redeliveries: int
    records: int
    lines: int
    evicted: int
    # The telemetry lane's lag after the batch (gateway.ingest.lag); None from the alarm
    # lane, and before any message carried the device's time.
    lag_s: float | None = None

    @staticmethod
    def of(messages: int, batch: Batch, evicted: int, lag_s: float | None) -> BatchCounts:
        return BatchCounts(
            messages,
            Counter(batch.types),
            Counter(q.reason for q in batch.quarantined),
            batch.redeliveries,
            len(batch.records),
            len(batch.lines),
            evicted,
            lag_s,
        )

    def add_to(self, stats: Stats) -> None:
        stats.messages_in += self.messages
        stats.messages_by_type.update(self.types)
        stats.rejected_by_reason.update(self.rejected)
        stats.redeliveries += self.redeliveries
        stats.records += self.records
        stats.lines_stored += self.lines
        stats.lines_evicted += self.evicted
        if self.lag_s is not None:
            stats.ingest_lag_s = self.lag_s


class IngestPipeline:
    def __init__(
        self,
        decoder: Decoder,
        redelivery: RedeliveryFilter,
        mapper: SeriesMapper,
        outbox: Outbox,
        stats: Stats,
        *,
        commit_max_messages: int = 1000,
        commit_interval_s: float = 0.05,
        alerts: AlertStage | None = None,
        alarm_redelivery: RedeliveryFilter | None = None,
        handoff: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._decoder = decoder
        self._redelivery = redelivery
        self._mapper = mapper
        self._outbox = outbox
        self._stats = stats
        self._commit_max_messages = commit_max_messages
        self._commit_interval_s = commit_interval_s
        self.alerts = alerts
        # Compared with None: a filter that holds no key yet is empty, and false.
        self._alarm_redelivery = (
            RedeliveryFilter() if alarm_redelivery is None else alarm_redelivery
        )
        # Commit the records for the rules of another process instead of judging them.
        # Such a process takes in telemetry and nothing else, and commits on its event
        # loop rather than in a thread: there is nothing else for the loop to do
        # meanwhile, and a commit thread would take turns with the loop's thread for the
        # interpreter at every row it writes, holding the outbox's write lock (which an
        # alarm's commit may be waiting for) ten times as long (measured: p90 160 ms
        # against 13 ms).
        self._handoff = handoff
        self.listeners: list[RecordListener] = []
        self.alert_listeners: list[AlertListener] = []
        # Events that joined an alert already open, once committed.
        self.repeat_listeners: list[RepeatListener] = []
        self.counts_listeners: list[CountsListener] = []
        self.commit_listeners: list[CommitListener] = []
        self.committed = asyncio.Event()
        self.lag = IngestLag()
        # One transaction at a time on the ingest connection: batches and rule timers.
        # Held while a failed commit waits to be tried again, so that what the rules
        # decided is committed in the order they decided it.
        self._commit_lock = asyncio.Lock()
        self._clock = clock or SystemClock()
        self._commit_backoff = Backoff(COMMIT_RETRY_INITIAL_S, COMMIT_RETRY_MAX_S)
        # The error of the last commit while commits fail.
        self.commit_error: str | None = None
        # Set by `run`'s caller; a batch handled outside `run` is tried until stored.
        self._stopping = asyncio.Event()

    def use_registry(self, registry: Registry) -> None:
        """A reloaded registry, from the next batch on."""
        self._decoder.use_registry(registry)
        self._mapper.use_registry(registry)

    def prepare(
        self, messages: Sequence[InboundMessage], redelivery: RedeliveryFilter | None = None
    ) -> Batch:
        """Decode a batch: pure but for the redelivery filter's memory."""
        lines: list[str] = []
        records: list[Record] = []
        quarantined: list[QuarantineEntry] = []
        types: list[str] = []
        redeliveries = 0
        decode = self._decoder.decode
        # Not `redelivery or ...`: the alarm lane's filter, empty before its first key,
        # would hand its keys to the other lane's, which this process may never save.
        is_redelivery = (self._redelivery if redelivery is None else redelivery).is_redelivery
        line = self._mapper.line
        for message in messages:
            try:
                decoded = decode(message)
                new_lines = [line(r) for r in decoded.records]
            except DecodeError as exc:
                quarantined.append(_quarantined(message, exc.reason, exc.detail))
                continue
            except ValueError as exc:
                quarantined.append(_quarantined(message, RejectReason.UNENCODABLE, str(exc)))
                continue
            except Exception as exc:
                # A message that trips a fault of the gateway's would otherwise stop its
                # batch unacknowledged, and the broker would send it again and again,
                # with every message after it held up behind it.
                log.exception("decoding a message on %s failed", message.topic)
                detail = f"{type(exc).__name__}: {exc}"
                quarantined.append(_quarantined(message, RejectReason.INTERNAL_ERROR, detail))
                continue
            key = decoded.dedup_key
            if key is not None and is_redelivery(decoded.device, key):
                redeliveries += 1
                continue
            types.append(decoded.device.device_type)
            records.extend(decoded.records)
            lines.extend(new_lines)
        return Batch(lines, records, quarantined, redeliveries, types)

    async def run(
        self,
        source: MessageSource | None,
        stopping: asyncio.Event,
        alarms: MessageSource | None = None,
        handoffs: asyncio.Event | None = None,
    ) -> None:
        """Until `stopping` is set. A failed commit is tried again, its batch unacknowledged
        meanwhile; a stop ends the trying, and the broker sends the batch again later.

        `handoffs` is set when another process has handed over records to judge."""
        self._stopping = stopping
        async with asyncio.TaskGroup() as lanes:
            if source is not None:
                lanes.create_task(self._run_lane(source, stopping, alarm=False))
            if alarms is not None:
                lanes.create_task(self._run_lane(alarms, stopping, alarm=True))
            if handoffs is not None:
                lanes.create_task(self._judge_handoffs(handoffs, stopping))

    async def _judge_handoffs(self, handed_over: asyncio.Event, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            handed_over.clear()
            # Those left by a crash first, then each as it comes.
            try:
                while await self.judge_handoffs() and not stopping.is_set():
                    pass
            except StoreError as exc:
                self._end_at_stop(exc, "records handed over not judged, judged at the next start")
                return
            # The timeout only bounds how long a stop waits.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handed_over.wait(), timeout=0.25)

    async def judge_handoffs(self) -> int:
        """Judge the oldest records handed over by another process and commit what the
        rules made of them, with their removal, in one transaction. Returns how many
        handed-over batches were judged."""
        rows = await self._until_done(
            partial(self._outbox.handoffs, JUDGE_MAX_BATCHES), on_loop=False
        )
        if not rows:
            return 0
        records: list[Record] = []
        for handoff_id, blob in rows:
            try:
                records.extend(load_records(blob))
            except Exception as exc:
                # Left by a version whose records this one cannot read: their lines are
                # stored, only the rules do not see them.
                log.error("records handed over in batch %d not judged: %s", handoff_id, exc)
        # Loading and judging a batch each take several ms: an alarm waiting meanwhile
        # goes between them.
        await asyncio.sleep(0)
        decision = self.alerts.evaluate(records) if self.alerts else AlertDecision()
        await self.commit_until_stored(
            decision.lines, partial(_judged, decision.write, rows[-1][0])
        )
        self._announce(decision)
        self._tell_listeners(records)
        return len(rows)

    async def handoffs_waiting(self) -> bool:
        """Whether records handed over by another process still wait to be judged."""
        async with self._commit_lock:
            return await asyncio.to_thread(self._outbox.handoffs_waiting)

    async def _run_lane(self, source: MessageSource, stopping: asyncio.Event, alarm: bool) -> None:
        linger_s = 0.0
        while not stopping.is_set():
            messages = await source.next_batch(self._commit_max_messages, linger_s)
            if messages:
                try:
                    await self.handle(source, messages, alarm=alarm)
                except StoreError as exc:
                    left = f"a batch of {len(messages)} messages not committed"
                    self._end_at_stop(exc, left + ", which the broker sends again")
                    return
            # Lingering gathers a busy stream into fewer commits; a quiet one would only
            # wait, and a lone alarm should not wait for company.
            busy = len(messages) >= LINGER_MIN_MESSAGES and not alarm
            linger_s = self._commit_interval_s if busy else 0.0

    async def handle(
        self, source: MessageSource, messages: Sequence[InboundMessage], *, alarm: bool = False
    ) -> None:
        redelivery = self._alarm_redelivery if alarm else self._redelivery
        parts: list[Batch] = []
        for start in range(0, len(messages), DECODE_SLICE_MESSAGES):
            if parts:
                await asyncio.sleep(0)
            parts.append(self.prepare(messages[start : start + DECODE_SLICE_MESSAGES], redelivery))
        batch = Batch.joined(parts)
        # Whatever ran between the slices, this batch's keys are still only its own: the
        # other lane keeps its keys in a filter of its own.
        keys = redelivery.take_changes()
        handoff: bytes | None = None
        if self._handoff:
            decision = AlertDecision()
            if batch.records:
                handoff = dump_records(batch.records)
        else:
            decision = (
                self.alerts.evaluate(batch.records, ahead=alarm) if self.alerts else AlertDecision()
            )
        commit = partial(
            self._outbox.commit,
            batch.lines + decision.lines,
            batch.quarantined,
            keys,
            decision.write,
            lane="alarm" if alarm else "main",
            handoff=handoff,
        )
        result = await self._until_done(commit, on_loop=self._handoff)
        source.ack(messages)
        lag_s = None if alarm else self.lag.observe(batch.records, messages[-1].received_ms)
        counts = BatchCounts.of(len(messages), batch, result.evicted_lines, lag_s)
        counts.add_to(self._stats)
        for counts_listener in self.counts_listeners:
            counts_listener(counts)
        for entry in batch.quarantined[:5]:
            log.info("quarantined %s: %s (%s)", entry.topic, entry.reason, entry.detail)
        self._stats.lines_stored += len(decision.lines)
        self.committed.set()
        self._announce(decision)
        self._tell_listeners(batch.records)

    async def commit_alerts(self, decision: AlertDecision) -> None:
        """Commit what the rules decided outside a batch (a device gone silent)."""
        if decision.write is None:
            return
        await self.commit_until_stored(decision.lines, decision.write)
        self._announce(decision)

    async def commit(self, lines: Sequence[str], write: Write | None) -> None:
        """Commit lines, and whatever `write` adds, in one transaction of the ingest
        connection, between batches. What `write` raises is raised here, nothing kept.

        For a request that someone waits on: while commits fail, it raises StoreError at
        once rather than wait for the outbox with the batches."""
        if self.commit_error is not None:
            raise StoreError(f"the outbox cannot commit: {self.commit_error}", retryable=True)
        async with self._commit_lock:
            result = await asyncio.to_thread(self._outbox.commit, lines, [], None, write)
        self._committed(result)

    async def commit_until_stored(self, lines: Sequence[str], write: Write | None) -> None:
        """As `commit`, for the gateway's own work (judging, rule timers, its health),
        tried again until it is stored, as a batch is."""
        result = await self._until_done(
            partial(self._outbox.commit, lines, [], None, write), on_loop=False
        )
        self._committed(result)

    def _committed(self, result: CommitResult) -> None:
        # Counted as a batch's are: lines dropped to make room are never silent.
        self._stats.lines_stored += result.lines
        self._stats.lines_evicted += result.evicted_lines
        self.committed.set()

    async def read_until_done(self, read: Callable[[], T]) -> T:
        """A read of the outbox for the gateway's own work, in a thread, tried again as a
        commit is while SQLite cannot go on for now (a lock held, an I/O error)."""
        return await self._until_done(read, on_loop=False)

    async def _until_done(self, step: Callable[[], T], *, on_loop: bool) -> T:
        """A step of the outbox's commits (a commit, or reading what is handed over),
        under the commit lock; while it fails, tried again with backoff. Raises the last
        failure only if the gateway is stopping, the batch then left to the broker to send
        again, or the handoff to the next start to judge."""
        async with self._commit_lock:
            while True:
                try:
                    result = step() if on_loop else await asyncio.to_thread(step)
                except StoreError as exc:
                    # A damaged outbox never heals: the gateway stops, and its next start
                    # moves the file aside, the batch still the broker's to send again.
                    if self._stopping.is_set() or isinstance(exc, DamagedStoreError):
                        raise
                    delay_s = self._commit_backoff.next_delay_s()
                    # A batch's messages stay unacknowledged meanwhile.
                    log.error("%s; next try in %.1f s", exc, delay_s)
                    self._tell_commit_listeners(str(exc))
                    await sleep_unless_set(self._clock, delay_s, self._stopping)
                    continue
                if self.commit_error is not None:
                    log.warning("the outbox commits again")
                    self._tell_commit_listeners(None)
                self._commit_backoff.reset()
                return result

    def _end_at_stop(self, error: StoreError, left: str) -> None:
        """A step that failed because the gateway is stopping (`_until_done` raises only
        then, or for a damaged outbox) ends its task as a stop does, saying what it left;
        any other failure goes on."""
        if not self._stopping.is_set() or isinstance(error, DamagedStoreError):
            raise error
        log.warning("stopped with %s: %s", left, error)

    def _tell_commit_listeners(self, error: str | None) -> None:
        self.commit_error = error
        for listener in self.commit_listeners:
            listener(error)

    def _announce(self, decision: AlertDecision) -> None:
        if decision.changes:
            for alert_listener in self.alert_listeners:
                alert_listener(decision.changes)
        if decision.repeats:
            for repeat_listener in self.repeat_listeners:
                repeat_listener(decision.repeats)

    def _tell_listeners(self, records: Sequence[Record]) -> None:
        """After the alerts are announced: a listener (the API's latest values) that
        fails on a record the rules took must neither hold up an alarm nor stop the
        gateway, its batch already committed and acknowledged."""
        for listener in self.listeners:
            try:
                listener(records)
            except Exception:
                log.exception("a record listener failed on a batch of %d records", len(records))


def _quarantined(message: InboundMessage, reason: str, detail: str) -> QuarantineEntry:
    return QuarantineEntry(message.received_ms, message.topic, message.payload, reason, detail)


def _judged(
    write: Callable[[sqlite3.Connection], None] | None, last_id: int, conn: sqlite3.Connection
) -> None:
    if write is not None:
        write(conn)
    Outbox.drop_handoffs(conn, last_id)
