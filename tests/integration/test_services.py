"""The integration fixtures start real, working servers."""

from __future__ import annotations

import gzip
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.integration.services import InfluxService, MosquittoService, VictoriaMetricsService

TIMEOUT = 10.0


@contextmanager
def mqtt_client(
    broker: MosquittoService, client_id: str = "", *, clean_session: bool = True
) -> Iterator[tuple[mqtt.Client, queue.Queue[mqtt.MQTTMessage]]]:
    """A connected MQTT 3.1.1 client and the queue its received messages go to."""
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    client.on_message = lambda _client, _userdata, message: received.put(message)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        yield client, received
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(client: mqtt.Client, topic: str) -> None:
    done = queue.Queue[object]()
    client.on_subscribe = lambda *args: done.put(args)
    result, _mid = client.subscribe(topic, qos=1)
    assert result == mqtt.MQTT_ERR_SUCCESS
    done.get(timeout=TIMEOUT)


def publish_qos1(broker: MosquittoService, topic: str, payload: bytes) -> None:
    with mqtt_client(broker) as (client, _):
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=TIMEOUT)


# -- Mosquitto -------------------------------------------------------------------------


def test_mosquitto_qos1_roundtrip(mosquitto: MosquittoService, namespace: str) -> None:
    topic = f"{namespace}/roundtrip"
    with mqtt_client(mosquitto) as (client, received):
        subscribe(client, topic)
        publish_qos1(mosquitto, topic, b"hello")
        message = received.get(timeout=TIMEOUT)
    assert (message.topic, message.payload, message.qos) == (topic, b"hello", 1)


def test_persistent_session_survives_restart(
    fresh_mosquitto: MosquittoService, namespace: str
) -> None:
    topic = f"{namespace}/queued"
    client_id = f"{namespace}-sub"
    with mqtt_client(fresh_mosquitto, client_id, clean_session=False) as (client, _):
        subscribe(client, topic)
    publish_qos1(fresh_mosquitto, topic, b"while-away")

    fresh_mosquitto.restart()
    assert (fresh_mosquitto.data_dir / "mosquitto.db").is_file()

    with mqtt_client(fresh_mosquitto, client_id, clean_session=False) as (_, received):
        message = received.get(timeout=TIMEOUT)
    assert (message.topic, message.payload, message.qos) == (topic, b"while-away", 1)


# -- InfluxDB 1.6 ----------------------------------------------------------------------


def influx_write(
    influxdb: InfluxService, db: str, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{influxdb.url}/write",
        params={"db": db, "precision": "ms"},
        content=body,
        headers=headers,
        timeout=TIMEOUT,
    )


def test_influx_write_and_query(influxdb: InfluxService, influx_db: str) -> None:
    response = influx_write(
        influxdb, influx_db, b'power,meter=m1 watts=12.5,state="ok" 1700000000123'
    )
    assert response.status_code == 204, response.text
    rows = influxdb.query(influx_db, "SELECT * FROM power GROUP BY *")
    assert rows == [{"meter": "m1", "time": 1700000000123, "watts": 12.5, "state": "ok"}]


def test_influx_accepts_gzip_body(influxdb: InfluxService, influx_db: str) -> None:
    body = gzip.compress(
        b"power,meter=gz watts=1 1700000000000\npower,meter=gz watts=2 1700000001000"
    )
    response = influx_write(influxdb, influx_db, body, {"Content-Encoding": "gzip"})
    assert response.status_code == 204, response.text
    rows = influxdb.query(influx_db, "SELECT watts FROM power WHERE meter = 'gz'")
    assert [(r["time"], r["watts"]) for r in rows] == [(1700000000000, 1), (1700000001000, 2)]


