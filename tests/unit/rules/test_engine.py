import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import PROJECT_ROOT
from gateway.clock import ManualClock, WallSteps
from gateway.decode.record import (
    DeviceRef,
    Event,
    FieldValue,
    Reading,
    StatusReport,
    TimeSource,
)
from gateway.errors import ConfigError
from gateway.registry import RegisteredDevice, Registry, Site
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.book import AlertBook, AlertError
from gateway.rules.engine import RuleEngine
from gateway.rules.rule import Severity, load_rules
from gateway.rules.silence import Silence, SilenceBook, SilenceError
from gateway.rules.stage import AlertDecision, AlertStage
from gateway.store.outbox import Outbox
from tests.catalogue import SHIPPED_PROFILES, shipped_rules

T0 = 1_767_225_600_000
RULES = shipped_rules()
SMOKE = DeviceRef("hgy", "smoke_detector", "sd-1")
COVER = DeviceRef("hgy", "manhole_cover", "mh-1")
WRIST = DeviceRef("hgy", "bracelet", "br-1")
OTHER_WRIST = DeviceRef("hgy", "bracelet", "br-2")
SHED = DeviceRef("hgy", "charging_shed", "cs-1")


# A resident who lives alone, with a home and a safe radius.
WEARER = RegisteredDevice(
    device_id="br-1",
    device_type="bracelet",
    community="hgy",
    home_lat=34.75,
    home_lon=113.62,
    safe_radius_m=500,
    lives_alone=True,
)


def engine() -> RuleEngine:
    cover = RegisteredDevice(
        device_id="mh-1", device_type="manhole_cover", community="hgy", well_depth_cm=200
    )
    return RuleEngine(RULES, Registry([cover, WEARER]))


def reading(
    device: DeviceRef, t_s: float, port: int | None = None, **fields: FieldValue
) -> Reading:
    return Reading(device, T0 + int(t_s * 1000), TimeSource.DEVICE, fields, port=port)


def event(device: DeviceRef, t_s: float, kind: str, port: int | None = None) -> Event:
    return Event(device, T0 + int(t_s * 1000), TimeSource.DEVICE, kind, {}, port=port)


def states(changes: list[AlertChange]) -> list[tuple[str, AlertState]]:
    """What would be announced: pending alerts, fired or not, are left out."""
    return [(c.rule, c.state) for c in changes if c.fired]


def test_fire_alarm_fires_once_and_clears() -> None:
    e = engine()
    assert states(e.evaluate([reading(SMOKE, 0, alarm=False, battery_pct=90)])) == []
    fired = e.evaluate([event(SMOKE, 1, "alarm")])
    assert states(fired) == [("fire_alarm", AlertState.FIRING)]
    assert fired[0].life_safety and fired[0].severity == "critical"
    # Still alarming: the same alert, not a second one.
    assert e.evaluate([reading(SMOKE, 2, alarm=True), event(SMOKE, 3, "alarm")]) == []
    # Its all-clear, confirmed by the next report at least 10 minutes later: resolved.
    assert e.evaluate([event(SMOKE, 4, "alarm_cleared")]) == []
    cleared = e.evaluate([reading(SMOKE, 3604, alarm=False, battery_pct=90)])
    assert states(cleared) == [("fire_alarm", AlertState.RESOLVED)]
    assert cleared[0].alert_id == fired[0].alert_id


def test_reports_from_before_a_fire_alarm_judged_after_it_do_not_end_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    outbox = Outbox(path)

    def stage() -> AlertStage:
        # The gateway judges them two hours in, after all of them were made.
        return AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()),
                          ManualClock(T0 + 7_200_000))  # fmt: skip

    def judge(on: AlertStage, *records: Reading | Event) -> list[tuple[str, AlertState]]:
        decision = on.evaluate(list(records))
        outbox.commit(decision.lines, [], None, decision.write)
        return states(decision.changes)

    # After an outage the broker hands over the backlog: the alarm, on the alarm lane,
    # is judged first; the hourly reports the detector made before it, on the telemetry
    # lane, after it, and after a restart in between.
    first = stage()
    assert judge(first, event(SMOKE, 5_400, "alarm")) == [("fire_alarm", AlertState.FIRING)]
    first.book.close()
    again = stage()
    assert judge(again, reading(SMOKE, 0, alarm=False), reading(SMOKE, 3_600, alarm=False)) == []
    # Hushed 10 minutes later while the report from just before the alarm came late: the
    # all-clear still needs 10 minutes off and a report after them.
    assert judge(again, event(SMOKE, 6_000, "alarm_cleared")) == []
    assert judge(again, reading(SMOKE, 5_399, alarm=False)) == []
    assert judge(again, reading(SMOKE, 6_300, alarm=False)) == []
    assert judge(again, reading(SMOKE, 6_600, alarm=False)) == [("fire_alarm", AlertState.RESOLVED)]


def test_a_report_from_a_clock_far_ahead_holds_off_the_all_clear_a_quarter_hour_at_most() -> None:
    e = engine()
    # A detector's clock jumps 12 hours ahead for one report, in alarm, judged at T0.
    fired = e.evaluate([reading(SMOKE, 43_200, alarm=True)], now_ms=T0)
    assert states(fired) == [("fire_alarm", AlertState.FIRING)]
    # Its clock right again: reports within a quarter of an hour of the alarm's judging
    # are taken for reports from before it; after that, off for 10 minutes clears it.
    assert e.evaluate([reading(SMOKE, 60, alarm=False)], now_ms=T0 + 60_000) == []
    assert e.evaluate([reading(SMOKE, 900, alarm=False)], now_ms=T0 + 900_000) == []
    cleared = e.evaluate([reading(SMOKE, 1_500, alarm=False)], now_ms=T0 + 1_500_000)
    assert states(cleared) == [("fire_alarm", AlertState.RESOLVED)]


def test_a_gateway_clock_behind_the_devices_lets_no_earlier_report_end_a_fire_alarm() -> None:
    e = engine()
    # The box's clock is 14 minutes behind the detectors'. The alarm comes on its lane;
    # two hourly reports from before it, off, are judged after it.
    assert states(e.evaluate([event(SMOKE, 840, "alarm")], now_ms=T0)) == [
        ("fire_alarm", AlertState.FIRING)
    ]
    assert e.evaluate([reading(SMOKE, 60, alarm=False)], now_ms=T0 + 1_000) == []
    assert e.evaluate([reading(SMOKE, 720, alarm=False)], now_ms=T0 + 2_000) == []
    # Off for 10 minutes after the alarm, as the detector's clock tells it, clears it.
    assert e.evaluate([reading(SMOKE, 900, alarm=False)], now_ms=T0 + 60_000) == []
    cleared = e.evaluate([reading(SMOKE, 1_500, alarm=False)], now_ms=T0 + 660_000)
    assert states(cleared) == [("fire_alarm", AlertState.RESOLVED)]


def test_an_event_repeated_while_its_alert_is_told_joins_it() -> None:
    e = engine()
    first = e.evaluate([event(WRIST, 0, "sos")])
    assert states(first) == [("sos", AlertState.FIRING)]
    # Pressed again and again: the same SOS, already being told.
    for t_s in (30, 200, 700):
        assert e.evaluate([event(WRIST, t_s, "sos")]) == []
    # Another rule's event is an alert of its own.
    assert states(e.evaluate([event(WRIST, 710, "fall")])) == [("fall", AlertState.FIRING)]
    # Ten minutes after the last press, a press is a new SOS.
    assert e.tick(T0 + 1_299_000) == []
    again = e.evaluate([event(WRIST, 1_300, "sos")])
    assert states(again) == [("sos", AlertState.FIRING)]
    assert again[0].alert_id != first[0].alert_id


def test_an_event_repeated_once_a_person_took_its_alert_is_a_new_alert() -> None:
    e = engine()
    (first,) = e.evaluate([event(WRIST, 0, "sos")])
    e.taken = lambda alert_id: alert_id == first.alert_id
    (second,) = e.evaluate([event(WRIST, 60, "sos")])
    assert (second.rule, second.state) == ("sos", AlertState.FIRING)
    assert second.alert_id != first.alert_id


def test_an_sos_pressed_again_after_a_worker_took_the_first_is_told_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    outbox = Outbox(path)
    stage = AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))

    def pressed(t_s: float) -> list[AlertChange]:
        decision = stage.evaluate([event(WRIST, t_s, "sos")])
        outbox.commit(decision.lines, [], None, decision.write)
        return [c for c in decision.changes if c.fired]

    (first,) = pressed(0)
    assert pressed(20) == []
    stage.book.acknowledge(first.alert_id, "网格员 王芳", T0 + 60_000)
    (second,) = pressed(90)
    assert second.alert_id != first.alert_id
    assert [a.alert_id for a in stage.book.open_alerts()] == [first.alert_id, second.alert_id]


def test_an_event_that_joins_an_alert_is_counted_in_it_and_in_its_history(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    outbox = Outbox(path)
    stage = AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))
    joined = []

    def pressed(*times_s: float) -> AlertDecision:
        decision = stage.evaluate([event(WRIST, t_s, "sos") for t_s in times_s])
        outbox.commit(decision.lines, [], None, decision.write)
        joined.extend(r.alert_id for r in decision.repeats)
        return decision

    # The first press and a second in one batch, then two more.
    (first,) = pressed(0, 5).changes
    assert pressed(40).changes == [] and pressed(95).changes == []
    entry = stage.book.get(first.alert_id)
    assert (entry.repeats, entry.repeated_ms) == (3, T0 + 95_000)
    assert joined == [first.alert_id] * 3
    steps = [(s.state, s.at_ms - T0, s.note) for s in stage.book.history(first.alert_id)]
    assert steps == [
        (AlertState.FIRING, 0, None),
        (AlertState.FIRING, 5_000, "repeated"),
        (AlertState.FIRING, 40_000, "repeated"),
        (AlertState.FIRING, 95_000, "repeated"),
    ]
    # Kept across a restart, as the rest of the alert.
    stage.book.close()
    assert AlertBook(path).get(first.alert_id).repeats == 3


def test_an_event_after_a_silence_ended_is_told_not_merged_into_the_muted_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    registry = Registry([RegisteredDevice(device_id="sd-1", device_type="smoke_detector",
                                          community="hgy", building="3")])  # fmt: skip
    outbox, silences, clock = Outbox(path), SilenceBook(path, registry), ManualClock(T0)
    silences.add(author="物业", reason="烟感检修", starts_ms=T0, ends_ms=T0 + 600_000, now_ms=T0,
                 community="hgy", device_id="sd-1")  # fmt: skip
    stage = AlertStage(RuleEngine(RULES, registry, now_ms=T0), AlertBook(path), silences, clock)
    told = []
    for t_s in (540, 900):
        clock.advance((T0 + t_s * 1000 - clock.now_ms()) / 1000)
        decision = stage.evaluate([event(SMOKE, t_s, "tamper")])
        outbox.commit(decision.lines, [], None, decision.write)
        told.append([(c.rule, c.silenced_by is None) for c in decision.changes])
    # Muted in the silence; five minutes after it, taken off the ceiling again: told.
    assert told == [[("smoke_tampering", False)], [("smoke_tampering", True)]]


