import itertools
import sqlite3
import zlib
from dataclasses import replace
from functools import partial
from pathlib import Path

from gateway import PROJECT_ROOT
from gateway.clock import SystemClock
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.profile import load_profiles
from gateway.decode.record import DeviceRef, Reading, StatusReport, TimeSource
from gateway.ingest.message import InboundMessage
from gateway.registry import RegisteredDevice, Registry, load_registry
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.rule import Severity
from gateway.store.line_protocol import parse_line
from gateway.store.outbox import Outbox
from gateway.store.series import SeriesMapper, alert_line, device_info
from simulators.fleet import Fleet

COVER = RegisteredDevice(
    device_id="mh-1",
    device_type="manhole_cover",
    community="hgy",
    area="东区",
    compound="湖光苑",
    lat=34.75,
    lon=113.6,
    well_depth_cm=180,
)
WEARER = RegisteredDevice(
    device_id="br-1",
    device_type="bracelet",
    community="hgy",
    wearer_name="张伟明",
    wearer_phone="13812345678",
    home_lat=34.7,
    home_lon=113.6,
    safe_radius_m=500,
)


def change(device_id: str, device_type: str) -> AlertChange:
    return AlertChange(
        alert_id="a1",
        rule="cover_open",
        title="Cover open",
        severity=Severity("major"),
        life_safety=False,
        device=DeviceRef("hgy", device_type, device_id),
        port=None,
        state=AlertState.FIRING,
        started_ms=1_000,
        at_ms=2_000,
        values={},
    )


def test_an_alert_carries_its_grid_cell_and_position_from_the_registry() -> None:
    line = alert_line(
        change("mh-1", "manhole_cover"), Registry([COVER]).site("hgy", "manhole_cover", "mh-1")
    )
    assert line.startswith(
        "alert,area=东区,community=hgy,compound=湖光苑,device_id=mh-1,"
        "device_type=manhole_cover,rule=cover_open,severity=major "
    )
    assert line.endswith(",lat=34.75,lon=113.6 2000")


def test_an_alert_about_a_building_carries_the_building_s_grid_cell() -> None:
    # A building on fire: a dashboard with its area or building chosen shows it too.
    registry = Registry(
        [
            replace(COVER, device_id=d, device_type="smoke_detector", building="3")
            for d in ("sd-1", "sd-2")
        ]
    )
    line = alert_line(change("3", "building"), registry.site("hgy", "building", "3"))
    assert line.startswith(
        "alert,area=东区,building=3,community=hgy,compound=湖光苑,device_id=3,"
        "device_type=building,rule=cover_open,severity=major "
    )
    assert "lat=" not in line


def test_a_pending_alert_that_ended_before_it_fired_is_not_written_resolved() -> None:
    # A heart rate back to normal before its minute was up: no alert was told, and the
    # dashboards' "resolved" annotations must not mark one.
    pending_end = replace(change("br-1", "bracelet"), state=AlertState.RESOLVED, fired=False)
    assert 'state="ended"' in alert_line(pending_end, None)
    resolved = replace(change("br-1", "bracelet"), state=AlertState.RESOLVED)
    assert 'state="resolved"' in alert_line(resolved, None)


def test_an_unregistered_device_alert_has_no_place() -> None:
    line = alert_line(
        change("mh-9", "manhole_cover"), Registry([COVER]).site("hgy", "manhole_cover", "mh-9")
    )
    assert "area=" not in line and "lat=" not in line


def test_device_info_has_place_and_position_but_nothing_about_the_wearer() -> None:
    info = device_info(Registry([COVER, WEARER]), 5_000)
    assert info.lines == [
        "device_info,area=东区,community=hgy,compound=湖光苑,device_id=mh-1,"
        "device_type=manhole_cover registered=true,lat=34.75,lon=113.6,well_depth_cm=180.0 5000",
        "device_info,community=hgy,device_id=br-1,device_type=bracelet registered=true 5000",
    ]


def test_a_device_taken_out_or_moved_is_written_as_no_longer_registered_where_it_was() -> None:
    # The dashboards read each series' last point: the cover moved to another compound
    # and the bracelet taken out would otherwise stay on the map, counted, for ever.
    before = device_info(Registry([COVER, WEARER]), 5_000)
    moved = replace(COVER, compound="湖光新苑")
    after = device_info(Registry([moved]), 6_000, before.series)
    assert after.lines == [
        "device_info,area=东区,community=hgy,compound=湖光新苑,device_id=mh-1,"
        "device_type=manhole_cover registered=true,lat=34.75,lon=113.6,well_depth_cm=180.0 6000",
        "device_info,area=东区,community=hgy,compound=湖光苑,device_id=mh-1,"
        "device_type=manhole_cover registered=false 5999",
        "device_info,community=hgy,device_id=br-1,device_type=bracelet registered=false 5999",
    ]
    # And at every writing after, as the registered ones are: the point may have been
    # dropped from a full outbox meanwhile. Until the device is registered there again.
    again = device_info(Registry([moved]), 7_000, after.series, after.ended)
    assert [line.endswith("registered=false 6999") for line in again.lines] == [
        False,
        True,
        True,
    ]
    back = device_info(Registry([moved, WEARER]), 8_000, again.series, again.ended)
    assert [line for line in back.lines if "registered=false" in line] == [
        "device_info,area=东区,community=hgy,compound=湖光苑,device_id=mh-1,"
        "device_type=manhole_cover registered=false 7999",
    ]


