"""Silences: maintenance windows that mute alerts (never a life-safety one)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from gateway.api.auth import ForbiddenError, Principal, Role, require
from gateway.api.context import Caller, Ctx
from gateway.api.models import AUTH_ERRORS, SilenceIn, SilenceOut, error_responses
from gateway.rules.silence import Silence, SilenceError

router = APIRouter(prefix="/api/v1/silences", tags=["silences"], responses=AUTH_ERRORS)
REFUSED = error_responses(
    404, 422, e404="no such silence, or not of the caller's communities",
    e422="the silence cannot be made as asked",
)  # fmt: skip


def silence_out(silence: Silence) -> SilenceOut:
    return SilenceOut(
        id=silence.id, community=silence.community, area=silence.area,
        compound=silence.compound, building=silence.building, device_id=silence.device_id,
        rule=silence.rule, starts_ms=silence.starts_ms, ends_ms=silence.ends_ms,
        author=silence.author, reason=silence.reason,
    )  # fmt: skip


def _shown(principal: Principal, silence: Silence) -> bool:
    """Whether the caller sees a silence: every one, or for a caller limited to some
    communities, those of their communities and those of none (which mute theirs too)."""
    return silence.community is None or principal.covers_community(silence.community)


@router.get("", response_model=list[SilenceOut], summary="Silences not yet expired")
async def list_silences(ctx: Ctx, principal: Caller) -> list[SilenceOut]:
    require(principal, Role.ADMIN, Role.OPERATOR)
    current = ctx.gateway.silences.current(ctx.now_ms())
    return [silence_out(s) for s in current if _shown(principal, s)]


@router.post(
    "", response_model=SilenceOut, status_code=201, responses=REFUSED,
    summary="Mute alerts of a device, place or rule until `ends_ms`, with a reason",
)  # fmt: skip
async def create_silence(ctx: Ctx, principal: Caller, body: SilenceIn) -> SilenceOut:
    require(principal, Role.ADMIN, Role.OPERATOR)
    scope = principal.scope
    if scope is not None and (body.community is None or body.community not in scope):
        # A silence of no community mutes every community's alerts, of another only
        # theirs: neither is for a desk limited to its own. Refused alike whatever the
        # community is named, so that none is probed.
        raise ForbiddenError(
            f"{principal.name} silences only within its communities "
            f"({', '.join(sorted(scope))}): name one as `community`"
        )
    if body.rule is not None and body.rule not in {r.name for r in ctx.gateway.loaded_rules}:
        # Misspelt, it would mute nothing; a rule yet to come is silenced once loaded.
        raise SilenceError(f"no rule is named {body.rule!r}")
    # In a worker thread: the write may wait for the ingest's commits (see open_book).
    silence = await asyncio.to_thread(
        ctx.gateway.silences.add, author=principal.name, reason=body.reason,
        starts_ms=body.starts_ms if body.starts_ms is not None else ctx.now_ms(),
        ends_ms=body.ends_ms, community=body.community, area=body.area,
        compound=body.compound, building=body.building, device_id=body.device_id,
        rule=body.rule, now_ms=ctx.now_ms(),
    )  # fmt: skip
    return silence_out(silence)


@router.delete(
    "/{silence_id}", status_code=204, responses=REFUSED, response_class=Response,
    summary="End a silence now",
)  # fmt: skip
async def delete_silence(
    ctx: Ctx, principal: Caller, silence_id: Annotated[int, Path(ge=1, le=(1 << 63) - 1)]
) -> Response:
    require(principal, Role.ADMIN, Role.OPERATOR)
    scope = principal.scope
    if scope is not None:
        current = ctx.gateway.silences.current(ctx.now_ms())
        if any(s.id == silence_id and s.community is None for s in current):
            # Shown to the desk, as it mutes its alerts too, but it mutes the others'.
            raise ForbiddenError(
                f"silence {silence_id} is of every community: {principal.name} ends only "
                "those of its own"
            )
    # Another community's silence is not found, as if it did not exist.
    await asyncio.to_thread(ctx.gateway.silences.end, silence_id, ctx.now_ms(), within=scope)
    return Response(status_code=204)
