"""End-to-end throughput of the gateway: simulator traffic through a local Mosquitto into
a local InfluxDB, with nothing lost, in one run:

1. the gateway draining a QoS 1 backlog queued in its persistent session while it was
   down: the broker offers as fast as the gateway takes;
2. the gateway under live load offered at a set rate (the target by default), and where
   its lag is when the devices stop: messages still at the broker (the telemetry
   process behind) or lines still in the outbox (the writes to InfluxDB behind);
3. the gateway's peak memory;
4. the raw receive rate of the gateway's MQTT subscriber with a handler that does
   nothing, draining a backlog of the same traffic from the same broker (after the
   gateway's phases, so that its session takes no copies of their traffic);
5. the gateway's own stages (decode, rules, commit) alone on one thread, over the same
   simulator messages with no broker: what a message costs without the threads around it.

Other MQTT clients' receive rates are measured by bench/mqtt_clients.py.

    .venv/bin/python -m bench.pipeline [--messages 300000] [--live-rate 24000] [--live-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from bench.load import DEVICES_NICENESS, Load, LoadReport
from bench.mqtt_clients import subscriber_rate
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.heap import set_aside_startup_objects
from gateway.ingest.message import InboundMessage
from gateway.ingest.process import TelemetryProcess
from gateway.store.outbox import LinePosition
from simulators.fleet import Fleet
from tests.integration.services import InfluxService, MosquittoService

DEVICES = 2000
# The gateway's phases use one fleet, the one its registry describes.
FLEET_SEED = 2
PROTOCOL: Literal["3.1.1", "5"] = (
    "3.1.1" if os.environ.get("BENCH_MQTT_PROTOCOL") == "3.1.1" else "5"
)
# BENCH_TELEMETRY_PROCESS=0 keeps the telemetry in the main process, for comparison.
TELEMETRY_PROCESS = os.environ.get("BENCH_TELEMETRY_PROCESS", "1") != "0"


def load(
    broker: MosquittoService,
    publishers: int,
    *,
    rate_msg_s: float | None,
    messages: int | None = None,
    seconds: float | None = None,
    niceness: int = 0,
) -> Load:
    """The bench fleet's traffic from `publishers` processes, made and connected."""
    return Load(
        broker.port,
        seed=FLEET_SEED,
        devices=DEVICES,
        rate_msg_s=rate_msg_s,
        messages=messages,
        seconds=seconds,
        processes=publishers,
        niceness=niceness,
    )


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user and system) a process has spent so far; this process by default."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_use(
    broker: MosquittoService, influx: InfluxService, gateway: Gateway | None = None
) -> dict[str, float]:
    """CPU seconds so far of each process; the telemetry process's (0 before it starts)
    only while it runs."""
    telemetry = gateway.subscriber if gateway is not None else None
    pid = telemetry.pid if isinstance(telemetry, TelemetryProcess) else None
    return {
        "gateway": cpu_seconds(),
        "telemetry": cpu_seconds(pid) if pid is not None else 0.0,
        "broker": cpu_seconds(broker.pid),
        "influxdb": cpu_seconds(influx.pid),
    }


def write_registry(workdir: Path) -> Path:
    """The bench fleet's registry, in a file of `workdir`."""
    registry = workdir / "devices.csv"
    registry.write_text(
        Fleet.build(seed=FLEET_SEED, devices=DEVICES).registry_csv(), encoding="utf-8"
    )
    return registry


def gateway_config(workdir: Path, broker: MosquittoService, influx: InfluxService) -> GatewayConfig:
    registry = write_registry(workdir)
    return GatewayConfig.model_validate(
        {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "client_id": "bench-gateway",
                "protocol": PROTOCOL,
            },
            "influx": {"url": influx.url, "database": "bench"},
            "outbox": {"path": workdir / "outbox.sqlite3"},
            "registry_file": registry,
            "ingest": {"telemetry_process": TELEMETRY_PROCESS},
        }
    )


