import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import PROJECT_ROOT
from gateway.decode import acme
from gateway.decode import decoder as decoder_module
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.profile import load_profiles
from gateway.decode.record import Event, Reading, StatusReport, TimeSource
from gateway.decode.rejection import RejectReason
from gateway.errors import DecodeError
from gateway.ingest.message import InboundMessage
from gateway.registry import RegisteredDevice, Registry
from simulators.acme import AcmeFrame, FrameType, StatusBits

NOW_MS = 1_767_225_600_000
PROFILES = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
IMEI = "860000000000001"


def registry() -> Registry:
    return Registry(
        [
            RegisteredDevice(
                device_id="sd-1", device_type="smoke_detector", community="hgy", building="3"
            ),
            RegisteredDevice(
                device_id="acme-1", device_type="smoke_detector", community="hgy", imei=IMEI
            ),
        ]
    )


def decoder(*, require_registered: bool = False) -> Decoder:
    return Decoder(PROFILES, registry(), require_registered=require_registered)


def message(topic: str, payload: object) -> InboundMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return InboundMessage(topic, body, received_ms=NOW_MS + 5)


def reject_reason(topic: str, payload: object, **kwargs: bool) -> str:
    with pytest.raises(DecodeError) as info:
        decoder(**kwargs).decode(message(topic, payload))
    return info.value.reason


def test_smoke_telemetry_becomes_a_typed_reading() -> None:
    decoded = decoder().decode(
        message(
            "community/hgy/smoke_detector/sd-1/telemetry",
            {
                "ts": NOW_MS,
                "seq": 7,
                "obscuration_pct_per_m": 0.5,
                "temperature_c": 24,
                "battery_pct": 88.0,
                "alarm": False,
                "unknown_extra": "ignored",
            },
        )
    )
    (reading,) = decoded.records
    assert isinstance(reading, Reading)
    assert reading.fields == {
        "obscuration_pct_per_m": 0.5,
        "temperature_c": 24.0,
        "battery_pct": 88,
        "alarm": False,
    }
    assert type(reading.fields["temperature_c"]) is float
    assert type(reading.fields["battery_pct"]) is int
    assert (reading.time_ms, reading.time_source, reading.seq) == (NOW_MS, TimeSource.DEVICE, 7)


def test_missing_ts_uses_receive_time_and_says_so() -> None:
    decoded = decoder().decode(
        message("community/hgy/bracelet/br-1/telemetry", {"heart_rate_bpm": 70})
    )
    (reading,) = decoded.records
    assert reading.time_ms == NOW_MS + 5
    assert reading.time_source is TimeSource.GATEWAY
    assert decoded.dedup_key is None


@pytest.mark.parametrize(
    "ts",
    [
        1767225600,  # seconds sent for milliseconds
        86_400_000,  # a clock never set
        NOW_MS + 2 * 86_400_000,  # more than a day ahead
    ],
)
def test_an_alarm_from_a_device_whose_clock_is_off_is_kept_at_the_time_it_came(
    ts: int, caplog: pytest.LogCaptureFixture
) -> None:
    d = decoder()
    topic = "community/hgy/smoke_detector/sd-1/event"
    with caplog.at_level(logging.WARNING, logger="gateway.decode.decoder"):
        decoded = d.decode(message(topic, {"ts": ts, "event": "alarm"}))
        later = d.decode(message(topic, {"ts": ts, "event": "alarm", "seq": 8}))
    (event,) = decoded.records
    assert isinstance(event, Event) and event.kind == "alarm"
    assert (event.time_ms, event.time_source) == (NOW_MS + 5, TimeSource.GATEWAY)
    # A clock stuck at one time sends it with every alarm: it tells none from the next,
    # which would be dropped as a redelivery; only seq does, alike at every delivery.
    assert decoded.dedup_key is None
    again = d.decode(message(topic, {"ts": ts, "event": "alarm", "seq": 8}))
    next_one = d.decode(message(topic, {"ts": ts, "event": "alarm", "seq": 9}))
    assert later.dedup_key is not None and later.dedup_key == again.dedup_key
    assert next_one.dedup_key != later.dedup_key
    assert [r.message for r in caplog.records] == [
        f"hgy/smoke_detector/sd-1 sends times its clock cannot have (ts {ts}): what it sends "
        "is kept at the time it comes"
    ]


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        ("2026-01-01T00:00:00z", NOW_MS),
        ("2026-01-01t00:00:00Z", NOW_MS),
        ("2025-12-31T23:59:60Z", NOW_MS),
    ],
)
def test_every_form_rfc3339_allows_is_taken(ts: str, expected_ms: int) -> None:
    decoded = decoder().decode(
        message("community/hgy/bracelet/br-1/telemetry", {"ts": ts, "heart_rate_bpm": 70})
    )
    assert (decoded.records[0].time_ms, decoded.records[0].time_source) == (
        expected_ms, TimeSource.DEVICE,
    )  # fmt: skip


