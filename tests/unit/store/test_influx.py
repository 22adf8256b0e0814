from __future__ import annotations

import base64
import gzip
import math
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from packaging.requirements import Requirement

from gateway import PROJECT_ROOT
from gateway.clock import ManualClock
from gateway.config import InfluxConfig
from gateway.errors import StoreError
from gateway.retry_after import parse_retry_after_s
from gateway.store import influx
from gateway.store.influx import InfluxWriter, RejectedLine, WriteResult

PASSWORD = "pa55-w0rd-very-secret"
TOKEN = "tok-0123456789-secret"

Handler = Callable[[httpx.Request], httpx.Response]


def v1_config(**changes: object) -> InfluxConfig:
    values: dict[str, object] = {"url": "http://influx.test:8086", "database": "community"}
    values.update(changes)
    return InfluxConfig.model_validate(values)


def v2_config(**changes: object) -> InfluxConfig:
    values: dict[str, object] = {
        "url": "http://influx.test:8086/",
        "api": "v2",
        "org": "estate",
        "bucket": "community",
        "token": TOKEN,
    }
    values.update(changes)
    return InfluxConfig.model_validate(values)


def body_lines(request: httpx.Request) -> list[str]:
    raw = request.content
    if request.headers.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    return raw.decode().split("\n")


def writer(
    config: InfluxConfig, handler: Handler, clock: ManualClock | None = None
) -> InfluxWriter:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return InfluxWriter(config, client, clock=clock)


class FakeInflux:
    """Behaves like InfluxDB 1.x: stores the good lines, answers 400 if any is bad."""

    def __init__(self, bad: set[str], max_lines: int | None = None) -> None:
        self.bad = bad
        self.max_lines = max_lines
        self.stored: set[str] = set()
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        lines = body_lines(request)
        if self.max_lines is not None and len(lines) > self.max_lines:
            return httpx.Response(413, json={"error": "Request Entity Too Large"})
        self.stored.update(line for line in lines if line not in self.bad)
        dropped = sum(line in self.bad for line in lines)
        if dropped:
            message = f"partial write: field type conflict dropped={dropped}"
            return httpx.Response(400, json={"error": message})
        return httpx.Response(204)


