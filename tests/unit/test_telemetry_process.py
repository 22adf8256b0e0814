"""The telemetry process seen from the main process: how it is started again."""

import asyncio
import itertools
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.ingest.process import RESTART_MAX_S, RESTART_MIN_S, TelemetryProcess
from gateway.stats import Stats


async def test_a_telemetry_process_that_keeps_ending_is_started_again_at_most_every_max_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that ends at once (a broken profile, say) is started again ever later,
    # then every RESTART_MAX_S: not six times a minute, as when the wait counted as the
    # time it ran.
    config = GatewayConfig.model_validate(
        {"mqtt": {}, "outbox": {"path": tmp_path / "outbox.sqlite3"}}
    )
    clock = ManualClock()
    telemetry = TelemetryProcess(config, clock, Stats())
    stopping = asyncio.Event()
    starts: list[float] = []

    async def ends_at_once(_: asyncio.Event) -> int:
        starts.append(clock.monotonic_s())
        if len(starts) == 9:
            stopping.set()
        return 1

    monkeypatch.setattr(telemetry, "_run_once", ends_at_once)
    running = asyncio.create_task(telemetry.run(stopping))
    while not running.done():
        for _ in range(10):  # the run's turns of the loop between two waits
            await asyncio.sleep(0)
        clock.advance(0.5)
    await running
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    delays = [min(RESTART_MIN_S * 2**n, RESTART_MAX_S) for n in range(len(gaps))]
    assert gaps == pytest.approx(delays, abs=0.5)
    assert gaps[-3:] == pytest.approx([RESTART_MAX_S] * 3, abs=0.5)
