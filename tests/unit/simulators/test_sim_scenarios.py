from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import PROJECT_ROOT
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.profile import load_profiles
from gateway.errors import DecodeError
from gateway.ingest.message import InboundMessage
from gateway.registry import load_registry
from simulators import DeviceType, Fleet, MessageKind, Scenario, ScenarioKind, SimMessage
from simulators.layout import distance_m
from simulators.scenario import resolve
from tests.unit.simulators.sim_contract import (
    EVENTS,
    MAX_BYTES,
    MORNING_MS,
    crc16_modbus,
    decode_frame,
)

Bodies = list[tuple[int, dict[str, Any]]]


def _run(
    fleet: Fleet, text: str, hours: float = 1.0, start_ms: int = MORNING_MS
) -> list[SimMessage]:
    scenario = Scenario.parse(text)
    return list(fleet.messages(start_ms=start_ms, duration_s=hours * 3600, scenarios=[scenario]))


def _of(messages: list[SimMessage], device_id: str, kind: MessageKind) -> Bodies:
    return [
        (m.time_ms, json.loads(m.payload))
        for m in messages
        if m.device_id == device_id and m.kind is kind
    ]


def _events(messages: list[SimMessage], name: str) -> list[tuple[str | None, dict[str, Any]]]:
    found = []
    for m in messages:
        if m.kind is MessageKind.EVENT:
            body = json.loads(m.payload)
            if body["event"] == name:
                found.append((m.device_id, body))
    return found


def _first(fleet: Fleet, device_type: DeviceType) -> str:
    return next(d.device_id for d in fleet.devices if d.device_type is device_type)


def test_parse() -> None:
    assert Scenario.parse("fire@30") == Scenario(ScenarioKind.FIRE, 30.0)
    assert Scenario.parse("fall@10:br-hgy-0003") == Scenario(ScenarioKind.FALL, 10.0, "br-hgy-0003")
    assert Scenario.parse("malformed@5").kind is ScenarioKind.MALFORMED
    assert str(Scenario.parse("fall@10.5:br-1")) == "fall@10.5:br-1"
    for bad in ("fire", "blaze@3", "fire@soon", "fire@-1"):
        with pytest.raises(ValueError):
            Scenario.parse(bad)


def test_wrong_target_is_refused(fleet: Fleet) -> None:
    with pytest.raises(ValueError, match="not one of"):
        _run(fleet, f"fall@1:{_first(fleet, DeviceType.MANHOLE_COVER)}")
    with pytest.raises(ValueError, match="no device"):
        _run(fleet, "fall@1:nobody")


def test_fire_sets_off_a_building(fleet: Fleet) -> None:
    messages = _run(fleet, "fire@30", hours=0.25)
    alarms = _events(messages, "alarm")
    assert alarms
    first = fleet.device(alarms[0][0] or "")
    building = [
        d
        for d in fleet.devices
        if d.device_type is DeviceType.SMOKE_DETECTOR and d.building_key == first.building_key
    ]
    assert len(building) >= 2
    assert any(d.imei for d in building)
    for device in building:
        if device.imei:
            frames = [
                decode_frame(b["payload"])
                for _, b in _of(messages, device.device_id, MessageKind.VENDOR)
            ]
            alarm_frames = [f for f in frames if f["type"] == 0x02]
            assert alarm_frames and all(f["status"] & 1 and f["crc_ok"] for f in alarm_frames)
            continue
        readings = [
            b
            for t, b in _of(messages, device.device_id, MessageKind.TELEMETRY)
            if t >= MORNING_MS + 30_000
        ]
        assert any(
            b["event"] == "alarm" for _, b in _of(messages, device.device_id, MessageKind.EVENT)
        )
        assert len(readings) >= 3 and all(b["alarm"] for b in readings)
        obscuration = [b["obscuration_pct_per_m"] for b in readings]
        temperature = [b["temperature_c"] for b in readings]
        assert obscuration[-1] > obscuration[0] and temperature[-1] > temperature[0]


def test_fall_and_sos(fleet: Fleet) -> None:
    target = [d for d in fleet.devices if d.device_type is DeviceType.BRACELET][2].device_id
    falls = _events(_run(fleet, f"fall@10:{target}", hours=0.1), "fall")
    assert len(falls) == 1 and falls[0][0] == target
    assert falls[0][1]["confidence"] == 0.9
    assert isinstance(falls[0][1]["lat"], float) and isinstance(falls[0][1]["lon"], float)
    assert falls[0][1]["ts"] == MORNING_MS + 10_000
    soses = _events(_run(fleet, "sos@10", hours=0.1), "sos")
    assert len(soses) == 1 and "lat" in soses[0][1]


