"""Device messages through real Mosquitto into real InfluxDB (1.x API) and VictoriaMetrics (v2 API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulators.acme import AcmeFrame, FrameType, StatusBits
from tests.integration.harness import Publisher, gateway_config, running, wait_until
from tests.integration.services import InfluxService, MosquittoService, VictoriaMetricsService

T0 = 1_767_225_600_000
IMEI = "861234567890123"


def write_registry(tmp_path: Path, namespace: str) -> Path:
    path = tmp_path / "devices.csv"
    path.write_text(
        "device_id,device_type,community,area,compound,building,imei,well_depth_cm\n"
        f"sd-1,smoke_detector,{namespace},东区,湖光苑,3号楼,,\n"
        f"mh-1,manhole_cover,{namespace},东区,湖光苑,,,200\n"
        f"acme-7,smoke_detector,{namespace},东区,湖光新苑,5号楼,{IMEI},\n",
        encoding="utf-8",
    )
    return path


def influx_v1(influxdb: InfluxService, db: str) -> dict[str, Any]:
    return {"url": influxdb.url, "api": "v1", "database": db, "backoff_max_s": 1}


def rows(influxdb: InfluxService, db: str, query: str) -> list[dict[str, Any]]:
    try:
        return influxdb.query(db, query)
    except RuntimeError:
        return []


async def test_every_device_type_and_the_vendor_frame_land_with_the_right_series(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    ns = namespace
    config = gateway_config(
        tmp_path,
        mosquitto,
        ns,
        influx=influx_v1(influxdb, influx_db),
        registry_file=write_registry(tmp_path, ns),
    )
    alarm_frame = AcmeFrame(FrameType.ALARM, StatusBits.ALARM, 61, 57.5, 4.25).encode()
    async with running(config):
        publisher = Publisher(mosquitto)
        publisher.publish_all(
            [
                (
                    f"community/{ns}/smoke_detector/sd-1/telemetry",
                    {
                        "ts": T0,
                        "seq": 1,
                        "obscuration_pct_per_m": 0.12,
                        "temperature_c": 23.5,
                        "battery_pct": 87,
                        "alarm": False,
                        "rssi_dbm": -92,
                    },
                ),
                (
                    f"community/{ns}/smoke_detector/sd-1/event",
                    {"ts": T0 + 1, "seq": 2, "event": "tamper"},
                ),
                (
                    f"community/{ns}/manhole_cover/mh-1/telemetry",
                    {
                        "ts": T0,
                        "tilt_deg": 2,
                        "lid_open": False,
                        "water_level_cm": 35.5,
                        "ch4_ppm": 12.0,
                        "battery_pct": 90,
                    },
                ),
                (
                    f"community/{ns}/bracelet/br-1/telemetry",
                    {
                        "ts": "2026-01-01T08:00:00+08:00",
                        "heart_rate_bpm": 72,
                        "spo2_pct": 97,
                        "steps": 1234,
                        "lat": 34.7466,
                        "lon": 113.6253,
                        "worn": True,
                        "battery_pct": 64,
                    },
                ),
                (
                    f"community/{ns}/bracelet/br-1/event",
                    {
                        "ts": T0 + 5,
                        "event": "fall",
                        "confidence": 0.91,
                        "lat": 34.7466,
                        "lon": 113.6253,
                    },
                ),
                (
                    f"community/{ns}/charging_shed/cs-1/telemetry",
                    {
                        "ts": T0,
                        "ambient_temp_c": 18.0,
                        "smoke": False,
                        "ports": [
                            {
                                "port": 1,
                                "charging": True,
                                "current_a": 2.4,
                                "voltage_v": 48.2,
                                "power_w": 115.7,
                                "temperature_c": 36.5,
                            },
                            {
                                "port": 2,
                                "charging": False,
                                "current_a": 0.0,
                                "voltage_v": 0.0,
                                "power_w": 0.0,
                                "temperature_c": 19.0,
                            },
                        ],
                    },
                ),
                (f"community/{ns}/bracelet/br-1/status", {"online": True}),
                (
                    f"vendor/acme-smoke/{IMEI}/up",
                    {"imei": IMEI, "ts": T0 + 9, "payload": alarm_frame.hex()},
                ),
            ]
        )
        publisher.close()
        await wait_until(
            lambda: (
                len(rows(influxdb, influx_db, "SELECT * FROM device_status")) == 1
                and len(rows(influxdb, influx_db, "SELECT * FROM smoke_detector")) == 2
                and len(rows(influxdb, influx_db, "SELECT * FROM alert")) >= 3
            ),
            what="all points in InfluxDB",
        )

    def one(query: str) -> dict[str, Any]:
        (row,) = rows(influxdb, influx_db, query)
        return row

    smoke = one("SELECT * FROM smoke_detector WHERE device_id = 'sd-1'")
    assert smoke["time"] == T0
    assert (smoke["community"], smoke["building"], smoke["compound"], smoke["area"]) == (
        ns,
        "3号楼",
        "湖光苑",
        "东区",
    )
    assert (smoke["obscuration_pct_per_m"], smoke["temperature_c"], smoke["battery_pct"]) == (
        0.12,
        23.5,
        87,
    )
    assert (smoke["alarm"], smoke["rssi_dbm"]) == (False, -92)

    vendor = one("SELECT * FROM smoke_detector WHERE device_id = 'acme-7'")
    assert (vendor["time"], vendor["building"], vendor["alarm"]) == (T0 + 9, "5号楼", True)
    assert (vendor["temperature_c"], vendor["obscuration_pct_per_m"], vendor["battery_pct"]) == (
        57.5,
        4.25,
        61,
    )
    vendor_alarm = one("SELECT * FROM smoke_detector_event WHERE device_id = 'acme-7'")
    assert vendor_alarm["event"] == "alarm"
    assert one("SELECT * FROM smoke_detector_event WHERE device_id = 'sd-1'")["event"] == "tamper"

    cover = one("SELECT * FROM manhole_cover")
    assert (cover["water_level_cm"], cover["lid_open"], cover["tilt_deg"]) == (35.5, False, 2.0)

    bracelet = one("SELECT * FROM bracelet")
    assert (bracelet["time"], bracelet["heart_rate_bpm"], bracelet["steps"], bracelet["worn"]) == (
        T0,
        72,
        1234,
        True,
    )
    fall = one("SELECT * FROM bracelet_event")
    assert (fall["time"], fall["event"], fall["confidence"]) == (T0 + 5, "fall", 0.91)

    shed = one("SELECT * FROM charging_shed")
    assert (shed["ambient_temp_c"], shed["smoke"]) == (18.0, False)
    ports = rows(influxdb, influx_db, "SELECT * FROM charging_port ORDER BY time")
    assert sorted((p["port"], p["temperature_c"], p["charging"]) for p in ports) == [
        ("1", 36.5, True),
        ("2", 19.0, False),
    ]

    # What the default rules made of it, as the dashboards' alert timeline sees it.
    alerts = {
        (a["rule"], a["device_id"], a["state"])
        for a in rows(influxdb, influx_db, "SELECT * FROM alert")
    }
    assert {
        ("fire_alarm", "acme-7", "firing"),
        ("smoke_tampering", "sd-1", "firing"),
        ("fall", "br-1", "firing"),
    } <= alerts

    status = one("SELECT * FROM device_status")
    assert (status["online"], status["gateway_time"], status["device_type"]) == (
        True,
        True,
        "bracelet",
    )

    # Field types as InfluxDB stores them: integers stay integers, flags booleans.
    types = {
        (r["fieldKey"], r["fieldType"])
        for r in rows(influxdb, influx_db, "SHOW FIELD KEYS FROM smoke_detector")
    }
    assert {("battery_pct", "integer"), ("temperature_c", "float"), ("alarm", "boolean")} <= types


async def test_bad_input_is_quarantined_and_good_messages_around_it_land(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    ns = namespace
    good = f"community/{ns}/smoke_detector/sd-1/telemetry"
    frame = AcmeFrame(FrameType.PERIODIC, StatusBits.NONE, 90, 21.0, 0.0).encode()
    bad_crc = frame[:8] + bytes([frame[8] ^ 0xFF, frame[9]])
    bad: list[tuple[str, dict[str, Any] | bytes, str]] = [
        (good, b"{oops", "not_json"),
        (good, b'{"x": "' + b"y" * 17_000 + b'"}', "too_large"),
        (f"community/{ns}/toaster/t-1/telemetry", {"ts": T0}, "unknown_device_type"),
        (
            f"community/{ns}/smoke_detector/ghost-1/telemetry",
            {"alarm": True},
            "unregistered_device",
        ),
        (good, {"ts": T0, "battery_pct": "full"}, "wrong_type"),
        (good, {"ts": T0, "temperature_c": 400.0}, "out_of_range"),
        (
            f"vendor/acme-smoke/{IMEI}/up",
            {"imei": IMEI, "payload": "BB" + frame.hex()[2:]},
            "bad_frame_header",
        ),
        (
            f"vendor/acme-smoke/{IMEI}/up",
            {"imei": IMEI, "payload": frame.hex()[:-2]},
            "bad_frame_length",
        ),
        (f"vendor/acme-smoke/{IMEI}/up", {"imei": IMEI, "payload": bad_crc.hex()}, "bad_crc"),
    ]
    config = gateway_config(
        tmp_path,
        mosquitto,
        ns,
        influx=influx_v1(influxdb, influx_db),
        registry_file=write_registry(tmp_path, ns),
        require_registered=True,
    )
    async with running(config) as gateway:
        publisher = Publisher(mosquitto)
        messages: list[tuple[str, dict[str, Any] | bytes]] = []
        for i, (topic, payload, _) in enumerate(bad):
            messages.append((good, {"ts": T0 + i, "seq": i, "temperature_c": 20.0 + i}))
            messages.append((topic, payload))
        messages.append((good, {"ts": T0 + 100, "seq": 100, "temperature_c": 30.0}))
        publisher.publish_all(messages)
        publisher.close()
        await wait_until(
            lambda: len(rows(influxdb, influx_db, "SELECT * FROM smoke_detector")) == len(bad) + 1,
            what="good messages stored",
        )
        assert gateway.stats.rejected_by_reason == {reason: 1 for *_, reason in bad}
        quarantined = {q.entry.reason: q.entry for q in gateway.outbox.quarantine(limit=100)}
        assert set(quarantined) == {reason for *_, reason in bad}
        assert quarantined["not_json"].payload == b"{oops"
        assert quarantined["not_json"].topic == good
        assert "battery_pct" in quarantined["wrong_type"].detail


async def test_v2_api_writes_to_a_real_server(
    tmp_path: Path,
    mosquitto: MosquittoService,
    victoria_metrics: VictoriaMetricsService,
    namespace: str,
) -> None:
    ns = namespace
    config = gateway_config(
        tmp_path,
        mosquitto,
        ns,
        influx={
            "url": victoria_metrics.url,
            "api": "v2",
            "bucket": "community",
            "org": "hgy",
            "token": "t",
        },
    )
    async with running(config) as gateway:
        publisher = Publisher(mosquitto)
        publisher.publish_all(
            [
                (
                    f"community/{ns}/manhole_cover/mh-{i}/telemetry",
                    {"ts": T0 + i, "water_level_cm": 10.0 * i},
                )
                for i in range(1, 4)
            ]
        )
        publisher.close()
        await wait_until(lambda: gateway.stats.lines_written == 3, what="lines written")
    series = victoria_metrics.export(
        f'manhole_cover_water_level_cm{{community="{ns}"}}', min_samples=3, timeout=20
    )
    got = sorted((s["metric"]["device_id"], s["values"][0], s["timestamps"][0]) for s in series)
    assert got == [("mh-1", 10.0, T0 + 1), ("mh-2", 20.0, T0 + 2), ("mh-3", 30.0, T0 + 3)]
