import logging
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.api.auth import (
    MAX_ADDRESSES,
    PLACE_TYPES,
    FailureLimiter,
    Principal,
    Role,
    TokenBook,
    TooManyFailuresError,
)
from gateway.clock import ManualClock
from gateway.config import ApiConfig, ApiToken, GridCell, load_config
from gateway.errors import ConfigError
from gateway.registry import RegisteredDevice, Registry
from gateway.registry import Site as Began
from tests.unit.api.conftest import ADMIN, OPERATOR, Site


async def test_no_token_or_an_unknown_one_is_401(site: Site) -> None:
    missing = await site.get("/api/v1/alerts", None)
    assert missing.status_code == 401
    assert missing.json()["detail"].startswith("missing token")
    assert missing.headers["www-authenticate"] == "Bearer"
    unknown = await site.get("/api/v1/alerts", "not-a-token-at-all")
    assert (unknown.status_code, unknown.json()["detail"]) == (401, "unknown token")


async def test_failures_are_logged_without_the_token_and_limited_per_address(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "gateway.api.auth")
    for _ in range(10):
        assert (await site.get("/api/v1/alerts", "guess-0123456789")).status_code == 401
    assert "10.0.0.7" in caplog.text and "guess-0123456789" not in caplog.text
    # Over the limit, further failures wait, neither checked nor counted.
    limited = await site.get("/api/v1/alerts", "guess-0123456789")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "60"
    assert (await site.get("/api/v1/alerts", None)).status_code == 429
    site.clock.advance(30)
    assert (await site.get("/api/v1/alerts", "guess-0123456789")).headers["retry-after"] == "30"
    site.clock.advance(30)
    assert (await site.get("/api/v1/alerts", "guess-0123456789")).status_code == 401
    metrics = (await site.client.get("/metrics")).text
    assert "gateway_api_auth_failures_total 11" in metrics


async def test_a_good_token_passes_whatever_its_address_has_failed(site: Site) -> None:
    # Many phones share one address (the centre's proxy, a carrier's NAT, the Wi-Fi):
    # a stranger's failures there must not lock the board or anyone else out.
    for _ in range(20):
        await site.get("/api/v1/alerts", None)
    assert (await site.get("/api/v1/alerts", OPERATOR)).status_code == 200
    assert (await site.get("/api/v1/alerts", ADMIN)).status_code == 200
    assert (await site.get("/api/v1/alerts", "guess-0123456789")).status_code == 429


async def test_good_requests_do_not_count_against_the_limit(site: Site) -> None:
    for _ in range(30):
        assert (await site.get("/api/v1/alerts", OPERATOR)).status_code == 200


def test_tokens_are_matched_by_hash() -> None:
    token = ApiToken(name="desk", role="operator", token="x" * 20)  # type: ignore[arg-type]
    book = TokenBook([token])
    assert book.find("x" * 20) == Principal("desk", Role.OPERATOR)
    assert book.find("x" * 19) is None
    assert "x" * 20 not in repr(book.__dict__)


def test_a_desk_token_covers_its_communities_alone() -> None:
    desk = ApiToken(name="desk-hgy", role="operator", token="x" * 20, communities=["hgy"])  # type: ignore[arg-type]
    principal = TokenBook([desk]).find("x" * 20)
    assert principal == Principal("desk-hgy", Role.OPERATOR, communities=frozenset({"hgy"}))
    assert principal.scope == {"hgy"}
    assert principal.covers_community("hgy") and not principal.covers_community("lgy")
    registry = Registry()
    assert principal.covers_alert(registry, "hgy", "building", "3")
    assert not principal.covers_alert(registry, "lgy", "bracelet", "br-1")
    assert Principal("desk", Role.OPERATOR).scope is None
    # A token whose communities change at a reload is another token: its streams end.
    wider = desk.model_copy(update={"communities": ("hgy", "lgy")})
    assert TokenBook([desk]) != TokenBook([wider])