def test_lid_opened(fleet: Fleet) -> None:
    messages = _run(fleet, "lid_opened@60")
    device_id = _events(messages, "lid_opened")[0][0] or ""
    readings = _of(messages, device_id, MessageKind.TELEMETRY)
    assert any(b["lid_open"] and b["tilt_deg"] > 15 for _, b in readings)
    assert _events(messages, "lid_closed")  # put back after a while


def test_overflow(fleet: Fleet) -> None:
    target = _first(fleet, DeviceType.MANHOLE_COVER)
    depth_cm = fleet.device(target).well_depth_cm or 0
    readings = _of(_run(fleet, "overflow@60"), target, MessageKind.TELEMETRY)
    levels = [b["water_level_cm"] for _, b in readings]
    assert max(levels) > 0.8 * depth_cm
    assert levels[0] < 0.5 * depth_cm


def test_sewer_gas(fleet: Fleet) -> None:
    target = _first(fleet, DeviceType.MANHOLE_COVER)
    readings = _of(_run(fleet, "sewer_gas@60"), target, MessageKind.TELEMETRY)
    assert any(b.get("ch4_ppm", 0) > 5000 for _, b in readings)


def _port_series(readings: Bodies) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    series: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for t, body in readings:
        for port in body["ports"]:
            series.setdefault(port["port"], []).append((t, port))
    return series


def test_thermal_runaway(fleet: Fleet) -> None:
    target = _first(fleet, DeviceType.CHARGING_SHED)
    readings = _of(_run(fleet, "thermal_runaway@60", hours=0.25), target, MessageKind.TELEMETRY)
    hot = []
    for points in _port_series(readings).values():
        for (t0, a), (t1, b) in itertools.pairwise(points):
            rise_c_per_min = (b["temperature_c"] - a["temperature_c"]) / ((t1 - t0) / 60_000)
            if b["temperature_c"] > 80 and rise_c_per_min >= 5:
                hot.append(b)
    assert hot


def test_overcurrent(fleet: Fleet) -> None:
    messages = _run(fleet, "overcurrent@60", hours=0.25)
    target = _first(fleet, DeviceType.CHARGING_SHED)
    events = _events(messages, "overcurrent")
    assert events and events[0][0] == target
    port = events[0][1]["port"]
    currents = [
        p["current_a"] for _, p in _port_series(_of(messages, target, MessageKind.TELEMETRY))[port]
    ]
    assert max(currents) > 10
    assert currents[-1] == 0  # the breaker cut it
    assert _events(messages, "power_cut")[0][1]["port"] == port


def test_shed_smoke(fleet: Fleet) -> None:
    messages = _run(fleet, "shed_smoke@60", hours=0.1)
    assert _events(messages, "smoke_alarm")
    target = _first(fleet, DeviceType.CHARGING_SHED)
    assert any(b["smoke"] for _, b in _of(messages, target, MessageKind.TELEMETRY))


def test_heart_rate_abnormal_for_minutes(fleet: Fleet) -> None:
    target = _first(fleet, DeviceType.BRACELET)
    readings = _of(_run(fleet, "heart_rate@60", hours=0.5), target, MessageKind.TELEMETRY)
    abnormal = [t for t, b in readings if b["worn"] and not 40 <= b["heart_rate_bpm"] <= 150]
    assert len(abnormal) >= 3 and abnormal[-1] - abnormal[0] >= 60_000
    # and back to normal afterwards
    assert 40 <= readings[-1][1]["heart_rate_bpm"] <= 150


def test_wander_leaves_the_safe_area(fleet: Fleet) -> None:
    target = _first(fleet, DeviceType.BRACELET)
    wearer = fleet.device(target).wearer
    assert wearer is not None
    readings = _of(_run(fleet, "wander@60", hours=0.5), target, MessageKind.TELEMETRY)
    away = [distance_m(b["lat"], b["lon"], wearer.home_lat, wearer.home_lon) for _, b in readings]
    assert max(away) > wearer.safe_radius_m
    assert away[0] < wearer.safe_radius_m


