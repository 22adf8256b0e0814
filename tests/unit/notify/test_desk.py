import asyncio
import re
import sqlite3
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.decode.record import DeviceRef, Event, Reading, Record, TimeSource
from gateway.notify.desk import AlertDesk
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertBook, AlertEntry, AlertError
from gateway.rules.engine import RuleEngine
from gateway.rules.silence import SilenceBook
from gateway.rules.stage import AlertStage
from gateway.store.outbox import Outbox
from tests.catalogue import shipped_rules
from tests.unit.api.conftest import count_alerts_read
from tests.unit.notify.test_notifier import REGISTRY as NOTIFIER_REGISTRY
from tests.unit.notify.test_notifier import SMOKE as NOTIFIER_SMOKE
from tests.unit.notify.test_notifier import Rig, fall, reading
from tests.unit.test_pipeline import pipeline

T0 = 1_767_225_600_000
WRIST = DeviceRef("hgy", "bracelet", "br-1")
REGISTRY = Registry(
    [
        RegisteredDevice(
            device_id="br-1", device_type="bracelet", community="hgy", area="east",
            compound="lakeside", building="3",
        ),
        RegisteredDevice(
            device_id="br-2", device_type="bracelet", community="hgy", area="east",
            compound="lakeside", building="3",
        ),
    ]
)  # fmt: skip


class Desk:
    def __init__(self, path: Path) -> None:
        self.clock = ManualClock(T0)
        self.outbox = Outbox(path)
        self.book = AlertBook(path)
        self.stage = AlertStage(
            RuleEngine(shipped_rules(), REGISTRY),
            self.book, SilenceBook(path, REGISTRY), self.clock,
        )  # fmt: skip
        self.desk = AlertDesk(self.book, REGISTRY, self.commit, self.clock)
        self.steps: list[tuple[str, AlertState]] = []
        self.desk.listeners.append(lambda entry, step: self.steps.append((entry.alert_id, step)))

    async def commit(self, lines, write) -> None:  # type: ignore[no-untyped-def]
        self.outbox.commit(lines, [], None, write)

    def fall(self, device: DeviceRef = WRIST) -> AlertEntry:
        decision = self.stage.evaluate([Event(device, T0, TimeSource.DEVICE, "fall", {})])
        self.outbox.commit(decision.lines, [], None, decision.write)
        (alert,) = [a for a in self.book.open_alerts() if a.device_id == device.device_id]
        return alert

    def judge(self, record: Record) -> list[AlertEntry]:
        """What the rules make of a record, committed; the alerts it changed."""
        decision = self.stage.evaluate([record])
        self.outbox.commit(decision.lines, [], None, decision.write)
        return [self.book.get(change.alert_id) for change in decision.changes]

    def charged(self, at_ms: int) -> None:
        """The wearer's battery back to full, and still full at the next report an hour
        later: long enough for any all-clear the shipped rules wait for."""
        for time_ms in (at_ms, at_ms + 3_600_000):
            self.judge(Reading(WRIST, time_ms, TimeSource.DEVICE, {"battery_pct": 80}))

    def handling_lines(self) -> list[str]:
        return [line for line in self.outbox.peek(100).lines if line.startswith("alert_handling")]

    def alert_lines(self) -> list[str]:
        return [line for line in self.outbox.peek(100).lines if line.startswith("alert,")]

    def states(self) -> list[str]:
        """The state of each `alert` point, in the order they were committed."""
        return [_point(line)[1]["state"] for line in self.alert_lines()]


def _point(line: str) -> tuple[str, dict[str, str], int]:
    """A line's series, fields (as written) and time."""
    series, rest = re.split(r"(?<!\\) ", line, maxsplit=1)
    fields, time_ms = rest.rsplit(" ", 1)
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,]*)', fields)
    return series, {k: v.strip('"') for k, v in pairs}, int(time_ms)


