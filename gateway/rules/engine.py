"""Evaluates records against the rules and keeps each alert's state.

A condition rule has at most one open alert per (rule, device[, port]): it fires when
its condition has held for `for_s` and `repeat` readings, and resolves when the clear
condition (by default, the condition being false) has held for `clear_after_s`. An
event rule makes an alert of a matching event; another from the same device (and port)
within `merge_s` of the last, while nobody has taken that alert, joins it.

Records are judged by code generated for each shape of record (evaluator.py); the
per-device state is kept small: when each device was last heard (presence.py), tracks
only for the few devices whose conditions were seen (track.py), rate samples as arrays
(rate.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import CHINA_STANDARD_TIME
from gateway.decode.record import (
    DeviceRef,
    Event,
    FieldValue,
    Reading,
    Record,
    StatusReport,
    TimeSource,
)
from gateway.registry import (
    COMMUNITY,
    PLACE_TYPES,
    Place,
    RegisteredDevice,
    Registry,
    RegistryChanges,
    Site,
)
from gateway.rules.alert import AlertChange, AlertState, Repeat
from gateway.rules.evaluator import Action, Handler, Judged, Shape, build_handler
from gateway.rules.expression import Unknown
from gateway.rules.fault import RuleFaults
from gateway.rules.presence import HeardGroup, HeardTimes, LastHeard
from gateway.rules.rate import RateWindows
from gateway.rules.rule import Rule
from gateway.rules.schedule import DailyWindow
from gateway.rules.track import Track, TrackKey, TrackTable

# The alert book stores tracks by these.
__all__ = ["RuleEngine", "Track", "TrackKey"]

# Shapes remembered per device type and kind of record (see RuleEngine._recent).
_RECENT_SHAPES = 4
# A shape's field names, and its evaluator.
KnownShape = tuple[frozenset[str], Handler]
# When a rule's action is called, by the rule's kind (see evaluator.Judged).
_CALL_WHEN = {
    "condition": "tracked",
    "event": "true",
    # A device of an open correlation alert may say its part is over.
    "correlation": "always",
    "inactivity": "known_tracked",
}


def _never_taken(alert_id: str) -> bool:
    return False


def _hit_key(key: TrackKey, device_id: str) -> TrackKey:
    """A correlation's hit, saved as a track that never fires: the place and the device
    in the device's slot (a device id holds no "/")."""
    return (key[0], key[1], f"{key[2]}/{device_id}", None)


def _nothing(
    record: Reading | Event, tracked: Mapping[str, int] | None, changes: list[Any]
) -> None:
    """The handler of records no rule reads."""


# Spans of not listening remembered: a device silent across more is offline anyway.
DEAF_SPANS_KEPT = 16
# After a tick that found records judged, the clock counts for silence only once this
# long has passed with none judged since: until then the telemetry may be between two
# batches of a backlog (a slow commit on an SD card, a long pause of the collector),
# and a device whose next reading is in the next batch is not silent.
QUIET_MS = 15_000
# How far ahead of the gateway's clock a record's time counts for what its condition last
# held for (`Track.held_ms`). Within it, a gateway clock behind the devices (a box whose
# clock drifted) still keeps a detector's reports from before its alarm from ending the
# alarm; past it, a device clock gone far ahead for one report holds off the all-clear
# by this much at most.
AHEAD_HELD_MS = 15 * 60_000


