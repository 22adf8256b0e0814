"""Local-time windows for rules: active hours such as "07:00-22:00"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """Every day from `start` to `end` local time; past midnight when end <= start."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> DailyWindow:
        try:
            first, second = (part.strip() for part in text.split("-"))
            return cls(time.fromisoformat(first), time.fromisoformat(second))
        except ValueError as exc:
            raise ValueError(f"expected 'HH:MM-HH:MM', got {text!r}") from exc

    def contains(self, time_ms: int, zone: ZoneInfo) -> bool:
        moment = datetime.fromtimestamp(time_ms / 1000, zone).time()
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

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