def test_heart_rate_must_hold_for_60_s_while_worn() -> None:
    e = engine()
    pending = e.evaluate([reading(WRIST, 0, heart_rate_bpm=35, worn=True)])
    assert [(c.rule, c.state, c.fired) for c in pending] == [
        ("abnormal_heart_rate", AlertState.PENDING, False)
    ]
    assert e.evaluate([reading(WRIST, 30, heart_rate_bpm=36, worn=True)]) == []
    # Back to normal before 60 s: the pending alert ends unannounced; the clock restarts.
    ended = e.evaluate([reading(WRIST, 50, heart_rate_bpm=70, worn=True)])
    assert [(c.state, c.fired, c.alert_id) for c in ended] == [
        (AlertState.RESOLVED, False, pending[0].alert_id)
    ]
    assert states(e.evaluate([reading(WRIST, 60, heart_rate_bpm=160, worn=True)])) == []
    fired = e.evaluate([reading(WRIST, 120, heart_rate_bpm=165, worn=True)])
    assert states(fired) == [("abnormal_heart_rate", AlertState.FIRING)]
    assert fired[0].started_ms == T0 + 60_000
    # Not worn: the bracelet on a table says nothing about the wearer.
    assert e.evaluate([reading(WRIST, 0, heart_rate_bpm=0, worn=False)]) == []


def test_flapping_around_a_threshold_gives_one_alert() -> None:
    e = engine()
    changes: list[AlertChange] = []
    # Holds above 60 °C for 30 s, then flaps around the threshold.
    temperatures = [61, 62, 63, 59, 61, 58, 61, 57, 62, 61, 59, 60.5, 61]
    for i, temperature in enumerate(temperatures):
        changes += e.evaluate([reading(SHED, i * 15, port=3, temperature_c=temperature)])
    assert states(changes) == [("port_overheating", AlertState.FIRING)]
    # Clears only below 55 °C held for 60 s.
    changes = []
    for i in range(6):
        changes += e.evaluate([reading(SHED, 200 + i * 15, port=3, temperature_c=50.0)])
    assert states(changes) == [("port_overheating", AlertState.RESOLVED)]


def test_port_rules_keep_one_alert_per_port() -> None:
    e = engine()
    changes = e.evaluate(
        [reading(SHED, 0, port=1, temperature_c=85.0), reading(SHED, 0, port=2, temperature_c=90.0)]
    )
    assert sorted((c.rule, c.port) for c in changes if c.fired) == [
        ("thermal_runaway_risk", 1),
        ("thermal_runaway_risk", 2),
    ]
    assert e.evaluate([reading(SHED, 15, port=1, temperature_c=86.0)]) == []


def test_overflow_uses_each_wells_depth_and_hysteresis() -> None:
    e = engine()
    assert e.evaluate([reading(COVER, 0, water_level_cm=150.0)]) == []
    assert states(e.evaluate([reading(COVER, 600, water_level_cm=161.0)])) == [
        ("overflow_risk", AlertState.FIRING)
    ]
    assert e.evaluate([reading(COVER, 1200, water_level_cm=150.0)]) == []
    assert e.evaluate([reading(COVER, 1800, water_level_cm=130.0)]) == []
    assert states(e.evaluate([reading(COVER, 2400, water_level_cm=120.0)])) == [
        ("overflow_risk", AlertState.RESOLVED)
    ]
    # An unregistered cover has no depth: the rule cannot judge it and stays quiet.
    other = DeviceRef("hgy", "manhole_cover", "mh-unknown")
    assert e.evaluate([reading(other, 0, water_level_cm=999.0)]) == []


def test_left_safe_area_by_distance_from_home() -> None:
    e = engine()
    assert e.evaluate([reading(WRIST, 0, lat=34.7510, lon=113.6210)]) == []
    fired = e.evaluate([reading(WRIST, 60, lat=34.7600, lon=113.6200)])  # about 1.1 km north
    assert states(fired) == [("left_safe_area", AlertState.FIRING)]
    assert e.evaluate([reading(WRIST, 120, lat=34.7501, lon=113.6201)]) == []
    assert states(e.evaluate([reading(WRIST, 420, lat=34.7502, lon=113.6200)])) == [
        ("left_safe_area", AlertState.RESOLVED)
    ]


@pytest.mark.parametrize(
    ("records", "rule"),
    [
        ([reading(SMOKE, 0, battery_pct=12)], "smoke_low_battery"),
        ([event(SMOKE, 0, "tamper")], "smoke_tampering"),
        ([reading(COVER, 0, lid_open=True, tilt_deg=2.0)], "cover_open"),
        ([event(COVER, 0, "displaced")], "cover_open"),
        ([reading(COVER, 0, ch4_ppm=6000.0)], "sewer_gas"),
        ([reading(WRIST, 0, battery_pct=10)], "bracelet_low_battery"),
        ([reading(SHED, 0, smoke=True, ambient_temp_c=30.0)], "shed_fire"),
        ([event(SHED, 0, "smoke_alarm")], "shed_fire"),
        ([reading(SHED, 0, port=4, current_a=12.5)], "over_current"),
    ],
)
def test_each_default_rule_fires(records: list[Reading | Event], rule: str) -> None:
    assert (rule, AlertState.FIRING) in states(engine().evaluate(records))


def test_a_broken_rule_file_names_file_rule_and_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "rules:\n  - {name: hot, title: Hot, device_types: [x], severity: major, when: 'temp >> 3'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_rules(tmp_path, SHIPPED_PROFILES)
    assert info.value.file == str(tmp_path / "bad.yaml")
    assert info.value.field == "rule hot: condition"
    assert "not allowed" in info.value.problem
    (tmp_path / "bad.yaml").write_text(
        "rules:\n  - {name: hot, title: Hot, device_types: [x], severity: urgent, when: 'a > 1'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_rules(tmp_path, SHIPPED_PROFILES)
    assert info.value.field == "rule hot: severity"
    (tmp_path / "bad.yaml").write_text(
        "rules:\n  - {name: hot, title: Hot, device_types: [x], severity: info, when: '__import__(1)'}\n"
    )
    with pytest.raises(ConfigError, match="not allowed"):
        load_rules(tmp_path, SHIPPED_PROFILES)


@pytest.mark.parametrize(
    ("rule", "field", "problem"),
    [
        ("device_types: [bracelet], when: 'heart_rat_bpm > 150'",
         "condition", "'heart_rat_bpm' is not a field that bracelet sends"),
        ("device_types: [bracelet], when: 'heart_rate_bpm > 150', clear_when: 'hr < 140'",
         "condition", "'hr' is not a field that bracelet sends"),
        ("device_types: [bracelet], kind: event, when: \"event in ('sos', 'sso')\"",
         "condition", "no event 'sso' is sent by bracelet"),
        ("device_types: [braclet], kind: event, when: \"event == 'sos'\"",
         "device_types", "no device profile is of type 'braclet'"),
        ("device_types: [charging_shed], when: 'x_per_min > 5', rates: {x: 60}",
         "rates", "'x' is not a field that charging_shed sends"),
        ("device_types: [bracelet], kind: inactivity, field: step, unchanged_for_s: 60",
         "field", "'step' is not a field that bracelet sends"),
        ("device_types: ['*'], when: 'battery < 10'",
         "condition", "'battery' is not a field that any of bracelet, charging_shed"),
        ("device_types: [bracelet], when: 'heart_rate_bpm > 150', merge_s: 60",
         "merge_s", "only rules of kind event take merge_s"),
    ],
)  # fmt: skip
def test_a_rule_that_could_never_fire_is_refused(
    tmp_path: Path, rule: str, field: str, problem: str
) -> None:
    # A misspelt field or event kind would leave the rule silent for good: an SOS rule
    # waiting for 'sso' would never tell anyone of an SOS.
    (tmp_path / "own.yaml").write_text(
        f"rules:\n  - {{name: own, title: Own, severity: critical, {rule}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_rules(tmp_path, SHIPPED_PROFILES)
    assert info.value.file == str(tmp_path / "own.yaml")
    assert info.value.field == f"rule own: {field}"
    assert problem in info.value.problem


def test_a_rule_reads_what_any_profile_of_its_device_type_sends(tmp_path: Path) -> None:
    # Only the ACME frame's smoke detectors report tampering; the JSON ones do not.
    (tmp_path / "own.yaml").write_text(
        "rules:\n  - {name: tampered, title: Tampered, severity: warning,"
        " device_types: [smoke_detector], when: 'tamper == true'}\n"
    )
    assert [rule.name for rule in load_rules(tmp_path, SHIPPED_PROFILES)] == ["tampered"]


def test_alert_state_and_timers_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    outbox = Outbox(path)
    stage = AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))

    def commit(decision: AlertDecision) -> None:
        outbox.commit(decision.lines, [], None, decision.write)

    fired = stage.evaluate([event(SMOKE, 0, "alarm")])
    commit(fired)
    # Mid-way through a for-duration: heart rate low for 30 of the 60 s.
    commit(stage.evaluate([reading(WRIST, 0, heart_rate_bpm=35, worn=True)]))
    commit(stage.evaluate([reading(WRIST, 30, heart_rate_bpm=35, worn=True)]))
    stage.book.close()

    after = AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))
    # The fire alarm is still firing: another alarm is not a new alert...
    assert after.evaluate([event(SMOKE, 5, "alarm")]).changes == []
    # ...and its all-clear, confirmed by the next report, resolves the alert fired
    # before the restart.
    assert after.evaluate([event(SMOKE, 10, "alarm_cleared")]).changes == []
    cleared = after.evaluate([reading(SMOKE, 3610, alarm=False)])
    assert [(c.state, c.alert_id) for c in cleared.changes] == [
        (AlertState.RESOLVED, fired.changes[0].alert_id)
    ]
    # The heart-rate timer carried on: 60 s after it started, it fires.
    late = after.evaluate([reading(WRIST, 60, heart_rate_bpm=35, worn=True)])
    assert states(late.changes) == [("abnormal_heart_rate", AlertState.FIRING)]
    # Alert changes go to the time series too.
    assert late.lines[0].startswith("alert,community=hgy,device_id=br-1,device_type=bracelet,")
    assert 'state="firing"' in late.lines[0]


