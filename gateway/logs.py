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
_NUMBER = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
# A coordinate as a message came (`"lat": 34.75612`), as a line or the reason it was
# refused writes it (`lat=34.75612`, `lat must be a number, got '34.75612'`).
_COORDINATE = re.compile(
    rf"""(\b(?:lat|lon)\b(?:["']?\s*[:=]\s*|\s+must\s+be\s+[a-z ]+,\s+got\s+)["']?)({_NUMBER})"""
)
# Where a map link leads (Amap's `position=<lon>,<lat>`).
_MAP_POSITION = re.compile(rf"(\bposition=)({_NUMBER}),({_NUMBER})")


def mask_phones(text: str) -> str:
    return _MOBILE.sub(r"\1****\2", text)


def coarse_positions(text: str) -> str:
    """The text with each coordinate after `lat` or `lon`, and each map link's position,
    made coarse."""
    text = _COORDINATE.sub(lambda m: m[1] + _coarse(m[2]), text)
    return _MAP_POSITION.sub(lambda m: f"{m[1]}{_coarse(m[2])},{_coarse(m[3])}", text)


def _coarse(number: str) -> str:
    """A coordinate to two decimals of a degree, or as written if it has no more. One
    that is no degree (millionths of one, as some trackers send) has its digits after
    the first two masked: they say where, in some other unit."""
    value = float(number)
    if abs(value) <= 180:
        coarse = round(value, COARSE_DECIMALS)
        return number if coarse == value else repr(coarse)
    return number[:2] + re.sub("[0-9]", "*", number[2:])


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return coarse_positions(mask_phones(super().format(record)))


def configure_logging(level: int | str, fmt: str) -> None:
    """The root logger's handler, as logging.basicConfig makes it, formatted masked."""
    logging.basicConfig(level=level, format=fmt)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(MaskingFormatter(fmt))