async def wait_connected(gateway: Gateway) -> None:
    """Until both broker connections are up and their subscriptions have had time to be
    answered: a publish before that reaches no session."""
    for connection in (gateway.subscriber, gateway.alarm_subscriber):
        while connection is not None and not connection.connected.is_set():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


async def wait_until_drained(gateway: Gateway, expected_in: int, timeout_s: float = 900) -> float:
    """Seconds until `expected_in` messages were taken in and every line written."""
    began = time.perf_counter()
    stats = gateway.stats
    last_report = began
    while True:
        if (
            stats.messages_in >= expected_in
            # At least: lines a previous start left in the outbox are written now too.
            and stats.lines_written + stats.lines_refused >= stats.lines_stored
            and stats.outbox_depth == 0
        ):
            return time.perf_counter() - began
        now = time.perf_counter()
        if now - began > timeout_s:
            raise TimeoutError(f"only {stats.summary()} after {timeout_s} s")
        if now - last_report > 10:
            print(f"waiting for {expected_in} in: {stats.summary()}", flush=True)
            last_report = now
        await asyncio.sleep(0.02)


async def gateway_phases(
    workdir: Path,
    broker: MosquittoService,
    influx: InfluxService,
    messages: int,
    publishers: int,
    live_rate_msg_s: float,
    live_s: float,
) -> dict[str, float]:
    config = gateway_config(workdir, broker, influx)
    # A first start creates the persistent session the backlog is queued for.
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    await wait_connected(gateway)
    gateway.stop()
    await task

    backlog_load = load(broker, publishers, rate_msg_s=None, messages=messages)
    report: LoadReport = await asyncio.to_thread(backlog_load.run)
    backlog = report.acknowledged
    cpu_before = cpu_use(broker, influx)
    gateway = Gateway(config)
    # As `community-gateway run` does.
    set_aside_startup_objects()
    task = asyncio.create_task(gateway.run())
    elapsed = await wait_until_drained(gateway, backlog)
    cpu_after = cpu_use(broker, influx, gateway)
    results = {"backlog_messages": backlog, "backlog_msg_s": backlog / elapsed}
    # Where the machine's two cores went while the backlog drained, per message.
    for name, seconds in cpu_after.items():
        results[f"backlog_cpu_us_per_msg_{name}"] = (seconds - cpu_before[name]) / backlog * 1e6
    results["backlog_lines_per_msg"] = gateway.stats.lines_stored / backlog

    # Live: traffic offered at a set rate while the gateway takes what it can; stored is
    # what it took over the whole time until the last line was written.
    live_load = load(
        broker, publishers, rate_msg_s=live_rate_msg_s, seconds=live_s, niceness=DEVICES_NICENESS
    )
    await asyncio.to_thread(live_load.start)
    before = gateway.stats.messages_in
    cpu_before = cpu_use(broker, influx, gateway)
    began = time.perf_counter()
    live_report = await asyncio.to_thread(live_load.wait)
    offered_s = time.perf_counter() - began
    # Where the lag is when the devices stop: messages still at the broker, or lines
    # still in the outbox.
    results["live_end_at_broker_msgs"] = float(
        before + live_report.acknowledged - gateway.stats.messages_in
    )
    results["live_end_in_outbox_lines"] = float(gateway.stats.outbox_depth)
    elapsed = await wait_until_drained(gateway, before + live_report.acknowledged)
    cpu_after = cpu_use(broker, influx, gateway)
    # The broker now takes in each message as well as passing it on.
    for name, seconds in cpu_after.items():
        results[f"live_cpu_us_per_msg_{name}"] = (
            (seconds - cpu_before[name]) / live_report.acknowledged * 1e6
        )
    # What the devices' side costs here, where it shares the gateway's cores.
    results["live_cpu_us_per_msg_load"] = live_report.cpu_s / live_report.acknowledged * 1e6
    results["live_offered_msg_s"] = live_report.rate_msg_s
    results["live_stored_msg_s"] = live_report.acknowledged / (offered_s + elapsed)
    results["live_lag_s"] = elapsed
    results["lost"] = float(backlog + live_report.acknowledged - gateway.stats.messages_in)
    results["rejected"] = float(gateway.stats.rejected)
    if gateway.stats.rejected:
        print("rejected:", dict(gateway.stats.rejected_by_reason))
    gateway.stop()
    await task
    return results


