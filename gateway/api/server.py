"""The API server, run by uvicorn inside the gateway's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import TYPE_CHECKING

import uvicorn

from gateway.api.app import create_app
from gateway.api.context import ApiContext
from gateway.config import ApiConfig
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.app import Gateway

# Open event streams get this long to end once the gateway stops.
GRACEFUL_SHUTDOWN_S = 3


class _Server(uvicorn.Server):
    # The gateway owns the process's signals (stop, reload); uvicorn must not take them.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:
        return None


class ApiServer:
    def __init__(self, gateway: Gateway, config: ApiConfig) -> None:
        self.app = create_app(gateway, config)
        self.context: ApiContext = self.app.state.context
        self._server = _Server(
            uvicorn.Config(
                self.app,
                host=config.host,
                port=config.port,
                # Link tokens travel in paths: no access log, and the gateway's own logging.
                access_log=False,
                log_config=None,
                # The client a proxy forwards for, so that the failed-login limit and
                # the logs name the phone rather than the proxy; from these alone.
                proxy_headers=True,
                forwarded_allow_ips=list(config.trusted_proxies),
                lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            )
        )
        self.port: int | None = None
        self.started = asyncio.Event()

    async def serve(self) -> None:
        """Until stop(). Raises ConfigError when the address cannot be listened on."""
        noting = asyncio.create_task(self._note_port())
        try:
            # Awaited here rather than as a task of its own: uvicorn exits the process
            # (SystemExit) when it cannot bind, and only here can that be caught.
            await self._server.serve()
        except SystemExit as exc:
            config = self._server.config
            raise ConfigError(
                "api", "port", f"cannot listen on {config.host}:{config.port}"
            ) from exc
        finally:
            noting.cancel()

    async def _note_port(self) -> None:
        while not self._server.started:
            await asyncio.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        self.started.set()

    def stop(self) -> None:
        self._server.should_exit = True

    def close(self) -> None:
        self.context.close()
