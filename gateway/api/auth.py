"""Who is asking: API tokens with roles, and a limit on failed attempts per client.

admin: everything. operator: reads everything, acknowledges, silences; an operator's
token may be limited to some communities (a community's desk on a district's
installation), and then sees and acts on nothing of the others. grid worker: only the
alerts of their own grid cells, which they acknowledge, reach and close.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.clock import Clock
from gateway.config import ApiToken, GridCell
from gateway.errors import GatewayError
from gateway.registry import ALERT_PLACES, PLACE_TYPES, Placed, Registry, Site
from gateway.rules.book import places_about

log = logging.getLogger(__name__)

FAILURE_WINDOW_S = 60.0
# Client addresses remembered with recent failures; past it, the oldest is forgotten.
MAX_ADDRESSES = 10_000


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    GRID_WORKER = "grid_worker"


class AuthError(GatewayError):
    """No token, or one that matches no one (401)."""


class ForbiddenError(GatewayError):
    """A known caller asking for what their role does not allow (403)."""


class TooManyFailuresError(GatewayError):
    """A client address over its failed-authentication limit (429)."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many failed authentications; try again in {retry_after_s} s")


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    cells: tuple[GridCell, ...] = ()
    # The communities an operator's token is limited to; None: all of them.
    communities: frozenset[str] | None = None

    @property
    def scope(self) -> frozenset[str] | None:
        """The communities whose devices, alerts, silences and rejected messages the
        caller may see at all, or None for every community."""
        if self.role is Role.GRID_WORKER:
            return frozenset(cell.community for cell in self.cells)
        return self.communities

    def covers_community(self, community: str) -> bool:
        scope = self.scope
        return scope is None or community in scope

    def covers_device(self, device: Placed | None, community: str) -> bool:
        """Whether a device is in one of this person's cells, or for the other roles in
        one of their communities. An unregistered device has no place but its community."""
        if self.role is not Role.GRID_WORKER:
            return self.covers_community(community)
        return any(_in_cell(cell, device, community) for cell in self.cells)

    def covers_alert(
        self,
        registry: Registry,
        community: str,
        device_type: str,
        device_id: str,
        site: Site | None = None,
    ) -> bool:
        """`site`: where the alert is, kept since it began (see AlertEntry.where); None
        for the registry's place now."""
        if self.role is not Role.GRID_WORKER:
            return self.covers_community(community)
        at_place: Sequence[Placed | None]
        if device_type in ALERT_PLACES:
            # An alert about a place (a building on fire): in the cell if any place
            # registered within it is, the place where it began; its devices all taken
            # out since, where it was.
            places = places_about(registry, community, device_type, device_id, site)
            at_place = [Site(*place) for place in places] or [site]
        else:
            at_place = [site if site is not None else registry.get(community, device_id)]
        return any(self.covers_device(placed, community) for placed in at_place)


def _in_cell(cell: GridCell, placed: Placed | None, community: str) -> bool:
    if cell.community != community:
        return False
    for level in PLACE_TYPES:
        wanted = getattr(cell, level)
        if wanted is not None and (placed is None or getattr(placed, level) != wanted):
            return False
    return True


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _principal(token: ApiToken) -> Principal:
    communities = None if token.communities is None else frozenset(token.communities)
    return Principal(token.name, Role(token.role), token.cells, communities)


class TokenBook:
    """Configured tokens, kept only as hashes and compared in constant time."""

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self._entries = [(_digest(t.token.get_secret_value()), _principal(t)) for t in tokens]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenBook) and self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def find(self, token: str) -> Principal | None:
        presented = _digest(token)
        found: Principal | None = None
        # Every entry is compared, so that the time taken does not tell which one matched.
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented):
                found = principal
        return found


class FailureLimiter:
    """Failed authentications per client address within a minute, on the injected clock.

    Only failures are limited: a good token or link passes whatever its address has
    failed, since many phones share one address (the centre's proxy, a carrier's NAT,
    the centre's Wi-Fi) and a stranger's bad requests must not lock them out.
    """

    def __init__(self, clock: Clock, per_minute: int) -> None:
        self._clock = clock
        self._per_minute = per_minute
        # Ordered by each address's newest failure, oldest first: the stale and the
        # oldest are dropped from the front without walking the table.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._swept_s = clock.monotonic_s()
        self.failures_total = 0

    def check(self, address: str) -> None:
        """Raises TooManyFailuresError while the address is over its limit."""
        now_s = self._clock.monotonic_s()
        self._sweep(now_s)
        failures = self._failures.get(address)
        if failures is None:
            return
        _drop_stale(failures, now_s)
        if not failures:
            del self._failures[address]
        elif len(failures) >= self._per_minute:
            wait_s = failures[0] + FAILURE_WINDOW_S - now_s
            raise TooManyFailuresError(max(1, int(wait_s + 0.999)))

    def fail(self, address: str, why: str) -> None:
        now_s = self._clock.monotonic_s()
        self._sweep(now_s)
        failures = self._failures.get(address)
        if failures is None:
            if len(self._failures) >= MAX_ADDRESSES:
                # Full (a client with many source addresses): the oldest is forgotten.
                self._failures.popitem(last=False)
            failures = self._failures[address] = deque(maxlen=self._per_minute)
        else:
            self._failures.move_to_end(address)
        _drop_stale(failures, now_s)
        failures.append(now_s)
        self.failures_total += 1
        # Logged with the address and the reason, never with what was presented.
        log.warning("failed authentication from %s: %s (%d in the last minute)",
                    address, why, len(failures))  # fmt: skip

    def _sweep(self, now_s: float) -> None:
        """Forgets the addresses with no failure in the last window, once a window."""
        if now_s - self._swept_s < FAILURE_WINDOW_S:
            return
        self._swept_s = now_s
        horizon = now_s - FAILURE_WINDOW_S
        while self._failures:
            newest = next(iter(self._failures.values()))
            if newest and newest[-1] > horizon:
                break
            self._failures.popitem(last=False)

    def authenticate(self, book: TokenBook, address: str, token: str | None) -> Principal:
        principal = book.find(token) if token else None
        if principal is not None:
            return principal
        # A failure from an address over its limit is refused unrecorded: waiting out
        # the minute is what ends the lockout.
        self.check(address)
        if not token:
            self.fail(address, "no token")
            raise AuthError("missing token: send 'Authorization: Bearer <token>'")
        self.fail(address, "unknown token")
        raise AuthError("unknown token")


def _drop_stale(failures: deque[float], now_s: float) -> None:
    horizon = now_s - FAILURE_WINDOW_S
    while failures and failures[0] <= horizon:
        failures.popleft()


def require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = ", ".join(str(r) for r in roles)
        raise ForbiddenError(f"{principal.name} is {principal.role}; this needs {allowed}")
