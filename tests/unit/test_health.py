import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.app import DEVICE_INFO_INTERVAL_S, Gateway
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, load_config
from gateway.errors import StoreError
from gateway.health import HEALTH_MEASUREMENT, HealthReport
from gateway.ingest.message import InboundMessage
from gateway.stats import Stats
from gateway.store.series import DEVICE_INFO_MEASUREMENT
from tests.integration.harness import wait_until
from tests.unit.api.conftest import REGISTRY, T0, FakeSource


def test_each_report_carries_the_counts_since_the_previous_one() -> None:
    stats = Stats(messages_in=100, lines_stored=180, lines_written=150, outbox_depth=30)
    stats.rejected_by_reason.update({"not_json": 2, "bad_crc": 1})
    report = HealthReport("gw-1")
    first = report.lines(stats, 1_000)
    assert first[0] == (
        "gateway,instance=gw-1 messages_in=100i,lines_stored=180i,lines_written=150i,"
        "redeliveries=0i,write_failures=0i,commit_failures=0i,rule_faults=0i,rejected=3i,"
        "outbox_depth=30i,"
        "write_latency_ms=0.0,alerts_open=0i,disk_reserve_given_back=false,damaged_files=0i 1000"
    )
    assert first[1:] == [
        "gateway_rejects,instance=gw-1,reason=bad_crc rejected=1i 1000",
        "gateway_rejects,instance=gw-1,reason=not_json rejected=2i 1000",
    ]
    stats.messages_in += 10
    stats.rejected_by_reason["not_json"] += 1
    stats.write_latency_s = 0.0125
    stats.rule_faults["overflow_ratio"] += 2
    stats.note_commit("main", "database or disk is full")
    stats.note_commit("main", "database or disk is full")
    stats.note_commit("main", None)
    second = report.lines(stats, 2_000, reserve_given_back=True, damaged_files=2)
    assert "commit_failures=2i," in second[0]
    assert "rule_faults=2i," in second[0]
    assert "messages_in=10i," in second[0]
    assert "lines_stored=0i," in second[0]
    assert "rejected=1i," in second[0]
    assert "write_latency_ms=12.5," in second[0]
    assert "disk_reserve_given_back=true,damaged_files=2i " in second[0]
    assert "ingest_lag_s" not in second[0]
    stats.ingest_lag_s = 7.25
    assert "damaged_files=0i,ingest_lag_s=7.2 3000" in report.lines(stats, 3_000)[0]
    # A reason with nothing new since the last report makes no line.
    assert second[1:] == ["gateway_rejects,instance=gw-1,reason=not_json rejected=1i 2000"]


async def test_open_alerts_are_counted_from_the_book_after_a_restart_and_a_close(
    tmp_path: Path,
) -> None:
    config = GatewayConfig.model_validate(
        {"mqtt": None, "outbox": {"path": tmp_path / "o.sqlite3"}, "health_interval_s": 10}
    )
    clock = ManualClock(T0)
    first = Gateway(config, clock)
    fall = InboundMessage(
        "community/hgy/bracelet/br-1/event",
        json.dumps({"ts": T0, "event": "fall", "confidence": 0.9}).encode(),
        T0,
        1,
        1,
    )
    await first.pipeline.handle(FakeSource(), [fall])
    (alert,) = first.alerts.open_alerts()
    first.close()

    # The report of the gateway started again says the fall is still open...
    second = Gateway(config, clock)
    running = asyncio.create_task(second.run())
    try:
        await wait_until(lambda: ticked(clock, second, 1), timeout_s=5, what="a report")
        assert "alerts_open=1i" in reports(second)[0]
        # ...and once a person closed it, that none is.
        await second.desk.close(alert.alert_id, "wang-fang", "a neighbour helped her up")
        await wait_until(lambda: ticked(clock, second, 2), timeout_s=5, what="a report")
        assert "alerts_open=0i" in reports(second)[1]
    finally:
        second.stop()
        await asyncio.wait_for(running, timeout=10)


def registry_only(tmp_path: Path) -> tuple[Path, GatewayConfig]:
    """A gateway with no broker and no health reports, and its registry file."""
    registry = tmp_path / "devices.csv"
    registry.write_text(REGISTRY, encoding="utf-8")
    return registry, GatewayConfig.model_validate(
        {
            "mqtt": None,
            "outbox": {"path": tmp_path / "o.sqlite3"},
            "registry_file": registry,
            "health_interval_s": None,
        }
    )


async def test_the_registry_is_written_again_each_day_without_health_reports(
    tmp_path: Path,
) -> None:
    # The dashboards read the registry's last point with no time range: a retention
    # policy shorter than the gateway's uptime must not leave them without one.
    async with registry_written(tmp_path) as (gateway, clock):
        clock.advance(DEVICE_INFO_INTERVAL_S - 1)
        await asyncio.sleep(0.05)
        assert len(device_info(gateway)) == 4
        clock.advance(1)
        await wait_until(
            lambda: len(device_info(gateway)) == 8, timeout_s=5, what="device_info a day on"
        )
        again = device_info(gateway)[4:]
        day_on_ms = T0 + round(DEVICE_INFO_INTERVAL_S * 1000)
        assert [line.rsplit(" ", 1)[0] for line in again] == [
            line.rsplit(" ", 1)[0] for line in device_info(gateway)[:4]
        ]
        assert all(line.endswith(f" {day_on_ms}") for line in again)


