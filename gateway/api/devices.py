"""Devices: where they are, their latest values, and whether they are in alarm."""

from __future__ import annotations

import asyncio
import heapq
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from operator import attrgetter, itemgetter
from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.api.audit import Shown
from gateway.api.auth import Principal, Role, require
from gateway.api.context import ApiContext, BadParameterError, Caller, Ctx, NotFoundError
from gateway.api.latest import DeviceLatest
from gateway.api.models import (
    AUTH_ERRORS,
    ContactOut,
    DeviceListOut,
    DeviceOut,
    DeviceState,
    LatestOut,
    PersonOut,
    PlaceOut,
    ReadingsOut,
    error_responses,
)
from gateway.api.privacy import (
    POSITION,
    coarse_fields,
    has_personal_data,
    mask_name,
    mask_phone,
    sees_whole,
    shows_position,
    what_shown,
)
from gateway.api.readings import ReadingHistory
from gateway.decode.record import DeviceRef
from gateway.registry import ALERT_PLACES, RegisteredDevice, Site
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertEntry

router = APIRouter(prefix="/api/v1", tags=["devices"], responses=AUTH_ERRORS)
NOT_FOUND = error_responses(404, e404="no such device")


def place_of(device: RegisteredDevice | Site | None) -> PlaceOut:
    if device is None:
        return PlaceOut(area=None, compound=None, building=None, unit=None, lat=None, lon=None)
    return PlaceOut(
        area=device.area, compound=device.compound, building=device.building,
        unit=device.unit, lat=device.lat, lon=device.lon,
    )  # fmt: skip


def person_of(device: RegisteredDevice | None, whole: bool) -> PersonOut | None:
    """The wearer, whole or masked as `sees_whole` says for the caller."""
    if device is None or not has_personal_data(device):
        return None
    name, phone = device.wearer_name, device.wearer_phone
    contacts = [
        ContactOut(name=c.name if whole else mask_name(c.name),
                   phone=c.phone if whole else mask_phone(c.phone))
        for c in device.emergency_contacts
    ]  # fmt: skip
    person = PersonOut(
        name=name if whole or name is None else mask_name(name),
        phone=phone if whole or phone is None else mask_phone(phone),
        emergency_contacts=contacts,
        masked=not whole,
    )
    return person


def tracks_person(ctx: ApiContext, device_type: str) -> bool:
    """Whether where a device of this type is, is where a person is (see privacy)."""
    return device_type in ctx.gateway.profiles.personal_position_types


async def audit_reads(
    ctx: ApiContext, actor: str, role: str, shown: Iterable[Shown], via: str
) -> None:
    """Recorded before the response goes, in a worker thread (see open_book)."""
    rows = list(shown)
    if rows:
        await asyncio.to_thread(
            ctx.audit.record, at_ms=ctx.now_ms(), actor=actor, role=role, shown=rows, via=via
        )


def open_alerts_by_device(
    alerts: Iterable[AlertEntry], offline_rules: set[str]
) -> dict[tuple[str, str], DeviceState]:
    states: dict[tuple[str, str], DeviceState] = {}
    for alert in alerts:
        # A pending alert has not fired; a resolved one's condition has cleared, though
        # nobody has closed it yet.
        if alert.state in (AlertState.PENDING, AlertState.RESOLVED) or alert.fired_ms is None:
            continue
        if alert.device_type in ALERT_PLACES:
            # About a place, named as a device may be (detector 3 is not building 3):
            # each of its devices in alarm has an alert of its own.
            continue
        key = (alert.community, alert.device_id)
        if alert.rule in offline_rules:
            states.setdefault(key, "offline")
        else:
            states[key] = "alarm"
    return states


def _state(
    alerts: dict[tuple[str, str], DeviceState], key: tuple[str, str], latest: DeviceLatest | None
) -> DeviceState:
    state = alerts.get(key)
    if state is not None:
        return state
    if latest is not None and latest.online is False:
        return "offline"
    return "normal"


def _latest_out(latest: DeviceLatest | None, coarse: bool) -> LatestOut | None:
    """`coarse`: with the device's position made coarse (see privacy)."""
    if latest is None:
        return None
    return LatestOut(
        time_ms=latest.time_ms,
        fields=coarse_fields(latest.fields) if coarse else dict(latest.fields),
        ports={str(p): dict(v) for p, v in sorted(latest.ports.items())},
        last_event=latest.last_event, last_event_ms=latest.last_event_ms,
    )  # fmt: skip


# A device to list: its (community, device id), its type, and its registry entry if any.
Candidate = tuple[tuple[str, str], str, RegisteredDevice | None]


def _heard_unregistered(ctx: ApiContext, communities: Collection[str] | None) -> list[Candidate]:
    """The devices heard from that the registry does not list, of these communities or
    of all, in the order of the list."""
    found: dict[tuple[str, str], str] = {}
    for ref in ctx.latest.unregistered():
        if communities is None or ref.community in communities:
            found.setdefault((ref.community, ref.device_id), ref.device_type)
    return [(key, kind, None) for key, kind in sorted(found.items())]


