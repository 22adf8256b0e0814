"""The served OpenAPI document, checked by schemathesis against the running API."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.case import Case
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from gateway.app import Gateway
from tests.unit.api.conftest import ADMIN, site_config


class ServedGateway:
    """A gateway with its API in a thread of its own, as schemathesis calls it blocking."""

    def __init__(self, tmp_path: Path) -> None:
        # Schemathesis checks that requests without a token are refused; they must not
        # lock its own requests out.
        self._config = site_config(tmp_path, auth_failures_per_min=1_000_000)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gateway: Gateway | None = None
        self.port = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Built in the loop's own thread: its SQLite connections belong to that thread.
        self._gateway = Gateway(self._config)
        running = asyncio.create_task(self._gateway.run())
        assert self._gateway.api is not None
        await self._gateway.api.started.wait()
        self.port = self._gateway.api.port or 0
        self._ready.set()
        await running

    def __enter__(self) -> ServedGateway:
        self._thread.start()
        if not self._ready.wait(timeout=20):
            raise RuntimeError("the API did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._gateway is not None:
            self._loop.call_soon_threadsafe(self._gateway.stop)
        self._thread.join(timeout=15)


# Examples per operation and mode: enough to find a crash or a broken promise, and the
# whole check stays well under a minute.
EXAMPLES = 8


# Some well-formed bodies are refused for what no schema can say (a silence ending before
# it starts, a rule file that does not load): 422 with the reason. And a query value is
# text on the wire: an "invalid" object or null generated for a text filter arrives as
# valid text. Every other check holds, a server error above all.
EXCLUDED = [positive_data_acceptance, negative_data_rejection]


# A header name is a token (RFC 9110); and the headers that frame a message are the HTTP
# server's to read. A request that breaks either is refused by the server before the
# API sees it, as plain text: "Invalid HTTP request received."
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING = {"content-length", "transfer-encoding", "host", "connection"}


def reaches_the_api(case: Case) -> bool:
    """Whether the HTTP server reads the request and hands it to the API."""
    return all(
        _TOKEN.fullmatch(name) and name.lower() not in _FRAMING and not _CONTROL.search(value)
        for name, value in (case.headers or {}).items()
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_to_its_openapi_document(tmp_path: Path, mode: GenerationMode) -> None:
    with ServedGateway(tmp_path) as served:
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{served.port}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        for operation in operations:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def keeps_to_it(case: Case) -> None:
                assume(reaches_the_api(case))
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {ADMIN}"}, excluded_checks=EXCLUDED
                )

            try:
                keeps_to_it()
            except Unsatisfiable:
                # An operation that takes nothing has no invalid input to send.
                assert mode is GenerationMode.NEGATIVE
