"""The pages in a real browser, fed by real MQTT traffic."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Page, Route, expect

from gateway.api import pages
from gateway.app import Gateway
from gateway.config import ApiConfig, ApiToken, GatewayConfig
from gateway.errors import StoreError
from gateway.notify.policy import NotifyPolicy
from tests.integration.browser import chromium
from tests.integration.harness import Publisher, gateway_config, running, wait_until
from tests.integration.services import MosquittoService

OPERATOR = "board-operator-token-0123"


def bracelet_config(tmp_path: Path, mosquitto: MosquittoService, namespace: str) -> GatewayConfig:
    """The gateway with bracelet br-1 of this test's community, the board's token (desk),
    and a policy that tells wang-fang, whose link therefore works."""
    registry = tmp_path / "devices.csv"
    registry.write_text(
        "device_id,device_type,community,area,compound,building,unit,wearer_name,wearer_phone\n"
        f"br-1,bracelet,{namespace},east,lakeside,3,2-301,张三明,13812345678\n",
        encoding="utf-8",
    )
    config = gateway_config(tmp_path, mosquitto, namespace, registry_file=registry)
    api = ApiConfig(
        port=0, link_secret="browser-test-secret-0123456789abcdef",  # type: ignore[arg-type]
        tokens=(ApiToken(name="desk", role="operator", token=OPERATOR),),  # type: ignore[arg-type]
    )  # fmt: skip
    policy = NotifyPolicy.model_validate(
        {
            "channels": {"console": {"type": "console"}},
            "receivers": [{"name": "wang-fang", "channels": ["console"]}],
            "routes": [{"escalation": "grid"}],
            "escalations": {"grid": [{"after_s": 0, "to": ["wang-fang"]}]},
        }
    )
    return config.model_copy(update={"api": api, "notify": policy})


@asynccontextmanager
async def live_board(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> AsyncIterator[tuple[Gateway, Page, Publisher]]:
    """A gateway of one bracelet, an operator's board on it once it is live, and a
    publisher to its broker."""
    config = bracelet_config(tmp_path, mosquitto, namespace)
    publisher = Publisher(mosquitto)
    try:
        async with running(config) as gateway, chromium(tmp_path / "profile") as browser:
            assert gateway.api is not None
            await asyncio.wait_for(gateway.api.started.wait(), timeout=10)
            board = await browser.new_page()
            await board.goto(f"http://127.0.0.1:{gateway.api.port}/board#token={OPERATOR}")
            await expect(board.locator("#status")).to_have_text("实时")
            yield gateway, board, publisher
    finally:
        publisher.close()


async def test_a_fall_reaches_the_board_and_is_taken_from_the_link_by_keyboard(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    async with live_board(tmp_path, mosquitto, namespace) as (gateway, board, publisher):
        assert gateway.api is not None
        base = f"http://127.0.0.1:{gateway.api.port}"
        await expect(board.locator("#summary")).to_have_text("未关闭告警 0 条，其中紧急 0 条")
        # A marker that a reload would wipe: the board must change without one.
        await board.evaluate("window.notReloaded = true")

        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "fall", "seq": 1})]
        )
        await wait_until(lambda: gateway.stats.alerts_firing == 1, what="fall alert")
        (alert,) = gateway.alerts.open_alerts()
        row = board.locator(f'tr[data-alert-id="{alert.alert_id}"]')
        await expect(row.locator("td.state")).to_have_text("告警中")
        await expect(row).to_contain_text("跌倒")
        await expect(row).to_contain_text("east lakeside 3 2-301")
        # Detected again before anyone took it: the same alert, which says so.
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "fall", "seq": 3})]
        )
        await expect(row).to_contain_text("跌倒 Fall（再次报警 1 次）")

        link = await board.context.new_page()
        token = gateway.links.token(alert.alert_id, "wang-fang", gateway.clock.now_ms())
        await link.goto(f"{base}/a/{token}")
        await expect(link.locator("h1")).to_contain_text("跌倒")
        take = link.get_by_role("button", name="接单")
        await expect(take).to_be_focused()
        await link.keyboard.press("Enter")
        await expect(link.locator("p[role=status]")).to_have_text("已记录：接单")

        await expect(row.locator("td.state")).to_have_text("已接单")
        await expect(row).to_contain_text("wang-fang")
        assert await board.evaluate("window.notReloaded") is True
        await board.screenshot(path=str(tmp_path / "board.png"))
        await link.screenshot(path=str(tmp_path / "link.png"))
        assert gateway.alerts.get(alert.alert_id).acknowledged_by == "wang-fang"

        # Reaching the scene and closing, by keyboard alone: the next step has the focus.
        await expect(link.get_by_role("button", name="已到场")).to_be_focused()
        await link.keyboard.press("Enter")
        await expect(link.locator("p[role=status]")).to_have_text("已记录：已到场")
        await link.locator("#note").focus()
        await link.keyboard.type("老人已送医")
        await link.keyboard.press("Tab")
        await link.keyboard.press("Enter")
        await expect(link.locator("p[role=status]")).to_have_text("已记录：关闭告警")
        await expect(row).to_have_count(0)
        await expect(board.locator("#summary")).to_have_text("未关闭告警 0 条，其中紧急 0 条")

        # The operator takes an SOS on the board itself, by keyboard.
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "sos", "seq": 2})]
        )
        await wait_until(lambda: gateway.stats.alerts_firing == 2, what="SOS alert")
        sos = board.locator("tbody tr")
        await expect(sos).to_contain_text("一键呼救")
        await sos.get_by_role("button").focus()
        await board.keyboard.press("Enter")
        await expect(sos.locator("td.state")).to_have_text("已接单")
        await expect(sos).to_contain_text("desk")
        assert await board.evaluate("window.notReloaded") is True


async def test_the_board_asks_for_a_new_token_once_its_own_is_taken_out(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    replacement = "board-replacement-token-0123"
    config = gateway_config(tmp_path, mosquitto, namespace)
    api = ApiConfig(
        port=0, link_secret="browser-test-secret-0123456789abcdef",  # type: ignore[arg-type]
        tokens=(ApiToken(name="desk", role="operator", token=OPERATOR),  # type: ignore[arg-type]
                ApiToken(name="desk-2", role="operator", token=replacement)),  # type: ignore[arg-type]
    )  # fmt: skip
    config = config.model_copy(update={"api": api})
    async with running(config) as gateway, chromium(tmp_path / "profile") as browser:
        assert gateway.api is not None
        await asyncio.wait_for(gateway.api.started.wait(), timeout=10)
        board = await browser.new_page()
        await board.goto(f"http://127.0.0.1:{gateway.api.port}/board#token={OPERATOR}")
        await expect(board.locator("#status")).to_have_text("实时")
        await expect(board.locator("#summary")).to_have_text("未关闭告警 0 条，其中紧急 0 条")

        # The board's token is taken out of the config (a phone lost): its stream ends.
        gateway.reload_tokens([t for t in api.tokens if t.name != "desk"])
        login = board.locator("#login")
        await expect(login).to_be_visible(timeout=10_000)
        await expect(board.locator("#token")).to_be_focused()
        await expect(board.locator("#status")).to_have_text("令牌无效")
        # Alerts it can no longer keep up to date are not left on the screen as if live.
        await expect(board.locator("#alerts")).to_be_hidden()
        # Nor does its stream reconnect with the refused token while the form waits: a
        # desk that types the new one after that would have this address counted against
        # twice.
        assert await board.evaluate("listening") is False

        # A new token, typed in, brings the board back live.
        await board.keyboard.type(replacement)
        await board.keyboard.press("Enter")
        await expect(board.locator("#status")).to_have_text("实时")
        await expect(board.locator("#alerts")).to_be_visible()
        await expect(login).to_be_hidden()
        # The refused token was tried once, not again every few seconds: this address is
        # not locked out, for this board or for anyone else on it.
        assert gateway.api.context.limiter.failures_total == 1


async def test_the_gateway_s_root_leads_to_the_board_under_a_proxy_s_path_without_its_slash(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    config = gateway_config(tmp_path, mosquitto, namespace)
    api = ApiConfig(
        port=0, link_secret="browser-test-secret-0123456789abcdef",  # type: ignore[arg-type]
        tokens=(ApiToken(name="desk", role="operator", token=OPERATOR),),  # type: ignore[arg-type]
    )  # fmt: skip
    async with (
        running(config.model_copy(update={"api": api})) as gateway,
        chromium(tmp_path / "profile") as browser,
    ):
        assert gateway.api is not None
        await asyncio.wait_for(gateway.api.started.wait(), timeout=10)
        base = f"http://127.0.0.1:{gateway.api.port}"
        published = f"{base}/gateway"

        async def proxy(route: Route) -> None:
            # A proxy publishing the gateway under /gateway, which it strips before it
            # forwards, and passing redirects on as they are.
            path = route.request.url.removeprefix(published) or "/"
            if path.startswith("/api/v1/alerts-stream"):
                await route.abort()  # a stream, which a route cannot pass on as it comes
                return
            await route.fulfill(response=await route.fetch(url=base + path, max_redirects=0))

        page = await browser.new_page()
        await page.route(f"{published}**", proxy)
        # The address as a desk types it, with no slash after the proxy's path.
        await page.goto(f"{published}#token={OPERATOR}")
        # The board under the proxy's path, with the token it was opened with (which it
        # then takes out of the address bar).
        await expect(page.locator("#summary")).to_have_text("未关闭告警 0 条，其中紧急 0 条")
        await expect(page).to_have_url(f"{published}/board")


async def test_a_take_that_fails_is_said_on_the_board_and_can_be_tried_again(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A desk that presses 接单 and is told nothing believes the alert taken, and sends
    # nobody: a failure is said in Chinese, with the gateway's reason for a refusal, and
    # the button, still focused, takes the alert when pressed again.
    async with live_board(tmp_path, mosquitto, namespace) as (gateway, board, publisher):
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "fall", "seq": 1})]
        )
        await wait_until(lambda: gateway.stats.alerts_firing == 1, what="fall alert")
        (fall,) = gateway.alerts.open_alerts()
        row = board.locator(f'tr[data-alert-id="{fall.alert_id}"]')
        take = row.get_by_role("button", name=re.compile("^接单"))
        notice = board.get_by_role("alert")
        await take.focus()

        # The gateway failing (its disk full), then no answer at all (the network down).
        acknowledge = gateway.desk.acknowledge

        async def failing(*args: object, **kwargs: object) -> None:
            raise StoreError("database or disk is full", retryable=True)

        for failure, said in (("gateway", "网关暂时无法处理（502）"), ("network", "网络故障")):
            if failure == "gateway":
                monkeypatch.setattr(gateway.desk, "acknowledge", failing)
            else:
                await board.context.set_offline(True)
            await board.keyboard.press("Enter")
            await expect(notice).to_contain_text("接单失败：跌倒")
            await expect(notice).to_contain_text(said)
            await expect(take).to_have_text("接单")
            await expect(take).to_be_focused()
            monkeypatch.setattr(gateway.desk, "acknowledge", acknowledge)
            await board.context.set_offline(False)
            assert gateway.alerts.get(fall.alert_id).acknowledged_by is None
            # The board's own state is not hidden by it: its stream is live (again).
            await expect(board.locator("#status")).to_have_text("实时", timeout=15_000)

        await board.keyboard.press("Enter")
        await expect(row.locator("td.state")).to_have_text("已接单")
        await expect(notice).to_be_hidden()
        assert gateway.alerts.get(fall.alert_id).acknowledged_by == "desk"

        # Refused by the gateway: wang-fang took the SOS from a link at the same moment.
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "sos", "seq": 2})]
        )
        await wait_until(lambda: gateway.stats.alerts_firing == 2, what="SOS alert")
        (sos,) = [a for a in gateway.alerts.open_alerts() if a.alert_id != fall.alert_id]
        take = board.locator(f'tr[data-alert-id="{sos.alert_id}"]').get_by_role("button")

        async def taken_first(alert_id: str, actor: str) -> None:
            await acknowledge(sos.alert_id, "wang-fang")
            await acknowledge(alert_id, actor)

        monkeypatch.setattr(gateway.desk, "acknowledge", taken_first)
        await take.click()
        await expect(notice).to_contain_text("接单失败：一键呼救")
        await expect(notice).to_contain_text("告警状态已变化，不能接单（网关答复 409：")
        await expect(notice).to_contain_text("acknowledged by wang-fang")
        await board.screenshot(path=str(tmp_path / "board.png"))
        # Closed by her from the scene: the failure asks nothing more of the desk.
        await gateway.desk.close(sos.alert_id, "wang-fang", "误按，已确认老人安全")
        await expect(board.locator(f'tr[data-alert-id="{sos.alert_id}"]')).to_have_count(0)
        await expect(notice).to_be_hidden()


async def test_a_board_says_a_failed_load_and_is_live_again_once_a_load_succeeds(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A load that fails (a proxy's 502 for a moment) is said; the next that succeeds
    # shows the alerts as they are, and so does the status: not "加载失败" for good.
    async with live_board(tmp_path, mosquitto, namespace) as (gateway, board, publisher):
        status = board.locator("#status")
        open_alerts = gateway.alerts.open_alerts

        def failing(*args: object, **kwargs: object) -> None:
            raise StoreError("disk I/O error", retryable=True)

        monkeypatch.setattr(gateway.alerts, "open_alerts", failing)
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "fall", "seq": 1})]
        )
        await expect(status).to_have_text("加载失败 502")
        monkeypatch.setattr(gateway.alerts, "open_alerts", open_alerts)
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "sos", "seq": 2})]
        )
        await expect(board.locator("tbody tr")).to_have_count(2)
        await expect(status).to_have_text("实时")


async def test_a_new_critical_alert_catches_the_eye_until_somebody_takes_it(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    # A wall screen across the duty room: a fall that comes in flashes its row, and the
    # tab counts the critical alerts nobody has taken, until somebody takes it.
    async with live_board(tmp_path, mosquitto, namespace) as (gateway, board, publisher):
        await expect(board).to_have_title("告警看板")
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "fall", "seq": 1})]
        )
        await wait_until(lambda: gateway.stats.alerts_firing == 1, what="fall alert")
        (fall,) = gateway.alerts.open_alerts()
        row = board.locator(f'tr[data-alert-id="{fall.alert_id}"]')
        await expect(row).to_have_class("new")
        await expect(board).to_have_title("(1) 告警看板")
        await row.get_by_role("button").click()
        await expect(row.locator("td.state")).to_have_text("已接单")
        await expect(row).not_to_have_class("new")
        await expect(board).to_have_title("告警看板")


async def test_a_board_whose_stream_goes_silent_says_so_and_connects_again(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wall screen showing 实时 is trusted to show every new alert. A stream that goes
    # silent without closing (the gateway or a proxy holding the connection half-open)
    # is noticed within a few keepalives, said, and replaced by a new one.
    keepalive_s = 0.5
    monkeypatch.setattr(pages, "KEEPALIVE_S", keepalive_s)
    async with live_board(tmp_path, mosquitto, namespace) as (gateway, board, publisher):
        status = board.locator("#status")
        # Quiet, but for its keepalives: live for longer than a few of them.
        await board.evaluate(
            """() => { window.said = [];
              const status = document.getElementById("status");
              new MutationObserver(() => said.push(status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true}); }"""
        )
        await asyncio.sleep(keepalive_s * 6)
        assert await board.evaluate("said") == []
        await expect(status).to_have_text("实时")

        # The stream says nothing more, and is not closed.
        feed = gateway.api.context.feed
        flowing = feed.wait

        async def silent(after: int, timeout_s: float, stopping: asyncio.Event) -> int:
            await stopping.wait()
            return after

        monkeypatch.setattr(feed, "wait", silent)
        await expect(status).to_have_text("连接中断，重新连接中…", timeout=10_000)
        await expect(status).to_have_class("down")

        monkeypatch.setattr(feed, "wait", flowing)
        await expect(status).to_have_text("实时", timeout=15_000)
        # Live again in deed: a fall is on the board without a reload.
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-1/event", {"event": "fall", "seq": 1})]
        )
        await expect(board.locator("tbody tr")).to_contain_text("跌倒")