def _key(device: RegisteredDevice) -> tuple[str, str]:
    return (device.community, device.device_id)


def _registered(devices: Iterable[RegisteredDevice]) -> Iterator[Candidate]:
    return (((d.community, d.device_id), d.device_type, d) for d in devices)


def _in_order(
    registered: Iterable[RegisteredDevice], heard: list[Candidate]
) -> Iterator[Candidate]:
    """All the devices in order of community and id."""
    if not heard:
        return _registered(registered)
    return heapq.merge(_registered(registered), heard, key=itemgetter(0))


def _window(
    registered: Sequence[RegisteredDevice], heard: list[Candidate], offset: int, limit: int
) -> list[Candidate]:
    """The devices from `offset` to `offset + limit` in order of community and id,
    without going through those before: where each unregistered one (they are few)
    falls among the registered ones is found by bisection."""
    before = 0
    inside: list[Candidate] = []
    for index, candidate in enumerate(heard):
        at = index + bisect_left(registered, candidate[0], key=_key)
        if at < offset:
            before += 1
        elif at < offset + limit:
            inside.append(candidate)
    start = offset - before
    mine = _registered(registered[start : start + limit - len(inside)])
    return list(heapq.merge(mine, inside, key=itemgetter(0)))


def _kept_by(device_type: str | None, places: dict[str, str]) -> Callable[[RegisteredDevice], bool]:
    """Whether a registered device is of the type and in the place asked for: one
    comparison of its attributes, as the whole registry may be looked at."""
    names = (["device_type"] if device_type is not None else []) + list(places)
    wanted = ((device_type,) if device_type is not None else ()) + tuple(places.values())
    if not names:
        return lambda _: True
    if len(names) == 1:
        getter, single = attrgetter(names[0]), wanted[0]
        return lambda device: bool(getter(device) == single)
    getter = attrgetter(*names)
    return lambda device: bool(getter(device) == wanted)


def _view(
    ctx: ApiContext,
    principal: Principal,
    key: tuple[str, str],
    device_type: str,
    registered: RegisteredDevice | None,
    alerts: dict[tuple[str, str], DeviceState],
) -> tuple[DeviceOut, Shown | None]:
    """The device as the caller may see it, and what personal data of it they were shown
    whole, for the audit."""
    ref = DeviceRef(key[0], device_type, key[1])
    latest = ctx.latest.get(ref)
    seen_ms = latest.time_ms if latest is not None else None
    whole = sees_whole(principal, registered, key[0])
    wearer = person_of(registered, whole)
    positioned = (
        latest is not None and tracks_person(ctx, device_type) and shows_position(latest.fields)
    )
    position_whole = positioned and whole
    view = DeviceOut(
        community=key[0], device_type=device_type, device_id=key[1],
        registered=registered is not None, place=place_of(registered),
        state=_state(alerts, key, latest),
        online=latest.online if latest is not None else None,
        last_seen_ms=seen_ms, wearer=wearer,
        latest=_latest_out(latest, coarse=positioned and not position_whole),
    )  # fmt: skip
    what = what_shown(whole and wearer is not None, position_whole)
    return view, None if what is None else Shown(key[0], key[1], what)


