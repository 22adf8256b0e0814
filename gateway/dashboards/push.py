"""Sending the dashboards to a running Grafana over its HTTP API.

One documented call, `POST /api/dashboards/db`, made with httpx, which the gateway
already uses. grafana-client, the maintained client, was used first; since its 4.0 it
depends on niquests, whose urllib3-future replaces the urllib3 of every package in the
environment when Python starts (a .pth hook), which broke requests-based tools beside
the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from gateway.errors import GatewayError


class PushError(GatewayError):
    """Grafana could not be reached, refused the credentials or a dashboard."""


@dataclass(frozen=True)
class Credential:
    """A service-account token, or a user and password; never printed."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def auth(self) -> httpx.Auth:
        if self.token:
            return _Bearer(self.token)
        if self.user and self.password is not None:
            return httpx.BasicAuth(self.user, self.password)
        raise PushError("give a Grafana token (--token or GRAFANA_TOKEN), or a user and password")

    def redact(self, text: str) -> str:
        for secret in (self.token, self.password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"Credential(token={'***' if self.token else None}, user={self.user!r})"


def push_dashboards(
    url: str,
    credential: Credential,
    dashboards: Mapping[str, dict[str, Any]],
    *,
    folder_uid: str | None = None,
    timeout_s: float = 10.0,
) -> list[str]:
    """Create or replace each dashboard; returns the URL Grafana gives each one."""
    auth = credential.auth()
    shown = _without_userinfo(url)
    endpoint = url.rstrip("/") + API_PATH
    urls = []
    with httpx.Client(auth=auth, timeout=timeout_s) as http:
        for name, board in dashboards.items():
            payload: dict[str, Any] = {
                # Without the numeric id Grafana matches the dashboard by uid.
                "dashboard": {key: value for key, value in board.items() if key != "id"},
                "overwrite": True,
                "message": "community-gateway push-dashboards",
            }
            if folder_uid:
                payload["folderUid"] = folder_uid
            try:
                response = http.post(endpoint, json=payload)
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                # A mistyped address (a port of letters, an unclosed [) is not an HTTPError.
                reason = credential.redact(str(exc) or type(exc).__name__)
                raise PushError(f"cannot reach Grafana at {shown}: {reason}") from exc
            if response.status_code == 401:
                raise PushError(f"Grafana at {shown} refused the credentials (HTTP 401)")
            if response.status_code >= 400:
                what = "refused" if response.status_code < 500 else "failed on"
                raise PushError(
                    f"Grafana at {shown} {what} {name}: HTTP {response.status_code} "
                    f"{_message(response)}"
                )
            if not response.is_success:
                raise _redirected(response, shown, credential)
            urls.append(str(_answer(response, shown, name).get("url", "")))
    return urls


API_PATH = "/api/dashboards/db"


def _redirected(response: httpx.Response, shown: str, credential: Credential) -> PushError:
    """Redirects are not followed: a POST redirected by a 301 or 302 becomes a GET, and
    a sign-in page is no place to save dashboards; the address to give instead is."""
    status = response.status_code
    location = response.headers.get("Location")
    if not location:
        return PushError(f"{shown} answered HTTP {status}, not as Grafana's API does")
    target = credential.redact(_without_userinfo(str(response.url.join(location))))
    parts = urlsplit(target)
    if parts.path.endswith(API_PATH) and not parts.query:
        # Sent on to Grafana's API elsewhere: from http to https, or another host name.
        address = urlunsplit(parts._replace(path=parts.path.removesuffix(API_PATH)))
        return PushError(
            f"{shown} redirected the request to {target} (HTTP {status}): "
            f"give that address, {address}"
        )
    return PushError(
        f"{shown} redirected the request to {target} (HTTP {status}), a sign-in page or "
        "another site rather than Grafana's API: give the address Grafana answers on"
    )


def _answer(response: httpx.Response, shown: str, name: str) -> dict[str, Any]:
    """Grafana answers a dashboard saved with a JSON object; anything else is some other
    server at that address, such as a proxy's sign-in page."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        kind = response.headers.get("Content-Type", "no content type")
        first = " ".join(response.text[:80].split()) or "an empty body"
        raise PushError(
            f"{shown} answered {name} with HTTP {response.status_code} ({kind}) that is "
            f"not Grafana's API: {first}"
        )
    return answer


class _Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", "")) if isinstance(body, dict) else ""


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
