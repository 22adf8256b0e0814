"""A gateway with the API on a temporary outbox, no broker, and a client for it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import gateway.rules.book as book_module
from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.ingest.message import InboundMessage
from gateway.rules.book import AlertEntry

T0 = 1_767_225_600_000
ADMIN = "admin-token-0123456789"
OPERATOR = "operator-token-0123456789"
WORKER = "worker-token-0123456789"
OTHER_WORKER = "other-worker-token-0123456789"
# The desk of community hgy alone, on an installation serving several.
DESK_HGY = "desk-hgy-token-0123456789"

REGISTRY = """\
device_id,device_type,community,area,compound,building,unit,lat,lon,wearer_name,wearer_phone,emergency_contacts,home_lat,home_lon
br-1,bracelet,hgy,east,lakeside,3,2-301,,,张三明,13812345678,李四:13987654321,34.75,113.62
br-2,bracelet,hgy,west,hillside,9,1-101,,,王五,13700001111,,34.76,113.63
sd-1,smoke_detector,hgy,east,lakeside,3,,34.75,113.62,,,,,
sd-2,smoke_detector,hgy,east,lakeside,3,,34.75,113.62,,,,,
"""
# Vendor smoke detectors, known by their IMEI, one in each community below.
IMEI_HGY = "860000000000001"
IMEI_LGY = "860000000000002"
# A second community, lgy, with the same device ids as hgy's, and a vendor smoke
# detector of the same id in each.
TWO_COMMUNITIES = (
    REGISTRY.replace("home_lon\n", "home_lon,imei\n", 1)
    + "br-1,bracelet,lgy,north,pine,7,1-101,,,赵六,13600002222,孙七:13500003333,30.10,120.10\n"
    + "sd-1,smoke_detector,lgy,north,pine,7,,30.10,120.10,,,,,\n"
    + "sd-2,smoke_detector,lgy,north,pine,7,,30.10,120.10,,,,,\n"
    + f"acme-1,smoke_detector,hgy,east,lakeside,3,,,,,,,,,{IMEI_HGY}\n"
    + f"acme-1,smoke_detector,lgy,north,pine,7,,,,,,,,,{IMEI_LGY}\n"
)


class FakeSource:
    def __init__(self) -> None:
        self.acked = 0

    async def next_batch(self, max_messages: int, linger_s: float) -> list[InboundMessage]:
        return []

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        self.acked += len(messages)


class Site:
    """The gateway under test, fed messages as the broker would hand them over."""

    def __init__(self, gateway: Gateway, clock: ManualClock, client: httpx.AsyncClient) -> None:
        self.gateway = gateway
        self.clock = clock
        self.client = client
        self._seq = 0

    async def send(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        self._seq += 1
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        message = InboundMessage(topic, body, self.clock.now_ms(), self._seq, 1)
        await self.gateway.pipeline.handle(FakeSource(), [message])

    async def fall(self, device_id: str = "br-1", **fields: float) -> str:
        """A fall of a bracelet's wearer, with `fields` (lat, lon); the id of the alert
        it makes."""
        before = {a.alert_id for a in self.gateway.alerts.open_alerts()}
        await self.send(
            f"community/hgy/bracelet/{device_id}/event",
            {"ts": self.clock.now_ms(), "event": "fall", "confidence": 0.9, **fields},
        )
        (alert_id,) = {a.alert_id for a in self.gateway.alerts.open_alerts()} - before
        return alert_id

    async def get(self, path: str, token: str | None = ADMIN, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=_auth(token), **kw)

    async def post(
        self, path: str, token: str | None = ADMIN, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        return await self.client.post(path, headers={**_auth(token), **(headers or {})}, **kw)

    async def delete(self, path: str, token: str | None = ADMIN) -> httpx.Response:
        return await self.client.delete(path, headers=_auth(token))


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def site_config(
    tmp_path: Path,
    *,
    tell: Sequence[str] = ("wang-fang",),
    registry_text: str = REGISTRY,
    retention: dict[str, int | None] | None = None,
    **api: Any,
) -> GatewayConfig:
    """`tell`: whom the escalation's one step tells (`emergency_contacts` among them,
    by console). `retention`: the config's, if not the default."""
    registry = tmp_path / "devices.csv"
    registry.write_text(registry_text, encoding="utf-8")
    return GatewayConfig.model_validate(
        {
            "mqtt": None,
            "outbox": {"path": tmp_path / "outbox.sqlite3", "synchronous": "normal"},
            "registry_file": registry,
            **({"retention": retention} if retention is not None else {}),
            "api": {
                "port": 0,
                "public_url": "http://gw.test",
                "link_secret": "link-secret-for-tests-0123456789abcdef",
                "tokens": [
                    {"name": "root", "role": "admin", "token": ADMIN},
                    {"name": "desk", "role": "operator", "token": OPERATOR},
                    {"name": "desk-hgy", "role": "operator", "token": DESK_HGY,
                     "communities": ["hgy"]},
                    {"name": "wang-fang", "role": "grid_worker", "token": WORKER,
                     "cells": [{"community": "hgy", "area": "east", "compound": "lakeside"}]},
                    {"name": "li-na", "role": "grid_worker", "token": OTHER_WORKER,
                     "cells": [{"community": "hgy", "area": "west"}]},
                ],
                **api,
            },
            # Alert links are honoured for the receivers the policy tells.
            "notify": {
                "channels": {"console": {"type": "console"}},
                "receivers": [{"name": "wang-fang", "channels": ["console"]},
                              {"name": "li-na", "channels": ["console"]}],
                "routes": [{"escalation": "grid"}],
                "escalations": {"grid": [{"after_s": 0, "to": list(tell)}]},
                "emergency_contact_channels": ["console"],
            },
        }
    )  # fmt: skip


