"""End-to-end throughput of the gateway: simulator traffic through a local Mosquitto into
a local InfluxDB, with nothing lost, in one run:

1. the raw receive rate of paho-mqtt (the gateway's client) with a no-op handler,
   draining a QoS 1 backlog;
2. the gateway draining a QoS 1 backlog queued in its persistent session while it was
   down: the broker offers as fast as the gateway takes;
3. the gateway under live load from several publisher processes;
4. the gateway's peak memory.

    .venv/bin/python -m bench.pipeline [--messages 200000] [--publishers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import GatewayConfig
from simulators.publisher import SimulationOptions, SimulationReport, run_simulation
from tests.integration.services import InfluxService, MosquittoService

DEVICES = 2000


def preload(
    broker: MosquittoService, messages: int, publishers: int, seed: int
) -> SimulationReport:
    return run_simulation(
        SimulationOptions(
            port=broker.port,
            devices=DEVICES,
            seed=seed,
            seconds=None,
            max_messages=messages,
            rate_msg_s=None,
            processes=publishers,
            client_id_prefix=f"bench-{seed}",
        )
    )


def raw_receive_rate(broker: MosquittoService, messages: int, publishers: int) -> float:
    """Messages/s paho delivers to a no-op handler, acknowledging each QoS 1 message."""
    received = 0
    last = threading.Event()
    started: list[float] = []

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received
        if not started:
            started.append(time.perf_counter())
        received += 1
        if received >= messages:
            last.set()

    def client() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", clean_session=False)
        c.on_message = on_message
        c.connect(broker.host, broker.port)
        return c

    c = client()
    c.subscribe("community/#", qos=1)
    c.loop_start()
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    report = preload(broker, messages, publishers, seed=1)
    expected = report.total_acknowledged
    c = client()
    c.loop_start()
    messages = expected
    last.wait(timeout=600)
    elapsed = time.perf_counter() - started[0]
    c.disconnect()
    c.loop_stop()
    return received / elapsed


def gateway_config(workdir: Path, broker: MosquittoService, influx: InfluxService) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "mqtt": {"host": broker.host, "port": broker.port, "client_id": "bench-gateway"},
            "influx": {"url": influx.url, "database": "bench"},
            "outbox": {"path": workdir / "outbox.sqlite3"},
        }
    )


async def wait_until_drained(gateway: Gateway, expected_in: int, timeout_s: float = 900) -> float:
    """Seconds until `expected_in` messages were taken in and every line written."""
    began = time.perf_counter()
    stats = gateway.stats
    while True:
        if (
            stats.messages_in >= expected_in
            and stats.lines_written + stats.lines_refused == stats.lines_stored
            and stats.outbox_depth == 0
        ):
            return time.perf_counter() - began
        if time.perf_counter() - began > timeout_s:
            raise TimeoutError(f"only {stats.summary()} after {timeout_s} s")
        await asyncio.sleep(0.02)


async def gateway_phases(
    workdir: Path,
    broker: MosquittoService,
    influx: InfluxService,
    messages: int,
    publishers: int,
    live_s: float,
) -> dict[str, float]:
    config = gateway_config(workdir, broker, influx)
    # A first start creates the persistent session the backlog is queued for.
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    await asyncio.sleep(1.0)
    gateway.stop()
    await task

    report = await asyncio.to_thread(preload, broker, messages, publishers, 2)
    backlog = report.total_acknowledged
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    elapsed = await wait_until_drained(gateway, backlog)
    results = {"backlog_messages": backlog, "backlog_msg_s": backlog / elapsed}
    results["backlog_lines_per_msg"] = gateway.stats.lines_stored / backlog

    # Live: publishers offer as fast as they can while the gateway takes what it can.
    before = gateway.stats.messages_in
    began = time.perf_counter()
    live = asyncio.create_task(
        asyncio.to_thread(
            run_simulation,
            SimulationOptions(
                port=broker.port,
                devices=DEVICES,
                seed=3,
                seconds=live_s,
                rate_msg_s=None,
                processes=publishers,
                client_id_prefix="bench-live",
            ),
        )
    )
    live_report = await live
    offered_s = time.perf_counter() - began
    elapsed = await wait_until_drained(gateway, before + live_report.total_acknowledged)
    results["live_offered_msg_s"] = live_report.total_acknowledged / offered_s
    results["live_stored_msg_s"] = live_report.total_acknowledged / (offered_s + elapsed)
    results["lost"] = float(backlog + live_report.total_acknowledged - gateway.stats.messages_in)
    results["rejected"] = float(gateway.stats.rejected)
    gateway.stop()
    await task
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--live-seconds", type=float, default=20.0)
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
            raw = raw_receive_rate(broker, args.messages // 2, args.publishers)
            rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            results = asyncio.run(
                gateway_phases(
                    workdir, broker, influx, args.messages, args.publishers, args.live_seconds
                )
            )
        finally:
            influx.stop()
            broker.stop()
    results["paho_raw_receive_msg_s"] = raw
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["rss_before_gateway_mib"] = rss_before_kib / 1024
    for name, value in results.items():
        print(f"{name:28} {value:12,.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