def test_token_config_is_checked_naming_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs at least one cell"):
        ApiToken(name="w", role="grid_worker", token="y" * 16)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ApiToken(name="w", role="admin", token="short")  # type: ignore[arg-type]
    twice = {"name": "a", "role": "admin", "token": "z" * 16}
    with pytest.raises(ValidationError, match="same secret"):
        ApiConfig.model_validate({"tokens": [twice, {**twice, "name": "b"}]})


def test_a_cell_covers_the_places_below_it() -> None:
    device = RegisteredDevice(
        device_id="sd-1", device_type="smoke_detector", community="hgy", area="east",
        compound="lakeside", building="3",
    )  # fmt: skip
    registry = Registry([device])
    area = Principal("w", Role.GRID_WORKER, (GridCell(community="hgy", area="east"),))
    other = Principal("w", Role.GRID_WORKER, (GridCell(community="hgy", building="4"),))
    assert area.covers_alert(registry, "hgy", "smoke_detector", "sd-1")
    assert not other.covers_alert(registry, "hgy", "smoke_detector", "sd-1")
    # A building on fire: in the cell of the devices registered at that building.
    assert area.covers_alert(registry, "hgy", "building", "3")
    assert not other.covers_alert(registry, "hgy", "building", "3")
    # An unregistered device is only in a cell that takes its whole community.
    assert not area.covers_alert(registry, "hgy", "bracelet", "unknown")
    community = Principal("w", Role.GRID_WORKER, (GridCell(community="hgy"),))
    assert community.covers_alert(registry, "hgy", "bracelet", "unknown")
    assert "building" in PLACE_TYPES
    # Where an alert began, kept with it, counts over the registry's now: a device taken
    # out, or moved, while its alert was open.
    began = Began("hgy", "west", "hillside", "4")
    assert other.covers_alert(registry, "hgy", "smoke_detector", "sd-1", began)
    assert not area.covers_alert(registry, "hgy", "smoke_detector", "sd-1", began)
    assert other.covers_alert(Registry(), "hgy", "building", "4", began)


