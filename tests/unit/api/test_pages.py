import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncGenerator
from html.parser import HTMLParser
from pathlib import Path
from typing import cast
from urllib.parse import urljoin

import httpx
import pytest
from itsdangerous import URLSafeSerializer

from gateway import PROJECT_ROOT
from gateway.api import pages
from gateway.api.auth import Principal, Role
from gateway.clock import ManualClock
from gateway.decode.record import DeviceRef
from gateway.notify.notice import Notice
from tests.unit.api.conftest import (
    ADMIN,
    DESK_HGY,
    OPERATOR,
    OTHER_COMMUNITY_OFFLINE,
    REGISTRY,
    T0,
    TWO_COMMUNITIES,
    Site,
    district,
    open_site,
)


def link_path(site: Site, alert_id: str, receiver: str = "wang-fang") -> str:
    url = site.gateway.links.url(alert_id, receiver, site.clock.now_ms())
    return url.removeprefix("http://gw.test")


async def test_the_link_page_shows_the_alert_whole_and_audits_it(site: Site) -> None:
    alert_id = await site.fall()
    page = await site.client.get(link_path(site, alert_id))
    assert page.status_code == 200
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert "跌倒" in text and "告警中" in text and "hgy east lakeside 3 2-301" in text
    # The receiver must call the wearer and the emergency contacts.
    assert 'href="tel:+8613812345678"' in text and "李四" in text
    assert "uri.amap.com/marker?position=113.62,34.75" in text
    assert "autofocus>接单</button>" in text
    (entry,) = (await site.get("/api/v1/audit")).json()
    assert (entry["actor"], entry["role"], entry["via"]) == ("wang-fang", "link", "GET /a/{token}")
    assert entry["what"] == "wearer name, phone, emergency contacts, position"


async def test_a_fall_detected_again_shows_how_often_on_the_page_the_api_and_the_board(
    site: Site,
) -> None:
    alert_id = await site.fall()
    assert site.gateway.api is not None
    feed = site.gateway.api.app.state.context.feed
    version = feed.version
    for _ in range(2):
        site.clock.advance(40)
        await site.send(
            "community/hgy/bracelet/br-1/event",
            {"ts": site.clock.now_ms(), "event": "fall", "confidence": 0.9},
        )
    assert [a.alert_id for a in site.gateway.alerts.open_alerts()] == [alert_id]
    # The board is told, to show it live.
    assert feed.version == version + 2
    alert = (await site.get(f"/api/v1/alerts/{alert_id}")).json()
    assert (alert["alert"]["repeats"], alert["alert"]["repeated_ms"]) == (2, T0 + 80_000)
    assert [s["note"] for s in alert["history"]] == [None, "repeated", "repeated"]
    page = (await site.client.get(link_path(site, alert_id))).text
    assert "<th>再次报警</th><td>2 次，最近 " in page