async def test_the_registry_is_written_again_when_a_reload_changes_it(tmp_path: Path) -> None:
    # The dashboards' map and place lists show a device registered while the gateway
    # runs, not a day later.
    registry = tmp_path / "devices.csv"
    registry.write_text(REGISTRY, encoding="utf-8")
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        f"mqtt: null\noutbox: {{path: {tmp_path / 'o.sqlite3'}}}\nregistry_file: {registry}\n"
        "health_interval_s: null\n",
        encoding="utf-8",
    )
    gateway = Gateway(load_config(config_file), ManualClock(T0))
    running = asyncio.create_task(gateway.run())
    try:
        await wait_until(lambda: len(device_info(gateway)) == 4, timeout_s=5, what="device_info")
        registry.write_text(REGISTRY + "sd-3,smoke_detector,hgy,east,lakeside,5,,,,,,,,\n")
        await gateway.reload(config_file)
        await wait_until(
            lambda: len(device_info(gateway)) == 9, timeout_s=5, what="device_info reloaded"
        )
        assert "building=5" in device_info(gateway)[-1]
    finally:
        gateway.stop()
        await asyncio.wait_for(running, timeout=10)


async def test_a_device_taken_out_while_the_gateway_was_stopped_is_written_as_no_longer_there(
    tmp_path: Path,
) -> None:
    # The dashboards read each device's last point with no time range: taken out of the
    # sheet between two runs, a detector would stay on the map and in the counts for ever.
    registry, config = registry_only(tmp_path)

    async def run_until_written(lines: int) -> list[str]:
        """A run of the gateway until the registry's points in the outbox are `lines`."""
        gateway = Gateway(config, ManualClock(T0))
        running = asyncio.create_task(gateway.run())
        try:
            await wait_until(lambda: len(device_info(gateway)) == lines, timeout_s=5,
                             what="device_info")  # fmt: skip
            return device_info(gateway)
        finally:
            gateway.stop()
            await asyncio.wait_for(running, timeout=10)

    await run_until_written(4)
    sd_1 = next(line for line in REGISTRY.splitlines(keepends=True) if line.startswith("sd-1,"))
    registry.write_text(REGISTRY.replace(sd_1, ""), encoding="utf-8")
    (gone,) = [line for line in await run_until_written(8) if "registered=false" in line]
    assert ",device_id=sd-1," in gone


def device_info(gateway: Gateway) -> list[str]:
    """The registry's points in the outbox."""
    lines = gateway.outbox.peek(10_000).lines
    return [line for line in lines if line.startswith(f"{DEVICE_INFO_MEASUREMENT},")]


def reports(gateway: Gateway) -> list[str]:
    """The health reports in the outbox."""
    lines = gateway.outbox.peek(10_000).lines
    return [line for line in lines if line.startswith(f"{HEALTH_MEASUREMENT},")]


def ticked(clock: ManualClock, gateway: Gateway, count: int) -> bool:
    """Whether `count` reports are in; if not, the clock moves on a second."""
    if len(reports(gateway)) >= count:
        return True
    clock.advance(1)
    return False


async def test_a_failure_reading_the_registry_s_series_for_the_daily_writing_does_not_stop_the_gateway(
    tmp_path: Path,
) -> None:  # fmt: skip
    # SQLite could not go on for now (a lock held, an I/O error): the commits of the
    # gateway try again, but the device-info stage ended, and with it the whole gateway,
    # its alarms unheard until something starts it again.
    async with registry_written(tmp_path) as (gateway, clock):
        read = gateway.outbox.registry_series
        failures = [StoreError("reading the registry's series failed: database is locked",
                               retryable=True)]  # fmt: skip

        def failing_once() -> tuple[list[str], dict[str, int | None]]:
            if failures:
                raise failures.pop()
            return read()

        gateway.outbox.registry_series = failing_once  # type: ignore[method-assign]
        clock.advance(DEVICE_INFO_INTERVAL_S)

        def written_again() -> bool:
            # The try again waits its backoff on the gateway's clock.
            if len(device_info(gateway)) >= 8:
                return True
            clock.advance(1)
            return False

        await wait_until(written_again, timeout_s=10, what="device_info a day on")
        assert len(device_info(gateway)) == 8


@asynccontextmanager
async def registry_written(tmp_path: Path) -> AsyncIterator[tuple[Gateway, ManualClock]]:
    """A gateway with the registry alone, once it wrote the registry's points; stopped at
    the end, which raises what a stage that ended with a failure raised."""
    _, config = registry_only(tmp_path)
    clock = ManualClock(T0)
    gateway = Gateway(config, clock)
    running = asyncio.create_task(gateway.run())
    try:
        await wait_until(lambda: len(device_info(gateway)) == 4, timeout_s=5, what="device_info")
        yield gateway, clock
    finally:
        gateway.stop()
        await asyncio.wait_for(running, timeout=10)
