"""Telemetry taken in by a process of its own.

Receiving, decoding and storing telemetry is most of what the gateway does, and one
interpreter runs one thread at a time: in a process of its own the telemetry has a
core to itself, and the alarms, rules, notifications and API of the main process no
longer wait behind it. The process commits each batch's lines to the outbox, as the
in-process lane does, with its records as a handoff; the main process's rules judge
the handoffs in order and remove them in the transaction that commits what they
decided. A crash of either process between the two loses nothing and judges nothing
twice.

The two talk over a pipe: the main process says when to stop, and when to load the
registry again; the telemetry process sends its connection state and what each batch
added to the counters. A telemetry process whose main process is gone sees the pipe
close and stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

from gateway.clock import Clock, SystemClock, sleep_unless_set
from gateway.config import GatewayConfig
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.profile import ProfileSet, load_profiles
from gateway.errors import ConfigError, DamagedStoreError
from gateway.heap import set_aside_startup_objects
from gateway.ingest.mqtt import Subscriber, subscriber_for
from gateway.logs import configure_logging
from gateway.pipeline import BatchCounts, IngestPipeline
from gateway.registry import Registry, registry_for, reread
from gateway.stats import Stats
from gateway.store.database import damage_noted
from gateway.store.lock import PidLock, telemetry_pid_path
from gateway.store.outbox import Outbox
from gateway.store.series import SeriesMapper

log = logging.getLogger(__name__)

# How often the telemetry process looks at its broker connection to report a change.
CONNECTION_POLL_S = 0.05
# How long a stopping telemetry process may take to finish its batch.
STOP_TIMEOUT_S = 15.0
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
# How long a reload waits for the process to hold the registry: a district's takes
# seconds to read and compare (bench.registry), more on a busy box at +12.
REGISTRY_ANSWER_TIMEOUT_S = 30.0
# Added to the telemetry process's niceness. When it takes in as much as the cores
# allow, the main process (alarms, notifications) must win them: at 10,000 msg/s offered,
# an alarm's p99 to the webhook was 112-139 ms at 5, 77-84 ms at 12 (bench.notify_latency).
TELEMETRY_NICENESS = 12


class TelemetryProcess:
    """The main process's side: starts the telemetry process, starts it again if it
    ends, and mirrors its connection state and counters."""

    def __init__(
        self,
        config: GatewayConfig,
        clock: Clock,
        stats: Stats,
        *,
        retired: Sequence[str] = (),
        added: Sequence[str] = (),
        on_counts: Callable[[BatchCounts], None] | None = None,
    ) -> None:
        assert config.mqtt is not None
        self._config = config
        self._clock = clock
        self._stats = stats
        self._retired = tuple(retired)
        self._added = tuple(added)
        self._on_counts = on_counts
        # As the subscribers have them, for readiness and for tests.
        self.connected = threading.Event()
        # The filters the broker refused the process's connection (Subscription.refused).
        self.refused: tuple[str, ...] = ()
        self.connections = 0
        self.started = 0
        self.pid: int | None = None
        # The running process's end of the pipe.
        self._pipe: Connection | None = None
        # The registry file it loads, once a reload has named one.
        self._registry_file = config.registry_file
        # The reloads asked of the running process, oldest first, each answered with
        # the process's refusal, or None once it holds the registry.
        self._reloads: collections.deque[asyncio.Future[str | None]] = collections.deque()

    @property
    def client_id(self) -> str:
        assert self._config.mqtt is not None
        return self._config.mqtt.client_id

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set; then asks the process to stop and waits for it."""
        delay_s = RESTART_MIN_S
        while not stopping.is_set():
            began_ms = self._clock.now_ms()
            exitcode = await self._run_once(stopping)
            if stopping.is_set():
                return
            # A process that ran a while before it ended is restarted soon again; one
            # that ends at its start (a broken profile) ever later, up to the most.
            if (self._clock.now_ms() - began_ms) / 1000 > RESTART_MAX_S:
                delay_s = RESTART_MIN_S
            damage = damage_noted(self._config.outbox.path)
            if damage is not None:
                # Started again, it would find the same damage: the gateway stops, and its
                # next start moves the outbox aside.
                raise DamagedStoreError(f"the telemetry process ended: {damage}")
            log.error(
                "the telemetry process ended (exit code %s); starting it again in %.0f s",
                exitcode,
                delay_s,
            )
            await sleep_unless_set(self._clock, delay_s, stopping)
            delay_s = min(delay_s * 2, RESTART_MAX_S)

    def stop(self) -> None:
        """Nothing to do: `run` stops the process when `stopping` is set."""

    async def use_registry(self, path: Path | None) -> str | None:
        """Have the process read the registry again, from `path`, as the main process
        just did (it takes it if it changed); and a process started again after it
        ends, too. Its refusal, or None once it holds it (or, not running, will read it
        when it starts)."""
        self._registry_file = path
        if self._pipe is None:
            return None
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        try:
            self._pipe.send(("registry", path))
        except OSError:
            return None
        self._reloads.append(answer)
        try:
            return await asyncio.wait_for(asyncio.shield(answer), REGISTRY_ANSWER_TIMEOUT_S)
        except TimeoutError:
            return f"its telemetry process has not said in {REGISTRY_ANSWER_TIMEOUT_S:.0f} s"

    async def _run_once(self, stopping: asyncio.Event) -> int | None:
        # Spawned, not forked: this process has threads (the commits', the drain's), and a
        # fork copies their locks in whatever state they are.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve,
            args=(
                self._config.model_copy(update={"registry_file": self._registry_file}),
                self._retired,
                self._added,
                logging.getLogger().level,
                theirs,
            ),
            name="telemetry",
            daemon=True,
        )
        process.start()
        theirs.close()
        self.started += 1
        self.pid = process.pid
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        loop.add_reader(ours.fileno(), self._receive, ours, ended)
        # Its end is seen on the pipe; the sentinel covers a pipe something else holds.
        loop.add_reader(process.sentinel, ended.set)
        self._pipe = ours
        try:
            waits = [asyncio.create_task(stopping.wait()), asyncio.create_task(ended.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            if not ended.is_set():
                with contextlib.suppress(OSError):
                    ours.send("stop")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), STOP_TIMEOUT_S)
        finally:
            self._pipe = None
            loop.remove_reader(process.sentinel)
            # What it sent last, its counts, before the pipe closes.
            self._receive(ours, ended)
            loop.remove_reader(ours.fileno())
            ours.close()
            self.connected.clear()
            # A process started again reads the registry file named last.
            while self._reloads:
                answer = self._reloads.popleft()
                if not answer.done():
                    answer.set_result(None)
            # A process that ended while its commits failed no longer fails; the next
            # says if it does.
            self._stats.note_commit("telemetry", None)
            await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
            if process.exitcode is None:
                log.error("the telemetry process did not stop; killing it")
                process.kill()
                await asyncio.to_thread(process.join)
        return process.exitcode

    def _receive(self, pipe: Connection, ended: asyncio.Event) -> None:
        try:
            while pipe.poll():
                kind, *values = pipe.recv()
                if kind == "counts":
                    counts: BatchCounts = values[0]
                    counts.add_to(self._stats)
                    if self._on_counts is not None:
                        self._on_counts(counts)
                elif kind == "commit":
                    self._stats.note_commit("telemetry", values[0])
                elif kind == "registry":
                    answer = self._reloads.popleft() if self._reloads else None
                    if answer is not None and not answer.done():
                        answer.set_result(values[0])
                elif kind == "connection":
                    connected, self.connections, self.refused = values
                    if connected:
                        self.connected.set()
                    else:
                        self.connected.clear()
        except (EOFError, OSError):
            ended.set()