def test_the_alert_lifecycle_with_who_and_when(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    outbox = Outbox(path)
    stage = AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))
    decision = stage.evaluate([reading(SHED, 0, port=2, temperature_c=85.0)])
    outbox.commit(decision.lines, [], None, decision.write)
    # Over 60 °C too, but not yet for 30 s: the overheating alert is pending.
    pending, alert = sorted(stage.book.open_alerts(), key=lambda a: a.rule)
    assert (pending.rule, pending.state) == ("port_overheating", AlertState.PENDING)
    assert stage.book.count_fired_open() == 1
    assert (alert.rule, alert.port, alert.state) == ("thermal_runaway_risk", 2, AlertState.FIRING)
    stage.book.acknowledge(alert.alert_id, "网格员 王芳", T0 + 60_000)
    with pytest.raises(AlertError, match="acknowledged by 网格员 王芳"):
        stage.book.acknowledge(alert.alert_id, "someone else", T0 + 61_000)
    decision = stage.evaluate(
        [reading(SHED, t, port=2, temperature_c=40.0) for t in (100, 160, 220, 300)]
    )
    outbox.commit(decision.lines, [], None, decision.write)
    assert stage.book.get(alert.alert_id).state is AlertState.RESOLVED
    closed = stage.book.close_alert(
        alert.alert_id, "网格员 王芳", T0 + 400_000, "充电器故障，已断电"
    )
    assert (closed.state, closed.note) == (AlertState.CLOSED, "充电器故障，已断电")
    assert stage.book.open_alerts() == []
    assert stage.book.count_fired_open() == 0
    assert [(s.state, s.actor) for s in stage.book.history(pending.alert_id)] == [
        (AlertState.PENDING, "rules"),
        (AlertState.RESOLVED, "rules"),
    ]
    assert [(s.state, s.actor) for s in stage.book.history(alert.alert_id)] == [
        (AlertState.FIRING, "rules"),
        (AlertState.ACKNOWLEDGED, "网格员 王芳"),
        (AlertState.RESOLVED, "rules"),
        (AlertState.CLOSED, "网格员 王芳"),
    ]
    with pytest.raises(AlertError, match="already closed"):
        stage.book.close_alert(alert.alert_id, "x", T0, "")
    with pytest.raises(AlertError, match="no alert"):
        stage.book.get("nope")


def test_thermal_runaway_by_rate_of_rise_before_80_c() -> None:
    e = engine()
    changes: list[AlertChange] = []
    # A port at a steady 40 °C, then rising 2 °C every 15 s (8 °C per minute).
    for i in range(8):
        changes += e.evaluate([reading(SHED, i * 15, port=2, temperature_c=40.0)])
    assert changes == []
    temperature = 40.0
    for i in range(8, 16):
        temperature += 2.0
        changes += e.evaluate([reading(SHED, i * 15, port=2, temperature_c=temperature)])
    fired = [c for c in changes if c.rule == "thermal_runaway_risk"]
    assert [(c.state, c.port) for c in fired] == [(AlertState.FIRING, 2)]
    assert fired[0].values["temperature_c"] < 60
    # A neighbouring port at a steady 45 °C is not part of it.
    assert e.evaluate([reading(SHED, 300, port=5, temperature_c=45.0)]) == []


def test_a_silent_device_goes_offline_and_comes_back() -> None:
    e = RuleEngine(
        RULES,
        Registry(
            [RegisteredDevice(device_id="sd-2", device_type="smoke_detector", community="hgy")]
        ),
        {"bracelet": 60.0, "smoke_detector": 3600.0},
        now_ms=T0,
    )
    e.evaluate([reading(WRIST, 0, heart_rate_bpm=70)])
    assert e.tick(T0 + 10_000) == []
    assert e.tick(T0 + 149_000) == []
    offline = e.tick(T0 + 151_000)
    assert [(c.rule, c.device.device_id, c.state) for c in offline] == [
        ("device_offline", "br-1", AlertState.FIRING)
    ]
    assert e.tick(T0 + 300_000) == []  # still the same alert
    # A registered detector that never reported is found too, after 2.5 hours.
    later = e.tick(T0 + 9_001_000)
    assert [(c.device.device_id, c.state) for c in later] == [("sd-2", AlertState.FIRING)]
    back = e.evaluate([reading(WRIST, 400, heart_rate_bpm=72)])
    assert [(c.rule, c.state, c.alert_id) for c in back] == [
        ("device_offline", AlertState.RESOLVED, offline[0].alert_id)
    ]


def test_per_device_thresholds_with_a_default(tmp_path: Path) -> None:
    from gateway.registry import load_registry

    path = tmp_path / "devices.csv"
    path.write_text(
        "device_id,device_type,community,thresholds\n"
        "br-athlete,bracelet,hgy,min_heart_rate_bpm=32;max_heart_rate_bpm=175\n"
        "br-1,bracelet,hgy,\n"
    )
    e = RuleEngine(RULES, load_registry(path))
    athlete = DeviceRef("hgy", "bracelet", "br-athlete")
    for t in (0, 60):
        assert e.evaluate([reading(athlete, t, heart_rate_bpm=36, worn=True)]) == []
        assert e.evaluate([reading(athlete, t, heart_rate_bpm=160, worn=True)]) == []
    e.evaluate([reading(WRIST, 0, heart_rate_bpm=36, worn=True)])
    fired = e.evaluate([reading(WRIST, 60, heart_rate_bpm=36, worn=True)])
    assert states(fired) == [("abnormal_heart_rate", AlertState.FIRING)]
    path.write_text("device_id,device_type,community,thresholds\nb,bracelet,hgy,max=\n")
    with pytest.raises(ConfigError, match="thresholds"):
        load_registry(path)


def test_a_silence_mutes_maintenance_but_never_a_life_safety_alert(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    registry = Registry(
        [
            RegisteredDevice(
                device_id="cs-1", device_type="charging_shed", community="hgy", building="5号楼"
            ),
            RegisteredDevice(
                device_id="sd-1", device_type="smoke_detector", community="hgy", building="5号楼"
            ),
        ]
    )
    clock = ManualClock(T0)
    silences = SilenceBook(path, registry)
    stage = AlertStage(RuleEngine(RULES, registry), AlertBook(path), silences, clock)
    outbox = Outbox(path)
    maintenance = silences.add(
        author="物业 李强", reason="更换充电桩", community="hgy", building="5号楼",
        starts_ms=T0, ends_ms=T0 + 3_600_000, now_ms=T0,
    )  # fmt: skip
    decision = stage.evaluate([reading(SHED, 0, port=1, current_a=12.0), event(SMOKE, 0, "alarm")])
    outbox.commit(decision.lines, [], None, decision.write)
    by_rule = {c.rule: c for c in decision.changes}
    assert by_rule["over_current"].silenced_by == maintenance.id
    assert by_rule["fire_alarm"].silenced_by is None
    assert by_rule["fire_alarm"].silence_overridden == maintenance.id
    (step,) = stage.book.history(by_rule["fire_alarm"].alert_id)
    assert step.note is not None and "overridden" in step.note
    assert stage.book.history(by_rule["over_current"].alert_id)[0].note == (
        f"muted by silence {maintenance.id}"
    )
    # Expired: the next alert goes out again.
    clock.advance(3601)
    later = stage.evaluate([reading(SMOKE, 4000, battery_pct=5)])
    assert [c.silenced_by for c in later.changes] == [None]
    # Kept across a restart, and can be lifted early.
    again = SilenceBook(path, registry)
    assert [s.reason for s in again.current(T0)] == ["更换充电桩"]
    again.end(maintenance.id, T0)
    assert again.current(T0) == []


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"author": "", "reason": "x", "device_id": "a"}, "author and a reason"),
        ({"author": "a", "reason": "x"}, "a device, a place or a rule"),
        ({"author": "a", "reason": "x", "building": "5号楼"}, "within its community"),
        (
            {"author": "a", "reason": "x", "rule": "fire_alarm", "starts_ms": T0 + 2000},
            "end after",
        ),
        ({"author": "a", "reason": "x", "rule": "fire_alarm", "ends_ms": T0}, "already past"),
    ],
)
def test_a_silence_must_say_what_when_who_and_why(
    tmp_path: Path, kwargs: dict[str, object], problem: str
) -> None:
    silences = SilenceBook(tmp_path / "s.sqlite3", Registry())
    arguments: dict[str, object] = {"starts_ms": T0, "ends_ms": T0 + 1000, "now_ms": T0, **kwargs}
    with pytest.raises(SilenceError, match=problem):
        silences.add(**arguments)  # type: ignore[arg-type]


def test_an_alert_change_is_matched_against_the_silences_not_yet_ended_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ended silences stay in the book for years (retention.alerts_days): a district's
    # 150 desks, a maintenance window a week each, keep 20,000. Matched against all of
    # them, a tick that found 60,000 devices offline held the event loop 74 s.
    device = RegisteredDevice(
        device_id="sd-1", device_type="smoke_detector", community="hgy", area="east",
        compound="lakeside", building="3",
    )  # fmt: skip
    book = SilenceBook(tmp_path / "outbox.sqlite3", Registry([device]))
    kept = 2000
    try:
        for i in range(kept):
            start_ms = T0 + i * 7_200_000
            book.add(author="desk", reason="detector maintenance", starts_ms=start_ms,
                     ends_ms=start_ms + 3_600_000, community="hgy", rule="device_offline",
                     now_ms=start_ms)  # fmt: skip
        now_ms = T0 + kept * 7_200_000 + 86_400_000
        assert book.current(now_ms) == []
        looked_at = [0]
        original = Silence.matches

        def counting(self: Silence, *args: Any) -> bool:
            looked_at[0] += 1
            return original(self, *args)

        monkeypatch.setattr(Silence, "matches", counting)

        def offline(at_ms: int) -> AlertChange:
            return AlertChange(
                alert_id="device_offline:hgy:sd-1:1", rule="device_offline", title="offline",
                severity=Severity("warning"), life_safety=False, device=SMOKE, port=None,
                state=AlertState.FIRING, started_ms=at_ms, at_ms=at_ms, values={},
            )  # fmt: skip

        assert book.matching(offline(now_ms), now_ms) is None
        assert looked_at[0] <= 10, f"{looked_at[0]} ended silences looked at for one alert"
        # The wall clock set back into the last of them (NTP correcting a clock that ran
        # ahead): it mutes as it did.
        last_ms = T0 + (kept - 1) * 7_200_000 + 60_000
        muted = book.matching(offline(last_ms), last_ms)
        assert muted is not None and muted.starts_ms == last_ms - 60_000
        assert [s.id for s in book.current(last_ms)] == [muted.id]
        # Of the silences that match, the first made is named, whichever community
        # it is of.
        everywhere = book.add(author="office", reason="carrier outage", starts_ms=now_ms,
                              ends_ms=now_ms + 3_600_000, rule="device_offline",
                              now_ms=now_ms)  # fmt: skip
        book.add(author="desk", reason="rewiring", starts_ms=now_ms, ends_ms=now_ms + 600_000,
                 community="hgy", now_ms=now_ms)  # fmt: skip
        assert book.matching(offline(now_ms), now_ms) == everywhere
    finally:
        book.close()