@router.get("/devices", response_model=DeviceListOut, summary="Devices, filtered")
async def list_devices(
    ctx: Ctx,
    principal: Caller,
    request: Request,
    community: str | None = None,
    area: str | None = None,
    compound: str | None = None,
    building: str | None = None,
    device_type: str | None = None,
    state: DeviceState | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DeviceListOut:
    require(principal, Role.ADMIN, Role.OPERATOR)
    places = {"area": area, "compound": compound, "building": building}
    wanted_places = {level: name for level, name in places.items() if name is not None}
    kept = _kept_by(device_type, wanted_places)

    # The registry's devices, of one community or of all, were put in order once when
    # it was loaded: a page without filters costs what it holds, not the whole registry.
    # A caller limited to some communities lists theirs alone, and another named is
    # one they have none in.
    communities = _listed_communities(principal, community)
    listed = _registered_in(ctx, communities)
    heard = _heard_unregistered(ctx, communities)
    # Which devices are in the state asked for is told by the open alerts of every
    # community listed; without a state asked for, those of the page's devices suffice.
    alerts = {} if state is None else _alert_states(ctx, communities=communities)
    if device_type is None and not wanted_places and state is None:
        total = len(listed) + len(heard)
        page = _window(listed, heard, offset, limit)
    else:
        # The total counts every device the filters keep: each is looked at, though
        # within one community when one is asked for.
        total, page = 0, []
        for candidate in _in_order(
            filter(kept, listed),
            [c for c in heard if not wanted_places and device_type in (None, c[1])],
        ):
            key, kind, _ = candidate
            if (
                state is not None
                and _state(alerts, key, ctx.latest.get(DeviceRef(key[0], kind, key[1]))) != state
            ):
                continue
            total += 1
            if offset < total <= offset + limit:
                page.append(candidate)
    if state is None:
        alerts = _alert_states(ctx, devices=[key for key, _, _ in page])
    views: list[DeviceOut] = []
    audited: list[Shown] = []
    for key, kind, registered in page:
        view, shown = _view(ctx, principal, key, kind, registered, alerts)
        views.append(view)
        if shown is not None:
            audited.append(shown)
    await audit_reads(ctx, principal.name, str(principal.role), audited, f"GET {request.url.path}")
    return DeviceListOut(total=total, devices=views)


def _listed_communities(principal: Principal, community: str | None) -> list[str] | None:
    """The communities to list the devices of, in order; None: every one."""
    scope = principal.scope
    if community is not None:
        return [community] if scope is None or community in scope else []
    return None if scope is None else sorted(scope)


def _registered_in(ctx: ApiContext, communities: list[str] | None) -> Sequence[RegisteredDevice]:
    """The registered devices of these communities (in order), by community and id."""
    registry = ctx.gateway.registry
    if communities is None:
        return registry.devices_in()
    if len(communities) == 1:
        return registry.devices_in(communities[0])
    return tuple(d for c in communities for d in registry.devices_in(c))


def offline_rules(ctx: ApiContext) -> set[str]:
    return {r.name for r in ctx.gateway.loaded_rules if r.spec.kind == "absence"}


def _alert_states(
    ctx: ApiContext,
    *,
    communities: Collection[str] | None = None,
    devices: Collection[tuple[str, str]] | None = None,
) -> dict[tuple[str, str], DeviceState]:
    """The state the open alerts of these communities, or of these devices (community,
    device id), give their devices; of every community when neither is given."""
    alerts = ctx.gateway.alerts.open_alerts(communities=communities, devices=devices)
    return open_alerts_by_device(alerts, offline_rules(ctx))


def _find(
    ctx: ApiContext, principal: Principal, community: str, device_id: str
) -> tuple[str, RegisteredDevice | None]:
    if not principal.covers_community(community):
        # The same answer as for a device that does not exist: communities are not probed.
        raise NotFoundError(f"no device {community}/{device_id}")
    registered = ctx.gateway.registry.get(community, device_id)
    if registered is not None:
        return registered.device_type, registered
    for ref in ctx.latest.unregistered():
        if ref.community == community and ref.device_id == device_id:
            return ref.device_type, None
    raise NotFoundError(f"no device {community}/{device_id}")


@router.get(
    "/devices/{community}/{device_id}", response_model=DeviceOut, responses=NOT_FOUND,
    summary="One device with its latest values and state",
)  # fmt: skip
async def get_device(
    ctx: Ctx, principal: Caller, request: Request, community: str, device_id: str
) -> DeviceOut:
    require(principal, Role.ADMIN, Role.OPERATOR)
    kind, registered = _find(ctx, principal, community, device_id)
    alerts = _alert_states(ctx, devices=[(community, device_id)])
    view, shown = _view(ctx, principal, (community, device_id), kind, registered, alerts)
    if shown is not None:
        await audit_reads(
            ctx, principal.name, str(principal.role), [shown], f"GET {request.url.path}"
        )
    return view


@router.get(
    "/devices/{community}/{device_id}/readings", response_model=ReadingsOut,
    responses=error_responses(404, 502, e404="no such device"),
    summary="A device's readings, newest first",
    description="From InfluxDB when one is configured; otherwise only the lines still "
    "waiting in the local outbox.",
)  # fmt: skip
async def get_readings(
    ctx: Ctx,
    principal: Caller,
    request: Request,
    community: str,
    device_id: str,
    since_ms: Annotated[int | None, Query(ge=0, le=1 << 53)] = None,
    until_ms: Annotated[int | None, Query(ge=0, le=1 << 53)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> ReadingsOut:
    require(principal, Role.ADMIN, Role.OPERATOR)
    if since_ms is not None and until_ms is not None and since_ms > until_ms:
        raise BadParameterError(f"since_ms ({since_ms}) is after until_ms ({until_ms})")
    kind, registered = _find(ctx, principal, community, device_id)
    history = ReadingHistory(ctx.gateway)
    found = await history.readings(DeviceRef(community, kind, device_id), since_ms, until_ms, limit)
    if not tracks_person(ctx, kind) or not any(shows_position(r.fields) for r in found.readings):
        return found
    if sees_whole(principal, registered, community):
        shown = Shown(community, device_id, POSITION)
        await audit_reads(
            ctx, principal.name, str(principal.role), [shown], f"GET {request.url.path}"
        )
        return found
    # Where the wearer was, reading after reading, is where they live and go.
    coarse = [r.model_copy(update={"fields": coarse_fields(r.fields)}) for r in found.readings]
    return found.model_copy(update={"readings": coarse})
