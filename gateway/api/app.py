"""The API application: routers, and the one table of errors to responses."""

from __future__ import annotations

import codecs
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.api import alerts, devices, health, metrics, pages, quarantine, rules, silences
from gateway.api.auth import AuthError, ForbiddenError, TooManyFailuresError
from gateway.api.context import (
    ApiContext,
    BadParameterError,
    NotFoundError,
    is_page,
    strict_query,
)
from gateway.config import ApiConfig
from gateway.errors import ConfigError, StoreError
from gateway.notify.link import LinkError
from gateway.rules.book import AlertError
from gateway.rules.silence import SilenceError

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)

# The largest request body a route reads; none needs more than a note or a silence.
MAX_BODY_BYTES = 64 * 1024
# A rule file to check, sent whole.
MAX_RULE_CHECK_BODY_BYTES = rules.MAX_RULE_FILE_BYTES
MAX_BODY_BYTES_BY_PATH = {"/api/v1/rules/check": MAX_RULE_CHECK_BODY_BYTES}


def _alert_status(exc: Exception) -> int:
    return 404 if str(exc).startswith("no alert") else 409


def _config_detail(exc: Exception) -> str:
    if isinstance(exc, ConfigError):
        where = f"{exc.file}: {exc.field}" if exc.field else exc.file
        return f"{where}: {exc.problem}"
    return str(exc)


# Error type -> status; the body says what is wrong. Pages get a Chinese page instead.
ERRORS: dict[type[Exception], Callable[[Exception], int]] = {
    AuthError: lambda _: 401,
    ForbiddenError: lambda _: 403,
    TooManyFailuresError: lambda _: 429,
    NotFoundError: lambda _: 404,
    BadParameterError: lambda _: 422,
    AlertError: _alert_status,
    SilenceError: lambda e: 404 if str(e).startswith("no silence") else 422,
    LinkError: lambda _: 403,
    ConfigError: lambda _: 422,
    StoreError: lambda _: 502,
}


def _route_template(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "(no route)"


def _handler(kind: type[Exception]) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        status = ERRORS[kind](exc)
        headers: dict[str, str] = {}
        if isinstance(exc, TooManyFailuresError):
            headers["Retry-After"] = str(exc.retry_after_s)
        elif isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = "Bearer"
        if status >= 500:
            # The route's template, never the path: a link's path is its token, which
            # alone acts on the alert and shows the wearer's phone.
            log.warning("%s %s failed: %s", request.method, _route_template(request), exc)
        if is_page(request.url.path):
            root = pages.root_of(request.url.path)
            if isinstance(exc, LinkError):
                body = pages.link_error_page(exc, root)
            elif isinstance(exc, TooManyFailuresError):
                body = pages.too_many_page(exc, root)
            else:
                if status < 500:
                    log.info("%s %s failed: %s", request.method, _route_template(request), exc)
                body = pages.failure_page(exc, root)
            return HTMLResponse(body, status_code=status, headers={**headers, **pages.PAGE_HEADERS})
        return JSONResponse({"detail": _config_detail(exc)}, status_code=status, headers=headers)

    return handle


class BodyTooLargeError(HTTPException):
    """A request body over its route's limit (413). An HTTP exception, so that FastAPI
    passes it on when it is raised while the body is read for a route's parameters."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, f"request body over {limit_bytes} bytes ({limit_bytes // 1024} KiB)")


class BodyNotTextError(HTTPException):
    """A JSON body that is not UTF-8 (a note typed in a tool that saves GBK): FastAPI's
    own answer would be a 400 that says only that the body could not be parsed."""

    def __init__(self, error: UnicodeDecodeError, offset: int) -> None:
        byte = error.object[error.start]
        super().__init__(
            422,
            f"body: not UTF-8 (byte 0x{byte:02X} at offset {offset + error.start}); "
            "send it as UTF-8",
        )


def body_limit_bytes(path: str) -> int:
    return MAX_BODY_BYTES_BY_PATH.get(path, MAX_BODY_BYTES)


class BodyLimit:
    """Refuses a request body over its route's limit before the app reads it: FastAPI
    reads a body whole before a route's dependencies ask who is calling, and the API
    shares its process and event loop with the alarms."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit_bytes = body_limit_bytes(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit_bytes:
            too_large = BodyTooLargeError(limit_bytes)
            answer = JSONResponse({"detail": too_large.detail}, status_code=413)
            await answer(scope, receive, send)
            return
        read_bytes = 0
        answering = False
        json = "json" in Headers(scope=scope).get("content-type", "")
        text = codecs.getincrementaldecoder("utf-8")()

        async def receive_within_limit() -> Message:
            nonlocal read_bytes
            # A body sent in chunks, without a length, or longer than it said: no more
            # of it is read once past the limit.
            if read_bytes <= limit_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                chunk = message.get("body", b"")
                if json:
                    try:
                        text.decode(chunk, final=not message.get("more_body", False))
                    except UnicodeDecodeError as exc:
                        raise BodyNotTextError(exc, read_bytes) from exc
                read_bytes += len(chunk)
                if read_bytes <= limit_bytes:
                    return message
            if answering:
                # Too late for a 413 (an event stream): the request ends instead.
                return {"type": "http.disconnect"}
            raise BodyTooLargeError(limit_bytes)

        async def noting_send(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, receive_within_limit, noting_send)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """A bad body or parameter: one line per problem, naming where it is."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = []
    for error in errors:
        if error.get("type") == "json_invalid":
            # Its place is a character of the body, not a field.
            at = error.get("loc", ("body", 0))[-1]
            reason = (error.get("ctx") or {}).get("error", "")
            problems.append(f"body: not valid JSON at character {at}: {reason}".rstrip(": "))
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's answer; but a 405's Allow names every method the address takes: GET
    and POST of one address are two routes, and Starlette names the first's alone."""
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    if exc.status_code == 405:
        # As the document has them: the app's routes are nested in its routers.
        allowed = {
            method.upper()
            for template, operations in request.app.openapi()["paths"].items()
            if compile_path(template)[0].fullmatch(request.url.path)
            for method in operations
        }
        if allowed:
            headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
            return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)
    return await http_exception_handler(request, exc)


def create_app(gateway: Gateway, config: ApiConfig) -> FastAPI:
    app = FastAPI(
        title="community-gateway",
        version=__version__,
        description="Devices, alerts, silences, rules and health of one community gateway.",
        dependencies=[Depends(strict_query)],
    )
    app.state.context = ApiContext(gateway, config)
    for kind in ERRORS:
        app.add_exception_handler(kind, _handler(kind))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodyLimit)
    for module in (devices, alerts, silences, rules, quarantine, health, metrics, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The document, with bad requests described as they are answered: one `detail` line."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = document.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:
            schemas["HTTPValidationError"] = {
                "title": "HTTPValidationError",
                "type": "object",
                "properties": {"detail": {"type": "string", "title": "Detail"}},
                "required": ["detail"],
            }
            schemas.pop("ValidationError", None)
        app.openapi_schema = document
    return app.openapi_schema
