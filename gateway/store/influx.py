"""Writes line protocol to InfluxDB (1.x or 2.x API) or anything that speaks it.

One `write` is one batch. Lines the server refuses (400, or 413 for a single line)
come back in `WriteResult.rejected`; the rest is written. Anything else that goes
wrong raises `StoreError`, saying whether trying again can help; the caller keeps
the batch and decides when to try again.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx

from gateway.clock import Clock, SystemClock
from gateway.config import InfluxConfig
from gateway.errors import StoreError
from gateway.retry_after import retry_after_s

# Level 1: a typical 5,000-line write (1 MB) compressed about 10x. zlib's level 6 gains a
# third more at three times the CPU, which the gateway's 2 cores need more.
GZIP_LEVEL = 1
# Both release the GIL: larger bodies are compressed on another core, off the loop.
_THREAD_COMPRESS_MIN_BYTES = 256 * 1024
_SERVER_TEXT_MAX_CHARS = 500
# What the servers say of a line they refuse (InfluxDB 1.x, 2.x and 3.x, VictoriaMetrics):
# a 400 saying none of it refuses the request itself ("Client sent an HTTP request to an
# HTTPS server", "Please provide either orgID or org", "database is required"), and
# splitting it would quarantine every line of the outbox for a mistake of the config.
_LINE_PROBLEMS = (
    "unable to parse",
    "failed to parse",
    "parsing failed",
    "cannot parse",
    "partial write",
    "field type conflict",
    "beyond retention",
    "outside retention",
    "max-values-per-tag",
    "max-series-per-database",
)


# InfluxDB 1.x (400) and 2.x (422) on points older than the retention keeps.
_BEYOND_RETENTION = re.compile(r"points beyond retention policy dropped=(\d+)")


def _all_expired(text: str, count: int) -> bool:
    found = _BEYOND_RETENTION.search(text)
    return found is not None and int(found.group(1)) == count


def _about_lines(text: str) -> bool:
    lowered = text.lower()
    return any(problem in lowered for problem in _LINE_PROBLEMS)


def gzip_with_zlib(body: bytes) -> bytes:
    return gzip.compress(body, GZIP_LEVEL, mtime=0)


try:
    from isal import igzip
except ImportError:  # no build of ISA-L for this machine (32-bit ARM, say)
    compress = gzip_with_zlib
else:

    def gzip_with_isal(body: bytes) -> bytes:
        # ISA-L's level 1 took a quarter of zlib's CPU on the bench fleet's writes (0.17
        # against 0.67 µs a line) and compressed them a little better (10.7x against 9.9).
        return igzip.compress(body, GZIP_LEVEL, mtime=0)

    compress = gzip_with_isal


@dataclass(frozen=True, slots=True)
class RejectedLine:
    line: str
    reason: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    accepted_lines: int
    rejected: tuple[RejectedLine, ...]
    requests: int
    # Lines the database dropped as older than its retention policy keeps.
    expired_lines: int = 0


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)
    expired: int = 0


class InfluxWriter:
    """Sends batches of lines to one database or bucket.

    Use as an async context manager; it closes the HTTP client only if it made it.
    """

    def __init__(
        self,
        config: InfluxConfig,
        client: httpx.AsyncClient | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=config.timeout_s)
        self._clock = clock if clock is not None else SystemClock()
        base_url = config.url.rstrip("/")
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._secrets: tuple[str, ...] = ()
        if config.api == "v1":
            self._endpoint = f"{base_url}/write"
            self._target = f"database {config.database!r}"
            self._params = {"db": config.database}
            if config.retention_policy:
                self._params["rp"] = config.retention_policy
            if config.username:
                # InfluxDB 1.x prefers Basic auth to u/p query parameters, which
                # end up in access logs.
                password = config.password.get_secret_value() if config.password else ""
                credentials = f"{config.username}:{password}".encode()
                self._headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
                self._secrets = (password,) if password else ()
        else:
            self._endpoint = f"{base_url}/api/v2/write"
            self._target = f"bucket {config.bucket!r}"
            self._params = {}
            if config.org:
                self._params["org"] = config.org
            self._params["bucket"] = config.bucket or ""
            if config.token:
                token = config.token.get_secret_value()
                self._headers["Authorization"] = f"Token {token}"
                self._secrets = (token,) if token else ()
        self._params["precision"] = "ms"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def write(self, lines: Sequence[str]) -> WriteResult:
        """Write `lines`; refused lines are returned, not raised.

        Raises StoreError when the whole batch could not be written; some of it may
        have been, which is harmless to repeat: a point with the same series and time
        overwrites itself.
        """
        if not lines:
            return WriteResult(accepted_lines=0, rejected=(), requests=0)
        tally = _Tally()
        accepted = await self._write_part(list(lines), tally)
        return WriteResult(
            accepted_lines=accepted,
            rejected=tuple(tally.rejected),
            requests=tally.requests,
            expired_lines=tally.expired,
        )

    async def _write_part(self, lines: list[str], tally: _Tally) -> int:
        response = await self._post(lines)
        tally.requests += 1
        status = response.status_code
        if 200 <= status < 300:
            return len(lines)
        # 400: a line is malformed or conflicts with stored data; InfluxDB 1.x has
        # still written the others ("partial write"), but does not say which line
        # failed. Halving finds each bad line in about 2*log2(n) requests; rewriting
        # the good halves is safe as points are idempotent. 413: the body is too large.
        # 422 (InfluxDB 2.x): points outside the retention period.
        if status not in (400, 413, 422):
            raise self._status_error(response)
        text = self._server_text(response)
        if status != 413 and _all_expired(text, len(lines)):
            # A backlog older than the retention (an outage longer than it): the policy
            # the database keeps, not a bad line, and settled in one request, where
            # halving cost two a line and pushed the real refusals out of the quarantine.
            tally.expired += len(lines)
            return 0
        if status != 413 and not _about_lines(text):
            raise self._status_error(response)
        if len(lines) == 1:
            tally.rejected.append(RejectedLine(line=lines[0], reason=f"{status}: {text}"))
            return 0
        middle = len(lines) // 2
        first = await self._write_part(lines[:middle], tally)
        return first + await self._write_part(lines[middle:], tally)

    async def _post(self, lines: list[str]) -> httpx.Response:
        body = "\n".join(lines).encode()
        if self._config.gzip:
            if len(body) >= _THREAD_COMPRESS_MIN_BYTES:
                body = await asyncio.to_thread(compress, body)
            else:
                body = compress(body)
        try:
            return await self._client.post(
                self._endpoint, params=self._params, headers=self._headers, content=body
            )
        except httpx.TimeoutException as exc:
            raise StoreError(
                f"InfluxDB at {self._config.url} did not answer within "
                f"{self._config.timeout_s} s ({type(exc).__name__})",
                retryable=True,
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise StoreError(
                f"InfluxDB url {self._config.url!r} is not an http(s) URL", retryable=False
            ) from exc
        except httpx.TransportError as exc:
            raise StoreError(
                f"cannot reach InfluxDB at {self._config.url}: "
                f"{type(exc).__name__}: {self._scrub(str(exc))}",
                retryable=True,
            ) from exc
        except httpx.HTTPError as exc:
            # An answer that cannot be read (a proxy's body labelled gzip that is not):
            # a failed write, tried again, never the end of the drain.
            raise StoreError(
                f"InfluxDB at {self._config.url} answered what cannot be read: "
                f"{type(exc).__name__}: {self._scrub(str(exc))}",
                retryable=True,
            ) from exc

    def _status_error(self, response: httpx.Response) -> StoreError:
        status = response.status_code
        text = self._server_text(response)
        where = f"InfluxDB at {self._config.url}"
        if status == 429 or status >= 500:
            if "retention policy not found" in text:
                # InfluxDB 1.x answers 500 for a misspelt retention policy: no retry fixes it.
                return StoreError(
                    f"{where}: retention policy {self._config.retention_policy!r} not found "
                    f"in {self._target} ({status}: {text})",
                    retryable=False,
                )
            return StoreError(
                f"{where} answered {status}: {text}",
                retryable=True,
                retry_after_s=self._retry_after_s(response.headers),
            )
        if status == 401:
            return StoreError(f"{where}: {self._credentials_problem()} ({text})", retryable=False)
        if status == 403:
            return StoreError(
                f"{where}: {self._who()} may not write to {self._target} ({text})",
                retryable=False,
            )
        if status == 404:
            if "not found" in text and ("database" in text or "bucket" in text):
                return StoreError(f"{where}: {self._target} not found ({text})", retryable=False)
            return StoreError(
                f"{where}: no write endpoint at {self._endpoint} (404: {text or 'no body'}); "
                f"is api {self._config.api!r} right for this server?",
                retryable=False,
            )
        if status in (400, 422):
            return StoreError(
                f"{where} refused the write itself, not a line of it ({status}: {text}); "
                "the lines wait in the outbox",
                retryable=False,
            )
        return StoreError(f"{where} answered {status}: {text}", retryable=False)

    def _credentials_problem(self) -> str:
        if self._config.api == "v1":
            if self._config.username:
                return f"username {self._config.username!r} or its password was refused"
            return "authentication is required: set username and password"
        if self._config.token:
            return "the token was refused"
        return "authentication is required: set token"

    def _who(self) -> str:
        if self._config.api == "v1" and self._config.username:
            return f"user {self._config.username!r}"
        return "this token" if self._config.token else "an anonymous client"

    def _server_text(self, response: httpx.Response) -> str:
        """The server's error message: `error` (1.x) or `message` (2.x) of a JSON body."""
        text = response.text.strip()
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            for key in ("error", "message"):
                value = body.get(key)
                if isinstance(value, str):
                    text = value
                    break
        return self._scrub(text[:_SERVER_TEXT_MAX_CHARS])

    def _scrub(self, text: str) -> str:
        # A server or proxy could echo a credential back; it must not reach a log.
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _retry_after_s(self, headers: httpx.Headers) -> float | None:
        return retry_after_s(headers, self._clock.now_ms() / 1000.0)
