"""Evaluates records against the rules and keeps each alert's state.

A condition rule has at most one open alert per (rule, device[, port]): it fires when
its condition has held for `for_s` and `repeat` readings, and resolves when the clear
condition (by default, the condition being false) has held for `clear_after_s`. An
event rule makes an alert of every matching event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

from gateway.decode.record import DeviceRef, Event, FieldValue, Reading, Record, StatusReport
from gateway.registry import Registry
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.expression import Unknown
from gateway.rules.rule import Rule

TrackKey = tuple[str, str, str, int | None]
_NO_ATTRIBUTES: dict[str, Any] = {}
CHINA_STANDARD_TIME = ZoneInfo("Asia/Shanghai")


@dataclass(slots=True)
class Track:
    """The state of one (rule, device, port) whose condition has been seen true."""

    firing: bool
    since_ms: int
    readings: int
    clearing_since_ms: int | None = None
    alert_id: str = ""
    # Inactivity rules: the watched field's value, unchanged since `since_ms`.
    last_value: float | None = None


class RuleEngine:
    def __init__(
        self,
        rules: Sequence[Rule],
        registry: Registry,
        periods_s: Mapping[str, float] | None = None,
        *,
        now_ms: int = 0,
        zone: ZoneInfo = CHINA_STANDARD_TIME,
    ) -> None:
        self._registry = registry
        self._zone = zone
        self._periods_s = dict(periods_s or {})
        self._seen: set[DeviceRef] = set()
        # When each device was last heard from; registered devices count from start-up,
        # so that one which never reports is found too.
        self.last_seen_ms: dict[DeviceRef, int] = {
            DeviceRef(d.community, d.device_type, d.device_id): now_ms for d in registry.devices()
        }
        self.tracks: dict[TrackKey, Track] = {}
        # Keys whose state changed since the last save, so that a restart forgets nothing.
        self._dirty: set[TrackKey] = set()
        self.load(rules)

    @property
    def registry(self) -> Registry:
        """The registry the rules read device attributes from."""
        return self._registry

    def load(self, rules: Sequence[Rule]) -> None:
        """Take a new set of rules; the state of rules that remain is kept."""
        self._rules = [r for r in rules if r.spec.kind != "absence"]
        self._absence = [r for r in rules if r.spec.kind == "absence"]
        self._inactivity = {r.name: r for r in rules if r.spec.kind == "inactivity"}
        self._correlation = {r.name: r for r in rules if r.spec.kind == "correlation"}
        self._correlations: dict[TrackKey, dict[str, int]] = {}
        self._by_type: dict[str, list[Rule]] = {}
        names = {rule.name for rule in rules}
        self.tracks = {k: t for k, t in self.tracks.items() if k[0] in names}
        self._device_scopes: dict[tuple[str, str], dict[str, Any]] = {}
        self._rates: dict[str, dict[str, float]] = {}
        self._attributes: dict[str, frozenset[str]] = {}
        self._relevant_cache: dict[tuple[str, bool, bool, tuple[str, ...]], list[Rule]] = {}
        self._history: dict[tuple[str, str, int | None, str], deque[tuple[int, float]]] = {}

    def tick(self, now_ms: int) -> list[AlertChange]:
        """Fire absence and inactivity alerts; resolve correlations whose window passed."""
        changes: list[AlertChange] = []
        for key, track in list(self.tracks.items()):
            rule = self._correlation.get(key[0])
            if rule is not None and now_ms - track.since_ms >= rule.spec.window_s * 1000:
                del self.tracks[key]
                self._correlations.pop(key, None)
                self._dirty.add(key)
                place = DeviceRef(key[1], rule.spec.place, key[2])
                changes.append(
                    _change(rule, place, None, AlertState.RESOLVED, track.alert_id,
                            track.since_ms, now_ms, {})
                )  # fmt: skip
        for key, track in list(self.tracks.items()):
            rule = self._inactivity.get(key[0])
            if rule is not None:
                change = self._inactive_too_long(rule, key, track, now_ms)
                if change is not None:
                    changes.append(change)
        for rule in self._absence:
            for device, seen_ms in self.last_seen_ms.items():
                period_s = self._periods_s.get(device.device_type)
                if period_s is None or not rule.applies_to(device.device_type):
                    continue
                if now_ms - seen_ms < rule.spec.after_periods * period_s * 1000:
                    continue
                key = (rule.name, device.community, device.device_id, None)
                if key in self.tracks:
                    continue
                alert_id = _alert_id(rule.name, device, None, seen_ms)
                self.tracks[key] = Track(True, seen_ms, 0, None, alert_id)
                self._dirty.add(key)
                values: dict[str, FieldValue] = {"silent_s": (now_ms - seen_ms) // 1000}
                changes.append(
                    _change(
                        rule, device, None, AlertState.FIRING, alert_id, seen_ms, now_ms, values
                    )
                )
        return changes

    def _apply_inactivity(
        self, rule: Rule, record: Reading | Event, holds: bool | None
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
        if track is not None and track.last_value is not None and value < track.last_value:  # type: ignore[operator]
            # A cumulative counter reset (steps at midnight) is not activity.
            track.last_value = float(value)  # type: ignore[arg-type]
            self._dirty.add(key)
            return self._inactive_too_long(rule, key, track, record.time_ms)
        if track is None or track.last_value != value:
            self.tracks[key] = Track(False, record.time_ms, 0, last_value=float(value))  # type: ignore[arg-type]
            self._dirty.add(key)
            if track is not None and track.firing:
                return _record_change(
                    rule, None, AlertState.RESOLVED, track.alert_id, record, track.since_ms
                )
            return None
        return self._inactive_too_long(rule, key, track, record.time_ms)

    def _apply_correlation(
        self, rule: Rule, record: Reading | Event, holds: bool | None
    ) -> AlertChange | None:
        if not holds:
            return None
        device = record.device
        place = self._place_of(device, rule.spec.place)
        if place is None:
            return None
        key = (rule.name, device.community, place.device_id, None)
        window_ms = int(rule.spec.window_s * 1000)
        hits = self._correlations.setdefault(key, {})
        hits[device.device_id] = record.time_ms
        for device_id, at_ms in list(hits.items()):
            if at_ms < record.time_ms - window_ms:
                del hits[device_id]
        if len(hits) < rule.spec.min_devices or key in self.tracks:
            if key in self.tracks:
                self.tracks[key].since_ms = max(self.tracks[key].since_ms, record.time_ms)
                self._dirty.add(key)
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

    def _place_of(self, device: DeviceRef, place: str) -> DeviceRef | None:
        """The place a correlation alert is about, named like a device of type `place`."""
        if place == "community":
            return DeviceRef(device.community, place, device.community)
        registered = self._registry.get(device.community, device.device_id)
        value = getattr(registered, place, None) if registered is not None else None
        return DeviceRef(device.community, place, value) if value else None

    def _inactive_too_long(
        self, rule: Rule, key: TrackKey, track: Track, now_ms: int
    ) -> AlertChange | None:
        if track.firing:
            return None
        window = rule.window
        elapsed_s = (
            window.seconds_within(track.since_ms, now_ms, self._zone)
            if window is not None
            else (now_ms - track.since_ms) / 1000
        )
        if elapsed_s < rule.spec.unchanged_for_s:
            return None
        registered = self._registry.get(key[1], key[2])
        if registered is not None:
            device = DeviceRef(key[1], registered.device_type, key[2])
        else:
            # Rare: an unregistered device; its type is known from when it was heard.
            device = next(
                (d for d in self.last_seen_ms if (d.community, d.device_id) == key[1:3]),
                DeviceRef(key[1], "", key[2]),
            )
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
            track = self.tracks.pop(key, None)
            if track is not None:
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

    def take_changes(self) -> tuple[list[tuple[TrackKey, Track]], list[TrackKey]]:
        """Tracks changed and tracks gone since the last call, to persist."""
        changed = [(k, self.tracks[k]) for k in self._dirty if k in self.tracks]
        gone = [k for k in self._dirty if k not in self.tracks]
        self._dirty.clear()
        return changed, gone

    def take_seen(self) -> list[tuple[DeviceRef, int]]:
        """Devices heard from since the last call, with when, to persist."""
        seen = [(device, self.last_seen_ms[device]) for device in self._seen]
        self._seen.clear()
        return seen

    def restore(self, saved: Iterable[tuple[TrackKey, Track]]) -> None:
        names = {rule.name for rule in self._rules}
        self.tracks.update((k, t) for k, t in saved if k[0] in names)

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
            self._rates[device_type] = windows
        return rules

    def _relevant(self, record: Reading | Event) -> list[Rule]:
        """The rules whose conditions read something this record carries."""
        is_event = isinstance(record, Event)
        key = (record.device.device_type, is_event, record.port is None, tuple(record.fields))
        rules = self._relevant_cache.get(key)
        if rules is None:
            present = set(record.fields)
            if is_event:
                present.add("event")
            if record.port is not None:
                present.add("port")
            candidates = self._rules_for(record.device.device_type)
            windows = self._rates[record.device.device_type]
            present |= {f"{field}_per_min" for field in windows if field in present}
            rules = [rule for rule in candidates if rule.names & present]
            self._relevant_cache[key] = rules
        return rules

    def _add_rates(self, record: Reading | Event, scope: dict[str, Any]) -> None:
        device = record.device
        for field, window_s in self._rates[device.device_type].items():
            value = record.fields.get(field)
            if type(value) not in (int, float):
                continue
            key = (device.community, device.device_id, record.port, field)
            history = self._history.get(key)
            if history is None:
                history = self._history[key] = deque()
            history.append((record.time_ms, float(value)))  # type: ignore[arg-type]
            window_ms = window_s * 1000
            # Keep one sample at or before the window's start, so that readings sparser
            # than the window still give a rate.
            while len(history) > 1 and history[1][0] <= record.time_ms - window_ms:
                history.popleft()
            first_ms, first = history[0]
            # Too short a span says nothing about the trend: the rate stays unknown.
            if record.time_ms - first_ms >= window_ms / 2:
                scope[f"{field}_per_min"] = (
                    (float(value) - first) / (record.time_ms - first_ms) * 60_000  # type: ignore[arg-type]
                )

    def evaluate(self, records: Iterable[Record]) -> list[AlertChange]:
        changes: list[AlertChange] = []
        for record in records:
            self.last_seen_ms[record.device] = record.time_ms
            self._seen.add(record.device)
            if self._absence:
                changes.extend(self._heard(record))
            if isinstance(record, StatusReport):
                continue
            rules = self._relevant(record)
            if not rules:
                continue
            scope = self._scope(record)
            for rule in rules:
                change = self._apply(rule, record, scope)
                if change is not None:
                    changes.append(change)
        return changes

    def _scope(self, record: Reading | Event) -> dict[str, Any]:
        device = record.device
        ident = (device.community, device.device_id)
        device_scope = self._device_scopes.get(ident)
        if device_scope is None:
            device_scope = _NO_ATTRIBUTES
            registered = self._registry.get(*ident)
            if registered is not None:
                wanted = self._attributes[device.device_type]
                known = {name: getattr(registered, name, None) for name in wanted}
                known.update(registered.thresholds)
                attributes: dict[str, Any] = {
                    f"device.{name}": value
                    for name, value in known.items()
                    if value is not None and name in wanted
                }
                # Most devices have none the rules read: they share one empty mapping.
                device_scope = attributes or _NO_ATTRIBUTES
            self._device_scopes[ident] = device_scope
        scope = {**device_scope, **record.fields}
        # A reading is known not to be an event: `event == 'x'` is false for it, not unknown.
        scope["event"] = record.kind if isinstance(record, Event) else ""
        scope["port"] = record.port
        if self._rates[device.device_type]:
            self._add_rates(record, scope)
        return scope

    def _apply(
        self, rule: Rule, record: Reading | Event, scope: Mapping[str, Any]
    ) -> AlertChange | None:
        try:
            holds: bool | None = bool(rule.when(scope))
        except Unknown:
            holds = None
        spec = rule.spec
        if rule.window is not None and not rule.window.contains(record.time_ms, self._zone):
            return None
        if spec.kind == "inactivity":
            return self._apply_inactivity(rule, record, holds)
        if spec.kind == "correlation":
            return self._apply_correlation(rule, record, holds)
        device = record.device
        port = record.port if spec.per_port else None
        if spec.kind == "event":
            if not holds:
                return None
            alert_id = _alert_id(rule.name, device, port, record.time_ms)
            return _record_change(rule, port, AlertState.FIRING, alert_id, record, record.time_ms)
        key = (rule.name, device.community, device.device_id, port)
        track = self.tracks.get(key)
        now_ms = record.time_ms
        if holds:
            created = track is None
            if track is None:
                alert_id = _alert_id(rule.name, device, port, now_ms)
                track = self.tracks[key] = Track(False, now_ms, 0, None, alert_id)
            self._dirty.add(key)
            track.readings += 1
            track.clearing_since_ms = None
            if track.firing:
                return None
            if now_ms - track.since_ms >= spec.for_s * 1000 and track.readings >= spec.repeat:
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
        cleared = holds is False
        if rule.clear_when is not None:
            try:
                cleared = bool(rule.clear_when(scope))
            except Unknown:
                cleared = False
        if not cleared:
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


def _alert_id(rule: str, device: DeviceRef, port: int | None, started_ms: int) -> str:
    # Derived from what the alert is about, so a replay after a restart names it again.
    suffix = f":{port}" if port is not None else ""
    return f"{rule}:{device.community}:{device.device_id}{suffix}:{started_ms}"


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
