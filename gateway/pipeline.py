"""The ingest pipeline: a batch of messages is decoded, committed, then acknowledged.

    broker -> MessageSource -> Decoder -> RedeliveryFilter -> SeriesMapper -> Outbox
                                                           -> record listeners (rules)

A batch is acknowledged to the broker only after its commit; the records go to the
listeners only after it too, so that nothing downstream sees what a crash could undo.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.decode.decoder import Decoder
from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.record import Record
from gateway.decode.rejection import RejectReason
from gateway.errors import DecodeError
from gateway.ingest.message import InboundMessage
from gateway.rules.alert import AlertChange
from gateway.rules.stage import AlertDecision, AlertStage
from gateway.stats import Stats
from gateway.store.outbox import Outbox, QuarantineEntry
from gateway.store.series import SeriesMapper

log = logging.getLogger(__name__)

RecordListener = Callable[[Sequence[Record]], None]
AlertListener = Callable[[Sequence[AlertChange]], None]


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


class IngestPipeline:
    def __init__(
        self,
        decoder: Decoder,
        redelivery: RedeliveryFilter,
        mapper: SeriesMapper,
        outbox: Outbox,
        stats: Stats,
        *,
        commit_max_messages: int = 5000,
        commit_interval_s: float = 0.05,
        alerts: AlertStage | None = None,
    ) -> None:
        self._decoder = decoder
        self._redelivery = redelivery
        self._mapper = mapper
        self._outbox = outbox
        self._stats = stats
        self._commit_max_messages = commit_max_messages
        self._commit_interval_s = commit_interval_s
        self.alerts = alerts
        self.listeners: list[RecordListener] = []
        self.alert_listeners: list[AlertListener] = []
        self.committed = asyncio.Event()
        # One transaction at a time on the ingest connection: batches and rule timers.
        self._commit_lock = asyncio.Lock()

    def prepare(self, messages: Sequence[InboundMessage]) -> Batch:
        """Decode a batch: pure but for the redelivery filter's memory."""
        lines: list[str] = []
        records: list[Record] = []
        quarantined: list[QuarantineEntry] = []
        types: list[str] = []
        redeliveries = 0
        decode = self._decoder.decode
        is_redelivery = self._redelivery.is_redelivery
        line = self._mapper.line
        for message in messages:
            try:
                decoded = decode(message)
                new_lines = [line(r) for r in decoded.records]
            except DecodeError as exc:
                quarantined.append(
                    QuarantineEntry(
                        message.received_ms, message.topic, message.payload, exc.reason, exc.detail
                    )
                )
                continue
            except ValueError as exc:
                quarantined.append(
                    QuarantineEntry(
                        message.received_ms,
                        message.topic,
                        message.payload,
                        RejectReason.UNENCODABLE,
                        str(exc),
                    )
                )
                continue
            key = decoded.dedup_key
            if key is not None and is_redelivery(decoded.device, key):
                redeliveries += 1
                continue
            types.append(decoded.device.device_type)
            records.extend(decoded.records)
            lines.extend(new_lines)
        return Batch(lines, records, quarantined, redeliveries, types)

    async def run(self, source: MessageSource, stopping: asyncio.Event) -> None:
        """Until `stopping` is set. A failed commit raises: the batch stays unacknowledged."""
        while not stopping.is_set():
            messages = await source.next_batch(self._commit_max_messages, self._commit_interval_s)
            if messages:
                await self.handle(source, messages)

    async def handle(self, source: MessageSource, messages: Sequence[InboundMessage]) -> None:
        batch = self.prepare(messages)
        keys = self._redelivery.take_changes()
        decision = self.alerts.evaluate(batch.records) if self.alerts else AlertDecision()
        async with self._commit_lock:
            result = await asyncio.to_thread(
                self._outbox.commit,
                batch.lines + decision.lines,
                batch.quarantined,
                keys,
                decision.write,
            )
        source.ack(messages)
        self._count(messages, batch, result.evicted_lines)
        self._stats.lines_stored += len(decision.lines)
        self.committed.set()
        for listener in self.listeners:
            listener(batch.records)
        self._announce(decision)

    async def commit_alerts(self, decision: AlertDecision) -> None:
        """Commit what the rules decided outside a batch (a device gone silent)."""
        if decision.write is None:
            return
        async with self._commit_lock:
            await asyncio.to_thread(self._outbox.commit, decision.lines, [], [], decision.write)
        self._stats.lines_stored += len(decision.lines)
        self.committed.set()
        self._announce(decision)

    async def commit_lines(self, lines: Sequence[str]) -> None:
        """Commit lines the gateway makes itself (its health, the registry) to the outbox."""
        async with self._commit_lock:
            await asyncio.to_thread(self._outbox.commit, lines, [], [])
        self._stats.lines_stored += len(lines)
        self.committed.set()

    def _announce(self, decision: AlertDecision) -> None:
        if decision.changes:
            for alert_listener in self.alert_listeners:
                alert_listener(decision.changes)

    def _count(self, messages: Sequence[InboundMessage], batch: Batch, evicted: int) -> None:
        stats = self._stats
        stats.messages_in += len(messages)
        stats.messages_by_type.update(batch.types)
        stats.rejected_by_reason.update(q.reason for q in batch.quarantined)
        stats.redeliveries += batch.redeliveries
        stats.records += len(batch.records)
        stats.lines_stored += len(batch.lines)
        stats.lines_evicted += evicted
        for entry in batch.quarantined[:5]:
            log.info("quarantined %s: %s (%s)", entry.topic, entry.reason, entry.detail)
