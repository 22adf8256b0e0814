"""The gateway's log: one format for its processes, with phone numbers and positions
masked.

Emergency contacts are named by their phone (`contact:13987654321`) wherever a
notification says who it was for, and logs are read, kept and shipped by people who
need no one's number: every mainland mobile number in a line is written as the API
shows it masked, 139****4321. A position (`lat`, `lon`) in a line, a bracelet's message
refused as it came, is written coarse, as the API shows it to those who see it masked.
"""

from __future__ import annotations

import logging
import re

# Eleven digits from 13 to 19, after +86 or not, and not inside a longer run of digits
# (an IMEI, a time in ms).
_MOBILE = re.compile(r"(?<!\d)((?:\+?86)?1[3-9]\d)\d{4}(\d{4})(?!\d)")


# Two decimals of a degree: 1.1 km of latitude, 0.9 km of longitude at 35°N. Which
# neighbourhood, not which building.
COARSE_DECIMALS = 2
# The number with a fraction (a whole degree is coarse already) after `lat` or `lon`, as
# a message came (`"lat": 34.75612`) or as the reason it was refused says it (`lat must
# be a number, got '34.75612'`).
_COORDINATE = re.compile(r"(\b(?:lat|lon)\b[^0-9\n-]{0,40}?)(-?[0-9]+\.[0-9]+(?:[eE][-+]?[0-9]+)?)")


def mask_phones(text: str) -> str:
    return _MOBILE.sub(r"\1****\2", text)


def coarse_positions(text: str) -> str:
    """The text with the number after each `lat` and `lon` made coarse."""
    return _COORDINATE.sub(_coarse_coordinate, text)


def _coarse_coordinate(match: re.Match[str]) -> str:
    return match[1] + repr(round(float(match[2]), COARSE_DECIMALS))


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return coarse_positions(mask_phones(super().format(record)))


def configure_logging(level: int | str, fmt: str) -> None:
    """The root logger's handler, as logging.basicConfig makes it, formatted masked."""
    logging.basicConfig(level=level, format=fmt)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(MaskingFormatter(fmt))
