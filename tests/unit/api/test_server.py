import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from gateway.app import Gateway
from gateway.errors import ConfigError
from tests.unit.api.conftest import site_config


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
