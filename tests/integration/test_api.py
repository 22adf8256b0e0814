"""The API against the real broker and InfluxDB: readings history and readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import ApiConfig, ApiToken, InfluxConfig
from tests.integration.harness import Publisher, gateway_config, running, wait_until
from tests.integration.services import InfluxService, MosquittoService
from tests.unit.api.conftest import ADMIN, site_config

T0 = 1_767_225_600_000
TOKEN = "integration-admin-token-01"


async def test_readings_history_comes_from_influxdb_and_readiness_is_green(
    tmp_path: Path, mosquitto: MosquittoService, influxdb: InfluxService, influx_db: str,
    namespace: str,
) -> None:  # fmt: skip
    config = gateway_config(
        tmp_path, mosquitto, namespace, influx={"url": influxdb.url, "database": influx_db}
    )
    api = ApiConfig(port=0, tokens=(ApiToken(name="root", role="admin", token=TOKEN),))  # type: ignore[arg-type]
    config = config.model_copy(update={"api": api})
    topic = f"community/{namespace}/charging_shed/cs-1/telemetry"
    publisher = Publisher(mosquitto)
    try:
        async with running(config) as gateway:
            assert gateway.api is not None
            await asyncio.wait_for(gateway.api.started.wait(), timeout=10)
            publisher.publish_all([
                (topic, {"ts": T0 + n * 15_000, "seq": n, "ambient_temp_c": 20.0 + n,
                         "smoke": False, "ports": [{"port": 2, "charging": True,
                         "current_a": 1.5, "voltage_v": 220.0, "power_w": 330.0,
                         "temperature_c": 31.5}]})
                for n in range(4)
            ])  # fmt: skip
            await wait_until(lambda: gateway.stats.lines_written >= 8, what="lines written")
            base = f"http://127.0.0.1:{gateway.api.port}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=base, headers=headers) as client:
                path = f"/api/v1/devices/{namespace}/cs-1/readings"
                body = (await client.get(path, params={"limit": 3})).json()
                assert body["source"] == "influxdb"
                assert [(r["measurement"], r["time_ms"], r["port"]) for r in body["readings"]] == [
                    ("charging_port", T0 + 45_000, 2), ("charging_shed", T0 + 45_000, None),
                    ("charging_port", T0 + 30_000, 2),
                ]  # fmt: skip
                assert body["readings"][1]["fields"] == {"ambient_temp_c": 23.0, "smoke": False}
                assert body["readings"][0]["fields"]["current_a"] == 1.5
                window = await client.get(
                    path, params={"since_ms": T0 + 15_000, "until_ms": T0 + 15_000}
                )
                assert [r["time_ms"] for r in window.json()["readings"]] == [T0 + 15_000] * 2
                device = (await client.get(f"/api/v1/devices/{namespace}/cs-1")).json()
                assert device["latest"]["ports"]["2"]["temperature_c"] == 31.5
                ready = await client.get("/health/ready")
                assert ready.status_code == 200, ready.text
                assert all(c["ok"] for c in ready.json()["checks"])
    finally:
        publisher.close()


async def test_readiness_says_the_database_is_down(
    tmp_path: Path, mosquitto: MosquittoService, fresh_influxdb: InfluxService, namespace: str
) -> None:
    fresh_influxdb.create_database("community")
    config = gateway_config(tmp_path, mosquitto, namespace, influx={"url": fresh_influxdb.url})
    config = config.model_copy(update={"api": ApiConfig(port=0)})
    async with running(config) as gateway:
        assert gateway.api is not None
        await asyncio.wait_for(gateway.api.started.wait(), timeout=10)
        url = f"http://127.0.0.1:{gateway.api.port}/health/ready"
        async with httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 200
            fresh_influxdb.stop()
            down = await client.get(url)
        assert down.status_code == 503
        checks = {c["name"]: c["ok"] for c in down.json()["checks"]}
        assert checks == {"broker": True, "influxdb": False, "disk": True}


async def test_readings_need_the_read_grant_that_the_install_gives_and_say_so(
    tmp_path: Path,
) -> None:
    influxdb = InfluxService(tmp_path / "influxdb", auth=True)
    influxdb.start()
    try:

        def influxql(q: str, user: str = "admin", password: str = "admin-password") -> None:
            answer = httpx.post(
                f"{influxdb.url}/query", params={"q": q, "u": user, "p": password}, timeout=10
            )
            assert answer.status_code == 200 and "error" not in answer.text, answer.text

        # The first user needs no login; then as deploy/INSTALL.md does it, but with the
        # write grant alone.
        influxql("CREATE USER admin WITH PASSWORD 'admin-password' WITH ALL PRIVILEGES")
        influxql("CREATE DATABASE community")
        influxql("CREATE USER gateway WITH PASSWORD 'gateway-password'")
        influxql("GRANT WRITE ON community TO gateway")
        httpx.post(
            f"{influxdb.url}/write",
            params={"db": "community", "u": "gateway", "p": "gateway-password", "precision": "ms"},
            content=f"bracelet,community=hgy,device_id=br-1 heart_rate_bpm=70i {T0}",
            timeout=10,
        ).raise_for_status()
        config = site_config(tmp_path).model_copy(
            update={
                "influx": InfluxConfig(
                    url=influxdb.url,
                    username="gateway",
                    password="gateway-password",  # type: ignore[arg-type]
                )
            }
        )
        gateway = Gateway(config, ManualClock(T0))
        assert gateway.api is not None
        transport = httpx.ASGITransport(app=gateway.api.app)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gw.test", headers=headers
            ) as client:
                path = "/api/v1/devices/hgy/br-1/readings"
                refused = await client.get(path)
                assert refused.status_code == 502
                assert "READ on community for the gateway's user" in refused.text, refused.text
                # The grant deploy/INSTALL.md gives.
                influxql("GRANT ALL ON community TO gateway")
                found = await client.get(path)
                assert found.status_code == 200, found.text
                assert found.json()["source"] == "influxdb"
                assert [r["fields"] for r in found.json()["readings"]] == [{"heart_rate_bpm": 70}]
        finally:
            gateway.close()
    finally:
        influxdb.stop()
