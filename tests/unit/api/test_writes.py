import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.unit.api.conftest import ADMIN, OPERATOR, T0, Site
from tests.unit.api.test_pages import link_path

Request = Callable[[Site, str], Awaitable[httpx.Response]]


async def _silence(site: Site, alert_id: str) -> httpx.Response:
    body = {"community": "hgy", "device_id": "sd-1", "ends_ms": T0 + 3_600_000, "reason": "检修"}
    return await site.post("/api/v1/silences", OPERATOR, json=body)


async def _device_read_whole(site: Site, alert_id: str) -> httpx.Response:
    return await site.get("/api/v1/devices/hgy/br-1", ADMIN)


async def _link_page(site: Site, alert_id: str) -> httpx.Response:
    return await site.client.get(link_path(site, alert_id))


@pytest.mark.parametrize("request_", [_silence, _device_read_whole, _link_page])
async def test_a_write_waiting_for_the_ingest_does_not_hold_up_the_event_loop(
    site: Site, request_: Request
) -> None:
    alert_id = await site.fall()
    # The ingest holds the outbox file's write lock, as each of its commits does.
    ingest = sqlite3.connect(site.gateway.config.outbox.path, isolation_level=None)
    ingest.execute("BEGIN IMMEDIATE")
    waiting = asyncio.create_task(request_(site, alert_id))
    # Meanwhile the event loop serves alarms: a request that waited on it for the lock
    # would have ended (refused, after SQLite's 30 s) before these turns came.
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert not waiting.done()
    ingest.execute("COMMIT")
    ingest.close()
    response = await waiting
    assert response.status_code in (200, 201), response.text
    # The silence, or the audit of the wearer's data shown whole, was written.
    audit = (await site.get("/api/v1/audit")).json()
    silences = (await site.get("/api/v1/silences")).json()
    assert len(audit) + len(silences) == 1
