"""Counters of what the gateway did, for the live summary and for metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    messages_in: int = 0
    messages_by_type: Counter[str] = field(default_factory=Counter)
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    redeliveries: int = 0
    records: int = 0
    lines_stored: int = 0
    lines_written: int = 0
    lines_refused: int = 0
    lines_evicted: int = 0
    write_failures: int = 0
    last_write_error: str | None = None
    write_latency_s: float = 0.0
    outbox_depth: int = 0
    alerts_firing: int = 0
    alerts_resolved: int = 0
    alerts_open: int = 0
    # (channel, result) of every delivery attempt.
    notifications: Counter[tuple[str, str]] = field(default_factory=Counter)
    escalations: int = 0

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def notified(self) -> int:
        return sum(n for (_, result), n in self.notifications.items() if result == "sent")

    def summary(self) -> str:
        rejects = ", ".join(f"{r}={n}" for r, n in sorted(self.rejected_by_reason.items()))
        return (
            f"in={self.messages_in} stored={self.lines_stored} written={self.lines_written} "
            f"outbox={self.outbox_depth} redelivered={self.redeliveries} "
            f"alerts={self.alerts_firing} open={self.alerts_open} notified={self.notified} "
            f"rejected={self.rejected}" + (f" ({rejects})" if rejects else "")
        )
