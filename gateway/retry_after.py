"""How long a server asks to be left alone: its `Retry-After`, in seconds or as an HTTP
date (RFC 9110)."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC


def retry_after_s(headers: Mapping[str, str], now_s: float | None) -> float | None:
    """Seconds to wait from an answer's headers. A date is the server's: read against
    its own `Date`, not this box's clock, which may be days off before NTP has set it;
    without one, against `now_s` (None: not read)."""
    server_s = _http_date_s(headers.get("Date", ""))
    return parse_retry_after_s(
        headers.get("Retry-After"), now_s=now_s if server_s is None else server_s
    )


def parse_retry_after_s(value: str | None, *, now_s: float | None) -> float | None:
    """Seconds to wait from a Retry-After header: delay seconds or an HTTP date.

    None when the header is absent or unreadable, or a date with no `now_s` to read it
    against; a date in the past gives 0.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when_s = _http_date_s(value)
        if when_s is None or now_s is None:
            return None
        seconds = when_s - now_s
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _http_date_s(value: str) -> float | None:
    """Epoch seconds of an HTTP date, None if it is none."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
