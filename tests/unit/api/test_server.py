import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.app import MAX_BODY_BYTES, MAX_RULE_CHECK_BODY_BYTES
from gateway.app import Gateway
from gateway.errors import ConfigError
from tests.unit.api.conftest import ADMIN, Site, site_config
from tests.unit.api.test_rules import GOOD


async def test_the_api_serves_on_a_free_port_until_the_gateway_stops(tmp_path: Path) -> None:
    gateway = Gateway(site_config(tmp_path))
    assert gateway.api is not None
    running = asyncio.create_task(gateway.run())
    await asyncio.wait_for(gateway.api.started.wait(), timeout=10)
    base = f"http://127.0.0.1:{gateway.api.port}"
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/health/live")).status_code == 200
    gateway.stop()
    await asyncio.wait_for(running, timeout=10)
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base) as client:
            await client.get("/health/live")


async def test_an_address_in_use_stops_the_gateway_saying_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = Gateway(site_config(tmp_path, port=port))
        with pytest.raises(ConfigError, match=f"api: port: cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(gateway.run(), timeout=10)


@asynccontextmanager
async def serving(tmp_path: Path, **api: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's API on a free port of 127.0.0.1, and a client for it."""
    tmp_path.mkdir(exist_ok=True)
    gateway = Gateway(site_config(tmp_path, **api))
    assert gateway.api is not None
    running = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.api.started.wait(), timeout=10)
        base = f"http://127.0.0.1:{gateway.api.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            yield client
    finally:
        gateway.stop()
        await asyncio.wait_for(running, timeout=10)


async def _refused_after_ten_failures(client: httpx.AsyncClient, forwarded_for: str) -> int:
    for _ in range(10):
        await client.get("/api/v1/alerts", headers={"X-Forwarded-For": "198.51.100.7"})
    other = await client.get("/api/v1/alerts", headers={"X-Forwarded-For": forwarded_for})
    return other.status_code


async def test_the_client_a_trusted_proxy_forwards_for_is_the_one_limited(
    tmp_path: Path,
) -> None:
    # The proxy on the box itself (the default): each phone behind it is limited alone.
    async with serving(tmp_path / "a") as client:
        assert await _refused_after_ten_failures(client, "198.51.100.8") == 401
        assert await _refused_after_ten_failures(client, "198.51.100.7") == 429
    # Anyone else's X-Forwarded-For is not believed: it would let a client pick the
    # address it is limited by.
    async with serving(tmp_path / "b", trusted_proxies=["192.0.2.1"]) as client:
        assert await _refused_after_ten_failures(client, "198.51.100.8") == 429


CHUNK = b" " * (1 << 20)  # JSON whitespace: padding around a valid body
CHUNKS = 64


async def _offer_body(site: Site, path: str, *, declared: bool) -> tuple[int, int, bytes]:
    """POST `path` with no Authorization, as uvicorn hands a body over, chunk by chunk:
    how many chunks the app took before it answered, its status and its body."""
    assert site.gateway.api is not None
    app = site.gateway.api.app
    taken = 0
    status = 0
    body = b""

    async def receive() -> dict[str, Any]:
        nonlocal taken
        if status or taken >= CHUNKS:
            return {"type": "http.disconnect"}
        taken += 1
        last = taken == CHUNKS
        chunk = CHUNK + b'{"ends_ms": 1, "reason": "x", "rule": "fall"}' if last else CHUNK
        return {"type": "http.request", "body": chunk, "more_body": not last}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    headers = [(b"host", b"gw.test"), (b"content-type", b"application/json")]
    if declared:
        headers.append((b"content-length", str(CHUNKS * len(CHUNK)).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("gw.test", 80), "client": ("203.0.113.9", 4000),
        "headers": headers,
    }  # fmt: skip
    await app(scope, receive, send)
    return taken, status, body


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(
    site: Site, declared: bool
) -> None:
    # FastAPI reads a body before it asks who is calling, and the API shares the
    # gateway's process and event loop with the alarms.
    taken, status, body = await _offer_body(site, "/api/v1/silences", declared=declared)
    assert taken <= 1, f"read {taken} MiB of an unauthenticated body into memory ({status})"
    assert status == 413
    assert json.loads(body) == {"detail": f"request body over {MAX_BODY_BYTES} bytes (64 KiB)"}


async def test_a_rule_file_to_check_may_be_larger_than_other_bodies(site: Site) -> None:
    assert MAX_RULE_CHECK_BODY_BYTES == 256 * 1024
    # A rule file with long comments, as operators write them.
    rules = "# 说明：夜间充电棚温度过高时告警。\n" * 5_000 + GOOD
    assert MAX_BODY_BYTES < len(rules.encode()) < MAX_RULE_CHECK_BODY_BYTES
    checked = await site.post(
        "/api/v1/rules/check?file=extra.yaml", ADMIN, content=rules,
        headers={"content-type": "application/yaml"},
    )  # fmt: skip
    assert checked.status_code == 200, checked.text
    silence = await site.post("/api/v1/silences", ADMIN, content=rules)
    assert silence.status_code == 413
    too_long = b"#" * (MAX_RULE_CHECK_BODY_BYTES + 1)
    refused = await site.post("/api/v1/rules/check", ADMIN, content=too_long)
    assert refused.status_code == 413
    assert refused.json()["detail"] == "request body over 262144 bytes (256 KiB)"


# A client made from /openapi.json handles the answers it lists; a probe or a scraper
# configured with parameters of its own gets its answer, not a refusal it would take
# for the gateway down.
async def test_an_unknown_query_parameter_gets_an_answer_the_document_lists(
    site: Site,
) -> None:
    document = (await site.get("/openapi.json")).json()
    for path, code in (("/api/v1/silences", 422), ("/api/v1/rules", 422),
                       ("/health/live", 200), ("/health/ready", 200), ("/metrics", 200)):  # fmt: skip
        answer = await site.get(f"{path}?verbose=1")
        assert answer.status_code == code, (path, answer.text)
        assert str(code) in document["paths"][path]["get"]["responses"], path


# A body that is not JSON is refused saying so, and where the parser stopped.
async def test_a_body_that_is_not_json_is_refused_saying_so(site: Site) -> None:
    alert_id = await site.fall()
    truncated = await site.post(
        f"/api/v1/alerts/{alert_id}/close",
        content=b'{"note": ',
        headers={"Content-Type": "application/json"},
    )
    assert truncated.status_code == 422
    assert truncated.json()["detail"].startswith("body: not valid JSON at character 9")