async def test_each_step_is_recorded_with_its_handling_time_by_grid_cell(tmp_path: Path) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    alert = d.fall()
    d.clock.advance(90)
    entry = await d.desk.acknowledge(alert.alert_id, "wang-fang")
    assert (entry.state, entry.acknowledged_by, entry.acknowledged_ms) == (
        AlertState.ACKNOWLEDGED, "wang-fang", T0 + 90_000,
    )  # fmt: skip
    d.clock.advance(510)
    entry = await d.desk.arrive(alert.alert_id, "wang-fang")
    assert (entry.state, entry.arrived_ms) == (AlertState.ARRIVED, T0 + 600_000)
    d.clock.advance(600)
    entry = await d.desk.close(alert.alert_id, "wang-fang", "老人已送医")
    assert (entry.state, entry.note) == (AlertState.CLOSED, "老人已送医")
    tags = (
        "community=hgy,compound=lakeside,device_id=br-1,device_type=bracelet,rule=fall,"
        "severity=critical"
    )
    assert d.handling_lines() == [
        f'alert_handling,area=east,building=3,{tags} alert_id="{alert.alert_id}",acknowledge_s=90.0 {T0 + 90_000}',
        f'alert_handling,area=east,building=3,{tags} alert_id="{alert.alert_id}",arrive_s=600.0 {T0 + 600_000}',
        f'alert_handling,area=east,building=3,{tags} alert_id="{alert.alert_id}",close_s=1200.0 {T0 + 1_200_000}',
    ]
    assert [s for _, s in d.steps] == [
        AlertState.ACKNOWLEDGED,
        AlertState.ARRIVED,
        AlertState.CLOSED,
    ]
    assert [(s.state, s.actor) for s in d.book.history(alert.alert_id)] == [
        (AlertState.FIRING, "rules"),
        (AlertState.ACKNOWLEDGED, "wang-fang"),
        (AlertState.ARRIVED, "wang-fang"),
        (AlertState.CLOSED, "wang-fang"),
    ]


async def test_arriving_first_acknowledges_too(tmp_path: Path) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    alert = d.fall()
    d.clock.advance(300)
    entry = await d.desk.arrive(alert.alert_id, "li-na")
    assert (entry.acknowledged_by, entry.arrived_by) == ("li-na", "li-na")
    assert [line.split(" ")[1].split(",")[1] for line in d.handling_lines()] == [
        "acknowledge_s=300.0",
        "arrive_s=300.0",
    ]


async def test_a_step_that_does_not_apply_leaves_nothing_behind(tmp_path: Path) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    alert = d.fall()
    await d.desk.acknowledge(alert.alert_id, "wang-fang")
    with pytest.raises(AlertError, match="acknowledged by wang-fang"):
        await d.desk.acknowledge(alert.alert_id, "li-na")
    with pytest.raises(AlertError, match="needs a note"):
        await d.desk.close(alert.alert_id, "li-na", "  ")
    with pytest.raises(AlertError, match="no alert"):
        await d.desk.acknowledge("nope", "li-na")
    # One handling line: the refused steps wrote none, and the outbox is usable after them.
    assert len(d.handling_lines()) == 1
    entry = await d.desk.assign(alert.alert_id, "operator", "zhao-lei")
    assert entry.assigned_to == "zhao-lei"
    assert d.book.history(alert.alert_id)[-1].note == "assigned to zhao-lei"


def test_an_alert_book_of_the_first_release_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, rule TEXT NOT NULL, title TEXT NOT NULL,"
        " severity TEXT NOT NULL, life_safety INTEGER NOT NULL, community TEXT NOT NULL,"
        " device_type TEXT NOT NULL, device_id TEXT NOT NULL, port INTEGER, state TEXT NOT NULL,"
        " started_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, fired_ms INTEGER,"
        " acknowledged_by TEXT, acknowledged_ms INTEGER, resolved_ms INTEGER, closed_by TEXT,"
        " closed_ms INTEGER, note TEXT) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO alerts (alert_id, rule, title, severity, life_safety, community,"
        " device_type, device_id, state, started_ms, updated_ms, fired_ms) VALUES"
        " ('a1', 'fall', 'Fall', 'critical', 1, 'hgy', 'bracelet', 'br-1', 'firing', 1, 1, 1)"
    )
    conn.commit()
    conn.close()
    book = AlertBook(path)
    entry = book.arrive("a1", "wang-fang", 5)
    assert (entry.state, entry.arrived_by, entry.acknowledged_by) == (
        AlertState.ARRIVED, "wang-fang", "wang-fang",
    )  # fmt: skip


async def test_alerts_handled_in_the_same_millisecond_are_separate_points(tmp_path: Path) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    first, second = d.fall(), d.fall(DeviceRef("hgy", "bracelet", "br-2"))
    d.clock.advance(30)
    await d.desk.acknowledge(first.alert_id, "wang-fang")
    await d.desk.acknowledge(second.alert_id, "wang-fang")
    series = {line.split(" ")[0] for line in d.handling_lines()}
    assert len(series) == 2
    assert {line.rsplit(" ", 1)[1] for line in d.handling_lines()} == {str(T0 + 30_000)}


