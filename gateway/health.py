"""The gateway's own health as time series, for the dashboard operators watch.

Every report carries the counts since the previous one (not running totals), so that
a sum over any interval is a rate, and a restart, which zeroes the counters, leaves
no negative step to mend.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.decode.record import FieldValue
from gateway.stats import Stats
from gateway.store.line_protocol import encode_fields, encode_series

HEALTH_MEASUREMENT = "gateway"
REJECTS_MEASUREMENT = "gateway_rejects"

# Counters reported as their increase since the previous report.
_COUNTERS = (
    "messages_in",
    "lines_stored",
    "lines_written",
    "redeliveries",
    "write_failures",
    "commit_failures",
)


@dataclass
class HealthReport:
    """Turns the gateway's counters into lines; remembers what it reported last."""

    instance: str
    _last: dict[str, int] = field(default_factory=dict)
    _last_rejects: Counter[str] = field(default_factory=Counter)

    def lines(
        self,
        stats: Stats,
        at_ms: int,
        *,
        reserve_given_back: bool = False,
        damaged_files: int = 0,
    ) -> list[str]:
        """`reserve_given_back`: the disk set aside for the outbox was given back (the disk
        filled up) and is not set aside again yet. `damaged_files`: damaged files moved
        aside beside the outbox."""
        totals: dict[str, int] = {name: getattr(stats, name) for name in _COUNTERS}
        totals["rule_faults"] = stats.rule_faults.total()
        fields: list[tuple[str, FieldValue]] = [
            (name, value - self._last.get(name, 0)) for name, value in totals.items()
        ]
        self._last.update(totals)
        rejects = stats.rejected_by_reason - self._last_rejects
        self._last_rejects = Counter(stats.rejected_by_reason)
        fields += [
            ("rejected", sum(rejects.values())),
            ("outbox_depth", stats.outbox_depth),
            ("write_latency_ms", round(stats.write_latency_s * 1000.0, 3)),
            ("alerts_open", stats.alerts_open),
            ("disk_reserve_given_back", reserve_given_back),
            ("damaged_files", damaged_files),
        ]
        if stats.ingest_lag_s is not None:
            fields.append(("ingest_lag_s", round(stats.ingest_lag_s, 1)))
        tags = [("instance", self.instance)]
        lines = [f"{encode_series(HEALTH_MEASUREMENT, tags)} {encode_fields(fields)} {at_ms}"]
        for reason, count in sorted(rejects.items()):
            series = encode_series(REJECTS_MEASUREMENT, [*tags, ("reason", reason)])
            lines.append(f"{series} {encode_fields([('rejected', count)])} {at_ms}")
        return lines