def serve(
    config: GatewayConfig,
    retired: Sequence[str],
    added: Sequence[str],
    log_level: int,
    pipe: Connection,
) -> None:
    """The telemetry process."""
    configure_logging(log_level, "%(asctime)s %(levelname)s %(name)s[telemetry]: %(message)s")
    # Ctrl-C in a terminal reaches every process of the group; the main process says
    # when this one stops, after its own last batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # So does a service manager's SIGTERM to every process of the service: ended by it,
    # this one would lose its batch in hand.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_serve(config, retired, added, pipe))


async def _serve(
    config: GatewayConfig, retired: Sequence[str], added: Sequence[str], pipe: Connection
) -> None:
    assert config.mqtt is not None
    # When the cores are busy, the main process (alarms, notifications) goes first.
    os.nice(TELEMETRY_NICENESS)
    clock = SystemClock()
    profiles = load_profiles(config.profiles_dir, CODECS)
    registry = registry_for(config.registry_file, profiles.device_types())
    # Held until this process ends, which lets go of it however it ends: a gateway
    # started after its main process was killed waits for this one to finish its batch
    # before it opens the outbox.
    instance = PidLock.take(telemetry_pid_path(config.outbox.path), "another telemetry process")
    outbox = Outbox.configured(config.outbox)
    redelivery = RedeliveryFilter.configured(config)
    redelivery.restore(outbox.redelivery_keys())
    ingest = config.ingest
    pipeline = IngestPipeline(
        Decoder.configured(profiles, registry, ingest),
        redelivery,
        SeriesMapper(profiles, registry),
        outbox,
        Stats(),
        commit_max_messages=ingest.commit_max_messages,
        commit_interval_s=ingest.commit_interval_s,
        handoff=True,
        clock=clock,
    )
    pipeline.counts_listeners.append(lambda counts: _send(pipe, ("counts", counts)))
    pipeline.commit_listeners.append(lambda error: _send(pipe, ("commit", error)))
    # A full pass of the collector in the middle of a commit holds the outbox's write
    # lock, which an alarm's commit in the main process may be waiting for.
    set_aside_startup_objects()
    connection = subscriber_for(config.mqtt, clock, retired=retired, added=added)
    connection.on_retired = partial(outbox.forget_subscriptions, connection.client_id)
    connection.on_subscribed = partial(outbox.record_subscriptions, connection.client_id)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # One reload at a time, in the order they were asked for.
    reloads: asyncio.Queue[Path | None] = asyncio.Queue()
    reloader = asyncio.create_task(_reload_registries(reloads, profiles, pipeline, registry, pipe))
    loop.add_reader(pipe.fileno(), _on_parent, pipe, stopping, reloads)
    reporter = asyncio.create_task(_report_connection(connection, pipe, stopping))
    try:
        await connection.start()
        await pipeline.run(connection, stopping)
    finally:
        stopping.set()
        connection.stop()
        await reporter
        reloader.cancel()
        loop.remove_reader(pipe.fileno())
        outbox.close()
        instance.release()