def test_a_silence_of_a_place_mutes_an_alert_by_where_it_began(tmp_path: Path) -> None:
    # The notifier asks again of an alert a silence muted; its device taken out of the
    # registry since, the building's silence still mutes it, as it began there.
    device = RegisteredDevice(
        device_id="sd-1", device_type="smoke_detector", community="hgy", building="3"
    )
    book = SilenceBook(tmp_path / "outbox.sqlite3", Registry([device]))
    try:
        silence = book.add(author="desk", reason="rewiring", starts_ms=T0, ends_ms=T0 + 600_000,
                           community="hgy", building="3", now_ms=T0)  # fmt: skip
        book.use_registry(Registry())
        change = AlertChange(
            alert_id="smoke_low_battery:hgy:sd-1:1", rule="smoke_low_battery", title="low",
            severity=Severity("info"), life_safety=False, device=SMOKE, port=None,
            state=AlertState.FIRING, started_ms=T0, at_ms=T0, values={},
        )  # fmt: skip
        assert book.matching(change, T0) is None
        assert book.matching(change, T0, Site("hgy", "east", "lakeside", "3")) == silence
        assert book.matching(change, T0, Site("hgy", "east", "lakeside", "4")) is None
    finally:
        book.close()


def test_no_activity_counts_only_daytime_for_someone_living_alone() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Asia/Shanghai")
    e = engine()

    def at(day: int, hour: int, minute: int = 0) -> float:
        moment = datetime(2026, 1, day, hour, minute, tzinfo=zone).timestamp()
        return moment - T0 / 1000

    # Steps stop changing at 18:00 on the 2nd; the night (22:00-07:00) does not count.
    assert e.evaluate([reading(WRIST, at(2, 18), steps=4200, worn=True)]) == []
    for hour in (20, 23):
        assert e.evaluate([reading(WRIST, at(2, hour), steps=4200, worn=True)]) == []
    # 18:00-22:00 is 4 h; by 14:59 next day 7 h 59 min more: 11 h 59 min, not yet.
    assert e.evaluate([reading(WRIST, at(3, 14, 59), steps=4200, worn=True)]) == []
    assert e.tick(T0 + int(at(3, 14, 59) * 1000)) == []
    # At 15:00, 12 h of daytime: found by the timer, without a new reading.
    fired = e.tick(T0 + int(at(3, 15, 1) * 1000))
    assert [(c.rule, c.device.device_id, c.state) for c in fired] == [
        ("no_activity", "br-1", AlertState.FIRING)
    ]
    assert fired[0].device.device_type == "bracelet"
    # The first steps resolve it.
    back = e.evaluate([reading(WRIST, at(3, 16), steps=4230, worn=True)])
    assert [(c.rule, c.state) for c in back] == [("no_activity", AlertState.RESOLVED)]


@pytest.mark.parametrize(("steps_after", "fires"), [(4200, True), (4800, False)])
def test_no_activity_waits_for_the_bracelet_after_the_gateway_did_not_listen(
    steps_after: int, fires: bool
) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("Asia/Shanghai")
    e = engine()

    def at(hour: int, minute: int = 0) -> float:
        moment = datetime(2026, 1, 2, hour, minute, tzinfo=zone).timestamp()
        return moment - T0 / 1000

    # Steps last changed at 08:00; the broker was down from 09:00 to 21:00.
    assert e.evaluate([reading(WRIST, at(8), steps=4200, worn=True)]) == []
    assert e.tick(T0 + int(at(9) * 1000)) == []
    assert e.tick(T0 + int(at(21) * 1000), listening=False) == []
    # Back at 21:01: 13 h of daytime since the steps changed, but 12 of them unheard,
    # when the bracelet may have counted steps it could not send.
    assert e.tick(T0 + int(at(21, 1) * 1000)) == []
    # Its first report after tells: the same count vouches for the whole day.
    changes = e.evaluate([reading(WRIST, at(21, 5), steps=steps_after, worn=True)])
    assert [(c.rule, c.state) for c in changes] == (
        [("no_activity", AlertState.FIRING)] if fires else []
    )
    if fires:
        assert changes[0].values["unchanged_s"] == 13 * 3600 + 5 * 60


def test_no_activity_ignores_a_bracelet_not_worn_and_people_not_alone() -> None:
    e = engine()
    for hour in range(0, 48, 2):
        assert e.evaluate([reading(WRIST, hour * 3600, steps=10, worn=False)]) == []
    assert e.tick(T0 + 48 * 3_600_000) == []
    other = DeviceRef("hgy", "bracelet", "br-family")  # not registered as living alone
    for hour in range(0, 48, 2):
        assert e.evaluate([reading(other, hour * 3600, steps=10, worn=True)]) == []
    assert e.tick(T0 + 48 * 3_600_000) == []


def test_daily_window_arithmetic() -> None:
    from zoneinfo import ZoneInfo

    from gateway.rules.schedule import DailyWindow

    zone = ZoneInfo("Asia/Shanghai")
    day = DailyWindow.parse("07:00-22:00")
    night = DailyWindow.parse("22:00-06:00")
    midnight = 1_767_196_800_000  # 2026-01-01 00:00 in Shanghai
    hour = 3_600_000
    assert day.seconds_within(midnight, midnight + 24 * hour, zone) == 15 * 3600
    assert night.seconds_within(midnight, midnight + 24 * hour, zone) == 8 * 3600
    assert night.contains(midnight + 23 * hour, zone) and not night.contains(
        midnight + 12 * hour, zone
    )
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        DailyWindow.parse("7am-10pm")


def test_several_detectors_in_one_building_make_one_building_alert() -> None:
    registry = Registry(
        [
            RegisteredDevice(
                device_id=f"sd-{i}", device_type="smoke_detector", community="hgy", building=b
            )
            for i, b in ((1, "3号楼"), (2, "3号楼"), (3, "3号楼"), (4, "5号楼"))
        ]
    )
    e = RuleEngine(RULES, registry, {"smoke_detector": 3600.0})
    detector = [DeviceRef("hgy", "smoke_detector", f"sd-{i}") for i in range(5)]

    def building_alerts(changes: list[AlertChange]) -> list[tuple[str, str, AlertState]]:
        return [
            (c.device.device_id, c.device.device_type, c.state)
            for c in changes
            if c.rule == "building_fire"
        ]

    assert building_alerts(e.evaluate([event(detector[1], 0, "alarm")])) == []
    # Another building's detector is not the same fire.
    assert building_alerts(e.evaluate([event(detector[4], 30, "alarm")])) == []
    # Too late to be the same fire: outside the five-minute window.
    assert building_alerts(e.evaluate([event(detector[2], 400, "alarm")])) == []
    fired = e.evaluate([event(detector[3], 500, "alarm")])
    assert building_alerts(fired) == [("3号楼", "building", AlertState.FIRING)]
    assert [c.values["devices"] for c in fired if c.rule == "building_fire"] == ["sd-2,sd-3"]
    # A third detector joins the same alert.
    assert building_alerts(e.evaluate([event(detector[1], 520, "alarm")])) == []
    # Five minutes with no new detector: the detectors still alarm, the fire goes on.
    assert building_alerts(e.tick(T0 + 900_000)) == []
    # It is over when the last of them says its alarm is.
    quiet = [reading(detector[i], 1_000, alarm=False, battery_pct=90) for i in (2, 3)]
    assert building_alerts(e.evaluate(quiet)) == []
    over = e.evaluate([reading(detector[1], 1_100, alarm=False, battery_pct=90)])
    assert building_alerts(over) == [("3号楼", "building", AlertState.RESOLVED)]


def test_a_building_alert_whose_detectors_fell_silent_ends_as_they_would_be_offline() -> None:
    e = RuleEngine(RULES, one_building(2), {"smoke_detector": 3600.0})
    detectors = [DeviceRef("hgy", "smoke_detector", f"sd-{i}") for i in (1, 2)]
    fired = e.evaluate([event(d, t, "alarm") for d, t in zip(detectors, (0, 60), strict=True)])
    assert [c.state for c in fired if c.rule == "building_fire"] == [AlertState.FIRING]
    e.tick(T0 + 100_000)
    # Burned, or their battery out: neither says anything more.
    assert [c.rule for c in e.tick(T0 + 9_059_000) if c.rule == "building_fire"] == []
    over = [c for c in e.tick(T0 + 9_061_000) if c.rule == "building_fire"]
    assert [c.state for c in over] == [AlertState.RESOLVED]


def restarted_pair(tmp_path: Path, restart_s: float) -> AlertStage:
    """Two bracelets, one heard at 0 s and the other at 100 s (a bracelet is offline
    after 150 s of silence); the gateway stops then, and starts again at `restart_s`."""
    path = tmp_path / "state.sqlite3"
    outbox = Outbox(path)

    def stage(now_ms: int) -> AlertStage:
        return AlertStage(
            RuleEngine(RULES, Registry(), {"bracelet": 60.0}, now_ms=now_ms),
            AlertBook(path),
            SilenceBook(path, Registry()),
            ManualClock(now_ms),
        )

    first = stage(T0)
    for record in (
        reading(WRIST, 0, heart_rate_bpm=70),
        reading(OTHER_WRIST, 100, heart_rate_bpm=70),
    ):
        decision = first.evaluate([record])
        outbox.commit(decision.lines, [], None, decision.write)
    return stage(T0 + int(restart_s * 1000))


def offline(changes: list[AlertChange]) -> list[tuple[str, int]]:
    return [(c.device.device_id, int(c.values["silent_s"])) for c in changes if c.fired]


def test_offline_timers_carry_on_across_a_restart(tmp_path: Path) -> None:
    # Down from 100 s to 200 s, and nothing queued meanwhile: the broker may have been
    # down too, so that time is not counted. The 100 s br-1 was silent before it is.
    stage = restarted_pair(tmp_path, 200)
    assert stage.tick(T0 + 205_000).changes == []
    assert stage.tick(T0 + 249_000).changes == []
    assert offline(stage.tick(T0 + 251_000).changes) == [("br-1", 251)]


def test_a_backlog_kept_by_the_broker_counts_the_downtime_as_silence(tmp_path: Path) -> None:
    # Down for an hour; the broker kept br-2's readings from 110 s on, none from br-1.
    stage = restarted_pair(tmp_path, 3_600)
    for t in range(110, 3_600, 60):
        stage.evaluate([reading(OTHER_WRIST, t, heart_rate_bpm=70)])
    assert offline(stage.tick(T0 + 3_601_000).changes) == [("br-1", 3_590)]


def test_after_a_power_cut_devices_are_not_all_offline_at_once(tmp_path: Path) -> None:
    # The broker was down too for three hours: what comes first is live, beside a
    # retained status from the day before.
    stage = restarted_pair(tmp_path, 10_800)
    retained = StatusReport(OTHER_WRIST, T0 - 86_400_000, TimeSource.DEVICE, True)
    stage.evaluate([retained, reading(OTHER_WRIST, 10_830, heart_rate_bpm=70)])
    assert stage.tick(T0 + 10_831_000).changes == []
    # br-1: 100 s of silence before the cut and 50 s after it.
    assert stage.tick(T0 + 10_849_000).changes == []
    assert offline(stage.tick(T0 + 10_851_000).changes) == [("br-1", 10_851)]


