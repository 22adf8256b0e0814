"""Every kind of bad input the device contract says the gateway must reject and survive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from simulators.acme import AcmeFrame, FrameType, StatusBits
from simulators.device import Device, DeviceType
from simulators.message import (
    MAX_PAYLOAD_BYTES,
    MessageKind,
    SimMessage,
    device_topic,
    encode_json,
    vendor_topic,
)


class BadInput(StrEnum):
    NOT_JSON = "not_json"
    TOO_LARGE = "too_large"
    UNKNOWN_DEVICE_TYPE = "unknown_device_type"
    UNREGISTERED_DEVICE = "unregistered_device"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    ACME_BAD_HEADER = "acme_bad_header"
    ACME_BAD_LENGTH = "acme_bad_length"
    ACME_BAD_CRC = "acme_bad_crc"


@dataclass(frozen=True, slots=True)
class _Bad:
    label: BadInput
    topic: str
    payload: bytes
    device_id: str


def malformed_senders(devices: Sequence[Device]) -> tuple[Device, Device, Device | None]:
    """The devices the bad messages are sent as: the first that speaks JSON; a bracelet,
    else that one, for the field cases; the fleet's ACME detector, if it has one."""
    json_device = next((d for d in devices if d.imei is None), None)
    if json_device is None:
        raise ValueError("malformed needs at least one device that speaks JSON")
    bracelet = next((d for d in devices if d.device_type is DeviceType.BRACELET), None)
    vendor = next((d for d in devices if d.imei is not None), None)
    return json_device, bracelet or json_device, vendor


def malformed_messages(devices: Sequence[Device], time_ms: int) -> list[SimMessage]:
    """One message of each bad kind, 1 ms apart from `time_ms`; no `seq`, to spare dedup.

    Each is sent as a registered device of the fleet, so that the gateway rejects it for
    its own fault (see `malformed_senders`): the frame cases as the fleet's ACME
    detector (a fleet of one device has none, and sends the other cases alone); the
    field cases as a bracelet, else as a detector or a cover, each by a field the
    contract gives a range."""
    json_device, fielded, vendor = malformed_senders(devices)
    community = json_device.community
    wrong_type: dict[str, object] = {"battery_pct": "full"}
    out_of_range: dict[str, object] = {"battery_pct": 180}
    if fielded.device_type is DeviceType.BRACELET:
        wrong_type = {"heart_rate_bpm": "seventy", "worn": "yes"}
        out_of_range = {"heart_rate_bpm": 400}
    elif fielded.device_type is DeviceType.MANHOLE_COVER:
        out_of_range = {"tilt_deg": 400.0}

    def topic(device: Device) -> str:
        return device_topic(device.community, device.device_type, device.device_id, "telemetry")

    frame = AcmeFrame(FrameType.PERIODIC, StatusBits.NONE, 80, 23.5, 0.02)
    good = frame.encode()
    bad_crc = good[:8] + bytes([good[8] ^ 0xFF, good[9]])
    padding = "x" * (MAX_PAYLOAD_BYTES + 512)
    cases = [
        _Bad(BadInput.NOT_JSON, topic(json_device), b"\xff{not json", json_device.device_id),
        _Bad(
            BadInput.TOO_LARGE,
            topic(json_device),
            encode_json({"ts": time_ms, "padding": padding}),
            json_device.device_id,
        ),
        _Bad(
            BadInput.UNKNOWN_DEVICE_TYPE,
            device_topic(community, "toaster", "toaster-0001", "telemetry"),
            encode_json({"ts": time_ms, "temperature_c": 210.0}),
            "toaster-0001",
        ),
        _Bad(
            BadInput.UNREGISTERED_DEVICE,
            device_topic(community, DeviceType.SMOKE_DETECTOR, "sd-ghost-9999", "telemetry"),
            encode_json(
                {
                    "ts": time_ms,
                    "obscuration_pct_per_m": 0.0,
                    "temperature_c": 24.0,
                    "battery_pct": 90,
                    "alarm": False,
                }
            ),
            "sd-ghost-9999",
        ),
        _Bad(
            BadInput.WRONG_TYPE,
            topic(fielded),
            encode_json({"ts": time_ms, **wrong_type}),
            fielded.device_id,
        ),
        _Bad(
            BadInput.OUT_OF_RANGE,
            topic(fielded),
            encode_json({"ts": time_ms, **out_of_range}),
            fielded.device_id,
        ),
    ]
    if vendor is not None and vendor.imei is not None:
        imei = vendor.imei
        cases += [
            _Bad(
                BadInput.ACME_BAD_HEADER,
                vendor_topic(imei),
                _envelope(imei, time_ms, frame.encode(header=0x55)),
                vendor.device_id,
            ),
            _Bad(
                BadInput.ACME_BAD_LENGTH,
                vendor_topic(imei),
                _envelope(imei, time_ms, good[:8]),
                vendor.device_id,
            ),
            _Bad(
                BadInput.ACME_BAD_CRC,
                vendor_topic(imei),
                _envelope(imei, time_ms, bad_crc),
                vendor.device_id,
            ),
        ]
    return [
        SimMessage(
            topic=case.topic,
            payload=case.payload,
            qos=1,
            retain=False,
            time_ms=time_ms + i,
            device_id=case.device_id,
            kind=MessageKind.MALFORMED,
            label=case.label.value,
        )
        for i, case in enumerate(cases)
    ]


def _envelope(imei: str, time_ms: int, frame: bytes) -> bytes:
    return encode_json({"imei": imei, "ts": time_ms, "payload": frame.hex()})
