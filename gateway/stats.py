"""Counters of what the gateway did, for the live summary and for metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Upper bounds of the write latency histogram, in seconds.
WRITE_LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LatencyHistogram:
    """Durations counted into buckets, as Prometheus histograms expose them."""

    bounds_s: tuple[float, ...] = WRITE_LATENCY_BOUNDS_S
    # One count per bound, and the last for what exceeds them all; not cumulative.
    counts: list[int] = field(default_factory=lambda: [0] * (len(WRITE_LATENCY_BOUNDS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, b in enumerate(self.bounds_s) if seconds <= b), len(self.bounds_s))
        self.counts[index] += 1
        self.sum_s += seconds


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
    # Lines the database dropped as older than its retention policy keeps.
    lines_expired: int = 0
    write_failures: int = 0
    last_write_error: str | None = None
    # Commits of the outbox that failed (a full disk, say), and while they fail the last
    # error of each process that commits ("main", "telemetry").
    commit_failures: int = 0
    commit_errors: dict[str, str] = field(default_factory=dict)
    write_latency_s: float = 0.0
    write_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    outbox_depth: int = 0
    # How far behind the devices messages are taken in (gateway.ingest.lag).
    ingest_lag_s: float | None = None
    alerts_firing: int = 0
    alerts_resolved: int = 0
    alerts_open: int = 0
    # Rules that failed at run time on a record, by rule (see rules.fault).
    rule_faults: Counter[str] = field(default_factory=Counter)
    # (channel, result) of every delivery attempt.
    notifications: Counter[tuple[str, str]] = field(default_factory=Counter)
    escalations: int = 0

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def notified(self) -> int:
        return sum(n for (_, result), n in self.notifications.items() if result == "sent")

    def note_commit(self, process: str, error: str | None) -> None:
        """A commit of `process` failed with `error`, or with None, commits succeed again."""
        if error is None:
            self.commit_errors.pop(process, None)
        else:
            self.commit_failures += 1
            self.commit_errors[process] = error

    def failing_commits(self) -> str | None:
        """Each process whose commits fail now, with its last error; None if none does."""
        # Copied at once: readiness reads it on a thread while the event loop changes it.
        failing = dict(self.commit_errors)
        if not failing:
            return None
        return "; ".join(f"{process}: {error}" for process, error in sorted(failing.items()))

    def summary(self) -> str:
        rejects = ", ".join(f"{r}={n}" for r, n in sorted(self.rejected_by_reason.items()))
        return (
            f"in={self.messages_in} stored={self.lines_stored} written={self.lines_written} "
            f"outbox={self.outbox_depth} redelivered={self.redeliveries} "
            + (f"lag={self.ingest_lag_s:.1f}s " if self.ingest_lag_s is not None else "")
            + f"alerts={self.alerts_firing} open={self.alerts_open} notified={self.notified} "
            f"rejected={self.rejected}"
            + (f" ({rejects})" if rejects else "")
            + (f" rule_faults={self.rule_faults.total()}" if self.rule_faults else "")
            + "".join(f" COMMITS FAILING ({p}): {e}" for p, e in self.commit_errors.items())
        )