async def test_acknowledging_and_closing_an_event_alert_write_its_state_to_its_series(
    tmp_path: Path,
) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    alert = d.fall()
    d.clock.advance(90)
    await d.desk.acknowledge(alert.alert_id, "wang-fang")
    d.clock.advance(600)
    await d.desk.close(alert.alert_id, "wang-fang", "老人已送医")
    fired, acknowledged, closed = (_point(line) for line in d.alert_lines())
    # The series the rules stage wrote the alert to, with the same fields but the state.
    for point, state, at_ms in ((acknowledged, "acknowledged", T0 + 90_000),
                                (closed, "closed", T0 + 690_000)):  # fmt: skip
        assert point == (fired[0], {**fired[1], "state": state}, at_ms)
    assert fired[0].startswith("alert,area=east,building=3,community=hgy,compound=lakeside,")
    assert fired[1]["alert_id"] == alert.alert_id
    assert d.book.get(alert.alert_id).state is AlertState.CLOSED


async def test_arriving_writes_the_state_it_leaves_the_alert_in(tmp_path: Path) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    alert = d.fall()
    d.clock.advance(300)
    entry = await d.desk.arrive(alert.alert_id, "li-na")
    assert d.states() == ["firing", str(entry.state)] == ["firing", "arrived"]
    assert _point(d.alert_lines()[-1])[2] == T0 + 300_000


async def test_an_alert_closed_while_its_condition_holds_ends_resolved_not_open(
    tmp_path: Path,
) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    (alert,) = d.judge(Reading(WRIST, T0, TimeSource.DEVICE, {"battery_pct": 10}))
    assert alert.state is AlertState.FIRING
    d.clock.advance(60)
    await d.desk.close(alert.alert_id, "wang-fang", "已通知家属充电")
    d.charged(T0 + 120_000)
    assert d.states() == ["firing", "closed", "resolved"]
    assert d.book.get(alert.alert_id).state is AlertState.CLOSED


async def test_a_step_that_leaves_the_state_as_it_is_writes_no_state(tmp_path: Path) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    (alert,) = d.judge(Reading(WRIST, T0, TimeSource.DEVICE, {"battery_pct": 10}))
    d.charged(T0 + 60_000)
    d.clock.advance(7200)
    # Acknowledged after it resolved: still resolved in the book, so not shown open again.
    entry = await d.desk.acknowledge(alert.alert_id, "wang-fang")
    assert entry.state is AlertState.RESOLVED
    assert d.states() == ["firing", "resolved"]
    await d.desk.close(alert.alert_id, "wang-fang", "已充电")
    assert d.states() == ["firing", "resolved", "closed"]


async def test_closing_one_sos_does_not_hide_another_of_the_same_wearer(tmp_path: Path) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    (first,) = d.judge(Event(WRIST, T0, TimeSource.DEVICE, "sos", {}))
    d.clock.advance(30)
    await d.desk.acknowledge(first.alert_id, "wang-fang")
    # Pressed again once the first was taken: an SOS of its own.
    (second,) = d.judge(Event(WRIST, T0 + 60_000, TimeSource.DEVICE, "sos", {}))
    d.clock.advance(60)
    await d.desk.close(first.alert_id, "wang-fang", "误按")
    # The wearer's series shows the second SOS, still open.
    assert d.states() == ["firing", "acknowledged", "firing"]
    await d.desk.close(second.alert_id, "wang-fang", "老人已安全")
    assert d.states()[-1] == "closed"
    assert _point(d.alert_lines()[-1])[1]["alert_id"] == second.alert_id


async def test_a_step_reads_the_open_alerts_of_its_device_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step looks for another open alert of its series inside the outbox's write
    # transaction, which every alarm's commit waits for: reading every open alert of a
    # district (thousands of devices offline) held the alarms back half a second a step.
    d = Desk(tmp_path / "outbox.sqlite3")
    others = [
        Event(DeviceRef("hgy", "bracelet", f"other-{i}"), T0, TimeSource.DEVICE, "fall", {})
        for i in range(200)
    ]
    decision = d.stage.evaluate(others)
    d.outbox.commit(decision.lines, [], None, decision.write)
    alert = d.fall()
    read = count_alerts_read(monkeypatch)
    d.clock.advance(30)
    await d.desk.acknowledge(alert.alert_id, "wang-fang")
    await d.desk.close(alert.alert_id, "wang-fang", "老人已送医")
    assert read[0] <= 10, f"{read[0]} alerts read for two steps of one alert"
    points = [_point(line)[1] for line in d.outbox.peek(1000).lines if line.startswith("alert,")]
    shown = [point["state"] for point in points if point["alert_id"] == alert.alert_id]
    assert shown == ["firing", "acknowledged", "closed"]