def test_influx_newlines_in_values(influxdb: InfluxService, influx_db: str) -> None:
    """How InfluxDB 1.6 line protocol treats newlines in field and tag values."""
    ok = [
        b'nl,case=raw_field s="a\nb" 1700000000000',  # raw newline inside a quoted string
        b'nl,case=bs_n_field s="a\\nb" 1700000000001',  # backslash + "n"
        b'nl,case=bs_newline_field s="a\\\nb" 1700000000002',  # backslash + raw newline
        b"nl,case=bs_n_tag\\nb v=1 1700000000003",  # backslash + "n" in a tag
        b"nl,case=bs_newline_tag\\\nb v=1 1700000000004",  # backslash + raw newline in a tag
    ]
    for line in ok:
        response = influx_write(influxdb, influx_db, line)
        assert response.status_code == 204, (line, response.text)
    # A raw newline in a tag value ends the line: the first half is rejected, the
    # second half ("b v=1 ...") is written as a point of measurement "b".
    response = influx_write(influxdb, influx_db, b"nl,case=raw_tag\nb v=1 1700000000005")
    assert response.status_code == 400
    assert "partial write" in response.text

    rows = influxdb.query(influx_db, "SELECT * FROM nl GROUP BY *")
    stored = {row["case"]: row["s"] for row in rows}
    assert stored == {
        "raw_field": "a\nb",  # kept as a newline
        "bs_n_field": "a\\nb",  # no escape sequence: stays backslash + n
        "bs_newline_field": "a\\\nb",  # the backslash is kept
        "bs_n_tag\\nb": None,
        "bs_newline_tag\\\nb": None,  # the backslash is kept in the tag value
    }
    assert influxdb.query(influx_db, "SELECT v FROM b") == [{"time": 1700000000005, "v": 1}]


# -- VictoriaMetrics -------------------------------------------------------------------


def test_victoria_metrics_gzip_influx_v2_write(
    victoria_metrics: VictoriaMetricsService, namespace: str
) -> None:
    now_ms = int(time.time() * 1000)
    body = gzip.compress(f"gw,ns={namespace} watts=7,volts=230 {now_ms}".encode())
    response = httpx.post(
        f"{victoria_metrics.url}/api/v2/write",
        params={"bucket": "x", "org": "y", "precision": "ms"},
        content=body,
        headers={"Content-Encoding": "gzip"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 204, response.text
    series = victoria_metrics.export(f'{{__name__=~"gw_.*",ns="{namespace}"}}', min_samples=2)
    by_name = {s["metric"]["__name__"]: (s["values"], s["timestamps"]) for s in series}
    assert by_name == {"gw_watts": ([7], [now_ms]), "gw_volts": ([230], [now_ms])}


def test_fresh_influx_and_victoria_metrics_restart(
    fresh_influxdb: InfluxService, fresh_victoria_metrics: VictoriaMetricsService
) -> None:
    fresh_influxdb.create_database("kept")
    assert influx_write(fresh_influxdb, "kept", b"m v=1 1700000000000").status_code == 204
    fresh_influxdb.restart()
    assert fresh_influxdb.query("kept", "SELECT v FROM m") == [{"time": 1700000000000, "v": 1}]

    vm = fresh_victoria_metrics
    now_ms = int(time.time() * 1000)
    line = f"m v=1 {now_ms}".encode()
    httpx.post(f"{vm.url}/write", params={"precision": "ms"}, content=line).raise_for_status()
    assert vm.export("m_v")
    vm.restart()
    assert [s["timestamps"] for s in vm.export("m_v")] == [[now_ms]]


def test_influx_runs_with_the_environment_it_is_given_and_tells_its_peak_memory(
    tmp_path: Path,
) -> None:
    # The benchmarks compare InfluxDB's runtime settings this way, and its memory with them.
    influx = InfluxService(tmp_path / "influxdb", environment={"GOGC": "200"})
    influx.start()
    try:
        assert influx.pid is not None
        environ = Path(f"/proc/{influx.pid}/environ").read_bytes().split(b"\0")
        assert b"GOGC=200" in environ
        status = Path(f"/proc/{influx.pid}/status").read_text().splitlines()
        resident_kib = next(int(s.split()[1]) for s in status if s.startswith("VmRSS:"))
        assert influx.peak_memory_mib() >= resident_kib / 1024 > 1
    finally:
        influx.stop()
    with pytest.raises(RuntimeError, match="not running"):
        influx.peak_memory_mib()
