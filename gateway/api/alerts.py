"""Alerts: the list, one alert with its history and notifications, and what people do."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from gateway.api.auth import Principal, Role, require
from gateway.api.context import ApiContext, Caller, Ctx
from gateway.api.devices import audit_reads, person_of, place_of
from gateway.api.models import (
    AUTH_ERRORS,
    AlertDetailOut,
    AlertListOut,
    AlertOut,
    AssignIn,
    AttemptOut,
    CloseIn,
    PositionOut,
    StepOut,
    error_responses,
)
from gateway.notify.log import DeliveryAttempt
from gateway.rules.book import AlertEntry, AlertError

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"], responses=AUTH_ERRORS)
STEP_ERRORS = error_responses(404, 409, e404="no such alert, or not in the caller's cells")
SEVERITY_ORDER = {"critical": 0, "major": 1, "warning": 2, "info": 3}
StateFilter = Literal[
    "open", "pending", "firing", "acknowledged", "arrived", "resolved", "closed", "all"
]


def alert_out(ctx: ApiContext, entry: AlertEntry) -> AlertOut:
    registered = ctx.gateway.registry.get(entry.community, entry.device_id)
    return AlertOut(
        alert_id=entry.alert_id, rule=entry.rule, title=entry.title, severity=entry.severity,
        life_safety=entry.life_safety, community=entry.community,
        device_type=entry.device_type, device_id=entry.device_id, port=entry.port,
        state=str(entry.state), started_ms=entry.started_ms, updated_ms=entry.updated_ms,
        fired_ms=entry.fired_ms, acknowledged_by=entry.acknowledged_by,
        acknowledged_ms=entry.acknowledged_ms, arrived_by=entry.arrived_by,
        arrived_ms=entry.arrived_ms, assigned_to=entry.assigned_to,
        resolved_ms=entry.resolved_ms, closed_by=entry.closed_by, closed_ms=entry.closed_ms,
        note=entry.note, place=place_of(registered) if registered is not None else None,
        position=(
            None if entry.position is None
            else PositionOut(lat=entry.position.lat, lon=entry.position.lon)
        ),
    )  # fmt: skip


def visible(ctx: ApiContext, principal: Principal, entry: AlertEntry) -> bool:
    return principal.covers_alert(
        ctx.gateway.registry, entry.community, entry.device_type, entry.device_id
    )


def find(ctx: ApiContext, principal: Principal, alert_id: str) -> AlertEntry:
    entry = ctx.gateway.alerts.get(alert_id)
    if not visible(ctx, principal, entry):
        # The same answer as for an alert that does not exist: cells are not probed.
        raise AlertError(f"no alert {alert_id}")
    return entry


@router.get("", response_model=AlertListOut, summary="Alerts, filtered; the most severe first")
async def list_alerts(
    ctx: Ctx,
    principal: Caller,
    state: StateFilter = "open",
    community: str | None = None,
    area: str | None = None,
    compound: str | None = None,
    building: str | None = None,
    severity: Literal["critical", "major", "warning", "info"] | None = None,
    rule: str | None = None,
    device_id: str | None = None,
    since_ms: Annotated[int | None, Query(ge=0, le=1 << 53)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> AlertListOut:
    book = ctx.gateway.alerts
    if state == "open":
        entries = book.open_alerts()
    else:
        entries = book.search(
            state=None if state == "all" else state, community=community, since_ms=since_ms,
            limit=limit * 4,
        )  # fmt: skip
    chosen: list[AlertEntry] = []
    for entry in entries:
        if (
            (community is not None and entry.community != community)
            or (severity is not None and entry.severity != severity)
            or (rule is not None and entry.rule != rule)
            or (device_id is not None and entry.device_id != device_id)
            or (since_ms is not None and entry.started_ms < since_ms)
            or not visible(ctx, principal, entry)
        ):
            continue
        if area or compound or building:
            registered = ctx.gateway.registry.get(entry.community, entry.device_id)
            if any(
                wanted is not None and getattr(registered, level, None) != wanted
                for level, wanted in (
                    ("area", area),
                    ("compound", compound),
                    ("building", building),
                )
            ):
                continue
        chosen.append(entry)
    chosen.sort(key=lambda e: (SEVERITY_ORDER.get(e.severity, 9), e.started_ms))
    return AlertListOut(
        version=ctx.feed.version, alerts=[alert_out(ctx, e) for e in chosen[:limit]]
    )


@router.get(
    "/{alert_id}", response_model=AlertDetailOut, responses=STEP_ERRORS,
    summary="One alert with its history and notification attempts",
)  # fmt: skip
async def get_alert(ctx: Ctx, principal: Caller, request: Request, alert_id: str) -> AlertDetailOut:
    entry = find(ctx, principal, alert_id)
    registered = ctx.gateway.registry.get(entry.community, entry.device_id)
    wearer, whole = person_of(principal, registered)
    if whole:
        await audit_reads(
            ctx,
            principal.name,
            str(principal.role),
            [(entry.community, entry.device_id)],
            f"GET {request.url.path}",
        )
    return AlertDetailOut(
        alert=alert_out(ctx, entry),
        history=[
            StepOut(state=str(s.state), at_ms=s.at_ms, actor=s.actor, note=s.note)
            for s in ctx.gateway.alerts.history(alert_id)
        ],
        notifications=[_attempt_out(a) for a in ctx.gateway.notifications.attempts(alert_id)],
        wearer=wearer,
    )


def _attempt_out(a: DeliveryAttempt) -> AttemptOut:
    return AttemptOut(
        receiver=a.receiver, channel=a.channel, at_ms=a.at_ms, result=str(a.result),
        detail=a.detail, latency_ms=a.latency_ms,
    )  # fmt: skip


@router.post(
    "/{alert_id}/acknowledge", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Take the alert: whoever acknowledges it handles it",
)  # fmt: skip
async def acknowledge(ctx: Ctx, principal: Caller, alert_id: str) -> AlertOut:
    require(principal, Role.ADMIN, Role.OPERATOR, Role.GRID_WORKER)
    find(ctx, principal, alert_id)
    return alert_out(ctx, await ctx.gateway.desk.acknowledge(alert_id, principal.name))


@router.post(
    "/{alert_id}/arrive", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Reached the scene (acknowledges too)",
)  # fmt: skip
async def arrive(ctx: Ctx, principal: Caller, alert_id: str) -> AlertOut:
    require(principal, Role.ADMIN, Role.GRID_WORKER)
    find(ctx, principal, alert_id)
    return alert_out(ctx, await ctx.gateway.desk.arrive(alert_id, principal.name))


@router.post(
    "/{alert_id}/close", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Close with a note of what was found and done",
)  # fmt: skip
async def close(ctx: Ctx, principal: Caller, alert_id: str, body: CloseIn) -> AlertOut:
    require(principal, Role.ADMIN, Role.GRID_WORKER)
    find(ctx, principal, alert_id)
    return alert_out(ctx, await ctx.gateway.desk.close(alert_id, principal.name, body.note))


@router.post(
    "/{alert_id}/assign", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Give the alert to a person",
)  # fmt: skip
async def assign(ctx: Ctx, principal: Caller, alert_id: str, body: AssignIn) -> AlertOut:
    require(principal, Role.ADMIN)
    find(ctx, principal, alert_id)
    return alert_out(ctx, await ctx.gateway.desk.assign(alert_id, principal.name, body.to))
