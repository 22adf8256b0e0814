"""Tells the board that alerts changed, for live updates without reloading."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from gateway.clock import Clock
from gateway.rules.alert import AlertChange, AlertState, Repeat
from gateway.rules.book import AlertEntry


class AlertFeed:
    def __init__(self, clock: Clock) -> None:
        self.version = 0
        self._clock = clock
        self._changed = asyncio.Event()

    def alert_changes(self, changes: Sequence[AlertChange]) -> None:
        """A pipeline alert listener."""
        if changes:
            self.bump()

    def repeats(self, repeats: Sequence[Repeat]) -> None:
        """A pipeline repeat listener: the board shows how often an alert came again."""
        if repeats:
            self.bump()

    def desk_step(self, entry: AlertEntry, step: AlertState) -> None:
        """An alert desk listener."""
        self.bump()

    def bump(self) -> None:
        self.version += 1
        # Wake every waiter, then arm again for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, after: int, timeout_s: float, stopping: asyncio.Event) -> int:
        """The version once it passes `after`, or when `timeout_s` on the clock or
        stopping come first."""
        if self.version != after:
            return self.version
        changed = asyncio.ensure_future(self._changed.wait())
        stop = asyncio.ensure_future(stopping.wait())
        timeout = asyncio.ensure_future(self._clock.sleep(timeout_s))
        try:
            await asyncio.wait((changed, stop, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (changed, stop, timeout):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self.version
