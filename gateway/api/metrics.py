"""/metrics in the Prometheus text format, from the gateway's counters and the alert book."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from gateway.api.context import Ctx
from gateway.rules.alert import AlertState
from gateway.stats import LatencyHistogram, Stats

router = APIRouter(tags=["health"])
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[dict[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            shown = _sample(value)
            self.lines.append(f"{name}{{{text}}} {shown}" if text else f"{name} {shown}")

    def histogram(self, name: str, help_text: str, histogram: LatencyHistogram) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        total = 0
        for bound, count in zip(histogram.bounds_s, histogram.counts, strict=False):
            total += count
            self.lines.append(f'{name}_bucket{{le="{bound:g}"}} {total}')
        total += histogram.counts[-1]
        self.lines.append(f'{name}_bucket{{le="+Inf"}} {total}')
        self.lines.append(f"{name}_sum {_sample(histogram.sum_s)}")
        self.lines.append(f"{name}_count {total}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _sample(value: float) -> str:
    """A sample's value in full: `:g` keeps six digits, and a counter past a million
    would move in steps of ten."""
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer()):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(
    stats: Stats,
    alerts_by_state: Counter[str],
    auth_failures: int,
    *,
    reserve_given_back: bool = False,
    damaged_files: int = 0,
) -> str:
    out = _Exposition()
    out.metric(
        "gateway_messages_total",
        "counter",
        "Messages taken in, by device type",
        (({"device_type": t}, n) for t, n in sorted(stats.messages_by_type.items())),
    )
    out.metric(
        "gateway_rejected_messages_total",
        "counter",
        "Messages rejected, by reason",
        (({"reason": r}, n) for r, n in sorted(stats.rejected_by_reason.items())),
    )
    out.metric(
        "gateway_redeliveries_total",
        "counter",
        "Redelivered messages recognised",
        [({}, stats.redeliveries)],
    )
    out.metric(
        "gateway_lines_stored_total",
        "counter",
        "Lines committed to the outbox",
        [({}, stats.lines_stored)],
    )
    out.metric(
        "gateway_lines_written_total",
        "counter",
        "Lines the database accepted",
        [({}, stats.lines_written)],
    )
    out.metric(
        "gateway_lines_evicted_total",
        "counter",
        "Oldest lines dropped because the outbox reached its bound or the disk was full",
        [({}, stats.lines_evicted)],
    )
    out.metric(
        "gateway_lines_expired_total",
        "counter",
        "Lines the database dropped as older than its retention policy keeps",
        [({}, stats.lines_expired)],
    )
    out.metric(
        "gateway_write_failures_total",
        "counter",
        "Failed writes to the database",
        [({}, stats.write_failures)],
    )
    out.metric(
        "gateway_outbox_commit_failures_total",
        "counter",
        "Commits of the outbox that failed and were tried again (a full disk, say)",
        [({}, stats.commit_failures)],
    )
    out.metric(
        "gateway_disk_reserve_given_back",
        "gauge",
        "1 while the disk set aside for the outbox is given back: the disk filled up and "
        "has not had room since to set it aside again",
        [({}, int(reserve_given_back))],
    )
    out.metric(
        "gateway_damaged_files",
        "gauge",
        "Damaged files of the gateway's moved aside and still beside the outbox: the disk "
        "may be failing",
        [({}, damaged_files)],
    )
    out.metric(
        "gateway_outbox_depth_lines",
        "gauge",
        "Lines waiting in the outbox",
        [({}, stats.outbox_depth)],
    )
    out.metric(
        "gateway_ingest_lag_seconds",
        "gauge",
        "How far behind the devices messages are taken in: the median age, when taken in, "
        "of the last messages that carry the device's time",
        [({}, stats.ingest_lag_s)] if stats.ingest_lag_s is not None else [],
    )
    out.metric(
        "gateway_write_latency_last_seconds",
        "gauge",
        "Duration of the last successful write to the database",
        [({}, stats.write_latency_s)],
    )
    out.histogram(
        "gateway_write_latency_seconds",
        "Durations of successful writes to the database",
        stats.write_latency,
    )
    out.metric(
        "gateway_alerts",
        "gauge",
        "Open alerts, by state",
        (
            ({"state": str(s)}, alerts_by_state.get(str(s), 0))
            for s in AlertState
            if s is not AlertState.CLOSED
        ),
    )
    out.metric(
        "gateway_rule_faults_total",
        "counter",
        "Records a rule failed on at run time and could not judge, by rule",
        (({"rule": r}, n) for r, n in sorted(stats.rule_faults.items())),
    )
    out.metric(
        "gateway_alerts_fired_total", "counter", "Alerts that fired", [({}, stats.alerts_firing)]
    )
    out.metric(
        "gateway_alerts_resolved_total",
        "counter",
        "Alerts whose condition cleared",
        [({}, stats.alerts_resolved)],
    )
    out.metric(
        "gateway_notifications_total",
        "counter",
        "Notification delivery attempts, by channel and result",
        (({"channel": c, "result": r}, n) for (c, r), n in sorted(stats.notifications.items())),
    )
    out.metric(
        "gateway_escalations_total",
        "counter",
        "Alerts escalated to the next receiver",
        [({}, stats.escalations)],
    )
    out.metric(
        "gateway_api_auth_failures_total",
        "counter",
        "Failed API authentications",
        [({}, auth_failures)],
    )
    return out.text()  # fmt: skip


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics(ctx: Ctx) -> PlainTextResponse:
    states = Counter({str(s): n for s, n in ctx.gateway.alerts.count_open().items()})
    text = render(
        ctx.gateway.stats,
        states,
        ctx.limiter.failures_total,
        reserve_given_back=ctx.gateway.outbox.reserve.given_back,
        damaged_files=ctx.gateway.damaged_files(),
    )
    return PlainTextResponse(text, media_type=CONTENT_TYPE)