def test_rfc3339_timestamp_with_offset() -> None:
    decoded = decoder().decode(
        message(
            "community/hgy/bracelet/br-1/telemetry",
            {"ts": "2026-01-01T08:00:00+08:00", "heart_rate_bpm": 70},
        )
    )
    assert decoded.records[0].time_ms == NOW_MS


def test_charging_shed_ports_become_readings_of_their_own() -> None:
    decoded = decoder().decode(
        message(
            "community/hgy/charging_shed/cs-1/telemetry",
            {
                "ts": NOW_MS,
                "ambient_temp_c": 21.5,
                "smoke": False,
                "ports": [
                    {
                        "port": 1,
                        "charging": True,
                        "current_a": 2.5,
                        "voltage_v": 48.0,
                        "power_w": 120.0,
                        "temperature_c": 35.0,
                    },
                    {
                        "port": 2,
                        "charging": False,
                        "current_a": 0,
                        "voltage_v": 0,
                        "power_w": 0,
                        "temperature_c": 22.0,
                    },
                ],
            },
        )
    )
    shed, port1, port2 = decoded.records
    assert isinstance(shed, Reading) and shed.port is None
    assert shed.fields == {"ambient_temp_c": 21.5, "smoke": False}
    assert isinstance(port1, Reading) and port1.port == 1 and port1.fields["temperature_c"] == 35.0
    assert isinstance(port2, Reading) and port2.port == 2 and port2.fields["charging"] is False


def test_event_and_status() -> None:
    fall = (
        decoder()
        .decode(
            message(
                "community/hgy/bracelet/br-1/event",
                {"ts": NOW_MS, "event": "fall", "confidence": 0.93, "lat": 34.7, "lon": 113.6},
            )
        )
        .records[0]
    )
    assert isinstance(fall, Event)
    assert fall.kind == "fall" and fall.fields["confidence"] == 0.93
    overcurrent = (
        decoder()
        .decode(
            message("community/hgy/charging_shed/cs-1/event", {"event": "overcurrent", "port": 3})
        )
        .records[0]
    )
    assert isinstance(overcurrent, Event) and overcurrent.port == 3
    status = decoder().decode(message("community/hgy/bracelet/br-1/status", {"online": False}))
    assert status.records == (
        StatusReport(status.device, NOW_MS + 5, TimeSource.GATEWAY, online=False),
    )


def test_a_retained_status_without_a_time_is_marked_as_of_no_known_time() -> None:
    topic = "community/hgy/bracelet/br-1/status"
    stamped, unstamped, live = (
        decoder().decode(InboundMessage(topic, json.dumps(body).encode(), NOW_MS, retain=retain))
        for body, retain in (
            ({"online": True, "ts": NOW_MS - 86_400_000}, True),
            ({"online": True}, True),
            ({"online": True}, False),
        )
    )
    assert [r.time_source for m in (stamped, unstamped, live) for r in m.records] == [
        TimeSource.DEVICE,
        TimeSource.RETAINED,
        TimeSource.GATEWAY,
    ]


def acme_body(frame: bytes, imei: str = IMEI) -> dict[str, object]:
    return {"imei": imei, "ts": NOW_MS, "payload": frame.hex().upper()}