def _on_parent(
    pipe: Connection, stopping: asyncio.Event, reloads: asyncio.Queue[Path | None]
) -> None:
    try:
        while pipe.poll():
            message = pipe.recv()
            if message == "stop":
                stopping.set()
            elif message[0] == "registry":
                reloads.put_nowait(message[1])
    except (EOFError, OSError):
        # The main process is gone: finish the batch in hand and stop.
        asyncio.get_running_loop().remove_reader(pipe.fileno())
        stopping.set()


async def _reload_registries(
    reloads: asyncio.Queue[Path | None],
    profiles: ProfileSet,
    pipeline: IngestPipeline,
    running: Registry,
    pipe: Connection,
) -> None:
    while True:
        path = await reloads.get()
        try:
            # Off the loop: a district's registry takes seconds to read and compare.
            registry, changes = await asyncio.to_thread(
                reread, path, profiles.device_types(), running
            )
        except ConfigError as exc:
            # The main process read the same file a moment ago: changed again since.
            log.error("registry not reloaded, the running registry stays: %s", exc)
            _send(pipe, ("registry", f"its telemetry process refused the registry: {exc}"))
            continue
        if changes:
            pipeline.use_registry(registry)
            running = registry
            log.info("reloaded the registry: %d devices (%s)", len(registry), changes)
        _send(pipe, ("registry", None))


async def _report_connection(
    subscriber: Subscriber, pipe: Connection, stopping: asyncio.Event
) -> None:
    reported: tuple[bool, int, tuple[str, ...]] | None = None
    while not stopping.is_set():
        state = (subscriber.connected.is_set(), subscriber.connections, subscriber.refused)
        if state != reported:
            _send(pipe, ("connection", *state))
            reported = state
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), CONNECTION_POLL_S)


def _send(pipe: Connection, message: tuple[object, ...]) -> None:
    # A main process gone is seen by the reader, which stops this one.
    with contextlib.suppress(OSError):
        pipe.send(message)
