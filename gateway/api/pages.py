"""The pages: the operator's alert board, and the grid worker's page from a link.

Plain HTML that loads fast on a phone, in Chinese, usable with the keyboard alone. The
link page needs no script at all: its actions are forms, authorised by the link alone.
"""

from __future__ import annotations

import html
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from gateway.api.audit import Shown
from gateway.api.auth import TooManyFailuresError
from gateway.api.context import ApiContext, Caller, Ctx, client_address
from gateway.api.devices import audit_reads, tracks_person
from gateway.api.latest import DeviceLatest
from gateway.api.privacy import has_personal_data, mask_receiver, what_shown
from gateway.decode.record import DeviceRef, Position
from gateway.errors import StoreError
from gateway.notify.link import (
    RECEIVER_GONE,
    SHORT_CODE,
    AlertLink,
    LinkError,
    UnsignedLinkError,
)
from gateway.notify.notice import describe_place, map_url, scene_position
from gateway.registry import RegisteredDevice, Site
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertEntry, AlertError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"
# A comment line keeps proxies from closing a quiet stream, and tells the board that the
# stream still flows: a connection left half-open (a proxy or a mobile network that stops
# passing data without closing it) says nothing, and the board, which is told this
# interval in the `X-Keepalive-S` header, takes a few of them missed for a stream gone.
KEEPALIVE_S = 15.0
MAX_NOTE_CHARS = 2000

STATE_LABELS = {
    "pending": "待确认条件", "firing": "告警中", "acknowledged": "已接单", "arrived": "已到场",
    "resolved": "已恢复", "closed": "已关闭",
}  # fmt: skip
SEVERITY_LABELS = {"critical": "紧急", "major": "重要", "warning": "警告", "info": "提示"}
ACTIONS = {"acknowledge": "接单", "arrive": "已到场", "close": "关闭告警"}
# A link page's address is its authority: no other site may learn it from a Referer
# (the map link), and no shared cache may keep the page with its personal data.
PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def root_of(path: str) -> str:
    """The way back from a page at `path` to the gateway's root, as a relative address.
    A proxy may publish the gateway under a path of its own (`api.public_url`
    https://gw.example.cn/gateway) and strip it before the gateway sees a request: an
    address from the host's root would lead out of the gateway."""
    return "../" * max(0, path.count("/") - 1)