async def test_v1_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    config = v1_config(retention_policy="one_year", username="gw", password=PASSWORD)
    async with writer(config, handler) as w:
        result = await w.write(["m v=1i 1", "m v=2i 2"])

    assert result == WriteResult(accepted_lines=2, rejected=(), requests=1)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == (
        "http://influx.test:8086/write?db=community&rp=one_year&precision=ms"
    )
    credentials = base64.b64encode(f"gw:{PASSWORD}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {credentials}"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "text/plain; charset=utf-8"
    # The password never travels in the URL, where access logs would keep it.
    assert PASSWORD not in str(request.url)
    assert gzip.decompress(request.content) == b"m v=1i 1\nm v=2i 2"


async def test_v1_without_credentials_or_gzip() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with writer(v1_config(gzip=False), handler) as w:
        await w.write(["m v=1i 1"])

    (request,) = seen
    assert str(request.url) == "http://influx.test:8086/write?db=community&precision=ms"
    assert "Authorization" not in request.headers
    assert "Content-Encoding" not in request.headers
    assert request.content == b"m v=1i 1"


async def test_v2_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with writer(v2_config(), handler) as w:
        result = await w.write(["m v=1i 1", 'm s="湖光苑" 2'])

    assert result.accepted_lines == 2
    (request,) = seen
    assert str(request.url) == (
        "http://influx.test:8086/api/v2/write?org=estate&bucket=community&precision=ms"
    )
    assert request.headers["Authorization"] == f"Token {TOKEN}"
    assert gzip.decompress(request.content).decode() == 'm v=1i 1\nm s="湖光苑" 2'


async def test_v2_without_org_or_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with writer(v2_config(org=None, token=None), handler) as w:
        await w.write(["m v=1i 1"])

    assert str(seen[0].url) == "http://influx.test:8086/api/v2/write?bucket=community&precision=ms"
    assert "Authorization" not in seen[0].headers


async def test_200_counts_as_accepted() -> None:
    async with writer(v1_config(), lambda _: httpx.Response(200)) as w:
        assert (await w.write(["m v=1i 1"])).accepted_lines == 1


async def test_empty_batch_sends_nothing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    async with writer(v1_config(), handler) as w:
        assert await w.write([]) == WriteResult(accepted_lines=0, rejected=(), requests=0)


async def test_400_halving_finds_one_bad_line_in_few_requests() -> None:
    lines = [f"m v={i}i {i}" for i in range(5000)]
    bad = lines[3217]
    server = FakeInflux(bad={bad})

    async with writer(v1_config(), server) as w:
        result = await w.write(lines)

    assert result.rejected == (
        RejectedLine(line=bad, reason="400: partial write: field type conflict dropped=1"),
    )
    assert result.accepted_lines == 4999
    assert server.stored == set(lines) - {bad}
    # One full request, then two halves on each of ceil(log2(5000)) = 13 levels.
    assert result.requests == len(server.requests) <= 1 + 2 * math.ceil(math.log2(5000))


async def test_400_halving_finds_several_bad_lines() -> None:
    lines = [f"m v={i}i {i}" for i in range(1000)]
    bad = {lines[0], lines[500], lines[501], lines[999]}
    server = FakeInflux(bad=bad)

    async with writer(v1_config(), server) as w:
        result = await w.write(lines)

    assert {r.line for r in result.rejected} == bad
    assert [r.line for r in result.rejected] == [line for line in lines if line in bad]
    assert result.accepted_lines == 996
    assert server.stored == set(lines) - bad
    assert result.requests < 100


async def test_400_on_a_single_line() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        text = "unable to parse 'm v=': missing field value"
        return httpx.Response(400, json={"error": text})

    async with writer(v1_config(), handler) as w:
        result = await w.write(["m v="])

    assert result == WriteResult(
        accepted_lines=0,
        rejected=(RejectedLine("m v=", "400: unable to parse 'm v=': missing field value"),),
        requests=1,
    )


async def test_413_splits_until_small_enough() -> None:
    lines = [f"m v={i}i {i}" for i in range(100)]
    server = FakeInflux(bad=set(), max_lines=30)

    async with writer(v1_config(), server) as w:
        result = await w.write(lines)

    assert result.accepted_lines == 100
    assert result.rejected == ()
    assert server.stored == set(lines)
    assert [len(body_lines(r)) for r in server.requests] == [100, 50, 25, 25, 50, 25, 25]
    assert result.requests == 7


async def test_413_on_a_single_line_rejects_it() -> None:
    server = FakeInflux(bad=set(), max_lines=0)

    async with writer(v1_config(), server) as w:
        result = await w.write(["m v=1i 1", "m v=2i 2"])

    assert result.accepted_lines == 0
    assert [r.line for r in result.rejected] == ["m v=1i 1", "m v=2i 2"]
    assert result.rejected[0].reason == "413: Request Entity Too Large"
    assert result.requests == 3


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_overload_and_server_errors_are_retryable(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"Retry-After": "7"}, json={"error": "busy"})

    async with writer(v1_config(), handler) as w:
        with pytest.raises(StoreError) as caught:
            await w.write(["m v=1i 1"])

    assert caught.value.retryable
    assert caught.value.retry_after_s == 7.0
    assert str(status) in str(caught.value)
    assert "busy" in str(caught.value)


async def test_retry_after_as_http_date() -> None:
    clock = ManualClock(start_ms=1_767_225_600_000)
    when = datetime.fromtimestamp(1_767_225_600 + 90, tz=UTC)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": format_datetime(when, usegmt=True)})

    async with writer(v1_config(), handler, clock) as w:
        with pytest.raises(StoreError) as caught:
            await w.write(["m v=1i 1"])

    assert caught.value.retryable
    assert caught.value.retry_after_s == 90.0


async def test_a_retry_after_date_is_read_against_the_server_s_date() -> None:
    # The box booted two days behind, and NTP has not set it yet.
    clock = ManualClock(start_ms=1_767_225_600_000)
    server_s = 1_767_225_600 + 2 * 86_400

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {
            "Retry-After": format_datetime(datetime.fromtimestamp(server_s + 30, UTC), usegmt=True),
            "Date": format_datetime(datetime.fromtimestamp(server_s, UTC), usegmt=True),
        }
        return httpx.Response(503, headers=headers)

    async with writer(v1_config(), handler, clock) as w:
        with pytest.raises(StoreError) as caught:
            await w.write(["m v=1i 1"])
    assert caught.value.retry_after_s == 30.0


