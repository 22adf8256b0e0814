"""The telemetry process seen from the main process: how it is started again, how it
takes a reloaded registry."""

import asyncio
import itertools
import multiprocessing
from pathlib import Path
from unittest.mock import Mock

import pytest

from gateway import PROJECT_ROOT
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.decode.decoder import CODECS
from gateway.decode.profile import load_profiles
from gateway.ingest.process import (
    RESTART_MAX_S,
    RESTART_MIN_S,
    TelemetryProcess,
    _reload_registries,
)
from gateway.registry import Registry
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


async def test_a_reload_waits_until_the_telemetry_process_holds_the_registry_or_refuses_it(
    tmp_path: Path,
) -> None:
    # Until the telemetry process holds a reloaded registry, a vendor frame of a device
    # just added is refused as unregistered: the reload's answer waits for it, and says
    # if it refused (the sheet broken again since the main process read it).
    config = GatewayConfig.model_validate(
        {"mqtt": {}, "outbox": {"path": tmp_path / "outbox.sqlite3"}}
    )
    telemetry = TelemetryProcess(config, ManualClock(), Stats())
    ours, theirs = multiprocessing.Pipe()
    telemetry._pipe = ours
    ended = asyncio.Event()
    asyncio.get_running_loop().add_reader(ours.fileno(), telemetry._receive, ours, ended)
    reloads: asyncio.Queue[Path | None] = asyncio.Queue()
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    pipeline = Mock()
    child = asyncio.create_task(_reload_registries(reloads, profiles, pipeline, Registry(), theirs))
    try:
        sheet = tmp_path / "devices.csv"
        sheet.write_text("device_id,device_type,community\nsd-1,smoke_detector,hgy\n", "utf-8")
        asking = asyncio.create_task(telemetry.use_registry(sheet))
        message = await asyncio.to_thread(theirs.recv)
        assert message == ("registry", sheet)
        await asyncio.sleep(0.05)
        assert not asking.done(), "answered before the telemetry process read the sheet"
        reloads.put_nowait(message[1])
        assert await asyncio.wait_for(asking, 10) is None
        (taken,) = pipeline.use_registry.call_args.args
        assert taken.get("hgy", "sd-1") is not None

        sheet.write_text("device_id,device_type,community\nsd-1,toaster,hgy\n", "utf-8")
        asking = asyncio.create_task(telemetry.use_registry(sheet))
        reloads.put_nowait((await asyncio.to_thread(theirs.recv))[1])
        refused = await asyncio.wait_for(asking, 10)
        assert refused is not None and refused.startswith(
            f"its telemetry process refused the registry: {sheet}: line 2 (sd-1): device_type: "
        )
    finally:
        child.cancel()
        asyncio.get_running_loop().remove_reader(ours.fileno())