class Restarts:
    """Alert stages on one state file, as a gateway that stops and starts again makes
    them; each decision is committed as the pipeline commits it."""

    def __init__(
        self, path: Path, registry: Registry, periods: dict[str, float] | None = None
    ) -> None:
        self.path = path
        self.registry = registry
        self.periods = periods or {"bracelet": 60.0}
        self.outbox = Outbox(path)

    def start(self, now_ms: int, clock: ManualClock | None = None) -> AlertStage:
        return AlertStage(
            RuleEngine(RULES, self.registry, self.periods, now_ms=now_ms),
            AlertBook(self.path),
            SilenceBook(self.path, self.registry),
            clock or ManualClock(now_ms),
        )

    def commit(self, decision: AlertDecision) -> list[AlertChange]:
        self.outbox.commit(decision.lines, [], None, decision.write)
        return decision.changes


HOUR_MS = 3_600_000
DETECTORS = [DeviceRef("hgy", "smoke_detector", f"sd-{i}") for i in range(1, 6)]


def booted_behind(path: Path) -> tuple[AlertStage, ManualClock, Restarts]:
    """Five hourly detectors heard in the gateway's last minute (sd-1 at 0 s ... sd-5 at
    40 s); then a 3-hour power cut. Without an RTC battery the box boots with the clock
    it saved at shutdown (60 s), 3 hours behind; NTP sets it right 30 s after."""
    gateway = Restarts(path, Registry(), {"smoke_detector": 3600.0})
    first = gateway.start(T0)
    for i, detector in enumerate(DETECTORS):
        gateway.commit(first.evaluate([reading(detector, i * 10, alarm=False)]))
    first.book.close()
    clock = ManualClock(T0 + 60_000)
    second = gateway.start(clock.now_ms(), clock)
    clock.advance(30)
    clock.step(3 * 3600)
    return second, clock, gateway


def ticked_offline(stage: AlertStage, clock: ManualClock, gateway: Restarts) -> list[str]:
    return sorted(c.device.device_id for c in gateway.commit(stage.tick(clock.now_ms())) if c.fired)


@pytest.mark.parametrize("live_first", [True, False], ids=["live-first", "tick-first"])
def test_a_clock_set_right_after_a_power_cut_makes_no_detector_offline(
    tmp_path: Path, live_first: bool
) -> None:
    stage, clock, gateway = booted_behind(tmp_path / "state.sqlite3")
    # The broker was down too: what comes is live, sd-1 with a right clock of its own;
    # it may come before the first check after the step, or after it.
    live = Reading(DETECTORS[0], clock.now_ms(), TimeSource.DEVICE, {"alarm": False})
    if live_first:
        stage.evaluate([live])
    else:
        clock.advance(5)
        assert ticked_offline(stage, clock, gateway) == []
        stage.evaluate([live])
    # The 3 hours skipped are not silence: none is offline for 2.5 h of listening...
    booted_ms = T0 + 3 * HOUR_MS + 60_000
    while clock.now_ms() < booted_ms + 8_900_000:
        clock.advance(60)
        assert ticked_offline(stage, clock, gateway) == []
    # ...then each is, counting what it was silent before the cut: sd-2 30 s, sd-5 none,
    # sd-1 silent since its live report, 30 s after the boot.
    clock.advance((booted_ms + 8_960_000 - clock.now_ms()) / 1000)
    fired = []
    for _ in range(8):
        clock.advance(10)
        since_boot_s = (clock.now_ms() - booted_ms) // 1000
        fired += [(since_boot_s, d) for d in ticked_offline(stage, clock, gateway)]
    assert fired == [(8_970, "sd-2"), (8_980, "sd-3"), (8_990, "sd-4"), (9_000, "sd-5"),
                     (9_030, "sd-1")]  # fmt: skip


def test_a_backlog_counts_the_downtime_as_silence_when_the_clock_was_set_right(
    tmp_path: Path,
) -> None:
    stage, clock, gateway = booted_behind(tmp_path / "state.sqlite3")
    clock.advance(5)
    assert ticked_offline(stage, clock, gateway) == []
    # The broker (elsewhere, powered) kept sd-1's reports from 10 minutes after the cut:
    # the others said nothing in those 3 hours, and are offline.
    backlog = [reading(DETECTORS[0], t, alarm=False) for t in (600, 4_200, 7_800, 10_800)]
    stage.evaluate(backlog)
    clock.advance(5)
    assert ticked_offline(stage, clock, gateway) == ["sd-2", "sd-3", "sd-4", "sd-5"]


def test_a_clock_set_forward_hides_no_device_silent_for_longer_than_its_limit() -> None:
    # The gateway's clock an hour behind; bracelets heard every 10 s: br-1 and br-2 with
    # their own (right) clocks, br-3 without one (the gateway's time stands in). br-2 and
    # br-3 stop at 100 s; NTP sets the clock right at 120 s.
    clock = ManualClock(T0 - HOUR_MS)
    e = RuleEngine(RULES, Registry(), {"bracelet": 60.0}, now_ms=clock.now_ms())
    steps = WallSteps(clock)
    no_clock = DeviceRef("hgy", "bracelet", "br-3")
    fired: list[tuple[int, str]] = []
    for t in range(10, 400, 10):
        clock.advance(10)
        if t == 120:
            clock.step(3600)
        records = [reading(WRIST, t, heart_rate_bpm=70)]
        if t <= 100:
            records += [
                reading(OTHER_WRIST, t, heart_rate_bpm=70),
                Reading(no_clock, clock.now_ms(), TimeSource.GATEWAY, {"heart_rate_bpm": 70}),
            ]
        e.evaluate(records)
        e.clock_set(clock.now_ms(), steps.taken_ms())
        fired += [(t, c.device.device_id) for c in e.tick(clock.now_ms()) if c.fired]
    # Offline once silent for 150 s, each: the step neither hides nor makes silence.
    assert fired == [(250, "br-2"), (250, "br-3")]


def test_a_clock_set_back_does_not_hold_off_offline_by_the_step() -> None:
    # The box's clock ran an hour ahead; NTP sets it back at 120 s. Bracelets without a
    # clock of their own (the gateway's time stands in): br-2 stops at 100 s.
    clock = ManualClock(T0)
    e = RuleEngine(RULES, Registry(), {"bracelet": 60.0}, now_ms=clock.now_ms())
    steps = WallSteps(clock)
    fired: list[tuple[int, str, FieldValue]] = []
    for t in range(10, 400, 10):
        clock.advance(10)
        if t == 120:
            clock.step(-3600)
        devices = [WRIST, OTHER_WRIST] if t <= 100 else [WRIST]
        e.evaluate(
            [
                Reading(d, clock.now_ms(), TimeSource.GATEWAY, {"heart_rate_bpm": 70})
                for d in devices
            ]
        )
        e.clock_set(clock.now_ms(), steps.taken_ms())
        changes = e.tick(clock.now_ms())
        fired += [(t, c.device.device_id, c.values["silent_s"]) for c in changes if c.fired]
    assert fired == [(250, "br-2", 150)]


def test_a_clock_set_back_does_not_hold_off_an_all_clear_by_the_step() -> None:
    # The box's clock ran an hour ahead; NTP sets it back at 120 s. A detector without a
    # clock of its own (the gateway's time stands in) alarms at 10 s, off from 60 s on.
    clock = ManualClock(T0)
    e = RuleEngine(RULES, Registry(), {"smoke_detector": 3600.0}, now_ms=clock.now_ms())
    steps = WallSteps(clock)
    cleared: list[int] = []
    for t in range(10, 1000, 10):
        clock.advance(10)
        if t == 120:
            clock.step(-3600)
        stamped = Reading(SMOKE, clock.now_ms(), TimeSource.GATEWAY, {"alarm": t < 60})
        changes = e.evaluate([stamped], now_ms=clock.now_ms())
        e.clock_set(clock.now_ms(), steps.taken_ms())
        cleared += [t for c in changes if c.state is AlertState.RESOLVED]
    # Off for 10 minutes of the clock's time, the step not counted, from 60 s on.
    assert cleared == [660]


def test_an_offline_alert_from_before_a_restart_resolves_when_the_device_returns(
    tmp_path: Path,
) -> None:
    gateway = Restarts(tmp_path / "state.sqlite3", Registry())
    first = gateway.start(T0)
    gateway.commit(first.evaluate([reading(WRIST, 0, heart_rate_bpm=70)]))
    gateway.commit(first.tick(T0 + 1_000))
    (fired,) = gateway.commit(first.tick(T0 + 151_000))
    assert (fired.rule, fired.state) == ("device_offline", AlertState.FIRING)
    gateway.commit(first.evaluate([reading(OTHER_WRIST, 155, heart_rate_bpm=70)]))

    second = gateway.start(T0 + 160_000)
    # Still the one alert: not fired again...
    for at_s in (161, 180, 200):
        assert gateway.commit(second.tick(T0 + at_s * 1000)) == []
    # ...and the bracelet's return resolves it.
    back = gateway.commit(second.evaluate([reading(WRIST, 205, heart_rate_bpm=70)]))
    assert [(c.rule, c.state, c.alert_id) for c in back] == [
        ("device_offline", AlertState.RESOLVED, fired.alert_id)
    ]


def test_a_registered_device_never_heard_is_watched_from_the_first_start(
    tmp_path: Path,
) -> None:
    never = RegisteredDevice(device_id="br-9", device_type="bracelet", community="hgy")
    gateway = Restarts(tmp_path / "state.sqlite3", Registry([never]))
    first = gateway.start(T0)
    gateway.commit(first.evaluate([reading(WRIST, 95, heart_rate_bpm=70)]))
    # Down for 5 s at 100 s: of br-9's silence since the first start, only those 5 s
    # are not counted.
    second = gateway.start(T0 + 100_000)
    gateway.commit(second.tick(T0 + 101_000))
    assert gateway.commit(second.tick(T0 + 154_000)) == []
    silent = gateway.commit(second.tick(T0 + 156_000))
    assert [(c.device.device_id, c.values["silent_s"]) for c in silent if c.fired] == [
        ("br-9", 156)
    ]


def one_building(detectors: int) -> Registry:
    """Smoke detectors sd-1, sd-2, ... in one building."""
    return Registry(
        RegisteredDevice(device_id=f"sd-{i}", device_type="smoke_detector", community="hgy",
                         building="3号楼")
        for i in range(1, detectors + 1)
    )  # fmt: skip


