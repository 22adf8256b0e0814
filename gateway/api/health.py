"""The gateway's own health: alive, and ready with each dependency named."""

from __future__ import annotations

import asyncio
import shutil

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.api.context import ApiContext, Ctx
from gateway.api.models import CheckOut, HealthOut, Responses

router = APIRouter(prefix="/health", tags=["health"])
PING_TIMEOUT_S = 2.0
UNAVAILABLE: Responses = {503: {"model": HealthOut, "description": "a dependency is down"}}


@router.get("/live", response_model=HealthOut, summary="The process answers")
async def live() -> HealthOut:
    return HealthOut(status="ok", checks=[])


@router.get(
    "/ready", response_model=HealthOut, responses=UNAVAILABLE,
    summary="Broker, InfluxDB and disk, each with whether it is usable",
)  # fmt: skip
async def ready(ctx: Ctx) -> JSONResponse:
    checks = [_broker(ctx), await _influx(ctx), await asyncio.to_thread(_disk, ctx)]
    ok = all(c.ok for c in checks)
    body = HealthOut(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _broker(ctx: ApiContext) -> CheckOut:
    subscriber = ctx.gateway.subscriber
    mqtt = ctx.gateway.config.mqtt
    if subscriber is None or mqtt is None:
        return CheckOut(name="broker", ok=True, detail="no broker configured")
    where = f"{mqtt.host}:{mqtt.port}"
    alarms = ctx.gateway.alarm_subscriber
    if alarms is not None and not alarms.connected.is_set():
        return CheckOut(name="broker", ok=False, detail=f"alarm connection not up to {where}")
    refused = ctx.gateway.refused_subscriptions()
    if refused:
        detail = f"{where} refused the subscriptions to {', '.join(refused)}"
        return CheckOut(name="broker", ok=False, detail=detail)
    if subscriber.connected.is_set():
        return CheckOut(name="broker", ok=True, detail=f"connected to {where}")
    return CheckOut(name="broker", ok=False, detail=f"not connected to {where}")


async def _influx(ctx: ApiContext) -> CheckOut:
    influx = ctx.gateway.config.influx
    if influx is None:
        return CheckOut(
            name="influxdb", ok=True, detail="none configured: points wait in the outbox"
        )
    try:
        async with httpx.AsyncClient(timeout=PING_TIMEOUT_S) as client:
            response = await client.get(influx.url.rstrip("/") + "/ping")
    except httpx.HTTPError as exc:
        return CheckOut(name="influxdb", ok=False, detail=f"{influx.url} unreachable: {exc}")
    if response.status_code >= 300:
        return CheckOut(
            name="influxdb", ok=False, detail=f"{influx.url} answered {response.status_code}"
        )
    # It may answer a ping and refuse every write (a v2 write without the org it wants).
    failing = ctx.gateway.stats.last_write_error
    if failing is not None:
        return CheckOut(
            name="influxdb", ok=False, detail=f"{influx.url} answers, but writes fail: {failing}"
        )
    return CheckOut(name="influxdb", ok=True, detail=f"{influx.url} answers")


def _disk(ctx: ApiContext) -> CheckOut:
    outbox = ctx.gateway.outbox
    errors = ctx.gateway.stats.failing_commits()
    if errors is not None:
        return CheckOut(
            name="disk", ok=False, detail=f"outbox commits failing, tried again: {errors}"
        )
    free = shutil.disk_usage(outbox.path.parent).free
    if free < ctx.config.min_free_disk_bytes:
        return CheckOut(name="disk", ok=False, detail=f"{free} bytes free at {outbox.path.parent}")
    reserve = outbox.reserve
    if reserve.given_back:
        return CheckOut(
            name="disk",
            ok=False,
            detail=f"the disk filled up: the {reserve.size_bytes} bytes set aside at "
            f"{reserve.path} were given back, until it has room for them twice over",
        )
    used = outbox.size_bytes()
    if used >= outbox.full_at_bytes:
        return CheckOut(
            name="disk",
            ok=False,
            detail=f"outbox full ({used} of {outbox.max_bytes} bytes): its oldest lines are "
            "dropped to make room",
        )
    return CheckOut(name="disk", ok=True, detail=f"{free} bytes free; outbox {used} bytes")
