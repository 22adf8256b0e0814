"""Alerts: the list, one alert with its history and notifications, and what people do."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from gateway.api.audit import Shown
from gateway.api.auth import Principal, Role, require
from gateway.api.context import ApiContext, Caller, Ctx
from gateway.api.devices import audit_reads, person_of, place_of, tracks_person
from gateway.api.models import (
    AUTH_ERRORS,
    AlertDetailOut,
    AlertListOut,
    AlertOut,
    AssignIn,
    AttemptOut,
    CloseIn,
    PlaceOut,
    PositionOut,
    StepOut,
    error_responses,
)
from gateway.api.privacy import (
    coarse_position,
    mask_receiver,
    names_a_contact,
    sees_whole,
    what_shown,
)
from gateway.notify.log import DeliveryAttempt
from gateway.registry import ALERT_PLACES, Place, Registry
from gateway.registry import place_of as registered_place
from gateway.rules.book import AlertEntry, AlertError, places_about

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"], responses=AUTH_ERRORS)
STEP_ERRORS = error_responses(
    404, 409, e404="no such alert, or not in the caller's cells or communities"
)
SEVERITY_ORDER = {"critical": 0, "major": 1, "warning": 2, "info": 3}
# Alerts read from the book at once at most, while a list is looked for page by page.
_MAX_SEARCH_PAGE = 10_000
StateFilter = Literal[
    "open", "pending", "firing", "acknowledged", "arrived", "resolved", "closed", "all"
]


def places_of(registry: Registry, entry: AlertEntry) -> list[Place]:
    """Where an alert is (see AlertEntry.where); for an alert about a place (a building
    on fire, a community), every registered place within it (see places_about)."""
    if entry.device_type in ALERT_PLACES:
        within = places_about(
            registry, entry.community, entry.device_type, entry.device_id, entry.site
        )
        if within:
            return within
    site = entry.where(registry)
    return [] if site is None else [registered_place(site)]


def in_place(
    places: Iterable[Place], area: str | None, compound: str | None, building: str | None
) -> bool:
    """Whether any of `places` is within the area, compound and building asked for."""
    wanted = (area, compound, building)
    return any(
        all(w is None or w == have for w, have in zip(wanted, place[1:], strict=True))
        for place in places
    )


def alert_place(registry: Registry, entry: AlertEntry) -> PlaceOut | None:
    """Where an alert is (see AlertEntry.where): its device's place, unit and position;
    for an alert about a place, that place, with the levels above it that all of it
    shares."""
    site = entry.where(registry)
    return None if site is None else place_of(site)


def shown_name(name: str, whole: bool) -> str:
    """Who was told or acted, as the caller may see them: an emergency contact's phone
    masked unless the caller sees the device's personal data whole (see privacy)."""
    return name if whole else mask_receiver(name)


def masked_names(text: str, names: Iterable[str | None]) -> str:
    """`text` with every emergency contact among `names` that it names masked, as
    `shown_name` masks them: a refusal or a delivery's detail may name who took the
    alert or who was told."""
    # The longest first: a phone that is the start of another is not masked in it.
    for name in sorted({n for n in names if names_a_contact(n)}, key=len, reverse=True):
        text = text.replace(name, mask_receiver(name))
    return text