def test_a_building_alert_outlasts_a_broker_gone_for_longer_than_its_hold() -> None:
    e = RuleEngine(RULES, one_building(2), {"smoke_detector": 3600.0}, now_ms=T0)
    detectors = [DeviceRef("hgy", "smoke_detector", f"sd-{i}") for i in (1, 2)]
    fired = e.evaluate([event(d, t, "alarm") for d, t in zip(detectors, (0, 60), strict=True)])
    assert [c.state for c in fired if c.rule == "building_fire"] == [AlertState.FIRING]
    e.tick(T0 + 1_800_000)
    # The broker down for nearly three hours: no detector could say anything.
    for t_ms in range(1_800_000, 10_000_000, 60_000):
        assert [c for c in e.tick(T0 + t_ms, listening=False) if c.rule == "building_fire"] == []
    # Back, and both still alarm: the same fire, still open.
    back = e.evaluate([reading(d, 10_000, alarm=True, battery_pct=80) for d in detectors])
    assert [c for c in back if c.rule == "building_fire"] == []
    assert [c for c in e.tick(T0 + 10_001_000) if c.rule == "building_fire"] == []


def test_a_detector_that_alarmed_before_a_restart_still_counts_for_its_building(
    tmp_path: Path,
) -> None:
    registry = one_building(3)
    detector = [DeviceRef("hgy", "smoke_detector", f"sd-{i}") for i in range(4)]
    gateway = Restarts(tmp_path / "state.sqlite3", registry)
    first = gateway.start(T0)
    gateway.commit(first.evaluate([event(detector[1], 0, "alarm")]))

    second = gateway.start(T0 + 30_000)
    fired = gateway.commit(second.evaluate([event(detector[2], 60, "alarm")]))
    building = [c for c in fired if c.rule == "building_fire"]
    assert [(c.state, c.values["devices"]) for c in building] == [(AlertState.FIRING, "sd-1,sd-2")]
    # The building's alert carries on across the next restart too, and ends once its
    # detectors have said nothing for its hold (the window, here).
    third = gateway.start(T0 + 90_000)
    assert gateway.commit(third.tick(T0 + 300_000)) == []
    over = [
        c
        for t_ms in range(301_000, 400_000, 1_000)
        for c in gateway.commit(third.tick(T0 + t_ms))
        if c.rule == "building_fire"
    ]
    assert [(c.state, c.alert_id) for c in over] == [(AlertState.RESOLVED, building[0].alert_id)]
    # Its hits went with it: a lone alarm later is one detector, not a fire spreading.
    fourth = gateway.start(T0 + 400_000)
    later = gateway.commit(fourth.evaluate([event(detector[3], 410, "alarm")]))
    assert [c.rule for c in later if c.fired] == ["fire_alarm"]


def test_a_detectors_alarm_older_than_the_window_is_let_go_at_a_restart(
    tmp_path: Path,
) -> None:
    registry = one_building(2)
    gateway = Restarts(tmp_path / "state.sqlite3", registry)
    first = gateway.start(T0)
    gateway.commit(first.evaluate([event(DeviceRef("hgy", "smoke_detector", "sd-1"), 0, "alarm")]))
    second = gateway.start(T0 + 400_000)
    late = gateway.commit(
        second.evaluate([event(DeviceRef("hgy", "smoke_detector", "sd-2"), 410, "alarm")])
    )
    assert [c.rule for c in late if c.fired] == ["fire_alarm"]
    (count,) = (
        sqlite3.connect(gateway.path)
        .execute("SELECT count(*) FROM rule_tracks WHERE rule = 'building_fire'")
        .fetchone()
    )
    assert count == 1  # sd-2's alarm alone: sd-1's was let go


def test_a_rules_reload_keeps_the_detectors_that_alarmed() -> None:
    registry = one_building(2)
    e = RuleEngine(RULES, registry)
    e.evaluate([event(DeviceRef("hgy", "smoke_detector", "sd-1"), 0, "alarm")])
    e.load(RULES)
    fired = e.evaluate([event(DeviceRef("hgy", "smoke_detector", "sd-2"), 60, "alarm")])
    assert "building_fire" in [c.rule for c in fired if c.fired]


# Lakeside's building 3, its number its own; a reload registers jade's building 3 while
# it is on fire, and each then goes by its path (东区·湖光小区·3号楼).
LAKESIDE_3 = [
    RegisteredDevice(device_id=device_id, device_type="smoke_detector", community="hgy",
                     area="东区", compound="湖光小区", building="3号楼")
    for device_id in ("sd-1", "sd-2")
]  # fmt: skip
JADE_3 = RegisteredDevice(device_id="sd-9", device_type="smoke_detector", community="hgy",
                          area="西区", compound="翠苑", building="3号楼")  # fmt: skip


def building_fires(changes: list[AlertChange]) -> list[tuple[str, AlertState]]:
    """The building alerts' changes told, each with the place it is about."""
    return [(c.device.device_id, c.state) for c in changes if c.rule == "building_fire" and c.fired]


# One fire is one alert: a reload in the middle of it that gives another compound a
# building of the same number raises no second fire alert (a second round of calls),
# and the detectors' all-clears end the first, in the series the dashboards show it in,
# rather than leaving it open for hours.
def test_a_reload_that_makes_a_building_name_shared_does_not_raise_a_second_fire() -> None:
    before, after = Registry(LAKESIDE_3), Registry([*LAKESIDE_3, JADE_3])
    e = RuleEngine(RULES, before, {"smoke_detector": 3600.0}, now_ms=T0)
    sd1, sd2 = DETECTORS[:2]
    fired = e.evaluate([reading(sd1, 0, alarm=True), reading(sd2, 30, alarm=True)])
    assert building_fires(fired) == [("3号楼", AlertState.FIRING)]

    e.use_registry(after, after.changes_from(before), T0 + 60_000)
    still = e.evaluate([reading(sd1, 120, alarm=True), reading(sd2, 150, alarm=True)])
    assert building_fires(still) == []
    over = e.evaluate([reading(sd1, 400, alarm=False), reading(sd2, 420, alarm=False)])
    assert building_fires(over) == [("3号楼", AlertState.RESOLVED)]
    assert [c.alert_id for c in over if c.rule == "building_fire"] == [
        c.alert_id for c in fired if c.rule == "building_fire"
    ]


# The same after a restart, whether a reload before it or the registry's sheet, while the
# gateway was stopped, gave another compound a building 3: the fire kept in the state
# file is the one its detectors still alarm in.
@pytest.mark.parametrize(
    "reloaded", [True, False], ids=["reload-then-restart", "sheet-while-stopped"]
)
def test_a_fire_under_way_is_the_same_fire_after_a_restart_though_its_name_is_shared(
    tmp_path: Path, reloaded: bool
) -> None:
    before, after = Registry(LAKESIDE_3), Registry([*LAKESIDE_3, JADE_3])
    gateway = Restarts(tmp_path / "state.sqlite3", before, {"smoke_detector": 3600.0})
    sd1, sd2 = DETECTORS[:2]
    first = gateway.start(T0)
    fired = gateway.commit(
        first.evaluate([reading(sd1, 0, alarm=True), reading(sd2, 30, alarm=True)])
    )
    (fire,) = [c.alert_id for c in fired if c.rule == "building_fire"]
    if reloaded:
        first.engine.use_registry(after, after.changes_from(before), T0 + 60_000)
        gateway.commit(first.tick(T0 + 60_000))
    first.book.close()

    gateway.registry = after
    second = gateway.start(T0 + 90_000)
    still = second.evaluate([reading(sd1, 120, alarm=True), reading(sd2, 150, alarm=True)])
    assert building_fires(gateway.commit(still)) == []
    over = second.evaluate([reading(sd1, 400, alarm=False), reading(sd2, 420, alarm=False)])
    assert [(c.alert_id, c.state) for c in gateway.commit(over) if c.rule == "building_fire"] == [
        (fire, AlertState.RESOLVED)
    ]


def silent_pair() -> RuleEngine:
    """Two bracelets, heard at T0; a bracelet is offline after 150 s of silence."""
    e = RuleEngine(RULES, Registry(), {"bracelet": 60.0}, now_ms=T0)
    e.evaluate([reading(WRIST, 0, heart_rate_bpm=70), reading(OTHER_WRIST, 0, heart_rate_bpm=70)])
    e.tick(T0)
    return e


def test_an_old_retained_status_makes_no_device_offline() -> None:
    # A first start: the broker hands over each detector's retained status, published
    # when it connected three days ago; they report hourly and are fine.
    e = RuleEngine(
        RULES,
        Registry(
            [RegisteredDevice(device_id="sd-1", device_type="smoke_detector", community="hgy")]
        ),
        {"smoke_detector": 3600.0},
        now_ms=T0,
    )
    three_days_ago = T0 - 3 * 86_400_000
    other = DeviceRef("hgy", "smoke_detector", "sd-9")
    for device in (SMOKE, other):
        e.evaluate([StatusReport(device, three_days_ago, TimeSource.DEVICE, True)])
    assert e.tick(T0 + 1_000) == []
    assert e.tick(T0 + 8_999_000) == []
    # Silent for 2.5 hours from the start: offline, each.
    offline = e.tick(T0 + 9_001_000)
    assert sorted(c.device.device_id for c in offline) == ["sd-1", "sd-9"]


def test_a_retained_status_with_no_time_does_not_put_off_a_silent_device_going_offline() -> None:
    e = silent_pair()
    e.evaluate([reading(WRIST, 60, heart_rate_bpm=70)])
    # A new subscription at 100 s: the broker hands over the other bracelet's retained
    # status, which carries no time, silent as it has been since 0 s.
    e.evaluate([StatusReport(OTHER_WRIST, T0 + 100_000, TimeSource.RETAINED, True)])
    e.evaluate([reading(WRIST, 160, heart_rate_bpm=70)])
    offline = e.tick(T0 + 160_000)
    assert [(c.device, c.state, c.values["silent_s"]) for c in offline] == [
        (OTHER_WRIST, AlertState.FIRING, 160)
    ]


def test_a_device_whose_message_waits_in_a_backlog_is_not_offline() -> None:
    e = silent_pair()
    # The gateway is ten minutes behind: it judges what one bracelet sent at 100 s and
    # 140 s while the other's next message still waits at the broker.
    e.evaluate([reading(WRIST, 100, heart_rate_bpm=71)])
    assert e.tick(T0 + 600_000) == []
    e.evaluate([reading(WRIST, 140, heart_rate_bpm=72)])
    assert e.tick(T0 + 605_000) == []
    # The backlog has reached 160 s, and the other bracelet sent nothing since 0 s.
    e.evaluate([reading(WRIST, 160, heart_rate_bpm=72)])
    offline = e.tick(T0 + 610_000)
    assert [(c.device.device_id, c.state, c.values["silent_s"]) for c in offline] == [
        ("br-2", AlertState.FIRING, 160)
    ]


def test_every_message_of_a_batch_moves_the_backlog_on() -> None:
    e = silent_pair()
    # One batch holds two messages of one bracelet in a row: the backlog has reached
    # 160 s, the later of them, and the other bracelet sent nothing since 0 s.
    e.evaluate([reading(WRIST, 100, heart_rate_bpm=71), reading(WRIST, 160, heart_rate_bpm=72)])
    offline = e.tick(T0 + 600_000)
    assert [(c.device.device_id, c.values["silent_s"]) for c in offline] == [("br-2", 160)]