async def test_server_error_without_retry_after() -> None:
    async with writer(v1_config(), lambda _: httpx.Response(500, text="oops")) as w:
        with pytest.raises(StoreError) as caught:
            await w.write(["m v=1i 1"])
    assert caught.value.retryable
    assert caught.value.retry_after_s is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Thu, 01 Jan 2026 00:01:00 GMT", 60.0),
        ("Wed, 31 Dec 2025 23:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after_s(header, now_s=1_767_225_600.0) == seconds


async def test_timeout_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with writer(v1_config(timeout_s=2.5), handler) as w:
        with pytest.raises(StoreError, match=r"within 2\.5 s") as caught:
            await w.write(["m v=1i 1"])
    assert caught.value.retryable


async def test_connection_error_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with writer(v1_config(), handler) as w:
        with pytest.raises(StoreError, match="cannot reach InfluxDB") as caught:
            await w.write(["m v=1i 1"])
    assert caught.value.retryable


async def test_401_names_user_and_hides_password() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # Even a server that echoes the credentials must not leak them.
        return httpx.Response(401, json={"error": f"authorization failed for {PASSWORD}"})

    async with writer(v1_config(username="gw", password=PASSWORD), handler) as w:
        with pytest.raises(StoreError) as caught:
            await w.write(["m v=1i 1"])

    message = str(caught.value)
    assert not caught.value.retryable
    assert "'gw'" in message
    assert "refused" in message
    assert PASSWORD not in message
    assert base64.b64encode(f"gw:{PASSWORD}".encode()).decode() not in message


async def test_401_without_credentials_says_what_to_set() -> None:
    async with writer(v1_config(), lambda _: httpx.Response(401)) as w:
        with pytest.raises(StoreError, match="set username and password"):
            await w.write(["m v=1i 1"])


async def test_401_v2_hides_token() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"code": "unauthorized", "message": f"bad {TOKEN}"})

    async with writer(v2_config(), handler) as w:
        with pytest.raises(StoreError, match="token was refused") as caught:
            await w.write(["m v=1i 1"])
    assert TOKEN not in str(caught.value)
    assert not caught.value.retryable


async def test_403_names_user_and_database() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": "user is not authorized to write to database"})

    async with writer(v1_config(username="gw", password=PASSWORD), handler) as w:
        with pytest.raises(StoreError, match="user 'gw' may not write to database 'community'"):
            await w.write(["m v=1i 1"])


async def test_404_database_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": 'database not found: "community"'})

    async with writer(v1_config(), handler) as w:
        with pytest.raises(StoreError, match="database 'community' not found") as caught:
            await w.write(["m v=1i 1"])
    assert not caught.value.retryable


async def test_404_bucket_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": "not found", "message": 'bucket "x" not found'})

    async with writer(v2_config(), handler) as w:
        with pytest.raises(StoreError, match="bucket 'community' not found"):
            await w.write(["m v=1i 1"])


async def test_404_without_write_endpoint_suggests_api() -> None:
    # InfluxDB 1.6 has no /api/v2/write and answers an empty 404.
    async with writer(v2_config(), lambda _: httpx.Response(404)) as w:
        with pytest.raises(StoreError, match="is api 'v2' right") as caught:
            await w.write(["m v=1i 1"])
    assert not caught.value.retryable


async def test_missing_retention_policy_is_not_retryable() -> None:
    # InfluxDB 1.6 answers 500 for it.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": "retention policy not found: nope"})

    async with writer(v1_config(retention_policy="nope"), handler) as w:
        with pytest.raises(StoreError, match="retention policy 'nope' not found") as caught:
            await w.write(["m v=1i 1"])
    assert not caught.value.retryable


async def test_other_4xx_is_not_retryable() -> None:
    async with writer(v1_config(), lambda _: httpx.Response(405, text="no")) as w:
        with pytest.raises(StoreError, match="405") as caught:
            await w.write(["m v=1i 1"])
    assert not caught.value.retryable


async def test_large_body_is_compressed_off_the_loop() -> None:
    lines = [f'm,device_id=d-{i} temperature_c={i}.5,text="{"x" * 50}" {i}' for i in range(5000)]
    server = FakeInflux(bad=set())

    async with writer(v1_config(), server) as w:
        result = await w.write(lines)

    assert result.accepted_lines == 5000
    assert body_lines(server.requests[0]) == lines


async def test_given_client_is_not_closed() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(204)))
    async with InfluxWriter(v1_config(), client) as w:
        await w.write(["m v=1i 1"])
    assert not client.is_closed
    await client.aclose()


async def test_own_client_is_closed() -> None:
    w = InfluxWriter(v1_config())
    async with w:
        pass
    assert w._client.is_closed


