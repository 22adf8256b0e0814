"""Each default safety rule driven by the simulators' scenarios, through the real
decoder: it fires, and where the scenario ends, it clears. Each rule that clears,
driven report by report: one alert from firing to its all-clear, which a single report
in between saying otherwise neither brings forward nor splits in two."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from gateway import PROJECT_ROOT
from gateway.clock import ManualClock
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.profile import load_profiles
from gateway.errors import DecodeError
from gateway.ingest.message import InboundMessage
from gateway.registry import load_registry
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.engine import RuleEngine
from simulators.device import Device, DeviceType
from simulators.fleet import Fleet
from simulators.layout import offset
from simulators.message import device_topic, encode_json
from simulators.models import make_model
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


# --- clearing: one alert from firing to resolved ------------------------------------

Fields = dict[str, object]
# What a device's report says, over what its simulated model reads, given the device.
Override = Callable[[Device], Fields]
RULES = {rule.name: rule for rule in shipped_rules()}


def says(**fields: object) -> Override:
    return lambda device: fields


def from_home(share_of_radius: float) -> Override:
    """A wearer this share of their safe radius north of home."""

    def position(device: Device) -> Fields:
        wearer = device.wearer
        assert wearer is not None
        lat, lon = offset(
            wearer.home_lat, wearer.home_lon, share_of_radius * wearer.safe_radius_m, 0
        )
        return {"lat": round(lat, 6), "lon": round(lon, 6), "worn": True}

    return position


def well_filled(share_of_depth: float) -> Override:
    def level(device: Device) -> Fields:
        assert device.well_depth_cm is not None
        return {"water_level_cm": round(share_of_depth * device.well_depth_cm, 1)}

    return level


class Site:
    """One device of the fleet on its own: its simulated reports, with some fields set
    by the test, decoded and judged by the shipped rules."""

    def __init__(self, tmp_path: Path, device_type: DeviceType) -> None:
        self.device = next(
            d for d in FLEET.devices if d.device_type is device_type and d.imei is None
        )
        header, *rows = FLEET.registry_csv().splitlines()
        mine = [row for row in rows if row.startswith(f"{self.device.device_id},")]
        registry_file = tmp_path / "devices.csv"
        registry_file.write_text("\n".join([header, *mine]) + "\n", encoding="utf-8")
        registry = load_registry(registry_file)
        self.decoder = Decoder(PROFILES, registry, require_registered=True)
        self.engine = RuleEngine(
            list(RULES.values()), registry, PROFILES.periods_s(), now_ms=NOON_MS
        )
        self.model = make_model(self.device, seed=FLEET.seed, start_ms=NOON_MS)
        self.seq = 0

    def report(self, at_s: float, override: Override, port: int | None = None) -> list[AlertChange]:
        """A telemetry report at `at_s` into the run; `override` for one port's entry."""
        time_ms = NOON_MS + round(at_s * 1000)
        self.model.advance(time_ms)
        fields = self.model.reading()
        if port is None:
            fields |= override(self.device)
        else:
            ports = cast(list[Fields], fields["ports"])
            (entry,) = [p for p in ports if p["port"] == port]
            entry |= override(self.device)
        return self._send("telemetry", fields, time_ms)

    def event(self, at_s: float, kind: str) -> list[AlertChange]:
        return self._send("event", {"event": kind}, NOON_MS + round(at_s * 1000))

    def last_will(self, at_s: float) -> list[AlertChange]:
        """The device's last will, published by the broker when its connection is lost."""
        will = FLEET.last_will(self.device, NOON_MS + round(at_s * 1000))
        return self._judge(will.topic, will.payload, will.time_ms)

    def tick(self, at_s: float) -> list[AlertChange]:
        return self.engine.tick(NOON_MS + round(at_s * 1000))

    def _send(self, kind: str, fields: Fields, time_ms: int) -> list[AlertChange]:
        self.seq += 1
        device = self.device
        topic = device_topic(device.community, device.device_type, device.device_id, kind)
        return self._judge(topic, encode_json({"ts": time_ms, "seq": self.seq, **fields}), time_ms)

    def _judge(self, topic: str, payload: bytes, time_ms: int) -> list[AlertChange]:
        decoded = self.decoder.decode(InboundMessage(topic, payload, time_ms))
        return self.engine.evaluate(decoded.records)