def test_a_token_mistake_in_the_config_file_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TOKEN", "from-the-environment-123")
    path = tmp_path / "gw.yaml"
    path.write_text(
        "api:\n  tokens:\n"
        "    - {name: root, role: admin, token: '${GW_TOKEN}'}\n"
        "    - {name: w, role: grid_worker, token: 'another-token-12345'}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.field == "api.tokens.1"
    assert "grid worker 'w' needs at least one cell" in raised.value.problem
    path.write_text("api:\n  tokens:\n    - {name: root, role: admin, token: '${GW_TOKEN}'}\n")
    config = load_config(path)
    assert config.api is not None
    assert config.api.tokens[0].token.get_secret_value() == "from-the-environment-123"
    assert "from-the-environment" not in repr(config)


async def test_a_token_taken_out_of_the_config_file_stops_working_at_a_reload(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    config_file = tmp_path / "gateway.yaml"

    def write_tokens(*tokens: tuple[str, str, str]) -> None:
        lines = ["mqtt: null", f"registry_file: {tmp_path / 'devices.csv'}", "api:", "  tokens:"]
        lines += [f"    - {{name: {n}, role: {r}, token: {t}}}" for n, r, t in tokens]
        config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert (await site.get("/api/v1/alerts", OPERATOR)).status_code == 200
    # The board of the desk is open: its stream has had its first event.
    stream = asyncio.create_task(site.get("/api/v1/alerts-stream?limit=2", OPERATOR))
    await asyncio.sleep(0.05)
    # The same tokens again (a reload for the rules): nothing is cut off.
    api = site.gateway.api
    assert api is not None and site.gateway.config.api is not None
    assert not api.context.replace_tokens(site.gateway.config.api.tokens)
    await asyncio.sleep(0.05)
    assert not stream.done()
    # The desk's token is taken out: refused from the next request, and its open
    # stream ends, to be refused when the board reconnects.
    write_tokens(("root", "admin", ADMIN))
    await site.gateway.reload(config_file)
    assert (await stream).text == "event: alerts\ndata: 0\n\n"
    refused = await site.get("/api/v1/alerts", OPERATOR)
    assert (refused.status_code, refused.json()["detail"]) == (401, "unknown token")
    assert (await site.get("/api/v1/alerts", ADMIN)).status_code == 200
    # A config file broken meanwhile leaves the running tokens as they are.
    caplog.set_level(logging.ERROR, "gateway.app")
    config_file.write_text("api: {tokens: [{name: x, role: king, token: short}]}\n")
    await site.gateway.reload(config_file)
    assert (
        "nothing reloaded, the running rules, registry, API tokens and notification policy stay"
        in (caplog.text)
    )
    assert "gateway.yaml" in caplog.text
    assert (await site.get("/api/v1/alerts", ADMIN)).status_code == 200


def _spray(limiter: FailureLimiter, count: int, prefix: str = "2001:db8::") -> None:
    """A failure from each of `count` addresses, as a client with a /64 can make them."""
    for i in range(count):
        address = f"{prefix}{i:x}"
        limiter.check(address)
        limiter.fail(address, "unknown token")


@pytest.fixture
def quiet_limiter() -> Iterator[None]:
    logger = logging.getLogger("gateway.api.auth")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.mark.usefixtures("quiet_limiter")
def test_the_limiter_forgets_addresses_with_no_failure_in_the_last_minute() -> None:
    clock = ManualClock()
    limiter = FailureLimiter(clock, per_minute=10)
    _spray(limiter, 500)
    clock.advance(30)
    _spray(limiter, 10, prefix="2001:db8:1::")
    # A good request is not remembered.
    limiter.check("198.51.100.1")
    assert len(limiter._failures) == 510
    clock.advance(45)
    limiter.check("198.51.100.1")
    # The first 500 are a minute old; the last ten are not, and still count.
    assert len(limiter._failures) == 10
    clock.advance(60)
    limiter.check("198.51.100.1")
    assert len(limiter._failures) == 0


@pytest.mark.usefixtures("quiet_limiter")
def test_the_limiter_table_is_bounded_forgetting_the_oldest() -> None:
    clock = ManualClock()
    limiter = FailureLimiter(clock, per_minute=2)
    limiter.fail("192.0.2.1", "unknown token")
    limiter.fail("192.0.2.1", "unknown token")
    _spray(limiter, MAX_ADDRESSES + 50)
    assert len(limiter._failures) == MAX_ADDRESSES
    # The oldest, locked out, is forgotten first; the newest stays.
    limiter.check("192.0.2.1")
    newest = f"2001:db8::{MAX_ADDRESSES + 49:x}"
    limiter.fail(newest, "unknown token")
    with pytest.raises(TooManyFailuresError):
        limiter.check(newest)


def _seed(limiter: FailureLimiter, clock: ManualClock, count: int) -> None:
    """`count` addresses each with a failure this minute (seeded directly: sprayed, an
    unbounded table's own cost would take minutes)."""
    for i in range(count):
        limiter._failures[f"2001:db8:9::{i:x}"] = deque([clock.monotonic_s()])


def _per_request_ms(limiter: FailureLimiter, prefix: str) -> float:
    started = time.perf_counter()
    _spray(limiter, 50, prefix=prefix)
    return (time.perf_counter() - started) * 1000 / 50


@pytest.mark.usefixtures("quiet_limiter")
def test_a_failure_from_a_new_address_costs_no_walk_of_the_limiter_table() -> None:
    # The limiter runs on the event loop that also judges alarms.
    clock = ManualClock()
    small = FailureLimiter(clock, per_minute=10)
    _seed(small, clock, 5_000)
    small_ms = _per_request_ms(small, "2001:db8:1::")
    large = FailureLimiter(clock, per_minute=10)
    _seed(large, clock, 100_000)
    large_ms = _per_request_ms(large, "2001:db8:1::")
    assert large_ms < 1.0, (
        f"{large_ms:.1f} ms of the event loop a request at 100,000 addresses "
        f"({small_ms:.3f} ms at 5,000)"
    )
