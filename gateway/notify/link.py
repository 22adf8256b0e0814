"""Signed, expiring links in notifications, through which a person takes an alert.

A link carries the alert, the receiver it was sent to and when it expires, signed with
the gateway's secret: whoever holds it may act on that one alert, as that receiver,
until it expires, and on nothing else; and only while the notification policy still
tells that receiver (the gateway checks when the link is opened).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

from gateway.errors import GatewayError
from gateway.statefile import write_durably

log = logging.getLogger(__name__)

_SALT = "alert-link"
# A link sent to someone the notification policy no longer names.
RECEIVER_GONE = "this link's receiver is no longer told of alerts"
SECRET_FILE_NAME = "link-secret"
# A shorter secret could be found offline from any link posted to a group chat, and
# would then sign links to any alert as anyone.
MIN_SECRET_CHARS = 32
# What `LinkSigner.code` makes: 16 characters of base32, in small letters.
SHORT_CODE = re.compile(r"[a-z2-7]{16}")


class LinkError(GatewayError):
    """A link that is forged, damaged or expired."""


class UnsignedLinkError(LinkError):
    """A link whose signature does not hold: forged, damaged or cut short."""


@dataclass(frozen=True, slots=True)
class AlertLink:
    alert_id: str
    receiver: str
    expires_ms: int


class LinkSigner:
    def __init__(self, secret: str, base_url: str, ttl_s: float) -> None:
        self._serializer = URLSafeSerializer(secret, salt=_SALT)
        self._code_key = hmac.new(secret.encode(), b"short-link", hashlib.sha256).digest()
        self._base_url = base_url.rstrip("/")
        self._ttl_ms = round(ttl_s * 1000)

    def token(self, alert_id: str, receiver: str, now_ms: int) -> str:
        payload = {"a": alert_id, "r": receiver, "e": now_ms + self._ttl_ms}
        return str(self._serializer.dumps(payload))

    def url(self, alert_id: str, receiver: str, now_ms: int) -> str:
        return self.url_of(self.token(alert_id, receiver, now_ms))

    def url_of(self, token: str) -> str:
        """The link of a token, at the gateway's address now (`api.public_url`)."""
        return f"{self._base_url}/a/{token}"

    def code(self, notification_key: str) -> str:
        """A notification's short code, which an SMS template can carry (its variables
        take 35 characters, and no address): `{public_url}/s/{code}` leads to its link.
        80 bits, so that codes are not guessed; the same for the same notification."""
        digest = hmac.new(self._code_key, notification_key.encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode().lower()

    def verify(self, token: str, now_ms: int) -> AlertLink:
        try:
            payload = self._serializer.loads(token)
        except BadSignature as exc:
            raise UnsignedLinkError("this link is not valid") from exc
        if not isinstance(payload, dict):
            raise UnsignedLinkError("this link is not valid")
        link = AlertLink(str(payload.get("a")), str(payload.get("r")), int(payload.get("e", 0)))
        if link.expires_ms <= now_ms:
            raise LinkError("this link has expired")
        return link


def link_secret(configured: str | None, folder: Path) -> str:
    """The configured secret, or one made once and kept beside the outbox, so that links
    sent before a restart still open after it.

    A kept secret that is empty, short or garbled (a crash or a full disk while it was
    first written) is replaced: signing with it would let anyone forge links."""
    if configured:
        return configured
    path = folder / SECRET_FILE_NAME
    try:
        kept = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        kept = None
    except UnicodeDecodeError:
        kept = ""
    if kept is not None:
        if len(kept) >= MIN_SECRET_CHARS and kept.isprintable():
            return kept
        log.warning(
            "%s holds no usable link secret (empty, garbled or under %d characters): "
            "a new one replaces it, and links sent before no longer open",
            path, MIN_SECRET_CHARS,
        )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    write_durably(path, (secret + "\n").encode("ascii"))
    return secret