def alert_out(ctx: ApiContext, entry: AlertEntry, whole: bool) -> AlertOut:
    """`whole`: as `sees_contacts` says for the caller."""

    def named(name: str | None) -> str | None:
        return None if name is None else shown_name(name, whole)

    position = entry.position
    if position is not None and not whole and tracks_person(ctx, entry.device_type):
        position = coarse_position(position)

    return AlertOut(
        alert_id=entry.alert_id, rule=entry.rule, title=entry.title, severity=entry.severity,
        life_safety=entry.life_safety, community=entry.community,
        device_type=entry.device_type, device_id=entry.device_id, port=entry.port,
        state=str(entry.state), started_ms=entry.started_ms, updated_ms=entry.updated_ms,
        fired_ms=entry.fired_ms, acknowledged_by=named(entry.acknowledged_by),
        acknowledged_ms=entry.acknowledged_ms, arrived_by=named(entry.arrived_by),
        arrived_ms=entry.arrived_ms, assigned_to=named(entry.assigned_to),
        resolved_ms=entry.resolved_ms, closed_by=named(entry.closed_by),
        closed_ms=entry.closed_ms, note=entry.note, repeats=entry.repeats,
        repeated_ms=entry.repeated_ms,
        place=alert_place(ctx.gateway.registry, entry),
        position=None if position is None else PositionOut(lat=position.lat, lon=position.lon),
    )  # fmt: skip


def sees_contacts(ctx: ApiContext, principal: Principal, entry: AlertEntry) -> bool:
    """Whether the caller sees the emergency contacts of the alert's device whole, as
    they see its wearer: judged by where the alert is (see AlertEntry.where), as is
    whether they see the alert at all, so that the grid worker handling it can call the
    family though a reload has put the device in another cell since."""
    return sees_whole(principal, entry.where(ctx.gateway.registry), entry.community)


def _names(entry: AlertEntry) -> tuple[str | None, ...]:
    return (entry.acknowledged_by, entry.arrived_by, entry.assigned_to, entry.closed_by)


# What personal data of an alert's device a caller who sees it whole was shown: its
# wearer or emergency contacts, and where a person was.
Read = tuple[AlertEntry, bool, bool]


def _read(
    ctx: ApiContext, entry: AlertEntry, wearer: bool = False, names: Iterable[str | None] = ()
) -> Read:
    """The wearer (or an emergency contact among `names` or those who acted on the
    alert), and where the alert fired if that is where a person was."""
    contacts = wearer or any(names_a_contact(n) for n in (*_names(entry), *names))
    return entry, contacts, entry.position is not None and tracks_person(ctx, entry.device_type)


async def alerts_out(
    ctx: ApiContext, principal: Principal, request: Request, entries: Iterable[AlertEntry]
) -> list[AlertOut]:
    """The alerts as the caller may see them; personal data shown whole is audited."""
    shown: list[AlertOut] = []
    reads: list[Read] = []
    for entry in entries:
        whole = sees_contacts(ctx, principal, entry)
        if whole:
            reads.append(_read(ctx, entry))
        shown.append(alert_out(ctx, entry, whole))
    await _audit_read(ctx, principal, request, reads)
    return shown


async def _audit_read(
    ctx: ApiContext, principal: Principal, request: Request, reads: Iterable[Read]
) -> None:
    """The caller's read of these alerts' devices' personal data, recorded once a device
    with all that the device's alerts showed of it."""
    shown: dict[tuple[str, str], tuple[bool, bool]] = {}
    for entry, contacts, position in reads:
        key = (entry.community, entry.device_id)
        had_contacts, had_position = shown.get(key, (False, False))
        shown[key] = (had_contacts or contacts, had_position or position)
    rows = [
        Shown(community, device_id, what)
        for (community, device_id), flags in shown.items()
        if (what := what_shown(*flags)) is not None
    ]
    via = f"{request.method} {request.url.path}"
    await audit_reads(ctx, principal.name, str(principal.role), rows, via)


def visible(ctx: ApiContext, principal: Principal, entry: AlertEntry) -> bool:
    registry = ctx.gateway.registry
    return principal.covers_alert(
        registry, entry.community, entry.device_type, entry.device_id, entry.site
    )


def find(ctx: ApiContext, principal: Principal, alert_id: str) -> AlertEntry:
    entry = ctx.gateway.alerts.get(alert_id)
    if not visible(ctx, principal, entry):
        # The same answer as for an alert that does not exist: cells and communities
        # are not probed.
        raise AlertError(f"no alert {alert_id}")
    return entry


