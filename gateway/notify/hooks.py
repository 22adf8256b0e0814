"""Channels to other systems: a generic webhook, an MQTT topic for a grid-worker app, and
the console."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Protocol
from urllib.parse import quote

import httpx
import orjson

from gateway.errors import NotifyError
from gateway.notify.channel import Channel, post
from gateway.notify.notice import Notice
from gateway.notify.policy import MqttChannel, WebhookChannel

log = logging.getLogger(__name__)


class Publish(Protocol):
    """Publish at QoS 1 and wait, at most `timeout_s`, until the broker acknowledged it."""

    def __call__(self, topic: str, payload: bytes, timeout_s: float) -> Awaitable[None]: ...


# A name put in a topic stays one level, and never a wildcard: a broker drops the
# connection that publishes to a topic with `+` or `#` (a contact's "+86..." number, say),
# and with it the alarms that come in on it.
_TOPIC_ESCAPES = str.maketrans({"%": "%25", "+": "%2B", "#": "%23", "/": "%2F", "\0": "%00"})


def notice_document(notice: Notice) -> dict[str, object]:
    """The JSON a webhook or an app receives: stable names, times in epoch ms."""
    return {
        "key": notice.key,
        "kind": notice.kind,
        "alert_id": notice.alert_id,
        "rule": notice.rule,
        "title": notice.title,
        "severity": notice.severity,
        "life_safety": notice.life_safety,
        "state": "resolved" if notice.kind in ("resolved", "fault_cleared") else "firing",
        "device": {
            "community": notice.community,
            "device_type": notice.device_type,
            "device_id": notice.device_id,
            "port": notice.port,
        },
        "place": notice.place,
        "started_ms": notice.started_ms,
        "time": notice.time_text,
        "receiver": notice.receiver,
        "ack_url": notice.link,
        "map_url": notice.map_url,
        "text": notice.text(),
        "alerts": list(notice.lines),
    }


class Webhook(Channel):
    kind = "webhook"

    def __init__(self, name: str, config: WebhookChannel, http: httpx.AsyncClient) -> None:
        super().__init__(name, timeout_s=config.timeout_s)
        self._config = config
        self._http = http

    async def send(self, notice: Notice) -> None:
        headers = {k: v.get_secret_value() for k, v in self._config.headers.items()}
        # A receiver that saw this key already can drop the copy a retry may bring. A
        # header is ASCII: names in Chinese go percent-encoded, as in a URL.
        headers["Idempotency-Key"] = quote(notice.key, safe="/:+")
        headers["Content-Type"] = "application/json"
        await post(
            self._http,
            "webhook",
            self._config.url,
            content=orjson.dumps(notice_document(notice)),
            headers=headers,
            timeout=self._config.timeout_s,
        )


class MqttPublisher(Channel):
    """The document at QoS 1 on the receiver's topic, for a grid-worker app.

    The broker's PUBACK says the broker has it, not the app: a broker acknowledges a
    publish nobody subscribes to (an app offline, a phone switched off) and drops it.
    So this channel cannot confirm the receiver got a notice, and is not final for a
    critical one (severity critical, or life-safety): after it, the notice goes by the
    receiver's next channel as well. Other notices stop here once the broker took them.
    """

    kind = "mqtt"
    confirms = False

    def __init__(self, name: str, config: MqttChannel, publish: Publish | None) -> None:
        super().__init__(name, timeout_s=config.timeout_s)
        self._config = config
        self._publish = publish

    async def send(self, notice: Notice) -> None:
        if self._publish is None:
            raise NotifyError("no MQTT broker is configured", retryable=False)
        topic = self._config.topic.format(
            community=notice.community.translate(_TOPIC_ESCAPES),
            receiver=notice.receiver.translate(_TOPIC_ESCAPES),
        )
        await self._publish(topic, orjson.dumps(notice_document(notice)), self._config.timeout_s)


class Console(Channel):
    kind = "console"

    def __init__(self, name: str) -> None:
        super().__init__(name)

    async def send(self, notice: Notice) -> None:
        log.warning("notify %s: %s", notice.receiver, notice.text().replace("\n", " | "))