def test_acme_alarm_frame_is_a_smoke_detector_reading_and_events() -> None:
    frame = AcmeFrame(
        FrameType.ALARM, StatusBits.ALARM | StatusBits.TAMPER, 76, -3.5, 12.34
    ).encode()
    decoded = decoder().decode(message(f"vendor/acme-smoke/{IMEI}/up", acme_body(frame)))
    assert (decoded.device.community, decoded.device.device_id) == ("hgy", "acme-1")
    assert decoded.device.device_type == "smoke_detector"
    reading, *events = decoded.records
    assert isinstance(reading, Reading)
    assert reading.fields["temperature_c"] == -3.5
    assert reading.fields["obscuration_pct_per_m"] == 12.34
    assert reading.fields["battery_pct"] == 76
    assert reading.fields["alarm"] is True
    assert [e.kind for e in events if isinstance(e, Event)] == ["alarm", "tamper"]


def test_acme_periodic_frame_keeps_its_status_bits_as_fields_and_raises_no_event() -> None:
    # A detector still open reports so every hour: its alarm report made the alert.
    frame = AcmeFrame(FrameType.PERIODIC, StatusBits.TAMPER, 76, 21.5, 0.1).encode()
    decoded = decoder().decode(message(f"vendor/acme-smoke/{IMEI}/up", acme_body(frame)))
    (reading,) = decoded.records
    assert isinstance(reading, Reading)
    assert (reading.fields["tamper"], reading.fields["alarm"]) == (True, False)


def test_acme_frame_known_vector() -> None:
    # header, periodic, no status bits, 90 %, 25.3 °C, 0.05 %/m
    body = bytes.fromhex("AA01005A00FD0005")
    crc = acme.crc16_modbus(body)
    frame = acme.decode_frame((body + bytes([crc & 0xFF, crc >> 8])).hex())
    assert (frame.battery_pct, frame.temperature_c, frame.obscuration_pct_per_m) == (90, 25.3, 0.05)
    assert acme.crc16_modbus(b"123456789") == 0x4B37


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("community/hgy/smoke_detector/sd-1/telemetry", b"{not json", "not_json"),
        ("community/hgy/smoke_detector/sd-1/telemetry", b"\xff\xfe", "not_json"),
        ("community/hgy/smoke_detector/sd-1/telemetry", [1, 2], "not_object"),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"x": "y" * 20_000}, "too_large"),
        ("community/hgy/toaster/t-1/telemetry", {"temp": 1}, "unknown_device_type"),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"battery_pct": "90"}, "wrong_type"),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"alarm": 1}, "wrong_type"),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"battery_pct": 12.5}, "wrong_type"),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"battery_pct": 101}, "out_of_range"),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"temperature_c": -41}, "out_of_range"),
        ("community/hgy/smoke_detector/sd-1/telemetry", b'{"temperature_c": NaN}', "not_json"),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"rssi": 3}, "missing_field"),
        ("community/hgy/smoke_detector/sd-1/event", {"event": "party"}, "unknown_event"),
        ("community/hgy/smoke_detector/sd-1/event", {"ts": NOW_MS}, "missing_field"),
        ("community/hgy/smoke_detector/sd-1/event", {"event": 5}, "wrong_type"),
        ("community/hgy/smoke_detector/sd-1/status", {"ts": NOW_MS}, "missing_field"),
        ("community/hgy/smoke_detector/sd-1/status", {"online": "yes"}, "wrong_type"),
        (
            "community/hgy/smoke_detector/sd-1/telemetry",
            {"ts": "yesterday", "alarm": True},
            "bad_timestamp",
        ),
        (
            "community/hgy/smoke_detector/sd-1/telemetry",
            {"ts": "2026-01-01T08:00:00", "alarm": True},
            "bad_timestamp",
        ),
        ("community/hgy/smoke_detector/sd-1/telemetry", {"seq": -1, "alarm": True}, "wrong_type"),
        (
            "community/hgy/smoke_detector/sd-1/telemetry",
            {"seq": 2**63, "alarm": True},
            "wrong_type",
        ),
        ("community/hgy/smoke_detector/sd-1/status", {"seq": 2**64, "online": True}, "wrong_type"),
        ("community/HGY/smoke_detector/sd-1/telemetry", {"alarm": True}, "bad_topic"),
        ("community/hgy/smoke_detector/sd-1/config", {"alarm": True}, "bad_topic"),
        ("other/topic", {"alarm": True}, "bad_topic"),
        ("community/hgy/bracelet/sd-1/telemetry", {"worn": True}, "device_type_mismatch"),
        ("community/hgy/charging_shed/cs-1/telemetry", {"ports": [{"port": "a"}]}, "wrong_type"),
        (
            "community/hgy/bracelet/br-1/event",
            {"event": "fall", "confidence": 1.5},
            "out_of_range",
        ),
    ],
)
def test_bad_input_is_rejected_with_its_reason(topic: str, payload: object, reason: str) -> None:
    assert reject_reason(topic, payload) == reason


