"""Rule files and their language: what a rule file says is what the gateway does, and
one that cannot mean what it says is refused when it loads, naming its file, rule and
field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.decode.record import DeviceRef, FieldValue, Reading, TimeSource
from gateway.registry import Registry
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.engine import RuleEngine
from gateway.rules.rule import load_rules
from tests.catalogue import SHIPPED_PROFILES, shipped_rules
from tests.unit.rules.test_rule_files import _refused, _rule_folder

T0 = 1_767_225_600_000  # 2026-01-01 08:00 in Shanghai
SHED = DeviceRef("hgy", "charging_shed", "cs-1")


def _reading(
    device: DeviceRef, t_s: float, port: int | None = None, **fields: FieldValue
) -> Reading:
    return Reading(device, T0 + int(t_s * 1000), TimeSource.DEVICE, fields, port=port)


def _fired(changes: list[AlertChange]) -> list[str]:
    return [c.rule for c in changes if c.fired and c.state == AlertState.FIRING]


def _absence_rule(extra: str) -> str:
    return (
        "rules:\n"
        "  - name: bracelet_offline\n"
        "    title: t\n"
        "    device_types: [bracelet]\n"
        "    severity: warning\n"
        "    kind: absence\n"
        "    after_periods: 10\n"
        f"    {extra}\n"
    )


def _port_heating(engine: RuleEngine, start: float, steps: list[float]) -> list[AlertChange]:
    """A port at `start` °C for ten minutes (reports every 15 s), then `steps`."""
    changes: list[AlertChange] = []
    for i in range(41):
        changes += engine.evaluate([_reading(SHED, i * 15, port=2, temperature_c=start)])
    for i, temperature in enumerate(steps, start=41):
        changes += engine.evaluate([_reading(SHED, i * 15, port=2, temperature_c=temperature)])
    return changes


def test_one_event_kind_in_parentheses_is_that_kind_not_a_substring(tmp_path: Path) -> None:
    # `event in ('displaced')` is a text, in which '' (a reading's event) is found: refused,
    # not a cover rule firing at every report.
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - name: cover_moved\n"
        "    title: t\n"
        "    device_types: [manhole_cover]\n"
        "    severity: major\n"
        "    when: lid_open == true or event in ('displaced')\n",
    )
    assert "cover_moved" in error.field


def test_a_bare_text_beside_or_is_refused_not_always_true(tmp_path: Path) -> None:
    # `event == 'sos' or 'fall'` is always true: refused, not a critical alert of every
    # event a bracelet sends.
    text = (
        "rules:\n"
        "  - name: help_needed\n"
        "    title: t\n"
        "    device_types: [bracelet]\n"
        "    severity: critical\n"
        "    life_safety: true\n"
        "    kind: event\n"
        "    when: event == 'sos' or 'fall'\n"
    )
    assert "help_needed" in _refused(tmp_path, text).field


@pytest.mark.parametrize(
    ("when", "named"),
    [
        ("alarm == 'true' or event == 'alarm'", "alarm"),
        ("battery_pct == '10'", "battery_pct"),
        ("event in ('alarm', 1)", "event"),
        ("alarm in (true, 'yes')", "alarm"),
    ],
)
def test_a_field_compared_with_a_value_it_never_equals_is_refused(
    tmp_path: Path, when: str, named: str
) -> None:
    # `alarm == 'true'` is false at every report of a yes/no field: the fire rule would
    # load and never fire.
    text = (
        "rules:\n"
        "  - name: smoke_seen\n"
        "    title: t\n"
        "    device_types: [smoke_detector]\n"
        "    severity: critical\n"
        f'    when: "{when}"\n'
    )
    error = _refused(tmp_path, text)
    assert "smoke_seen" in error.field and "condition" in error.field
    assert named in error.problem


def test_yes_no_fields_compared_with_true_false_or_numbers_load(tmp_path: Path) -> None:
    # Python's 1 == True: a rule comparing a yes/no field with 1 works, and is kept.
    folder = _rule_folder(
        tmp_path,
        "rules:\n"
        "  - {name: smoke_seen, title: t, device_types: [smoke_detector], severity: info,\n"
        "     when: 'alarm == 1 or alarm in (true,) or battery_pct == true'}\n",
    )
    assert [r.name for r in load_rules(folder, SHIPPED_PROFILES)] == ["smoke_seen"]


@pytest.mark.parametrize(
    "when",
    [
        "battery_pct" + " + 1" * 1200 + " > 5",
        "not " * 1200 + "battery_pct > 5",
    ],
    ids=["long-sum", "many-nots"],
)
def test_a_condition_too_deep_to_compile_is_a_config_error_naming_the_rule(
    tmp_path: Path, when: str
) -> None:
    # A condition too deep to compile is an error naming its file and rule, not a
    # traceback from check, reload or the start.
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - name: deep\n"
        "    title: t\n"
        "    device_types: [smoke_detector]\n"
        "    severity: info\n"
        f'    when: "{when}"\n',
    )
    assert "deep" in error.field


def test_active_hours_on_an_absence_rule_are_refused(tmp_path: Path) -> None:
    # An absence rule judges silence at any hour: active hours on it
    # would be ignored.
    error = _refused(tmp_path, _absence_rule('active_hours: "07:00-22:00"'))
    assert "active_hours" in error.field


def test_a_when_on_an_absence_rule_is_refused(tmp_path: Path) -> None:
    # A `when` on an absence rule is refused, not silently left out (every wearer watched
    # though the rule names those living alone).
    assert "when" in _refused(tmp_path, _absence_rule("when: device.lives_alone == true")).field


@pytest.mark.parametrize(
    ("rule", "setting"),
    [
        ("kind: condition, per_port: true, when: 'temperature_c > 60'", "for_s: .inf"),
        ("kind: condition, per_port: true, when: 'temperature_c > 60'", "clear_after_s: .inf"),
        (
            "kind: condition, per_port: true, when: 'temperature_c_per_min >= 5'",
            "rates: {temperature_c: .inf}",
        ),
        ("kind: absence", "after_periods: .inf"),
        ("kind: correlation, when: 'alarm == true'", "window_s: .inf"),
        ("kind: inactivity, when: 'worn == true', field: steps", "unchanged_for_s: .inf"),
    ],
)
def test_a_duration_of_infinity_is_refused_naming_it(
    tmp_path: Path, rule: str, setting: str
) -> None:
    # A duration of .inf would leave the rule silent for good, or never let it resolve.
    types = {
        "kind: condition": "charging_shed",
        "kind: absence": "bracelet",
        "kind: correlation": "smoke_detector",
        "kind: inactivity": "bracelet",
    }
    device_type = next(t for k, t in types.items() if rule.startswith(k))
    error = _refused(
        tmp_path,
        "rules:\n"
        f"  - {{name: endless, title: t, device_types: [{device_type}], severity: major,\n"
        f"     {rule}, {setting}}}\n",
    )
    assert "endless" in error.field
    assert setting.split(":")[0] in error.field


def test_active_hours_with_a_utc_offset_is_refused(tmp_path: Path) -> None:
    # Active hours are the gateway's local time: one written with a zone would be read
    # as local.
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - name: still\n"
        "    title: t\n"
        "    device_types: [bracelet]\n"
        "    severity: major\n"
        "    kind: inactivity\n"
        "    when: worn == true\n"
        "    field: steps\n"
        "    unchanged_for_s: 3600\n"
        '    active_hours: "08:00Z-14:00Z"\n',
    )
    assert "still" in error.field and "active_hours" in error.field


def test_thermal_runaway_fires_at_a_rise_of_exactly_5_c_per_minute() -> None:
    # 27.3 to 32.3 °C in a minute is the contract's 5 °C a minute, which fires.
    engine = RuleEngine(shipped_rules(), Registry([]))
    # 1.25 °C every 15 s for a minute, then steady.
    changes = _port_heating(engine, 27.3, [28.55, 29.8, 31.05, 32.3, 32.3, 32.3])
    assert "thermal_runaway_risk" in _fired(changes)


def test_a_rule_asking_another_rate_window_of_a_field_is_refused(tmp_path: Path) -> None:
    # A field's rate has one window: a slow-heating rule's 10 minutes would flatten the
    # thermal runaway rule's 5 °C per minute, which no critical alert would then meet.
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - name: slow_heating\n"
        "    title: t\n"
        "    device_types: [charging_shed]\n"
        "    severity: warning\n"
        "    per_port: true\n"
        "    when: 'temperature_c_per_min >= 1'\n"
        "    rates: {temperature_c: 600}\n",
        shipped=True,
    )
    assert error.field == "rule slow_heating: rates.temperature_c"
    assert "thermal_runaway_risk (charging_shed.yaml)" in error.problem
