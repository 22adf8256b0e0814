"""Publishing simulated traffic to a real MQTT broker, from one or more processes."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulators.fleet import Fleet
from simulators.message import SimMessage
from simulators.scenario import Scenario, resolve

CONNECT_TIMEOUT_S = 10.0
# How long to wait for the broker to acknowledge what is still in flight at the end.
FINAL_ACK_TIMEOUT_S = 10.0
# The timestamps of an unpaced (as fast as possible) run advance at this rate per process,
# about what one paho publisher manages at QoS 1, so they stay near the wall clock.
UNPACED_NOMINAL_RATE_MSG_S = 4000.0


@dataclass(frozen=True, slots=True)
class SimulationOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    devices: int = 100
    communities: int = 3
    community_names: tuple[str, ...] = ()
    seed: int = 1
    # Stop after this many seconds, or this many messages (after the status messages).
    seconds: float | None = 60.0
    max_messages: int | None = None
    # Total messages per second over all processes; None: as fast as the broker acks.
    rate_msg_s: float | None = None
    # Each device at its own typical period × period_scale, paced in real time; ignores
    # `rate_msg_s`. Otherwise telemetry goes device after device at `rate_msg_s`.
    realistic: bool = False
    period_scale: float = 1.0
    scenarios: tuple[Scenario, ...] = ()
    processes: int = 1
    qos: int = 1
    # Unacknowledged messages allowed in flight per connection.
    inflight_window: int = 64
    client_id_prefix: str = "simulator"
    # Added to the publisher processes' niceness (with processes > 1): a load generator
    # on the machine under test then takes the cores only when they would idle.
    niceness: int = 0

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if self.seconds is None and self.max_messages is None:
            raise ValueError("give seconds or max_messages, or the run never ends")
        if self.rate_msg_s is not None and self.rate_msg_s <= 0:
            raise ValueError("rate_msg_s must be > 0")
        if self.inflight_window < 1:
            raise ValueError("inflight_window must be >= 1")


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """Messages counted by kind (`telemetry`, `event`, `status`, `vendor`, `malformed`)."""

    published: Mapping[str, int] = field(default_factory=dict)
    acknowledged: Mapping[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    processes: int = 1

    @property
    def total_published(self) -> int:
        return sum(self.published.values())

    @property
    def total_acknowledged(self) -> int:
        return sum(self.acknowledged.values())

    @property
    def rate_msg_s(self) -> float:
        """Acknowledged messages per second of publishing."""
        return self.total_acknowledged / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        kinds = sorted(set(self.published) | set(self.acknowledged))
        parts = [f"{k} {self.acknowledged.get(k, 0)}/{self.published.get(k, 0)}" for k in kinds]
        return (
            f"acknowledged/published: {', '.join(parts) or 'nothing'}; "
            f"total {self.total_acknowledged}/{self.total_published} in {self.elapsed_s:.2f} s "
            f"= {self.rate_msg_s:.0f} msg/s over {self.processes} process(es)"
        )

    @classmethod
    def combine(cls, reports: Sequence[SimulationReport]) -> SimulationReport:
        published: Counter[str] = Counter()
        acknowledged: Counter[str] = Counter()
        for report in reports:
            published.update(report.published)
            acknowledged.update(report.acknowledged)
        return cls(
            published=dict(published),
            acknowledged=dict(acknowledged),
            # Processes run side by side: the run lasts as long as the slowest one.
            elapsed_s=max((r.elapsed_s for r in reports), default=0.0),
            processes=len(reports),
        )


def run_simulation(options: SimulationOptions) -> SimulationReport:
    """Raises ValueError, before connecting, for a scenario no device of the fleet takes."""
    fleet = fleet_of(options)
    resolve(options.scenarios, fleet.devices, options.seed)
    start_ms = time.time_ns() // 1_000_000
    if options.processes == 1:
        return _publish_shard(options, 0, start_ms)
    # spawn, not fork: each worker starts clean, without the parent's threads and sockets.
    context = get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=options.processes,
        mp_context=context,
        initializer=_start_publisher,
        initargs=(options.niceness, os.getpid()),
    ) as pool:
        futures = [
            pool.submit(_publish_shard, options, index, start_ms)
            for index in range(options.processes)
        ]
        return SimulationReport.combine([f.result() for f in futures])


# How often a publisher process looks whether the run that started it is still there.
PARENT_CHECK_S = 0.5


def _start_publisher(niceness: int, parent_pid: int) -> None:
    """Lower the process's priority, and end it with the run that started it: a run
    stopped by SIGTERM or SIGKILL (a CI job's timeout, the demo's stop) dies at once,
    and its publishers would otherwise go on flooding the broker for the whole run."""
    os.nice(niceness)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _shard_limit(options: SimulationOptions, index: int) -> int | None:
    if options.max_messages is None:
        return None
    share, extra = divmod(options.max_messages, options.processes)
    return share + (1 if index < extra else 0)


def _traffic(fleet: Fleet, options: SimulationOptions, start_ms: int) -> Iterator[SimMessage]:
    if options.realistic:
        # Long enough for any run; the publisher stops on `seconds` or `max_messages`.
        duration_s = options.seconds if options.seconds is not None else 10 * 365 * 86400.0
        return fleet.messages(
            start_ms=start_ms,
            duration_s=duration_s,
            scenarios=options.scenarios,
            period_scale=options.period_scale,
        )
    rate = (
        options.rate_msg_s / options.processes
        if options.rate_msg_s is not None
        else UNPACED_NOMINAL_RATE_MSG_S
    )
    return fleet.stream(rate_msg_s=rate, start_ms=start_ms, scenarios=options.scenarios)


class _Connection:
    """One paho client with a bounded window of QoS 1 publishes awaiting their PUBACK."""

    def __init__(self, options: SimulationOptions, index: int) -> None:
        self.options = options
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{options.client_id_prefix}-{options.seed}-{index}-{os.getpid()}",
            protocol=mqtt.MQTTv311,
        )
        if options.username is not None:
            self.client.username_pw_set(options.username, options.password)
        self.client.max_inflight_messages_set(options.inflight_window)
        self.client.max_queued_messages_set(0)
        self.connected = threading.Event()
        self.refusal = ""
        self.client.on_connect = self._on_connect
        self.inflight: deque[tuple[mqtt.MQTTMessageInfo, str]] = deque()
        self.published: Counter[str] = Counter()
        self.acknowledged: Counter[str] = Counter()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.refusal = str(reason)
        self.connected.set()

    def open(self) -> None:
        self.client.connect(self.options.host, self.options.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(CONNECT_TIMEOUT_S) or self.refusal:
            self.close()
            reason = self.refusal or f"no CONNACK within {CONNECT_TIMEOUT_S:g} s"
            raise ConnectionError(
                f"MQTT broker {self.options.host}:{self.options.port} refused: {reason}"
            )

    def publish(self, message: SimMessage) -> None:
        kind = str(message.kind)
        while self.inflight and (
            len(self.inflight) >= self.options.inflight_window or self.inflight[0][0].is_published()
        ):
            self._settle_oldest(CONNECT_TIMEOUT_S)
        info = self.client.publish(
            message.topic, message.payload, qos=self.options.qos, retain=message.retain
        )
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.published[kind] += 1
            self.inflight.append((info, kind))

    def _settle_oldest(self, timeout_s: float) -> None:
        info, kind = self.inflight.popleft()
        if not info.is_published():
            info.wait_for_publish(timeout_s)
        if info.is_published():
            self.acknowledged[kind] += 1

    def finish(self) -> None:
        deadline = time.monotonic() + FINAL_ACK_TIMEOUT_S
        while self.inflight:
            self._settle_oldest(max(0.0, deadline - time.monotonic()))
        self.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fleet_of(options: SimulationOptions) -> Fleet:
    return Fleet.build(
        seed=options.seed,
        devices=options.devices,
        communities=options.communities,
        community_names=options.community_names or None,
    )


def _publish_shard(options: SimulationOptions, index: int, start_ms: int) -> SimulationReport:
    fleet = fleet_of(options).sharded(index, options.processes)
    connection = _Connection(options, index)
    connection.open()
    began_s = time.monotonic()
    try:
        for status in fleet.status_messages(start_ms):
            connection.publish(status)
        limit = _shard_limit(options, index)
        paced = options.realistic or options.rate_msg_s is not None
        origin_s = time.monotonic()
        for sent, message in enumerate(_traffic(fleet, options, start_ms)):
            if limit is not None and sent >= limit:
                break
            offset_s = (message.time_ms - start_ms) / 1000
            if options.seconds is not None and (
                (paced and offset_s >= options.seconds)
                or time.monotonic() - origin_s >= options.seconds
            ):
                break
            if paced:
                wait_s = origin_s + offset_s - time.monotonic()
                if wait_s > 0:
                    time.sleep(wait_s)
            connection.publish(message)
        connection.finish()
    except BaseException:
        connection.close()
        raise
    return SimulationReport(
        published=dict(connection.published),
        acknowledged=dict(connection.acknowledged),
        elapsed_s=time.monotonic() - began_s,
        processes=1,
    )
