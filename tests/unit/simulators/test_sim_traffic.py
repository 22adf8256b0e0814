from __future__ import annotations

import json
from collections import defaultdict
from itertools import islice, pairwise

from simulators import DeviceType, Fleet, MessageKind, Scenario, SimMessage
from simulators.layout import distance_m
from simulators.models import make_model
from simulators.models.model import local_hour
from tests.unit.simulators.sim_contract import MORNING_MS, decode_frame, message_problems

ALL_SCENARIOS = [
    Scenario.parse(text)
    for text in (
        "fire@60", "fall@70", "sos@80", "lid_opened@90", "overflow@100", "sewer_gas@110",
        "thermal_runaway@120", "overcurrent@130", "shed_smoke@140", "heart_rate@150",
        "wander@160", "no_activity@170", "low_battery@180", "malformed@190", "silent@3000",
    )
]  # fmt: skip


def _run(fleet: Fleet, hours: float, scenarios: list[Scenario] | None = None) -> list[SimMessage]:
    return list(
        fleet.messages(start_ms=MORNING_MS, duration_s=hours * 3600, scenarios=scenarios or [])
    )


def _seq_and_ts_by_device(messages: list[SimMessage]) -> dict[str, list[tuple[int, int]]]:
    by_device: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for m in messages:
        if m.kind in (MessageKind.MALFORMED, MessageKind.STATUS):
            continue
        body = json.loads(m.payload)
        assert m.device_id is not None
        by_device[m.device_id].append((body["seq"], body["ts"]))
    return by_device


def test_same_seed_same_bytes(fleet: Fleet) -> None:
    first = _run(fleet, 1, ALL_SCENARIOS)
    again = _run(Fleet.build(seed=7, devices=60), 1, ALL_SCENARIOS)
    assert first == again
    other = _run(Fleet.build(seed=8, devices=60), 1, ALL_SCENARIOS)
    assert [m.payload for m in other] != [m.payload for m in first]


def test_every_message_is_valid_by_the_contract(fleet: Fleet) -> None:
    messages = _run(fleet, 2, ALL_SCENARIOS)
    kinds = {m.kind for m in messages}
    assert {MessageKind.TELEMETRY, MessageKind.EVENT, MessageKind.VENDOR} <= kinds
    for m in messages:
        if m.kind is MessageKind.MALFORMED:
            continue
        assert message_problems(m.topic, m.payload) == [], (m.topic, m.payload)
        assert m.qos == 1
        assert m.retain == (m.kind is MessageKind.STATUS)


def test_seq_rises_by_one_and_time_only_forwards(fleet: Fleet) -> None:
    messages = _run(fleet, 2, ALL_SCENARIOS)
    times = [m.time_ms for m in messages]
    assert times == sorted(times)
    for device_id, pairs in _seq_and_ts_by_device(messages).items():
        seqs = [s for s, _ in pairs]
        stamps = [t for _, t in pairs]
        assert seqs == list(range(1, len(seqs) + 1)), device_id
        assert all(a < b for a, b in pairwise(stamps)), device_id


def test_typical_periods_and_period_scale(fleet: Fleet) -> None:
    messages = _run(fleet, 3)
    per_device = defaultdict(int)
    for m in messages:
        per_device[m.device_id] += 1
    for device in fleet.devices:
        expected = 3 * 3600 / device.typical_period_s
        assert abs(per_device[device.device_id] - expected) <= 1.5, device.device_id
    fast = list(fleet.messages(start_ms=MORNING_MS, duration_s=60, period_scale=0.01))
    sheds = sum(1 for d in fleet.devices if d.device_type is DeviceType.CHARGING_SHED)
    shed_messages = [m for m in fast if "/charging_shed/" in m.topic]
    assert abs(len(shed_messages) - sheds * 60 / 0.15) <= sheds * 2


def test_a_quiet_day_raises_no_alarm() -> None:
    """Without scenarios, nothing a default safety rule would alert on."""
    fleet = Fleet.build(seed=11, devices=30)
    messages = _run(fleet, 24)
    devices = {d.device_id: d for d in fleet.devices}
    steps_seen: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        assert m.kind in (MessageKind.TELEMETRY, MessageKind.VENDOR)
        body = json.loads(m.payload)
        device = devices[m.device_id or ""]
        if m.kind is MessageKind.VENDOR:
            frame = decode_frame(body["payload"])
            assert frame["type"] == 1 and frame["status"] == 0 and frame["battery_pct"] >= 20
            continue
        match device.device_type:
            case DeviceType.SMOKE_DETECTOR:
                assert not body["alarm"] and body["battery_pct"] >= 20
                assert body["obscuration_pct_per_m"] < 1
                assert 20 <= body["temperature_c"] <= 30
            case DeviceType.MANHOLE_COVER:
                assert not body["lid_open"] and 0 <= body["tilt_deg"] <= 3
                assert body["water_level_cm"] < 0.8 * (device.well_depth_cm or 0)
                assert body.get("ch4_ppm", 0) < 500
            case DeviceType.BRACELET:
                wearer = device.wearer
                # Off the wrist only at night, on the charger.
                night = not 7 <= local_hour(m.time_ms) < 21
                assert wearer is not None and (body["worn"] or night)
                assert 55 <= body["heart_rate_bpm"] <= 100 and body["battery_pct"] >= 15
                away_m = distance_m(body["lat"], body["lon"], wearer.home_lat, wearer.home_lon)
                assert away_m < wearer.safe_radius_m
                steps_seen[device.device_id].append(body["steps"])
            case DeviceType.CHARGING_SHED:
                assert not body["smoke"]
                for port in body["ports"]:
                    assert port["temperature_c"] < 60 and port["current_a"] <= 10
                    if port["charging"]:
                        assert 1.5 <= port["current_a"] <= 4 and 48 <= port["voltage_v"] <= 60
                        assert abs(port["power_w"] - port["voltage_v"] * port["current_a"]) < 1
                    else:
                        assert port["current_a"] == 0
    # Steps rise through the day (pottering and walks) and reset at local midnight.
    for series in steps_seen.values():
        drops = [i for i, (a, b) in enumerate(pairwise(series)) if b < a]
        assert len(drops) <= 1
        assert max(series) > 2000