@router.get("", response_model=AlertListOut, summary="Alerts, filtered; the most severe first")
async def list_alerts(
    ctx: Ctx,
    principal: Caller,
    request: Request,
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
    registry = ctx.gateway.registry

    def shown(entry: AlertEntry) -> bool:
        if (
            (community is not None and entry.community != community)
            or (severity is not None and entry.severity != severity)
            or (rule is not None and entry.rule != rule)
            # A device's alerts, not those of the building it is named like (detector 3).
            or (
                device_id is not None
                and (entry.device_id != device_id or entry.device_type in ALERT_PLACES)
            )
            or (since_ms is not None and entry.started_ms < since_ms)
            or not visible(ctx, principal, entry)
        ):
            return False
        return not (area or compound or building) or in_place(
            places_of(registry, entry), area, compound, building
        )

    book = ctx.gateway.alerts
    total: int | None = None
    if state == "open":
        communities = [community] if community is not None else _communities_of(principal)
        chosen = [entry for entry in book.open_alerts(communities=communities) if shown(entry)]
        total = len(chosen)
        # The most severe first, then the oldest: a district's thousands of devices
        # offline never push a fire off the board, and the answer stays a page (every
        # open alert of a district was tens of MB, made on the loop alarms are told on).
        chosen.sort(key=_most_severe_first)
        del chosen[limit:]
    else:
        chosen = []
        search = partial(
            book.search, state=None if state == "all" else state, community=community,
            communities=_communities_of(principal), rule=rule, device_id=device_id,
            severity=severity, since_ms=since_ms,
        )  # fmt: skip
        # The newest alerts that match, page by page until `limit` are found that the
        # caller may see and that are in the place asked for (the registry says which):
        # the book may hold years of alerts, of many communities.
        page_size = min(limit * 4, _MAX_SEARCH_PAGE)
        before: tuple[int, str] | None = None
        while True:
            page = search(before=before, limit=page_size)
            chosen.extend(entry for entry in page if shown(entry))
            if len(chosen) >= limit or len(page) < page_size:
                break
            before = (page[-1].started_ms, page[-1].alert_id)
            page_size = min(page_size * 2, _MAX_SEARCH_PAGE)
            # Alarms are committed and notified on this loop too.
            await asyncio.sleep(0)
        del chosen[limit:]
    chosen.sort(key=_most_severe_first)
    shown_alerts = await alerts_out(ctx, principal, request, chosen)
    return AlertListOut(version=ctx.feed.version, alerts=shown_alerts, total=total)


def _most_severe_first(entry: AlertEntry) -> tuple[int, int]:
    return SEVERITY_ORDER.get(entry.severity, 9), entry.started_ms


def _communities_of(principal: Principal) -> list[str] | None:
    """The communities whose alerts the caller may see, if not all: the book is asked
    for theirs alone, so that others' never push theirs out of a page, and a desk's
    board never reads the open alerts of every community to show its own."""
    scope = principal.scope
    return None if scope is None else sorted(scope)


@router.get(
    "/{alert_id}", response_model=AlertDetailOut, responses=STEP_ERRORS,
    summary="One alert with its history and notification attempts",
)  # fmt: skip
async def get_alert(ctx: Ctx, principal: Caller, request: Request, alert_id: str) -> AlertDetailOut:
    entry = find(ctx, principal, alert_id)
    whole = sees_contacts(ctx, principal, entry)
    wearer = person_of(ctx.gateway.registry.device_of(entry), whole)
    history = ctx.gateway.alerts.history(alert_id)
    attempts = ctx.gateway.notifications.attempts(alert_id)
    names = [*(s.actor for s in history), *(a.receiver for a in attempts)]
    if whole:
        await _audit_read(ctx, principal, request, [_read(ctx, entry, wearer is not None, names)])
    named = (*_names(entry), *names)
    return AlertDetailOut(
        alert=alert_out(ctx, entry, whole),
        history=[
            # A step's note may name a contact: "assigned to contact:+86...".
            StepOut(state=str(s.state), at_ms=s.at_ms, actor=shown_name(s.actor, whole),
                    note=s.note if whole or s.note is None else masked_names(s.note, named))
            for s in history
        ],
        notifications=[_attempt_out(a, whole, named) for a in attempts],
        wearer=wearer,
    )  # fmt: skip


def _attempt_out(a: DeliveryAttempt, whole: bool, names: Iterable[str | None]) -> AttemptOut:
    """`names`: whoever the alert names (its audit counts them read when shown whole);
    the detail names a contact who took the alert, or one who was told."""
    detail = a.detail if whole else masked_names(a.detail, names)
    return AttemptOut(
        receiver=shown_name(a.receiver, whole), channel=a.channel, at_ms=a.at_ms,
        result=str(a.result), detail=detail, latency_ms=a.latency_ms,
    )  # fmt: skip


async def _take_step(
    ctx: ApiContext,
    principal: Principal,
    request: Request,
    alert_id: str,
    step: Callable[[], Awaitable[AlertEntry]],
) -> AlertOut:
    """`step` taken through the desk, the alert given back as the caller may see it; a
    refusal names whoever took the step first, shown by the same rule."""
    find(ctx, principal, alert_id)
    try:
        entry = await step()
    except AlertError as exc:
        raise await _refusal(ctx, principal, request, alert_id, exc) from None
    (shown,) = await alerts_out(ctx, principal, request, [entry])
    return shown


async def _refusal(
    ctx: ApiContext, principal: Principal, request: Request, alert_id: str, exc: AlertError
) -> AlertError:
    entry = ctx.gateway.alerts.get(alert_id)
    named = [n for n in _names(entry) if names_a_contact(n) and n in str(exc)]
    if not named:
        return exc
    if sees_contacts(ctx, principal, entry):
        await _audit_read(ctx, principal, request, [(entry, True, False)])
        return exc
    return AlertError(masked_names(str(exc), named))


@router.post(
    "/{alert_id}/acknowledge", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Take the alert: whoever acknowledges it handles it",
)  # fmt: skip
async def acknowledge(ctx: Ctx, principal: Caller, request: Request, alert_id: str) -> AlertOut:
    require(principal, Role.ADMIN, Role.OPERATOR, Role.GRID_WORKER)
    desk = ctx.gateway.desk
    return await _take_step(
        ctx, principal, request, alert_id, lambda: desk.acknowledge(alert_id, principal.name)
    )


@router.post(
    "/{alert_id}/arrive", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Reached the scene (acknowledges too)",
)  # fmt: skip
async def arrive(ctx: Ctx, principal: Caller, request: Request, alert_id: str) -> AlertOut:
    require(principal, Role.ADMIN, Role.GRID_WORKER)
    desk = ctx.gateway.desk
    return await _take_step(
        ctx, principal, request, alert_id, lambda: desk.arrive(alert_id, principal.name)
    )


@router.post(
    "/{alert_id}/close", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Close with a note of what was found and done",
)  # fmt: skip
async def close(
    ctx: Ctx, principal: Caller, request: Request, alert_id: str, body: CloseIn
) -> AlertOut:
    require(principal, Role.ADMIN, Role.GRID_WORKER)
    desk = ctx.gateway.desk
    return await _take_step(
        ctx, principal, request, alert_id, lambda: desk.close(alert_id, principal.name, body.note)
    )


@router.post(
    "/{alert_id}/assign", response_model=AlertOut, responses=STEP_ERRORS,
    summary="Give the alert to a person",
)  # fmt: skip
async def assign(
    ctx: Ctx, principal: Caller, request: Request, alert_id: str, body: AssignIn
) -> AlertOut:
    require(principal, Role.ADMIN)
    desk = ctx.gateway.desk
    return await _take_step(
        ctx, principal, request, alert_id, lambda: desk.assign(alert_id, principal.name, body.to)
    )