class RuleEngine:
    def __init__(
        self,
        rules: Sequence[Rule],
        registry: Registry,
        periods_s: Mapping[str, float] | None = None,
        *,
        now_ms: int = 0,
        zone: ZoneInfo = CHINA_STANDARD_TIME,
        faults: RuleFaults | None = None,
    ) -> None:
        self._registry = registry
        self.faults = faults or RuleFaults()
        # Whether a person has taken (or closed) an alert, and whether closed: the alert
        # stage asks the book.
        self.taken: Callable[[str], bool] = _never_taken
        self.closed: Callable[[str], bool] = _never_taken
        self._zone = zone
        self._periods_s = dict(periods_s or {})
        # When each device was last heard from; registered devices count from start-up,
        # so that one which never reports is found too.
        self.heard = LastHeard()
        # The newest device time among the records judged since the last tick (None:
        # none were). While records keep coming, silence is judged up to that time, not
        # up to the clock: when the gateway is behind the devices (a backlog queued at
        # the broker after a restart, or more traffic than it takes in), a device whose
        # next message waits in that queue is not silent. Start-up counts as records
        # judged up to then, so the first tick after a restart waits for the backlog.
        self._newest_heard_ms: int | None = now_ms
        # Up to when the last tick judged silence (None: none has yet). A device heard
        # after it was heard at least then, whatever its clock says: one whose clock is
        # minutes behind, reporting every minute, is not silent for those minutes.
        self._heard_floor_ms: int | None = None
        # Spans of time in which the gateway may not have heard what devices sent (its
        # broker connection down, or what it took in not yet judged): closed ones, and
        # the start of an open one. A device is silent only for as long as the gateway
        # was listening: a broker down for an hour, that no device could reach either,
        # does not make every device offline at the first check after it returns.
        self._deaf: list[tuple[int, int]] = []
        self._deaf_since_ms: int | None = None
        # Spans the wall clock skipped when it was set forward (see `_clock_set_forward`),
        # each with the earliest last-heard time it counts for (None: any).
        self._skipped: list[tuple[int | None, int, int]] = []
        self._last_tick_ms = now_ms
        # When a tick last found records judged since the one before it.
        self._judged_by_tick_ms = now_ms
        self._started_ms = now_ms
        # The gateway's downtime before this start, from the newest time heard before it
        # to the start, also counts as not listening unless the broker kept what devices
        # sent meanwhile (see `_settle_downtime`): after a power cut that took the broker
        # down too, devices that report hourly are not all offline at the first check.
        self._downtime: tuple[int, int] | None = None
        self._downtime_settled = True
        for device in registry.devices():
            group = self.heard.group(device.community, device.device_type)
            group.seen_ms[device.device_id] = now_ms
        self.tracks = TrackTable()
        # Keys whose state changed since the last save, so that a restart forgets nothing.
        self._dirty: set[TrackKey] = set()
        # Correlations: by (rule, community, place, None), the devices whose condition
        # held within the window, with when; saved as tracks of their own (`_hit_key`),
        # so that a detector that alarmed before a restart still counts after it.
        self._correlations: dict[TrackKey, dict[str, int]] = {}
        self._hits_dirty: set[tuple[TrackKey, str]] = set()
        self._repeats: list[Repeat] = []
        self._judged_at_ms: int | None = None
        # Samples do not depend on the rules: a reload keeps them.
        self._rates = RateWindows()
        self.load(rules)

    @property
    def registry(self) -> Registry:
        """The registry the rules read device attributes from."""
        return self._registry

    def use_registry(self, registry: Registry, changes: RegistryChanges, now_ms: int) -> None:
        """A reloaded registry, read from the next record on. A device it adds that was
        never heard is watched from now, as one registered at start-up is from then; one
        it takes out (or registers as another type) is no longer watched as it was, to be
        found offline forever: if it still reports, it is heard again."""
        self._rename_places(self._registry, registry)
        self._registry = registry
        # The evaluators read device attributes through the registry they were made with.
        self._forget_evaluators()
        for registered in changes.no_longer():
            self.heard.forget(_ref(registered))
        self._forget_devices([(d.community, d.device_id) for d in changes.no_longer()])
        for registered in changes.newly():
            device = _ref(registered)
            if self.heard.get(device) is None:
                self.heard.hear(device, now_ms)

    def _rename_places(self, before: Registry, after: Registry) -> None:
        """Correlations under way (an alert open, or devices within the window) about a
        place that the reloaded registry calls otherwise, carried over to its new name:
        once another compound has a building 3 too, lakeside's is east·lakeside·3, and
        its detectors still alarming are the same fire, not a second one."""
        under_way = {*self._correlations, *(k for k, _ in self.tracks.of_rules(self._correlation))}
        for key in under_way:
            place_type = self._correlation[key[0]].spec.place
            renamed = _renamed(before, after, key[1], place_type, key[2])
            if renamed is None:
                continue
            self._move_place(key, renamed)

    def place_alerts(self) -> list[str]:
        """The alerts about places that the rules' tracks hold."""
        return [track.alert_id for _, track in self.tracks.of_rules(self._correlation)]

    def carry_places(self, began: Mapping[str, Site]) -> None:
        """Correlations restored at a start about a place the registry now calls
        otherwise (its sheet changed while the gateway was stopped), carried over to its
        new name as a reload does: `began`, where each open place alert began, by id."""
        for key, track in self.tracks.of_rules(self._correlation):
            site = began.get(track.alert_id)
            place_type = self._correlation[key[0]].spec.place
            if site is None or place_type == COMMUNITY:
                continue
            place = (key[1], site.area, site.compound, site.building)
            renamed = _called_now(self._registry, place_type, place, key[2])
            if renamed is not None:
                self._move_place(key, renamed)

    def _move_place(self, key: TrackKey, renamed: str) -> None:
        moved = (key[0], key[1], renamed, None)
        if moved in self.tracks or moved in self._correlations:
            # Under way under that name too (a state file kept with another sheet):
            # neither is taken into the other.
            return
        track = self.tracks.pop(key)
        if track is not None:
            self.tracks[moved] = track
            self._dirty.update((key, moved))
        hits = self._correlations.pop(key, {})
        if hits:
            self._correlations[moved] = hits
        for device_id in hits:
            self._hits_dirty.update(((key, device_id), (moved, device_id)))

    def load(self, rules: Sequence[Rule]) -> None:
        """Take a new set of rules; the state of rules that remain is kept."""
        self._rules = [r for r in rules if r.spec.kind != "absence"]
        self._absence = [r for r in rules if r.spec.kind == "absence"]
        self._absent = frozenset(r.name for r in self._absence)
        self._inactivity = {r.name: r for r in rules if r.spec.kind == "inactivity"}
        self._correlation = {r.name: r for r in rules if r.spec.kind == "correlation"}
        self._merging = {r.name: r for r in rules if r.spec.kind == "event" and r.spec.merge_s}
        # The rules whose tracks a tick walks first: merging events, correlations.
        self._ticked = frozenset(self._merging) | frozenset(self._correlation)
        for key in list(self._correlations):
            if key[0] not in self._correlation:
                self._forget_hits(key)
        names = {rule.name for rule in rules}
        # The timers of a rule taken out are let go in the book too: kept, they would hold
        # its closed alerts from retention for ever, and come back if the rule did.
        gone = [key for key in self.tracks if key[0] not in names]
        self.tracks = TrackTable((k, t) for k, t in self.tracks.items() if k[0] in names)
        self._dirty.update(gone)
        self._by_type: dict[str, list[Rule]] = {}
        # Per device type: the rate windows (field -> seconds), the registry attributes
        # its rules read.
        self._windows: dict[str, dict[str, float]] = {}
        self._attributes: dict[str, frozenset[str]] = {}
        self._forget_evaluators()

    def _forget_evaluators(self) -> None:
        # One generated evaluator per record shape; and by device type, by kind of record
        # (reading or event, with or without a port), the last few shapes seen with
        # their field names, which tell a record's shape without making a key for it.
        self._handlers: dict[Shape, Handler] = {}
        self._recent: dict[str, list[list[KnownShape]]] = {}
        # By (community, device type): see _route.
        self._routes: dict[tuple[str, str], tuple[HeardGroup, list[list[KnownShape]]]] = {}

    @property
    def rates(self) -> RateWindows:
        """The samples behind `<field>_per_min`, saved and restored across a restart."""
        return self._rates

    def forget_taken_out(self, registered_before: Iterable[tuple[str, str]]) -> None:
        """Devices registered before, by (community, device id), that the registry has no
        longer: no longer watched, as `use_registry` has it for a reload."""
        gone = [key for key in registered_before if self._registry.get(*key) is None]
        for community, device_id in gone:
            device_type = self.heard.type_of(community, device_id)
            if device_type is not None:
                self.heard.forget(DeviceRef(community, device_type, device_id))
        self._forget_devices(gone)

    def _forget_devices(self, gone: Sequence[tuple[str, str]]) -> None:
        """The rate windows of devices taken out, and the rule timers of their alerts a
        person closed: one kept would hold the closed alert from retention for ever. An
        open alert's stays: a device still reporting (taken in unregistered) ends it,
        rather than raising a second."""
        if not gone:
            return  # most starts: no timer to look through
        self._rates.forget(gone)
        taken_out = set(gone)
        dropped = [
            key
            for key, track in self.tracks.items()
            if (key[1], key[2]) in taken_out
            and key[0] not in self._correlation
            and (not track.firing or self.closed(track.alert_id))
        ]
        for key in dropped:
            del self.tracks[key]
        self._dirty.update(dropped)

    def restore_seen(self, saved: Iterable[tuple[DeviceRef, int]]) -> None:
        """When devices were last heard, as saved before a restart."""
        saved = list(saved)
        self.heard.update(saved)
        # A device registered as another type since (a detector entered as a bracelet,
        # corrected): no longer watched as the type it was heard as, to be found offline
        # as that type for ever.
        for device, _ in saved:
            registered = self._registry.get(device.community, device.device_id)
            if registered is not None and registered.device_type != device.device_type:
                self.heard.forget(device)
        # A registered device never heard is watched from the first start that knew it,
        # saved as if heard then: a gateway that restarts more often than the device's
        # silence takes would otherwise never find it offline.
        known = {device for device, _ in saved}
        for registered in self._registry.devices():
            device = _ref(registered)
            if device not in known:
                self.heard.hear(device, self._started_ms)
        if saved:
            self._newest_heard_ms = newest_ms = max(seen_ms for _, seen_ms in saved)
            if newest_ms < self._started_ms:
                self._downtime = (newest_ms, self._started_ms)
                self._downtime_settled = False

    def _settle_downtime(self, records: Sequence[Record]) -> None:
        """Whether the broker kept what devices sent while the gateway was down, told by
        the first readings and events judged after the start (status reports are left
        out: a retained one may be days old). A backlog begins near the start of the
        downtime, and only what precedes it was not heard; live traffic begins after the
        start, and all the downtime was not heard."""
        times = [
            r.time_ms
            for r in records
            if type(r) is not StatusReport and r.time_source is TimeSource.DEVICE
        ]
        if not times or self._downtime is None:
            return
        down_ms, up_ms = self._downtime
        first_ms = min(times)
        # The start was later than the clock said by as much as it was set forward since
        # (NTP at boot, on a box that started with the clock it saved at shutdown).
        skipped_ms = sum(end - start for _, start, end in self._skipped)
        if first_ms < up_ms + skipped_ms:
            self._downtime = (down_ms, max(down_ms, first_ms))
            # What devices sent before the start was kept: a step of the clock counts only
            # for what the gateway timed by it since.
            self._skipped = [(up_ms, start, end) for _, start, end in self._skipped]
        self._downtime_settled = True

    def clock_set(self, now_ms: int, step_ms: int) -> None:
        """The wall clock was set forward (or, negative, back) by `step_ms`, as NTP sets a
        box that booted with the clock it saved at shutdown (see gateway.clock.WallSteps)."""
        if step_ms > 0:
            self._clock_set_forward(now_ms, step_ms)
        elif step_ms < 0:
            self._clock_set_back(now_ms, -step_ms)

    def _clock_set_forward(self, now_ms: int, by_ms: int) -> None:
        """What the gateway timed by its own clock before the step (its start, a device
        that sends no time of its own) is `by_ms` behind: the span the clock skipped is
        time it did not listen, for a silence that began by then. A device heard with its
        own time, later than the clock said (right while the gateway's was behind), is
        silent only since then: the span does not count for it."""
        if self._deaf_since_ms is None:
            # Not listening since before the step, the span that closes later covers it.
            self._skipped = [
                *self._skipped[-(DEAF_SPANS_KEPT - 1) :],
                (None, now_ms - by_ms, now_ms),
            ]
        # Not listening from this tick on would begin after the span.
        self._last_tick_ms = now_ms
        # Quiet for QUIET_MS is time that passed, not the step.
        self._judged_by_tick_ms += by_ms

    def _clock_set_back(self, now_ms: int, by_ms: int) -> None:
        """What the gateway timed before the step is `by_ms` ahead of its clock: a device
        heard then would not count as silent until the clock caught up. Times ahead of
        the clock are moved back by the step; the gateway's own too, and the rules'
        tracks': a report stamped by the clock ahead would otherwise hold off the
        all-clear of its alert until the clock caught up."""
        self.heard.shift(now_ms, -by_ms)
        for key, track in self.tracks.items():
            if track.shift(now_ms, -by_ms):
                self._dirty.add(key)
        self._started_ms -= by_ms
        self._last_tick_ms -= by_ms
        self._judged_by_tick_ms -= by_ms
        if self._deaf_since_ms is not None:
            self._deaf_since_ms -= by_ms
        if not self._downtime_settled and self._downtime is not None:
            down_ms, up_ms = self._downtime
            self._downtime = (down_ms, max(down_ms, up_ms - by_ms))

    def _heard_through_ms(self, now_ms: int, listening: bool) -> int | None:
        """Up to when silence is judged at this tick (see `_newest_heard_ms`); None: not
        at all. A device clock ahead of the gateway's counts as the gateway's. With
        nothing judged since the last tick, the clock counts if the gateway is listening
        and has been quiet for QUIET_MS: the devices are silent, not queued."""
        if listening:
            if self._deaf_since_ms is not None:
                self._deaf = [*self._deaf[-(DEAF_SPANS_KEPT - 1) :], (self._deaf_since_ms, now_ms)]
                self._deaf_since_ms = None
        elif self._deaf_since_ms is None:
            self._deaf_since_ms = self._last_tick_ms
        self._last_tick_ms = now_ms
        newest, self._newest_heard_ms = self._newest_heard_ms, None
        if newest is not None:
            self._judged_by_tick_ms = now_ms
            return min(now_ms, newest)
        if listening and now_ms - self._judged_by_tick_ms >= QUIET_MS:
            return now_ms
        return None

    def _deaf_spans(self, from_ms: int, to_ms: int) -> list[tuple[int, int]]:
        """The parts of the time between the two in which the gateway was not listening."""
        spans = self._deaf
        if self._deaf_since_ms is not None:
            spans = [*spans, (self._deaf_since_ms, to_ms)]
        if self._downtime is not None:
            spans = [self._downtime, *spans]
        if self._skipped:
            # A span the clock skipped counts whole, or not at all: a silence that began
            # after it began was timed by a clock already right.
            spans = [
                *spans,
                *(
                    (start, end)
                    for since_ms, start, end in self._skipped
                    if from_ms <= start and (since_ms is None or since_ms <= from_ms)
                ),
            ]
        clipped = ((max(start, from_ms), min(end, to_ms)) for start, end in spans)
        return [(start, end) for start, end in clipped if end > start]

    def _deaf_ms(self, from_ms: int, to_ms: int) -> int:
        """How much of the time between the two the gateway was not listening."""
        return sum(end - start for start, end in self._deaf_spans(from_ms, to_ms))

    def tick(self, now_ms: int, *, listening: bool = True) -> list[AlertChange]:
        """Fire absence and inactivity alerts; resolve correlations none of whose devices
        still says so.

        `listening`: the gateway is connected to the broker, and has judged all it took
        in; when not, silence is judged only as far as the records judged show."""
        changes: list[AlertChange] = []
        heard_through_ms = self._heard_through_ms(now_ms, listening)
        if heard_through_ms is not None:
            self._heard_floor_ms = heard_through_ms
        for key, track in self.tracks.of_rules(self._ticked):
            merging = self._merging.get(key[0])
            if merging is not None:
                # Nothing more joins it: let the track go. Timed by the gateway's clock,
                # as the device's may be behind it (see Track.held_ms).
                joined_ms = track.since_ms if track.held_ms is None else track.held_ms
                if now_ms - joined_ms >= merging.spec.merge_s * 1000:
                    del self.tracks[key]
                    self._dirty.add(key)
                continue
            rule = self._correlation.get(key[0])
            if rule is None or heard_through_ms is None:
                continue
            # A device that has not said so again for this long, while the gateway
            # listened, is taken to have stopped (it reports its alarm state at every
            # report); a broker down, or the gateway, is no such silence.
            hold_ms = self._correlation_hold_ms(rule)
            hits = self._correlations.get(key, {})
            stale = [
                device_id
                for device_id, at_ms in hits.items()
                if heard_through_ms - at_ms - self._deaf_ms(at_ms, heard_through_ms) >= hold_ms
            ]
            for device_id in stale:
                del hits[device_id]
                self._hits_dirty.add((key, device_id))
            if not hits:
                changes.append(self._resolve_correlation(rule, key, now_ms))
        if heard_through_ms is None:
            return changes
        for key, track in self.tracks.of_rules(self._inactivity):
            change = self._inactive_too_long(self._inactivity[key[0]], key, track, heard_through_ms)
            if change is not None:
                changes.append(change)
        for rule in self._absence:
            for (community, device_type), group in self.heard.groups.items():
                period_s = self._periods_s.get(device_type)
                if period_s is None or not rule.applies_to(device_type):
                    continue
                silent_ms = rule.spec.after_periods * period_s * 1000
                for device_id, seen_ms in group.seen_ms.items():
                    if heard_through_ms - seen_ms < silent_ms:
                        continue
                    # Offline already: looked up before the deaf spans are summed.
                    key = (rule.name, community, device_id, None)
                    if key in self.tracks:
                        continue
                    if heard_through_ms - seen_ms - self._deaf_ms(seen_ms, heard_through_ms) < (
                        silent_ms
                    ):
                        continue
                    device = DeviceRef(community, device_type, device_id)
                    alert_id = _alert_id(rule.name, device, None, seen_ms)
                    self.tracks[key] = Track(True, seen_ms, 0, None, alert_id)
                    self._dirty.add(key)
                    values: dict[str, FieldValue] = {
                        "silent_s": (heard_through_ms - seen_ms) // 1000
                    }
                    changes.append(
                        _change(
                            rule, device, None, AlertState.FIRING, alert_id, seen_ms, now_ms,
                            values,
                        )
                    )  # fmt: skip
        return changes

    def _apply_inactivity(
        self, rule: Rule, record: Reading | Event, holds: bool | None, rates: Any = None
    ) -> AlertChange | None:
        value = record.fields.get(rule.spec.field or "")
        if holds is None or type(value) not in (int, float):
            return None
        device = record.device
        key = (rule.name, device.community, device.device_id, None)
        track = self.tracks.get(key)
        if not holds:
            # Not judged (the bracelet is off): the watch starts again when it holds.
            if track is not None and not track.firing:
                del self.tracks[key]
                self._dirty.add(key)
            return None
        # A clock glitch hours ahead neither starts the stillness in the future nor
        # counts it as hours long.
        at_ms = self._held_at(record)
        if track is not None and track.last_value is not None and value < track.last_value:  # type: ignore[operator]
            # A cumulative counter reset (steps at midnight) is not activity.
            track.last_value = float(value)  # type: ignore[arg-type]
            self._dirty.add(key)
            return self._inactive_too_long(rule, key, track, at_ms, at_ms)
        if track is None or track.last_value != value:
            self.tracks[key] = Track(False, at_ms, 0, None, "", float(value))  # type: ignore[arg-type]
            self._dirty.add(key)
            if track is not None and track.firing:
                return _record_change(
                    rule, None, AlertState.RESOLVED, track.alert_id, record, track.since_ms
                )
            return None
        if not track.firing and at_ms < track.since_ms:
            # Unchanged already then: a report sent late, or the clock right again.
            track.since_ms = at_ms
            self._dirty.add(key)
        return self._inactive_too_long(rule, key, track, at_ms, at_ms)

    def _apply_correlation(
        self, rule: Rule, record: Reading | Event, holds: bool | None, rates: Any = None
    ) -> AlertChange | None:
        """Fires when `min_devices` of a place say so within `window_s`; the alert lasts
        while any of them still says so: a building on fire is not over because five
        minutes passed without a third detector, while two still alarm. A device stops
        saying so by meeting `clear_when` (by `when` breaking, without one)."""
        if not holds and not self._correlations:
            return None
        device = record.device
        place = self._place_of(device, rule.spec.place)
        if place is None:
            return None
        key = (rule.name, device.community, place.device_id, None)
        if not holds:
            # Before the alert, a device's all-clear takes nothing back: a fire that
            # silenced one detector is still spreading to the next.
            hits = self._correlations.get(key)
            if key not in self.tracks or hits is None or device.device_id not in hits:
                return None
            if record.time_ms < hits[device.device_id]:
                # From before the device said so: after an outage its hourly reports
                # from before the fire come after its alarm, and must not end it.
                return None
            if not self._cleared(rule, record, holds, rates):
                return None
            del hits[device.device_id]
            self._hits_dirty.add((key, device.device_id))
            return None if hits else self._resolve_correlation(rule, key, record.time_ms)
        window_ms = int(rule.spec.window_s * 1000)
        track = self.tracks.get(key)
        hits = self._correlations.get(key, {})
        if track is not None and device.device_id not in hits and self.closed(track.alert_id):
            # Closed by a person while a detector still said so (one that reports hourly
            # counts for hours): a detector that joins now, or alarms again after its
            # all-clear, is a fire spreading again, judged afresh from its first
            # detector, not taken into the alert nobody watches any more.
            del self.tracks[key]
            self._forget_hits(key)
            self._dirty.add(key)
            track = None
        hits = self._correlations.setdefault(key, {})
        hits[device.device_id] = max(record.time_ms, hits.get(device.device_id, 0))
        self._hits_dirty.add((key, device.device_id))
        if track is not None:
            # Open: every device that says so is one of its own until it stops.
            track.since_ms = max(track.since_ms, record.time_ms)
            self._dirty.add(key)
            return None
        # The window ends at the newest: a device's report judged late (queued behind
        # the alarm lane) is not one within it because it came last.
        newest_ms = max(hits.values())
        for device_id, at_ms in list(hits.items()):
            if at_ms < newest_ms - window_ms:
                del hits[device_id]
                self._hits_dirty.add((key, device_id))
        if len(hits) < rule.spec.min_devices:
            return None
        first_ms = min(hits.values())
        alert_id = _alert_id(rule.name, place, None, first_ms)
        # since_ms: the latest hit, from which the window runs until the alert resolves.
        self.tracks[key] = Track(True, record.time_ms, len(hits), None, alert_id)
        self._dirty.add(key)
        values: dict[str, FieldValue] = {"devices": ",".join(sorted(hits))}
        return _change(
            rule, place, None, AlertState.FIRING, alert_id, first_ms, record.time_ms, values
        )

    def _cleared(self, rule: Rule, record: Reading | Event, holds: bool | None, rates: Any) -> bool:
        """Whether the record says the rule's condition is over: its `clear_when`, or
        its `when` broken."""
        if rule.clear_when is None:
            return holds is False
        try:
            return bool(rule.clear_when(self._scope(record, rates)))
        except Unknown:
            return False
        except Exception as exc:
            self.faults.condition(rule.name, record, exc)
            return False

    def _resolve_correlation(self, rule: Rule, key: TrackKey, at_ms: int) -> AlertChange:
        track = self.tracks[key]
        del self.tracks[key]
        self._forget_hits(key)
        self._dirty.add(key)
        # Every change of an alert is about the place it began with, though a reload
        # since calls that place otherwise (see `_rename_places`).
        place = DeviceRef(key[1], rule.spec.place, _named(track.alert_id, key))
        return _change(
            rule, place, None, AlertState.RESOLVED, track.alert_id, track.since_ms, at_ms, {}
        )

    def _correlation_hold_ms(self, rule: Rule) -> int:
        """How long a device of an open correlation counts without saying so again: 2.5
        reporting periods of its type, as for an offline device, and the window at least."""
        types = self._periods_s if "*" in rule.spec.device_types else rule.spec.device_types
        periods = [self._periods_s.get(t, 0.0) for t in types]
        return round(max([rule.spec.window_s, *(2.5 * p for p in periods)]) * 1000)

    def _place_of(self, device: DeviceRef, place: str) -> DeviceRef | None:
        """The place a correlation alert is about, named like a device of type `place`."""
        if place == COMMUNITY:
            return DeviceRef(device.community, place, device.community)
        registered = self._registry.get(device.community, device.device_id)
        name = self._registry.place_id(registered, place) if registered is not None else None
        return DeviceRef(device.community, place, name) if name else None

    def _inactive_too_long(
        self, rule: Rule, key: TrackKey, track: Track, now_ms: int, heard_ms: int | None = None
    ) -> AlertChange | None:
        """Fire if the field has not changed for long enough, up to `now_ms`; the device
        was last heard at `heard_ms` (None: as `heard` says)."""
        if track.firing:
            return None
        window = rule.window
        if window is None:
            elapsed_s = (now_ms - track.since_ms) / 1000
        elif window.wall_seconds(track.since_ms, now_ms, self._zone) < rule.spec.unchanged_for_s:
            # Active hours add up to no more than the local clock time: most checks end here.
            return None
        else:
            elapsed_s = window.seconds_within(track.since_ms, now_ms, self._zone)
        if elapsed_s < rule.spec.unchanged_for_s:
            return None
        registered = self._registry.get(key[1], key[2])
        if registered is not None:
            device = DeviceRef(key[1], registered.device_type, key[2])
        else:
            # Rare: an unregistered device; its type is known from when it was heard.
            device = DeviceRef(key[1], self.heard.type_of(key[1], key[2]) or "", key[2])
        # A value heard unchanged after the gateway was not listening vouches for that
        # time too (the field is cumulative); time not listened to since the device was
        # last heard does not count: the device may have moved, and said so, meanwhile.
        if heard_ms is None:
            heard_ms = self.heard.get(device) or track.since_ms
        for start, end in self._deaf_spans(max(heard_ms, track.since_ms), now_ms):
            if window is None:
                elapsed_s -= (end - start) / 1000
            else:
                elapsed_s -= window.seconds_within(start, end, self._zone)
        if elapsed_s < rule.spec.unchanged_for_s:
            return None
        track.firing = True
        track.alert_id = _alert_id(rule.name, device, None, track.since_ms)
        self._dirty.add(key)
        values: dict[str, FieldValue] = {"unchanged_s": int(elapsed_s)}
        if track.last_value is not None:
            values[rule.spec.field or "value"] = track.last_value
        return _change(
            rule, device, None, AlertState.FIRING, track.alert_id, track.since_ms, now_ms, values
        )

    def _heard(self, record: Record) -> list[AlertChange]:
        changes = []
        for rule in self._absence:
            key = (rule.name, record.device.community, record.device.device_id, None)
            track = self.tracks.get(key)
            if track is None:
                continue
            if type(record) is StatusReport and (
                record.time_ms <= track.since_ms or record.time_source is TimeSource.RETAINED
            ):
                # A retained status, which the broker hands over with every new
                # subscription however old it is, from before the device fell silent, or
                # with no time to tell: not a word from it since.
                continue
            self.tracks.pop(key)
            self._dirty.add(key)
            changes.append(
                _change(
                    rule,
                    record.device,
                    None,
                    AlertState.RESOLVED,
                    track.alert_id,
                    track.since_ms,
                    record.time_ms,
                    {},
                )
            )
        return changes

    def _forget_hits(self, key: TrackKey) -> None:
        for device_id in self._correlations.pop(key, {}):
            self._hits_dirty.add((key, device_id))

    def take_changes(self) -> tuple[list[tuple[TrackKey, Track]], list[TrackKey]]:
        """Tracks changed and tracks gone since the last call, to persist."""
        changed, gone = self.tracks.split(self._dirty)
        self._dirty.clear()
        for key, device_id in self._hits_dirty:
            at_ms = self._correlations.get(key, {}).get(device_id)
            if at_ms is None:
                gone.append(_hit_key(key, device_id))
            else:
                changed.append((_hit_key(key, device_id), Track(False, at_ms, 0)))
        self._hits_dirty.clear()
        return changed, gone

    def forget(self, change: AlertChange) -> None:
        """Lets go of the track of a change not made (an old record sent again, see
        AlertStage): left firing, it would take in the next record that meets the rule,
        a fire now included, as part of an alert that is nobody's."""
        key = (change.rule, change.device.community, change.device.device_id, change.port)
        track = self.tracks.get(key)
        if track is not None and track.alert_id == change.alert_id:
            self.tracks.pop(key)
            self._dirty.add(key)

    def lasts(self, rule: str) -> bool:
        """Whether an alert of the rule lasts while its condition holds: not an event's,
        which is over once it came. A rule no longer loaded counts as lasting."""
        return all(r.spec.kind != "event" for r in self._rules if r.name == rule)

    def place_types(self, rule: str) -> tuple[str, ...]:
        """The device types a rule about places judges (`*`: any); none for another
        rule, or one no longer loaded."""
        found = self._correlation.get(rule)
        return found.spec.device_types if found is not None else ()

    def take_repeats(self) -> list[Repeat]:
        """Events that joined an alert since the last call, for its history."""
        repeats, self._repeats = self._repeats, []
        return repeats

    def take_seen(self) -> HeardTimes:
        """Devices heard from since the last call, with when, to persist."""
        return self.heard.take_fresh()

    def restore(self, saved: Iterable[tuple[TrackKey, Track]]) -> None:
        names = {rule.name for rule in self._rules} | self._absent
        hits: list[tuple[Rule, TrackKey, str, int]] = []
        for key, track in saved:
            rule = self._correlation.get(key[0])
            if rule is not None and not track.firing:
                place, _, device_id = key[2].rpartition("/")
                hits.append((rule, (key[0], key[1], place, None), device_id, track.since_ms))
            elif key[0] in names:
                self.tracks[key] = track
            elif rule is None:
                # Of a rule taken out while the gateway was stopped.
                self._dirty.add(key)
        # A hit of an open alert is one of its devices; another, once its window ended
        # before the start, is let go.
        for rule, place_key, device_id, at_ms in hits:
            if place_key in self.tracks or at_ms >= self._started_ms - rule.spec.window_s * 1000:
                self._correlations.setdefault(place_key, {})[device_id] = at_ms
            else:
                self._hits_dirty.add((place_key, device_id))

    def _rules_for(self, device_type: str) -> list[Rule]:
        rules = self._by_type.get(device_type)
        if rules is None:
            rules = self._by_type[device_type] = [
                r for r in self._rules if r.applies_to(device_type)
            ]
            self._attributes[device_type] = frozenset().union(*(r.attributes for r in rules))
            windows: dict[str, float] = {}
            for rule in rules:
                for field, window_s in rule.spec.rates.items():
                    windows[field] = max(window_s, windows.get(field, 0.0))
            self._windows[device_type] = windows
        return rules

    def _handler(self, shape: Shape) -> Handler:
        """The evaluator of the rules whose conditions read something records of this
        shape carry: a record carrying none of their names cannot change their state."""
        device_type, record_class, no_port, fields = shape
        candidates = self._rules_for(device_type)
        windows = self._windows[device_type]
        present = set(fields)
        if issubclass(record_class, Event):
            present.add("event")
        if not no_port:
            present.add("port")
        present |= {f"{field}_per_min" for field in windows if field in present}
        rules = [rule for rule in candidates if rule.names & present]
        if not rules:
            return _nothing
        judged = [
            Judged(
                rule.name,
                rule.when_tree,
                self._action(rule),
                _CALL_WHEN[rule.spec.kind],
                _in_window(rule.window, self._zone) if rule.window else None,
            )
            for rule in rules
        ]
        return build_handler(
            shape,
            judged,
            windows,
            add_rate=self._rates.add,
            registered=self._registry.get,
            fault=self.faults.condition,
            action_fault=self.faults.action,
            device_has=_registry_attribute,
        )

    def _action(self, rule: Rule) -> Action:
        kind = rule.spec.kind
        if kind == "inactivity":
            return partial(self._apply_inactivity, rule)
        if kind == "correlation":
            return partial(self._apply_correlation, rule)
        if kind == "event":
            return partial(self._apply_event, rule)
        return partial(self._apply_condition, rule)

    def evaluate(
        self, records: Sequence[Record], now_ms: int | None = None, *, ahead: bool = False
    ) -> list[AlertChange]:
        """`now_ms`: the gateway's time as it judges them, which bounds what a device's
        clock ahead of it may claim (see `Track.held_ms`). `ahead`: records judged ahead
        of the telemetry queued before them (the alarm lane's): they do not say how far
        the devices' records have been judged, nor how the downtime's backlog began, as
        the telemetry's do. An SOS that came at once must not make every device whose
        readings still wait in the backlog look silent."""
        self._judged_at_ms = now_ms
        if not self._downtime_settled and not ahead:
            self._settle_downtime(records)
        changes: list[AlertChange] = []
        routes = self._routes
        counts = self.tracks.counts
        last_device = None
        newest_ms = -1 if self._newest_heard_ms is None else self._newest_heard_ms
        floor_ms = -1 if self._heard_floor_ms is None else self._heard_floor_ms
        # None of the records is newer than the newest before them, ahead.
        device_time = None if ahead else TimeSource.DEVICE
        for record in records:
            if record.time_ms > newest_ms and record.time_source is device_time:
                newest_ms = record.time_ms
            device = record.device
            if type(record) is StatusReport and not record.online:
                # A last will, which the broker publishes when a device's connection
                # lapses: the device is gone, not heard.
                last_device = None
                continue
            if device is not last_device:
                # The records of one message share their device: heard once.
                last_device = device
                device_id = device.device_id
                route = routes.get((device.community, device.device_type))
                if route is None:
                    route = self._route(device)
                group, recent = route
                # LastHeard.hear, inline.
                seen_ms = group.seen_ms
                if not group.fresh:
                    self.heard.fresh_groups.append(group)
                group.fresh.add(device_id)
                if device_id in counts and not self._absent.isdisjoint(counts[device_id]):
                    try:
                        changes.extend(self._heard(record))
                    except Exception as exc:
                        self.faults.judging(record, exc)
            time_ms = record.time_ms
            if isinstance(record, StatusReport):
                # A retained status comes with every new subscription, however old: it
                # says the device was heard then (if it says when), not that it was
                # silent since, and a device first known by it is watched from the start.
                heard_ms = time_ms if time_ms > floor_ms else floor_ms
                if record.time_source is not TimeSource.RETAINED and heard_ms > seen_ms.get(
                    device_id, self._started_ms
                ):
                    seen_ms[device_id] = heard_ms
                elif device_id not in seen_ms:
                    seen_ms[device_id] = self._started_ms
                continue
            seen_ms[device_id] = time_ms if time_ms > floor_ms else floor_ms
            shapes = recent[(type(record) is Event) * 2 + (record.port is None)]
            keys = record.fields.keys()
            for names, known in shapes:
                if keys == names:
                    handler = known
                    break
            else:
                handler = self._handler_for(record, shapes)
            # With the rules that have a track for this device, if any. A fault is the
            # record's alone: the batch, and the alarms in it, are still judged.
            try:
                handler(record, counts.get(device_id), changes)
            except Exception as exc:
                self.faults.judging(record, exc)
        if newest_ms >= 0:
            self._newest_heard_ms = newest_ms
        return changes

    def _route(self, device: DeviceRef) -> tuple[HeardGroup, list[list[KnownShape]]]:
        """Where a device's records go: its last-heard group, and the recent shapes of
        its type by kind of record."""
        recent = self._recent.get(device.device_type)
        if recent is None:
            recent = self._recent[device.device_type] = [[], [], [], []]
        route = self._routes[(device.community, device.device_type)] = (
            self.heard.group(device.community, device.device_type),
            recent,
        )
        return route

    def _handler_for(self, record: Reading | Event, shapes: list[KnownShape]) -> Handler:
        shape = (record.device.device_type, type(record), record.port is None, tuple(record.fields))
        handler = self._handlers.get(shape)
        if handler is None:
            handler = self._handlers[shape] = self._handler(shape)
        if type(record) in (Reading, Event):  # what the kind of record in `evaluate` tells
            shapes.insert(0, (frozenset(shape[3]), handler))
            del shapes[_RECENT_SHAPES:]
        return handler

    def _scope(self, record: Reading | Event, rates: Mapping[str, float | None]) -> dict[str, Any]:
        """What the reference evaluators read: registry attributes, the record's fields,
        `event`, `port`, the known rates."""
        device = record.device
        scope: dict[str, Any] = {}
        registered = self._registry.get(device.community, device.device_id)
        if registered is not None:
            wanted = self._attributes[device.device_type]
            known = {name: getattr(registered, name, None) for name in wanted}
            known.update(registered.thresholds)
            scope = {
                f"device.{name}": value
                for name, value in known.items()
                if value is not None and name in wanted
            }
        scope.update(record.fields)
        # A reading is known not to be an event: `event == 'x'` is false for it, not unknown.
        scope["event"] = record.kind if isinstance(record, Event) else ""
        scope["port"] = record.port
        scope.update((name, rate) for name, rate in rates.items() if rate is not None)
        return scope

    def _held_at(self, record: Record) -> int:
        """The record's time, never more than AHEAD_HELD_MS past the gateway's."""
        judged_at_ms = self._judged_at_ms
        if judged_at_ms is None:
            return record.time_ms
        return min(record.time_ms, judged_at_ms + AHEAD_HELD_MS)

    def _judged_at(self, record: Record) -> int:
        """The gateway's time as it judges `record`; the record's time without one."""
        return record.time_ms if self._judged_at_ms is None else self._judged_at_ms

    def _apply_event(
        self, rule: Rule, record: Reading | Event, holds: bool | None, rates: Any = None
    ) -> AlertChange | None:
        if not holds:
            return None
        port = record.port if rule.spec.per_port else None
        merge_ms = rule.spec.merge_s * 1000
        key = (rule.name, record.device.community, record.device.device_id, port)
        track = self.tracks.get(key) if merge_ms else None
        if (
            track is not None
            and self._judged_at(record)
            - (track.since_ms if track.held_ms is None else track.held_ms)
            < merge_ms
            and not self.taken(track.alert_id)
        ):
            # The same occurrence going on (a resident pressing SOS again while the
            # first is being told, a lid rattling): the alert is already being told.
            track.since_ms = max(track.since_ms, record.time_ms)
            track.held_ms = self._judged_at(record)
            track.readings += 1
            self._dirty.add(key)
            self._repeats.append(Repeat(track.alert_id, record.time_ms))
            return None
        alert_id = _alert_id(rule.name, record.device, port, record.time_ms)
        if merge_ms:
            self.tracks[key] = Track(
                True, record.time_ms, 1, None, alert_id, held_ms=self._judged_at(record)
            )
            self._dirty.add(key)
        return _record_change(rule, port, AlertState.FIRING, alert_id, record, record.time_ms)

    def _apply_condition(
        self,
        rule: Rule,
        record: Reading | Event,
        holds: bool | None,
        rates: Mapping[str, float | None],
    ) -> AlertChange | None:
        spec = rule.spec
        device = record.device
        port = record.port if spec.per_port else None
        key = (rule.name, device.community, device.device_id, port)
        track = self.tracks.get(key)
        now_ms = record.time_ms
        if holds:
            if (
                track is not None
                and track.clearing_since_ms is not None
                and self.closed(track.alert_id)
            ):
                # Closed by a person once it had begun to clear (a detector hushed, burnt
                # toast): holding again is a new occurrence, a fire this time, and a new
                # alert, not one taken into the alert nobody watches any more.
                track = None
            # Never far past the gateway's own time: a clock glitch a day ahead must not
            # leave every report after it too old to clear the alert, nor start a
            # duration that the right clock after it would take a day to reach.
            held_ms = self._held_at(record)
            created = track is None
            if track is None:
                alert_id = _alert_id(rule.name, device, port, now_ms)
                track = self.tracks[key] = Track(False, held_ms, 0, None, alert_id)
            elif not track.firing and now_ms < track.since_ms:
                # It held already then: a report sent late, or the clock right again.
                track.since_ms = now_ms
            self._dirty.add(key)
            track.readings += 1
            track.clearing_since_ms = None
            if track.held_ms is None or held_ms > track.held_ms:
                track.held_ms = held_ms
            if track.firing:
                return None
            if held_ms - track.since_ms >= spec.for_s * 1000 and track.readings >= spec.repeat:
                if not created and self.closed(track.alert_id):
                    # Closed while pending: firing, it is an alert of its own.
                    track.alert_id = _alert_id(rule.name, device, port, now_ms)
                track.firing = True
                return _record_change(
                    rule, port, AlertState.FIRING, track.alert_id, record, track.since_ms
                )
            if created:
                # Held, but not yet for long enough: pending, visible, not yet announced.
                return replace(
                    _record_change(
                        rule, port, AlertState.PENDING, track.alert_id, record, track.since_ms
                    ),
                    fired=False,
                )
            return None
        if track is None:
            return None
        if now_ms < (track.since_ms if track.held_ms is None else track.held_ms):
            # Older than what the condition last held for: an alarm comes on a lane of its
            # own, ahead of the reports its detector made before it, which must not end it.
            return None
        if not track.firing:
            if holds is False:
                # The condition broke before it held long enough: the pending alert ends.
                del self.tracks[key]
                self._dirty.add(key)
                return replace(
                    _record_change(
                        rule, port, AlertState.RESOLVED, track.alert_id, record, track.since_ms
                    ),
                    fired=False,
                )
            return None
        if not self._cleared(rule, record, holds, rates):
            return None
        if track.clearing_since_ms is None:
            track.clearing_since_ms = now_ms
            self._dirty.add(key)
        if now_ms - track.clearing_since_ms < spec.clear_after_s * 1000:
            return None
        del self.tracks[key]
        self._dirty.add(key)
        return _record_change(
            rule, port, AlertState.RESOLVED, track.alert_id, record, track.since_ms
        )


