import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import mqtt5

from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import InfluxConfig, IngestConfig, MqttConfig
from gateway.ingest.message import InboundMessage
from gateway.ingest.mqtt import MqttSubscriber
from gateway.pipeline import COMMIT_RETRY_MAX_S
from gateway.store.backoff import Backoff
from gateway.store.drain import OutboxDrain
from gateway.store.influx import InfluxWriter
from tests.integration.services import free_port
from tests.unit.api.conftest import T0, FakeSource, Site, site_config
from tests.unit.disk import fill_the_disk, make_room
from tests.unit.test_mqtt import connect


async def test_liveness_and_readiness_need_no_token(site: Site) -> None:
    assert (await site.get("/health/live", None)).json() == {"status": "ok", "checks": []}
    ready = await site.get("/health/ready", None)
    assert ready.status_code == 200
    assert [(c["name"], c["ok"]) for c in ready.json()["checks"]] == [
        ("broker", True), ("influxdb", True), ("disk", True),
    ]  # fmt: skip


async def test_readiness_names_what_is_down(tmp_path: Path) -> None:
    closed = free_port()
    config = site_config(tmp_path, min_free_disk_bytes=1 << 60).model_copy(
        update={
            "mqtt": MqttConfig(port=closed),
            "influx": InfluxConfig(url=f"http://127.0.0.1:{closed}"),
        }
    )
    gateway = Gateway(config, ManualClock(T0))
    assert gateway.api is not None
    transport = httpx.ASGITransport(app=gateway.api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        ready = await client.get("/health/ready")
    gateway.close()
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    checks = {c["name"]: c for c in body["checks"]}
    assert not checks["broker"]["ok"] and f"127.0.0.1:{closed}" in checks["broker"]["detail"]
    assert not checks["influxdb"]["ok"] and "unreachable" in checks["influxdb"]["detail"]
    assert not checks["disk"]["ok"] and "bytes free" in checks["disk"]["detail"]


async def test_readiness_says_when_the_broker_refused_a_subscription(tmp_path: Path) -> None:
    # Connected, but refused the alarm filter (an ACL without the gateway's role): no
    # alarm would arrive, so the gateway is not ready.
    config = site_config(tmp_path).model_copy(
        update={
            "mqtt": MqttConfig(port=free_port()),
            "ingest": IngestConfig(telemetry_process=False),
        }
    )
    gateway = Gateway(config, ManualClock(T0))
    assert gateway.api is not None and isinstance(gateway.alarm_subscriber, MqttSubscriber)
    assert isinstance(gateway.subscriber, MqttSubscriber)
    connect(gateway.subscriber)[0].data_received(
        mqtt5.SubAckPacket(1, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE] * 3).write()
    )
    link, _ = connect(gateway.alarm_subscriber)
    link.data_received(mqtt5.SubAckPacket(1, [mqtt5.SubAckReasonCode.NOT_AUTHORIZED]).write())
    transport = httpx.ASGITransport(app=gateway.api.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        ready = await client.get("/health/ready")
    gateway.close()
    assert ready.status_code == 503
    (broker,) = [c for c in ready.json()["checks"] if c["name"] == "broker"]
    assert broker == {
        "name": "broker",
        "ok": False,
        "detail": f"127.0.0.1:{config.mqtt.port} refused the subscriptions to "  # type: ignore[union-attr]
        "community/+/+/+/event",
    }


async def test_readiness_says_while_the_outbox_cannot_commit(site: Site) -> None:
    gateway = site.gateway
    fill_the_disk(gateway.outbox)
    readings = [
        InboundMessage(
            f"community/hgy/bracelet/br-{i}/telemetry",
            json.dumps({"ts": T0 + i, "seq": i, "heart_rate_bpm": 70}).encode(),
            T0,
            i + 1,
            1,
        )
        for i in range(300)
    ]
    source = FakeSource()
    handling = asyncio.create_task(gateway.pipeline.handle(source, readings))
    for _ in range(500):
        if gateway.stats.commit_errors:
            break
        await asyncio.sleep(0.01)

    assert source.acked == 0
    ready = await site.get("/health/ready", None)
    assert ready.status_code == 503
    disk = {c["name"]: c for c in ready.json()["checks"]}["disk"]
    assert not disk["ok"]
    assert "outbox commits failing" in disk["detail"]
    assert "main: outbox commit failed: database or disk is full" in disk["detail"]
    metrics = (await site.client.get("/metrics")).text
    assert "gateway_outbox_commit_failures_total 1" in metrics
    assert "COMMITS FAILING (main)" in gateway.stats.summary()

    make_room(gateway.outbox)
    site.clock.advance(COMMIT_RETRY_MAX_S)
    await asyncio.wait_for(handling, timeout=5)
    assert source.acked == 300
    assert (await site.get("/health/ready", None)).status_code == 200
    assert gateway.stats.commit_errors == {}


async def test_readiness_says_while_the_disk_set_aside_is_given_back(site: Site) -> None:
    reserve = site.gateway.outbox.reserve
    assert reserve.size_bytes > 0 and reserve.restore()
    assert (await site.get("/health/ready", None)).status_code == 200
    # As a commit does that finds the disk full.
    assert reserve.release()
    ready = await site.get("/health/ready", None)
    assert ready.status_code == 503
    disk = {c["name"]: c for c in ready.json()["checks"]}["disk"]
    assert "the disk filled up" in disk["detail"] and str(reserve.path) in disk["detail"]
    assert reserve.restore()
    assert (await site.get("/health/ready", None)).status_code == 200


async def test_readiness_says_while_the_outbox_drops_lines_at_its_bound(site: Site) -> None:
    # A database that answers but falls behind: each time the outbox passes its bound
    # the oldest lines go, which brings it back under; it is still full.
    outbox = site.gateway.outbox
    body = "x" * 1000
    for t in range(0, 200, 10):
        outbox.commit([f'm v="{body}" {t + i}' for i in range(10)], [])
    outbox.max_bytes = outbox.size_bytes() + 50_000
    assert (await site.get("/health/ready", None)).status_code == 200
    evicted, t = 0, 200
    while not evicted:
        evicted = outbox.commit([f'm v="{body}" {t + i}' for i in range(10)], []).evicted_lines
        t += 10
    assert outbox.size_bytes() < outbox.max_bytes
    ready = await site.get("/health/ready", None)
    assert ready.status_code == 503
    disk = {c["name"]: c for c in ready.json()["checks"]}["disk"]
    assert "outbox full" in disk["detail"] and str(outbox.max_bytes) in disk["detail"]


class _Influx2WithoutOrg(BaseHTTPRequestHandler):
    """Answers a ping, and refuses every write for want of the org, as InfluxDB 2.x."""

    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"code":"invalid","message":"Please provide either orgID or org"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


async def test_readiness_says_while_a_database_that_answers_refuses_the_writes(
    tmp_path: Path,
) -> None:
    # A ping answered says nothing of the writes: the lines wait in the outbox, and the
    # health page says why, until the config is mended.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Influx2WithoutOrg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    influx = InfluxConfig(
        url=f"http://127.0.0.1:{server.server_address[1]}", api="v2", bucket="community"
    )
    clock = ManualClock(T0)
    gateway = Gateway(site_config(tmp_path).model_copy(update={"influx": influx}), clock)
    try:
        assert gateway.api is not None
        gateway.outbox.commit(["m v=1i 1"], [])
        async with InfluxWriter(influx) as writer:
            drain = OutboxDrain(gateway.outbox, writer, Backoff(0.5, 1), clock, gateway.stats)
            attempt = asyncio.create_task(drain.drain_once())
            while not attempt.done():
                await asyncio.sleep(0.01)
                clock.advance(1)
            assert attempt.result() is None
        transport = httpx.ASGITransport(app=gateway.api.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            ready = await client.get("/health/ready")
        assert ready.status_code == 503
        influxdb = {c["name"]: c for c in ready.json()["checks"]}["influxdb"]
        assert influxdb["detail"] == (
            f"{influx.url} answers, but writes fail: InfluxDB at {influx.url} refused the write "
            "itself, not a line of it (400: Please provide either orgID or org); the lines "
            "wait in the outbox"
        )
        assert gateway.outbox.depth() == 1 and gateway.outbox.quarantine(limit=10) == []
    finally:
        gateway.close()
        server.shutdown()
        server.server_close()