def test_a_pause_between_two_batches_of_a_backlog_is_not_silence() -> None:
    e = silent_pair()
    # An hour behind: the first batch of the backlog reaches 1,000 s, and the next is
    # late (a slow commit): nothing more is judged at the ticks after it.
    e.evaluate(
        [reading(WRIST, 1_000, heart_rate_bpm=71), reading(OTHER_WRIST, 1_000, heart_rate_bpm=71)]
    )
    assert e.tick(T0 + 3_600_000) == []
    assert e.tick(T0 + 3_605_000) == []
    assert e.tick(T0 + 3_614_000) == []
    # Nothing judged for longer than that: the devices are silent, not queued.
    offline = e.tick(T0 + 3_616_000)
    assert sorted((c.device.device_id, c.values["silent_s"]) for c in offline) == [
        ("br-1", 2_616),
        ("br-2", 2_616),
    ]


def test_with_nothing_coming_in_the_clock_judges_silence() -> None:
    e = silent_pair()
    offline = e.tick(T0 + 151_000)
    assert sorted((c.device.device_id, c.state) for c in offline) == [
        ("br-1", AlertState.FIRING),
        ("br-2", AlertState.FIRING),
    ]


def test_a_device_clock_ahead_does_not_hold_silence_back() -> None:
    e = silent_pair()
    e.evaluate([reading(WRIST, 3600, heart_rate_bpm=71)])
    offline = e.tick(T0 + 151_000)
    assert [(c.device.device_id, c.state, c.values["silent_s"]) for c in offline] == [
        ("br-2", AlertState.FIRING, 151)
    ]


def test_while_the_gateway_does_not_listen_no_device_is_found_silent() -> None:
    e = silent_pair()
    # The broker connection is down, or what came in is not yet judged: an hour passes.
    for minute in range(1, 61):
        assert e.tick(T0 + minute * 60_000, listening=False) == []


def test_time_the_gateway_did_not_listen_is_not_counted_as_silence() -> None:
    e = silent_pair()
    # The broker was down from 10 s to an hour: no device could send, nor the gateway
    # hear. Back at 3,610 s, one bracelet reports 100 s later, the other never again.
    assert e.tick(T0 + 10_000) == []
    assert e.tick(T0 + 3_600_000, listening=False) == []
    assert e.tick(T0 + 3_610_000) == []
    e.evaluate([reading(WRIST, 3_710, heart_rate_bpm=70)])
    assert e.tick(T0 + 3_710_000) == []
    # 150 s of listening since the broker came back, without a word from the other: it
    # is offline, silent since 0 s.
    assert e.tick(T0 + 3_749_000) == []
    offline = e.tick(T0 + 3_751_000)
    assert [(c.device.device_id, c.state, c.values["silent_s"]) for c in offline] == [
        ("br-2", AlertState.FIRING, 3_751)
    ]


def test_rate_windows_survive_a_restart_and_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"

    def stage() -> AlertStage:
        return AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))

    first = stage()
    outbox = Outbox(path)
    for t, temperature in ((0, 40.0), (20, 43.0)):
        decision = first.evaluate([reading(SHED, t, port=3, temperature_c=temperature)])
        outbox.commit(decision.lines, [], None, decision.write)
    outbox.commit([], [], None, first.rates_write())
    # After a restart the window still starts at 0 s: 40 s of it are known, enough for a
    # rate, and 7 °C in 40 s is a runaway.
    after = stage()
    decision = after.evaluate([reading(SHED, 40, port=3, temperature_c=47.0)])
    assert states(decision.changes) == [("thermal_runaway_risk", AlertState.FIRING)]
    # A reload of the rules keeps the samples too.
    again = stage()
    again.engine.load(RULES)
    decision = again.evaluate([reading(SHED, 40, port=3, temperature_c=47.0)])
    assert states(decision.changes) == [("thermal_runaway_risk", AlertState.FIRING)]


def test_without_its_saved_window_a_rate_is_unknown_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    fresh = AlertStage(engine(), AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))
    decision = fresh.evaluate([reading(SHED, 40, port=3, temperature_c=47.0)])
    assert states(decision.changes) == []


def test_a_rule_failing_on_a_record_costs_no_other_alert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A rule of the community's own that divides by a registry threshold, and a cover
    # whose threshold is 0: the rule fails on its readings at run time.
    (tmp_path / "a_ratio.yaml").write_text(
        "rules:\n"
        "  - name: fill_ratio_high\n"
        "    title: Well nearly full\n"
        "    device_types: [manhole_cover]\n"
        "    severity: warning\n"
        "    when: water_level_cm / device.usable_depth_cm > 0.8\n"
    )
    for name in ("manhole_cover.yaml", "smoke_detector.yaml"):
        (tmp_path / name).write_text((PROJECT_ROOT / "alert_rules" / name).read_text())
    rules = load_rules(tmp_path, SHIPPED_PROFILES)
    assert rules[0].name == "fill_ratio_high"  # judged before cover_open
    zero = RegisteredDevice(
        device_id="mh-0",
        device_type="manhole_cover",
        community="hgy",
        thresholds={"usable_depth_cm": 0},
    )
    e = RuleEngine(rules, Registry([zero]))
    cover = DeviceRef("hgy", "manhole_cover", "mh-0")
    batch = [
        reading(cover, 0, water_level_cm=50.0, lid_open=True, tilt_deg=40.0),
        reading(SMOKE, 1, alarm=True),
    ]
    with caplog.at_level("ERROR"):
        changes = e.evaluate(batch)
    # The lid judged on the same reading, the fire on the next one.
    assert states(changes) == [
        ("cover_open", AlertState.FIRING),
        ("fire_alarm", AlertState.FIRING),
    ]
    assert e.faults.counts == {"fill_ratio_high": 1}
    (logged,) = caplog.records
    assert "fill_ratio_high" in logged.getMessage()
    assert "hgy/mh-0" in logged.getMessage()
    assert "ZeroDivisionError" in logged.getMessage()
    # Every fault counts; only the 1st, 10th, 100th... is logged.
    caplog.clear()
    for t in range(2, 21):
        e.evaluate([reading(cover, t, water_level_cm=50.0)])
    assert e.faults.counts == {"fill_ratio_high": 20}
    assert [r.getMessage().count("fault 10 ") for r in caplog.records] == [1]


def test_a_clear_condition_failing_keeps_the_alert_open(tmp_path: Path) -> None:
    (tmp_path / "ratio.yaml").write_text(
        "rules:\n"
        "  - name: fill_ratio_high\n"
        "    title: Well nearly full\n"
        "    device_types: [manhole_cover]\n"
        "    severity: warning\n"
        "    when: water_level_cm > 150\n"
        "    clear_when: water_level_cm / device.usable_depth_cm < 0.7\n"
    )
    zero = RegisteredDevice(
        device_id="mh-0",
        device_type="manhole_cover",
        community="hgy",
        thresholds={"usable_depth_cm": 0},
    )
    e = RuleEngine(load_rules(tmp_path, SHIPPED_PROFILES), Registry([zero]))
    cover = DeviceRef("hgy", "manhole_cover", "mh-0")
    assert states(e.evaluate([reading(cover, 0, water_level_cm=160.0)])) == [
        ("fill_ratio_high", AlertState.FIRING)
    ]
    # Not known to have cleared: the alert stays open rather than resolving unseen.
    assert e.evaluate([reading(cover, 60, water_level_cm=10.0)]) == []
    assert e.faults.counts == {"fill_ratio_high": 1}


def test_a_fault_in_judging_one_record_leaves_the_rest_of_the_batch_judged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    e = engine()
    handler_for = e._handler_for

    def faulty_for_covers(record, shapes):  # type: ignore[no-untyped-def]
        handler = handler_for(record, shapes)
        if record.device.device_type != "manhole_cover":
            return handler

        def fails(*args: object) -> None:
            raise RuntimeError("a fault of the gateway's")

        return fails

    monkeypatch.setattr(e, "_handler_for", faulty_for_covers)
    with caplog.at_level("ERROR"):
        changes = e.evaluate([reading(COVER, 0, lid_open=True), reading(SMOKE, 1, alarm=True)])
    assert states(changes) == [("fire_alarm", AlertState.FIRING)]
    assert e.faults.counts == {"(judging)": 1}
    (logged,) = caplog.records
    assert logged.exc_info is not None and "a fault of the gateway's" in str(logged.exc_info[1])


