"""Fixtures that run real Mosquitto, InfluxDB and VictoriaMetrics processes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.services import (
    InfluxService,
    MissingBinaryError,
    MosquittoService,
    VictoriaMetricsService,
)

_INTEGRATION_DIR = Path(__file__).parent

S = TypeVar("S", MosquittoService, InfluxService, VictoriaMetricsService)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _run(factory: Callable[[Path], S], workdir: Path) -> Iterator[S]:
    service = factory(workdir)
    try:
        service.start()
    except MissingBinaryError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield service
    finally:
        service.stop()


# -- one shared server per session -------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoService]:
    yield from _run(MosquittoService, tmp_path_factory.mktemp("mosquitto"))


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxService]:
    yield from _run(InfluxService, tmp_path_factory.mktemp("influxdb"))


@pytest.fixture(scope="session")
def victoria_metrics(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VictoriaMetricsService]:
    yield from _run(VictoriaMetricsService, tmp_path_factory.mktemp("victoria-metrics"))


# -- a private server per test (free to stop / kill / restart it) ------------------------


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[MosquittoService]:
    yield from _run(MosquittoService, tmp_path / "mosquitto")


@pytest.fixture
def fresh_influxdb(tmp_path: Path) -> Iterator[InfluxService]:
    yield from _run(InfluxService, tmp_path / "influxdb")


@pytest.fixture
def fresh_victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetricsService]:
    yield from _run(VictoriaMetricsService, tmp_path / "victoria-metrics")


# -- per-test names ----------------------------------------------------------------------


@pytest.fixture
def influx_db(influxdb: InfluxService) -> str:
    """A new, empty database in the session InfluxDB."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    influxdb.create_database(name)
    return name


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A unique community name (``[a-z0-9-]{1,32}``) so each test has its own topics."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
    slug = slug.strip("-")[:16].strip("-")
    suffix = uuid.uuid4().hex[:12]
    return f"{slug}-{suffix}" if slug else f"t-{suffix}"
