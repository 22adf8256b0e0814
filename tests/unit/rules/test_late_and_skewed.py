"""The shipped rules with reports late, clocks off and places whose names repeat: an
outage's backlog judged behind the alarm lane, a device clock hours ahead for one
report or minutes behind for good, a building number in two compounds."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.decode.record import DeviceRef
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.engine import RuleEngine
from tests.unit.rules.test_engine import (
    OTHER_WRIST,
    RULES,
    SHED,
    T0,
    WEARER,
    WRIST,
    event,
    reading,
)

ZONE = ZoneInfo("Asia/Shanghai")
SD1 = DeviceRef("hgy", "smoke_detector", "sd-1")
SD2 = DeviceRef("hgy", "smoke_detector", "sd-2")


def of_rule(rule: str, changes: list[AlertChange]) -> list[tuple[str, AlertState]]:
    # The announced changes of one rule: (device or place id, state).
    return [(c.device.device_id, c.state) for c in changes if c.rule == rule and c.fired]


def wearer_registry() -> Registry:
    return Registry([WEARER])


def one_building() -> RuleEngine:
    registry = Registry(
        [
            RegisteredDevice(
                device_id=d, device_type="smoke_detector", community="hgy",
                compound="lakeside", building="3",
            )
            for d in ("sd-1", "sd-2")
        ]
    )  # fmt: skip
    return RuleEngine(RULES, registry, {"smoke_detector": 3600.0}, now_ms=T0)


# --- building_fire (correlation) ------------------------------------------------------


def test_reports_from_before_the_alarms_do_not_end_a_building_fire() -> None:
    # After an outage two detectors of one building alarm on the alarm lane, judged
    # first; their hourly reports from before the fire, queued behind, come after and
    # say nothing of it being over.
    e = one_building()
    now_ms = T0 + 7_200_000
    fired = e.evaluate([event(SD1, 5_400, "alarm"), event(SD2, 5_410, "alarm")],
                       now_ms=now_ms, ahead=True)  # fmt: skip
    assert [state for _, state in of_rule("building_fire", fired)] == [AlertState.FIRING]
    backlog = [
        reading(SD1, 3_600, alarm=False, battery_pct=90),
        reading(SD2, 3_605, alarm=False, battery_pct=90),
    ]
    assert of_rule("building_fire", e.evaluate(backlog, now_ms=now_ms)) == []


def test_a_detector_alarm_judged_late_is_not_taken_for_one_within_the_window() -> None:
    # Two single alarms 16 minutes apart are no fire spreading, though one of them is
    # judged last: the window ends at the newest alarm.
    e = one_building()
    now_ms = T0 + 3_600_000
    # Alarm lane first: sd-2 alarms at 0 s and is hushed at 120 s; sd-1 alarms at 1000 s.
    ahead = [event(SD2, 0, "alarm"), event(SD2, 120, "alarm_cleared"), event(SD1, 1_000, "alarm")]
    assert of_rule("building_fire", e.evaluate(ahead, now_ms=now_ms, ahead=True)) == []
    # Then the telemetry queued behind it: sd-2's report during its own alarm, at 30 s.
    late = [reading(SD2, 30, alarm=True, battery_pct=90)]
    assert of_rule("building_fire", e.evaluate(late, now_ms=now_ms)) == []


def test_same_numbered_buildings_of_two_compounds_are_not_one_building() -> None:
    # Burnt toast in building 1 of two compounds: one fire alarm each, no building on
    # fire, as building numbers repeat across compounds.
    registry = Registry(
        [
            RegisteredDevice(device_id="sd-1", device_type="smoke_detector", community="hgy",
                             compound="lakeside", building="1"),
            RegisteredDevice(device_id="sd-2", device_type="smoke_detector", community="hgy",
                             compound="garden", building="1"),
        ]
    )  # fmt: skip
    e = RuleEngine(RULES, registry, {"smoke_detector": 3600.0}, now_ms=T0)
    changes = e.evaluate([event(SD1, 0, "alarm"), event(SD2, 60, "alarm")])
    assert of_rule("fire_alarm", changes) == [
        ("sd-1", AlertState.FIRING),
        ("sd-2", AlertState.FIRING),
    ]
    assert of_rule("building_fire", changes) == []


def test_a_fire_in_another_compounds_building_of_the_same_number_is_its_own_alert() -> None:
    # While lakeside's building 3 burns, two detectors of hillside's building 3 alarm:
    # a second building on fire, with an alert of its own named by its path, not taken
    # into lakeside's.
    registry = Registry(
        RegisteredDevice(device_id=f"sd-{i}", device_type="smoke_detector", community="hgy",
                         area="east", compound=compound, building="3")
        for i, compound in ((1, "lakeside"), (2, "lakeside"), (3, "hillside"), (4, "hillside"))
    )  # fmt: skip
    e = RuleEngine(RULES, registry, {"smoke_detector": 3600.0}, now_ms=T0)

    def alarm(i: int, t_s: int) -> list[tuple[str, AlertState]]:
        device = DeviceRef("hgy", "smoke_detector", f"sd-{i}")
        return of_rule("building_fire", e.evaluate([event(device, t_s, "alarm")]))

    assert alarm(1, 0) == []
    assert alarm(2, 30) == [("east·lakeside·3", AlertState.FIRING)]
    assert alarm(3, 600) == []
    assert alarm(4, 630) == [("east·hillside·3", AlertState.FIRING)]


# --- a device clock far ahead for one report --------------------------------------------


def test_one_report_from_a_clock_far_ahead_does_not_hold_off_abnormal_heart_rate() -> None:
    # A bracelet's clock 12 h ahead for one report of 30 bpm, then right again, the
    # heart rate staying at 30: the alert fires after its minute, not 12 h later, and
    # not at the glitch.
    e = RuleEngine(RULES, wearer_registry(), {"bracelet": 60.0}, now_ms=T0)
    glitch = e.evaluate([reading(WRIST, 43_200, heart_rate_bpm=30, worn=True)], now_ms=T0)
    assert of_rule("abnormal_heart_rate", glitch) == []
    fired = []
    for t in range(60, 1_800, 60):
        changes = e.evaluate([reading(WRIST, t, heart_rate_bpm=30, worn=True)],
                             now_ms=T0 + t * 1000)  # fmt: skip
        fired += of_rule("abnormal_heart_rate", changes)
        if fired:
            break
    # A minute after the clock was right again.
    assert (fired, t) == ([("br-1", AlertState.FIRING)], 120)


def test_one_report_from_a_clock_far_ahead_does_not_hold_off_no_activity() -> None:
    # A lone resident's bracelet reports one step count with its clock 12 h ahead
    # (07:10); the steps then stay unchanged all day, worn: someone motionless for
    # 12 h of daytime is checked on.

    def at(hour: int, minute: int = 0) -> float:
        return datetime(2026, 1, 2, hour, minute, tzinfo=ZONE).timestamp() - T0 / 1000

    e = RuleEngine(RULES, wearer_registry(), {"bracelet": 60.0}, now_ms=T0)
    start = at(7)
    e.evaluate([reading(WRIST, start, steps=100, worn=True)], now_ms=T0 + int(start * 1000))
    glitch = reading(WRIST, start + 600 + 43_200, steps=150, worn=True)
    e.evaluate([glitch], now_ms=T0 + int((start + 600) * 1000))
    fired = []
    t = start + 900
    while t <= at(21):
        now_ms = T0 + int(t * 1000)
        fired += of_rule("no_activity", e.evaluate([reading(WRIST, t, steps=150, worn=True)],
                                                   now_ms=now_ms))  # fmt: skip
        fired += of_rule("no_activity", e.tick(now_ms + 1_000))
        t += 300
    assert ("br-1", AlertState.FIRING) in fired


# --- device offline --------------------------------------------------------------------


def test_a_bracelet_reporting_every_minute_with_its_clock_behind_is_not_offline() -> None:
    # A bracelet whose clock is 15 minutes behind (drift, no NTP), reporting every
    # minute beside bracelets with right clocks, is never silent for 2.5 minutes.
    e = RuleEngine(RULES, Registry(), {"bracelet": 60.0}, now_ms=T0)
    behind_s = 900
    # Checked every few seconds from the start, as the gateway does.
    offline = of_rule("device_offline", e.tick(T0))
    for s in range(0, 900, 5):
        records = []
        if s % 60 == 0:
            records = [
                reading(WRIST, s - behind_s, heart_rate_bpm=70),
                reading(OTHER_WRIST, s, heart_rate_bpm=70),
            ]
        offline += of_rule("device_offline", e.evaluate(records, now_ms=T0 + s * 1000))
        offline += of_rule("device_offline", e.tick(T0 + s * 1000 + 1_000))
    assert offline == []


# --- event merge_s ---------------------------------------------------------------------


def test_an_sos_pressed_again_seconds_after_the_first_was_told_joins_it() -> None:
    # An SOS pressed in a lift is uploaded and told 1000 s after the press; pressed
    # again 10 s after that (by the gateway's clock), it joins the alert being told.
    e = RuleEngine(RULES, wearer_registry(), {"bracelet": 60.0}, now_ms=T0)
    first = e.evaluate([event(WRIST, 0, "sos")], now_ms=T0 + 1_000_000, ahead=True)
    assert of_rule("sos", first) == [("br-1", AlertState.FIRING)]
    assert of_rule("sos", e.tick(T0 + 1_005_000)) == []
    again = e.evaluate([event(WRIST, 1_010, "sos")], now_ms=T0 + 1_010_000, ahead=True)
    assert of_rule("sos", again) == []


# --- thermal runaway rate --------------------------------------------------------------


def test_a_port_heating_fast_after_a_gap_is_caught_once_its_window_is_half_covered() -> None:
    # A port last heard an hour ago comes back heating 20 °C a minute: its rate is not
    # worked out against the hour-old sample once the window's own cover half of it.
    e = RuleEngine(RULES, Registry(), {"charging_shed": 15.0}, now_ms=T0)
    for t in range(0, 120, 15):
        e.evaluate([reading(SHED, t, port=3, temperature_c=30.0)], now_ms=T0 + t * 1000)
    fired = []
    # Back an hour later: 31, 36, 41 °C at 15 s steps (20 °C a minute), far below 80 °C.
    for i, t in enumerate((3_705, 3_720, 3_735)):
        record = reading(SHED, t, port=3, temperature_c=31.0 + 5 * i)
        fired += of_rule("thermal_runaway_risk", e.evaluate([record], now_ms=T0 + t * 1000))
    assert ("cs-1", AlertState.FIRING) in fired