def _in_window(window: DailyWindow, zone: ZoneInfo) -> Callable[[int], bool]:
    contains = window.contains

    def in_window(time_ms: int) -> bool:
        return contains(time_ms, zone)

    return in_window


def _ref(device: RegisteredDevice) -> DeviceRef:
    return DeviceRef(device.community, device.device_type, device.device_id)


def _registry_attribute(name: str) -> bool:
    """Whether getattr() may find `name` on a registry entry; a name it cannot find costs
    a slow miss, and reads as unknown anyway."""
    return name.startswith("_") or hasattr(RegisteredDevice, name)


def _alert_id(rule: str, device: DeviceRef, port: int | None, started_ms: int) -> str:
    # Derived from what the alert is about, so a replay after a restart names it again.
    suffix = f":{port}" if port is not None else ""
    return f"{rule}:{device.community}:{device.device_id}{suffix}:{started_ms}"


def _named(alert_id: str, key: TrackKey) -> str:
    """What a correlation's alert named its place when it began, as its id says (see
    `_alert_id`); that of `key` for an id not made so."""
    began = f"{key[0]}:{key[1]}:"
    if not alert_id.startswith(began):
        return key[2]
    return alert_id.removeprefix(began).rpartition(":")[0] or key[2]


def _renamed(
    before: Registry, after: Registry, community: str, place_type: str, place_id: str
) -> str | None:
    """What `after` calls the place `before` called `place_id`, where that is another
    name; None if the same, or if `after` has no device there (another place may have
    its name now: the old name's correlation is not taken into theirs)."""
    if place_type == COMMUNITY:
        return None
    level = 1 + PLACE_TYPES.index(place_type)
    places = before.places_within(community, place_type, place_id)
    if len({place[1 : level + 1] for place in places}) != 1:
        return None
    return _called_now(after, place_type, places[0], place_id)


