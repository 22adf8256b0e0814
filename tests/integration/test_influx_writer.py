from __future__ import annotations

import math
import time
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import InfluxConfig
from gateway.errors import StoreError
from gateway.store.influx import InfluxWriter, RejectedLine
from gateway.store.line_protocol import encode_point, encode_points
from gateway.store.point import Point
from tests.stored_text import (
    HOSTILE_TEXT,
    MEASUREMENTS,
    as_stored_field_key,
    as_stored_measurement,
    as_stored_name,
)

T_MS = 1_767_225_600_000


def v1_config(url: str, database: str, **changes: object) -> InfluxConfig:
    return InfluxConfig.model_validate({"url": url, "database": database, **changes})


def rows_by_time(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {row["time"]: row for row in rows}


async def test_hostile_names_and_values_round_trip(influxdb: Any, influx_db: str) -> None:
    string_value = 'say "hi", a=b \\ C:\\dir\\ \\"q\\" \n second line\r\n 湖光苑 3号楼 \\'
    point = Point(
        measurement='env, "湖光苑 3号楼"=x C:m\nend',
        tags=(
            ("楼 栋,key=", 'val, "q"=\\x\n湖光苑 3号楼'),
            ("plain", "a\\,b c\\=d"),
            ("path", "C:\\m\\ x"),
            ("trailing", "ends\\"),
            ("empty", ""),
        ),
        fields=(
            ("f key,=", 42),
            ('quote"d', 1.0),
            ("温度 °C", 21.5),
            ("negative", -3.25),
            ("tiny", 5e-324),
            ("int_max", 2**63 - 1),
            ("flag", True),
            ("off", False),
            ("text", string_value),
            ("text, key=\\", "湖光苑 3号楼"),
        ),
        time_ms=T_MS,
    )

    async with InfluxWriter(v1_config(influxdb.url, influx_db)) as writer:
        result = await writer.write([encode_point(point)])
    assert result.rejected == ()
    assert result.accepted_lines == 1

    # Names cannot carry a newline, and a trailing backslash would escape the separator:
    # both become a space, as does a backslash that would pair with a space when the
    # parser looks for the end of the line. Everything else comes back exactly.
    measurement = 'env, "湖光苑 3号楼"=x C:m end'
    measurements = influxdb.query(influx_db, "SHOW MEASUREMENTS")
    assert measurements == [{"name": measurement}]

    field_types = {
        r["fieldKey"]: r["fieldType"] for r in influxdb.query(influx_db, "SHOW FIELD KEYS")
    }
    assert field_types == {
        "f key,=": "integer",
        'quote"d': "float",
        "温度 °C": "float",
        "negative": "float",
        "tiny": "float",
        "int_max": "integer",
        "flag": "boolean",
        "off": "boolean",
        "text": "string",
        "text, key= ": "string",
    }

    (row,) = influxdb.query(influx_db, "SELECT * FROM /.*/")
    assert row == {
        "time": T_MS,
        "楼 栋,key=": 'val, "q"=\\x 湖光苑 3号楼',
        "plain": "a\\,b c\\=d",
        "path": "C:\\m  x",
        "trailing": "ends ",
        "f key,=": 42,
        'quote"d': 1.0,
        "温度 °C": 21.5,
        "negative": -3.25,
        "tiny": 5e-324,
        "int_max": 2**63 - 1,
        "flag": True,
        "off": False,
        "text": string_value,
        "text, key= ": "湖光苑 3号楼",
    }


async def test_batch_with_one_bad_line_stores_the_rest(influxdb: Any, influx_db: str) -> None:
    config = v1_config(influxdb.url, influx_db)
    first = Point("meter", (("device_id", "m-0"),), (("x", 1),), T_MS - 1)
    points = [
        Point("meter", (("device_id", f"m-{i}"),), (("x", i),), T_MS + i) for i in range(5000)
    ]
    # A field type conflict: x is already an integer.
    points[2500] = Point("meter", (("device_id", "m-2500"),), (("x", "s"),), T_MS + 2500)
    lines = encode_points(points)

    async with InfluxWriter(config) as writer:
        assert (await writer.write([encode_point(first)])).accepted_lines == 1
        result = await writer.write(lines)

    assert result.accepted_lines == 4999
    assert len(result.rejected) == 1
    rejected: RejectedLine = result.rejected[0]
    assert rejected.line == lines[2500]
    assert "field type conflict" in rejected.reason
    assert result.requests <= 1 + 2 * math.ceil(math.log2(5000)), result.requests

    (count,) = influxdb.query(influx_db, "SELECT count(x) FROM meter")
    assert count["count"] == 5000
    stored = rows_by_time(influxdb.query(influx_db, "SELECT x FROM meter"))
    assert T_MS + 2500 not in stored
    assert stored[T_MS + 4999]["x"] == 4999


async def test_v1_gzip_write(influxdb: Any, influx_db: str) -> None:
    config = v1_config(influxdb.url, influx_db, gzip=True)
    points = [
        Point(
            "reading",
            (("community", "湖光苑"), ("building", "3号楼"), ("device_id", f"th-{i % 50}")),
            (
                ("temperature_c", 20.0 + i / 100),
                ("battery_mv", 3000 + i),
                ("door_open", i % 2 == 0),
            ),
            T_MS + i,
        )
        for i in range(2000)
    ]

    async with InfluxWriter(config) as writer:
        result = await writer.write(encode_points(points))

    assert (result.accepted_lines, result.rejected, result.requests) == (2000, (), 1)
    rows = rows_by_time(influxdb.query(influx_db, "SELECT * FROM reading"))
    assert len(rows) == 2000
    assert rows[T_MS + 1234] == {
        "time": T_MS + 1234,
        "community": "湖光苑",
        "building": "3号楼",
        "device_id": "th-34",
        "temperature_c": 32.34,
        "battery_mv": 4234,
        "door_open": True,
    }


async def test_v1_missing_database_is_not_retryable(influxdb: Any) -> None:
    config = v1_config(influxdb.url, f"missing_{uuid.uuid4().hex[:8]}")
    async with InfluxWriter(config) as writer:
        with pytest.raises(StoreError, match=f"database '{config.database}' not found") as caught:
            await writer.write(["m v=1i 1"])
    assert not caught.value.retryable


async def test_v1_missing_retention_policy_is_not_retryable(influxdb: Any, influx_db: str) -> None:
    config = v1_config(influxdb.url, influx_db, retention_policy="nope")
    async with InfluxWriter(config) as writer:
        with pytest.raises(StoreError, match="retention policy 'nope' not found") as caught:
            await writer.write(["m v=1i 1"])
    assert not caught.value.retryable


async def test_v2_api_on_influxdb_1_6_says_so(influxdb: Any) -> None:
    config = InfluxConfig(url=influxdb.url, api="v2", bucket="b")
    async with InfluxWriter(config) as writer:
        with pytest.raises(StoreError, match="is api 'v2' right") as caught:
            await writer.write(["m v=1i 1"])
    assert not caught.value.retryable


async def test_v2_gzip_write_to_victoria_metrics(victoria_metrics: Any) -> None:
    measurement = f"gw_{uuid.uuid4().hex[:12]}"
    now_ms = time.time_ns() // 1_000_000
    config = InfluxConfig(url=victoria_metrics.url, api="v2", bucket="community", gzip=True)
    points = [
        Point(
            measurement,
            (("community", "湖光苑 3号楼"), ("device_id", f"th-{i}"), ("port", "")),
            (("temperature_c", 21.5 + i), ("battery_mv", 3000 + i), ("door_open", i == 1)),
            now_ms - 1000 + i,
        )
        for i in range(3)
    ]

    async with InfluxWriter(config) as writer:
        result = await writer.write(encode_points(points))
    assert (result.accepted_lines, result.rejected, result.requests) == (3, (), 1)

    series = victoria_metrics.export(f'{{__name__=~"{measurement}_.*"}}')
    got = {
        (s["metric"]["__name__"], s["metric"]["device_id"]): (s["values"], s["timestamps"])
        for s in series
    }
    expected = {}
    for i in range(3):
        t = [now_ms - 1000 + i]
        expected[(f"{measurement}_temperature_c", f"th-{i}")] = ([21.5 + i], t)
        expected[(f"{measurement}_battery_mv", f"th-{i}")] = ([3000 + i], t)
        expected[(f"{measurement}_door_open", f"th-{i}")] = ([1 if i == 1 else 0], t)
    assert got == expected
    assert {s["metric"]["community"] for s in series} == {"湖光苑 3号楼"}
    assert not any("port" in s["metric"] for s in series)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    measurement=MEASUREMENTS,
    tags=st.lists(
        st.tuples(HOSTILE_TEXT, HOSTILE_TEXT),
        max_size=3,
        unique_by=lambda tag: as_stored_name(tag[0]),
    ),
    texts=st.lists(
        st.tuples(HOSTILE_TEXT, st.text(max_size=12)),
        min_size=1,
        max_size=3,
        unique_by=lambda field: as_stored_field_key(field[0]),
    ),
)
def test_any_name_and_string_is_stored_as_the_encoding_says(
    influxdb: Any,
    influx_db: str,
    measurement: str,
    tags: list[tuple[str, str]],
    texts: list[tuple[str, str]],
) -> None:
    case = uuid.uuid4().hex
    point = Point(
        measurement,
        (("case", case), *((f"t_{key}", value) for key, value in tags)),
        tuple((f"f_{key}", text) for key, text in texts),
        T_MS,
    )
    response = httpx.post(
        f"{influxdb.url}/write",
        params={"db": influx_db, "precision": "ms"},
        content=encode_point(point).encode(),
        timeout=10,
    )
    assert response.status_code == 204, (encode_point(point), response.text)

    where = f"WHERE \"case\" = '{case}'"
    (stored_as,) = influxdb.query(influx_db, f"SHOW MEASUREMENTS {where}")
    assert stored_as == {"name": as_stored_measurement(measurement)}
    (row,) = influxdb.query(influx_db, f"SELECT * FROM /.*/ {where}")
    expected_tags = {as_stored_name(f"t_{key}"): as_stored_name(value) for key, value in tags}
    expected_fields = {as_stored_field_key(f"f_{key}"): text for key, text in texts}
    stored = {k: v for k, v in row.items() if v is not None and k not in ("time", "case")}
    assert stored == expected_tags | expected_fields, encode_point(point)


