"""The quarantine of rejected messages, and the audit of personal data read."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.auth import Role, require
from gateway.api.context import Caller, Ctx
from gateway.api.models import AUTH_ERRORS, AuditOut, QuarantineOut

router = APIRouter(prefix="/api/v1", tags=["inspection"], responses=AUTH_ERRORS)


@router.get("/quarantine", response_model=list[QuarantineOut], summary="Rejected messages")
async def list_quarantine(
    ctx: Ctx,
    principal: Caller,
    reason: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[QuarantineOut]:
    require(principal, Role.ADMIN, Role.OPERATOR)
    stored = await asyncio.to_thread(ctx.gateway.outbox.quarantine, limit=limit, reason=reason)
    return [
        QuarantineOut(id=q.id, received_ms=q.entry.received_ms, topic=q.entry.topic,
                      payload=q.entry.payload.decode("utf-8", errors="replace"),
                      reason=q.entry.reason, detail=q.entry.detail)
        for q in stored
    ]  # fmt: skip


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