# The way from the gateway's root to the board. Not a redirect to `board`: published by
# a proxy under a path of its own and opened without its trailing slash
# (https://gw.example.cn/gateway), the browser would take `board` from the host's root.
# The page's own path, as the browser has it, knows; the token in the fragment goes along.
ROOT_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>告警看板</title>
<script>location.replace(location.pathname.replace(/\\/?$/, "/board") + location.hash)</script>
</head><body><a href="board">告警看板</a></body></html>
"""


@router.get("/", response_class=HTMLResponse)
async def root() -> HTMLResponse:
    return HTMLResponse(ROOT_PAGE, headers=PAGE_HEADERS)


@router.get("/board", response_class=HTMLResponse)
async def board() -> HTMLResponse:
    return HTMLResponse((STATIC / "board.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


@router.get("/api/v1/alerts-stream", response_class=StreamingResponse)
async def alert_stream(
    ctx: Ctx,
    principal: Caller,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> StreamingResponse:
    """Server-sent events: `alerts` with a version number whenever alerts change, first
    at once, and a keepalive comment after each `KEEPALIVE_S` without one. Ends when the
    gateway stops, or after `limit` events."""

    async def events() -> AsyncIterator[str]:
        version = -1
        sent = 0
        stopping = ctx.gateway.stopping
        # The tokens this stream was authenticated by: when they are reloaded, it ends,
        # and the client reconnects with its token, refused if it was taken out.
        tokens = ctx.tokens
        while not stopping.is_set():
            now = await ctx.feed.wait(version, KEEPALIVE_S, stopping)
            if ctx.tokens is not tokens:
                return
            if now == version:
                yield ": keepalive\n\n"
                continue
            version = now
            yield f"event: alerts\ndata: {version}\n\n"
            sent += 1
            if limit is not None and sent >= limit:
                return

    headers = {
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
        "X-Keepalive-S": f"{KEEPALIVE_S:g}",
    }
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# --- the grid worker's page from a notification link ---------------------------------


def _verify(ctx: ApiContext, request: Request, token: str) -> AlertLink:
    try:
        link = ctx.gateway.links.verify(token, ctx.now_ms())
    except UnsignedLinkError as exc:
        # Only a link the gateway did not sign can be a guess: it alone is limited, so
        # that a stranger behind the same address (a proxy, a NAT) locks nobody's
        # signed link out. An address over its limit is refused without counting.
        address = client_address(request)
        ctx.limiter.check(address)
        ctx.limiter.fail(address, f"alert link: {exc}")
        raise
    if not ctx.gateway.still_notifies(link):
        raise LinkError(RECEIVER_GONE)
    return link


@router.get("/s/{code}", response_class=RedirectResponse)
async def short_link(ctx: Ctx, request: Request, code: str) -> RedirectResponse:
    """An SMS's short link (see LinkSigner.code): on to the link it stands for, which is
    checked there as any link is, at the gateway's address now: an SMS sent before
    `api.public_url` changed still leads to the gateway."""
    link = ctx.gateway.notifications.short_link(code) if SHORT_CODE.fullmatch(code) else None
    if link is None:
        address = client_address(request)
        ctx.limiter.check(address)
        ctx.limiter.fail(address, "short link: no such code")
        raise UnsignedLinkError("this link is not valid")
    token = link.rpartition("/a/")[2]
    return RedirectResponse(ctx.gateway.links.url_of(token), status_code=303, headers=PAGE_HEADERS)


@router.get("/a/{token}", response_class=HTMLResponse)
async def link_page(
    ctx: Ctx, request: Request, token: str, done: str | None = None
) -> HTMLResponse:
    link = _verify(ctx, request, token)
    entry = ctx.gateway.alerts.get(link.alert_id)
    message = f"已记录：{ACTIONS[done]}" if done in ACTIONS else None
    page = await _alert_page(ctx, request, link, token, entry, message, via="GET /a/{token}")
    return HTMLResponse(page, headers=PAGE_HEADERS)


@router.get("/a/{token}/{action}", response_class=RedirectResponse)
async def link_action_reopened(ctx: Ctx, request: Request, token: str, action: str) -> Response:
    """A step's address opened again (a refused step's page, reopened in the browser):
    the alert's page."""
    _verify(ctx, request, token)
    return RedirectResponse(f"../{quote(token)}", status_code=303, headers=PAGE_HEADERS)


@router.post("/a/{token}/{action}", response_class=HTMLResponse)
async def link_action(ctx: Ctx, request: Request, token: str, action: str) -> Response:
    link = _verify(ctx, request, token)
    if action not in ACTIONS:
        page = error_page("没有这个操作", f"未知操作：{action}", root_of(request.url.path))
        return HTMLResponse(page, status_code=404, headers=PAGE_HEADERS)
    desk = ctx.gateway.desk
    # A refused step's page shows the alert again: read through the step asked for.
    refused = f"POST /a/{{token}}/{action} refused"
    try:
        if action == "acknowledge":
            await desk.acknowledge(link.alert_id, link.receiver)
        elif action == "arrive":
            await desk.arrive(link.alert_id, link.receiver)
        else:
            form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
            note = (form.get("note") or [""])[0].strip()[:MAX_NOTE_CHARS]
            if not note:
                entry = ctx.gateway.alerts.get(link.alert_id)
                asked = "关闭告警需要填写处理说明。"
                page = await _alert_page(
                    ctx, request, link, token, entry, asked, via=refused, error=True
                )
                return HTMLResponse(page, status_code=422, headers=PAGE_HEADERS)
            await desk.close(link.alert_id, link.receiver, note)
    except AlertError as exc:
        entry = ctx.gateway.alerts.get(link.alert_id)
        refusal = _refusal(entry, action, exc)
        page = await _alert_page(ctx, request, link, token, entry, refusal, via=refused, error=True)
        return HTMLResponse(page, status_code=409, headers=PAGE_HEADERS)
    # Relative, as every address on the pages (see `root_of`): from /a/{token}/{action}.
    return RedirectResponse(
        f"../{quote(token)}?done={action}", status_code=303, headers=PAGE_HEADERS
    )


