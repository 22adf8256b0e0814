"""The alert desk: what people do with an alert, from a notification link or the API.

Acknowledging, arriving at the scene, assigning and closing are each checked and
recorded in the alert book in the same transaction as the handling time they make
(`alert_handling`, seconds since the alert fired, by grid cell), so that dashboards
never miss a step nor count one twice. A step that changes the alert's state writes
the new state to `alert` too, as the rules stage writes its own changes there, so that
an alert a person closed is no longer shown open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from gateway.clock import Clock
from gateway.decode.record import DeviceRef
from gateway.registry import Place, Registry, Site, place_of, place_tags
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.book import MOVES_FROM, AlertBook, AlertEntry
from gateway.rules.rule import Severity
from gateway.store.line_protocol import encode_fields, encode_series
from gateway.store.outbox import Write
from gateway.store.series import alert_line

HANDLING_MEASUREMENT = "alert_handling"

Commit = Callable[[Sequence[str], Write | None], Awaitable[None]]
DeskListener = Callable[[AlertEntry, AlertState], None]


class AlertDesk:
    def __init__(self, book: AlertBook, registry: Registry, commit: Commit, clock: Clock) -> None:
        self.book = book
        self._registry = registry
        self._commit = commit
        self._clock = clock
        # Told after each step commits: the escalation stops on an acknowledgement.
        self.listeners: list[DeskListener] = []

    def use_registry(self, registry: Registry) -> None:
        """A reloaded registry, for where the alerts handled from now on are."""
        self._registry = registry

    async def acknowledge(self, alert_id: str, who: str) -> AlertEntry:
        now_ms = self._clock.now_ms()
        write = partial(AlertBook.record_acknowledge, alert_id=alert_id, who=who, at_ms=now_ms)
        return await self._do(alert_id, AlertState.ACKNOWLEDGED, write, now_ms)

    async def arrive(self, alert_id: str, who: str) -> AlertEntry:
        now_ms = self._clock.now_ms()
        write = partial(AlertBook.record_arrival, alert_id=alert_id, who=who, at_ms=now_ms)
        return await self._do(alert_id, AlertState.ARRIVED, write, now_ms)

    async def assign(self, alert_id: str, who: str, to: str) -> AlertEntry:
        now_ms = self._clock.now_ms()
        write = partial(AlertBook.record_assignment, alert_id=alert_id, who=who, to=to,
                        at_ms=now_ms)  # fmt: skip
        await self._commit([], write)
        after = self.book.get(alert_id)
        # Told as any change of the alert: the stream's version says the list changed.
        for listener in self.listeners:
            listener(after, after.state)
        return after

    async def close(self, alert_id: str, who: str, note: str) -> AlertEntry:
        now_ms = self._clock.now_ms()
        write = partial(AlertBook.record_close, alert_id=alert_id, who=who, at_ms=now_ms,
                        note=note)  # fmt: skip
        return await self._do(alert_id, AlertState.CLOSED, write, now_ms)

    async def _do(
        self,
        alert_id: str,
        step: AlertState,
        record: Callable[[sqlite3.Connection], None],
        now_ms: int,
    ) -> AlertEntry:
        steps: list[AlertState] = []

        def write(conn: sqlite3.Connection) -> list[str]:
            # The points are made from the alert as the step finds it, inside the step's
            # transaction: read before waiting for the commit, two phones at once would
            # each count the acknowledgement, and a step after the rules' all-clear would
            # show the resolved alert open again.
            entry = AlertBook.read(conn, alert_id)
            record(conn)
            steps[:] = [step]
            if step is AlertState.ARRIVED and entry.acknowledged_by is None:
                steps.insert(0, AlertState.ACKNOWLEDGED)
            lines = [self.handling_line(entry, s, now_ms) for s in steps]
            # Read on the transaction's own connection, in the commit's thread: the
            # book's is the event loop's. The device's alerts alone: the transaction
            # holds the write lock every alarm's commit waits for.
            device_open = AlertBook.open_in(conn, devices=[(entry.community, entry.device_id)])
            shown = self.state_line(entry, step, now_ms, device_open)
            if shown is not None:
                lines.append(shown)
            return lines

        await self._commit([], write)
        after = self.book.get(alert_id)
        for listener in self.listeners:
            for s in steps:
                listener(after, s)
        return after

    def handling_line(self, entry: AlertEntry, step: AlertState, at_ms: int) -> str:
        """How long after it fired a step came, as a point tagged with the grid cell."""
        tags: list[tuple[str, str]] = [("community", entry.community)]
        site = entry.where(self._registry)
        if site is not None:
            tags.extend(place_tags(place_of(site)))
        tags += [
            ("device_type", entry.device_type),
            # Two alerts of one rule in one building handled in the same millisecond
            # would otherwise be one point, the second overwriting the first.
            ("device_id", entry.device_id),
            ("rule", entry.rule),
            ("severity", entry.severity),
        ]
        since_ms = entry.fired_ms if entry.fired_ms is not None else entry.started_ms
        field = _STEP_FIELDS[step]
        fields = (("alert_id", entry.alert_id), (field, max(0, at_ms - since_ms) / 1000.0))
        return f"{encode_series(HANDLING_MEASUREMENT, tags)} {encode_fields(fields)} {at_ms}"

    def state_line(
        self, entry: AlertEntry, step: AlertState, at_ms: int, open_alerts: list[AlertEntry]
    ) -> str | None:
        """The alert's state after the step, as an `alert` point of the series the rules
        stage writes the alert's changes to; None when the point would show wrong.
        `open_alerts`: the open alerts of the alert's device, at least.

        Dashboards take the last state of each series (rule, device, port), not of each
        alert, so a step writes nothing that would hide another alert of its series still
        open: closing an earlier SOS of a wearer whose next SOS is still firing.
        """
        if entry.state not in MOVES_FROM[step]:
            # The book keeps the state: an alert acknowledged after it resolved.
            return None
        site = entry.where(self._registry)
        if step not in _SHOWN_OPEN and any(
            other.alert_id != entry.alert_id
            and other.state in _SHOWN_OPEN
            and _series(other) == _series(entry)
            and _cell(other.where(self._registry)) == _cell(site)
            for other in open_alerts
        ):
            return None
        change = AlertChange(
            alert_id=entry.alert_id,
            rule=entry.rule,
            title=entry.title,
            severity=Severity(entry.severity),
            life_safety=entry.life_safety,
            device=DeviceRef(entry.community, entry.device_type, entry.device_id),
            port=entry.port,
            state=step,
            started_ms=entry.started_ms,
            # A device whose clock runs ahead stamps the alert's points after now: the
            # step comes after them, or the series would still end with `firing`.
            at_ms=max(at_ms, entry.updated_ms + 1),
            values={},
        )
        return alert_line(change, site)


# The states dashboards count as an open alert: fired, and neither resolved nor closed.
_SHOWN_OPEN = frozenset({AlertState.FIRING, AlertState.ACKNOWLEDGED, AlertState.ARRIVED})


def _series(entry: AlertEntry) -> tuple[object, ...]:
    """What names an alert's series in `alert`, but for the grid cell (see `_cell`)."""
    return (entry.community, entry.device_type, entry.device_id, entry.rule, entry.severity,
            entry.port)  # fmt: skip


def _cell(site: Site | None) -> Place | None:
    """The grid cell that tags an alert's series: where it began (see AlertEntry.where),
    which two alerts of one device differ in when it was moved between them."""
    return None if site is None else place_of(site)


_STEP_FIELDS = {
    AlertState.ACKNOWLEDGED: "acknowledge_s",
    AlertState.ARRIVED: "arrive_s",
    AlertState.CLOSED: "close_s",
}
