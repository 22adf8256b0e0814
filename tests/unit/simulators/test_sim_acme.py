from __future__ import annotations

from simulators.acme import AcmeFrame, FrameType, StatusBits, crc16_modbus, imei_check_digit
from tests.unit.simulators.sim_contract import decode_frame


def test_crc16_modbus_known_vector() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37


def test_frame_layout_matches_contract() -> None:
    frame = AcmeFrame(FrameType.ALARM, StatusBits.ALARM | StatusBits.LOW_BATTERY, 18, -5.5, 12.34)
    raw = frame.encode()
    assert len(raw) == 10
    assert raw[0] == 0xAA and raw[1] == 0x02 and raw[2] == 0b101 and raw[3] == 18
    assert int.from_bytes(raw[4:6], "big", signed=True) == -55
    assert int.from_bytes(raw[6:8], "big") == 1234
    # CRC low byte first
    assert raw[8] == crc16_modbus(raw[:8]) & 0xFF and raw[9] == crc16_modbus(raw[:8]) >> 8
    assert decode_frame(raw.hex())["crc_ok"]


def test_imei_check_digit_is_luhn() -> None:
    # A well-known valid IMEI.
    assert imei_check_digit("49015420323751") == "8"