def _refusal(entry: AlertEntry, action: str, exc: AlertError) -> str:
    """Why a step was not taken, as the person on the spot needs to hear it."""
    if entry.state is AlertState.CLOSED:
        return f"操作未执行：告警已由 {_actor(entry, entry.closed_by)} 关闭。"
    if action == "acknowledge" and entry.acknowledged_by:
        return f"操作未执行：已由 {entry.acknowledged_by} 接单。"
    if action == "arrive" and entry.arrived_by:
        return f"操作未执行：{entry.arrived_by} 已到场。"
    if action in ("acknowledge", "arrive") and entry.fired_ms is None:
        return "操作未执行：告警尚未触发，触发后才能接单或到场。"
    return f"操作未执行：{exc}"


def _actor(entry: AlertEntry, name: str | None) -> str:
    """Who acted; an emergency contact (named by their phone) masked once the alert is
    closed, when the page no longer shows whom to call."""
    if name is None:
        return ""
    return name if entry.state is not AlertState.CLOSED else mask_receiver(name)


def _when(ctx: ApiContext, ms: int | None) -> str:
    if ms is None:
        return "—"
    zone = ZoneInfo(ctx.gateway.config.timezone)
    return datetime.fromtimestamp(ms / 1000, zone).strftime("%Y-%m-%d %H:%M:%S")


def _position(
    entry: AlertEntry,
    site: Site | None,
    device: RegisteredDevice | None,
    latest: DeviceLatest | None,
) -> Position | None:
    """Where to go: the device's last known position, where a wandering resident is now
    rather than where they fell; else as a notice has it (`scene_position`).

    A last known position older than the alert gives way to where it fired: after a
    restart the latest values begin empty, and the first message to fill them can be
    one the device held back from before the alert."""
    if latest is not None and (last := Position.in_fields(latest.fields)) is not None:
        fired_ms = entry.fired_ms or entry.started_ms
        if entry.position is None or (latest.position_ms or 0) >= fired_ms:
            return last
    return scene_position(entry, site, device)


async def _alert_page(
    ctx: ApiContext,
    request: Request,
    link: AlertLink,
    token: str,
    entry: AlertEntry,
    message: str | None,
    *,
    via: str,
    error: bool = False,
) -> str:
    """`via`: the request that shows the page, as the read of personal data is recorded;
    the route's template, never the token, which alone acts on the alert."""
    esc = html.escape
    # A closed alert's link, still valid and posted in group chats, shows what was done
    # and no more: not whom to call, nor where the wearer is now.
    live = entry.state is not AlertState.CLOSED
    registered = ctx.gateway.registry.device_of(entry)
    site = entry.where(ctx.gateway.registry)
    place = describe_place(entry.community, site)
    rows = [
        ("级别", SEVERITY_LABELS.get(entry.severity, entry.severity)),
        ("状态", STATE_LABELS.get(str(entry.state), str(entry.state))),
        ("位置", place),
        ("设备", f"{entry.device_type} {entry.device_id}"
                 + (f" 端口 {entry.port}" if entry.port is not None else "")),
        ("发生时间", _when(ctx, entry.fired_ms or entry.started_ms)),
    ]  # fmt: skip
    if entry.repeats:
        # A resident pressing SOS again and again is told in one alert: how often says
        # how urgent.
        rows.append(("再次报警", f"{entry.repeats} 次，最近 {_when(ctx, entry.repeated_ms)}"))
    if entry.acknowledged_by:
        rows.append(
            ("接单", f"{_actor(entry, entry.acknowledged_by)} {_when(ctx, entry.acknowledged_ms)}")
        )
    if entry.arrived_by:
        rows.append(("到场", f"{_actor(entry, entry.arrived_by)} {_when(ctx, entry.arrived_ms)}"))
    if entry.closed_by:
        rows.append(
            (
                "关闭",
                f"{_actor(entry, entry.closed_by)} {_when(ctx, entry.closed_ms)}：{entry.note or ''}",
            )
        )
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    people = ""
    wearer = live and registered is not None and has_personal_data(registered)
    if wearer and registered is not None:
        items = []
        if registered.wearer_name or registered.wearer_phone:
            items.append(_person("佩戴人", registered.wearer_name, registered.wearer_phone))
        items += [_person("紧急联系人", c.name, c.phone) for c in registered.emergency_contacts]
        people = "<h2>联系人</h2><ul class=people>" + "".join(items) + "</ul>"
    map_link = None
    if live:
        latest = ctx.latest.get(DeviceRef(entry.community, entry.device_type, entry.device_id))
        map_link = map_url(_position(entry, site, registered, latest), entry.title, open_app=True)
    # The receiver of this alert is the one who must call and go: shown whole, and audited.
    what = what_shown(wearer, map_link is not None and tracks_person(ctx, entry.device_type))
    if what is not None:
        shown = Shown(entry.community, entry.device_id, what)
        try:
            await audit_reads(ctx, link.receiver, "link", [shown], via)
        except StoreError as exc:
            # The one sent to a fall must see whom to call and where to go, audited or
            # not: said in the log, which an audit would be read beside.
            log.error("%s read alert %s's page unaudited: %s", link.receiver, entry.alert_id, exc)
    map_html = (
        f'<p><a class=map href="{esc(map_link)}" target=_blank rel=noopener>在地图中查看位置</a></p>'
        if map_link else ""
    )  # fmt: skip
    actions = _actions(token, entry, root_of(request.url.path))
    note = ""
    if message:
        note = f'<p class="{"error" if error else "ok"}" role=status>{esc(message)}</p>'
    body = (
        f"<h1>{esc(entry.title)}</h1>{note}<table>{table}</table>{map_html}{people}{actions}"
        f"<p class=small>处理人：{esc(_actor(entry, link.receiver))}</p>"
    )
    return _page(entry.title, body, root_of(request.url.path))