@asynccontextmanager
async def open_site(tmp_path: Path, clock: ManualClock, **config: Any) -> AsyncIterator[Site]:
    """The gateway on the outbox in `tmp_path`, closed at the end: opened again on the
    same directory, it is the gateway after a restart. `config`: see `site_config`."""
    async with serve_site(Gateway(site_config(tmp_path, **config), clock), clock) as site:
        yield site


@asynccontextmanager
async def serve_site(gateway: Gateway, clock: ManualClock) -> AsyncIterator[Site]:
    """The gateway as a site, closed at the end."""
    try:
        assert gateway.api is not None
        transport = httpx.ASGITransport(app=gateway.api.app, client=("10.0.0.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            yield Site(gateway, clock, client)
    finally:
        gateway.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path, ManualClock(T0)) as opened:
        yield opened


# Bracelets of another community, lgy, that never report (not yet installed, a flat
# battery): each has an open `device_offline` alert, as a district holds thousands.
OTHER_COMMUNITY_OFFLINE = 500


@asynccontextmanager
async def district(tmp_path: Path) -> AsyncIterator[Site]:
    """The site, with community lgy's OTHER_COMMUNITY_OFFLINE bracelets found offline:
    the absence rule finds every registered device that never reports."""
    rows = "".join(
        f"lb-{i:05d},bracelet,lgy,north,pine,{i % 40}" + "," * 8 + "\n"
        for i in range(OTHER_COMMUNITY_OFFLINE)
    )
    async with open_site(tmp_path, ManualClock(T0), registry_text=REGISTRY + rows) as site:
        await ten_silent_minutes(site)
        in_lgy = [a for a in site.gateway.alerts.open_alerts() if a.community == "lgy"]
        assert len(in_lgy) == OTHER_COMMUNITY_OFFLINE
        yield site


async def ten_silent_minutes(site: Site) -> None:
    """The rules' timers run through ten minutes in which no device reports: bracelets,
    which report every 60 s, are found offline."""
    stage = site.gateway.pipeline.alerts
    assert stage is not None
    # The first tick judges up to the last record taken in.
    await site.gateway.pipeline.commit_alerts(stage.tick(site.clock.now_ms()))
    site.clock.advance(600)
    await site.gateway.pipeline.commit_alerts(stage.tick(site.clock.now_ms()))


def count_alerts_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many of the alert book's rows are made into entries from now on: one for
    each alert read."""
    made = [0]
    entry = book_module._entry

    def counting(row: tuple[object, ...]) -> AlertEntry:
        made[0] += 1
        return entry(row)

    monkeypatch.setattr(book_module, "_entry", counting)
    return made
