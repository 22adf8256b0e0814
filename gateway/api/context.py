"""What the API's routes share: the gateway, the tokens, the audit, the live values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.audit import AuditLog
from gateway.api.auth import FailureLimiter, Principal, TokenBook
from gateway.api.feed import AlertFeed
from gateway.api.latest import LatestValues
from gateway.config import ApiConfig, ApiToken
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.app import Gateway


class NotFoundError(GatewayError):
    """What a path names does not exist (404)."""


class BadParameterError(GatewayError):
    """A query parameter the route does not take, one given twice, or one at odds with
    another: a misspelt filter must not silently match everything, nor a range that
    ends before it begins match nothing (422)."""


def is_page(path: str) -> bool:
    """Whether a path is a page a person opens (the board, a notification's link, an
    SMS's short link), rather than the API."""
    return path in ("/", "/board") or path.startswith(("/a/", "/s/"))


def strict_query(request: Request) -> None:
    # A page's link is forwarded through messengers that add their own parameters
    # (WeChat's ?from=singlemessage&isappinstalled=0, utm_ tags): a page ignores them.
    if is_page(request.url.path):
        return
    # A probe or a scraper configured with parameters of its own (Prometheus' `params:`)
    # must not take a refusal for the gateway being down.
    if request.url.path.startswith(("/health/", "/metrics")):
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise BadParameterError(f"unknown query parameter(s) {unknown}; this takes: {takes}")
    # Every parameter takes one value; of several, which one counts would be a guess.
    repeated = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
    if repeated:
        raise BadParameterError(f"query parameter(s) {repeated} given more than once")


def _query_names(dependant: Any) -> set[str]:
    names = {str(p.alias) for p in getattr(dependant, "query_params", ())}
    for inner in getattr(dependant, "dependencies", ()):
        names |= _query_names(inner)
    return names


class ApiContext:
    def __init__(self, gateway: Gateway, config: ApiConfig) -> None:
        self.gateway = gateway
        self.config = config
        self.tokens = TokenBook(config.tokens)
        self.limiter = FailureLimiter(gateway.clock, config.auth_failures_per_min)
        self.audit = AuditLog(gateway.config.outbox.path)
        self.latest = LatestValues(gateway.registry)
        self.feed = AlertFeed(gateway.clock)
        gateway.pipeline.listeners.append(self.latest.listen)
        gateway.pipeline.alert_listeners.append(self.feed.alert_changes)
        gateway.pipeline.repeat_listeners.append(self.feed.repeats)
        gateway.desk.listeners.append(self.feed.desk_step)

    def now_ms(self) -> int:
        return self.gateway.clock.now_ms()

    def replace_tokens(self, tokens: Iterable[ApiToken]) -> bool:
        """Whether the tokens changed. If they did, a removed token is refused from the
        next request on, and open event streams end (their clients reconnect, each
        authenticating again)."""
        book = TokenBook(tokens)
        if book == self.tokens:
            return False
        self.tokens = book
        self.feed.bump()
        return True

    def close(self) -> None:
        self.audit.close()


def context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.context)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


_bearer = HTTPBearer(auto_error=False, description="an API token from the `api.tokens` config")


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    ctx = context(request)
    token = credentials.credentials if credentials is not None else None
    return ctx.limiter.authenticate(ctx.tokens, client_address(request), token)


Ctx = Annotated[ApiContext, Depends(context)]
Caller = Annotated[Principal, Depends(caller)]