def test_no_activity_for_a_lone_wearer() -> None:
    fleet = Fleet.build(seed=7, devices=12, communities=1)
    day_start_ms = MORNING_MS - 3 * 3600 * 1000  # 07:00 local
    messages = _run(fleet, "no_activity@0", hours=15.5, start_ms=day_start_ms)
    alone = [d for d in fleet.devices if d.wearer is not None and d.wearer.lives_alone]
    assert alone
    readings = _of(messages, alone[0].device_id, MessageKind.TELEMETRY)
    assert all(b["worn"] for _, b in readings)
    assert len({b["steps"] for _, b in readings}) == 1
    assert readings[-1][0] - readings[0][0] >= 12 * 3600 * 1000


def test_low_battery(fleet: Fleet) -> None:
    messages = _run(fleet, "low_battery@60", hours=0.2)
    smoke = next(d for d in fleet.devices if d.device_type is DeviceType.SMOKE_DETECTOR)
    bracelet = _first(fleet, DeviceType.BRACELET)
    assert any(
        b["battery_pct"] < 20 for _, b in _of(messages, smoke.device_id, MessageKind.TELEMETRY)
    )
    assert any(device == smoke.device_id for device, _ in _events(messages, "low_battery"))
    assert any(b["battery_pct"] < 15 for _, b in _of(messages, bracelet, MessageKind.TELEMETRY))


def test_silent_devices_stop_and_leave_a_last_will(fleet: Fleet) -> None:
    target = _first(fleet, DeviceType.CHARGING_SHED)
    messages = _run(fleet, f"silent@60:{target}", hours=0.5)
    mine = [m for m in messages if m.device_id == target]
    will = [m for m in mine if m.kind is MessageKind.STATUS]
    assert len(will) == 1 and will[0].retain and json.loads(will[0].payload) == {"online": False}
    assert will[0] is mine[-1] and will[0].time_ms == MORNING_MS + 60_000
    others = [m for m in messages if m.device_id != target and m.time_ms > MORNING_MS + 60_000]
    assert others


@pytest.mark.parametrize("others", [("sos@60",), ("fire@60",), ("sos@60", "fire@70")])
def test_a_silent_without_a_target_spares_the_devices_other_scenarios_hit(
    others: tuple[str, ...],
) -> None:
    # In this fleet the burning building has the first detector in it, and the bracelet
    # that presses SOS is the first bracelet.
    fleet = Fleet.build(seed=7, devices=12, communities=1)
    scenarios = [Scenario.parse(text) for text in ("silent@50", *others)]
    messages = list(fleet.messages(start_ms=MORNING_MS, duration_s=900, scenarios=scenarios))
    silenced = {
        m.device_id
        for m in messages
        if m.kind is MessageKind.STATUS and json.loads(m.payload) == {"online": False}
    }
    assert {fleet.device(d or "").device_type for d in silenced} == set(DeviceType)
    needed: set[str | None] = set()
    if "sos@60" in others:
        soses = _events(messages, "sos")
        assert len(soses) == 1, "the bracelet that should press SOS was silenced"
        needed.add(soses[0][0])
    if any(text.startswith("fire@") for text in others):
        alarms = _events(messages, "alarm")
        assert alarms, "the detectors of the burning building were silenced"
        first = fleet.device(alarms[0][0] or "")
        needed.update(
            d.device_id
            for d in fleet.devices
            if d.device_type is DeviceType.SMOKE_DETECTOR and d.building_key == first.building_key
        )
    assert needed and not silenced & needed


def test_a_silent_without_a_target_is_refused_when_other_scenarios_hit_every_device() -> None:
    fleet = Fleet.build(seed=1, devices=1, communities=1)
    with pytest.raises(ValueError, match="silent@50: every device it applies to is hit"):
        _ = fleet.messages(
            start_ms=MORNING_MS,
            duration_s=60,
            scenarios=[Scenario.parse("silent@50"), Scenario.parse("low_battery@10")],
        )


