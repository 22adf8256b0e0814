"""Group chat robots: WeCom (企业微信), DingTalk (钉钉) and Feishu (飞书).

Each answers HTTP 200 with its own error code in the body; the codes that mean "over
the limit" and "try again" differ per provider and are told apart here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote_plus

import httpx

from gateway.clock import Clock
from gateway.errors import NotifyError
from gateway.notify.channel import Channel, Limit, json_body, json_bytes, post
from gateway.notify.notice import Notice
from gateway.notify.policy import DingtalkChannel, FeishuChannel, WecomChannel
from gateway.phone import dialled_in_mainland

# WeCom: 45009 over the frequency limit (20 messages a minute, then refused for a
# minute); 45033 too many calls at once and -1 system busy, both worth trying again soon.
_WECOM_LIMITED = {45009}
_WECOM_BUSY = {-1, 45033}
# DingTalk: 130101 ("send too fast, exceed 20 times per minute") and 410100 (发送速度太快
# 而限流), both sent too fast, the robot then blocked for 10 minutes; -1 system busy.
_DINGTALK_LIMITED = {130101, 410100}
_DINGTALK_BUSY = {-1}
# Feishu: 11232 over the frequency limit. 9499 is "Bad Request", a body Feishu cannot
# read, which no retry mends: final, like every code not named here.
_FEISHU_LIMITED = {11232}


def _raise_for_code(
    provider: str,
    code: object,
    message: object,
    limited: set[int],
    busy: set[int],
    retry_after_s: float | None,
) -> None:
    if code == 0:
        return
    if code in limited:
        raise NotifyError(
            f"{provider} over its limit: {code} {message}",
            retryable=True,
            rate_limited=True,
            retry_after_s=retry_after_s,
        )
    raise NotifyError(f"{provider} refused: {code} {message}", retryable=code in busy)


def _mentioned(notice: Notice) -> list[str]:
    """Whom a group message @-mentions, by their mobile number as their WeCom or DingTalk
    account has it: 13800138000, not +8613800138000."""
    return list(dict.fromkeys(dialled_in_mainland(phone) for phone in notice.phones()))


class WecomRobot(Channel):
    kind = "wecom"
    # A text message's content, as WeCom's robot documentation gives it.
    max_text_bytes = 2048

    def __init__(self, name: str, config: WecomChannel, http: httpx.AsyncClient) -> None:
        super().__init__(name, (Limit(config.per_minute, 60.0),), config.timeout_s)
        self._config = config
        self._http = http

    async def send(self, notice: Notice) -> None:
        # Text, not markdown: only text messages can @ the receiver by phone number.
        text: dict[str, object] = {"content": notice.text()}
        phones = _mentioned(notice)
        if phones:
            text["mentioned_mobile_list"] = phones
        response = await post(
            self._http,
            "WeCom",
            self._config.url,
            params={"key": self._config.key.get_secret_value()},
            json={"msgtype": "text", "text": text},
            timeout=self._config.timeout_s,
        )
        body = json_body(response, "WeCom")
        _raise_for_code(
            "WeCom", body.get("errcode"), body.get("errmsg"), _WECOM_LIMITED, _WECOM_BUSY, 60.0
        )


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature: base64 HMAC-SHA256 of "timestamp\\nsecret" keyed by the secret."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class DingtalkRobot(Channel):
    kind = "dingtalk"
    # A message, as DingTalk's robot documentation gives it.
    max_text_bytes = 20_000

    def __init__(
        self, name: str, config: DingtalkChannel, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        super().__init__(name, (Limit(config.per_minute, 60.0),), config.timeout_s)
        self.blocked_s = config.blocked_s
        self._config = config
        self._http = http
        self._clock = clock

    def size_bytes(self, notice: Notice) -> int:
        # DingTalk counts the whole body: the title, the markdown, the mentions.
        return len(json_bytes(self._message(notice)))

    @staticmethod
    def _message(notice: Notice) -> dict[str, object]:
        text = notice.markdown()
        at: dict[str, object] = {"isAtAll": False}
        phones = _mentioned(notice)
        if phones:
            # DingTalk shows the mention only when the text names the number too.
            text += "\n\n" + " ".join(f"@{phone}" for phone in phones)
            at["atMobiles"] = phones
        return {
            "msgtype": "markdown",
            "markdown": {"title": notice.headline(), "text": text},
            "at": at,
        }

    async def send(self, notice: Notice) -> None:
        params = {"access_token": self._config.access_token.get_secret_value()}
        if self._config.secret is not None:
            timestamp_ms = self._clock.now_ms()
            params["timestamp"] = str(timestamp_ms)
            params["sign"] = dingtalk_sign(self._config.secret.get_secret_value(), timestamp_ms)
        response = await post(
            self._http,
            "DingTalk",
            self._config.url,
            params=params,
            json=self._message(notice),
            timeout=self._config.timeout_s,
        )
        body = json_body(response, "DingTalk")
        _raise_for_code(
            "DingTalk",
            body.get("errcode"),
            body.get("errmsg"),
            _DINGTALK_LIMITED,
            _DINGTALK_BUSY,
            self._config.blocked_s,
        )


# `,"timestamp":"1767225600","sign":"<44 characters of base64>"`.
_FEISHU_SIGNATURE_BYTES = 72


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's signature, unlike DingTalk's: HMAC-SHA256 keyed by "timestamp\\nsecret"
    over an empty message, base64; the timestamp is in seconds."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


class FeishuBot(Channel):
    kind = "feishu"
    # A request's body, as Feishu's bot documentation gives it.
    max_text_bytes = 20_000

    def __init__(
        self, name: str, config: FeishuChannel, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        super().__init__(name, (Limit(config.per_second, 1.0),), config.timeout_s)
        self._config = config
        self._http = http
        self._clock = clock

    def size_bytes(self, notice: Notice) -> int:
        # Feishu counts the whole body, its signature too.
        signed = self._config.secret is not None
        return len(json_bytes(self._message(notice))) + _FEISHU_SIGNATURE_BYTES * signed

    @staticmethod
    def _message(notice: Notice) -> dict[str, object]:
        return {"msg_type": "text", "content": {"text": notice.text()}}

    async def send(self, notice: Notice) -> None:
        body = self._message(notice)
        if self._config.secret is not None:
            timestamp_s = self._clock.now_ms() // 1000
            body["timestamp"] = str(timestamp_s)
            body["sign"] = feishu_sign(self._config.secret.get_secret_value(), timestamp_s)
        url = f"{self._config.url.rstrip('/')}/{quote_plus(self._config.hook.get_secret_value())}"
        response = await post(self._http, "Feishu", url, json=body, timeout=self._config.timeout_s)
        answer = json_body(response, "Feishu")
        _raise_for_code(
            "Feishu", answer.get("code", 0), answer.get("msg"), _FEISHU_LIMITED, set(), 1.0
        )
