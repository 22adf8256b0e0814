"""Every query of every generated dashboard, run against InfluxDB after a simulator run
through the real Mosquitto and the gateway.

Grafana itself is not run here: each query's template variables are filled in as
Grafana does (`$community` and the other places as regular expressions, `$timeFilter`,
`$__interval`) and the InfluxQL goes straight to InfluxDB.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.clock import ManualClock
from gateway.dashboards.catalogue import dashboards
from gateway.dashboards.query import variable_queries
from gateway.decode.record import DeviceRef, Event, Reading, TimeSource
from gateway.notify.desk import AlertDesk
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertBook
from gateway.rules.engine import RuleEngine
from gateway.rules.silence import SilenceBook
from gateway.rules.stage import AlertStage
from gateway.store.outbox import Outbox
from gateway.store.series import SeriesMapper, device_info
from simulators.fleet import Fleet
from simulators.scenario import Scenario, ScenarioKind
from tests.catalogue import SHIPPED_PROFILES, shipped_rules
from tests.integration.harness import Publisher, gateway_config, running, wait_until
from tests.integration.services import InfluxService, MosquittoService
from tests.unit.dashboards.grafana import Frame, find_panel, numeric_fields, transformed

SCENARIOS = [
    Scenario(ScenarioKind.FIRE, 600.0),
    Scenario(ScenarioKind.FALL, 900.0),
    Scenario(ScenarioKind.SOS, 1200.0),
    Scenario(ScenarioKind.LID_OPENED, 1500.0),
    Scenario(ScenarioKind.THERMAL_RUNAWAY, 1800.0),
    Scenario(ScenarioKind.OVERFLOW, 2100.0),
    Scenario(ScenarioKind.MALFORMED, 2400.0),
    Scenario(ScenarioKind.OVERCURRENT, 3000.0),
    # Late, so that the wearer is still away when the run ends.
    Scenario(ScenarioKind.WANDER, 3300.0),
]

# The district view: every community chosen ("All").
DISTRICT = {
    "community": ".*",
    "area": ".*",
    "compound": ".*",
    "building": ".*",
    "timeFilter": "time >= now() - 3h",
    "__interval": "1m",
}


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, InfluxQL) for every panel target and annotation of a dashboard."""
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield f"panel {inner['title']!r} {target['refId']}", target["query"]
    for annotation in board["annotations"].get("list", []):
        yield f"annotation {annotation['name']!r}", annotation["target"]["query"]


def fill(query: str, values: dict[str, str]) -> str:
    # An unknown variable raises KeyError: a query may use only what the test fills in.
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], query)


def write(influx: InfluxService, db: str, lines: Iterable[str]) -> None:
    httpx.post(
        f"{influx.url}/write",
        params={"db": db, "precision": "ms"},
        content="\n".join(lines).encode(),
        timeout=10,
    ).raise_for_status()


def store(influx: InfluxService, outbox: Outbox, db: str = "gateway") -> None:
    """Write every line committed to the outbox so far to the database (again: the same
    points)."""
    write(influx, db, outbox.peek(1000).lines)


def judging(
    path: Path, registry: Registry, clock: ManualClock
) -> tuple[Outbox, AlertBook, AlertStage]:
    """The outbox, and the rules stage with its alert book on it, as the gateway has them."""
    outbox, book = Outbox(path), AlertBook(path)
    stage = AlertStage(
        RuleEngine(shipped_rules(), registry), book, SilenceBook(path, registry), clock
    )
    return outbox, book, stage


def alert_desk(
    outbox: Outbox, book: AlertBook, registry: Registry, clock: ManualClock
) -> AlertDesk:
    """The alert desk, committing what people do to the outbox as the gateway does."""

    async def commit(lines: Any, write: Any) -> None:
        outbox.commit(lines, [], None, write)

    return AlertDesk(book, registry, commit, clock)


def wearer(community: str, building: str = "3") -> RegisteredDevice:
    return RegisteredDevice(
        device_id="br-1", device_type="bracelet", community=community, area="east",
        compound="lakeside", building=building, lat=30.27, lon=120.15,
    )  # fmt: skip


