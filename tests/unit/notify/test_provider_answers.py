"""Channels against the providers' documented limits and answers: a digest within what
DingTalk and Feishu take in one request's body, Aliyun's codes that no retry mends, and
a webhook's redirect and request timeout. Each provider is a local fake that checks the
request and answers as the provider documents."""

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from gateway.clock import ManualClock
from gateway.errors import NotifyError
from gateway.notify.channel import Channel
from gateway.notify.cloud import AliyunSms, AliyunVoice
from gateway.notify.hooks import Webhook
from gateway.notify.log import AttemptResult
from gateway.notify.policy import (
    AliyunSmsChannel,
    AliyunVoiceChannel,
    WebhookChannel,
)
from gateway.notify.robots import DingtalkRobot, FeishuBot
from gateway.registry import RegisteredDevice, Registry
from tests.unit.notify.notices import T0, notice
from tests.unit.notify.test_notifier import SMOKE, Rig, reading, told_at_once

# What DingTalk and Feishu take in one message, as the README gives it ("DingTalk and
# Feishu 20,000"); DingTalk refuses more with errcode 460101 "message too long, exceed
# 20000 bytes" ("body 大小不合法: 请保持大小在 20000bytes 以内"), Feishu documents
# "发送消息时，请求体的数据大小不能超过 20 KB".
ROBOT_MAX_BYTES = 20_000


def _low_batteries(
    tmp_path: Path, count: int, config: dict[str, object], robot: Callable[..., Channel]
) -> Rig:
    """The office told at once of `count` detectors' low batteries by one robot, `robot`
    made of its `config` and an HTTP client (whose provider answers)."""
    devices = [f"sd-{n}" for n in range(1, count + 1)]
    registry = Registry([
        RegisteredDevice(device_id=d, device_type="smoke_detector", community="hgy",
                         area="east", building="3") for d in devices
    ])  # fmt: skip
    policy = told_at_once("office", "13800000004", {"robot": config})
    rig = Rig(tmp_path / "outbox.sqlite3", policy=policy, registry=registry,
              channels={"robot": robot(policy.channels["robot"])})  # type: ignore[dict-item]  # fmt: skip
    for device in devices:
        rig.feed(reading(SMOKE._replace(device_id=device), 0, battery_pct=10))
    return rig


def _answered_by(provider: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(provider))


def _undelivered(rig: Rig) -> list[str]:
    return [
        a.alert_id
        for alert in rig.book.open_alerts()
        for a in rig.log.attempts(alert.alert_id)
        if a.result in (AttemptResult.UNDELIVERED, AttemptResult.FAILED)
    ]


# --- a robot's digest, within what its request's body may take -----------------------------


async def test_a_dingtalk_digest_stays_within_what_dingtalk_takes(tmp_path: Path) -> None:
    # A backlog held behind DingTalk's limit goes out as digests, each within what
    # DingTalk takes in a body (20,000 bytes, errcode 460101 past it): the title, the
    # markdown with its doubled newlines, and the @-mentions, not the plain text alone.
    sizes: list[int] = []

    def dingtalk(request: httpx.Request) -> httpx.Response:
        sizes.append(len(request.content))
        if sizes[-1] > ROBOT_MAX_BYTES:
            return httpx.Response(
                200, json={"errcode": 460101, "errmsg": "message too long, exceed 20000 bytes"}
            )
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})

    rig = _low_batteries(
        tmp_path, 150,
        {"type": "dingtalk", "access_token": "t",
         "url": "https://oapi.dingtalk.example.cn/robot/send"},
        lambda config: DingtalkRobot("robot", config, _answered_by(dingtalk), ManualClock(T0)),
    )  # fmt: skip
    await rig.after(0)
    assert len(sizes) == 20
    for _ in range(8):
        await rig.after(61)
    assert len(sizes) > 20
    assert max(sizes) <= ROBOT_MAX_BYTES, sizes[20:]
    assert _undelivered(rig) == []


async def test_a_feishu_digest_stays_within_what_feishu_takes(tmp_path: Path) -> None:
    # Feishu's limit is on the request's body ("请求体的数据大小不能超过 20 KB"): the JSON
    # around the text, each newline escaped, and the signature count.
    sizes: list[int] = []

    def feishu(request: httpx.Request) -> httpx.Response:
        sizes.append(len(request.content))
        if sizes[-1] > ROBOT_MAX_BYTES:
            return httpx.Response(200, json={"code": 9499, "msg": "Bad Request"})
        return httpx.Response(200, json={"code": 0, "msg": "success"})

    rig = _low_batteries(
        tmp_path, 130,
        {"type": "feishu", "hook": "h", "secret": "s", "per_second": 1,
         "url": "https://open.feishu.example.cn/open-apis/bot/v2/hook"},
        lambda config: FeishuBot("robot", config, _answered_by(feishu), ManualClock(T0)),
    )  # fmt: skip
    await rig.after(0)
    assert len(sizes) == 1
    for _ in range(8):
        await rig.after(2)
    assert len(sizes) > 1
    assert max(sizes) <= ROBOT_MAX_BYTES, sizes
    assert _undelivered(rig) == []


