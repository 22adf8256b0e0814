from pathlib import Path

import httpx

from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import InfluxConfig, MqttConfig
from tests.integration.services import free_port
from tests.unit.api.conftest import T0, Site, site_config


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
    gateway.api.close()
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    checks = {c["name"]: c for c in body["checks"]}
    assert not checks["broker"]["ok"] and f"127.0.0.1:{closed}" in checks["broker"]["detail"]
    assert not checks["influxdb"]["ok"] and "unreachable" in checks["influxdb"]["detail"]
    assert not checks["disk"]["ok"] and "bytes free" in checks["disk"]["detail"]