def of_rule(rule: str, changes: list[AlertChange]) -> list[AlertChange]:
    return [c for c in changes if c.rule == rule]


@dataclass(frozen=True)
class Episode:
    """A condition rule's alarm as its device reports it: `alarm` while the condition
    holds, every `alarm_period_s` (devices report sooner while something is wrong), then
    `normal`, every `normal_period_s`."""

    rule: str
    device_type: DeviceType
    alarm: Override
    normal: Override
    alarm_period_s: float
    normal_period_s: float
    port: int | None = None


_SMOKE, _COVER, _WRIST, _SHED = (
    DeviceType.SMOKE_DETECTOR,
    DeviceType.MANHOLE_COVER,
    DeviceType.BRACELET,
    DeviceType.CHARGING_SHED,
)
EPISODES = [
    # In alarm a detector reports every minute; back to normal, hourly.
    Episode("fire_alarm", _SMOKE, says(alarm=True), says(alarm=False), 60, 3600),
    Episode("smoke_low_battery", _SMOKE, says(battery_pct=18), says(battery_pct=27), 3600, 3600),
    # A cover reports every minute while open or while the well is high; else every 10.
    Episode(
        "cover_open",
        _COVER,
        says(lid_open=True, tilt_deg=78.5),
        says(lid_open=False, tilt_deg=1.2),
        60,
        600,
    ),
    Episode("overflow_risk", _COVER, well_filled(0.9), well_filled(0.62), 60, 60),
    Episode("sewer_gas", _COVER, says(ch4_ppm=6800.0), says(ch4_ppm=2500.0), 60, 60),
    Episode(
        "abnormal_heart_rate",
        _WRIST,
        says(heart_rate_bpm=36, worn=True),
        says(heart_rate_bpm=71, worn=True),
        60,
        60,
    ),
    Episode("left_safe_area", _WRIST, from_home(1.4), from_home(0.5), 60, 60),
    Episode("bracelet_low_battery", _WRIST, says(battery_pct=12), says(battery_pct=22), 60, 60),
    # A shed reports every 15 s whatever happens.
    Episode(
        "port_overheating",
        _SHED,
        says(temperature_c=64.5),
        says(temperature_c=41.0),
        15,
        15,
        port=1,
    ),
    Episode(
        "thermal_runaway_risk",
        _SHED,
        says(temperature_c=88.0),
        says(temperature_c=38.0),
        15,
        15,
        port=1,
    ),
    Episode("shed_fire", _SHED, says(smoke=True), says(smoke=False), 15, 15),
    Episode("over_current", _SHED, says(current_a=12.8), says(current_a=3.1), 15, 15, port=1),
]


def test_every_condition_rule_has_an_episode() -> None:
    conditions = {name for name, rule in RULES.items() if rule.spec.kind == "condition"}
    assert conditions == {episode.rule for episode in EPISODES}


@pytest.mark.parametrize("episode", EPISODES, ids=lambda e: e.rule)
def test_a_condition_clears_after_its_clear_time_as_one_alert(
    tmp_path: Path, episode: Episode
) -> None:
    spec = RULES[episode.rule].spec
    site = Site(tmp_path, episode.device_type)
    seen: list[AlertChange] = []

    def report(at_s: float, override: Override) -> list[AlertChange]:
        changes = of_rule(episode.rule, site.report(at_s, override, episode.port))
        seen.extend(changes)
        return changes

    # Fires once the condition has held for its duration.
    at_s = 0.0
    fired: list[AlertChange] = []
    while at_s <= spec.for_s:
        fired += report(at_s, episode.alarm)
        at_s += episode.alarm_period_s
    assert [c.state for c in fired if c.fired] == [AlertState.FIRING]
    # Flapping: a single report back to normal between two alarming ones neither clears
    # it nor, when the condition holds again, makes a second alert.
    for _ in range(3):
        assert report(at_s, episode.normal) == []
        assert report(at_s + episode.alarm_period_s, episode.alarm) == []
        at_s += 2 * episode.alarm_period_s
    # Normal from `normal_from_s`: it clears at the first report at least its clear time
    # later, not before.
    normal_from_s = at_s
    assert spec.clear_after_s > 0
    while at_s < normal_from_s + spec.clear_after_s:
        assert report(at_s, episode.normal) == [], f"cleared after {at_s - normal_from_s} s"
        at_s += episode.normal_period_s
    (cleared,) = report(at_s, episode.normal)
    assert cleared.state is AlertState.RESOLVED
    assert report(at_s + episode.normal_period_s, episode.normal) == []
    # One alert, from the report that started it to its all-clear.
    assert {c.alert_id for c in seen} == {cleared.alert_id}
    assert cleared.started_ms == NOON_MS


