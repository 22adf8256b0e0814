"""SMS and voice calls through Aliyun (阿里云) and Tencent Cloud (腾讯云).

Both take a template and its variables, as configured with the provider; each request
is signed as the provider's API requires (Aliyun's RPC HMAC-SHA1, Tencent's
TC3-HMAC-SHA256) and carries the notification's key (Aliyun `OutId`, Tencent
`SessionContext`) so that a send can be traced and matched to its receipt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

import httpx
import orjson

from gateway.clock import CHINA_STANDARD_TIME, Clock
from gateway.errors import NotifyError
from gateway.notify.channel import Channel, Limit, json_body, post
from gateway.notify.notice import Notice
from gateway.notify.policy import (
    AliyunSmsChannel,
    AliyunVoiceChannel,
    TencentSmsChannel,
    TencentVoiceChannel,
)
from gateway.phone import dialled_in_mainland, e164


class _CloudChannel(Channel):
    """A provider API called with a template and its variables, for a phone number."""

    needs_phone = True
    digests = False

    def __init__(
        self,
        name: str,
        config: AliyunSmsChannel | AliyunVoiceChannel | TencentSmsChannel | TencentVoiceChannel,
        http: httpx.AsyncClient,
        clock: Clock,
        limits: tuple[Limit, ...] = (),
    ) -> None:
        super().__init__(name, limits, config.timeout_s)
        self._params = config.params
        # The providers take no address in a template's variables, and cut them at 35
        # characters: an SMS brings the link only as its short code, written after the
        # address in the template's text. A call reads out no link.
        calls = isinstance(config, AliyunVoiceChannel | TencentVoiceChannel)
        self.links = "link_code" in config.params and not calls
        self._http = http
        self._clock = clock


def until_china_midnight_s(now_ms: int) -> float:
    """Seconds from `now_ms` to the next midnight in China, where a provider's count per
    calendar day starts again."""
    now = datetime.fromtimestamp(now_ms / 1000, CHINA_STANDARD_TIME)
    midnight = datetime(now.year, now.month, now.day, tzinfo=CHINA_STANDARD_TIME) + timedelta(
        days=1
    )
    return (midnight - now).total_seconds()


# --- Aliyun ---------------------------------------------------------------------------

# Over a limit: isv.BUSINESS_LIMIT_CONTROL, a number's limit per minute, hour or day,
# its message saying which ("触发天级流控Permits:10"); Throttling, Throttling.User and
# Throttling.Api, the API's own rate limit for the account, answered with HTTP 400.
# isv.DAY_LIMIT_CONTROL and isv.MONTH_LIMIT_CONTROL are the account's quota set in
# Aliyun's console: final, so that the notice goes on by its next channel.
_ALIYUN_LIMITED = ("isv.BUSINESS_LIMIT_CONTROL", "Throttling")
_ALIYUN_ACCOUNT_LIMITED = "Throttling"
# Those its error pages say to try again later; other isp. codes (isp.RAM_PERMISSION_DENY:
# the RAM user lacks the permission) no retry mends.
_ALIYUN_BUSY = ("isp.SYSTEM_ERROR", "isp.UNKNOWN_ERR_CODE", "InternalError", "ServiceUnavailable")
# Aliyun counts a number's day from each send to the same time the next day, not from
# midnight: a number over it is reachable again within a day, at a time only Aliyun knows.
_ALIYUN_DAY_S = 86_400.0


def _percent(value: str) -> str:
    # RFC 3986, as Aliyun's canonical form wants: space as %20, ~ unescaped.
    return quote(value, safe="~")


def aliyun_signature(secret: str, method: str, params: dict[str, str]) -> str:
    canonical = "&".join(f"{_percent(k)}={_percent(v)}" for k, v in sorted(params.items()))
    to_sign = f"{method}&{_percent('/')}&{_percent(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class _Aliyun(_CloudChannel):
    _version = "2017-05-25"

    def __init__(
        self,
        name: str,
        config: AliyunSmsChannel | AliyunVoiceChannel,
        http: httpx.AsyncClient,
        clock: Clock,
        limits: tuple[Limit, ...] = (),
    ) -> None:
        super().__init__(name, config, http, clock, limits)
        self._config = config

    def _values(self, notice: Notice) -> str:
        values = notice.template_values()
        return orjson.dumps({name: values[name] for name in self._params}).decode()

    async def _call(self, action: str, fields: dict[str, str], provider: str) -> None:
        config = self._config
        now = datetime.fromtimestamp(self._clock.now_ms() / 1000, UTC)
        params = {
            "AccessKeyId": config.access_key_id,
            "Action": action,
            "Format": "JSON",
            "RegionId": config.region,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": self._version,
            **fields,
        }
        params["Signature"] = aliyun_signature(
            config.access_key_secret.get_secret_value(), "POST", params
        )
        response = await post(self._http, provider, config.url, codes_on_4xx=True,
                              data=params, timeout=config.timeout_s)  # fmt: skip
        body = json_body(response, provider)
        code = str(body.get("Code", ""))
        if code == "OK":
            return
        message = str(body.get("Message", ""))
        text = f"{provider} refused: {code} {message}"
        if code.startswith(_ALIYUN_LIMITED):
            wait_s = _ALIYUN_DAY_S if "天级" in message else 60.0
            raise NotifyError(text, retryable=True, rate_limited=True, retry_after_s=wait_s,
                              account_wide=code.startswith(_ALIYUN_ACCOUNT_LIMITED))  # fmt: skip
        raise NotifyError(text, retryable=code.startswith(_ALIYUN_BUSY))


class AliyunSms(_Aliyun):
    kind = "aliyun_sms"

    def __init__(
        self, name: str, config: AliyunSmsChannel, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        super().__init__(name, config, http, clock)
        self._sms = config

    async def send(self, notice: Notice) -> None:
        fields = {
            "PhoneNumbers": _aliyun_number(notice.phone),
            "SignName": self._sms.sign_name,
            "TemplateCode": self._sms.template_code,
            "TemplateParam": self._values(notice),
            "OutId": notice.key,
        }
        await self._call("SendSms", fields, "Aliyun SMS")


class AliyunVoice(_Aliyun):
    kind = "aliyun_voice"
    tells_clearing = False

    def __init__(
        self, name: str, config: AliyunVoiceChannel, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        limits = (Limit(config.per_number_per_minute, 60.0, per_number=True),)
        super().__init__(name, config, http, clock, limits)
        self._voice = config

    async def send(self, notice: Notice) -> None:
        fields = {
            "CalledNumber": _aliyun_number(notice.phone),
            "TtsCode": self._voice.tts_code,
            "TtsParam": self._values(notice),
            "PlayTimes": str(self._voice.play_times),
            "OutId": notice.key,
        }
        if self._voice.called_show_number:
            fields["CalledShowNumber"] = self._voice.called_show_number
        await self._call("SingleCallByTts", fields, "Aliyun voice")


# --- Tencent Cloud --------------------------------------------------------------------

# Over a limit: LimitExceeded.PhoneNumberThirtySecondLimit, ...OneHourLimit and
# ...DailyLimit, a number's; LimitExceeded.AppDailyLimit, the application's, and
# RequestLimitExceeded, the API's own rate limit for the account: these two hold every
# number. The application's limits of a region (AppMainlandChinaDailyLimit,
# AppGlobalDailyLimit and DailyLimit for international and Hong Kong, Macao and Taiwan
# numbers, AppCountryOrRegionDailyLimit) hold the number alone: numbers of other regions
# still get through. Tencent answers them with HTTP 200 and the code in `Response.Error`
# or the number's `SendStatusSet` entry. Those named ...DailyLimit count the calendar
# day in China, and hold until its midnight. LimitExceeded.AppCountryOrRegionInBlacklist
# is no limit but the application's list of regions, which no wait changes: final.
_TENCENT_LIMITED = ("LimitExceeded", "RequestLimitExceeded")
_TENCENT_ACCOUNT_LIMITED = ("LimitExceeded.AppDailyLimit", "RequestLimitExceeded")
_TENCENT_DAILY = "DailyLimit"
_TENCENT_REFUSED = "InBlacklist"
_TENCENT_BUSY = ("InternalError", "ResourceUnavailable")


def tencent_authorization(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    timestamp_s: int,
    payload: bytes,
    content_type: str,
) -> str:
    """TC3-HMAC-SHA256 over content-type and host, as Tencent Cloud API 3.0 signs."""
    canonical_request = "\n".join(
        [
            "POST",
            "/",
            "",
            f"content-type:{content_type}\nhost:{host}\n",
            "content-type;host",
            hashlib.sha256(payload).hexdigest(),
        ]
    )
    date = datetime.fromtimestamp(timestamp_s, UTC).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    to_sign = "\n".join(
        [
            "TC3-HMAC-SHA256",
            str(timestamp_s),
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )

    def sign(key: bytes, message: str) -> bytes:
        return hmac.new(key, message.encode(), hashlib.sha256).digest()

    key = sign(sign(sign(f"TC3{secret_key}".encode(), date), service), "tc3_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, "
        f"SignedHeaders=content-type;host, Signature={signature}"
    )


class _Tencent(_CloudChannel):
    _service = ""
    _version = ""
    _action = ""

    def __init__(
        self,
        name: str,
        config: TencentSmsChannel | TencentVoiceChannel,
        http: httpx.AsyncClient,
        clock: Clock,
        limits: tuple[Limit, ...] = (),
    ) -> None:
        super().__init__(name, config, http, clock, limits)
        self._config = config

    def _values(self, notice: Notice) -> list[str]:
        values = notice.template_values()
        return [values[name] for name in self._params]

    async def _call(self, body: dict[str, object], provider: str) -> dict[str, object]:
        config = self._config
        payload = orjson.dumps(body)
        content_type = "application/json; charset=utf-8"
        timestamp_s = self._clock.now_ms() // 1000
        host = urlsplit(config.url).netloc
        headers = {
            "Authorization": tencent_authorization(
                secret_id=config.secret_id,
                secret_key=config.secret_key.get_secret_value(),
                service=self._service,
                host=host,
                timestamp_s=timestamp_s,
                payload=payload,
                content_type=content_type,
            ),
            "Content-Type": content_type,
            "Host": host,
            "X-TC-Action": self._action,
            "X-TC-Timestamp": str(timestamp_s),
            "X-TC-Version": self._version,
            "X-TC-Region": config.region,
        }
        response = await post(self._http, provider, config.url, content=payload,
                              headers=headers, timeout=config.timeout_s)  # fmt: skip
        answer = json_body(response, provider).get("Response")
        if not isinstance(answer, dict):
            raise NotifyError(f"{provider} answered without a Response", retryable=True)
        error = answer.get("Error")
        if isinstance(error, dict):
            self._refuse(provider, str(error.get("Code", "")), str(error.get("Message", "")))
        return answer

    def _refuse(self, provider: str, code: str, message: str) -> None:
        text = f"{provider} refused: {code} {message}"
        if code.startswith(_TENCENT_LIMITED) and not code.endswith(_TENCENT_REFUSED):
            wait_s = 60.0
            if code.endswith(_TENCENT_DAILY):
                wait_s = until_china_midnight_s(self._clock.now_ms())
            raise NotifyError(text, retryable=True, rate_limited=True, retry_after_s=wait_s,
                              account_wide=code.startswith(_TENCENT_ACCOUNT_LIMITED))  # fmt: skip
        raise NotifyError(text, retryable=code.startswith(_TENCENT_BUSY))


class TencentSms(_Tencent):
    kind = "tencent_sms"
    _service = "sms"
    _version = "2021-01-11"
    _action = "SendSms"

    def __init__(
        self, name: str, config: TencentSmsChannel, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        super().__init__(name, config, http, clock)
        self._sms = config

    async def send(self, notice: Notice) -> None:
        answer = await self._call(
            {
                "PhoneNumberSet": [_e164(notice.phone)],
                "SmsSdkAppId": self._sms.sdk_app_id,
                "SignName": self._sms.sign_name,
                "TemplateId": self._sms.template_id,
                "TemplateParamSet": self._values(notice),
                "SessionContext": notice.key,
            },
            "Tencent SMS",
        )
        # The request may succeed while the message to the number does not.
        statuses = answer.get("SendStatusSet")
        if isinstance(statuses, list) and statuses and isinstance(statuses[0], dict):
            code = str(statuses[0].get("Code", ""))
            if code != "Ok":
                self._refuse("Tencent SMS", code, str(statuses[0].get("Message", "")))


class TencentVoice(_Tencent):
    kind = "tencent_voice"
    tells_clearing = False
    _service = "vms"
    _version = "2020-09-02"
    _action = "SendTtsVoice"

    def __init__(
        self, name: str, config: TencentVoiceChannel, http: httpx.AsyncClient, clock: Clock
    ) -> None:
        limits = (Limit(config.per_number_per_minute, 60.0, per_number=True),)
        super().__init__(name, config, http, clock, limits)
        self._voice = config

    async def send(self, notice: Notice) -> None:
        await self._call(
            {
                "TemplateId": self._voice.template_id,
                "TemplateParamSet": self._values(notice),
                "CalledNumber": _e164(notice.phone),
                "VoiceSdkAppid": self._voice.voice_sdk_app_id,
                "PlayTimes": self._voice.play_times,
                "SessionContext": notice.key,
            },
            "Tencent voice",
        )


def _aliyun_number(phone: str | None) -> str:
    """As Aliyun's SMS and voice APIs take a number: a mainland one as dialled there (a
    landline with its trunk 0, 037166123456), another with its country code and no +
    (85291234567)."""
    if not phone:
        raise NotifyError("the receiver has no phone number", retryable=False)
    return dialled_in_mainland(phone).removeprefix("+")


def _e164(phone: str | None) -> str:
    if not phone:
        raise NotifyError("the receiver has no phone number", retryable=False)
    return e164(phone)
