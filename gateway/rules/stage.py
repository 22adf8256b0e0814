"""The rules stage of the pipeline: what a batch of records makes of the alerts, ready
to be committed in the same transaction as the batch itself, so that a crash can
neither lose an alert nor announce it twice."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from gateway.clock import Clock, WallSteps
from gateway.decode.record import Record
from gateway.registry import Site
from gateway.rules.alert import AlertChange, AlertState, Repeat
from gateway.rules.book import AlertBook, AlertError, Kept, was_muted
from gateway.rules.engine import RuleEngine
from gateway.rules.silence import SilenceBook
from gateway.store.series import alert_line

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AlertDecision:
    changes: list[AlertChange] = field(default_factory=list)
    # Alert changes as time-series lines, for the dashboards' timelines.
    lines: list[str] = field(default_factory=list)
    # Writes the rule timers and the alert book inside the caller's transaction.
    write: partial[None] | None = None
    # Events that joined an alert already open.
    repeats: list[Repeat] = field(default_factory=list)


class AlertStage:
    def __init__(
        self,
        engine: RuleEngine,
        book: AlertBook,
        silences: SilenceBook,
        clock: Clock,
        *,
        kept_ms: int | None = None,
    ) -> None:
        """`kept_ms`: how long the book keeps closed alerts (retention.alerts_days), if
        not for ever."""
        self.engine = engine
        self.book = book
        self.silences = silences
        self._clock = clock
        self._kept_ms = kept_ms
        # Only retention's passes of earlier runs can have set it later than `kept_ms`
        # from now (the same setting never moves it ahead of that).
        self._let_go_before = book.let_go_before_ms()
        engine.taken = self._taken
        engine.closed = self._closed
        engine.restore(book.load_tracks())
        # Where each open place alert began, should the sheet have renamed its place.
        began = book.kept(engine.place_alerts())
        engine.carry_places({alert_id: k.site for alert_id, k in began.items() if k.site})
        # Offline timers carry on from when each device was last heard, not from start-up.
        engine.restore_seen(book.load_last_seen())
        # A step of the wall clock, told apart from time passing at every tick, is nobody's
        # silence (see RuleEngine.clock_set).
        self._steps = WallSteps(clock)
        engine.rates.restore(book.load_rates())

    def evaluate(self, records: Sequence[Record], *, ahead: bool = False) -> AlertDecision:
        """`ahead`: records of the alarm lane (see RuleEngine.evaluate)."""
        return self._decide(self.engine.evaluate(records, self._clock.now_ms(), ahead=ahead))

    def tick(self, now_ms: int, *, listening: bool = True) -> AlertDecision:
        step_ms = self._steps.taken_ms()
        if step_ms:
            self.engine.clock_set(self._clock.now_ms(), step_ms)
        return self._decide(self.engine.tick(now_ms, listening=listening))

    def rates_write(self) -> partial[None]:
        """Writes the rate windows as they are now, inside the caller's transaction: kept
        for a restart, but too many to write with every batch."""
        return partial(AlertBook.write_rates, saved=self.engine.rates.saved())

    def _taken(self, alert_id: str) -> bool:
        """Whether a person took the alert (or closed it), or a silence muted it: a
        repeated event then makes one of its own, to be told."""
        try:
            entry = self.book.get(alert_id)
        except AlertError:
            # Made in this batch: not yet in the book, and nobody's.
            return False
        return entry.state is not AlertState.FIRING or was_muted(self.book.history(alert_id))

    def _sites(self, changes: Sequence[AlertChange], kept: Mapping[str, Kept]) -> dict[str, Site]:
        """Where each changed alert is: kept in the book since it began; for a new one,
        where the registry has its device now, or its community alone for a device the
        registry does not have, so that every point of an alert is of one series."""
        registry = self.engine.registry
        sites: dict[str, Site] = {}
        for change in changes:
            if change.alert_id in kept:
                # An earlier version's alert kept none: where the registry has it now.
                site = kept[change.alert_id].site or registry.site(*change.device)
            else:
                site = registry.site(*change.device) or Site(change.device.community)
            if site is not None:
                sites[change.alert_id] = site
        return sites

    def _closed(self, alert_id: str) -> bool:
        try:
            return self.book.get(alert_id).state is AlertState.CLOSED
        except AlertError:
            return False

    def _decide(self, changes: list[AlertChange]) -> AlertDecision:
        now_ms = self._clock.now_ms()
        kept: dict[str, Kept] = {}
        if changes:
            ids = {c.alert_id for c in changes}
            kept = self.book.kept(ids)
            let_go = self.book.let_go_of(ids - kept.keys())
            made = []
            for change in changes:
                if self._made(change, kept, let_go, now_ms):
                    made.append(change)
                else:
                    self.engine.forget(change)
            changes = made
        sites = self._sites(changes, kept)
        changes = [self._silence(c, now_ms, sites.get(c.alert_id)) for c in changes]
        tracks_changed, tracks_gone = self.engine.take_changes()
        seen = self.engine.take_seen()
        repeats = self.engine.take_repeats()
        if not changes and not tracks_changed and not tracks_gone and not seen:
            return AlertDecision()
        write = partial(
            AlertBook.write,
            changes=changes,
            tracks_changed=tracks_changed,
            tracks_gone=tracks_gone,
            seen=seen,
            repeats=repeats,
            sites=sites,
        )
        lines = _alert_lines(changes, sites, kept)
        return AlertDecision(changes, lines, write, repeats)

    def _made(
        self,
        change: AlertChange,
        kept: Mapping[str, Kept],
        let_go: Collection[str],
        now_ms: int,
    ) -> bool:
        """Whether a change is made, or is of a record sent again (a device's stored
        events uploaded once more, after the redelivery filter forgot them) whose alert was
        told and closed, or let go: not made again, and its timer let go, which left
        firing would take a fire of now into an alert nobody watches.

        An alert is made again neither if the book has it closed, nor if retention let it
        go (a life-safety one), nor if its record is older than the alerts the book keeps,
        or kept when retention let the others go, and the book does not have it. A
        life-safety alarm of such a record is made: one from a device whose clock a flat
        battery set back years, never seen, must reach a person."""
        found = kept.get(change.alert_id)
        if found is not None:
            # An alert closed while its condition held clears as any other.
            if found.state is not AlertState.CLOSED or change.state is AlertState.RESOLVED:
                return True
            why = "its alert was closed"
        elif change.alert_id in let_go:
            why = "retention let its alert go"
        elif change.at_ms < self._let_go_before_ms(now_ms) and not change.life_safety:
            why = "it is older than the alerts kept (retention.alerts_days)"
        else:
            return True
        log.warning("%s/%s: a record of %s ms is not made an alert (%s) again: %s",
                    change.device.community, change.device.device_id, change.at_ms,
                    change.rule, why)  # fmt: skip
        return False

    def _let_go_before_ms(self, now_ms: int) -> int:
        """Before when an ended alert is, or was, let go: retention made longer keeps
        those of now on, and the alerts a shorter one let go stay gone."""
        kept_from_ms = -1 if self._kept_ms is None else now_ms - self._kept_ms
        return max(kept_from_ms, self._let_go_before or -1)

    def _silence(self, change: AlertChange, now_ms: int, site: Site | None) -> AlertChange:
        if change.state is AlertState.RESOLVED:
            # A silence mutes what fires in it. The all-clear of an alert told before it
            # goes to those told (and to nobody else: see Notifier._announce_resolved).
            return change
        silence = self.silences.matching(change, now_ms, site)
        if silence is None:
            return change
        if change.life_safety:
            return replace(change, silence_overridden=silence.id)
        return replace(change, silenced_by=silence.id)


def _alert_lines(
    changes: Sequence[AlertChange], sites: Mapping[str, Site], kept: Mapping[str, Kept]
) -> list[str]:
    """The changes' points, each after its alert's last: dashboards take the last state
    of a series, and a change can be older than the one before it (a device offline at
    the gateway's time, heard again by the readings it kept, oldest first)."""
    last_ms = {alert_id: found.updated_ms for alert_id, found in kept.items()}
    lines = []
    for change in changes:
        before_ms = last_ms.get(change.alert_id)
        if before_ms is not None and change.at_ms <= before_ms:
            change = replace(change, at_ms=before_ms + 1)
        last_ms[change.alert_id] = change.at_ms
        lines.append(alert_line(change, sites.get(change.alert_id)))
    return lines
