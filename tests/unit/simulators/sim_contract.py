"""Checks written from /work/shared/device-contract.md, independent of the simulators' code."""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.decode.acme import crc16_modbus

TOPIC = re.compile(
    r"community/(?P<community>[a-z0-9-]{1,32})/(?P<type>[a-z_]+)/"
    r"(?P<device_id>[A-Za-z0-9_-]{1,64})/(?P<kind>telemetry|event|status)"
)
VENDOR_TOPIC = re.compile(r"vendor/acme-smoke/(?P<imei>\d{15})/up")
MAX_BYTES = 16 * 1024
# 2026-01-01 10:00 in China (UTC+8): daytime, so walks and charging happen.
MORNING_MS = 1_767_232_800_000
EVENTS = {
    "smoke_detector": {"alarm", "alarm_cleared", "tamper", "self_test", "low_battery", "fault"},
    "manhole_cover": {"lid_opened", "lid_closed", "displaced", "tamper"},
    "bracelet": {"sos", "fall", "removed"},
    "charging_shed": {"smoke_alarm", "power_cut", "overcurrent"},
}


def is_int(value: Any) -> bool:
    return type(value) is int


def is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _range(
    p: list[str],
    f: dict[str, Any],
    name: str,
    lo: float,
    hi: float,
    *,
    integer: bool = False,
    optional: bool = False,
) -> None:
    if name not in f:
        if not optional:
            p.append(f"missing {name}")
        return
    value = f[name]
    if not (is_int(value) if integer else is_number(value)):
        p.append(f"{name} has wrong type: {value!r}")
    elif not lo <= value <= hi:
        p.append(f"{name} out of range: {value!r}")


def _bool(p: list[str], f: dict[str, Any], name: str) -> None:
    if type(f.get(name)) is not bool:
        p.append(f"{name} is not a bool: {f.get(name)!r}")


def telemetry_problems(device_type: str, f: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if device_type == "smoke_detector":
        _range(p, f, "obscuration_pct_per_m", 0, 100)
        _range(p, f, "temperature_c", -40, 125)
        _range(p, f, "battery_pct", 0, 100, integer=True)
        _bool(p, f, "alarm")
        _range(p, f, "rssi_dbm", -200, 0, integer=True, optional=True)
    elif device_type == "manhole_cover":
        _range(p, f, "tilt_deg", 0, 180)
        _bool(p, f, "lid_open")
        _range(p, f, "water_level_cm", 0, 1000)
        _range(p, f, "ch4_ppm", 0, 1e6, optional=True)
        _range(p, f, "battery_pct", 0, 100, integer=True)
    elif device_type == "bracelet":
        _range(p, f, "heart_rate_bpm", 0, 250, integer=True)
        _range(p, f, "spo2_pct", 0, 100, integer=True, optional=True)
        _range(p, f, "steps", 0, 10**6, integer=True)
        _range(p, f, "lat", -90, 90)
        _range(p, f, "lon", -180, 180)
        _bool(p, f, "worn")
        _range(p, f, "battery_pct", 0, 100, integer=True)
    elif device_type == "charging_shed":
        _range(p, f, "ambient_temp_c", -50, 100)
        _bool(p, f, "smoke")
        ports = f.get("ports")
        if not isinstance(ports, list) or not ports:
            p.append("ports is not a non-empty list")
            return p
        for port in ports:
            _range(p, port, "port", 1, 64, integer=True)
            _bool(p, port, "charging")
            for name in ("current_a", "voltage_v", "power_w", "temperature_c"):
                _range(p, port, name, -1e6, 1e6)
    else:
        p.append(f"unknown device type {device_type}")
    return p


def event_problems(device_type: str, f: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if f.get("event") not in EVENTS.get(device_type, set()):
        p.append(f"unknown event {f.get('event')!r} for {device_type}")
    if f.get("event") == "fall":
        _range(p, f, "confidence", 0, 1)
    if f.get("event") in ("fall", "sos"):
        _range(p, f, "lat", -90, 90)
        _range(p, f, "lon", -180, 180)
    if f.get("event") in ("power_cut", "overcurrent"):
        _range(p, f, "port", 1, 64, integer=True)
    return p


def decode_frame(hex_payload: str) -> dict[str, Any]:
    frame = bytes.fromhex(hex_payload)
    return {
        "header": frame[0],
        "type": frame[1],
        "status": frame[2],
        "battery_pct": frame[3],
        "temperature_c": int.from_bytes(frame[4:6], "big", signed=True) / 10,
        "obscuration_pct_per_m": int.from_bytes(frame[6:8], "big") / 100,
        "crc_ok": len(frame) == 10
        and crc16_modbus(frame[:8]) == int.from_bytes(frame[8:10], "little"),
        "length": len(frame),
    }


def message_problems(topic: str, payload: bytes) -> list[str]:
    """Everything wrong with one message by the contract; empty when it is valid."""
    if len(payload) > MAX_BYTES:
        return ["too large"]
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ["not JSON"]
    if not isinstance(body, dict):
        return ["not an object"]
    vendor = VENDOR_TOPIC.fullmatch(topic)
    if vendor:
        p = []
        if body.get("imei") != vendor["imei"]:
            p.append("imei differs from topic")
        if not is_int(body.get("ts")):
            p.append("ts")
        frame = decode_frame(body["payload"])
        if frame["length"] != 10 or frame["header"] != 0xAA or not frame["crc_ok"]:
            p.append(f"bad frame {body['payload']}")
        if frame["type"] not in (1, 2):
            p.append("frame type")
        if (
            not 0 <= frame["obscuration_pct_per_m"] <= 100
            or not -40 <= frame["temperature_c"] <= 125
        ):
            p.append("frame values out of range")
        return p
    match = TOPIC.fullmatch(topic)
    if not match:
        return [f"bad topic {topic}"]
    if match["kind"] == "status":
        return [] if type(body.get("online")) is bool else ["status without online"]
    p = []
    if not is_int(body.get("ts")):
        p.append("ts is not integer ms")
    if not is_int(body.get("seq")):
        p.append("seq is not an integer")
    if match["kind"] == "telemetry":
        p += telemetry_problems(match["type"], body)
    else:
        p += event_problems(match["type"], body)
    return p