@pytest.mark.parametrize(
    ("rule", "device_type", "opened", "closed", "normal", "period_s"),
    [
        # A loose lid rattled by passing traffic.
        ("cover_open", _COVER, "lid_opened", "lid_closed", says(lid_open=False, tilt_deg=1.2),
         600),
        # A detector hushed while the smoke is still there.
        ("fire_alarm", _SMOKE, "alarm", "alarm_cleared", says(alarm=False), 3600),
    ],
    ids=["cover_open", "fire_alarm"],
)  # fmt: skip
def test_an_alarm_and_its_all_clear_flapping_as_events_are_one_alert(
    tmp_path: Path,
    rule: str,
    device_type: DeviceType,
    opened: str,
    closed: str,
    normal: Override,
    period_s: float,
) -> None:
    site = Site(tmp_path, device_type)
    changes: list[AlertChange] = []
    for i in range(6):
        changes += site.event(20 * i, opened if i % 2 == 0 else closed)
    (fired,) = of_rule(rule, changes)
    assert fired.state is AlertState.FIRING
    # The last all-clear and the report sent with it; the next quiet report clears it.
    assert of_rule(rule, site.event(120, closed) + site.report(121, normal)) == []
    cleared = of_rule(rule, site.report(121 + period_s, normal))
    assert [(c.state, c.alert_id) for c in cleared] == [(AlertState.RESOLVED, fired.alert_id)]


def gone_silent(site: Site) -> tuple[AlertChange, float]:
    """Three reports a period apart, then silence checked every twelfth of a period up to
    six periods after the last report: the offline alert, and the time of the last check.
    It fires 2.5 periods after the last report, once."""
    period_s = PROFILES.periods_s()[site.device.device_type]
    for i in range(3):
        site.report(i * period_s, says())
    last_s = at_s = 2 * period_s
    changes: list[AlertChange] = []
    while at_s < last_s + 6 * period_s:
        at_s += period_s / 12
        for change in of_rule("device_offline", site.tick(at_s)):
            changes.append(change)
            assert 2.5 * period_s <= at_s - last_s < (2.5 + 1 / 12) * period_s
    (fired,) = changes
    assert fired.state is AlertState.FIRING
    return fired, at_s


@pytest.mark.parametrize("device_type", list(DeviceType))
def test_an_offline_device_is_one_alert_until_it_is_heard_again(
    tmp_path: Path, device_type: DeviceType
) -> None:
    site = Site(tmp_path, device_type)
    fired, at_s = gone_silent(site)
    back = of_rule("device_offline", site.report(at_s, says()))
    assert [(c.state, c.alert_id) for c in back] == [(AlertState.RESOLVED, fired.alert_id)]
    assert of_rule("device_offline", site.tick(at_s + 1)) == []


def test_an_offline_devices_last_will_is_not_hearing_it(tmp_path: Path) -> None:
    # The broker publishes a shed's last will some time after the shed went silent, when
    # its keep-alive runs out: the shed is not back, and its offline alert stays open.
    site = Site(tmp_path, DeviceType.CHARGING_SHED)
    _, at_s = gone_silent(site)
    assert of_rule("device_offline", site.last_will(at_s)) == []
    for later_s in range(5, 120, 5):
        assert of_rule("device_offline", site.tick(at_s + later_s)) == []
