"""The gateway's log: one format for its processes, with phone numbers masked.

Emergency contacts are named by their phone (`contact:13987654321`) wherever a
notification says who it was for, and logs are read, kept and shipped by people who
need no one's number: every mainland mobile number in a line is written as the API
shows it masked, 139****4321.
"""

from __future__ import annotations

import logging
import re

# Eleven digits from 13 to 19, after +86 or not, and not inside a longer run of digits
# (an IMEI, a time in ms).
_MOBILE = re.compile(r"(?<!\d)((?:\+?86)?1[3-9]\d)\d{4}(\d{4})(?!\d)")


def mask_phones(text: str) -> str:
    return _MOBILE.sub(r"\1****\2", text)


class MaskingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return mask_phones(super().format(record))


def configure_logging(level: int | str, fmt: str) -> None:
    """The root logger's handler, as logging.basicConfig makes it, formatted masked."""
    logging.basicConfig(level=level, format=fmt)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(MaskingFormatter(fmt))