async def test_a_backlog_older_than_the_retention_policy_is_settled_not_quarantined(
    influxdb: Any,
) -> None:
    # An outage longer than the database keeps points (an hour here): the backlog's old
    # lines are dropped by the database, counted, and cost one request; the newer are
    # written.
    database = f"test_{uuid.uuid4().hex[:16]}"
    influxdb.create_database(database)
    httpx.post(
        f"{influxdb.url}/query",
        params={
            "q": f'CREATE RETENTION POLICY "hour" ON "{database}" DURATION 1h REPLICATION 1 DEFAULT'
        },
        timeout=10.0,
    ).raise_for_status()
    now_ms = int(time.time() * 1000)
    old = [f"m,device_id=d-{i} v={i}i {now_ms - 7_200_000 + i}" for i in range(2000)]
    new = [f"m,device_id=d-{i} v={i}i {now_ms - 60_000 + i}" for i in range(2000)]
    async with InfluxWriter(v1_config(influxdb.url, database)) as writer:
        expired = await writer.write(old)
        mixed = await writer.write(old[:100] + new)
    assert (expired.accepted_lines, expired.expired_lines, expired.requests) == (0, 2000, 1)
    assert (mixed.accepted_lines, mixed.expired_lines, mixed.rejected) == (2000, 100, ())
    (row,) = influxdb.query(database, 'SELECT count("v") FROM "m"')
    assert row["count"] == 2000