# --- Aliyun: which refusals are worth trying again -----------------------------------------


def _aliyun_answering(answer: dict[str, object]):  # type: ignore[no-untyped-def]
    def handle(request: Request) -> Response:
        params = dict(parse_qsl(request.get_data(as_text=True), keep_blank_values=True))
        assert params["Action"] in ("SendSms", "SingleCallByTts")
        return Response(json.dumps({**answer, "RequestId": "r"}), status=200,
                        content_type="application/json")  # fmt: skip

    return handle


@pytest.mark.parametrize("voice", [False, True], ids=["sms", "voice"])
async def test_aliyun_s_ram_permission_denied_is_final_not_busy(
    httpserver: HTTPServer, voice: bool
) -> None:
    # isp.RAM_PERMISSION_DENY (the AccessKey's RAM user lacks the SMS or voice
    # permission) is final: no retry mends it, and a fall's SMS or call goes on by its
    # next channel at once. Only isp.SYSTEM_ERROR and isp.UNKNOWN_ERR_CODE say to try
    # again later.
    httpserver.expect_request("/", method="POST").respond_with_handler(
        _aliyun_answering({"Code": "isp.RAM_PERMISSION_DENY", "Message": "RAM权限DENY"})
    )
    async with httpx.AsyncClient() as http:
        channel: AliyunSms | AliyunVoice
        if voice:
            channel = AliyunVoice(
                "voice",
                AliyunVoiceChannel(type="aliyun_voice", access_key_id="id",
                                   access_key_secret="s", tts_code="TTS_1",
                                   url=httpserver.url_for("/")),
                http, ManualClock(T0),
            )  # fmt: skip
        else:
            channel = AliyunSms(
                "sms",
                AliyunSmsChannel(type="aliyun_sms", access_key_id="id", access_key_secret="s",
                                 sign_name="湖光苑社区", template_code="SMS_1",
                                 url=httpserver.url_for("/")),
                http, ManualClock(T0),
            )  # fmt: skip
        with pytest.raises(NotifyError, match="RAM_PERMISSION_DENY") as error:
            await channel.send(notice())
    assert (error.value.retryable, error.value.rate_limited) == (False, False)


# --- a webhook's redirect ------------------------------------------------------------------


async def test_a_webhook_that_answers_with_a_redirect_has_not_taken_the_notice(
    httpserver: HTTPServer,
) -> None:
    # The gateway's HTTP client follows no redirect: a webhook answering 3xx (moved,
    # http:// sent on to https://) has not taken the notice, which goes to the next
    # channel rather than being recorded `sent`.
    httpserver.expect_request("/hook", method="POST").respond_with_response(
        Response("", status=308, headers={"Location": httpserver.url_for("/moved")})
    )
    httpserver.expect_request("/moved", method="POST").respond_with_data("", status=204)
    async with httpx.AsyncClient() as http:
        hook = Webhook("hook", WebhookChannel(type="webhook", url=httpserver.url_for("/hook")),
                       http)  # fmt: skip
        try:
            await hook.send(notice())
        except NotifyError:
            return  # reported as not delivered: it goes on by the next channel
    delivered = [r for r, _ in httpserver.log if r.path == "/moved"]
    assert delivered, "recorded as sent, but the document reached no endpoint"
    assert delivered[0].get_json()["key"] == "a1/critical.0/wang-fang/firing"


# --- a webhook's request timeout (408) -------------------------------------------------------


async def test_a_webhook_s_request_timeout_is_retryable(httpserver: HTTPServer) -> None:
    # 408: the platform (or the nginx in front of it) gave up waiting for the body, as
    # on a slow cellular uplink: sent again, it is delivered (RFC 9110 §15.5.9).
    httpserver.expect_request("/hook", method="POST").respond_with_data(
        "request timeout", status=408, headers={"Connection": "close"}
    )
    async with httpx.AsyncClient() as http:
        hook = Webhook("hook", WebhookChannel(type="webhook", url=httpserver.url_for("/hook")),
                       http)  # fmt: skip
        with pytest.raises(NotifyError) as error:
            await hook.send(notice())
    assert error.value.retryable
