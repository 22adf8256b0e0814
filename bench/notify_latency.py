"""Time from a device's MQTT publish to a webhook receiving its notification, p50 and
p99, under background load: an SOS from a bracelet every `--every-s` seconds through a
local Mosquitto and the gateway (writing into a local InfluxDB) to a local webhook, while
simulator traffic is offered at each `--rates` msg/s (bench/load.py). The bracelet and
the webhook run in a process of their own, as a device and a phone would. The background
load stands for devices elsewhere on the network: it runs at the lowest priority (niceness
+19), so that it takes the cores only when the gateway's machine would not.

    .venv/bin/python -m bench.notify_latency [--rates 0,2000,5000,10000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import statistics
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.load import DEVICES_NICENESS
from bench.pipeline import DEVICES, FLEET_SEED, gateway_config, load, wait_connected
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.heap import set_aside_startup_objects
from simulators.device import DeviceType
from simulators.fleet import Fleet
from tests.integration.services import InfluxService, MosquittoService


class Probe:
    """The device and the phone, in a process of their own so that they share neither
    the gateway's interpreter nor its lock: a bracelet that presses SOS every `every_s`
    seconds, and the webhook the notifications reach. Both read CLOCK_MONOTONIC, which
    the processes share."""

    def __init__(self, broker: MosquittoService) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_probe_main, args=(child, broker.host, broker.port), daemon=True
        )
        self._process.start()
        self.url: str = self._conn.recv()

    async def press(
        self, targets: list[tuple[str, str, float, float]], seconds: float, every_s: float
    ) -> dict[str, float]:
        """SOS from each target in turn for `seconds`; when each was published, by key."""
        self._conn.send(("press", targets, seconds, every_s))
        sent: dict[str, float] = await asyncio.to_thread(self._conn.recv)
        return sent

    async def arrivals(self, keys: list[str], timeout_s: float) -> dict[str, float]:
        """When the notification of each key reached the webhook, waiting for all."""
        self._conn.send(("collect", keys, timeout_s))
        arrived: dict[str, float] = await asyncio.to_thread(self._conn.recv)
        return arrived

    def close(self) -> None:
        self._conn.send(("stop",))
        self._process.join(timeout=10)


def _probe_main(conn: Connection, host: str, port: int) -> None:
    arrived: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        # Keeps the connection open between requests, as the providers' servers do: a
        # new connection for each notification would be measured as well otherwise.
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            # An event alert's id ends with its device and the event's time.
            key = ":".join(body["alert_id"].split(":")[-2:])
            arrived.setdefault(key, time.monotonic())
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"probe-{uuid.uuid4().hex[:8]}")  # fmt: skip
    client.connect(host, port)
    client.loop_start()
    conn.send(f"http://127.0.0.1:{server.server_port}/notify")
    while True:
        command = conn.recv()
        if command[0] == "press":
            _, targets, seconds, every_s = command
            sent: dict[str, float] = {}
            began = time.monotonic()
            index = 0
            while time.monotonic() - began < seconds:
                community, device_id, lat, lon = targets[index % len(targets)]
                index += 1
                ts_ms = time.time_ns() // 1_000_000
                payload = {"ts": ts_ms, "event": "sos", "lat": lat, "lon": lon}
                sent[f"{device_id}:{ts_ms}"] = time.monotonic()
                client.publish(
                    f"community/{community}/bracelet/{device_id}/event",
                    json.dumps(payload),
                    qos=1,
                )
                time.sleep(every_s)
            conn.send(sent)
        elif command[0] == "collect":
            _, keys, timeout_s = command
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not all(k in arrived for k in keys):
                time.sleep(0.05)
            conn.send({k: arrived[k] for k in keys if k in arrived})
        else:
            break
    client.disconnect()
    client.loop_stop()
    server.shutdown()


def with_notify(config: GatewayConfig, url: str) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            **config.model_dump(exclude_none=True),
            "notify": {
                "channels": {"hook": {"type": "webhook", "url": url}},
                "receivers": [{"name": "duty", "channels": ["hook"]}],
                "routes": [{"match": {"rules": ["sos"]}, "escalation": "sos"}],
                "escalations": {"sos": [{"after_s": 0, "to": ["duty"]}]},
            },
        }
    )


async def measure(
    gateway: Gateway,
    broker: MosquittoService,
    probe: Probe,
    targets: list[tuple[str, str, float, float]],
    rate: float,
    seconds: float,
    every_s: float,
) -> dict[str, float]:
    background = None
    if rate > 0:
        traffic = load(broker, 2, rate_msg_s=rate, seconds=seconds + 2, niceness=DEVICES_NICENESS)
        await asyncio.to_thread(traffic.start)
        background = asyncio.create_task(asyncio.to_thread(traffic.wait))
        await asyncio.sleep(1.0)
    in_before = gateway.stats.messages_in
    sent = await probe.press(targets, seconds, every_s)
    offered_in = gateway.stats.messages_in - in_before
    offered = (await background).rate_msg_s if background is not None else 0.0
    arrived = await probe.arrivals(list(sent), timeout_s=120)
    latencies_ms = sorted((arrived[k] - t) * 1000 for k, t in sent.items() if k in arrived)
    quantiles = (
        statistics.quantiles(latencies_ms, n=100, method="inclusive")
        if len(latencies_ms) > 1
        else [0.0] * 99
    )
    return {
        "background_offered_msg_s": offered,
        "gateway_in_msg_s": offered_in / seconds,
        "probes": float(len(sent)),
        "delivered": float(len(latencies_ms)),
        "p50_ms": statistics.median(latencies_ms) if latencies_ms else float("nan"),
        "p99_ms": quantiles[98],
        "max_ms": latencies_ms[-1] if latencies_ms else float("nan"),
    }


async def run(workdir: Path, rates: list[float], seconds: float, every_s: float) -> None:
    broker = MosquittoService(workdir / "mosquitto")
    influx = InfluxService(workdir / "influxdb")
    broker.start()
    influx.start()
    probe = Probe(broker)
    try:
        influx.create_database("bench")
        config = with_notify(gateway_config(workdir, broker, influx), probe.url)
        gateway = Gateway(config)
        # As `community-gateway run` does.
        set_aside_startup_objects()
        task = asyncio.create_task(gateway.run())
        await wait_connected(gateway)
        print(f"{'background':>12} {'offered':>10} {'taken in':>10} {'probes':>7} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")  # fmt: skip
        # Each probe on a wearer not pressed before in the run: an SOS again within the
        # rule's merge_s joins the first one's alert, already being told, and is not
        # told again.
        targets = [
            (d.community, d.device_id, d.lat, d.lon)
            for d in Fleet.build(seed=FLEET_SEED, devices=DEVICES).devices
            if d.device_type is DeviceType.BRACELET
        ]
        per_rate = int(seconds / every_s) + 1
        if per_rate * len(rates) > len(targets):
            raise SystemExit(
                f"{per_rate * len(rates)} probes for {len(targets)} wearers: fewer rates, "
                "fewer --seconds or a larger --every-s"
            )
        for index, rate in enumerate(rates):
            ours = targets[index * per_rate : (index + 1) * per_rate]
            r = await measure(gateway, broker, probe, ours, rate, seconds, every_s)
            print(f"{rate:12,.0f} {r['background_offered_msg_s']:10,.0f} "
                  f"{r['gateway_in_msg_s']:10,.0f} {r['delivered']:3.0f}/{r['probes']:<3.0f} "
                  f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['max_ms']:8.1f}", flush=True)  # fmt: skip
            # Let the backlog of one rate drain before the next.
            while gateway.stats.outbox_depth > 0:
                await asyncio.sleep(0.5)
        gateway.stop()
        await task
    finally:
        probe.close()
        influx.stop()
        broker.stop()


def main() -> None:
    # The alerts the probes raise would otherwise be logged one by one.
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0,2000,5000,10000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every-s", type=float, default=0.25)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp:
        asyncio.run(run(Path(tmp), rates, args.seconds, args.every_s))


if __name__ == "__main__":
    main()