def test_a_shed_on_fire_is_heard_whatever_its_ports_read() -> None:
    # The contract states no range for a shed's values: none of them rejects the message
    # that says there is smoke.
    ports = [
        {"port": 1, "charging": False, "current_a": -0.02, "voltage_v": 0.0, "power_w": -0.5,
         "temperature_c": 24.0},
        {"port": 2, "charging": True, "current_a": 150.0, "voltage_v": 480.0,
         "power_w": 72000.0, "temperature_c": 900.0},
        *({"port": n, "charging": False} for n in range(3, 81)),
    ]  # fmt: skip
    body = {"ts": NOW_MS, "ambient_temp_c": -55.0, "smoke": True, "ports": ports}
    decoded = decoder().decode(message("community/hgy/charging_shed/cs-1/telemetry", body))
    shed, *by_port = decoded.records
    assert isinstance(shed, Reading) and shed.fields["smoke"] is True
    assert len(by_port) == 80
    assert by_port[1].fields["current_a"] == 150.0
    event = {"ts": NOW_MS, "event": "overcurrent", "port": 1001}
    (overcurrent,) = (
        decoder().decode(message("community/hgy/charging_shed/cs-1/event", event)).records
    )
    assert isinstance(overcurrent, Event) and overcurrent.port == 1001


def test_topics_are_checked_once_but_every_message_on_them_is_judged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Few topics remembered, so that the memory of them is cleared on the way.
    monkeypatch.setattr(decoder_module, "_ROUTES_MAX_ENTRIES", 2)
    d = decoder()
    for _ in range(2):
        for device in ("sd-1", "sd-2", "sd-3"):
            decoded = d.decode(
                message(f"community/hgy/smoke_detector/{device}/telemetry", {"battery_pct": 90})
            )
            assert decoded.device.device_id == device
        # A bad topic is not remembered as good, nor a good one as bad.
        with pytest.raises(DecodeError) as info:
            d.decode(message("community/hgy/bracelet/sd-1/telemetry", {"heart_rate_bpm": 70}))
        assert info.value.reason == "device_type_mismatch"
        with pytest.raises(DecodeError) as info:
            d.decode(message("community/hgy/smoke_detector/sd-1/telemetry", b"{"))
        assert info.value.reason == "not_json"


def test_unregistered_device_rejected_only_when_the_registry_is_enforced() -> None:
    topic = "community/hgy/smoke_detector/sd-unknown/telemetry"
    assert reject_reason(topic, {"alarm": True}, require_registered=True) == "unregistered_device"
    assert decoder().decode(message(topic, {"alarm": True})).records


def good_frame() -> bytes:
    return AcmeFrame(FrameType.PERIODIC, StatusBits.NONE, 90, 25.0, 0.0).encode()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xab" + good_frame()[1:], "bad_frame_header"),
        (good_frame()[:9], "bad_frame_length"),
        (good_frame() + b"\x00", "bad_frame_length"),
        (good_frame()[:8] + bytes([good_frame()[8] ^ 1, good_frame()[9]]), "bad_crc"),
    ],
)
def test_bad_acme_frames(frame: bytes, reason: str) -> None:
    assert reject_reason(f"vendor/acme-smoke/{IMEI}/up", acme_body(frame)) == reason


def test_acme_bad_hex_and_unknown_imei() -> None:
    topic = f"vendor/acme-smoke/{IMEI}/up"
    assert reject_reason(topic, {"imei": IMEI, "payload": "zz"}) == "bad_frame"
    # Half a byte short is a length, not a character, that is wrong.
    odd = {"imei": IMEI, "payload": good_frame().hex()[:-1]}
    assert reject_reason(topic, odd) == "bad_frame_length"
    other = "860000000000999"
    assert (
        reject_reason(f"vendor/acme-smoke/{other}/up", acme_body(good_frame(), other))
        == "unregistered_device"
    )


