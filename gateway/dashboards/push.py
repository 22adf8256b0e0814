"""Sending the dashboards to a running Grafana over its HTTP API, with grafana-client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import niquests
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

from gateway.errors import GatewayError


class PushError(GatewayError):
    """Grafana could not be reached, refused the credentials or a dashboard."""


@dataclass(frozen=True)
class Credential:
    """A service-account token, or a user and password; never printed."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def for_client(self) -> str | tuple[str, str]:
        if self.token:
            return self.token
        if self.user and self.password is not None:
            return (self.user, self.password)
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
    api = GrafanaApi.from_url(url, credential=credential.for_client(), timeout=timeout_s)
    shown = _without_userinfo(url)
    urls = []
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
            answer = api.dashboard.update_dashboard(payload)
        except GrafanaUnauthorizedError as exc:
            raise PushError(f"Grafana at {shown} refused the credentials (HTTP 401)") from exc
        except GrafanaClientError as exc:
            raise PushError(
                f"Grafana at {shown} refused {name}: HTTP {exc.status_code} {exc.message}"
            ) from exc
        except GrafanaException as exc:
            raise PushError(
                f"Grafana at {shown} failed on {name}: HTTP {exc.status_code} {exc.message}"
            ) from exc
        except (niquests.exceptions.RequestException, OSError) as exc:
            reason = credential.redact(str(exc))
            raise PushError(f"cannot reach Grafana at {shown}: {reason}") from exc
        urls.append(str(answer.get("url", "")) if isinstance(answer, dict) else "")
    return urls


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