async def test_a_step_comes_after_an_alert_stamped_by_a_clock_running_ahead(
    tmp_path: Path,
) -> None:
    d = Desk(tmp_path / "outbox.sqlite3")
    ahead_ms = T0 + 600_000
    (alert,) = d.judge(Event(WRIST, ahead_ms, TimeSource.DEVICE, "fall", {}))
    d.clock.advance(30)
    await d.desk.close(alert.alert_id, "wang-fang", "老人已送医")
    assert [_point(line)[2] for line in d.alert_lines()] == [ahead_ms, ahead_ms + 1]


def threaded_commit(rig: Rig, lock: asyncio.Lock):  # type: ignore[no-untyped-def]
    """As IngestPipeline.commit: under the commit lock, in a worker thread."""

    async def commit(lines, write) -> None:  # type: ignore[no-untyped-def]
        async with lock:
            await asyncio.to_thread(rig.outbox.commit, lines, [], None, write)

    return commit


async def test_two_phones_at_once_make_one_acknowledgement_point(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    await rig.after(0)
    (alert,) = [e for e in rig.book.open_alerts() if e.rule == "fall"]
    lock = asyncio.Lock()
    desk = AlertDesk(rig.book, NOTIFIER_REGISTRY, threaded_commit(rig, lock), rig.clock)
    # wang-fang taps 接单 while the wearer's son, already there, taps 已到场 0.4 s
    # later; both requests reach the desk while a batch's commit holds the lock.
    await lock.acquire()
    rig.clock.advance(30)
    tap = asyncio.create_task(desk.acknowledge(alert.alert_id, "wang-fang"))
    await asyncio.sleep(0)
    rig.clock.advance(0.4)
    there = asyncio.create_task(desk.arrive(alert.alert_id, "contact:13900000009"))
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(tap, there)
    history = [s.state for s in rig.book.history(alert.alert_id)]
    assert history.count("acknowledged") == 1
    points = [line for line in rig.lines("alert_handling") if "acknowledge_s=" in line]
    # One acknowledgement, one handling time: the arrival found it taken.
    assert len(points) == 1, f"{len(points)} acknowledge_s points for one acknowledgement"


async def test_an_acknowledgement_racing_the_all_clear_leaves_the_alert_shown_resolved(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(NOTIFIER_SMOKE, 0, alarm=True))
    await rig.after(0)
    (alert,) = rig.book.open_alerts()
    lock = asyncio.Lock()
    desk = AlertDesk(rig.book, NOTIFIER_REGISTRY, threaded_commit(rig, lock), rig.clock)
    rig.clock.advance(4310)
    # The rules' commit of the detector's all-clear holds the lock when the worker taps
    # 接单 on the link page; the acknowledgement commits right after it.
    await lock.acquire()
    tap = asyncio.create_task(desk.acknowledge(alert.alert_id, "wang-fang"))
    for _ in range(10):
        await asyncio.sleep(0)
    rig.feed(reading(NOTIFIER_SMOKE, 3600, alarm=False), reading(NOTIFIER_SMOKE, 4300, alarm=False))
    lock.release()
    await tap
    assert str(rig.book.get(alert.alert_id).state) == "resolved"
    # The dashboards take the last `alert` point of the series as the alert's state.
    points = sorted(
        (int(line.rsplit(" ", 1)[1]), line) for line in rig.lines("alert") if "fire_alarm" in line
    )
    last = points[-1][1]
    assert 'state="resolved"' in last, f"the dashboards show the resolved alert as: {last}"


async def test_a_steps_points_count_as_stored_as_any_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    clock = ManualClock(T0)
    p = pipeline(path, clock=clock)
    book = AlertBook(path)
    stage = AlertStage(RuleEngine(shipped_rules(), REGISTRY), book, SilenceBook(path, REGISTRY),
                       clock)  # fmt: skip
    decision = stage.evaluate([Event(WRIST, T0, TimeSource.DEVICE, "fall", {})])
    await p.commit(decision.lines, decision.write)
    (alert,) = book.open_alerts()
    desk = AlertDesk(book, REGISTRY, p.commit, clock)
    stored_before = p._stats.lines_stored
    depth_before = p._outbox.depth()
    await desk.acknowledge(alert.alert_id, "wang-fang")
    added = p._outbox.depth() - depth_before
    # Its handling time and the alert's new state, both counted in the health figures.
    assert added == 2
    assert p._stats.lines_stored - stored_before == added
