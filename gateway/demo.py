"""`community-gateway demo`: the whole system on embedded defaults.

An in-process MQTT broker on a free port, the device simulators in a child process,
and the gateway, with the local outbox standing in for InfluxDB. Nothing to install
or configure; everything lives in a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path

from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig

from gateway.app import Gateway
from gateway.config import (
    ApiConfig,
    ApiToken,
    GatewayConfig,
    IngestConfig,
    MqttConfig,
    OutboxConfig,
)
from gateway.heap import set_aside_startup_objects
from gateway.logs import configure_logging
from gateway.notify.policy import NotifyPolicy
from simulators.fleet import Fleet
from simulators.scenario import Scenario, resolve

# Things to see go wrong during the demo, at these seconds after the start.
SCENARIOS = ("malformed@4", "fire@6", "fall@9", "thermal_runaway@12", "lid_opened@15", "sos@18")


# The grid worker on duty and the community office, on the console: every notification
# shows as a line with its link, and an alert nobody takes escalates after 30 s. The
# office stands in when nobody is on duty, and hears of the gateway's own faults.
DEMO_POLICY = NotifyPolicy.model_validate(
    {
        "channels": {"console": {"type": "console"}},
        "receivers": [
            {"name": "grid-worker", "display_name": "网格员", "channels": ["console"]},
            {"name": "community-office", "display_name": "社区办公室", "channels": ["console"]},
        ],
        "fallback_receivers": ["community-office"],
        "routes": [
            {"match": {"severities": ["critical", "major"]}, "escalation": "urgent"},
            {"escalation": "routine"},
        ],
        "escalations": {
            "urgent": [
                {"after_s": 0, "to": ["grid-worker"]},
                {"after_s": 30, "to": ["community-office"]},
            ],
            "routine": [{"after_s": 0, "to": ["grid-worker"]}],
        },
    }
)


def runnable_scenarios(fleet: Fleet) -> tuple[list[str], list[str]]:
    """The demo's scenarios that the fleet can play, and why each other one cannot: a
    small fleet (`--devices 5`) has no charging shed to heat, say."""
    chosen: list[Scenario] = []
    skipped: list[str] = []
    for text in SCENARIOS:
        scenario = Scenario.parse(text)
        try:
            resolve([*chosen, scenario], fleet.devices, fleet.seed)
        except ValueError as exc:
            skipped.append(str(exc))
        else:
            chosen.append(scenario)
    return [str(s) for s in chosen], skipped


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_demo(seconds: float | None, devices: int, period_scale: float, seed: int) -> int:
    configure_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="community-gateway-demo-"))
    port = _free_port()
    broker = Broker(
        BrokerConfig(
            listeners={"default": ListenerConfig(bind=f"127.0.0.1:{port}")},
            plugins={"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        )
    )
    await broker.start()
    fleet = Fleet.build(seed=seed, devices=devices, communities=3)
    registry = workdir / "devices.csv"
    registry.write_text(fleet.registry_csv(), encoding="utf-8")
    api_port = _free_port()
    base_url = f"http://127.0.0.1:{api_port}"
    operator_token = secrets.token_urlsafe(18)
    config = GatewayConfig(
        mqtt=MqttConfig(port=port, protocol="3.1.1", client_id="demo-gateway"),
        # The files stay for a look afterwards; no disk is set aside among them.
        outbox=OutboxConfig(path=workdir / "outbox.sqlite3", synchronous="normal", reserve_bytes=0),
        registry_file=registry,
        ingest=IngestConfig(require_registered=True),
        notify=DEMO_POLICY,
        api=ApiConfig(
            port=api_port,
            public_url=base_url,
            tokens=(ApiToken(name="demo-operator", role="operator", token=operator_token),),
        ),
    )
    gateway = Gateway(config)
    set_aside_startup_objects()

    running = asyncio.create_task(gateway.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"demo: broker on 127.0.0.1:{port}, {len(fleet.devices)} devices, files in {workdir}")
    print("demo: no InfluxDB configured: points wait in the local outbox. Ctrl-C stops.")
    print(f"demo: alert board: {base_url}/board#token={operator_token}")
    print(f"demo: API (operator token {operator_token}): {base_url}/docs")
    scenarios, skipped = runnable_scenarios(fleet)
    for reason in skipped:
        print(f"demo: left out {reason}")
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators",
        "--host", "127.0.0.1", "--port", str(port),
        "--devices", str(devices), "--seed", str(seed),
        "--period-scale", str(period_scale),
        "--seconds", str(seconds if seconds is not None else 365 * 86400),
        *(arg for scenario in scenarios for arg in ("--scenario", scenario)),
        stdout=asyncio.subprocess.DEVNULL,
        # Its own session: Ctrl-C in the terminal reaches the demo, which stops it in order.
        start_new_session=True,
    )  # fmt: skip
    started_s = loop.time()
    exit_code = 0
    try:
        while not stop.is_set() and not running.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            elapsed_s = loop.time() - started_s
            print(f"[{elapsed_s:5.0f} s] {gateway.stats.summary()}", flush=True)
            if simulator.returncode not in (None, 0):
                # Its error is above; a demo without devices would count nothing for ever.
                print(f"demo: the device simulators stopped (exit {simulator.returncode})")
                exit_code = 1
                break
            if seconds is not None and elapsed_s >= seconds:
                break
    finally:
        if simulator.returncode is None:
            simulator.terminate()
        await simulator.wait()
        gateway.stop()
        await running
        await broker.shutdown()
    print(f"demo: done. {gateway.stats.summary()}")
    print(f"demo: outbox and quarantine in {config.outbox.path}")
    return exit_code