def _person(label: str, name: str | None, phone: str | None) -> str:
    esc = html.escape
    call = f' <a href="tel:{esc(phone)}">{esc(phone)}</a>' if phone else ""
    return f"<li>{esc(label)}：{esc(name or '')}{call}</li>"


def _actions(token: str, entry: AlertEntry, root: str) -> str:
    """`root`: the way back to the gateway's root from the page's address (see
    `root_of`), which is /a/{token}, or /a/{token}/{action} for a step refused."""
    if entry.state is AlertState.CLOSED:
        return "<p>告警已关闭。</p>"
    base = f"{root}a/{quote(token)}"
    forms = []
    first = True

    def button(action: str, extra: str = "") -> str:
        nonlocal first
        focus = " autofocus" if first else ""
        first = False
        return (
            f'<form method=post action="{base}/{action}">{extra}'
            f"<button type=submit name=go value=1{focus}>{ACTIONS[action]}</button></form>"
        )

    # Not before it fires: taken while pending it would fire untold (see the book).
    fired = entry.fired_ms is not None
    if fired and entry.acknowledged_by is None:
        forms.append(button("acknowledge"))
    if fired and entry.arrived_by is None:
        forms.append(button("arrive"))
    note_field = (
        "<label for=note>处理说明</label>"
        f"<textarea id=note name=note rows=3 maxlength={MAX_NOTE_CHARS} required></textarea>"
    )
    forms.append(button("close", note_field))
    return "<div class=actions>" + "".join(forms) + "</div>"


def error_page(title: str, message: str, root: str) -> str:
    body = f"<h1>{html.escape(title)}</h1><p class=error>{html.escape(message)}</p>"
    return _page(title, body, root)


LINK_ERRORS = {
    "this link has expired": "链接已过期，请联系值班人员或在系统中查看该告警。",
    "this link is not valid": "链接无效，可能被改动或不完整。",
    RECEIVER_GONE: "此链接的接收人已不再接收告警，请联系值班人员。",
}


def link_error_page(exc: LinkError, root: str) -> str:
    return error_page("无法打开告警", LINK_ERRORS.get(str(exc), str(exc)), root)


def too_many_page(exc: TooManyFailuresError, root: str) -> str:
    return error_page("请稍后再试", f"失败次数过多，请 {exc.retry_after_s} 秒后再试。", root)


def failure_page(exc: Exception, root: str) -> str:
    """A page or step that failed, said so that the person on the spot knows what to do;
    the error itself, in English, is for the log."""
    if isinstance(exc, StoreError):
        message = "操作未记录：系统暂时无法保存，请稍后重试；仍不成功请联系值班人员。"
    elif isinstance(exc, AlertError) and str(exc).startswith("no alert"):
        message = "该告警已不存在，请联系值班人员。"
    else:
        message = "操作未完成，请稍后重试；仍不成功请联系值班人员。"
    return error_page("无法完成", message, root)


def _page(title: str, body: str, root: str) -> str:
    return (
        "<!doctype html><html lang=zh-CN><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel=stylesheet href="{root}static/page.css"></head>'
        f"<body><main>{body}</main></body></html>"
    )
