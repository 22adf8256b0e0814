"""Local-time windows for rules: active hours such as "07:00-22:00"."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.cache import remember

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
# (zone, hour since the epoch) -> the zone's UTC offset throughout that hour, or None
# when it changes within the hour.
_OFFSETS: dict[tuple[ZoneInfo, int], int | None] = {}


def _offset_ms(time_ms: int, zone: ZoneInfo) -> int | None:
    """The zone's UTC offset at `time_ms`, from a cache by hour; None for an hour in
    which it changes. An offset equal at both ends of an hour holds throughout it: no
    zone changes its offset twice within an hour."""
    key = (zone, time_ms // _HOUR_MS)
    offset_ms = _OFFSETS.get(key, 0)
    if offset_ms == 0 and key not in _OFFSETS:
        hour_ms = key[1] * _HOUR_MS
        first = _zone_offset_ms(hour_ms, zone)
        last = _zone_offset_ms(hour_ms + _HOUR_MS - 1, zone)
        offset_ms = remember(_OFFSETS, key, first if first == last else None, 4096)
    return offset_ms


def _microseconds(moment: time) -> int:
    return ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1_000_000 + (
        moment.microsecond
    )


def _zone_offset_ms(time_ms: int, zone: ZoneInfo) -> int:
    offset = datetime.fromtimestamp(time_ms / 1000, zone).utcoffset()
    return 0 if offset is None else offset // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """Every day from `start` to `end` local time; past midnight when end <= start."""

    start: time
    end: time
    # The same, in microseconds since local midnight.
    start_us: int = field(init=False, repr=False, compare=False)
    end_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_us", _microseconds(self.start))
        object.__setattr__(self, "end_us", _microseconds(self.end))

    @classmethod
    def parse(cls, text: str) -> DailyWindow:
        try:
            first, second = (time.fromisoformat(part.strip()) for part in text.split("-"))
            if first.tzinfo is not None or second.tzinfo is not None:
                # Times of the gateway's zone: one of another would be read as local.
                raise ValueError("a time with a zone")
            return cls(first, second)
        except ValueError as exc:
            raise ValueError(f"expected 'HH:MM-HH:MM', got {text!r}") from exc

    def contains(self, time_ms: int, zone: ZoneInfo) -> bool:
        offset_ms = _offset_ms(time_ms, zone)
        if offset_ms is None:
            moment = _microseconds(datetime.fromtimestamp(time_ms / 1000, zone).time())
        else:
            # Local time of day from the zone's offset, without building a datetime.
            moment = (time_ms + offset_ms) % _DAY_MS * 1000
        if self.start_us < self.end_us:
            return self.start_us <= moment < self.end_us
        return moment >= self.start_us or moment < self.end_us

    def wall_seconds(self, start_ms: int, end_ms: int, zone: ZoneInfo) -> float:
        """Local clock time from `start_ms` to `end_ms` (as `seconds_within` counts it:
        wall clock), which `seconds_within` never exceeds, and cheaper to work out."""
        start_offset_ms, end_offset_ms = _offset_ms(start_ms, zone), _offset_ms(end_ms, zone)
        if start_offset_ms is None or end_offset_ms is None:
            begin = datetime.fromtimestamp(start_ms / 1000, zone)
            finish = datetime.fromtimestamp(end_ms / 1000, zone)
            return (finish - begin).total_seconds()
        return (end_ms + end_offset_ms - start_ms - start_offset_ms) / 1000

    def end_after(self, time_ms: int, zone: ZoneInfo) -> int:
        """When the window that holds `time_ms` closes, in epoch ms."""
        moment = datetime.fromtimestamp(time_ms / 1000, zone)
        closes = datetime.combine(moment.date(), self.end, zone)
        if closes <= moment:
            closes = datetime.combine(moment.date() + timedelta(days=1), self.end, zone)
        return int(closes.timestamp() * 1000)

    def seconds_within(self, start_ms: int, end_ms: int, zone: ZoneInfo) -> float:
        """How much of [start_ms, end_ms) falls inside the window."""
        if end_ms <= start_ms:
            return 0.0
        begin = datetime.fromtimestamp(start_ms / 1000, zone)
        finish = datetime.fromtimestamp(end_ms / 1000, zone)
        total = 0.0
        day = begin.date() - timedelta(days=1)
        while day <= finish.date():
            opens = datetime.combine(day, self.start, zone)
            closes = datetime.combine(
                day + timedelta(days=1) if self.end <= self.start else day, self.end, zone
            )
            overlap = (min(closes, finish) - max(opens, begin)).total_seconds()
            total += max(0.0, overlap)
            day += timedelta(days=1)
        return total
