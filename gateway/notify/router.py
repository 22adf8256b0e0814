"""Routing: which escalation chains an alert follows, and who each step reaches — the
grid worker on duty for the alert's cell, named receivers, a wearer's emergency
contacts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.notify.notice import Notice
from gateway.notify.policy import (
    EMERGENCY_CONTACTS,
    ON_DUTY,
    WEEKDAYS,
    Match,
    NotifyPolicy,
    Receiver,
    Roster,
    Route,
    Shift,
    Step,
)
from gateway.phone import e164
from gateway.registry import (
    ALERT_PLACES,
    AlertAbout,
    Place,
    RegisteredDevice,
    Registry,
    Site,
    place_of,
)
from gateway.rules.book import AlertEntry, places_about
from gateway.rules.schedule import DailyWindow

log = logging.getLogger(__name__)


# A wearer's emergency contact, told as a receiver of their own.
CONTACT_PREFIX = "contact:"


@dataclass(frozen=True, slots=True)
class Target:
    """One person or group to tell, and how."""

    receiver: str
    display_name: str
    phone: str | None
    channels: tuple[str, ...]
    quiet_hours: DailyWindow | None
    # Their own channels, where a step's replace them.
    own_channels: tuple[str, ...] = ()

    def with_own_channels(self) -> Target:
        """By the step's channels, then by their own."""
        return replace(self, channels=tuple(dict.fromkeys(self.channels + self.own_channels)))