def test_a_device_taken_out_is_written_as_such_for_a_month_and_then_let_be() -> None:
    # Every day for ever would undo an administrator's drop of its series the next
    # morning, keep its building in the dashboards' place lists past any retention
    # policy, and pile up in every writing.
    day_ms = 86_400_000
    info = device_info(Registry([COVER, WEARER]), 0)
    for day in range(1, 31):
        info = device_info(Registry([COVER]), day * day_ms, info.series, info.ended)
        assert any("device_id=br-1" in line for line in info.lines), day
    info = device_info(Registry([COVER]), 31 * day_ms, info.series, info.ended)
    assert not any("device_id=br-1" in line for line in info.lines)
    assert not info.ended


def test_a_device_s_end_dropped_from_a_full_outbox_is_written_again_the_next_day(
    tmp_path: Path,
) -> None:
    # The database away long enough for the outbox to reach its bound: the bracelet's
    # end is among the oldest lines dropped. Written again the next day, it leaves the
    # map and the counts all the same.
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1 << 20)

    def write(registry: Registry, at_ms: int) -> list[str]:
        info = device_info(registry, at_ms, *outbox.registry_series())
        record = partial(Outbox.write_registry_series, series=info.series, ended=info.ended)
        outbox.commit(info.lines, [], None, record)
        return info.lines

    write(Registry([COVER, WEARER]), 5_000)
    outbox.remove_through(outbox.peek(100).through)
    ended = [line for line in write(Registry([COVER]), 6_000) if "registered=false" in line]
    assert len(ended) == 1 and "device_id=br-1" in ended[0]
    for batch in range(40):
        outbox.commit([f'm,batch={batch} pad="{"x" * 900}" {i}' for i in range(100)], [])
    assert not any("registered=false" in line for line in outbox.peek(100_000).lines)
    again = write(Registry([COVER]), 6_000 + 86_400_000)
    assert [line for line in again if "registered=false" in line] == [
        ended[0].replace(" 5999", f" {6_000 + 86_400_000 - 1}")
    ]
    # Kept with when it was first found ended, across the writings.
    assert list(outbox.registry_series()[1].values()) == [6_000]
    outbox.close()


def test_series_an_earlier_version_recorded_as_ended_are_written_so_from_now(
    tmp_path: Path,
) -> None:
    # That version kept no time with them: they count as ended at the next writing.
    outbox = Outbox(tmp_path / "o.sqlite3")
    gone = "device_info,community=hgy,device_id=br-1,device_type=bracelet"

    def earlier(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO registry_series VALUES (0, ?, ?)",
                     (zlib.compress(b""), zlib.compress(gone.encode())))  # fmt: skip

    outbox.commit([], [], None, earlier)
    written, ended = outbox.registry_series()
    assert ended == {gone: None}
    info = device_info(Registry([COVER]), 9_000, written, ended)
    assert f"{gone} registered=false 8999" in info.lines and info.ended == {gone: 9_000}
    outbox.close()


def test_every_reading_of_the_fleet_is_a_line_that_reads_back_as_its_fields(
    tmp_path: Path,
) -> None:
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    fleet = Fleet.build(seed=7, devices=200)
    (tmp_path / "devices.csv").write_text(fleet.registry_csv(), encoding="utf-8")
    registry = load_registry(tmp_path / "devices.csv")
    decoder = Decoder(profiles, registry)
    mapper = SeriesMapper(profiles, registry)
    start_ms = SystemClock().now_ms()
    messages = itertools.islice(fleet.stream(rate_msg_s=1000, start_ms=start_ms), 3000)
    records = [
        record
        for m in messages
        for record in decoder.decode(InboundMessage(m.topic, m.payload, start_ms)).records
    ]
    device = DeviceRef("hgy", "charging_shed", "cs-1")
    # Without a device time, and with only some of a port's fields.
    records.append(Reading(device, start_ms, TimeSource.GATEWAY, {"temperature_c": 31.5}, 4, 2))
    records.append(
        Reading(device, start_ms, TimeSource.GATEWAY, {"smoke": False, "ambient_temp_c": 12})
    )
    assert {type(r) for r in records} == {Reading}
    assert {r.device.device_type for r in records} == set(profiles.by_device_type)
    for record in records:
        measurement, tags, fields, time_ms = parse_line(mapper.line(record))
        telemetry = profiles.by_device_type[record.device.device_type].telemetry
        if record.port is None:
            assert measurement == telemetry.measurement
        else:
            assert telemetry.parts is not None
            assert measurement == telemetry.parts.measurement
        expected = dict(record.fields)
        if record.time_source is TimeSource.GATEWAY:
            expected["gateway_time"] = True
        assert (fields, time_ms) == (expected, record.time_ms)
        assert [type(v) for v in fields.values()] == [type(v) for v in expected.values()]
        assert (tags["community"], tags["device_id"]) == (
            record.device.community,
            record.device.device_id,
        )
        assert tags.get("port") == (None if record.port is None else str(record.port))


def test_a_status_not_timed_by_the_device_is_marked_so() -> None:
    mapper = SeriesMapper(load_profiles(PROJECT_ROOT / "device_profiles", CODECS), Registry())
    device = DeviceRef("hgy", "bracelet", "br-1")
    marked = [
        parse_line(mapper.line(StatusReport(device, 5_000, source, True)))[2].get("gateway_time")
        for source in TimeSource
    ]
    assert dict(zip(TimeSource, marked, strict=True)) == {
        TimeSource.DEVICE: None,
        TimeSource.GATEWAY: True,
        TimeSource.RETAINED: True,
    }