def test_walks_move_the_wearer() -> None:
    fleet = Fleet.build(seed=5, devices=30)
    bracelets = {d.device_id: d for d in fleet.devices if d.device_type is DeviceType.BRACELET}
    furthest: dict[str, float] = defaultdict(float)
    for m in _run(fleet, 8):
        if m.device_id in bracelets:
            body = json.loads(m.payload)
            wearer = bracelets[m.device_id].wearer
            assert wearer is not None
            away = distance_m(body["lat"], body["lon"], wearer.home_lat, wearer.home_lon)
            furthest[m.device_id] = max(furthest[m.device_id], away)
    assert sum(1 for d in furthest.values() if d > 50) >= len(bracelets) // 2


def test_wearers_charge_their_bracelets_overnight_before_they_run_low() -> None:
    # Left on the wrist, a bracelet would run flat in a week, warning of a low battery
    # for days: its wearer takes it off at bedtime every few nights to charge it.
    fleet = Fleet.build(seed=1, devices=40, communities=1)
    bracelets = [d for d in fleet.devices if d.device_type is DeviceType.BRACELET]
    assert bracelets
    for device in bracelets:
        model = make_model(device, seed=1, start_ms=MORNING_MS)
        batteries: list[int] = []
        off_at_h: list[float] = []
        for hour in range(1, 10 * 24 + 1):
            time_ms = MORNING_MS + hour * 3_600_000
            model.advance(time_ms)
            reading = model.reading()
            battery = reading["battery_pct"]
            assert isinstance(battery, int)
            batteries.append(battery)
            if not reading["worn"]:
                off_at_h.append(local_hour(time_ms))
        # bracelet_low_battery fires below 15 %.
        assert min(batteries) >= 15, device.device_id
        assert off_at_h, f"{device.device_id} was never charged"
        assert all(h >= 21 or h < 7 for h in off_at_h), device.device_id


def test_status_and_last_will(fleet: Fleet) -> None:
    statuses = fleet.status_messages(MORNING_MS)
    assert len(statuses) == len(fleet.devices)
    for m in statuses:
        assert m.topic.endswith("/status") and m.retain and m.qos == 1
        assert json.loads(m.payload) == {"online": True, "ts": MORNING_MS}
    will = fleet.last_will(fleet.devices[0])
    assert will.retain and json.loads(will.payload) == {"online": False}
    assert will.topic == statuses[0].topic


def test_stream_hands_out_telemetry_at_the_rate(fleet: Fleet) -> None:
    messages = list(islice(fleet.stream(rate_msg_s=200, start_ms=MORNING_MS), 1200))
    assert messages[-1].time_ms - MORNING_MS == 5995  # 200 msg/s
    counts = defaultdict(int)
    for m in messages:
        assert message_problems(m.topic, m.payload) == []
        counts[m.device_id] += 1
    assert set(counts.values()) == {20}  # round robin over 60 devices
    for pairs in _seq_and_ts_by_device(messages).values():
        assert [s for s, _ in pairs] == list(range(1, 21))
        assert all(a[1] < b[1] for a, b in pairwise(pairs))
    # Faster than one message per ms per device still keeps timestamps strictly increasing.
    tiny = Fleet.build(seed=1, devices=2, communities=1)
    burst = list(islice(tiny.stream(rate_msg_s=100_000, start_ms=MORNING_MS), 500))
    for pairs in _seq_and_ts_by_device(burst).values():
        assert all(a[1] < b[1] for a, b in pairwise(pairs))


def test_sharded_fleets_split_the_devices(fleet: Fleet) -> None:
    parts = [fleet.sharded(i, 3) for i in range(3)]
    ids = [d.device_id for p in parts for d in p.local_devices]
    assert sorted(ids) == sorted(d.device_id for d in fleet.devices)
    whole = _run(fleet, 0.5, [Scenario.parse("fall@10"), Scenario.parse("malformed@5")])
    split = [m for p in parts for m in p.messages(start_ms=MORNING_MS, duration_s=1800,
             scenarios=[Scenario.parse("fall@10"), Scenario.parse("malformed@5")])]  # fmt: skip
    assert sorted(m.payload for m in split) == sorted(m.payload for m in whole)


def test_a_stream_keeps_its_rate_past_1000_msg_s_a_device() -> None:
    # Each device's `ts` runs 1 ms after its last at least; the messages are still sent
    # at the rate asked, 8,000 msg/s from 4 devices.
    fleet = Fleet.build(seed=1, devices=4, communities=1)
    messages = list(islice(fleet.stream(rate_msg_s=8000, start_ms=MORNING_MS), 8000))
    assert messages[-1].time_ms - MORNING_MS < 1000
    by_device: dict[str | None, list[int]] = defaultdict(list)
    for message in messages:
        by_device[message.device_id].append(json.loads(message.payload)["ts"])
    assert all(a < b for stamps in by_device.values() for a, b in pairwise(stamps))
