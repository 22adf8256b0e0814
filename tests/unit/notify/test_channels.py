"""Every channel against a local HTTP server that checks the exact request, signature
included, and answers as the provider does: success, its rate-limit answer, its errors."""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

import httpx
import pytest
from pydantic import ValidationError
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from gateway.clock import ManualClock
from gateway.errors import NotifyError
from gateway.notify.channel import Limit, Limiter, check_http
from gateway.notify.cloud import (
    AliyunSms,
    AliyunVoice,
    TencentSms,
    TencentVoice,
    until_china_midnight_s,
)
from gateway.notify.hooks import Console, MqttPublisher, Webhook
from gateway.notify.notice import Notice
from gateway.notify.policy import (
    AliyunSmsChannel,
    AliyunVoiceChannel,
    DingtalkChannel,
    FeishuChannel,
    MqttChannel,
    TencentSmsChannel,
    TencentVoiceChannel,
    WebhookChannel,
    WecomChannel,
)
from gateway.notify.robots import DingtalkRobot, FeishuBot, WecomRobot
from tests.unit.notify.notices import T0, notice


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def json_response(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


# --- WeCom ---------------------------------------------------------------------------------


async def test_wecom_sends_text_that_mentions_the_receiver(
    httpserver: HTTPServer, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    httpserver.expect_oneshot_request(
        "/cgi-bin/webhook/send", method="POST", query_string={"key": "robot-key"}
    ).respond_with_json({"errcode": 0, "errmsg": "ok"})
    robot = WecomRobot(
        "wecom",
        WecomChannel(
            type="wecom", key="robot-key", url=httpserver.url_for("/cgi-bin/webhook/send")
        ),
        http,
    )
    await robot.send(notice())
    ((request, _),) = httpserver.log
    body = request.get_json()
    assert body["msgtype"] == "text"
    assert body["text"]["mentioned_mobile_list"] == ["13800000001"]
    assert body["text"]["content"].startswith(
        "【紧急告警】跌倒 Fall\n地点: hgy 东区 湖光小区 3号楼"
    )
    assert "处理: https://gw.example.cn/a/token" in body["text"]["content"]
    # The robot's key is in its URL, and the gateway's side never logs URLs (the test
    # server's own access log is not the gateway's).
    ours = [r.getMessage() for r in caplog.records if r.name != "werkzeug"]
    assert not [m for m in ours if "robot-key" in m]


@pytest.mark.parametrize(
    ("answer", "retryable", "rate_limited"),
    [
        ({"errcode": 45009, "errmsg": "api freq out of limit"}, True, True),
        ({"errcode": -1, "errmsg": "system busy"}, True, False),
        # Too many calls at once: tried again shortly, the robot not held for a minute.
        ({"errcode": 45033, "errmsg": "api concurrent out of limit"}, True, False),
        ({"errcode": 93000, "errmsg": "invalid webhook url"}, False, False),
    ],
)
async def test_wecom_errors_say_whether_to_retry(
    httpserver: HTTPServer,
    http: httpx.AsyncClient,
    answer: dict[str, object],
    retryable: bool,
    rate_limited: bool,
) -> None:
    httpserver.expect_request("/send").respond_with_json(answer)
    robot = WecomRobot(
        "w", WecomChannel(type="wecom", key="k", url=httpserver.url_for("/send")), http
    )
    with pytest.raises(NotifyError) as error:
        await robot.send(notice())
    assert (error.value.retryable, error.value.rate_limited) == (retryable, rate_limited)
    assert "k" not in str(error.value).split(":")[0]


# --- DingTalk ------------------------------------------------------------------------------


def dingtalk_handler(secret: str, answer: dict[str, object]):  # type: ignore[no-untyped-def]
    def handle(request: Request) -> Response:
        timestamp = request.args["timestamp"]
        string_to_sign = f"{timestamp}\n{secret}"
        expected = base64.b64encode(
            hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).digest()
        ).decode()
        if request.args["sign"] != expected or request.args["access_token"] != "tok":
            return json_response({"errcode": 310000, "errmsg": "sign not match"})
        return json_response(answer)

    return handle


async def test_dingtalk_signs_with_hmac_sha256_and_mentions_the_receiver(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    httpserver.expect_oneshot_request("/robot/send", method="POST").respond_with_handler(
        dingtalk_handler("SECabc", {"errcode": 0, "errmsg": "ok"})
    )
    robot = DingtalkRobot(
        "ding",
        DingtalkChannel(type="dingtalk", access_token="tok", secret="SECabc",
                        url=httpserver.url_for("/robot/send")),
        http,
        ManualClock(T0),
    )  # fmt: skip
    await robot.send(notice())
    ((request, _),) = httpserver.log
    assert request.args["timestamp"] == str(T0)
    body = request.get_json()
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"] == "【紧急告警】跌倒 Fall"
    assert body["markdown"]["text"].endswith("@13800000001")
    assert body["at"] == {"isAtAll": False, "atMobiles": ["13800000001"]}


def group_robots(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> tuple[WecomRobot, DingtalkRobot]:
    """A WeCom and a DingTalk group robot, each answered as it answers a message sent."""
    for path in ("/wecom", "/ding"):
        httpserver.expect_request(path, method="POST").respond_with_json(
            {"errcode": 0, "errmsg": "ok"}
        )
    wecom = WecomRobot("wecom", WecomChannel(type="wecom", key="k", url=httpserver.url_for("/wecom")),
                       http)  # fmt: skip
    ding = DingtalkRobot("ding", DingtalkChannel(type="dingtalk", access_token="t",
                                                 url=httpserver.url_for("/ding")),
                         http, ManualClock(T0))  # fmt: skip
    return wecom, ding


@pytest.mark.parametrize(
    "digest",
    [
        # A digest for two grid workers of a district group, one of them with two alerts.
        replace(notice(kind="digest"), mentions=("13800000003", "13800000001")),
        # The policy keeps its receivers' numbers in E.164; WeCom and DingTalk know a
        # member by the 11 digits of their mobile.
        replace(notice(kind="digest", phone="+8613800000001"), mentions=("+8613800000003",)),
    ],
    ids=["each-once", "e164"],
)
async def test_group_robots_mention_every_receiver_of_a_digest_once_by_their_mobile(
    httpserver: HTTPServer, http: httpx.AsyncClient, digest: Notice
) -> None:
    wecom, ding = group_robots(httpserver, http)
    await wecom.send(digest)
    await ding.send(digest)
    (wecom_request, _), (ding_request, _) = httpserver.log
    assert wecom_request.get_json()["text"]["mentioned_mobile_list"] == [
        "13800000001", "13800000003",
    ]  # fmt: skip
    body = ding_request.get_json()
    assert body["at"]["atMobiles"] == ["13800000001", "13800000003"]
    assert body["markdown"]["text"].endswith("@13800000001 @13800000003")


async def test_dingtalk_wrong_secret_is_final_and_its_limit_blocks_for_ten_minutes(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    httpserver.expect_request("/robot/send").respond_with_handler(
        dingtalk_handler("SECabc", {"errcode": 130101, "errmsg": "send too fast"})
    )
    url = httpserver.url_for("/robot/send")
    wrong = DingtalkRobot("d", DingtalkChannel(type="dingtalk", access_token="tok",
                                               secret="SECxyz", url=url), http, ManualClock(T0))  # fmt: skip
    with pytest.raises(NotifyError, match="310000") as refused:
        await wrong.send(notice())
    assert not refused.value.retryable
    right = DingtalkRobot("d", DingtalkChannel(type="dingtalk", access_token="tok",
                                               secret="SECabc", url=url), http, ManualClock(T0))  # fmt: skip
    with pytest.raises(NotifyError, match="130101") as limited:
        await right.send(notice())
    assert limited.value.rate_limited
    assert limited.value.retry_after_s == 600
    assert right.blocked_s == 600


@pytest.mark.parametrize(
    "answer",
    [
        {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"},
        {"errcode": 410100, "errmsg": "send too fast"},
    ],
)
async def test_dingtalk_s_send_too_fast_codes_hold_the_robot_for_its_block(
    httpserver: HTTPServer, http: httpx.AsyncClient, answer: dict[str, object]
) -> None:
    httpserver.expect_request("/robot/send").respond_with_json(answer)
    robot = DingtalkRobot("d", DingtalkChannel(type="dingtalk", access_token="tok",
                                               url=httpserver.url_for("/robot/send")),
                          http, ManualClock(T0))  # fmt: skip
    with pytest.raises(NotifyError) as limited:
        await robot.send(notice())
    assert (limited.value.retryable, limited.value.rate_limited) == (True, True)
    assert limited.value.retry_after_s == 600


# --- Feishu --------------------------------------------------------------------------------


async def test_feishu_signs_in_its_own_way(httpserver: HTTPServer, http: httpx.AsyncClient) -> None:
    secret = "feishu-secret"

    def handle(request: Request) -> Response:
        body = request.get_json()
        key = f"{body['timestamp']}\n{secret}".encode()
        expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        if body["sign"] != expected:
            return json_response(
                {
                    "code": 19021,
                    "msg": "sign match fail or timestamp is not within one hour from current time",
                }
            )
        return json_response(
            {"StatusCode": 0, "StatusMessage": "success", "code": 0, "msg": "success"}
        )

    httpserver.expect_oneshot_request(
        "/open-apis/bot/v2/hook/hook-id", method="POST"
    ).respond_with_handler(handle)
    bot = FeishuBot(
        "feishu",
        FeishuChannel(type="feishu", hook="hook-id", secret=secret,
                      url=httpserver.url_for("/open-apis/bot/v2/hook")),
        http,
        ManualClock(T0),
    )  # fmt: skip
    await bot.send(notice())
    ((request, _),) = httpserver.log
    body = request.get_json()
    assert body["timestamp"] == str(T0 // 1000)
    assert body["msg_type"] == "text"
    assert body["content"]["text"].startswith("【紧急告警】跌倒 Fall")
    # DingTalk's way of signing would not pass Feishu's check.
    dingtalk_way = base64.b64encode(
        hmac.new(secret.encode(), f"{T0 // 1000}\n{secret}".encode(), hashlib.sha256).digest()
    ).decode()
    assert body["sign"] != dingtalk_way


async def test_feishu_limit_and_http_429(httpserver: HTTPServer, http: httpx.AsyncClient) -> None:
    httpserver.expect_oneshot_request("/hook/h").respond_with_json(
        {"code": 11232, "msg": "frequency limited"}
    )
    httpserver.expect_oneshot_request("/hook/h").respond_with_response(
        Response("slow down", status=429, headers={"Retry-After": "3"})
    )
    bot = FeishuBot("f", FeishuChannel(type="feishu", hook="h", url=httpserver.url_for("/hook")),
                    http, ManualClock(T0))  # fmt: skip
    with pytest.raises(NotifyError) as first:
        await bot.send(notice())
    assert first.value.rate_limited
    with pytest.raises(NotifyError) as second:
        await bot.send(notice())
    assert (second.value.rate_limited, second.value.retry_after_s) == (True, 3.0)


async def test_feishu_s_bad_request_is_final_not_a_limit(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    # A body Feishu cannot read: sent again, it would be refused again for ever.
    httpserver.expect_request("/hook/h").respond_with_json({"code": 9499, "msg": "Bad Request"})
    bot = FeishuBot("f", FeishuChannel(type="feishu", hook="h", url=httpserver.url_for("/hook")),
                    http, ManualClock(T0))  # fmt: skip
    with pytest.raises(NotifyError, match="9499") as error:
        await bot.send(notice())
    assert (error.value.retryable, error.value.rate_limited) == (False, False)


# --- Aliyun --------------------------------------------------------------------------------


def aliyun_check(secret: str, answer: dict[str, object]):  # type: ignore[no-untyped-def]
    """Recomputes the RPC signature as Aliyun's documentation describes it."""

    def encode(value: str) -> str:
        return quote(value, safe="").replace("+", "%20").replace("*", "%2A").replace("%7E", "~")

    def handle(request: Request) -> Response:
        params = dict(parse_qsl(request.get_data(as_text=True), keep_blank_values=True))
        signature = params.pop("Signature")
        canonical = "&".join(f"{encode(k)}={encode(v)}" for k, v in sorted(params.items()))
        to_sign = "POST&%2F&" + encode(canonical)
        expected = base64.b64encode(
            hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
        ).decode()
        if signature != expected:
            return json_response({"Code": "SignatureDoesNotMatch", "Message": "bad"}, 400)
        return json_response(answer)

    return handle


async def test_aliyun_sms_sends_the_template_with_a_signed_request(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    httpserver.expect_oneshot_request("/", method="POST").respond_with_handler(
        aliyun_check("ak-secret", {"Code": "OK", "Message": "OK", "BizId": "9", "RequestId": "r"})
    )
    sms = AliyunSms(
        "sms",
        AliyunSmsChannel(type="aliyun_sms", access_key_id="LTAIid", access_key_secret="ak-secret",
                         sign_name="湖光苑社区", template_code="SMS_1",
                         params=("title", "place", "time"), url=httpserver.url_for("/")),
        http,
        ManualClock(T0),
    )  # fmt: skip
    await sms.send(notice())
    ((request, _),) = httpserver.log
    params = dict(parse_qsl(request.get_data(as_text=True)))
    assert params["Action"] == "SendSms"
    assert params["Version"] == "2017-05-25"
    assert params["PhoneNumbers"] == "13800000001"
    assert params["SignName"] == "湖光苑社区"
    assert params["TemplateCode"] == "SMS_1"
    assert json.loads(params["TemplateParam"]) == {
        "title": "跌倒 Fall", "place": "hgy 东区 湖光小区 3号楼", "time": "2026-01-01 08:00"
    }  # fmt: skip
    assert params["OutId"] == "a1/critical.0/wang-fang/firing"
    assert params["Timestamp"] == "2026-01-01T00:00:00Z"
    assert params["SignatureMethod"] == "HMAC-SHA1"
    assert params["AccessKeyId"] == "LTAIid"


@pytest.mark.parametrize(
    ("code", "retryable", "rate_limited"),
    [
        ("isv.BUSINESS_LIMIT_CONTROL", True, True),
        ("isp.SYSTEM_ERROR", True, False),
        ("isv.MOBILE_NUMBER_ILLEGAL", False, False),
    ],
)
async def test_aliyun_voice_calls_and_its_errors(
    httpserver: HTTPServer, http: httpx.AsyncClient, code: str, retryable: bool, rate_limited: bool
) -> None:
    httpserver.expect_oneshot_request("/", method="POST").respond_with_handler(
        aliyun_check("s", {"Code": "OK", "CallId": "c1", "RequestId": "r"})
    )
    httpserver.expect_oneshot_request("/", method="POST").respond_with_handler(
        aliyun_check("s", {"Code": code, "Message": "refused", "RequestId": "r"})
    )
    voice = AliyunVoice(
        "voice",
        AliyunVoiceChannel(type="aliyun_voice", access_key_id="id", access_key_secret="s",
                           tts_code="TTS_1", called_show_number="057100000000",
                           url=httpserver.url_for("/")),
        http,
        ManualClock(T0),
    )  # fmt: skip
    await voice.send(notice())
    params = dict(parse_qsl(httpserver.log[0][0].get_data(as_text=True)))
    assert (params["Action"], params["CalledNumber"], params["TtsCode"]) == (
        "SingleCallByTts", "13800000001", "TTS_1",
    )  # fmt: skip
    assert params["CalledShowNumber"] == "057100000000"
    with pytest.raises(NotifyError, match=code) as error:
        await voice.send(notice())
    assert (error.value.retryable, error.value.rate_limited) == (retryable, rate_limited)
    # One call a minute to a number, as Aliyun allows.
    assert voice.limiter.wait_s("13800000001", T0 / 1000) == 0
    voice.limiter.note("13800000001", T0 / 1000)
    assert voice.limiter.wait_s("13800000001", T0 / 1000 + 30) == 30
    assert voice.limiter.wait_s("13900000002", T0 / 1000 + 30) == 0
    # The same number written with its country code is the same number to the provider.
    assert voice.limiter.wait_s("+8613800000001", T0 / 1000 + 30) == 30


def aliyun_sms(url: str, http: httpx.AsyncClient) -> AliyunSms:
    return AliyunSms(
        "sms",
        AliyunSmsChannel(type="aliyun_sms", access_key_id="id", access_key_secret="s",
                         sign_name="湖光苑社区", template_code="SMS_1", url=url),
        http,
        ManualClock(T0),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "answer", "retryable", "rate_limited"),
    [
        # Aliyun's own rate limit comes with HTTP 400 and its code in the body.
        (400, {"Code": "Throttling.User",
               "Message": "Request was denied due to user flow control."}, True, True),
        (400, {"Code": "Throttling",
               "Message": "Request was denied due to request throttling."}, True, True),
        (400, {"Code": "SignatureDoesNotMatch", "Message": "Specified signature is not matched"},
         False, False),
        (404, {"Code": "InvalidAccessKeyId.NotFound", "Message": "Specified access key is not found."},
         False, False),
    ],
)  # fmt: skip
async def test_aliyun_s_throttling_with_http_400_is_a_limit_and_its_other_refusals_final(
    httpserver: HTTPServer,
    http: httpx.AsyncClient,
    status: int,
    answer: dict[str, object],
    retryable: bool,
    rate_limited: bool,
) -> None:
    httpserver.expect_request("/", method="POST").respond_with_response(
        json_response(answer, status)
    )
    with pytest.raises(NotifyError, match=str(answer["Code"])) as error:
        await aliyun_sms(httpserver.url_for("/"), http).send(notice())
    assert (error.value.retryable, error.value.rate_limited) == (retryable, rate_limited)
    if rate_limited:
        # The account's API rate, not the number's: every number waits.
        assert (error.value.retry_after_s, error.value.account_wide) == (60.0, True)


async def test_an_aliyun_4xx_without_a_code_is_final(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    httpserver.expect_request("/", method="POST").respond_with_data("Bad Request", status=400)
    with pytest.raises(NotifyError, match="400") as error:
        await aliyun_sms(httpserver.url_for("/"), http).send(notice())
    assert (error.value.retryable, error.value.rate_limited) == (False, False)


@pytest.mark.parametrize(
    ("message", "retry_after_s"),
    [
        ("触发分钟级流控Permits:1", 60.0),
        ("触发小时级流控Permits:5", 60.0),
        # Aliyun counts the day from each send, 24 h on: the number is held a day.
        ("触发天级流控Permits:10", 86_400.0),
    ],
)
async def test_aliyun_s_limit_per_day_holds_the_number_for_a_day(
    httpserver: HTTPServer, http: httpx.AsyncClient, message: str, retry_after_s: float
) -> None:
    httpserver.expect_request("/", method="POST").respond_with_json(
        {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": message, "RequestId": "r"}
    )
    with pytest.raises(NotifyError) as error:
        await aliyun_sms(httpserver.url_for("/"), http).send(notice())
    assert (error.value.rate_limited, error.value.retry_after_s) == (True, retry_after_s)
    assert not error.value.account_wide


# --- Tencent Cloud -------------------------------------------------------------------------


def tencent_check(secret_id: str, secret_key: str, service: str, answer: dict[str, object]):  # type: ignore[no-untyped-def]
    """Recomputes TC3-HMAC-SHA256 from what arrived, as Tencent's documentation describes."""

    def handle(request: Request) -> Response:
        timestamp = int(request.headers["X-TC-Timestamp"])
        date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
        payload = request.get_data()
        canonical = (
            f"POST\n/\n\ncontent-type:{request.headers['Content-Type']}\n"
            f"host:{request.headers['Host']}\n\ncontent-type;host\n"
            + hashlib.sha256(payload).hexdigest()
        )
        scope = f"{date}/{service}/tc3_request"
        to_sign = (
            f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n"
            + hashlib.sha256(canonical.encode()).hexdigest()
        )
        key = ("TC3" + secret_key).encode()
        for part in (date, service, "tc3_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        expected = (
            f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, "
            f"SignedHeaders=content-type;host, Signature={signature}"
        )
        if request.headers["Authorization"] != expected:
            return json_response(
                {
                    "Response": {
                        "Error": {"Code": "AuthFailure.SignatureFailure", "Message": "bad"},
                        "RequestId": "r",
                    }
                }
            )
        return json_response(answer)

    return handle


async def test_tencent_sms_signs_tc3_and_reads_the_per_number_status(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    ok = {
        "Response": {
            "SendStatusSet": [
                {"Code": "Ok", "Message": "send success", "PhoneNumber": "+8613800000001"}
            ],
            "RequestId": "r",
        }
    }
    limited = {
        "Response": {
            "SendStatusSet": [
                {"Code": "LimitExceeded.PhoneNumberThirtySecondLimit", "Message": "30s"}
            ],
            "RequestId": "r",
        }
    }
    for answer in (ok, limited):
        httpserver.expect_oneshot_request("/", method="POST").respond_with_handler(
            tencent_check("AKIDx", "tkey", "sms", answer)
        )
    sms = TencentSms(
        "tsms",
        TencentSmsChannel(type="tencent_sms", secret_id="AKIDx", secret_key="tkey",
                          sdk_app_id="1400000000", sign_name="湖光苑", template_id="100",
                          params=("title", "place"), url=httpserver.url_for("/")),
        http,
        ManualClock(T0),
    )  # fmt: skip
    await sms.send(notice())
    request = httpserver.log[0][0]
    assert request.headers["X-TC-Action"] == "SendSms"
    assert request.headers["X-TC-Version"] == "2021-01-11"
    assert request.headers["X-TC-Timestamp"] == str(T0 // 1000)
    assert request.get_json() == {
        "PhoneNumberSet": ["+8613800000001"],
        "SmsSdkAppId": "1400000000",
        "SignName": "湖光苑",
        "TemplateId": "100",
        "TemplateParamSet": ["跌倒 Fall", "hgy 东区 湖光小区 3号楼"],
        "SessionContext": "a1/critical.0/wang-fang/firing",
    }
    with pytest.raises(NotifyError, match="PhoneNumberThirtySecondLimit") as error:
        await sms.send(notice())
    assert error.value.rate_limited


@pytest.mark.parametrize(
    ("answer", "retry_after_s", "account_wide"),
    [
        ({"SendStatusSet": [{"Code": "LimitExceeded.PhoneNumberThirtySecondLimit",
                             "Message": "30s"}]}, 60.0, False),
        # T0 is 08:00 in China: the calendar day Tencent counts by ends 16 h later.
        ({"SendStatusSet": [{"Code": "LimitExceeded.PhoneNumberDailyLimit",
                             "Message": "the number of sms messages sent from a single mobile "
                                        "number every day exceeds the upper limit"}]},
         16 * 3600.0, False),
        # The application's, whatever the number: every number waits.
        ({"Error": {"Code": "LimitExceeded.AppDailyLimit", "Message": "daily limit"}},
         16 * 3600.0, True),
        # The application's for a region (international and Hong Kong numbers here): a
        # mainland number still gets through.
        ({"Error": {"Code": "LimitExceeded.AppGlobalDailyLimit",
                    "Message": "global daily limit"}}, 16 * 3600.0, False),
        ({"Error": {"Code": "LimitExceeded.DailyLimit", "Message": "daily limit"}},
         16 * 3600.0, False),
        ({"Error": {"Code": "RequestLimitExceeded", "Message": "too many requests"}},
         60.0, True),
    ],
)  # fmt: skip
async def test_tencent_s_limits_per_day_hold_until_midnight_in_china(
    httpserver: HTTPServer,
    http: httpx.AsyncClient,
    answer: dict[str, object],
    retry_after_s: float,
    account_wide: bool,
) -> None:
    httpserver.expect_request("/", method="POST").respond_with_handler(
        tencent_check("AKIDx", "tkey", "sms", {"Response": {**answer, "RequestId": "r"}})
    )
    with pytest.raises(NotifyError, match="LimitExceeded") as error:
        await tencent_sms(httpserver.url_for("/"), http).send(notice())
    assert (error.value.rate_limited, error.value.retry_after_s) == (True, retry_after_s)
    assert error.value.account_wide is account_wide


@pytest.mark.parametrize(
    ("now_ms", "left_s"),
    [
        (T0, 16 * 3600.0),
        # 23:59:30 in China is 15:59:30 UTC.
        (T0 + (16 * 3600 - 30) * 1000, 30.0),
        # At midnight itself a whole day is left.
        (T0 + 16 * 3600 * 1000, 86_400.0),
    ],
)
def test_a_day_in_china_ends_at_its_midnight(now_ms: int, left_s: float) -> None:
    assert until_china_midnight_s(now_ms) == left_s


def tencent_sms(url: str, http: httpx.AsyncClient) -> TencentSms:
    return TencentSms(
        "tsms",
        TencentSmsChannel(type="tencent_sms", secret_id="AKIDx", secret_key="tkey",
                          sdk_app_id="1400000000", sign_name="湖光苑", template_id="100", url=url),
        http,
        ManualClock(T0),
    )  # fmt: skip


async def test_a_region_the_tencent_application_does_not_send_to_is_no_limit_but_final(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    # Named LimitExceeded, but the application's list of regions, which waiting does not
    # change: the notice goes on by its next channel at once.
    error_code = {"Code": "LimitExceeded.AppCountryOrRegionInBlacklist", "Message": "blacklist"}
    httpserver.expect_request("/", method="POST").respond_with_handler(
        tencent_check("AKIDx", "tkey", "sms", {"Response": {"Error": error_code, "RequestId": "r"}})
    )
    with pytest.raises(NotifyError, match="InBlacklist") as error:
        await tencent_sms(httpserver.url_for("/"), http).send(notice())
    assert (error.value.retryable, error.value.rate_limited) == (False, False)


async def test_tencent_voice_and_a_wrong_key(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    httpserver.expect_request("/", method="POST").respond_with_handler(
        tencent_check(
            "AKIDx", "tkey", "vms", {"Response": {"SendStatus": {"CallId": "c"}, "RequestId": "r"}}
        )
    )

    def voice(key: str) -> TencentVoice:
        return TencentVoice(
            "tvoice",
            TencentVoiceChannel(type="tencent_voice", secret_id="AKIDx", secret_key=key,
                                voice_sdk_app_id="1400000001", template_id="200",
                                url=httpserver.url_for("/")),
            http,
            ManualClock(T0),
        )  # fmt: skip

    await voice("tkey").send(notice())
    body = httpserver.log[0][0].get_json()
    assert (body["CalledNumber"], body["VoiceSdkAppid"], body["TemplateId"]) == (
        "+8613800000001", "1400000001", "200",
    )  # fmt: skip
    assert httpserver.log[0][0].headers["X-TC-Action"] == "SendTtsVoice"
    with pytest.raises(NotifyError, match="AuthFailure") as error:
        await voice("wrong").send(notice())
    assert not error.value.retryable


# --- webhook, MQTT, console ----------------------------------------------------------------


async def test_webhook_posts_json_with_an_idempotency_key(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    httpserver.expect_oneshot_request(
        "/hook",
        method="POST",
        headers={
            "Authorization": "Bearer t0k",
            "Idempotency-Key": "a1/critical.0/wang-fang/firing",
        },
    ).respond_with_data("", status=204)
    hook = Webhook("hook", WebhookChannel(type="webhook", url=httpserver.url_for("/hook"),
                                          headers={"Authorization": "Bearer t0k"}), http)  # fmt: skip
    await hook.send(notice())
    httpserver.check_assertions()
    body = httpserver.log[0][0].get_json()
    assert body["alert_id"] == "a1"
    assert body["rule"] == "fall"
    assert body["severity"] == "critical"
    assert body["state"] == "firing"
    assert body["device"] == {
        "community": "hgy",
        "device_type": "bracelet",
        "device_id": "br-1",
        "port": None,
    }
    assert body["place"] == "hgy 东区 湖光小区 3号楼"
    assert body["started_ms"] == T0
    assert body["ack_url"] == "https://gw.example.cn/a/token"


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (400, False)])
async def test_webhook_errors(
    httpserver: HTTPServer, http: httpx.AsyncClient, status: int, retryable: bool
) -> None:
    httpserver.expect_request("/hook").respond_with_data("no", status=status)
    hook = Webhook("hook", WebhookChannel(type="webhook", url=httpserver.url_for("/hook")), http)
    with pytest.raises(NotifyError) as error:
        await hook.send(notice())
    assert error.value.retryable is retryable


async def test_a_key_with_names_in_chinese_goes_percent_encoded_in_the_header(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    key = "a1/火警.0/王芳/firing"
    httpserver.expect_oneshot_request(
        "/hook", method="POST", headers={"Idempotency-Key": quote(key, safe="/")}
    ).respond_with_data("", status=204)
    hook = Webhook("hook", WebhookChannel(type="webhook", url=httpserver.url_for("/hook")), http)
    await hook.send(notice(key=key, receiver="王芳"))
    httpserver.check_assertions()
    # The body carries the key as it is.
    assert httpserver.log[0][0].get_json()["key"] == key


async def test_an_unreachable_provider_is_worth_retrying(http: httpx.AsyncClient) -> None:
    hook = Webhook(
        "hook", WebhookChannel(type="webhook", url="http://127.0.0.1:9/x", timeout_s=2), http
    )
    with pytest.raises(NotifyError, match="unreachable") as error:
        await hook.send(notice())
    assert error.value.retryable


async def test_mqtt_publishes_the_document_to_the_receivers_topic() -> None:
    published: list[tuple[str, bytes, float]] = []

    async def publish(topic: str, payload: bytes, timeout_s: float) -> None:
        published.append((topic, payload, timeout_s))

    await MqttPublisher("app", MqttChannel(type="mqtt", timeout_s=3), publish).send(notice())
    # Waits for the broker's acknowledgement as long as the channel's timeout says.
    ((topic, payload, timeout_s),) = published
    assert timeout_s == 3
    assert topic == "notify/hgy/wang-fang"
    assert json.loads(payload)["ack_url"] == "https://gw.example.cn/a/token"
    with pytest.raises(NotifyError, match="no MQTT broker"):
        await MqttPublisher("app", MqttChannel(type="mqtt"), None).send(notice())


async def test_a_name_goes_into_the_topic_as_one_level_and_never_a_wildcard() -> None:
    published: list[str] = []

    async def publish(topic: str, payload: bytes, timeout_s: float) -> None:
        published.append(topic)

    app = MqttPublisher("app", MqttChannel(type="mqtt"), publish)
    # Emergency contacts are receivers by their phone numbers, as the registry has them.
    for phone in ("+8613900000009", "010-65520000#12", "13900000009/13900000010", "100%"):
        await app.send(notice(receiver=f"contact:{phone}"))
    assert published == [
        "notify/hgy/contact:%2B8613900000009",
        "notify/hgy/contact:010-65520000%2312",
        "notify/hgy/contact:13900000009%2F13900000010",
        "notify/hgy/contact:100%25",
    ]


@pytest.mark.parametrize("topic", ["notify/+/{receiver}", "notify/#", "notify/{name}", "a/{", ""])
def test_a_topic_that_cannot_be_published_to_is_refused_at_start_up(topic: str) -> None:
    with pytest.raises(ValidationError, match="topic"):
        MqttChannel(type="mqtt", topic=topic)


async def test_console_logs_the_text(caplog: pytest.LogCaptureFixture) -> None:
    await Console("console").send(notice())
    assert "notify wang-fang: 【紧急告警】跌倒 Fall | 地点" in caplog.text


async def test_a_send_is_cut_off_at_its_timeout_however_its_server_trickles() -> None:
    """An HTTP client's timeout counts each read: a server (or a proxy in front of it)
    answering a byte at a time would hold the send for as long as it trickled."""
    stop, finished = asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")  # fmt: skip
        with contextlib.suppress(ConnectionError):
            while not stop.is_set():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        finished.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient() as http:
        config = WebhookChannel(type="webhook", url=f"http://127.0.0.1:{port}/", timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(NotifyError, match=r"did not answer within 0\.3 s") as error:
            await Webhook("hook", config, http).deliver(notice())
        elapsed = time.monotonic() - started
        stop.set()
        await finished.wait()
    assert error.value.retryable
    assert elapsed < 1.0


def test_a_provider_s_block_holds_the_channel_or_one_number() -> None:
    limiter = Limiter(())
    limiter.block(100.0, "13800000001")
    # The number however written; the others are reachable.
    assert limiter.wait_s("+8613800000001", 40.0) == 60.0
    assert limiter.wait_s("13800000002", 40.0) == 0
    limiter.block(70.0)
    assert limiter.wait_s("13800000002", 40.0) == 30.0
    assert limiter.wait_s(None, 71.0) == 0


@pytest.mark.parametrize(
    ("params", "sms_links"),
    [(("title", "link"), False), (("title", "link_code"), True)],
)
async def test_an_sms_brings_the_link_as_its_short_code_and_a_call_never(
    http: httpx.AsyncClient, params: tuple[str, ...], sms_links: bool
) -> None:
    # A template's variables are cut to 35 characters, which no whole link fits in.
    channels = [
        AliyunSms("sms", AliyunSmsChannel(type="aliyun_sms", access_key_id="id",
                  access_key_secret="s", sign_name="湖光苑社区", template_code="SMS_1",
                  params=params), http, ManualClock(T0)),
        TencentSms("tsms", TencentSmsChannel(type="tencent_sms", secret_id="AKIDx",
                   secret_key="k", sdk_app_id="1400000000", sign_name="湖光苑社区",
                   template_id="1", params=params), http, ManualClock(T0)),
        AliyunVoice("voice", AliyunVoiceChannel(type="aliyun_voice", access_key_id="id",
                    access_key_secret="s", tts_code="TTS_1", params=params), http,
                    ManualClock(T0)),
        TencentVoice("tvoice", TencentVoiceChannel(type="tencent_voice", secret_id="AKIDx",
                     secret_key="k", voice_sdk_app_id="1400000001", template_id="200",
                     params=params), http, ManualClock(T0)),
    ]  # fmt: skip
    assert [c.links for c in channels] == [sms_links, sms_links, False, False]


def test_a_retry_after_given_as_a_date_holds_the_channel_as_long_as_it_says() -> None:
    # HTTP allows a date as well as seconds; it counts from the answer's own Date.
    response = httpx.Response(
        429,
        headers={
            "Date": "Thu, 01 Jan 2026 00:00:00 GMT",
            "Retry-After": "Thu, 01 Jan 2026 00:05:00 GMT",
        },
    )
    with pytest.raises(NotifyError) as error:
        check_http(response, "webhook")
    assert error.value.rate_limited
    assert error.value.retry_after_s == 300.0


# --- phone numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    # As the registry keeps it, and as a notice stored by an earlier version may carry it.
    "phone", ["+8637166123456", "037166123456"],
)  # fmt: skip
async def test_a_call_to_a_landline_emergency_contact_dials_its_area_code(
    httpserver: HTTPServer, http: httpx.AsyncClient, phone: str
) -> None:
    httpserver.expect_request("/aliyun", method="POST").respond_with_handler(
        aliyun_check("s", {"Code": "OK", "CallId": "c1", "RequestId": "r"})
    )
    httpserver.expect_request("/tencent", method="POST").respond_with_handler(
        tencent_check(
            "AKIDx", "tkey", "vms", {"Response": {"SendStatus": {"CallId": "c"}, "RequestId": "r"}}
        )
    )
    aliyun = AliyunVoice(
        "voice",
        AliyunVoiceChannel(type="aliyun_voice", access_key_id="id", access_key_secret="s",
                           tts_code="TTS_1", url=httpserver.url_for("/aliyun")),
        http,
        ManualClock(T0),
    )  # fmt: skip
    tencent = TencentVoice(
        "tvoice",
        TencentVoiceChannel(type="tencent_voice", secret_id="AKIDx", secret_key="tkey",
                            voice_sdk_app_id="1400000001", template_id="200",
                            url=httpserver.url_for("/tencent")),
        http,
        ManualClock(T0),
    )  # fmt: skip
    family = notice(receiver="contact:+8637166123456", phone=phone)
    await aliyun.send(family)
    await tencent.send(family)
    (aliyun_request, _), (tencent_request, _) = httpserver.log
    # Aliyun takes a mainland landline with its area code as dialled there, trunk 0 and
    # all; Tencent takes E.164, without the trunk 0.
    assert dict(parse_qsl(aliyun_request.get_data(as_text=True)))["CalledNumber"] == (
        "037166123456"
    )
    assert tencent_request.get_json()["CalledNumber"] == "+8637166123456"


async def test_aliyun_takes_a_number_abroad_with_its_country_code_and_no_plus(
    httpserver: HTTPServer, http: httpx.AsyncClient
) -> None:
    httpserver.expect_request("/", method="POST").respond_with_handler(
        aliyun_check("s", {"Code": "OK", "Message": "OK", "BizId": "9", "RequestId": "r"})
    )
    await aliyun_sms(httpserver.url_for("/"), http).send(notice(phone="+85291234567"))
    ((request, _),) = httpserver.log
    assert dict(parse_qsl(request.get_data(as_text=True)))["PhoneNumbers"] == "85291234567"


def test_a_landline_is_one_number_to_a_limit_however_written() -> None:
    limiter = Limiter((Limit(1, 60.0, per_number=True),))
    limiter.note("+8637166123456", 0.0)
    for written in ("0371-66123456", "037166123456", "+86 371 6612 3456"):
        assert limiter.wait_s(written, 1.0) == 59.0, written
    limiter.block(100.0, "037166123456")
    assert limiter.wait_s("+8637166123456", 70.0) == 30.0