def _called_now(registry: Registry, place_type: str, place: Place, place_id: str) -> str | None:
    """What `registry` calls the area, compound or building `place` is in, where that is
    not `place_id`; None if the same, or if the registry has no device there (another
    place may have its name now: a correlation of the old name is not taken into theirs)."""
    renamed = registry.place_id(Site(*place), place_type)
    if renamed is None or renamed == place_id:
        return None
    level = 1 + PLACE_TYPES.index(place_type)
    there = registry.places_within(place[0], place_type, renamed)
    return renamed if any(p[1 : level + 1] == place[1 : level + 1] for p in there) else None


def _record_change(
    rule: Rule,
    port: int | None,
    state: AlertState,
    alert_id: str,
    record: Reading | Event,
    started_ms: int,
) -> AlertChange:
    values: dict[str, FieldValue] = dict(record.fields)
    if isinstance(record, Event):
        values["event"] = record.kind
    return _change(rule, record.device, port, state, alert_id, started_ms, record.time_ms, values)


def _change(
    rule: Rule,
    device: DeviceRef,
    port: int | None,
    state: AlertState,
    alert_id: str,
    started_ms: int,
    at_ms: int,
    values: Mapping[str, FieldValue],
) -> AlertChange:
    return AlertChange(
        alert_id=alert_id,
        rule=rule.name,
        title=rule.spec.title,
        severity=rule.spec.severity,
        life_safety=rule.spec.life_safety,
        device=device,
        port=port,
        state=state,
        started_ms=started_ms,
        at_ms=at_ms,
        values=values,
    )
