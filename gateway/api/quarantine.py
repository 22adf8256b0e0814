"""The quarantine of rejected messages, and the audit of personal data read."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request

from gateway.api.audit import Shown
from gateway.api.auth import Principal, Role, require
from gateway.api.context import ApiContext, Caller, Ctx
from gateway.api.devices import audit_reads, tracks_person
from gateway.api.models import AUTH_ERRORS, AuditOut, QuarantineOut
from gateway.api.privacy import POSITION, sees_whole
from gateway.logs import coarse_positions
from gateway.registry import Registry
from gateway.store.line_protocol import parse_line
from gateway.store.outbox import StoredQuarantine

router = APIRouter(prefix="/api/v1", tags=["inspection"], responses=AUTH_ERRORS)


# Rejected messages looked through at most for a caller limited to some communities:
# the quarantine is shared by every community of the installation, and a flood of one
# community's bad messages must not make another's desk read the whole table.
MAX_SCOPED_SCAN_ROWS = 10_000


def topic_community(registry: Registry, topic: str) -> str | None:
    """The community a rejected message belongs to: the one its topic names
    (community/<c>/...); for a vendor's topic (vendor/acme-smoke/<imei>/up), the one the
    registry puts the IMEI it names in; else none."""
    parts = topic.split("/")
    if parts[0] == "community":
        return parts[1] if len(parts) > 1 else None
    owners = {d.community for part in parts if (d := registry.by_imei(part)) is not None}
    return owners.pop() if len(owners) == 1 else None


async def _rejected(
    ctx: ApiContext, principal: Principal, reason: str | None, limit: int
) -> list[StoredQuarantine]:
    """The newest `limit` rejected messages the caller may see."""
    outbox = ctx.gateway.outbox
    scope = principal.scope
    if scope is None:
        return await asyncio.to_thread(outbox.quarantine, limit=limit, reason=reason)
    registry = ctx.gateway.registry

    def theirs(stored: StoredQuarantine) -> bool:
        return topic_community(registry, stored.entry.topic) in scope

    # Newest first, page after page, each larger, until `limit` of theirs are found or
    # the newest MAX_SCOPED_SCAN_ROWS have been looked at.
    found: list[StoredQuarantine] = []
    scanned = 0
    rows = min(limit * 4, MAX_SCOPED_SCAN_ROWS)
    before_id: int | None = None
    while True:
        page = await asyncio.to_thread(
            outbox.quarantine, limit=rows, reason=reason, before_id=before_id
        )
        scanned += len(page)
        found.extend(stored for stored in page if theirs(stored))
        if len(found) >= limit or len(page) < rows or scanned >= MAX_SCOPED_SCAN_ROWS:
            return found[:limit]
        before_id = page[-1].id
        rows = min(rows * 2, MAX_SCOPED_SCAN_ROWS - scanned)


@router.get("/quarantine", response_model=list[QuarantineOut], summary="Rejected messages")
async def list_quarantine(
    ctx: Ctx,
    principal: Caller,
    request: Request,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[QuarantineOut]:
    require(principal, Role.ADMIN, Role.OPERATOR)
    stored = await _rejected(ctx, principal, reason, limit)
    shown: list[QuarantineOut] = []
    audited: dict[tuple[str, str], Shown] = {}
    for q in stored:
        payload = q.entry.payload.decode("utf-8", errors="replace")
        detail = q.entry.detail
        worn = _worn_device(ctx, q.entry.topic, payload)
        if worn is not None:
            coarse_payload, coarse_detail = coarse_positions(payload), coarse_positions(detail)
            if (coarse_payload, coarse_detail) != (payload, detail):
                registered = ctx.gateway.registry.get(*worn)
                if sees_whole(principal, registered, worn[0]):
                    audited[worn] = Shown(*worn, POSITION)
                else:
                    payload, detail = coarse_payload, coarse_detail
        shown.append(
            QuarantineOut(id=q.id, received_ms=q.entry.received_ms, topic=q.entry.topic,
                          payload=payload, reason=q.entry.reason, detail=detail)
        )  # fmt: skip
    via = f"GET {request.url.path}"
    await audit_reads(ctx, principal.name, str(principal.role), audited.values(), via)
    return shown


def _worn_device(ctx: ApiContext, topic: str, payload: str) -> tuple[str, str] | None:
    """The community and id of the device worn by a person (see privacy) whose rejected
    message this is, as its topic names it, or the tags of a line the database refused.

    A device registered as worn is one whatever device type its topic names: a bracelet
    whose firmware publishes under a smoke detector's type still sends where its wearer
    is."""
    parts = topic.split("/")
    if len(parts) >= 4 and parts[0] == "community":
        community, device_type, device_id = parts[1:4]
        registered = ctx.gateway.registry.get(community, device_id)
        worn = tracks_person(ctx, device_type) or (
            registered is not None and tracks_person(ctx, registered.device_type)
        )
        return (community, device_id) if worn else None
    if topic:
        return None
    try:
        measurement, tags, _, _ = parse_line(payload)
    except ValueError:
        return None
    if measurement not in ctx.gateway.profiles.personal_measurements:
        return None
    return tags.get("community", ""), tags.get("device_id", "")


@router.get(
    "/audit", response_model=list[AuditOut], summary="Who read whose personal data, newest first"
)
async def list_audit(
    ctx: Ctx,
    principal: Caller,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    community: Annotated[str | None, Query(max_length=32)] = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> list[AuditOut]:
    require(principal, Role.ADMIN)
    entries = await asyncio.to_thread(
        ctx.audit.entries, limit=limit, actor=actor, community=community, device_id=device_id
    )
    return [
        AuditOut(id=e.id, at_ms=e.at_ms, actor=e.actor, role=e.role, community=e.community,
                 device_id=e.device_id, what=e.what, via=e.via)
        for e in entries
    ]  # fmt: skip