async def test_the_link_acts_as_its_receiver_with_the_token_alone(site: Site) -> None:
    alert_id = await site.fall()
    path = link_path(site, alert_id)
    site.clock.advance(120)
    done = await site.client.post(path + "/acknowledge")
    assert done.status_code == 303
    back = urljoin(path + "/acknowledge", done.headers["location"])
    assert back == path + "?done=acknowledge"
    assert "已记录：接单" in (await site.client.get(back)).text
    entry = site.gateway.alerts.get(alert_id)
    assert (entry.acknowledged_by, entry.acknowledged_ms) == ("wang-fang", site.clock.now_ms())
    again = await site.client.post(path + "/acknowledge")
    assert again.status_code == 409 and "操作未执行：已由 wang-fang 接单。" in again.text
    await site.client.post(path + "/arrive")
    no_note = await site.client.post(path + "/close", content=b"note=++")
    assert no_note.status_code == 422 and "处理说明" in no_note.text
    closed = await site.client.post(
        path + "/close", content="note=已送医".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert closed.status_code == 303
    assert site.gateway.alerts.get(alert_id).note == "已送医"
    listed = (await site.get(f"/api/v1/alerts/{alert_id}", OPERATOR)).json()
    assert [s["actor"] for s in listed["history"]] == [
        "rules",
        "wang-fang",
        "wang-fang",
        "wang-fang",
    ]


async def test_an_expired_or_forged_link_gets_a_chinese_page(site: Site) -> None:
    alert_id = await site.fall()
    path = link_path(site, alert_id)
    forged = await site.client.get(path[:-3] + "xyz")
    assert forged.status_code == 403 and "链接无效" in forged.text
    site.clock.advance(73 * 3600)
    expired = await site.client.get(path)
    assert expired.status_code == 403 and "链接已过期" in expired.text
    refused = await site.client.post(path + "/acknowledge")
    assert refused.status_code == 403
    assert site.gateway.alerts.get(alert_id).acknowledged_by is None


async def test_a_link_works_only_while_the_policy_tells_its_receiver(site: Site) -> None:
    alert_id = await site.fall()
    # Sent before zhao-lei was taken out of the policy, and within its 72 hours.
    gone = await site.client.get(link_path(site, alert_id, "zhao-lei"))
    assert gone.status_code == 403 and "已不再接收告警" in gone.text
    refused = await site.client.post(link_path(site, alert_id, "zhao-lei") + "/acknowledge")
    assert refused.status_code == 403
    assert site.gateway.alerts.get(alert_id).acknowledged_by is None
    # The wearer's emergency contact is told, and may act; a number not theirs may not.
    contact = await site.client.post(
        link_path(site, alert_id, "contact:13987654321") + "/acknowledge"
    )
    assert contact.status_code == 303
    assert site.gateway.alerts.get(alert_id).acknowledged_by == "contact:13987654321"
    stranger = await site.client.get(link_path(site, alert_id, "contact:13700001111"))
    assert stranger.status_code == 403


def wang_fang_alone(tmp_path: Path, *, to: str, rosters: str = "[]") -> Path:
    """A config file whose policy tells wang-fang alone (or whoever is on duty)."""
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        "mqtt: null\n"
        f"registry_file: {tmp_path / 'devices.csv'}\n"
        "notify:\n"
        "  channels: {console: {type: console}}\n"
        "  receivers: [{name: wang-fang, channels: [console]}]\n"
        f"  rosters: {rosters}\n"
        "  routes: [{escalation: grid}]\n"
        f"  escalations: {{grid: [{{after_s: 0, to: [{to}]}}]}}\n",
        encoding="utf-8",
    )
    return config_file


async def test_a_reloaded_policy_revokes_the_links_of_those_it_no_longer_tells(
    site: Site, tmp_path: Path
) -> None:
    alert_id = await site.fall()
    assert (await site.client.get(link_path(site, alert_id, "li-na"))).status_code == 200
    # li-na is taken out of the policy in the config file, which is reloaded.
    config_file = wang_fang_alone(tmp_path, to="wang-fang")
    await site.gateway.reload(config_file)
    # At once, not at the next start.
    gone = await site.client.post(link_path(site, alert_id, "li-na") + "/acknowledge")
    assert gone.status_code == 403 and "已不再接收告警" in gone.text
    assert site.gateway.alerts.get(alert_id).acknowledged_by is None
    assert (await site.client.get(link_path(site, alert_id))).status_code == 200


