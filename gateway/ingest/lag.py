"""How far behind the devices the gateway takes their messages in.

When the gateway cannot keep up, what it has not taken in waits in its session at the
broker, which tells no one: the outbox stays small, and only the dashboards, late, and
the rules, judging late (a charging port heating up is seen by its readings), would show
it. The gateway's measure is the age of the messages it takes in: when each was taken
in, less the time the device put on it. One device's clock may be minutes off, so the
figure is the median over the last messages of many devices; an offset most devices
share (a clock service gone) counts in it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from statistics import median

from gateway.decode.record import Record, StatusReport, TimeSource

log = logging.getLogger(__name__)

# Ages the median is taken over, and at most how many a batch adds: a quiet gateway's
# figure spans the messages of several minutes and many devices, a busy one's the last
# few batches.
AGES_KEPT = 101
AGES_PER_BATCH = 16
# Behind by this much, the log says so once; and once more when back under half of it.
BEHIND_WARN_S = 60.0

_DEVICE = TimeSource.DEVICE


class IngestLag:
    def __init__(self) -> None:
        self._ages_ms: deque[int] = deque(maxlen=AGES_KEPT)
        self._behind = False

    def observe(self, records: Sequence[Record], taken_in_ms: int) -> float | None:
        """A batch's records, taken in at `taken_in_ms`; those without the device's time
        tell nothing. The lag after them, as `lag_s`."""
        step = max(1, -(-len(records) // AGES_PER_BATCH))
        # A port's reading comes with its shed's, in the same message: counted, the
        # sheds, a tenth of the messages, would be half the figure.
        self._ages_ms.extend(
            taken_in_ms - r.time_ms
            for r in records[::step]
            if r.time_source is _DEVICE and (isinstance(r, StatusReport) or r.port is None)
        )
        lag_s = self.lag_s
        if lag_s is None:
            return None
        if not self._behind and lag_s >= BEHIND_WARN_S:
            self._behind = True
            log.warning(
                "taking messages in %.0f s after the devices sent them: the gateway is "
                "behind, and the rest waits at the broker",
                lag_s,
            )
        elif self._behind and lag_s < BEHIND_WARN_S / 2:
            self._behind = False
            log.info("taking messages in %.0f s after the devices sent them again", lag_s)
        return lag_s

    @property
    def lag_s(self) -> float | None:
        """The median age, in seconds, of the last messages taken in that carry the
        device's time; None before any. Never below 0: clocks ahead are not ahead of it."""
        if not self._ages_ms:
            return None
        return max(0.0, median(self._ages_ms) / 1000)