def test_redelivery_keys() -> None:
    d = decoder()
    topic = "community/hgy/bracelet/br-1/"

    def key(kind: str, body: dict[str, object]) -> int | None:
        return d.decode(message(topic + kind, body)).dedup_key

    telemetry = {"ts": NOW_MS, "seq": 5, "worn": True}
    # Every delivery of one message has one key.
    assert key("telemetry", telemetry) == key("telemetry", dict(telemetry))
    # A device that restarted counts from 0 again: same seq, later ts, a new message.
    assert key("telemetry", telemetry) != key("telemetry", {**telemetry, "ts": NOW_MS + 60_000})
    # Without seq the timestamp decides, per kind of message.
    assert key("telemetry", {"ts": NOW_MS, "worn": True}) != key(
        "event", {"ts": NOW_MS, "event": "sos"}
    )
    # seq without ts: with the message's bytes, alike at every delivery, where a device
    # counting from 0 again after a battery change sends other readings under an old seq.
    assert key("telemetry", {"seq": 5, "worn": True}) == key("telemetry", {"seq": 5, "worn": True})
    assert key("telemetry", {"seq": 5, "worn": True}) != key("telemetry", {"seq": 5, "worn": False})
    # Neither seq nor ts: nothing tells a redelivery from a new message.
    assert key("telemetry", {"worn": True}) is None


def test_events_and_frames_sent_at_one_time_are_told_apart() -> None:
    d = decoder()

    def key(topic: str, body: dict[str, object]) -> int | None:
        return d.decode(message(topic, body)).dedup_key

    wrist = "community/hgy/bracelet/br-1/event"
    fall = {"ts": "2026-01-01T08:00:00+08:00", "event": "fall", "confidence": 0.9}
    sos = {"ts": "2026-01-01T08:00:00+08:00", "event": "sos"}
    # A fall and an SOS in the same second, without seq: two events.
    assert key(wrist, fall) != key(wrist, sos)
    assert key(wrist, fall) == key(wrist, {**fall, "confidence": 0.9})
    shed = "community/hgy/charging_shed/cs-1/event"
    cut = {"ts": NOW_MS, "event": "power_cut", "port": 1}
    assert key(shed, cut) != key(shed, {**cut, "port": 2})
    assert key(shed, cut) != key(shed, {**cut, "event": "overcurrent"})
    # Two frames of one detector with one platform time: a report and an alarm.
    up = f"vendor/acme-smoke/{IMEI}/up"
    report = AcmeFrame(FrameType.PERIODIC, StatusBits(0), 76, 21.5, 0.1).encode()
    alarm = AcmeFrame(FrameType.ALARM, StatusBits.ALARM, 76, 21.5, 0.1).encode()
    assert key(up, acme_body(report)) != key(up, acme_body(alarm))
    assert key(up, acme_body(alarm)) == key(up, acme_body(alarm))


