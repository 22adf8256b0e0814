"""Signed, expiring links in notifications, through which a person takes an alert.

A link carries the alert, the receiver it was sent to and when it expires, signed with
the gateway's secret: whoever holds it may act on that one alert, as that receiver,
until it expires, and on nothing else; and only while the notification policy still
tells that receiver (the gateway checks when the link is opened).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

from gateway.errors import GatewayError

_SALT = "alert-link"
# A link sent to someone the notification policy no longer names.
RECEIVER_GONE = "this link's receiver is no longer told of alerts"
SECRET_FILE_NAME = "link-secret"


class LinkError(GatewayError):
    """A link that is forged, damaged or expired."""


@dataclass(frozen=True, slots=True)
class AlertLink:
    alert_id: str
    receiver: str
    expires_ms: int


class LinkSigner:
    def __init__(self, secret: str, base_url: str, ttl_s: float) -> None:
        self._serializer = URLSafeSerializer(secret, salt=_SALT)
        self._base_url = base_url.rstrip("/")
        self._ttl_ms = round(ttl_s * 1000)

    def token(self, alert_id: str, receiver: str, now_ms: int) -> str:
        payload = {"a": alert_id, "r": receiver, "e": now_ms + self._ttl_ms}
        return str(self._serializer.dumps(payload))

    def url(self, alert_id: str, receiver: str, now_ms: int) -> str:
        return f"{self._base_url}/a/{self.token(alert_id, receiver, now_ms)}"

    def verify(self, token: str, now_ms: int) -> AlertLink:
        try:
            payload = self._serializer.loads(token)
        except BadSignature as exc:
            raise LinkError("this link is not valid") from exc
        if not isinstance(payload, dict):
            raise LinkError("this link is not valid")
        link = AlertLink(str(payload.get("a")), str(payload.get("r")), int(payload.get("e", 0)))
        if link.expires_ms <= now_ms:
            raise LinkError("this link has expired")
        return link


def link_secret(configured: str | None, folder: Path) -> str:
    """The configured secret, or one made once and kept beside the outbox, so that links
    sent before a restart still open after it."""
    if configured:
        return configured
    path = folder / SECRET_FILE_NAME
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secret + "\n")
    return secret
