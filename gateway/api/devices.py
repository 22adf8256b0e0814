"""Devices: where they are, their latest values, and whether they are in alarm."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.api.auth import Principal, Role, require
from gateway.api.context import ApiContext, Caller, Ctx, NotFoundError
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
from gateway.api.privacy import has_personal_data, mask_name, mask_phone, sees_whole
from gateway.api.readings import ReadingHistory
from gateway.decode.record import DeviceRef
from gateway.registry import RegisteredDevice
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertEntry

router = APIRouter(prefix="/api/v1", tags=["devices"], responses=AUTH_ERRORS)
NOT_FOUND = error_responses(404, e404="no such device")


def place_of(device: RegisteredDevice | None) -> PlaceOut:
    if device is None:
        return PlaceOut(area=None, compound=None, building=None, unit=None, lat=None, lon=None)
    return PlaceOut(
        area=device.area, compound=device.compound, building=device.building,
        unit=device.unit, lat=device.lat, lon=device.lon,
    )  # fmt: skip


def person_of(
    principal: Principal, device: RegisteredDevice | None
) -> tuple[PersonOut | None, bool]:
    """The wearer as this caller may see them, and whether it was shown whole."""
    if device is None or not has_personal_data(device):
        return None, False
    whole = sees_whole(principal, device, device.community)
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
    return person, whole


async def audit_reads(
    ctx: ApiContext, actor: str, role: str, devices: Iterable[tuple[str, str]], via: str
) -> None:
    """Recorded before the response goes, in a worker thread (see open_book)."""
    shown = list(devices)
    if shown:
        await asyncio.to_thread(
            ctx.audit.record, at_ms=ctx.now_ms(), actor=actor, role=role, devices=shown,
            what="wearer name, phone, emergency contacts", via=via,
        )  # fmt: skip


def open_alerts_by_device(
    alerts: Iterable[AlertEntry], offline_rules: set[str]
) -> dict[tuple[str, str], DeviceState]:
    states: dict[tuple[str, str], DeviceState] = {}
    for alert in alerts:
        # A pending alert has not fired; a resolved one's condition has cleared, though
        # nobody has closed it yet.
        if alert.state in (AlertState.PENDING, AlertState.RESOLVED) or alert.fired_ms is None:
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


def _latest_out(latest: DeviceLatest | None) -> LatestOut | None:
    if latest is None:
        return None
    return LatestOut(
        time_ms=latest.time_ms, fields=dict(latest.fields),
        ports={str(p): dict(v) for p, v in sorted(latest.ports.items())},
        last_event=latest.last_event, last_event_ms=latest.last_event_ms,
    )  # fmt: skip


def _device_refs(ctx: ApiContext) -> dict[tuple[str, str], tuple[str, RegisteredDevice | None]]:
    """Every registered device, and every unregistered one heard from."""
    found: dict[tuple[str, str], tuple[str, RegisteredDevice | None]] = {
        (d.community, d.device_id): (d.device_type, d) for d in ctx.gateway.registry.devices()
    }
    for ref in ctx.latest.devices():
        found.setdefault((ref.community, ref.device_id), (ref.device_type, None))
    return found


def _view(
    ctx: ApiContext,
    principal: Principal,
    key: tuple[str, str],
    device_type: str,
    registered: RegisteredDevice | None,
    alerts: dict[tuple[str, str], DeviceState],
) -> tuple[DeviceOut, bool]:
    ref = DeviceRef(key[0], device_type, key[1])
    latest = ctx.latest.get(ref)
    seen_ms = latest.time_ms if latest is not None else None
    wearer, whole = person_of(principal, registered)
    return DeviceOut(
        community=key[0], device_type=device_type, device_id=key[1],
        registered=registered is not None, place=place_of(registered),
        state=_state(alerts, key, latest),
        online=latest.online if latest is not None else None,
        last_seen_ms=seen_ms, wearer=wearer, latest=_latest_out(latest),
    ), whole  # fmt: skip


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
    alerts = open_alerts_by_device(ctx.gateway.alerts.open_alerts(), offline_rules(ctx))
    views: list[DeviceOut] = []
    audited: list[tuple[str, str]] = []
    matched = 0
    for key, (kind, registered) in sorted(_device_refs(ctx).items()):
        if community is not None and key[0] != community:
            continue
        if device_type is not None and kind != device_type:
            continue
        if any(
            wanted is not None and getattr(registered, level, None) != wanted
            for level, wanted in (("area", area), ("compound", compound), ("building", building))
        ):
            continue
        if (
            state is not None
            and _state(alerts, key, ctx.latest.get(DeviceRef(key[0], kind, key[1]))) != state
        ):
            continue
        matched += 1
        if matched <= offset or len(views) >= limit:
            continue
        view, whole = _view(ctx, principal, key, kind, registered, alerts)
        views.append(view)
        if whole:
            audited.append(key)
    await audit_reads(ctx, principal.name, str(principal.role), audited, f"GET {request.url.path}")
    return DeviceListOut(total=matched, devices=views)


def offline_rules(ctx: ApiContext) -> set[str]:
    return {r.name for r in ctx.gateway.loaded_rules if r.spec.kind == "absence"}


def _find(ctx: ApiContext, community: str, device_id: str) -> tuple[str, RegisteredDevice | None]:
    registered = ctx.gateway.registry.get(community, device_id)
    if registered is not None:
        return registered.device_type, registered
    for ref in ctx.latest.devices():
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
    kind, registered = _find(ctx, community, device_id)
    alerts = open_alerts_by_device(ctx.gateway.alerts.open_alerts(), offline_rules(ctx))
    view, whole = _view(ctx, principal, (community, device_id), kind, registered, alerts)
    if whole:
        await audit_reads(
            ctx,
            principal.name,
            str(principal.role),
            [(community, device_id)],
            f"GET {request.url.path}",
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
    community: str,
    device_id: str,
    since_ms: Annotated[int | None, Query(ge=0, le=1 << 53)] = None,
    until_ms: Annotated[int | None, Query(ge=0, le=1 << 53)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> ReadingsOut:
    require(principal, Role.ADMIN, Role.OPERATOR)
    kind, _ = _find(ctx, community, device_id)
    history = ReadingHistory(ctx.gateway)
    return await history.readings(DeviceRef(community, kind, device_id), since_ms, until_ms, limit)
