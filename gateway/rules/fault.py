"""Rules failing at run time on what one record carries: a condition dividing by a
registry attribute of 0, or comparing a threshold of the wrong type.

Such a fault must not cost other alerts: the failing rule is unknown for that record,
every other rule is still judged, and the records after it too. Were the fault to
escape, the batch it is in would never be judged, and would fail again after every
restart, a fire alarm in it with it.
"""

from __future__ import annotations

import logging
from collections import Counter

from gateway.decode.record import Record

log = logging.getLogger(__name__)

# The count of faults outside any one rule: in the engine.
JUDGING = "(judging)"


class RuleFaults:
    """Counts faults by rule, and logs each rule's 1st, 10th, 100th... fault: a rule that
    fails on every reading of a busy device neither floods the log nor goes unseen."""

    def __init__(self, counts: Counter[str] | None = None) -> None:
        self.counts: Counter[str] = Counter() if counts is None else counts

    def condition(self, rule: str, record: Record, exc: Exception) -> None:
        """A rule's condition (or clear condition) raised `exc` on `record`."""
        count = self._count(rule)
        if _logged(count):
            log.error(
                "rule %s failed on %s and is unknown for it (fault %d of this rule): %s: %s",
                rule,
                _describe(record),
                count,
                type(exc).__name__,
                exc,
            )

    def action(self, rule: str, record: Record, exc: Exception) -> None:
        """A rule's action raised `exc` on `record`: a fault of the gateway's, logged with
        its traceback. The rule changed nothing for the record; the others did."""
        count = self._count(rule)
        if _logged(count):
            log.error(
                "rule %s failed to act on %s and changed nothing for it (fault %d of this rule)",
                rule,
                _describe(record),
                count,
                exc_info=exc,
            )

    def judging(self, record: Record, exc: Exception) -> None:
        """Judging `record` raised `exc` outside any one condition: a fault of the
        gateway's, logged with its traceback."""
        count = self._count(JUDGING)
        if _logged(count):
            log.error(
                "judging %s failed; the rules after the fault did not see it (fault %d)",
                _describe(record),
                count,
                exc_info=exc,
            )

    def _count(self, key: str) -> int:
        count = self.counts[key] + 1
        self.counts[key] = count
        return count


def _logged(count: int) -> bool:
    """1, 10, 100, 1000...: whether the count is a power of ten."""
    while count % 10 == 0:
        count //= 10
    return count == 1


def _describe(record: Record) -> str:
    device = record.device
    return f"{device.device_type} {device.community}/{device.device_id} at {record.time_ms} ms"