def test_a_rule_whose_action_fails_leaves_the_rules_after_it_to_judge_the_record(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    e = engine()
    action_of = e._action

    def failing_fire_action(rule):  # type: ignore[no-untyped-def]
        if rule.name != "fire_alarm":
            return action_of(rule)

        def fails(*args: object) -> None:
            raise RuntimeError("a fault of the gateway's")

        return fails

    monkeypatch.setattr(e, "_action", failing_fire_action)
    with caplog.at_level("ERROR"):
        changes = e.evaluate([reading(SMOKE, 0, alarm=True, battery_pct=5)])
    # fire_alarm is judged first; the low battery after it is still seen.
    assert states(changes) == [("smoke_low_battery", AlertState.FIRING)]
    assert e.faults.counts == {"fire_alarm": 1}
    (logged,) = caplog.records
    assert "fire_alarm" in logged.getMessage() and "hgy/sd-1" in logged.getMessage()
    assert logged.exc_info is not None and "a fault of the gateway's" in str(logged.exc_info[1])


DAY_MS = 86_400_000


class Judged:
    """The rules stage on one outbox file, committing what it decides, as the pipeline
    does; `ahead` as the alarm lane's records."""

    def __init__(self, path: Path, clock: ManualClock, *, kept_ms: int | None = None,
                 periods: dict[str, float] | None = None,
                 registry: Registry | None = None) -> None:  # fmt: skip
        self.outbox = Outbox(path)
        self.book = AlertBook(path)
        self.clock = clock
        registry = registry or Registry()
        judging = RuleEngine(RULES, registry, periods or {}, now_ms=clock.now_ms())
        self.stage = AlertStage(judging, self.book, SilenceBook(path, registry), clock,
                                kept_ms=kept_ms)  # fmt: skip

    def feed(
        self, *records: Reading | Event | StatusReport, ahead: bool = False
    ) -> list[tuple[str, AlertState]]:
        decision = self.stage.evaluate(list(records), ahead=ahead)
        self.outbox.commit(decision.lines, [], None, decision.write)
        return [(c.rule, c.state) for c in decision.changes if c.fired]

    def tick(self) -> list[tuple[str, str, AlertState]]:
        decision = self.stage.tick(self.clock.now_ms())
        self.outbox.commit(decision.lines, [], None, decision.write)
        return [(c.rule, c.device.device_id, c.state) for c in decision.changes if c.fired]


@pytest.mark.parametrize("timed", [True, False], ids=["from the day before", "with no time"])
def test_a_retained_status_from_before_the_silence_does_not_end_the_offline_alert(
    tmp_path: Path, timed: bool
) -> None:
    clock = ManualClock(T0)
    rules = Judged(tmp_path / "outbox.sqlite3", clock, periods={"bracelet": 60.0})
    rules.feed(reading(WRIST, 0, heart_rate_bpm=70), reading(OTHER_WRIST, 0, heart_rate_bpm=70))
    # br-1 falls silent; br-2 goes on reporting.
    for minute in range(1, 4):
        clock.advance(60)
        rules.feed(reading(OTHER_WRIST, minute * 60, heart_rate_bpm=70))
        fired = rules.tick()
    assert fired == [("device_offline", "br-1", AlertState.FIRING)]
    (offline,) = rules.book.open_alerts()
    # The gateway's session is made again (a first subscription, or MQTT 3.1.1 at every
    # reconnect): the broker hands over br-1's retained status, published a day ago.
    rules.feed(
        StatusReport(WRIST, T0 - DAY_MS, TimeSource.DEVICE, True)
        if timed
        else StatusReport(WRIST, clock.now_ms(), TimeSource.RETAINED, True)
    )
    # br-1 stays silent for another hour.
    for minute in range(4, 64):
        clock.advance(60)
        rules.feed(reading(OTHER_WRIST, minute * 60, heart_rate_bpm=70))
        rules.tick()
    # Still offline: the grid worker must not be told it is back, and the alert must not
    # end while the device has said nothing.
    assert rules.book.get(offline.alert_id).state is AlertState.FIRING
    assert rules.book.get(offline.alert_id).resolved_ms is None


def test_an_alarm_judged_ahead_of_a_telemetry_backlog_makes_no_device_offline(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    rules = Judged(tmp_path / "outbox.sqlite3", clock, periods={"bracelet": 60.0})
    rules.feed(reading(WRIST, 0, heart_rate_bpm=70), reading(OTHER_WRIST, 0, heart_rate_bpm=70))
    assert rules.tick() == []
    # Ten minutes on, the gateway is behind its bracelets (a backlog at the broker after
    # a restart, or more traffic than it takes in): the telemetry lane has reached 100 s.
    clock.advance(600)
    rules.feed(reading(WRIST, 100, heart_rate_bpm=70), reading(OTHER_WRIST, 100, heart_rate_bpm=70))
    assert rules.tick() == []
    # br-1's resident presses SOS now; the alarm lane, which has no backlog, brings it at
    # once, ahead of the readings queued before it.
    assert rules.feed(event(WRIST, 600, "sos"), ahead=True) == [("sos", AlertState.FIRING)]
    clock.advance(5)
    # br-2's readings from 160 s on still wait in the telemetry backlog: it is not silent.
    assert rules.tick() == []


def test_a_detector_that_alarms_again_after_its_alert_was_closed_is_an_alert_again(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    rules = Judged(tmp_path / "outbox.sqlite3", clock)
    assert rules.feed(event(SMOKE, 0, "alarm")) == [("fire_alarm", AlertState.FIRING)]
    (alert,) = rules.book.open_alerts()
    # The grid worker goes, finds burnt toast, hushes the detector and closes the alert.
    clock.advance(180)
    rules.feed(event(SMOKE, 170, "alarm_cleared"))
    rules.book.close_alert(alert.alert_id, "wang-fang", clock.now_ms(), "burnt toast, hushed")
    # Five minutes later the detector alarms again: a real fire this time.
    clock.advance(300)
    fired = rules.feed(event(SMOKE, 480, "alarm"))
    # Somebody must hear of it: a new alert (the closed one told nobody anything).
    assert fired == [("fire_alarm", AlertState.FIRING)]
    assert [a.state for a in rules.book.open_alerts()] == [AlertState.FIRING]


def test_detectors_alarming_after_a_building_alert_was_closed_make_a_new_building_alert(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    rules = Judged(tmp_path / "outbox.sqlite3", clock, periods={"smoke_detector": 3600.0},
                   registry=one_building(4))  # fmt: skip
    sd = [DeviceRef("hgy", "smoke_detector", f"sd-{i}") for i in range(5)]
    rules.feed(event(sd[1], 0, "alarm"))
    assert ("building_fire", AlertState.FIRING) in rules.feed(event(sd[2], 30, "alarm"))
    (building,) = [a for a in rules.book.open_alerts() if a.rule == "building_fire"]
    # Burnt toast in the stairwell: the grid worker hushes sd-2 and closes the alert.
    # sd-1, which reports hourly, has not yet said its alarm is over.
    clock.advance(600)
    rules.feed(event(sd[2], 590, "alarm_cleared"))
    rules.book.close_alert(building.alert_id, "wang-fang", clock.now_ms(), "burnt toast")
    # sd-1 reporting its alarm again is still the closed one's.
    clock.advance(60)
    assert rules.feed(event(sd[1], 660, "alarm")) == []
    # An hour later a fire: sd-3 alarms, then sd-2 again.
    clock.advance(3600)
    assert ("building_fire", AlertState.FIRING) not in rules.feed(event(sd[3], 4260, "alarm"))
    fired = rules.feed(event(sd[2], 4290, "alarm"))
    assert ("building_fire", AlertState.FIRING) in fired
    (again,) = [a for a in rules.book.open_alerts() if a.rule == "building_fire"]
    assert again.alert_id != building.alert_id


def test_an_sos_from_a_bracelet_whose_clock_was_reset_to_an_old_date_is_not_dropped(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    # retention.alerts_days at its default, three years.
    rules = Judged(tmp_path / "outbox.sqlite3", clock, kept_ms=3 * 365 * DAY_MS)
    # The bracelet's battery ran flat; its clock came back at its firmware's default,
    # 2022-01-01, after 2000 (so taken for the device's time) but before the retention.
    reset_ms = 1_640_995_200_000
    sos = Event(WRIST, reset_ms, TimeSource.DEVICE, "sos", {"lat": 34.75, "lon": 113.62})
    assert rules.feed(sos) == [("sos", AlertState.FIRING)]
    assert [a.rule for a in rules.book.open_alerts()] == ["sos"]


def test_repeated_sos_presses_from_a_bracelet_whose_clock_is_behind_stay_one_alert(
    tmp_path: Path,
) -> None:
    # The bracelet's clock is 15 minutes behind the gateway's (drift, no NTP).
    behind_s = 900
    clock = ManualClock(T0)
    rules = Judged(tmp_path / "outbox.sqlite3", clock)
    assert rules.feed(event(WRIST, -behind_s, "sos")) == [("sos", AlertState.FIRING)]
    # The resident presses again every 30 s while nobody has taken it yet; the rule
    # timers tick every 5 s meanwhile.
    for press in range(1, 5):
        for _ in range(6):
            clock.advance(5)
            rules.tick()
        assert rules.feed(event(WRIST, 30 * press - behind_s, "sos")) == []
    # One alert being told, with its repeats, not one escalation each (merge_s: 600).
    (alert,) = rules.book.open_alerts()
    assert alert.repeats == 4


def sheds(*device_ids: str) -> Registry:
    return Registry(
        [RegisteredDevice(device_id=d, device_type="charging_shed", community="hgy")
         for d in device_ids]
    )  # fmt: skip


def test_the_windows_of_a_shed_taken_out_of_the_registry_are_not_kept_and_saved_for_ever() -> None:
    # Sheds replaced, moved or taken out over the years: their windows must not be held,
    # saved every 30 s and restored at every start for ever.
    before = sheds("cs-1", "cs-2")
    engine = RuleEngine(RULES, before, now_ms=T0)
    for t in (0, 15, 30):
        for device_id in ("cs-1", "cs-2"):
            shed = DeviceRef("hgy", "charging_shed", device_id)
            engine.evaluate([reading(shed, t, port=3, temperature_c=30.0)], now_ms=T0 + t * 1000)
    after = sheds("cs-2")
    engine.use_registry(after, after.changes_from(before), T0 + 40_000)
    kept = {
        device_id for _, series, _ in engine.rates.saved() for device_id, *_ in orjson.loads(series)
    }
    assert kept == {"cs-2"}


def test_a_port_heating_fast_is_caught_after_one_report_from_a_clock_far_ahead() -> None:
    # A shed's clock jumps 12 hours ahead for one report (the decoder takes up to 24 h
    # ahead as the device's time), then is right again. That report must not blind the
    # port's rate: a battery rising 10 °C a minute an hour later is a thermal runaway.
    engine = RuleEngine(RULES, sheds("cs-1"), now_ms=T0)

    def judge(
        t_s: float, temperature: float, judged_s: float | None = None
    ) -> list[tuple[str, AlertState]]:
        record = reading(SHED, t_s, port=3, temperature_c=temperature)
        now_ms = T0 + int((t_s if judged_s is None else judged_s) * 1000)
        return states(engine.evaluate([record], now_ms=now_ms))

    for t in range(0, 600, 15):
        assert judge(t, 30.0) == []
    assert judge(600 + 43_200, 30.0, judged_s=600) == []
    for t in range(615, 4_200, 15):
        assert judge(t, 30.0) == []
    fired: list[tuple[str, AlertState]] = []
    temperature = 30.0
    for t in range(4_200, 4_290, 15):
        temperature += 2.5  # 10 °C a minute, still far below 80 °C
        fired += judge(t, temperature)
    assert ("thermal_runaway_risk", AlertState.FIRING) in fired


def test_a_device_heard_again_by_the_readings_it_kept_ends_its_offline_alert_on_the_dashboards(
    tmp_path: Path,
) -> None:
    # Offline at the gateway's time; back in range, the bracelet sends the readings it
    # kept, oldest first: the alert's point of its end comes after the one of its start,
    # as dashboards take a series' last point for the alert's state.
    path = tmp_path / "state.sqlite3"
    outbox = Outbox(path)
    watching = RuleEngine(RULES, Registry(), {"bracelet": 60.0}, now_ms=T0)
    stage = AlertStage(watching, AlertBook(path), SilenceBook(path, Registry()), ManualClock(T0))

    def committed(decision: AlertDecision) -> list[tuple[str, int]]:
        outbox.commit(decision.lines, [], None, decision.write)
        return [
            (line.split('state="')[1].split('"')[0], int(line.rsplit(" ", 1)[1]))
            for line in decision.lines
            if "device_id=br-1," in line and "rule=device_offline" in line
        ]

    committed(stage.evaluate([reading(WRIST, 0, heart_rate_bpm=70)]))
    committed(stage.tick(T0 + 1_000))
    ((fired, fired_ms),) = committed(stage.tick(T0 + 600_000))
    ((ended, ended_ms),) = committed(stage.evaluate([reading(WRIST, 300, heart_rate_bpm=70)]))
    assert (fired, ended) == ("firing", "resolved")
    assert ended_ms > fired_ms