def test_malformed_sends_every_kind_of_bad_input(fleet: Fleet) -> None:
    messages = [
        m for m in _run(fleet, "malformed@5", hours=0.01) if m.kind is MessageKind.MALFORMED
    ]
    by_label = {m.label: m for m in messages}
    assert set(by_label) == {
        "not_json", "too_large", "unknown_device_type", "unregistered_device", "wrong_type",
        "out_of_range", "acme_bad_header", "acme_bad_length", "acme_bad_crc",
    }  # fmt: skip
    registered = {d.device_id for d in fleet.devices}

    with pytest.raises(ValueError):
        json.loads(by_label["not_json"].payload)
    assert len(by_label["too_large"].payload) > MAX_BYTES
    json.loads(by_label["too_large"].payload)
    assert by_label["unknown_device_type"].topic.split("/")[2] not in EVENTS
    unregistered = by_label["unregistered_device"].topic.split("/")
    assert unregistered[2] == "smoke_detector" and unregistered[3] not in registered
    wrong = json.loads(by_label["wrong_type"].payload)
    assert isinstance(wrong["heart_rate_bpm"], str)
    out = json.loads(by_label["out_of_range"].payload)
    assert out["heart_rate_bpm"] > 250 or out["battery_pct"] > 100

    def frame(label: str) -> bytes:
        return bytes.fromhex(json.loads(by_label[label].payload)["payload"])

    header = frame("acme_bad_header")
    assert len(header) == 10 and header[0] != 0xAA
    assert crc16_modbus(header[:8]) == int.from_bytes(header[8:], "little")
    assert len(frame("acme_bad_length")) != 10
    crc = frame("acme_bad_crc")
    assert len(crc) == 10 and crc[0] == 0xAA
    assert crc16_modbus(crc[:8]) != int.from_bytes(crc[8:], "little")


# Each bad input, and the reason the gateway gives for it.
BAD_INPUT_REASONS = {
    "not_json": "not_json", "too_large": "too_large",
    "unknown_device_type": "unknown_device_type", "unregistered_device": "unregistered_device",
    "wrong_type": "wrong_type", "out_of_range": "out_of_range",
    "acme_bad_header": "bad_frame_header", "acme_bad_length": "bad_frame_length",
    "acme_bad_crc": "bad_crc",
}  # fmt: skip


@pytest.mark.parametrize(
    ("devices", "communities", "sent"),
    [(60, 3, 9), (6, 3, 9), (2, 2, 9), (2, 1, 9), (1, 1, 6)],
)
def test_the_gateway_rejects_each_bad_input_for_its_own_fault_in_any_fleet(
    tmp_path: Path, devices: int, communities: int, sent: int
) -> None:
    # A fleet too small for a bracelet, or for one detector in four to be an ACME one,
    # still tests what each case is for, not the registry: its vendor frames come from
    # its one ACME detector, its wrong-typed and out-of-range fields from a device that
    # has them. A fleet of one device (which speaks JSON) has no frames to send.
    fleet = Fleet.build(seed=1, devices=devices, communities=communities)
    registry_file = tmp_path / "devices.csv"
    registry_file.write_text(fleet.registry_csv(), encoding="utf-8")
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    decoder = Decoder(profiles, load_registry(registry_file), require_registered=True)
    reasons = {}
    for m in _run(fleet, "malformed@1", hours=0.01):
        if m.kind is MessageKind.MALFORMED:
            with pytest.raises(DecodeError) as refused:
                decoder.decode(InboundMessage(m.topic, m.payload, m.time_ms))
            reasons[m.label] = refused.value.reason
    assert len(reasons) == sent
    assert reasons == {label: BAD_INPUT_REASONS[label] for label in reasons}


def test_a_default_silent_device_is_none_that_malformed_sends_as() -> None:
    # Malformed sends its bad input as devices of the fleet: a silent one picked among
    # them would keep publishing after its last will said it was gone.
    fleet = Fleet.build(seed=7, devices=60)
    scenarios = [Scenario.parse("silent@50"), Scenario.parse("malformed@100")]
    messages = list(fleet.messages(start_ms=MORNING_MS, duration_s=600, scenarios=scenarios))
    will_at = {
        m.device_id: m.time_ms
        for m in messages
        if m.kind is MessageKind.STATUS and json.loads(m.payload) == {"online": False}
    }
    assert len(will_at) == 4  # one of each type
    after_will = [
        m for m in messages if m.device_id in will_at and m.time_ms > will_at[m.device_id]
    ]
    assert after_will == []


def test_no_activity_is_refused_in_a_fleet_where_nobody_lives_alone() -> None:
    # The rule watches only wearers who live alone: stilling another would raise nothing.
    fleet = Fleet.build(seed=3, devices=8, communities=1)
    bracelets = [d for d in fleet.devices if d.device_type is DeviceType.BRACELET]
    assert bracelets and not any(d.wearer and d.wearer.lives_alone for d in bracelets)
    with pytest.raises(ValueError, match="the fleet has no bracelet whose wearer lives alone"):
        resolve([Scenario.parse("no_activity@0")], fleet.devices, fleet.seed)
