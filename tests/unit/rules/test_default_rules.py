"""Each default safety rule driven by the simulators' scenarios, through the real
decoder: it fires, and where the scenario ends, it clears."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway import PROJECT_ROOT
from gateway.clock import ManualClock
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.profile import load_profiles
from gateway.errors import DecodeError
from gateway.ingest.message import InboundMessage
from gateway.registry import load_registry
from gateway.rules.engine import RuleEngine
from simulators.fleet import Fleet
from simulators.scenario import Scenario, ScenarioKind
from tests.catalogue import shipped_rules

NOON_MS = 1_767_240_000_000  # 2026-01-01 12:00 in Shanghai
PROFILES = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
FLEET = Fleet.build(seed=3, devices=60, communities=1)


def run(tmp_path: Path, kind: ScenarioKind, hours: float) -> tuple[Counter[str], Counter[str]]:
    registry_file = tmp_path / "devices.csv"
    registry_file.write_text(FLEET.registry_csv(), encoding="utf-8")
    registry = load_registry(registry_file)
    clock = ManualClock(NOON_MS)
    decoder = Decoder(PROFILES, registry, require_registered=True)
    periods = PROFILES.periods_s()
    engine = RuleEngine(shipped_rules(), registry, periods, now_ms=NOON_MS)
    fired: Counter[str] = Counter()
    resolved: Counter[str] = Counter()
    next_tick_ms = NOON_MS
    messages = FLEET.messages(
        start_ms=NOON_MS, duration_s=hours * 3600, scenarios=[Scenario(kind, 60.0)]
    )
    for message in messages:
        clock.advance((message.time_ms - clock.now_ms()) / 1000)
        changes = []
        try:
            decoded = decoder.decode(
                InboundMessage(message.topic, message.payload, message.time_ms)
            )
            changes += engine.evaluate(decoded.records)
        except DecodeError:
            pass
        if message.time_ms >= next_tick_ms:
            changes += engine.tick(message.time_ms)
            next_tick_ms = message.time_ms + 60_000
        for change in changes:
            (fired if change.state == "firing" else resolved)[change.rule] += 1
    return fired, resolved


@pytest.mark.parametrize(
    ("kind", "hours", "fires", "clears"),
    [
        (ScenarioKind.FIRE, 1, {"fire_alarm"}, set()),
        (ScenarioKind.FALL, 1, {"fall"}, set()),
        (ScenarioKind.SOS, 1, {"sos"}, set()),
        (ScenarioKind.LID_OPENED, 3, {"cover_open"}, {"cover_open"}),
        (ScenarioKind.OVERFLOW, 3, {"overflow_risk"}, {"overflow_risk"}),
        (ScenarioKind.SEWER_GAS, 1, {"sewer_gas"}, set()),
        (ScenarioKind.THERMAL_RUNAWAY, 1, {"thermal_runaway_risk", "port_overheating"}, set()),
        (ScenarioKind.OVERCURRENT, 3, {"over_current"}, {"over_current"}),
        (ScenarioKind.SHED_SMOKE, 1, {"shed_fire"}, set()),
        (ScenarioKind.HEART_RATE, 3, {"abnormal_heart_rate"}, {"abnormal_heart_rate"}),
        (ScenarioKind.WANDER, 2, {"left_safe_area"}, set()),
        (ScenarioKind.LOW_BATTERY, 2, {"smoke_low_battery", "bracelet_low_battery"}, set()),
        (ScenarioKind.SILENT, 3, {"device_offline"}, set()),
        (ScenarioKind.NO_ACTIVITY, 22, {"no_activity"}, set()),
    ],
)
def test_a_scenario_raises_its_alert(
    tmp_path: Path, kind: ScenarioKind, hours: float, fires: set[str], clears: set[str]
) -> None:
    fired, resolved = run(tmp_path, kind, hours)
    assert fires <= set(fired), f"{kind}: fired {dict(fired)}"
    assert clears <= set(resolved), f"{kind}: resolved {dict(resolved)}"
    # One condition, one alert: nothing fires twice for the same scenario device.
    for rule in fires - {"device_offline", "smoke_low_battery", "bracelet_low_battery"}:
        assert fired[rule] <= 4, f"{rule} fired {fired[rule]} times"


def test_a_quiet_day_raises_nothing(tmp_path: Path) -> None:
    fired, _ = run(tmp_path, ScenarioKind.MALFORMED, 6)
    assert fired == Counter()
