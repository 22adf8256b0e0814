"""Moves lines from the outbox to the time-series database, oldest first.

Lines leave the outbox only after the database accepted them (or refused them as
malformed, which quarantines them). While the database is down the outbox grows and
this loop keeps trying with backoff; when it returns, the backlog drains in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from gateway.clock import Clock, sleep_unless_set
from gateway.decode.rejection import RejectReason
from gateway.errors import DamagedStoreError, StoreError
from gateway.stats import Stats
from gateway.store.backoff import Backoff
from gateway.store.influx import WriteResult
from gateway.store.outbox import FIRST_LINE, Outbox, QuarantineEntry

log = logging.getLogger(__name__)

T = TypeVar("T")


class LineWriter(Protocol):
    async def write(self, lines: list[str]) -> WriteResult: ...


class OutboxDrain:
    def __init__(
        self,
        outbox: Outbox,
        writer: LineWriter,
        backoff: Backoff,
        clock: Clock,
        stats: Stats,
        *,
        batch_lines: int = 5000,
        linger_s: float = 0.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        self._outbox = outbox
        self._writer = writer
        self._backoff = backoff
        self._clock = clock
        self._stats = stats
        self._batch_lines = batch_lines
        self._linger_s = linger_s
        self._idle_poll_s = idle_poll_s
        self.wakeup = asyncio.Event()
        # Lines of the outbox's first chunk already written, when it was not all.
        self._written = FIRST_LINE
        # The outbox is read and trimmed on a thread of the writer's own. The batches it
        # reads are large allocations, which on whichever threads of the default pool
        # left each thread's malloc arena holding freed memory: the main process grew
        # to 15 MiB more than on one thread, and went on growing (measured).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="outbox-writer")

    async def run(self) -> None:
        """Until cancelled."""
        try:
            await self._run()
        finally:
            self._thread.shutdown(wait=False)

    async def _run(self) -> None:
        while True:
            wrote = await self.drain_once()
            if wrote is None:
                continue
            if wrote == 0:
                self.wakeup.clear()
                await sleep_unless_set(self._clock, self._idle_poll_s, self.wakeup)
            elif wrote < self._batch_lines and self._linger_s:
                # InfluxDB spends about a quarter less per line on 5,000-line writes
                # than on 200-line ones (measured): heavy traffic goes in fuller batches.
                await self._clock.sleep(self._linger_s)

    async def _on_thread(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    async def _outbox_failed(self, error: str) -> None:
        delay_s = self._backoff.next_delay_s()
        log.error("%s; next try in %.1f s", error, delay_s)
        await self._clock.sleep(delay_s)

    async def drain_once(self) -> int | None:
        """Write one batch. The number of lines written, or None after a failed write."""
        try:
            pending = await self._on_thread(self._outbox.peek, self._batch_lines, self._written)
            self._stats.outbox_depth = await self._on_thread(self._outbox.depth, self._written)
        except DamagedStoreError:
            raise
        except StoreError as exc:
            await self._outbox_failed(str(exc))
            return None
        lines = pending.lines
        if not lines:
            return 0
        started_s = self._clock.monotonic_s()
        try:
            result = await self._writer.write(lines)
        except StoreError as exc:
            self._stats.write_failures += 1
            self._stats.last_write_error = str(exc)
            delay_s = self._backoff.next_delay_s(exc.retry_after_s)
            log.warning(
                "writing %d lines failed (%s); %d lines wait in the outbox, next try in %.1f s",
                len(lines),
                exc,
                self._stats.outbox_depth,
                delay_s,
            )
            await self._clock.sleep(delay_s)
            return None
        self._stats.write_latency_s = self._clock.monotonic_s() - started_s
        self._stats.write_latency.observe(self._stats.write_latency_s)
        self._backoff.reset()
        self._stats.last_write_error = None
        now_ms = self._clock.now_ms()
        refused = [
            QuarantineEntry(now_ms, "", r.line.encode(), RejectReason.REFUSED_BY_DATABASE, r.reason)
            for r in result.rejected
        ]
        for entry in refused:
            log.warning("the database refused a line: %s", entry.detail)
        if result.expired_lines:
            log.warning("the database dropped %d lines older than its retention policy keeps",
                        result.expired_lines)  # fmt: skip
        if pending.through or refused:
            try:
                await self._on_thread(self._outbox.remove_through, pending.through, refused)
            except DamagedStoreError:
                raise
            except StoreError as exc:
                # The lines are written again with the next try, and overwrite themselves.
                await self._outbox_failed(str(exc))
                return None
        # Kept in memory only: after a restart the first chunk is written from its
        # start again, which is harmless, as a point with the same series and time
        # overwrites itself.
        self._written = pending.next
        self._stats.lines_written += result.accepted_lines
        self._stats.lines_refused += len(refused)
        self._stats.lines_expired += result.expired_lines
        self._stats.rejected_by_reason.update(e.reason for e in refused)
        return len(lines)