def handling_lines(community: str, device: Any, now_ms: int) -> str:
    """What the notification stage writes for an alert handled by a grid worker."""
    place = f"community={community},area={device.area},compound={device.compound}"
    if device.building:
        place += f",building={device.building}"
    common = f"{place},device_type=smoke_detector,rule=fire_alarm,severity=critical"
    return "\n".join(
        [
            f'alert_handling,{common} alert_id="a1",acknowledge_s=42.5 {now_ms - 3000}',
            f'alert_handling,{common} alert_id="a1",arrive_s=310.0 {now_ms - 2000}',
            f'alert_handling,{common} alert_id="a1",close_s=1250.0 {now_ms - 1000}',
            f"escalation,community={community},rule=fire_alarm,severity=critical,step=phone"
            f' alert_id="a1",step_index=1i {now_ms - 2500}',
            f"notification,community={community},channel=sms,result=sent,severity=critical,"
            f'rule=fire_alarm count=3i,latency_ms=850.0,alert_id="a1" {now_ms - 2800}',
        ]
    )


@pytest.fixture
async def community_data(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> Fleet:
    fleet = Fleet.build(seed=5, devices=40, communities=1, community_names=[namespace])
    detector = next(d for d in fleet.devices if d.device_type.value == "smoke_detector")
    scenarios = [*SCENARIOS, Scenario(ScenarioKind.LOW_BATTERY, 2700.0, detector.device_id)]
    registry_file = tmp_path / "devices.csv"
    registry_file.write_text(fleet.registry_csv(), encoding="utf-8")
    start_ms = time.time_ns() // 1_000_000 - 2 * 3_600_000
    messages = [
        (m.topic, m.payload)
        for m in fleet.messages(start_ms=start_ms, duration_s=3600, scenarios=scenarios)
    ]
    config = gateway_config(
        tmp_path,
        mosquitto,
        namespace,
        influx={"url": influxdb.url, "database": influx_db, "backoff_max_s": 1},
        registry_file=registry_file,
        health_interval_s=0.2,
    )
    publisher = Publisher(mosquitto)
    try:
        async with running(config) as gateway:
            publisher.publish_all(messages)  # type: ignore[arg-type]
            await wait_until(
                lambda: gateway.stats.messages_in >= len(messages), what="every message"
            )
            # Devices last heard an hour ago are found offline by the next rule tick.
            await wait_until(
                lambda: any(a.rule == "device_offline" for a in gateway.alerts.open_alerts()),
                what="offline devices",
            )
            # A health report after the last reject and the offline alerts, then all written.
            reports = gateway.stats.lines_stored
            await wait_until(lambda: gateway.stats.lines_stored > reports + 1, what="report")
            await wait_until(lambda: gateway.outbox.depth() == 0, what="outbox drained")
    finally:
        publisher.close()
    now_ms = time.time_ns() // 1_000_000
    device = next(d for d in fleet.devices if d.device_type.value == "smoke_detector")
    write(influxdb, influx_db, [handling_lines(namespace, device, now_ms)])
    return fleet


async def test_every_query_of_every_dashboard_returns_data(
    community_data: Fleet, influxdb: InfluxService, influx_db: str, namespace: str
) -> None:
    everything = {
        "community": re.escape(namespace),
        "area": ".*",
        "compound": ".*",
        "building": ".*",
        "timeFilter": "time >= now() - 3h",
        "__interval": "1m",
    }
    empty = []
    count = 0
    for name, board in dashboards().items():
        for where, query in queries(board):
            count += 1
            rows = influxdb.query(influx_db, fill(query, everything))
            if not rows:
                empty.append(f"{name} {where}: {fill(query, everything)}")
        for variable, query in variable_queries(board).items():
            count += 1
            if not influxdb.query(influx_db, fill(query, everything)):
                empty.append(f"{name} variable {variable}")
    assert count > 60
    assert not empty, "queries without data:\n" + "\n".join(empty)


async def test_choosing_one_place_narrows_the_panels_to_it(
    community_data: Fleet, influxdb: InfluxService, influx_db: str, namespace: str
) -> None:
    area = community_data.devices[0].area
    areas = {d.area for d in community_data.devices}
    other = next(iter(areas - {area}), None)
    values = {
        "community": re.escape(namespace),
        "area": re.escape(area),
        "compound": ".*",
        "building": ".*",
        "timeFilter": "time >= now() - 3h",
        "__interval": "1m",
    }
    board = dashboards()["community-overview.json"]
    devices_query = next(q for w, q in queries(board) if "Devices by state" in w)
    rows = influxdb.query(influx_db, fill(devices_query, values))
    expected = {d.device_id for d in community_data.devices if d.area == area}
    assert {row["device_id"] for row in rows} == expected
    if other is not None:
        assert {row["device_id"] for row in rows}.isdisjoint(
            d.device_id for d in community_data.devices if d.area == other
        )
    # The variable offering buildings offers only this area's.
    buildings_query = variable_queries(board)["building"]
    buildings = {r["value"] for r in influxdb.query(influx_db, fill(buildings_query, values))}
    assert buildings == {
        d.building for d in community_data.devices if d.area == area and d.building
    }


async def test_an_sos_acknowledged_and_closed_is_no_longer_open(
    tmp_path: Path, fresh_influxdb: InfluxService, namespace: str
) -> None:
    """The overview's open alerts and red markers, from the points the rules stage and
    the alert desk commit, as an SOS is fired, taken, reached and closed."""
    fresh_influxdb.create_database("gateway")
    wrist = DeviceRef(namespace, "bracelet", "br-1")
    registry = Registry([wearer(namespace)])
    clock = ManualClock(time.time_ns() // 1_000_000 - 600_000)
    outbox, book, stage = judging(tmp_path / "outbox.sqlite3", registry, clock)
    desk = alert_desk(outbox, book, registry, clock)
    decision = stage.evaluate([Event(wrist, clock.now_ms(), TimeSource.DEVICE, "sos", {})])
    outbox.commit(decision.lines, [], None, decision.write)
    (sos,) = decision.changes

    board = dashboards()["community-overview.json"]
    by_severity = next(q for w, q in queries(board) if "Open alerts by severity" in w)
    markers = next(q for w, q in queries(board) if "Devices by state" in w and w.endswith(" C"))
    values = {"community": re.escape(namespace), "area": ".*", "compound": ".*", "building": ".*"}

    def shown() -> tuple[list[Any], list[str]]:
        """What InfluxDB says once it has every line committed so far."""
        store(fresh_influxdb, outbox)
        open_alerts = fresh_influxdb.query("gateway", fill(by_severity, values))
        red = fresh_influxdb.query("gateway", fill(markers, values))
        return [(r["severity"], r["open"]) for r in open_alerts], [r["device_id"] for r in red]

    assert shown() == ([("critical", 1)], ["br-1"])
    for step in (desk.acknowledge, desk.arrive):
        clock.advance(60)
        await step(sos.alert_id, "wang-fang")
        assert shown() == ([("critical", 1)], ["br-1"]), step.__name__
    clock.advance(60)
    await desk.close(sos.alert_id, "wang-fang", "老人已安全")
    assert shown() == ([], [])


# -- the district view: communities whose device ids and building numbers repeat --------


@pytest.fixture
def district(tmp_path: Path, fresh_influxdb: InfluxService) -> InfluxService:
    """Two communities whose registries both have a smoke detector `sd-0001`: hgy's alarms
    and keeps alarming; lgy's alarmed a minute later, then said its alarm was off until
    its alert resolved."""
    fresh_influxdb.create_database("gateway")
    registry = Registry(
        [
            RegisteredDevice(
                device_id="sd-0001", device_type="smoke_detector", community=community,
                area="east", compound="lakeside", building="3", lat=lat, lon=120.1,
            )
            for community, lat in (("hgy", 30.1), ("lgy", 30.5))
        ]
    )  # fmt: skip
    clock = ManualClock(time.time_ns() // 1_000_000 - 1_200_000)
    outbox, book, stage = judging(tmp_path / "outbox.sqlite3", registry, clock)
    outbox.commit(device_info(registry, clock.now_ms()).lines, [], None, None)

    def alarm(community: str, on: bool, at_s: int) -> None:
        fields = {"alarm": on, "obscuration_pct_per_m": 9.0 if on else 0.0}
        device = DeviceRef(community, "smoke_detector", "sd-0001")
        reading = Reading(device, clock.now_ms() + at_s * 1000, TimeSource.DEVICE, fields)
        decision = stage.evaluate([reading])
        outbox.commit(decision.lines, [], None, decision.write)

    alarm("hgy", True, 0)
    alarm("lgy", True, 60)
    alarm("lgy", False, 120)
    alarm("lgy", False, 780)  # off for 10 minutes: resolved
    store(fresh_influxdb, outbox)
    fires = {(a.community, a.state.value) for a in book.open_alerts() if a.rule == "fire_alarm"}
    assert fires == {("hgy", "firing"), ("lgy", "resolved")}  # as the gateway itself has it
    return fresh_influxdb


def district_rows(
    influx: InfluxService, board: str, panel: str, ref_id: str = "A", db: str = "gateway"
) -> list[dict[str, Any]]:
    """What one query of a dashboard shows in the district view."""
    found = queries(dashboards()[f"{board}.json"])
    query = next(q for w, q in found if panel in w and w.endswith(f" {ref_id}"))
    return influx.query(db, fill(query, DISTRICT))


async def test_the_district_view_keeps_a_fire_open_when_the_same_id_elsewhere_resolved(
    district: InfluxService,
) -> None:
    open_alerts = district_rows(district, "community-overview", "Open alerts by severity", "A")
    assert [(r["severity"], r["open"]) for r in open_alerts] == [("critical", 1)]
    red = district_rows(district, "community-overview", "Devices by state", "C")
    assert [(r["community"], r["device_id"], r["lat"]) for r in red] == [("hgy", "sd-0001", 30.1)]


async def test_the_district_map_shows_each_communitys_device_of_the_same_id(
    district: InfluxService,
) -> None:
    markers = district_rows(district, "community-overview", "Devices by state", "A")
    assert sorted((r["community"], r["device_id"], r["lat"]) for r in markers) == [
        ("hgy", "sd-0001", 30.1),
        ("lgy", "sd-0001", 30.5),
    ]


async def test_the_district_online_rate_counts_each_communitys_device_of_the_same_id(
    district: InfluxService,
) -> None:
    registered = district_rows(district, "community-overview", "Online rate", "A")
    assert [(r["device_type"], r["registered"]) for r in registered] == [("smoke_detector", 2)]


async def test_a_building_on_fire_stays_open_when_another_communitys_building_3_is_over(
    tmp_path: Path, fresh_influxdb: InfluxService
) -> None:
    """A building_fire alert's device id is its building's number, which every community
    has: lgy's building 3, over, must not hide hgy's, burning."""
    fresh_influxdb.create_database("gateway")
    registry = Registry(
        [
            RegisteredDevice(
                device_id=f"sd-{community}-{n}", device_type="smoke_detector",
                community=community, area="east", compound="lakeside", building="3",
                lat=30.1, lon=120.1,
            )
            for community in ("hgy", "lgy")
            for n in (1, 2)
        ]
    )  # fmt: skip
    clock = ManualClock(time.time_ns() // 1_000_000 - 600_000)
    outbox, book, stage = judging(tmp_path / "outbox.sqlite3", registry, clock)

    def alarm(community: str, n: int, on: bool, at_s: int) -> None:
        device = DeviceRef(community, "smoke_detector", f"sd-{community}-{n}")
        reading = Reading(device, clock.now_ms() + at_s * 1000, TimeSource.DEVICE, {"alarm": on})
        decision = stage.evaluate([reading])
        outbox.commit(decision.lines, [], None, decision.write)

    # Two detectors of each building 3 alarm, lgy's a minute later; lgy's then report
    # their alarm off and its building_fire resolves.
    for community, at_s in (("hgy", 0), ("lgy", 60)):
        alarm(community, 1, True, at_s)
        alarm(community, 2, True, at_s + 10)
    alarm("lgy", 1, False, 120)
    alarm("lgy", 2, False, 130)
    store(fresh_influxdb, outbox)
    fires = {(a.community, a.state.value) for a in book.open_alerts() if a.rule == "building_fire"}
    assert fires == {("hgy", "firing"), ("lgy", "resolved")}  # as the gateway itself has it

    board = dashboards()["community-alerts.json"]
    query = next(q for w, q in queries(board) if "Open alerts" in w)
    building_fires = query.replace(
        'FROM "alert" WHERE', 'FROM "alert" WHERE "rule" = \'building_fire\' AND'
    )
    for community in ("hgy", ".*"):
        values = {**DISTRICT, "community": community}
        shown = fresh_influxdb.query("gateway", fill(building_fires, values))
        assert [r["open"] for r in shown] == [1], community


async def test_a_detector_moved_or_taken_out_of_the_registry_leaves_the_map_and_the_counts(
    tmp_path: Path, fresh_influxdb: InfluxService
) -> None:
    # The map and the online rate read each device's last registry point: sd-2, moved to
    # building 4, is one marker there and counted once; sd-3, taken out, is neither.
    fresh_influxdb.create_database("gateway")

    def detector(n: int, building: str) -> RegisteredDevice:
        return RegisteredDevice(
            device_id=f"sd-{n}", device_type="smoke_detector", community="hgy", area="east",
            compound="lakeside", building=building, lat=30.1 + n / 100, lon=120.1,
        )  # fmt: skip

    # sd-4 moved to building 5, whose position the sheet does not give: no marker at
    # building 3's. The cover's well depth taken out of the sheet: no depth either.
    cover = RegisteredDevice(device_id="mh-1", device_type="manhole_cover", community="hgy",
                             well_depth_cm=180)  # fmt: skip
    moved = replace(detector(4, "5"), lat=None, lon=None)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    clock = ManualClock(time.time_ns() // 1_000_000 - 600_000)
    before = device_info(
        Registry([*(detector(n, "3") for n in (1, 2, 3, 4)), cover]), clock.now_ms()
    )
    clock.advance(60)
    now = Registry([detector(1, "3"), detector(2, "4"), moved, replace(cover, well_depth_cm=None)])
    after = device_info(now, clock.now_ms(), before.series)
    outbox.commit([*before.lines, *after.lines], [], None, None)
    store(fresh_influxdb, outbox)
    markers = district_rows(fresh_influxdb, "community-overview", "Devices by state", "A")
    shown = {r["device_id"]: r["lat"] for r in markers if r["lat"] is not None}
    assert shown == pytest.approx({"sd-1": 30.11, "sd-2": 30.12})
    registered = district_rows(fresh_influxdb, "community-overview", "Online rate", "A")
    assert [(r["device_type"], r["registered"]) for r in registered] == [
        ("manhole_cover", 1), ("smoke_detector", 3),
    ]  # fmt: skip
    manhole = dashboards()["community-manhole.json"]
    depth = next(q for w, q in queries(manhole) if "well depth" in w and w.endswith(" B"))
    depths = [r["well_depth_cm"] for r in fresh_influxdb.query("gateway", fill(depth, DISTRICT))]
    assert depths in ([], [None])
    # Building 3 chosen: sd-2 is no longer there.
    building_3 = {**DISTRICT, "community": "hgy", "building": "3"}
    board = dashboards()["community-overview.json"]
    query = next(q for w, q in queries(board) if "Devices by state" in w and w.endswith(" A"))
    rows = fresh_influxdb.query("gateway", fill(query, building_3))
    assert [r["device_id"] for r in rows] == ["sd-1"]


async def test_a_moved_wearers_new_sos_stays_open_when_the_old_one_is_closed(
    tmp_path: Path, influxdb: InfluxService, influx_db: str
) -> None:
    # An alert keeps the grid cell where it began: a wearer's SOS in building 3 and the
    # next, after moving to building 4, are two alert series. Closing the first leaves
    # the second, still firing, among the open alerts and on the map.
    before = Registry([wearer("hgy", "3")])
    clock = ManualClock(time.time_ns() // 1_000_000 - 600_000)
    outbox, book, stage = judging(tmp_path / "outbox.sqlite3", before, clock)
    desk = alert_desk(outbox, book, before, clock)
    wrist = DeviceRef("hgy", "bracelet", "br-1")

    def sos() -> Any:
        decision = stage.evaluate([Event(wrist, clock.now_ms(), TimeSource.DEVICE, "sos", {})])
        outbox.commit(decision.lines, [], None, decision.write)
        (change,) = decision.changes
        return change

    first = sos()
    clock.advance(60)
    await desk.acknowledge(first.alert_id, "wang-fang")
    clock.advance(60)
    moved = Registry([wearer("hgy", "4")])  # a reload, as App.use_registry does it
    stage.engine.use_registry(moved, moved.changes_from(before), clock.now_ms())
    desk.use_registry(moved)
    second = sos()
    clock.advance(60)
    await desk.close(first.alert_id, "wang-fang", "老人已安全")
    store(influxdb, outbox, influx_db)
    assert book.get(second.alert_id).state is AlertState.FIRING  # as the gateway has it

    by_severity = district_rows(influxdb, "community-overview", "Open alerts by", db=influx_db)
    assert [(r["severity"], r["open"]) for r in by_severity] == [("critical", 1)]
    red = district_rows(influxdb, "community-overview", "Devices by state", "C", db=influx_db)
    assert [(r["community"], r["device_id"]) for r in red] == [("hgy", "br-1")]
    open_alerts = district_rows(influxdb, "community-alerts", "未处理告警", db=influx_db)
    assert [r["open"] for r in open_alerts] == [1]


def frames_of(influx: InfluxService, db: str, queries: Iterable[str]) -> list[Frame]:
    """What Grafana's InfluxQL backend hands a panel of tables in the district view: a
    frame per query that returned rows (Time, the tags grouped by, the values), none for
    one that did not."""
    frames = []
    for query in queries:
        found = influx.query(db, fill(query, DISTRICT))
        if not found:
            continue
        names = ["Time", *(n for n in found[0] if n != "time")]
        frames.append({n: [r["time"] if n == "Time" else r[n] for r in found] for n in names})
    return frames


async def test_the_online_rate_with_every_device_online_is_100_percent(
    influxdb: InfluxService, influx_db: str
) -> None:
    # With none offline (the normal state) the offline count returns no rows at all.
    registry = Registry(
        [
            *(RegisteredDevice(device_id=f"sd-{n}", device_type="smoke_detector",
                               community="hgy", building="3") for n in range(12)),
            *(RegisteredDevice(device_id=f"br-{n}", device_type="bracelet",
                               community="hgy", building="3") for n in range(3)),
        ]
    )  # fmt: skip
    write(influxdb, influx_db, device_info(registry, time.time_ns() // 1_000_000).lines)
    p = find_panel("community-overview", "在线率")
    frames = frames_of(influxdb, influx_db, [t["query"] for t in p["targets"]])
    shown = numeric_fields(transformed(frames, p["transformations"]))
    assert shown.get("online_rate") == [1.0, 1.0], f"drawn instead: {shown}"


@pytest.mark.parametrize(
    ("board", "device_type", "beside"),
    [("community-smoke", "smoke_detector", {"rssi_dbm": -80}),
     ("community-bracelet", "bracelet", {"spo2_pct": 97})],
)  # fmt: skip
async def test_the_battery_tables_list_a_moved_device_once(
    influxdb: InfluxService, influx_db: str, board: str, device_type: str, beside: Any
) -> None:
    # A device moved to building 4, its battery changed on the way, is one row there:
    # not also a red 9% in the building it left.
    def registered(building: str) -> Registry:
        device = RegisteredDevice(device_id="d-2", device_type=device_type, community="hgy",
                                  compound="lakeside", building=building)  # fmt: skip
        return Registry([device])

    mapper = SeriesMapper(SHIPPED_PROFILES, registered("3"))
    device = DeviceRef("hgy", device_type, "d-2")
    now = time.time_ns() // 1_000_000

    def reported(ago_ms: int, battery_pct: int) -> str:
        fields = {"battery_pct": battery_pct, **beside}
        return mapper.line(Reading(device, now - ago_ms, TimeSource.DEVICE, fields))

    lines = [reported(3_600_000, 9)]
    mapper.use_registry(registered("4"))
    lines.append(reported(600_000, 100))
    write(influxdb, influx_db, lines)
    shown = district_rows(influxdb, board, "电池 Batteries", db=influx_db)
    assert [(r["device_id"], r["battery_pct"], r["building"]) for r in shown] == [("d-2", 100, "4")]


async def test_notification_latency_is_how_long_accepted_sends_took(
    influxdb: InfluxService, influx_db: str
) -> None:
    # An SMS gateway that accepts in 0.3 s, after a retry and a failure that each waited
    # out a 10 s timeout, took 0.3 s to accept: failed sends are in the results panel.
    minute_ms = time.time_ns() // 1_000_000 // 60_000 * 60_000 - 60_000  # one interval
    tags = "community=hgy,rule=fire_alarm,severity=critical"
    write(
        influxdb,
        influx_db,
        [
            f'notification,channel=sms,{tags},result=sent count=1i,alert_id="a1",'
            f"latency_ms=300.0 {minute_ms + 1000}",
            f'notification,channel=sms,{tags},result=retry count=1i,alert_id="a2",'
            f"latency_ms=10000.0 {minute_ms + 2000}",
            f'notification,channel=sms,{tags},result=failed count=1i,alert_id="a2",'
            f"latency_ms=10000.0 {minute_ms + 3000}",
        ],
    )
    shown = district_rows(influxdb, "community-alerts", "Notification latency", db=influx_db)
    assert [r["mean"] for r in shown if r["mean"] is not None] == [300.0]