class NoBroker:
    async def next_batch(self, max_messages: int, linger_s: float) -> list[InboundMessage]:
        return []

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        pass


def offline_config(workdir: Path) -> GatewayConfig:
    """The gateway on the bench fleet's registry, with no broker and no database."""
    return GatewayConfig.model_validate(
        {
            "mqtt": None,
            "outbox": {"path": workdir / "alone.sqlite3"},
            "registry_file": write_registry(workdir),
            "health_interval_s": None,
        }
    )


def fleet_messages(count: int) -> list[InboundMessage]:
    """The bench fleet's first `count` messages, as the broker would hand them over."""
    fleet = Fleet.build(seed=FLEET_SEED, devices=DEVICES)
    start_ms = time.time_ns() // 1_000_000
    stream = itertools.islice(fleet.stream(rate_msg_s=5000, start_ms=start_ms), count)
    return [
        InboundMessage(m.topic, m.payload, start_ms, index % 65_535 + 1, 1)
        for index, m in enumerate(stream)
    ]


async def stages_alone(workdir: Path, messages: int) -> dict[str, float]:
    """CPU time a message costs in decode, rules and commit, then in the drain's reading
    and removing, with nothing else running."""
    config = offline_config(workdir)
    gateway = Gateway(config)
    inbound = fleet_messages(messages)
    batch = config.ingest.commit_max_messages
    began = cpu_seconds()
    for first in range(0, len(inbound), batch):
        await gateway.pipeline.handle(NoBroker(), inbound[first : first + batch])
    handled = cpu_seconds()
    outbox = gateway.outbox
    position = LinePosition()
    while (pending := outbox.peek(5000, position)).lines:
        "\n".join(pending.lines).encode()
        outbox.remove_through(pending.through)
        position = pending.next
    drained = cpu_seconds()
    gateway.close()
    return {
        "alone_stages_cpu_us_per_msg": (handled - began) / len(inbound) * 1e6,
        "alone_drain_cpu_us_per_msg": (drained - handled) / len(inbound) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--publishers", type=int, default=2, help="load processes")
    parser.add_argument(
        "--live-rate", type=float, default=24_000.0, help="msg/s offered live: more than it takes"
    )
    parser.add_argument("--live-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        broker = MosquittoService(workdir / "mosquitto")
        influx = InfluxService(workdir / "influxdb")
        broker.start()
        influx.start()
        try:
            influx.create_database("bench")
            rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            results = asyncio.run(
                gateway_phases(
                    workdir,
                    broker,
                    influx,
                    args.messages,
                    args.publishers,
                    args.live_rate,
                    args.live_seconds,
                )
            )
            rss_after_gateway_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            backlog = load(broker, args.publishers, rate_msg_s=None, messages=args.messages)
            receive_msg_s, receive_cpu_us = asyncio.run(
                subscriber_rate(broker, PROTOCOL, lambda: backlog.run().acknowledged)
            )
            results["receive_only_msg_s"] = receive_msg_s
            results["receive_only_cpu_us_per_msg"] = receive_cpu_us
        finally:
            influx.stop()
            broker.stop()
    results["peak_rss_mib"] = rss_after_gateway_kib / 1024
    results["rss_before_gateway_mib"] = rss_before_kib / 1024
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results.update(asyncio.run(stages_alone(Path(tmp), min(args.messages, 100_000))))
    for name, value in results.items():
        print(f"{name:28} {value:12,.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