def test_either_compressor_writes_gzip_that_reads_back_the_same() -> None:
    body = "\n".join(f'm,device_id=th-{i} v={i}i,s="湖光苑 {i}" {i}' for i in range(3000)).encode()
    compressors = [influx.gzip_with_zlib]
    if hasattr(influx, "gzip_with_isal"):
        compressors.append(influx.gzip_with_isal)
    for compress in compressors:
        packed = compress(body)
        assert packed[:2] == b"\x1f\x8b"
        assert gzip.decompress(packed) == body
        assert len(packed) < len(body) / 3


def isal_installed_here() -> bool:
    """Whether the project's requirements install ISA-L on this machine: only where it
    has a build, as pyproject.toml's marker says."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    (isal,) = [Requirement(d) for d in project["dependencies"] if d.startswith("isal")]
    return isal.marker is None or isal.marker.evaluate()


@pytest.mark.skipif(
    not isal_installed_here(), reason="ISA-L is installed only where it has a build"
)
def test_writes_are_compressed_with_isa_l_where_it_is_installed() -> None:
    assert influx.compress is getattr(influx, "gzip_with_isal", None)


# Answers that refuse a write whatever its lines, each a 400: Go's server when `url`
# says http:// to an InfluxDB serving HTTPS; InfluxDB 2.x without `org`; 1.x with an
# empty database name.
REQUEST_REFUSALS = [
    (v1_config(), httpx.Response(400, text="Client sent an HTTP request to an HTTPS server.\n")),
    (
        v2_config(org=None),
        httpx.Response(
            400, json={"code": "invalid", "message": "Please provide either orgID or org"}
        ),
    ),
    (v1_config(database=""), httpx.Response(400, json={"error": "database is required"})),
]


@pytest.mark.parametrize(("config", "answer"), REQUEST_REFUSALS)
async def test_a_400_refusing_the_write_itself_keeps_every_line(
    config: InfluxConfig, answer: httpx.Response
) -> None:
    # Split down to single lines, every one would be quarantined as refused, and a
    # mistake of the config empty the outbox: the lines wait until it is mended.
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer

    lines = [f"m,device_id=d-{i} v={i}i {1_767_225_600_000 + i}" for i in range(20)]
    async with writer(config, handler) as w:
        with pytest.raises(StoreError) as caught:
            await w.write(lines)
    assert not caught.value.retryable
    assert "refused the write itself, not a line of it (400: " in str(caught.value)
    assert len(requests) == 1


async def test_an_answer_that_cannot_be_read_is_a_failed_write() -> None:
    # A proxy's 502 whose body is labelled gzip and is not: tried again, never the end
    # of the drain and with it of the gateway.
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            502, headers={"Content-Encoding": "gzip"}, content=b"<html>502 Bad Gateway</html>"
        )

    async with writer(v1_config(), handler) as w:
        with pytest.raises(StoreError) as caught:
            await w.write(["m v=1i 1"])
    assert caught.value.retryable
    assert "answered what cannot be read: DecodingError" in str(caught.value)


async def test_a_backlog_older_than_the_retention_is_settled_in_one_request() -> None:
    # After an outage longer than the database keeps points, a batch of them all is the
    # database's own policy, not bad lines: no line quarantined, and one request, where
    # halving took two a line.
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        dropped = len(body_lines(request))
        return httpx.Response(
            400, json={"error": f"partial write: points beyond retention policy dropped={dropped}"}
        )

    lines = [f"m,device_id=d-{i} v={i}i {i}" for i in range(5000)]
    async with writer(v1_config(), handler) as w:
        result = await w.write(lines)
    assert result == WriteResult(accepted_lines=0, rejected=(), requests=1, expired_lines=5000)


async def test_a_batch_partly_older_than_the_retention_is_split_where_it_begins() -> None:
    # The oldest 100 of 1,000 lines beyond it: the rest written, each half that is all
    # beyond it settled at once.
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        times = [int(line.rsplit(" ", 1)[1]) for line in body_lines(request)]
        dropped = sum(t < 100 for t in times)
        if dropped:
            text = f"partial write: points beyond retention policy dropped={dropped}"
            return httpx.Response(400, json={"error": text})
        return httpx.Response(204)

    lines = [f"m,device_id=d-{i} v={i}i {i}" for i in range(1000)]
    async with writer(v1_config(), handler) as w:
        result = await w.write(lines)
    assert (result.accepted_lines, result.expired_lines, result.rejected) == (900, 100, ())
    assert len(requests) < 30
