"""The ACME NB-IoT smoke detector's 10-byte frame (device contract, "A vendor format")."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from gateway.decode.acme import crc16_modbus

FRAME_HEADER = 0xAA
FRAME_LENGTH_BYTES = 10


class FrameType(IntEnum):
    PERIODIC = 0x01
    ALARM = 0x02


class StatusBits(IntFlag):
    NONE = 0
    ALARM = 0x01
    TAMPER = 0x02
    LOW_BATTERY = 0x04
    FAULT = 0x08


@dataclass(frozen=True, slots=True)
class AcmeFrame:
    frame_type: FrameType
    status: StatusBits
    battery_pct: int
    temperature_c: float
    obscuration_pct_per_m: float

    def encode(self, *, header: int = FRAME_HEADER) -> bytes:
        """The frame with its CRC; `header` other than 0xAA exists to build bad input."""
        body = struct.pack(
            ">BBBBhH",
            header,
            int(self.frame_type),
            int(self.status),
            max(0, min(100, self.battery_pct)),
            round(self.temperature_c * 10),
            round(self.obscuration_pct_per_m * 100),
        )
        return body + crc16_modbus(body).to_bytes(2, "little")


def imei_check_digit(first_14_digits: str) -> str:
    """The Luhn digit real IMEIs end with, so the simulated ones look genuine."""
    total = 0
    for index, char in enumerate(first_14_digits):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return str((10 - total % 10) % 10)