class Router:
    def __init__(
        self,
        policy: NotifyPolicy,
        registry: Registry,
        zone: ZoneInfo,
        types_of: Callable[[str], Sequence[str]] = lambda rule: (),
    ) -> None:
        """`types_of`: the device types a rule about places judges (`*`: any), by which
        routes take its alerts (a building's fire is its smoke detectors')."""
        self.policy = policy
        self._registry = registry
        self._zone = zone
        self._types_of = types_of
        # Shift and quiet hours, parsed once: they are checked for every notification.
        hours = [s.hours for r in policy.rosters for s in r.shifts]
        hours += [r.quiet_hours for r in policy.receivers if r.quiet_hours]
        self._windows = {text: DailyWindow.parse(text) for text in hours}
        # Receivers by name and rosters by community, each community's in the policy's
        # order: an alert is routed among its own community's rosters, not the district's
        # thousands, as a flood of offline alerts is planned in one round that never yields.
        self._receivers = {r.name: r for r in policy.receivers}
        rosters: dict[str, list[Roster]] = {}
        for roster in policy.rosters:
            rosters.setdefault(roster.cell.community, []).append(roster)
        self._rosters = {community: tuple(found) for community, found in rosters.items()}

    def reaches(self, receiver: str, entry: AlertAbout) -> bool:
        """Whether `receiver` is still one this policy tells about the alert: a receiver
        it names, or an emergency contact of its device."""
        if receiver.startswith(CONTACT_PREFIX):
            device = self._registry.device_of(entry)
            # A link sent before the registry's numbers were kept in E.164 names the
            # contact as the registry then had them (contact:13987654321).
            phone = e164(receiver.removeprefix(CONTACT_PREFIX))
            return device is not None and any(c.phone == phone for c in device.emergency_contacts)
        return receiver in self._receivers

    def device(self, entry: AlertEntry) -> RegisteredDevice | None:
        return self._registry.device_of(entry)

    def site(self, entry: AlertEntry) -> Site | None:
        """Where an alert is (see AlertEntry.where)."""
        return entry.where(self._registry)

    def place(self, entry: AlertEntry) -> Place | None:
        """Where an alert is, to route it by."""
        site = self.site(entry)
        return None if site is None else place_of(site)

    def routes(self, entry: AlertEntry) -> list[Route]:
        """The routes an alert follows: the first that matches, and any after it while a
        matching route says `continue`."""
        place = self.place(entry)
        types = (
            tuple(self._types_of(entry.rule))
            if entry.device_type in ALERT_PLACES
            else (entry.device_type,)
        )
        chosen: list[Route] = []
        for route in self.policy.routes:
            if _matches(route.match, entry, place, types):
                chosen.append(route)
                if not route.continue_:
                    break
        return chosen

    def targets(self, step: Step, entry: AlertEntry, at_ms: int) -> list[Target]:
        device = self.device(entry)
        targets: list[Target] = []
        for name in step.to:
            if name == ON_DUTY:
                on_duty = self._on_duty_for(entry, at_ms)
                targets.extend(self._target(r, step.channels) for r in on_duty)
            elif name == EMERGENCY_CONTACTS:
                channels = step.channels or self.policy.emergency_contact_channels
                for contact in device.emergency_contacts if device else ():
                    targets.append(
                        Target(f"{CONTACT_PREFIX}{contact.phone}", contact.name, contact.phone,
                               channels, None, self.policy.emergency_contact_channels)
                    )  # fmt: skip
            else:
                targets.append(self._target(self._receivers[name], step.channels))
        unique: dict[str, Target] = {}
        for target in targets:
            unique.setdefault(target.receiver, target)
        return list(unique.values())

    def told(self, notice: Notice, channels: tuple[str, ...]) -> Target:
        """Whom `notice` reached, to be told more, by their own channels rather than a
        step's (an all-clear needs no voice call); `channels`, those it went by, for one
        no longer in the policy."""
        if notice.receiver.startswith(CONTACT_PREFIX):
            channels = self.policy.emergency_contact_channels or channels
            return Target(notice.receiver, notice.receiver_name, notice.phone, channels, None)
        receiver = self._receivers.get(notice.receiver)
        if receiver is None:
            return Target(notice.receiver, notice.receiver_name, notice.phone, channels, None)
        return self._target(receiver)

    def names(self, receiver: str) -> bool:
        """Whether the policy names the receiver (not an emergency contact)."""
        return receiver in self._receivers

    def quiet_hours(self, receiver: str) -> DailyWindow | None:
        """A receiver's quiet hours in this policy; an emergency contact, or one the
        policy no longer names, has none."""
        found = self._receivers.get(receiver)
        return self._quiet(found) if found is not None else None

    def on_duty(self, place: Place | None, community: str, at_ms: int) -> list[Receiver]:
        """Who is on duty for the most specific cell that holds the place (an alert's,
        see `place`) and has someone on duty now."""
        rosters = sorted(
            (r for r in self._rosters.get(community, ()) if _in_cell(r, place, community)),
            key=_specificity,
            reverse=True,
        )
        moment = datetime.fromtimestamp(at_ms / 1000, self._zone)
        for roster in rosters:
            names = [s.receiver for s in roster.shifts if self._on_shift(s, moment, at_ms)]
            if names:
                return [self._receivers[n] for n in dict.fromkeys(names)]
        return []

    def _on_duty_for(self, entry: AlertEntry, at_ms: int) -> list[Receiver]:
        """Who is on duty for the alert, or the fallback receivers where nobody is: for
        an alert about a place, in each registered cell within it (a community's), the
        place where it began (see places_about)."""
        places: list[Place | None] = []
        if entry.device_type in ALERT_PLACES:
            places.extend(
                places_about(self._registry, entry.community, entry.device_type,
                             entry.device_id, entry.site)
            )  # fmt: skip
        found: dict[str, Receiver] = {}
        for place in places or [self.place(entry)]:
            on_duty = self.on_duty(place, entry.community, at_ms)
            if not on_duty:
                fallback = self.policy.fallback_receivers
                log.warning("nobody on duty for %s; telling %s",
                            " ".join(filter(None, place or (entry.community,))),
                            ", ".join(fallback) or "nobody")  # fmt: skip
                on_duty = [self._receivers[name] for name in fallback]
            for receiver in on_duty:
                found.setdefault(receiver.name, receiver)
        return list(found.values())

    def _on_shift(self, shift: Shift, moment: datetime, at_ms: int) -> bool:
        window = self._windows[shift.hours]
        if not window.contains(at_ms, self._zone):
            return False
        # A night shift that began yesterday belongs to yesterday's day of the week.
        started = moment
        if window.end <= window.start and moment.time() < window.end:
            started = moment - timedelta(days=1)
        return WEEKDAYS[started.weekday()] in shift.days

    def _target(self, receiver: Receiver, channels: tuple[str, ...] = ()) -> Target:
        """`receiver`, by `channels` if any (a step's), else by their own."""
        return Target(
            receiver.name,
            receiver.display_name or receiver.name,
            receiver.phone,
            channels or receiver.channels,
            self._quiet(receiver),
            receiver.channels,
        )

    def _quiet(self, receiver: Receiver) -> DailyWindow | None:
        return self._windows[receiver.quiet_hours] if receiver.quiet_hours else None


def _matches(match: Match, entry: AlertEntry, place: Place | None, types: tuple[str, ...]) -> bool:
    def fits(allowed: tuple[str, ...], value: str | None) -> bool:
        return not allowed or value in allowed

    return (
        fits(tuple(str(s) for s in match.severities), entry.severity)
        and fits(match.rules, entry.rule)
        and (not match.device_types or any(t in match.device_types or t == "*" for t in types))
        and fits(match.communities, entry.community)
        and fits(match.areas, place[1] if place else None)
        and fits(match.compounds, place[2] if place else None)
        and fits(match.buildings, place[3] if place else None)
    )


def _in_cell(roster: Roster, place: Place | None, community: str) -> bool:
    cell = roster.cell
    if cell.community != community:
        return False
    for wanted, actual in zip(
        (cell.area, cell.compound, cell.building),
        place[1:] if place else (None, None, None),
        strict=True,
    ):
        if wanted is not None and wanted != actual:
            return False
    return True


def _specificity(roster: Roster) -> tuple[int, int]:
    """The deepest level a cell names (a compound's cell may leave out its area, as
    compound names do not repeat in a community), then how many it names."""
    parts = (roster.cell.area, roster.cell.compound, roster.cell.building)
    named = [depth for depth, part in enumerate(parts, 1) if part is not None]
    return (max(named, default=0), len(named))
