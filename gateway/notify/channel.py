"""What every channel is: a name, the provider's limits, and `send`, which raises
NotifyError saying whether trying again can help and whether a limit was hit."""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

import httpx

from gateway.errors import NotifyError
from gateway.notify.notice import Notice
from gateway.phone import e164
from gateway.retry_after import retry_after_s

log = logging.getLogger(__name__)
# A provider's word on how long to wait, believed up to a day.
RETRY_AFTER_MAX_S = 86_400.0
# httpx logs every request's URL at INFO, and robots carry their key in the URL.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    window_s: float
    # Per phone number (voice calls) rather than per channel (a group robot).
    per_number: bool = False


class Limiter:
    """Counts sends in a sliding window per key, and keeps keys the provider blocked."""

    def __init__(self, limits: tuple[Limit, ...]) -> None:
        self._limits = limits
        self._sent: dict[tuple[int, str], deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    @property
    def window_s(self) -> float:
        """How far back the sends it counts go."""
        return max((limit.window_s for limit in self._limits), default=0.0)

    def wait_s(self, number: str | None, now_s: float) -> float:
        """0 when a send is allowed now; otherwise how long until it is."""
        blocked_until = self._blocked_until.get("", 0.0)
        if number:
            blocked_until = max(blocked_until, self._blocked_until.get(e164(number), 0.0))
        wait = max(0.0, blocked_until - now_s)
        for key, limit in self._keys(number):
            sent = self._sent.get(key)
            if sent is None:
                continue
            while sent and sent[0] <= now_s - limit.window_s:
                sent.popleft()
            if len(sent) >= limit.count:
                wait = max(wait, sent[0] + limit.window_s - now_s)
        return wait

    def note(self, number: str | None, now_s: float) -> None:
        for key, _ in self._keys(number):
            self._sent.setdefault(key, deque()).append(now_s)

    def _keys(self, number: str | None) -> list[tuple[tuple[int, str], Limit]]:
        """Each limit with the key its sends are counted under: the number's, for a limit
        per number."""
        return [
            ((index, e164(number) if limit.per_number and number else ""), limit)
            for index, limit in enumerate(self._limits)
        ]

    def block(self, until_s: float, number: str | None = None) -> None:
        """No send until `until_s`: through the whole channel, or, with `number`, to that
        number alone (a provider's limit per number leaves the others reachable)."""
        key = e164(number) if number else ""
        self._blocked_until[key] = max(self._blocked_until.get(key, 0.0), until_s)


class Channel(ABC):
    """One configured way to reach people."""

    kind = ""
    # Whether it needs the receiver's phone number (SMS, voice).
    needs_phone = False
    # A message listing several alerts is one send (robots, webhook); not for SMS and
    # voice, whose template carries one alert and its one link.
    digests = True
    # Whether it carries news that an alert is over: not a call, whose template reads
    # out an alarm and tells the receiver to go.
    tells_clearing = True
    # The most the provider takes in a message, in bytes as `size_bytes` measures them:
    # a digest is cut to fit, the rest going in the next.
    max_text_bytes: int | None = None
    # Whether a send that succeeds means the receiver has it (a provider took it for the
    # number or the group). One that cannot tell is not the last channel tried for a
    # critical notice (see gateway.notify.hooks.MqttPublisher).
    confirms = True
    # Whether what it sends carries the notice's link, by which the receiver takes the
    # alert (a voice call reads no address; an SMS template may leave it out).
    links = True

    def __init__(
        self, name: str, limits: tuple[Limit, ...] = (), timeout_s: float | None = None
    ) -> None:
        self.name = name
        self.limiter = Limiter(limits)
        # How long the provider blocks a sender that went over its limit.
        self.blocked_s: float | None = None
        # The most one whole send may take; None: unbounded (the console).
        self.timeout_s = timeout_s

    def size_bytes(self, notice: Notice) -> int:
        """What of `notice` the provider's limit counts: its text, in UTF-8."""
        return len(notice.text().encode())

    @abstractmethod
    async def send(self, notice: Notice) -> None:
        """Deliver, or raise NotifyError."""

    async def deliver(self, notice: Notice) -> None:
        """`send`, with any other error it raises (a fault of the channel's own, or of a
        setting or name it cannot carry) made a final NotifyError: the notification
        goes on to its next channel, and the notify stage, with every alarm behind it,
        goes on. The whole send is bounded by `timeout_s`: an HTTP client's timeout
        counts each read alone, and a server that trickles its answer a byte at a time
        would hold the send for as long as it pleases."""
        bound = asyncio.timeout(self.timeout_s)
        try:
            async with bound:
                await self.send(notice)
        except NotifyError:
            raise
        except TimeoutError as exc:
            if not bound.expired():
                log.exception("channel %s failed on notification %s", self.name, notice.key)
                raise NotifyError(f"the channel failed: {exc!r}", retryable=False) from exc
            raise NotifyError(
                f"{self.name} did not answer within {self.timeout_s:g} s", retryable=True
            ) from exc
        except Exception as exc:
            log.exception("channel %s failed on notification %s", self.name, notice.key)
            raise NotifyError(f"the channel failed: {exc!r}", retryable=False) from exc


# Answers that say to send the request again: the server gave up waiting for it (408),
# or would not take it early (425).
_TRY_AGAIN = (408, 425)


def check_http(response: httpx.Response, provider: str) -> None:
    """Classify an HTTP answer: 429 is a limit, 5xx, 408 and 425 worth retrying, other
    4xx final, and so is a redirect (the client follows none: the notice went nowhere)."""
    if response.status_code == 429:
        raise NotifyError(
            f"{provider} answered 429: over its rate limit",
            retryable=True,
            rate_limited=True,
            retry_after_s=_capped(retry_after_s(response.headers, None)),
        )
    if response.status_code >= 500 or response.status_code in _TRY_AGAIN:
        raise NotifyError(f"{provider} answered {response.status_code}", retryable=True)
    if 300 <= response.status_code < 400:
        # Where to is not said: the address may carry a robot's key, as the URL does.
        raise NotifyError(
            f"{provider} answered {response.status_code}, a redirect: its address has "
            "moved (or wants https), change it in the policy",
            retryable=False,
        )
    if response.status_code >= 400:
        raise NotifyError(
            f"{provider} refused the request: {response.status_code} {response.text[:200]}",
            retryable=False,
        )


def _capped(seconds: float | None) -> float | None:
    return None if seconds is None else min(seconds, RETRY_AFTER_MAX_S)


def json_bytes(payload: object) -> bytes:
    """A JSON body as httpx sends `json=`, to measure it against a provider's limit."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


async def post(
    http: httpx.AsyncClient,
    provider: str,
    url: str,
    *,
    codes_on_4xx: bool = False,
    **kwargs: object,
) -> httpx.Response:
    """POST, turning transport failures into retryable NotifyErrors; never logs the URL,
    which may carry a robot's key. `codes_on_4xx`: a 4xx other than 429 that carries a
    JSON object is returned for the caller to classify by the provider's code in it
    (Aliyun answers its throttling with 400 and `Throttling.User` in the body, which the
    status alone would make a final failure)."""
    try:
        response = await http.post(url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise NotifyError(f"{provider} did not answer in time", retryable=True) from exc
    except httpx.TransportError as exc:
        raise NotifyError(f"{provider} unreachable: {type(exc).__name__}", retryable=True) from exc
    if not (codes_on_4xx and _json_refusal(response)):
        check_http(response, provider)
    return response


def _json_refusal(response: httpx.Response) -> bool:
    """Whether the answer is a 4xx other than 429 whose body is a JSON object."""
    if not 400 <= response.status_code < 500 or response.status_code == 429:
        return False
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


def json_body(response: httpx.Response, provider: str) -> dict[str, object]:
    try:
        body = response.json()
    except ValueError as exc:
        raise NotifyError(f"{provider} answered with no JSON", retryable=True) from exc
    if not isinstance(body, dict):
        raise NotifyError(f"{provider} answered with unexpected JSON", retryable=True)
    return body