def test_a_redelivery_key_is_the_same_in_another_process() -> None:
    # Keys are kept across restarts: no salted hash of a string may go into one.
    script = (
        "from tests.unit.decode.test_decoder import decoder, message\n"
        "body = {'ts': 1767225600000, 'event': 'sos'}\n"
        "print(decoder().decode(message('community/hgy/bracelet/br-1/event', body)).dedup_key)"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", script], cwd=PROJECT_ROOT, check=True, capture_output=True,
            text=True, env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(keys) == 1 and keys != {"None"}


def test_profiles_folder_is_the_shipped_one() -> None:
    assert Path(PROJECT_ROOT / "device_profiles" / "acme_smoke.yaml").exists()
    assert set(PROFILES.by_device_type) == {
        "smoke_detector",
        "manhole_cover",
        "bracelet",
        "charging_shed",
    }


CHECKED_PROFILE = """
device_type: checked
topics: ["community/+/checked/+/+"]
period_s: 60
telemetry:
  measurement: checked
  fields:
    bounded_c: {type: float, min: -50, max: 1200}
    above_zero: {type: float, min: 0}
    unbounded: {type: float}
    infinite_bounds: {type: float, min: -.inf, max: .inf}
    pct: {type: int, min: 0, max: 100}
    count: {type: int}
    flag: {type: bool}
    label: {type: string}
    needed: {type: float, required: true}
"""


@pytest.mark.parametrize(
    ("field", "sent", "expected"),
    [
        ("bounded_c", "20.5", 20.5),
        ("bounded_c", "20", 20.0),
        ("bounded_c", "-50", -50.0),
        ("bounded_c", "1200.0", 1200.0),
        ("bounded_c", "1200.01", RejectReason.OUT_OF_RANGE),
        ("bounded_c", "-50.5", RejectReason.OUT_OF_RANGE),
        ("bounded_c", '"20"', RejectReason.WRONG_TYPE),
        ("bounded_c", "true", RejectReason.WRONG_TYPE),
        ("above_zero", "1e308", 1e308),
        ("above_zero", "-0.1", RejectReason.OUT_OF_RANGE),
        ("unbounded", "-1e308", -1e308),
        ("infinite_bounds", "3.5", 3.5),
        ("pct", "5", 5),
        ("pct", "5.0", 5),
        ("pct", "5.5", RejectReason.WRONG_TYPE),
        ("pct", "101", RejectReason.OUT_OF_RANGE),
        ("pct", "-1", RejectReason.OUT_OF_RANGE),
        ("pct", "true", RejectReason.WRONG_TYPE),
        ("count", "18446744073709551615", 18446744073709551615),
        ("count", "-3", -3),
        ("flag", "true", True),
        ("flag", "1", RejectReason.WRONG_TYPE),
        ("label", '"东区"', "东区"),
        ("label", "5", RejectReason.WRONG_TYPE),
        ("needed", "null", RejectReason.MISSING_FIELD),
    ],
)
def test_each_field_is_taken_converted_or_rejected_as_its_spec_says(
    tmp_path: Path, field: str, sent: str, expected: object
) -> None:
    (tmp_path / "checked.yaml").write_text(CHECKED_PROFILE)
    profiles = load_profiles(tmp_path, CODECS)
    checker = Decoder(profiles, Registry())
    values = {"needed": "1.5", field: sent}
    body = "{" + ",".join(f'"{name}":{text}' for name, text in values.items()) + "}"
    inbound = InboundMessage("community/hgy/checked/c-1/telemetry", body.encode(), NOW_MS)
    if isinstance(expected, RejectReason):
        with pytest.raises(DecodeError) as info:
            checker.decode(inbound)
        assert info.value.reason == expected
        assert field in info.value.detail
        return
    (reading,) = checker.decode(inbound).records
    assert isinstance(reading, Reading)
    value = reading.fields[field]
    assert (value, type(value)) == (expected, type(expected))


DETECTOR = "community/hgy/smoke_detector/sd-1/"
DAY_MS = 24 * 3600 * 1000


def smoke_reading(seq: int, *, alarm: bool) -> dict[str, object]:
    return {
        "seq": seq,
        "obscuration_pct_per_m": 4.5 if alarm else 0.1,
        "temperature_c": 58.0 if alarm else 22.0,
        "battery_pct": 100,
        "alarm": alarm,
    }


def test_a_device_without_a_clock_that_restarts_its_seq_counter_is_not_silenced() -> None:
    d = decoder()
    keys = RedeliveryFilter()

    def taken(body: dict[str, object]) -> bool:
        payload = json.dumps(body).encode()
        decoded = d.decode(InboundMessage(DETECTOR + "telemetry", payload, NOW_MS))
        assert decoded.dedup_key is not None
        return not keys.is_redelivery(decoded.device, decoded.dedup_key)

    # A detector that sends no time (or one its clock cannot have: never set, reset by
    # a flat battery), hourly, for a day.
    assert all(taken(smoke_reading(seq, alarm=False)) for seq in range(24))
    # Its battery is changed: it counts from 0 again, and then there is a fire.
    assert [taken(smoke_reading(seq, alarm=True)) for seq in range(3)] == [True, True, True]
    # A redelivery of one of those is still one.
    assert not taken(smoke_reading(1, alarm=True))


def test_a_redelivery_from_a_device_whose_clock_is_a_day_ahead_is_known_whenever_it_comes() -> None:
    d = decoder()
    keys = RedeliveryFilter()
    # An SOS from a bracelet whose clock runs a day and a minute ahead: taken in at the
    # time it came. The gateway crashes after the commit, before the acknowledgement, and
    # is back ten minutes later: the broker sends it again.
    body = json.dumps({"ts": NOW_MS + DAY_MS + 60_000, "seq": 41, "event": "sos"}).encode()
    topic = "community/hgy/bracelet/br-1/event"
    first = d.decode(InboundMessage(topic, body, NOW_MS))
    again = d.decode(InboundMessage(topic, body, NOW_MS + 10 * 60_000))
    assert first.dedup_key is not None and again.dedup_key is not None
    assert not keys.is_redelivery(first.device, first.dedup_key)
    assert keys.is_redelivery(again.device, again.dedup_key)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        # A detector wakes and says it is online, and in the same millisecond (a clock
        # counting whole seconds makes it common) sends its alarm, numbered 2.
        (
            ("community/hgy/smoke_detector/sd-1/status", {"online": True, "ts": NOW_MS}),
            (
                "community/hgy/smoke_detector/sd-1/telemetry",
                {"ts": NOW_MS, "seq": 2, "alarm": True, "battery_pct": 80},
            ),
        ),
        # A bracelet numbers its events but not its readings: its SOS numbered 0 comes
        # in the millisecond of a reading.
        (
            ("community/hgy/bracelet/br-1/telemetry", {"ts": NOW_MS, "worn": True}),
            ("community/hgy/bracelet/br-1/event", {"ts": NOW_MS, "seq": 0, "event": "sos"}),
        ),
    ],
)
def test_a_message_with_seq_is_never_taken_for_one_without_sent_at_the_same_time(
    first: tuple[str, dict[str, object]], then: tuple[str, dict[str, object]]
) -> None:
    # A repeated `seq` is a redelivery; a message without one repeats none.
    keys = RedeliveryFilter()
    for topic, payload in (first, then):
        decoded = decoder().decode(message(topic, payload))
        assert decoded.dedup_key is not None
        assert not keys.is_redelivery(decoded.device, decoded.dedup_key), topic


