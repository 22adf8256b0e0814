from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.decode.dedup import RedeliveryFilter, SavedKeys
from gateway.decode.record import Record
from gateway.ingest.message import InboundMessage
from tests.unit.api.conftest import T0, FakeSource

# Bracelets whose telemetry the main connection took in.
HEARD = 300


def one_process(folder: Path) -> GatewayConfig:
    """Everything in one process, with no broker: an outbox's messages as taken in."""
    return GatewayConfig.model_validate(
        {"mqtt": None, "outbox": {"path": folder / "outbox.sqlite3", "synchronous": "normal"}}
    )


def telemetry_apart(folder: Path) -> GatewayConfig:
    """The default: the telemetry in a process of its own, the alarms in the main one.
    The broker is reached only once the gateway runs, which none here does."""
    return GatewayConfig.model_validate(
        {
            "mqtt": {"host": "127.0.0.1", "port": 18999},
            "outbox": {"path": folder / "outbox.sqlite3", "synchronous": "normal"},
        }
    )


def readings() -> list[InboundMessage]:
    return [
        InboundMessage(f"community/hgy/bracelet/b-{i}/telemetry",
                       f'{{"ts": {T0}, "seq": 1, "battery_pct": 50}}'.encode(), T0, i + 1, 1)
        for i in range(HEARD)
    ]  # fmt: skip


def sos(mid: int) -> InboundMessage:
    body = f'{{"ts": {T0}, "seq": 2, "event": "sos"}}'.encode()
    return InboundMessage("community/hgy/bracelet/b-0/event", body, T0, mid, 1)


def restored_filters(monkeypatch: pytest.MonkeyPatch) -> list[RedeliveryFilter]:
    """The filters given saved keys from here on, as restored."""
    restored: list[RedeliveryFilter] = []
    original = RedeliveryFilter.restore

    def restore(self: RedeliveryFilter, saved: SavedKeys) -> None:
        original(self, saved)
        restored.append(self)

    monkeypatch.setattr(RedeliveryFilter, "restore", restore)
    return restored


async def test_with_the_telemetry_apart_the_main_process_holds_the_alarm_lanes_keys_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The telemetry process restores the main connection's keys and uses them. The main
    # process takes in alarms alone: the telemetry's keys would only hold memory and
    # start-up time the alarms share, 137 MiB and 0.9 s for a district's 200,000 devices.
    clock = ManualClock(T0)
    gateway = Gateway(one_process(tmp_path), clock)
    try:
        await gateway.pipeline.handle(FakeSource(), readings())
        await gateway.pipeline.handle(FakeSource(), [sos(HEARD + 1)], alarm=True)
    finally:
        gateway.close()
    restored = restored_filters(monkeypatch)
    Gateway(telemetry_apart(tmp_path), clock).close()
    # The one bracelet that pressed SOS.
    assert sum(len(f) for f in restored) == 1


async def test_an_alarm_taken_in_before_the_alarm_lane_had_keys_is_known_again(
    tmp_path: Path,
) -> None:
    # Before alarms had a connection of their own (an earlier version, or alarm_topics
    # []), the main connection took them in and kept their keys with the telemetry's: a
    # device sending one of them again now sends it to the alarm connection, which must
    # know it, though the main process holds no telemetry keys.
    clock = ManualClock(T0)
    gateway = Gateway(one_process(tmp_path), clock)
    try:
        await gateway.pipeline.handle(FakeSource(), [*readings(), sos(HEARD + 1)])
    finally:
        gateway.close()
    main_process = Gateway(telemetry_apart(tmp_path), clock)
    try:
        seen: list[Record] = []
        main_process.pipeline.listeners.append(seen.extend)
        await main_process.pipeline.handle(FakeSource(), [sos(1)], alarm=True)
        assert seen == []
        assert main_process.stats.redeliveries == 1
    finally:
        main_process.close()
