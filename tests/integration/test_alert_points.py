"""How an alert's points read on the dashboards, against a real InfluxDB: the rules
stage's own lines are written, and each panel's InfluxQL run with its variables filled
in as Grafana does: an alert whose end is judged from records older than its start, and
one that never fired."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.clock import ManualClock
from gateway.dashboards.catalogue import dashboards
from gateway.decode.record import DeviceRef, Event, Reading, TimeSource
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertBook
from gateway.rules.engine import RuleEngine
from gateway.rules.silence import SilenceBook
from gateway.rules.stage import AlertDecision, AlertStage
from gateway.store.outbox import Outbox
from gateway.store.series import device_info
from tests.catalogue import shipped_rules
from tests.integration.services import InfluxService
from tests.integration.test_dashboards import DISTRICT, fill, write

PERIODS_S = {"bracelet": 60.0, "smoke_detector": 3600.0}


def target(board: str, title_start: str, ref_id: str = "A") -> dict[str, Any]:
    for p in dashboards()[f"{board}.json"]["panels"]:
        if p["title"].startswith(title_start):
            return next(t for t in p["targets"] if t["refId"] == ref_id)
    raise KeyError(title_start)


def annotation(board: str, name_start: str) -> str:
    for a in dashboards()[f"{board}.json"]["annotations"]["list"]:
        if a["name"].startswith(name_start):
            query: str = a["target"]["query"]
            return query
    raise KeyError(name_start)


def rows(influx: InfluxService, db: str, board: str, title: str, ref_id: str = "A") -> list[Any]:
    return influx.query(db, fill(target(board, title, ref_id)["query"], DISTRICT))


class Gateway:
    """The rules stage on an outbox, as the gateway runs it."""

    def __init__(self, path: Path, registry: Registry, now_ms: int) -> None:
        self.clock = ManualClock(now_ms)
        self.outbox, self.book = Outbox(path), AlertBook(path)
        engine = RuleEngine(shipped_rules(), registry, PERIODS_S, now_ms=now_ms)
        self.stage = AlertStage(engine, self.book, SilenceBook(path, registry), self.clock)
        self.outbox.commit(device_info(registry, now_ms).lines, [], None, None)

    def take(self, decision: AlertDecision) -> list[Any]:
        self.outbox.commit(decision.lines, [], None, decision.write)
        return decision.changes

    def judge(self, *records: Reading | Event) -> list[Any]:
        return self.take(self.stage.evaluate(list(records)))

    def store(self, influx: InfluxService, db: str) -> None:
        write(influx, db, self.outbox.peek(10_000).lines)


def wearer(building: str) -> RegisteredDevice:
    return RegisteredDevice(
        device_id="br-1", device_type="bracelet", community="hgy", area="east",
        compound="lakeside", building=building, lat=30.27, lon=120.15,
    )  # fmt: skip


async def test_a_bracelet_back_in_range_with_the_readings_it_kept_is_not_shown_offline(
    tmp_path: Path, influxdb: InfluxService, influx_db: str
) -> None:
    # `device_offline` fires at the gateway's time; a bracelet back in range uploads the
    # readings it kept, oldest first, stamped before it: the alert's end is still its
    # series' last point, and the wearer is shown online.
    start_ms = time.time_ns() // 1_000_000 - 1_800_000
    gateway = Gateway(tmp_path / "outbox.sqlite3", Registry([wearer("3")]), start_ms)
    wrist = DeviceRef("hgy", "bracelet", "br-1")

    def reading(at_ms: int) -> Reading:
        return Reading(wrist, at_ms, TimeSource.DEVICE, {"heart_rate_bpm": 72, "worn": True})

    gateway.judge(reading(start_ms))
    fired: list[Any] = []
    while not fired:  # the gateway's rule tick, every 10 s
        gateway.clock.advance(10)
        fired = gateway.take(gateway.stage.tick(gateway.clock.now_ms()))
    assert [(c.rule, c.state) for c in fired] == [("device_offline", AlertState.FIRING)]
    gateway.clock.advance(30)
    # Back in range: what it kept from the minute after it went out of reach comes first.
    back = gateway.judge(reading(start_ms + 60_000), reading(start_ms + 120_000))
    assert [(c.rule, c.state) for c in back] == [("device_offline", AlertState.RESOLVED)]
    gateway.store(influxdb, influx_db)

    assert rows(influxdb, influx_db, "community-overview", "设备地图", "B") == []
    assert rows(influxdb, influx_db, "community-overview", "未处理告警") == []
    online = next(p for p in dashboards()["community-overview.json"]["panels"]
                  if p["title"].startswith("在线率"))  # fmt: skip
    for query in online["targets"]:
        counted = influxdb.query(influx_db, fill(query["query"], DISTRICT))
        assert not [r for r in counted if r.get("offline")], "counted offline"


async def test_a_heart_rate_that_never_held_long_enough_is_not_marked_resolved(
    tmp_path: Path, influxdb: InfluxService, influx_db: str
) -> None:
    # A heart-rate spike shorter than the rule's minute raised no alert: the "恢复 Alerts
    # resolved" annotation marks none, and the table of alert changes lists none.
    gateway = Gateway(tmp_path / "outbox.sqlite3", Registry([wearer("3")]),
                      time.time_ns() // 1_000_000 - 600_000)  # fmt: skip
    wrist = DeviceRef("hgy", "bracelet", "br-1")
    now = gateway.clock.now_ms()
    spike = gateway.judge(
        Reading(wrist, now, TimeSource.DEVICE, {"heart_rate_bpm": 160, "worn": True})
    )
    calm = gateway.judge(
        Reading(wrist, now + 30_000, TimeSource.DEVICE, {"heart_rate_bpm": 80, "worn": True})
    )
    assert [(c.state, c.fired) for c in spike + calm] == [
        (AlertState.PENDING, False), (AlertState.RESOLVED, False),
    ]  # fmt: skip
    gateway.store(influxdb, influx_db)
    assert influxdb.query(influx_db, fill(annotation("community-alerts", "恢复"), DISTRICT)) == []
    assert rows(influxdb, influx_db, "community-alerts", "告警记录") == []