async def test_a_reloaded_policy_naming_a_cell_with_no_device_leaves_the_running_one(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alert_id = await site.fall()
    config_file = wang_fang_alone(
        tmp_path,
        to="on_duty",
        rosters="[{cell: {community: hgy, area: 西区}, shifts: [{receiver: wang-fang}]}]",
    )
    with caplog.at_level("ERROR"):
        await site.gateway.reload(config_file)
    assert "notify.rosters[0].cell: no registered device is in hgy/西区" in caplog.text
    # li-na, whom only the running policy tells, can still act on the alert.
    assert (await site.client.get(link_path(site, alert_id, "li-na"))).status_code == 200


async def test_a_building_fires_page_names_no_resident_whose_bracelet_has_its_number(
    tmp_path: Path,
) -> None:
    # A bracelet may be registered as "3", the number of the building on fire: the fire's
    # page, and the API's alert, name neither its wearer nor their contacts, lead to no
    # stranger's home, and record no read of their data.
    stranger = (
        "3,bracelet,hgy,west,hillside,9,1-102,,,钱八,13611112222,周九:13522223333,34.70,113.60\n"
    )
    async with open_site(tmp_path, ManualClock(T0), registry_text=REGISTRY + stranger) as site:
        for device_id in ("sd-1", "sd-2"):
            await site.send(
                f"community/hgy/smoke_detector/{device_id}/event",
                {"ts": site.clock.now_ms(), "event": "alarm"},
            )
        (fire,) = [a for a in site.gateway.alerts.open_alerts() if a.device_type == "building"]
        page = await site.client.get(link_path(site, fire.alert_id))
        detail = (await site.get(f"/api/v1/alerts/{fire.alert_id}", ADMIN)).json()
        audit = (await site.get("/api/v1/audit", ADMIN)).json()
    assert page.status_code == 200 and "hgy east lakeside 3" in page.text
    for personal in ("钱八", "13611112222", "周九", "13522223333"):
        assert personal not in page.text
    assert "position=113.6,34.7" not in page.text
    assert detail["wearer"] is None
    assert audit == []


async def test_forged_links_count_as_failed_authentication(site: Site) -> None:
    alert_id = await site.fall()
    path = link_path(site, alert_id)
    for _ in range(10):
        await site.client.get("/a/forged-token")
    limited = await site.client.get("/a/forged-token")
    assert limited.status_code == 429 and "秒后再试" in limited.text
    # A link the gateway signed is no guess: it is answered as it is.
    assert (await site.client.get(path)).status_code == 200
    site.clock.advance(73 * 3600)
    expired = await site.client.get(path)
    assert expired.status_code == 403 and "链接已过期" in expired.text


async def fall_told(site: Site) -> Notice:
    """A fall, and what wang-fang, whom the policy tells, was sent of it."""
    alert_id = await site.fall()
    assert site.gateway.notifier is not None
    await site.gateway.notifier.process()
    notification = site.gateway.notifications.get(f"{alert_id}/grid.0/wang-fang/firing")
    assert notification is not None
    return Notice.from_json(notification.notice)


async def test_an_sms_s_short_link_leads_to_the_receiver_s_link(site: Site) -> None:
    notice = await fall_told(site)
    # Short enough for a template's variable (at most 35 characters).
    assert notice.link_code and len(notice.link_code) == 16
    assert notice.template_values()["link_code"] == notice.link_code
    short = await site.client.get(f"/s/{notice.link_code}")
    assert short.status_code == 303 and short.headers["location"] == notice.link
    assert short.headers["referrer-policy"] == "no-referrer"
    page = await site.client.get(short.headers["location"].removeprefix("http://gw.test"))
    assert page.status_code == 200 and "跌倒" in page.text
    # A code guessed is a link forged: refused, and counted against its address.
    for _ in range(10):
        refused = await site.client.get("/s/aaaaaaaaaaaaaaaa")
        assert refused.status_code == 403 and "链接无效" in refused.text
    assert (await site.client.get("/s/aaaaaaaaaaaaaaaa")).status_code == 429
    assert (await site.client.get(f"/s/{notice.link_code}")).status_code == 303


async def test_strangers_failures_lock_no_grid_worker_out_of_a_fall(site: Site) -> None:
    # Every phone on mobile data comes through the centre's proxy, one address: a
    # scanner there, with no token and nothing guessed, must not keep them out.
    alert_id = await site.fall()
    path = link_path(site, alert_id)
    for _ in range(10):
        await site.client.get("/a/x")
    page = await site.client.get(path)
    assert page.status_code == 200, f"the grid worker's valid link got {page.status_code}"
    assert (await site.client.post(path + "/acknowledge")).status_code == 303
    assert (await site.get("/api/v1/alerts", OPERATOR)).status_code == 200
    assert (await site.client.get("/a/x")).status_code == 429


async def test_a_closed_alerts_link_shows_what_was_done_and_no_longer_where_the_wearer_is(
    site: Site,
) -> None:
    # The link stays valid for 72 h, and the robots post it into group chats.
    alert_id = await site.fall(lat=34.75, lon=113.62)
    path = link_path(site, alert_id, "contact:13987654321")
    closed = await site.client.post(path + "/close", content="note=已送医，家属陪同".encode())
    assert closed.status_code == 303
    audited = len((await site.get("/api/v1/audit")).json())
    # A day later the wearer is somewhere else; the bracelet says where.
    site.clock.advance(24 * 3600)
    await site.send("community/hgy/bracelet/br-1/telemetry",
                    {"ts": site.clock.now_ms(), "lat": 34.9012, "lon": 113.8034, "worn": True})  # fmt: skip
    page = await site.client.get(path)
    assert page.status_code == 200
    assert "已关闭" in page.text and "已送医，家属陪同" in page.text
    assert "uri.amap.com" not in page.text and "113.8034" not in page.text
    for personal in ("13812345678", "张三明", "李四", "13987654321", "tel:"):
        assert personal not in page.text, personal
    assert "contact:139****4321" in page.text
    assert len((await site.get("/api/v1/audit")).json()) == audited
    # A step tried on it is refused, with no more shown.
    again = await site.client.post(path + "/acknowledge")
    assert again.status_code == 409 and "13987654321" not in again.text


async def test_a_failing_step_on_a_link_page_logs_the_route_not_the_link(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    # The link's token alone acts on the alert and shows the wearer's phone and contacts.
    alert_id = await site.fall()
    token = site.gateway.links.token(alert_id, "wang-fang", site.clock.now_ms())
    # As the pipeline records it when a commit fails (a full disk, a failing SD card).
    site.gateway.pipeline.commit_error = "database or disk is full"
    with caplog.at_level("DEBUG"):
        answer = await site.client.post(f"/a/{token}/acknowledge")
    assert answer.status_code == 502
    leaked = [r.getMessage() for r in caplog.records if token in r.getMessage()]
    assert not leaked, f"the link token reached the log: {leaked[0]!r}"
    assert "POST /a/{token}/{action} failed: the outbox cannot commit" in caplog.text
    # The grid worker is told, in Chinese, that the step was not recorded; the English
    # detail is for the log alone.
    message = re.search(r"<p class=error>(.*?)</p>", answer.text)
    assert message is not None and "操作未记录" in message.group(1)
    assert not re.search(r"[A-Za-z]{4,}", message.group(1)), message.group(1)


async def test_a_link_signed_with_an_empty_kept_secret_is_refused(tmp_path: Path) -> None:
    # The first start made the file and died before its bytes reached the disk.
    (tmp_path / "link-secret").write_text("", encoding="ascii")
    async with open_site(tmp_path, ManualClock(T0), link_secret=None) as site:
        alert_id = await site.fall()
        # A stranger who knows only the alert id (it is in every notice) signs with "".
        forged = URLSafeSerializer("", salt="alert-link").dumps(
            {"a": alert_id, "r": "wang-fang", "e": T0 + 10**9}
        )
        page = await site.client.get(f"/a/{forged}")
        assert page.status_code == 403 and "13812345678" not in page.text
        assert (await site.client.get(link_path(site, alert_id))).status_code == 200


async def test_the_board_page_is_served(site: Site) -> None:
    board = await site.client.get("/board")
    assert board.status_code == 200 and "告警看板" in board.text
    assert (await site.client.get("/static/page.css")).status_code == 200


async def test_the_board_of_a_desk_limited_to_its_community_shows_and_takes_its_alerts(
    tmp_path: Path,
) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_COMMUNITIES) as site:
        assert (await site.client.get("/board")).status_code == 200
        own = await site.fall("br-1")
        await site.send(
            "community/lgy/bracelet/br-1/event",
            {"ts": T0, "event": "fall", "confidence": 0.9},
        )
        # The stream says only that alerts changed, by a number: what changed, and
        # where, the board reads from the list, which holds the desk's own alone.
        stream = await site.get("/api/v1/alerts-stream?limit=1", DESK_HGY)
        assert stream.text == "event: alerts\ndata: 2\n\n"
        board = (await site.get("/api/v1/alerts?state=open", DESK_HGY)).json()
        assert [a["alert_id"] for a in board["alerts"]] == [own]
        assert board["version"] == 2
        taken = await site.post(f"/api/v1/alerts/{own}/acknowledge", DESK_HGY)
        assert taken.status_code == 200


async def test_a_quiet_alert_stream_says_at_a_fixed_interval_that_it_still_flows(
    site: Site,
) -> None:
    # A board takes its stream for gone once it has missed a few keepalives, so that a
    # connection left half-open does not show 实时 on a board no longer kept up to date:
    # the stream says how often they come, and they come that often while alerts rest.
    assert site.gateway.api is not None
    stream = await pages.alert_stream(
        site.gateway.api.context, Principal("desk", Role.OPERATOR), limit=None
    )
    assert stream.headers["x-keepalive-s"] == "15"
    events = cast(AsyncGenerator[str, None], stream.body_iterator)

    async def next_after(seconds: float) -> str:
        """What the stream sends next, once the clock has moved on by `seconds`, and
        not before."""
        sent = asyncio.ensure_future(anext(events))
        for step_s in (seconds - 1, 1):
            # The stream waits on the clock before it is moved on.
            for _ in range(20):
                await asyncio.sleep(0)
            assert not sent.done(), f"sent before {seconds} s: {sent.result()!r}"
            site.clock.advance(step_s)
        return await asyncio.wait_for(sent, timeout=5)

    try:
        assert await anext(events) == "event: alerts\ndata: 0\n\n"
        assert await next_after(pages.KEEPALIVE_S) == ": keepalive\n\n"
        assert await next_after(pages.KEEPALIVE_S) == ": keepalive\n\n"
    finally:
        await events.aclose()


async def test_the_map_shows_where_the_wearer_was_last_seen(site: Site) -> None:
    await site.send("community/hgy/bracelet/br-1/telemetry",
                    {"ts": site.clock.now_ms(), "lat": 34.8, "lon": 113.7, "worn": True})  # fmt: skip
    alert_id = await site.fall()
    page = (await site.client.get(link_path(site, alert_id))).text
    assert "marker?position=113.7,34.8&amp;" in page
    await site.send("community/hgy/bracelet/br-1/event",
                    {"ts": site.clock.now_ms() + 1, "event": "sos", "lat": 34.81, "lon": 113.71})  # fmt: skip
    page = (await site.client.get(link_path(site, alert_id))).text
    assert "marker?position=113.71,34.81&amp;" in page


async def test_after_a_restart_the_map_shows_where_the_wearer_fell(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock) as site:
        alert_id = await site.fall(lat=34.8, lon=113.7)
        path = link_path(site, alert_id)
    # The latest values begin empty: br-1 has no registered place, and its wearer's home
    # (113.62,34.75) is not where they fell.
    async with open_site(tmp_path, clock) as site:
        assert site.gateway.api is not None
        assert site.gateway.api.context.latest.get(DeviceRef("hgy", "bracelet", "br-1")) is None
        page = (await site.client.get(path)).text
        assert "marker?position=113.7,34.8&amp;" in page
        alert = (await site.get(f"/api/v1/alerts/{alert_id}", OPERATOR)).json()["alert"]
        assert alert["position"] == {"lat": 34.8, "lon": 113.7}
        # A reading the bracelet held back from before the fall does not move the scene.
        await site.send("community/hgy/bracelet/br-1/telemetry",
                        {"ts": T0 - 60_000, "lat": 34.79, "lon": 113.69, "worn": True})  # fmt: skip
        assert "marker?position=113.7,34.8&amp;" in (await site.client.get(path)).text
        # Where the wearer is now, once the bracelet says so.
        clock.advance(60)
        await site.send("community/hgy/bracelet/br-1/telemetry",
                        {"ts": clock.now_ms(), "lat": 34.81, "lon": 113.71, "worn": True})  # fmt: skip
        assert "marker?position=113.71,34.81&amp;" in (await site.client.get(path)).text


async def test_a_short_link_sent_before_the_address_changed_leads_to_the_gateway_now(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock) as site:
        notice = await fall_told(site)
    # The centre moved the gateway behind a new address and restarted it.
    async with open_site(tmp_path, clock, public_url="https://gw.example.cn/gateway") as site:
        short = await site.client.get(f"/s/{notice.link_code}")
        assert notice.link is not None
        token = notice.link.removeprefix("http://gw.test/a/")
        assert short.headers["location"] == f"https://gw.example.cn/gateway/a/{token}"
        page = await site.client.get(f"/a/{token}")
        assert page.status_code == 200 and "跌倒" in page.text


class _Addresses(HTMLParser):
    """The `action` of each form and the `href` of each stylesheet in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[str] = []
        self.styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "form":
            self.actions.append(values.get("action") or "")
        if tag == "link" and values.get("rel") == "stylesheet":
            self.styles.append(values.get("href") or "")


async def test_a_link_page_behind_a_proxy_s_path_keeps_its_steps_under_it(tmp_path: Path) -> None:
    # A proxy publishes the gateway under a path of its own, and strips it before the
    # gateway sees a request: the page's forms, where it leads after a step, and its
    # stylesheet must stay under that path, not lead to the host's root.
    public_url = "https://gw.example.cn/gateway"
    async with open_site(tmp_path, ManualClock(T0), public_url=public_url) as site:
        alert_id = await site.fall()
        link = site.gateway.links.url(alert_id, "wang-fang", site.clock.now_ms())
        assert link.startswith(public_url + "/a/")
        page = await site.client.get(link.removeprefix(public_url))
        assert page.status_code == 200
        addresses = _Addresses()
        addresses.feed(page.text)
        assert len(addresses.actions) == 3 and len(addresses.styles) == 1
        steps = [urljoin(link, action) for action in addresses.actions]
        assert steps == [f"{link}/acknowledge", f"{link}/arrive", f"{link}/close"]
        assert urljoin(link, addresses.styles[0]) == f"{public_url}/static/page.css"
        done = await site.client.post(link.removeprefix(public_url) + "/acknowledge")
        assert urljoin(steps[0], done.headers["location"]) == f"{link}?done=acknowledge"
        # A refused step's page, one level deeper, finds the stylesheet too.
        again = await site.client.post(link.removeprefix(public_url) + "/acknowledge")
        assert again.status_code == 409
        addresses = _Addresses()
        addresses.feed(again.text)
        assert [urljoin(steps[0], h) for h in addresses.styles] == [f"{public_url}/static/page.css"]


async def test_a_link_forwarded_with_a_messenger_s_parameters_still_opens(site: Site) -> None:
    # WeChat adds ?from=singlemessage&isappinstalled=0 to a link forwarded in a chat,
    # other apps utm_ tags: a page ignores what it does not use. The API still refuses
    # a parameter it does not take, so that a misspelt filter matches nothing silently.
    notice = await fall_told(site)
    assert notice.link is not None
    tracking = "?from=singlemessage&isappinstalled=0&utm_source=wechat"
    page = await site.client.get(notice.link.removeprefix("http://gw.test") + tracking)
    assert page.status_code == 200 and "跌倒" in page.text
    short = await site.client.get(f"/s/{notice.link_code}{tracking}")
    assert short.status_code == 303 and short.headers["location"] == notice.link
    assert (await site.client.get("/board" + tracking)).status_code == 200
    api = await site.get("/api/v1/alerts?from=singlemessage")
    assert api.status_code == 422 and "unknown query parameter" in api.text


def _run_board(
    tmp_path: Path, failures: int, alerts: list[dict[str, object]] | dict[str, object] | None = None
) -> dict[str, object]:
    """board.html's script in Node, its fetch failing `failures` times, then answered
    with `alerts`, the list's or the whole answer (see board_harness.js): the addresses
    it fetched, the status it shows, its rows and its summary."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    harness = Path(__file__).with_name("board_harness.js")
    board = PROJECT_ROOT / "gateway" / "api" / "static" / "board.html"
    answer = tmp_path / "alerts.json"
    answer.write_text(json.dumps(alerts or []), encoding="utf-8")
    done = subprocess.run(
        [node, str(harness), str(board), str(failures), str(answer)],
        capture_output=True, text=True, timeout=30, check=True, cwd=tmp_path,
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_board_opened_while_the_gateway_is_out_of_reach_keeps_trying(tmp_path: Path) -> None:
    # A wall screen's browser restores its tab after a power cut, while the gateway is
    # still starting: the board tries again until it loads, then listens live (and loads
    # again when the stream first says the alerts' version). Its addresses are relative,
    # to stay under a proxy's path.
    healthy = _run_board(tmp_path, failures=0)
    assert healthy == {
        "calls": ["api/v1/alerts?state=open", "api/v1/alerts-stream", "api/v1/alerts?state=open"],
        "status": "实时",
        "rows": [],
        "summary": "未关闭告警 0 条，其中紧急 0 条",
    }
    retried = _run_board(tmp_path, failures=2)
    assert retried["calls"] == [
        "api/v1/alerts?state=open",
        "api/v1/alerts?state=open",
        "api/v1/alerts?state=open",
        "api/v1/alerts-stream",
        "api/v1/alerts?state=open",
    ]
    assert retried["status"] == "实时"


async def test_the_board_offers_to_take_an_alert_once_it_fires(tmp_path: Path) -> None:
    # A heart rate of 170 is pending until it has held for the rule's duration: taken
    # then, it would fire with its grid worker never told.
    async with open_site(tmp_path, ManualClock(T0)) as site:
        await site.send(
            "community/hgy/bracelet/br-1/telemetry",
            {"ts": T0, "heart_rate_bpm": 170, "worn": True},
        )
        fallen = await site.fall("br-1")
        listed = (await site.get("/api/v1/alerts?state=open", OPERATOR)).json()["alerts"]
    states = {a["alert_id"]: a["state"] for a in listed}
    (pending,) = [alert_id for alert_id, state in states.items() if state == "pending"]
    rows = _run_board(tmp_path, failures=0, alerts=listed)["rows"]
    assert rows == [
        {"alert_id": fallen, "buttons": ["接单"], "action": ""},
        {"alert_id": pending, "buttons": [], "action": "触发后可接单"},
    ]


async def test_a_district_board_shows_the_most_severe_alerts_and_counts_them_all(
    tmp_path: Path,
) -> None:
    async with district(tmp_path) as site:
        fallen = await site.fall("br-1")
        answer = (await site.get("/api/v1/alerts?state=open&limit=20", ADMIN)).json()
        total = len(site.gateway.alerts.open_alerts())
    rows = _run_board(tmp_path, failures=0, alerts=answer)
    assert rows["rows"][0]["alert_id"] == fallen  # type: ignore[index]
    assert total > OTHER_COMMUNITY_OFFLINE
    assert rows["summary"] == f"未关闭告警 {total} 条，其中紧急 1 条（显示最紧急的 20 条）"


async def test_a_link_to_an_alert_not_yet_fired_offers_no_step_but_closing(site: Site) -> None:
    await site.send(
        "community/hgy/bracelet/br-1/telemetry",
        {"ts": T0, "heart_rate_bpm": 170, "worn": True},
    )
    (pending,) = site.gateway.alerts.open_alerts()
    path = link_path(site, pending.alert_id)
    page = await site.client.get(path)
    assert page.status_code == 200 and "待确认条件" in page.text
    assert "接单</button>" not in page.text and "已到场</button>" not in page.text
    assert "关闭告警</button>" in page.text
    refused = await site.client.post(f"{path}/acknowledge")
    assert refused.status_code == 409
    assert "操作未执行：告警尚未触发，触发后才能接单或到场。" in refused.text


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class _Forms(HTMLParser):
    """The `action` of each form in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "form":
            self.actions.append(dict(attrs).get("action") or "")


def _steps(page_url: str, text: str) -> dict[str, str]:
    """Each step's address, as a browser at `page_url` resolves the page's forms."""
    forms = _Forms()
    forms.feed(text)
    resolved = [urljoin(page_url, action) for action in forms.actions]
    return {address.rpartition("/")[2]: address for address in resolved}


async def test_a_worker_refused_a_step_can_still_mark_arrival_from_the_page_shown(
    site: Site,
) -> None:
    # Two workers told of one fall both press 接单: the second is refused (409), and the
    # page shown at /a/{token}/acknowledge offers 已到场 and 关闭告警. Its forms must lead
    # to /a/{token}/arrive, not /a/{token}/{token}/arrive (a 404 in English).
    alert_id = await site.fall()
    await site.client.post(link_path(site, alert_id, "li-na") + "/acknowledge")
    path = link_path(site, alert_id)
    refused = await site.client.post(path + "/acknowledge")
    assert refused.status_code == 409
    steps = _steps("http://gw.test" + path + "/acknowledge", refused.text)
    assert steps["arrive"] == f"http://gw.test{path}/arrive"
    arrived = await site.client.post(steps["arrive"].removeprefix("http://gw.test"))
    assert arrived.status_code == 303
    assert site.gateway.alerts.get(alert_id).arrived_by == "wang-fang"


async def test_a_worker_asked_for_a_note_can_close_the_alert_from_the_page_shown(
    site: Site,
) -> None:
    # A note of blanks passes the textarea's `required`, and is refused with a page
    # (422) at /a/{token}/close asking for one: writing it there must close the alert.
    alert_id = await site.fall()
    path = link_path(site, alert_id)
    asked = await site.client.post(path + "/close", content=b"note=+++", headers=FORM)
    assert asked.status_code == 422 and "处理说明" in asked.text
    steps = _steps("http://gw.test" + path + "/close", asked.text)
    assert steps["close"] == f"http://gw.test{path}/close"
    closed = await site.client.post(
        steps["close"].removeprefix("http://gw.test"),
        content="note=已送医".encode(),
        headers=FORM,
    )
    assert closed.status_code == 303
    assert site.gateway.alerts.get(alert_id).note == "已送医"


async def test_a_refused_step_is_recorded_as_the_step_asked_for_and_refused(site: Site) -> None:
    # A refused step's page shows the wearer's phone and contacts again: the record of
    # who read them names what was asked, the step and its refusal, not a page opened.
    alert_id = await site.fall()
    await site.client.post(link_path(site, alert_id, "li-na") + "/acknowledge")
    path = link_path(site, alert_id)
    taken = await site.client.post(path + "/acknowledge")
    assert taken.status_code == 409 and 'href="tel:+8613812345678"' in taken.text
    no_note = await site.client.post(path + "/close", content=b"note=+++", headers=FORM)
    assert no_note.status_code == 422 and 'href="tel:+8613812345678"' in no_note.text
    read = (await site.get("/api/v1/audit")).json()
    assert [(e["actor"], e["role"], e["via"]) for e in read] == [
        ("wang-fang", "link", "POST /a/{token}/close refused"),
        ("wang-fang", "link", "POST /a/{token}/acknowledge refused"),
    ]


async def test_a_step_s_address_opened_again_leads_to_the_alert_s_page(site: Site) -> None:
    # After a refused step the address bar holds /a/{token}/acknowledge; opened again
    # (copied from WeChat's browser, 在浏览器打开) it is a GET: the worker must reach the
    # alert's page in Chinese, not {"detail":"Method Not Allowed"}.
    alert_id = await site.fall()
    path = link_path(site, alert_id)
    again = await site.client.get(path + "/acknowledge", follow_redirects=True)
    assert again.status_code == 200 and again.headers["content-type"].startswith("text/html")
    assert str(again.url) == f"http://gw.test{path}"
    assert "接单" in again.text


async def test_a_link_page_on_a_full_disk_still_shows_the_fall(
    tmp_path: Path,
) -> None:
    # On a disk that takes no more, the read cannot be audited: the one sent to a fall
    # still sees the page, whom to call and where to go.
    async with open_site(tmp_path, ManualClock(T0)) as site:
        alert_id = await site.fall()
        assert site.gateway.api is not None
        conn = site.gateway.api.context.audit._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for n in range(100_000):
                conn.execute(
                    "INSERT INTO audit (at_ms, actor, role, community, device_id, what, via)"
                    " VALUES (0, ?, 'x', 'x', 'x', 'x', 'x')",
                    (f"filler-{n}",),
                )
        # As a browser sees it: an error the app does not handle becomes a response.
        transport = httpx.ASGITransport(app=site.gateway.api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            page = await client.get(link_path(site, alert_id))
    assert page.status_code == 200
    assert "跌倒" in page.text
