"""Injected time, so that batching and rule tests never sleep."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol
from zoneinfo import ZoneInfo

# Where the rules' daily windows and the providers' days are counted by default.
CHINA_STANDARD_TIME = ZoneInfo("Asia/Shanghai")


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time in epoch milliseconds."""

    def monotonic_s(self) -> float:
        """Monotonic seconds, for intervals and timeouts."""

    async def sleep(self, seconds: float) -> None:
        """Wait; a manual clock returns when time is advanced past the deadline."""


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to; sleepers wake when their deadline passes."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:
        self._now_ms = start_ms
        # How far the wall clock was stepped (see `step`).
        self._stepped_ms = 0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now_ms(self) -> int:
        return self._now_ms + self._stepped_ms

    def monotonic_s(self) -> float:
        return self._now_ms / 1000.0

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.monotonic_s() + seconds, future))
        await future

    def step(self, seconds: float) -> None:
        """The wall clock set forward or back, as NTP sets a box that booted with a wrong
        clock: monotonic time, and so every sleeper, is not moved."""
        self._stepped_ms += round(seconds * 1000)

    def advance(self, seconds: float) -> None:
        self._now_ms += round(seconds * 1000)
        now_s = self.monotonic_s()
        due = [(t, f) for t, f in self._sleepers if t <= now_s]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > now_s]
        for _, future in due:
            if not future.done():
                future.set_result(None)


class WallSteps:
    """How far the wall clock was set between one look and the next, as NTP sets a box
    that booted with a wrong clock (no RTC battery): the wall time that passed beyond
    the monotonic time that did. Deadlines kept in wall time (an escalation step due in
    3 minutes, kept across a restart) are moved by it, so that a clock set back two
    hours does not hold a call for two hours."""

    # NTP slews small errors (at most 0.5 ms a second) and steps only large ones.
    TOLERANCE_MS = 2000

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._offset_ms = self._offset()

    def _offset(self) -> float:
        return self._clock.now_ms() - self._clock.monotonic_s() * 1000

    def taken_ms(self) -> int:
        """The step since the last look, 0 if none."""
        offset = self._offset()
        step_ms, self._offset_ms = offset - self._offset_ms, offset
        return round(step_ms) if abs(step_ms) >= self.TOLERANCE_MS else 0


def seconds_since(wall_ms: int, now_ms: int) -> float:
    """How long ago a wall time kept across a restart was; none if the clock is now
    behind it (set back since), so that it holds nothing for as long as the clock was
    off."""
    return max(0.0, (now_ms - wall_ms) / 1000)


async def sleep_unless_set(clock: Clock, seconds: float, event: asyncio.Event) -> None:
    """Wait `seconds` on `clock`, or less if `event` is set meanwhile."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()
