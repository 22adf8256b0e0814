"""How long to wait before trying a failed write again."""

from __future__ import annotations

import math
import random

# The longest a server's Retry-After holds the next try.
RETRY_AFTER_MAX_S = 600.0


class Backoff:
    """Exponential backoff with full jitter.

    The n-th delay is drawn uniformly from [0, min(max_s, initial_s * 2**n)]. Full
    jitter spreads the retries of many gateways that lost the same server at the same
    moment, so that they do not all come back at once.
    """

    __slots__ = ("_attempt", "_ceiling_attempt", "_rng", "initial_s", "max_s")

    def __init__(self, initial_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if not initial_s > 0:
            raise ValueError(f"initial_s must be > 0, got {initial_s!r}")
        if not max_s >= initial_s:
            raise ValueError(f"max_s ({max_s!r}) must be >= initial_s ({initial_s!r})")
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0
        # Past this attempt the cap is max_s; stopping there keeps 2**n from growing.
        self._ceiling_attempt = math.ceil(math.log2(max_s / initial_s))

    def next_delay_s(self, retry_after_s: float | None = None) -> float:
        """The delay before the next try; a server's Retry-After is a floor, not a cap,
        up to RETRY_AFTER_MAX_S (or `max_s`, if longer): a proxy that asks for a day, or
        whose date was read by a clock days off, must not stop the writes for as long."""
        cap_s = min(self.max_s, self.initial_s * 2.0**self._attempt)
        if self._attempt < self._ceiling_attempt:
            self._attempt += 1
        delay_s = self._rng.uniform(0.0, cap_s)
        if retry_after_s is not None and retry_after_s > delay_s:
            return min(retry_after_s, max(self.max_s, RETRY_AFTER_MAX_S))
        return delay_s

    def reset(self) -> None:
        """Start again from initial_s, after a success."""
        self._attempt = 0