@pytest.mark.parametrize(
    ("topic", "body", "kept"),
    [
        (
            "community/hgy/manhole_cover/mc-1/telemetry",
            {"ts": NOW_MS, "lid_open": True, "tilt_deg": 40.0, "battery_pct": -1},
            ("lid_open", True),
        ),
        (
            "community/hgy/bracelet/br-1/telemetry",
            {"ts": NOW_MS, "heart_rate_bpm": 32, "worn": True, "battery_pct": 101},
            ("heart_rate_bpm", 32),
        ),
    ],
)
def test_a_battery_the_contract_gives_no_range_is_taken_whatever_it_reads(
    topic: str, body: dict[str, object], kept: tuple[str, object]
) -> None:
    # The contract gives covers' and bracelets' `battery_pct` no range (only a smoke
    # detector's is 0-100): a lid open, or a heart rate of 32, with a battery of -1
    # ("unknown") or 101 (charging) is not refused.
    (reading,) = decoder().decode(message(topic, body)).records
    assert isinstance(reading, Reading)
    assert reading.fields[kept[0]] == kept[1]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"ts": 1.767225600000e12, "event": "sos"}',
        b'{"ts": 1767225600000.0, "event": "sos"}',
        b'{"ts": 1767225600000, "seq": 12.0, "event": "sos"}',
    ],
)
def test_a_whole_ts_or_seq_written_as_a_json_double_is_taken(raw: bytes) -> None:
    # A firmware's JSON library may write 64-bit integers as doubles; JSON has one kind
    # of number, and an `int` field takes 88.0 as well.
    (event,) = decoder().decode(message("community/hgy/bracelet/br-1/event", raw)).records
    assert isinstance(event, Event) and event.kind == "sos"
    assert (event.time_ms, event.time_source) == (NOW_MS, TimeSource.DEVICE)
