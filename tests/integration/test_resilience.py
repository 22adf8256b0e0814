"""Nothing lost, nothing doubled: the database, the broker or the gateway itself going away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from pytest_httpserver import HTTPServer

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.ingest.process import TelemetryProcess
from tests.integration.harness import (
    Publisher,
    close_sockets,
    gateway_config,
    running,
    wait_until,
)
from tests.integration.services import InfluxService, MosquittoService
from tests.unit.disk import damage

T0 = 1_767_225_600_000


def readings(namespace: str, first: int, count: int) -> list[tuple[str, dict[str, Any] | bytes]]:
    """`count` distinct smoke readings spread over 20 devices."""
    return [
        (
            f"community/{namespace}/smoke_detector/sd-{i % 20}/telemetry",
            {"ts": T0 + i, "seq": i, "temperature_c": 20.0 + (i % 50) / 10},
        )
        for i in range(first, first + count)
    ]


def stored(influxdb: InfluxService, db: str) -> int:
    try:
        result = influxdb.query(db, "SELECT count(temperature_c) FROM smoke_detector")
    except (RuntimeError, OSError):
        return -1
    return int(result[0]["count"]) if result else 0


async def publish(
    broker: MosquittoService, messages: list[tuple[str, dict[str, Any] | bytes]]
) -> None:
    def send() -> None:
        publisher = Publisher(broker)
        try:
            publisher.publish_all(messages)
        finally:
            publisher.close()

    await asyncio.to_thread(send)


async def test_influxdb_stopped_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, mosquitto: MosquittoService, fresh_influxdb: InfluxService, namespace: str
) -> None:
    influxdb = fresh_influxdb
    influxdb.create_database("community")
    config = gateway_config(
        tmp_path,
        mosquitto,
        namespace,
        influx={
            "url": influxdb.url,
            "database": "community",
            "backoff_initial_s": 0.1,
            "backoff_max_s": 0.5,
            "batch_lines": 500,
        },
    )
    async with running(config) as gateway:
        await publish(mosquitto, readings(namespace, 0, 1000))
        await wait_until(lambda: stored(influxdb, "community") >= 200, what="first points")
        influxdb.stop()
        await publish(mosquitto, readings(namespace, 1000, 1500))
        await wait_until(lambda: gateway.stats.messages_in == 2500, what="all messages in")
        await wait_until(lambda: gateway.stats.write_failures > 0, what="a failed write")
        assert gateway.outbox.depth() > 0
        influxdb.start()
        await wait_until(
            lambda: stored(influxdb, "community") == 2500, timeout_s=60, what="backlog drained"
        )
        await wait_until(lambda: gateway.outbox.depth() == 0, what="outbox empty")
        await wait_until(lambda: gateway.stats.lines_written >= 2500, what="writes counted")
        # Each point was sent once: the outbox let go of nothing before it was accepted.
        assert gateway.stats.lines_written == 2500
    assert stored(influxdb, "community") == 2500


async def test_broker_restart_and_gateway_downtime_lose_nothing(
    tmp_path: Path,
    fresh_mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    broker = fresh_mosquitto
    config = gateway_config(
        tmp_path, broker, namespace, influx={"url": influxdb.url, "database": influx_db}
    )
    async with running(config) as gateway:
        await publish(broker, readings(namespace, 0, 300))
        await wait_until(lambda: stored(influxdb, influx_db) == 300, what="first batch")
        connections = gateway.subscriber.connections if gateway.subscriber else 0
        broker.restart()
        await wait_until(
            lambda: gateway.subscriber is not None and gateway.subscriber.connections > connections,
            what="reconnected",
        )
        await publish(broker, readings(namespace, 300, 300))
        await wait_until(lambda: stored(influxdb, influx_db) == 600, what="after broker restart")
    # While the gateway is away its persistent session queues what devices send.
    await publish(broker, readings(namespace, 600, 400))
    async with running(config):
        await wait_until(lambda: stored(influxdb, influx_db) == 1000, what="queued while away")


async def start_gateway(config_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """`community-gateway run` in a process of its own, its log added to `log_file`;
    once both its connections, the alarms' and the telemetry's, are up."""
    connections = log_file.read_text().count("connected to") if log_file.exists() else 0
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config_file)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    await wait_until(
        lambda: log_file.read_text().count("connected to") >= connections + 2,
        what="gateway up",
    )
    # Its first subscription must be in place before devices publish.
    await asyncio.sleep(0.3)
    return process


async def test_gateway_killed_mid_stream_loses_no_message(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    config = gateway_config(
        tmp_path, mosquitto, namespace, influx={"url": influxdb.url, "database": influx_db}
    )
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))

    start = partial(start_gateway, config_file, tmp_path / "gateway.log")
    total = 6000
    process = await start()
    try:
        await publish(mosquitto, readings(namespace, 0, 10))
        await wait_until(lambda: stored(influxdb, influx_db) == 10, what="first points")
        sending = asyncio.create_task(publish(mosquitto, readings(namespace, 10, total - 10)))
        await wait_until(
            lambda: stored(influxdb, influx_db) >= 1000, timeout_s=60, what="stream flowing"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        killed_at = stored(influxdb, influx_db)
        await sending
        process = await start()
        await wait_until(
            lambda: stored(influxdb, influx_db) == total, timeout_s=90, what="every message"
        )
        assert killed_at < total, "the kill came after the stream had ended"
    finally:
        process.kill()
        process.wait(timeout=10)


async def test_the_telemetry_process_killed_mid_stream_is_restarted_and_loses_nothing(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    config = gateway_config(
        tmp_path, mosquitto, namespace, influx={"url": influxdb.url, "database": influx_db}
    )
    total = 4000
    async with running(config) as gateway:
        telemetry = gateway.subscriber
        assert isinstance(telemetry, TelemetryProcess) and telemetry.pid is not None
        sending = asyncio.create_task(publish(mosquitto, readings(namespace, 0, total)))
        await wait_until(lambda: gateway.stats.messages_in >= 500, what="stream flowing")
        os.kill(telemetry.pid, signal.SIGKILL)
        await wait_until(
            lambda: telemetry.started == 2 and telemetry.connected.is_set(), what="restarted"
        )
        await sending
        await wait_until(
            lambda: stored(influxdb, influx_db) == total, timeout_s=60, what="every message"
        )

        def handoffs_waiting() -> int:
            with contextlib.closing(sqlite3.connect(config.outbox.path)) as conn:
                return int(conn.execute("SELECT count(*) FROM handoffs").fetchone()[0])

        # Every record handed over was judged, none left behind.
        await wait_until(lambda: handoffs_waiting() == 0, what="records judged")


async def test_a_disk_that_takes_no_more_stops_nothing_and_loses_nothing(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    config = gateway_config(
        tmp_path, mosquitto, namespace, influx={"url": influxdb.url, "database": influx_db}
    )
    async with running(config) as gateway:
        telemetry = gateway.subscriber
        assert isinstance(telemetry, TelemetryProcess) and telemetry.pid is not None
        await publish(mosquitto, readings(namespace, 0, 500))
        await wait_until(lambda: stored(influxdb, influx_db) == 500, what="first points")
        # The telemetry process may write no byte more to any file: its disk is full.
        _, hard = resource.prlimit(telemetry.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(telemetry.pid, resource.RLIMIT_FSIZE, (0, hard))
        await publish(mosquitto, readings(namespace, 500, 1500))
        await wait_until(lambda: "telemetry" in gateway.stats.commit_errors, what="a failure")
        failures = gateway.stats.commit_failures
        await wait_until(lambda: gateway.stats.commit_failures > failures, what="tried again")
        # The same process goes on trying; nothing was taken in meanwhile.
        assert telemetry.started == 1
        assert stored(influxdb, influx_db) == 500
        assert "COMMITS FAILING (telemetry)" in gateway.stats.summary()

        resource.prlimit(telemetry.pid, resource.RLIMIT_FSIZE, (hard, hard))
        await wait_until(
            lambda: stored(influxdb, influx_db) == 2000, timeout_s=60, what="every message"
        )
        assert gateway.stats.commit_errors == {}
        assert telemetry.started == 1


async def test_an_outbox_damaged_while_the_gateway_was_down_is_set_aside_and_nothing_sent_is_lost(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    config = gateway_config(
        tmp_path, mosquitto, namespace, influx={"url": influxdb.url, "database": influx_db}
    )
    async with running(config):
        await publish(mosquitto, readings(namespace, 0, 200))
        await wait_until(lambda: stored(influxdb, influx_db) == 200, what="first points")
    path = config.outbox.path
    damaged = damage(path)
    # Sent while it is down: the broker keeps them for its session.
    await publish(mosquitto, readings(namespace, 200, 300))
    async with running(config):
        await wait_until(lambda: stored(influxdb, influx_db) == 500, what="every message")
    assert path.with_name(path.name + ".damaged").read_bytes() == damaged


def fault_policy(namespace: str, httpserver: HTTPServer) -> dict[str, Any]:
    """The grid worker on duty hears of alarms at /worker, the office of the gateway's
    faults at /office, a second after they begin and end."""
    httpserver.expect_request("/worker", method="POST").respond_with_data("", status=204)
    httpserver.expect_request("/office", method="POST").respond_with_data("", status=204)
    return {
        "channels": {
            "worker-app": {"type": "webhook", "url": httpserver.url_for("/worker")},
            "office-robot": {"type": "webhook", "url": httpserver.url_for("/office")},
        },
        "receivers": [
            {"name": "wang-fang", "channels": ["worker-app"]},
            {"name": "office", "channels": ["office-robot"]},
        ],
        "rosters": [{"cell": {"community": namespace}, "shifts": [{"receiver": "wang-fang"}]}],
        "routes": [{"match": {"severities": ["critical"]}, "escalation": "critical"}],
        "escalations": {"critical": [{"after_s": 0, "to": ["on_duty"]}]},
        "gateway_faults": {"after_s": 1, "to": ["office"]},
    }


def requests_to(httpserver: HTTPServer, path: str) -> list[dict[str, Any]]:
    """The documents posted to `path`, in order."""
    return [json.loads(r.get_data()) for r, _ in httpserver.log if r.path == path]


async def test_a_broker_gone_is_told_to_people_once_across_a_restart_and_its_return_too(
    tmp_path: Path, fresh_mosquitto: MosquittoService, namespace: str, httpserver: HTTPServer
) -> None:
    broker = fresh_mosquitto
    base = gateway_config(tmp_path, broker, namespace)
    config = GatewayConfig.model_validate(
        {**base.model_dump(exclude_none=True), "notify": fault_policy(namespace, httpserver)}
    )
    received = partial(requests_to, httpserver)
    async with running(config):
        await asyncio.sleep(1.5)
        assert received("/office") == []
        broker.stop()
        await wait_until(lambda: bool(received("/office")), what="the fault told")
        (fault,) = received("/office")
        assert fault["kind"] == "fault"
        assert (
            f"与消息服务器的连接中断，收不到设备告警: not connected to {broker.host}:{broker.port}"
            in fault["text"]
        )
    # Started again with the broker still gone: the same fault, not a new one.
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    try:
        # Past twice `after_s` into the new start.
        await asyncio.sleep(2.5)
        assert [n["kind"] for n in received("/office")] == ["fault"]
        broker.start()
        await wait_until(lambda: len(received("/office")) == 2, what="the fault's end told")
    finally:
        gateway.stop()
        await asyncio.wait_for(task, timeout=15)
    cleared = received("/office")[1]
    assert (cleared["kind"], cleared["alert_id"]) == ("fault_cleared", fault["alert_id"])


async def test_a_gateway_that_keeps_crashing_is_told_to_people(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, httpserver: HTTPServer
) -> None:
    document = gateway_config(tmp_path, mosquitto, namespace).model_dump(
        mode="json", exclude_none=True
    )
    document["notify"] = fault_policy(namespace, httpserver)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(document, allow_unicode=True))
    start = partial(start_gateway, config_file, tmp_path / "gateway.log")
    received = partial(requests_to, httpserver)

    process = await start()
    try:
        # Stopped as asked: no crash.
        process.terminate()
        assert process.wait(timeout=15) == 0
        # Then killed twice, each time soon after its start.
        for _ in range(2):
            process = await start()
            process.kill()
            process.wait(timeout=10)
        assert received("/office") == []
        process = await start()
        await wait_until(lambda: bool(received("/office")), what="the crashes told")
    finally:
        process.terminate()
        process.wait(timeout=15)
    (fault,) = received("/office")
    assert (fault["kind"], fault["receiver"]) == ("fault", "office")
    assert (
        "网关反复意外退出并重启，告警处理可能中断: started after a crash 2 times" in fault["text"]
    )


async def test_a_gateway_that_cannot_write_tells_people_and_the_sos_gets_through_once_it_can(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, httpserver: HTTPServer
) -> None:
    base = gateway_config(tmp_path, mosquitto, namespace)
    document = base.model_dump(mode="json", exclude_none=True)
    document["notify"] = fault_policy(namespace, httpserver)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(document, allow_unicode=True))
    received = partial(requests_to, httpserver)

    # Its log goes to a pipe: a file would be refused it as well.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--config", str(config_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    logged: list[str] = []

    async def read_log() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            logged.append(line.decode(errors="replace"))

    reading = asyncio.create_task(read_log())
    try:
        # Both connections: the alarms' and the telemetry's.
        await wait_until(lambda: "".join(logged).count("connected to") >= 2, what="gateway up")
        await asyncio.sleep(0.3)
        # The main process, which commits alarms, may write no byte more to any file:
        # its disk went read-only, or died.
        _, hard = resource.prlimit(process.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (0, hard))
        sos = f"community/{namespace}/bracelet/br-7/event"
        await publish(
            mosquitto, [(sos, {"ts": time.time_ns() // 1_000_000, "seq": 1, "event": "sos"})]
        )

        # Nobody hears of the SOS, which waits unacknowledged in the broker; the
        # office hears that alarms may not get through, and why.
        await wait_until(lambda: bool(received("/office")), what="the fault told")
        (fault,) = received("/office")
        assert (fault["kind"], fault["state"], fault["receiver"]) == ("fault", "firing", "office")
        assert fault["device"]["device_id"] == base.mqtt.client_id  # type: ignore[union-attr]
        assert any(line.startswith("数据无法保存") and "main: " in line
                   for line in fault["text"].split("\n"))  # fmt: skip
        assert received("/worker") == []
        assert process.returncode is None

        # The disk takes writes again: the SOS comes in from the broker, and the
        # office hears that the fault is over.
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        await wait_until(lambda: bool(received("/worker")), what="the SOS notified")
        await wait_until(lambda: len(received("/office")) == 2, what="the fault's end told")
        await asyncio.sleep(1.5)
        assert [(n["rule"], n["receiver"]) for n in received("/worker")] == [("sos", "wang-fang")]
        assert [n["kind"] for n in received("/office")] == ["fault", "fault_cleared"]
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=15)
        await reading


class StatusWatch:
    """What the broker delivers on the gateway's status topic, as the district
    platform or an app would subscribe to it."""

    def __init__(self, broker: MosquittoService, topic: str) -> None:
        self.documents: list[dict[str, Any]] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = lambda c, u, message: self.documents.append(
            json.loads(message.payload)
        )
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def reasons(self) -> list[tuple[bool, str]]:
        return [(d["online"], d["reason"]) for d in self.documents]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        close_sockets(self._client)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_the_gateway_says_on_its_status_topic_when_it_is_online_and_when_it_stops(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, protocol: str
) -> None:
    base = gateway_config(tmp_path, mosquitto, namespace)
    document = base.model_dump(exclude_none=True)
    document["mqtt"]["protocol"] = protocol
    config = GatewayConfig.model_validate(document)
    assert config.mqtt is not None
    topic = f"gateway/{config.mqtt.client_id}/status"
    watch = StatusWatch(mosquitto, topic)
    try:
        async with running(config):
            await wait_until(lambda: watch.reasons() == [(True, "connected")], what="online")
            online = watch.documents[0]
            assert online["client_id"] == config.mqtt.client_id and online["version"]
        await wait_until(lambda: len(watch.documents) == 2, what="the stop said")
        assert watch.reasons()[1] == (False, "stopped")
    finally:
        watch.close()
    # Retained: one who looks later learns it too.
    later = StatusWatch(mosquitto, topic)
    try:
        await wait_until(lambda: later.reasons() == [(False, "stopped")], what="retained")
    finally:
        later.close()


async def _run_to_its_end(config_file: Path) -> subprocess.CompletedProcess[str]:
    """`community-gateway run` on `config_file`, off the event loop, until it exits."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "run", "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _broken_rules(tmp_path: Path, config: GatewayConfig) -> tuple[Path, Path]:
    """A config file whose rule folder holds a rule without a condition: the config and
    the rule file's paths."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "broken.yaml").write_text("rules:\n  - name: no_condition\n    severity: info\n")
    document = config.model_dump(mode="json", exclude_none=True, by_alias=True)
    document["rules_dir"] = str(rules)
    config_file = tmp_path / "broken.yaml"
    config_file.write_text(yaml.safe_dump(document))
    return config_file, rules / "broken.yaml"


async def _what_a_failed_start_says(
    mosquitto: MosquittoService, config: GatewayConfig, config_file: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`run` on `config_file`, which must end with exit 2 and say it is offline on the
    status topic of `config`'s client id, once: how it ended, and what it said."""
    assert config.mqtt is not None
    watch = StatusWatch(mosquitto, f"gateway/{config.mqtt.client_id}/status")
    try:
        ended = await _run_to_its_end(config_file)
        assert ended.returncode == 2, ended.stderr
        await wait_until(lambda: bool(watch.documents), what="the status said")
        (said,) = watch.documents
        assert said["online"] is False
        return ended, said
    finally:
        watch.close()


async def test_a_gateway_that_cannot_start_says_why_on_its_status_topic(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    # As in a restart loop on a broken rule file: the status says why, not "stopped".
    config = gateway_config(tmp_path, mosquitto, namespace)
    assert config.mqtt is not None
    config_file, rule_file = _broken_rules(tmp_path, config)
    ended, said = await _what_a_failed_start_says(mosquitto, config, config_file)
    assert f"config error: {rule_file}" in ended.stderr
    assert said["reason"].startswith(f"cannot start: {rule_file}: "), said
    assert said["client_id"] == config.mqtt.client_id


async def test_a_config_file_that_cannot_be_taken_is_said_on_the_status_topic(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    # As after an upgrade that no longer takes a setting: its mqtt section still names
    # the broker to say it on.
    config = gateway_config(tmp_path, mosquitto, namespace)
    assert config.mqtt is not None
    document = config.model_dump(mode="json", exclude_none=True)
    document["timezone"] = "Asia/Beijing"
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(document))
    _, said = await _what_a_failed_start_says(mosquitto, config, config_file)
    assert said["reason"].startswith(f"cannot start: {config_file}: timezone: "), said
    assert "Asia/Beijing" in said["reason"]


async def test_starts_refused_in_a_row_are_told_to_people_once_and_their_end_too(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, httpserver: HTTPServer
) -> None:
    base = gateway_config(tmp_path, mosquitto, namespace)
    config = GatewayConfig.model_validate(
        {**base.model_dump(exclude_none=True), "notify": fault_policy(namespace, httpserver)}
    )
    received = partial(requests_to, httpserver)
    broken_rules, _ = _broken_rules(tmp_path, config)
    ended = await _run_to_its_end(broken_rules)
    assert ended.returncode == 2, ended.stderr
    assert received("/office") == []
    # Past `after_s`, started again on a config file it does not take at all.
    await asyncio.sleep(1.0)
    document = config.model_dump(mode="json", exclude_none=True, by_alias=True)
    document["timezone"] = "Asia/Beijing"
    bad_zone = tmp_path / "zone.yaml"
    bad_zone.write_text(yaml.safe_dump(document))
    ended = await _run_to_its_end(bad_zone)
    assert ended.returncode == 2, ended.stderr
    (fault,) = received("/office")
    assert (fault["kind"], fault["receiver"]) == ("fault", "office")
    assert f"网关无法启动，收不到设备告警，也发不出通知: {bad_zone}: timezone" in fault["text"]
    # Told once, however often it is started again.
    ended = await _run_to_its_end(broken_rules)
    assert ended.returncode == 2, ended.stderr
    assert len(received("/office")) == 1
    async with running(config):
        await wait_until(lambda: len(received("/office")) == 2, what="its end told")
    cleared = received("/office")[1]
    assert (cleared["kind"], cleared["alert_id"]) == ("fault_cleared", fault["alert_id"])


async def test_a_second_gateway_that_cannot_start_leaves_the_running_ones_status_alone(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    config = gateway_config(tmp_path, mosquitto, namespace)
    assert config.mqtt is not None
    config_file, _ = _broken_rules(tmp_path, config)
    watch = StatusWatch(mosquitto, f"gateway/{config.mqtt.client_id}/status")
    try:
        async with running(config):
            await wait_until(lambda: watch.reasons() == [(True, "connected")], what="online")
            ended = await _run_to_its_end(config_file)
            assert ended.returncode == 2, ended.stderr
            await asyncio.sleep(0.5)
            assert watch.reasons() == [(True, "connected")]
    finally:
        watch.close()


async def test_a_gateway_that_dies_is_said_offline_by_the_broker(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    config = gateway_config(tmp_path, mosquitto, namespace)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    assert config.mqtt is not None
    watch = StatusWatch(mosquitto, f"gateway/{config.mqtt.client_id}/status")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: watch.reasons() == [(True, "connected")], what="online")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        # Its last will, published by the broker when the connection dropped.
        await wait_until(lambda: len(watch.documents) == 2, what="the will")
        assert watch.reasons()[1] == (False, "connection lost")
    finally:
        process.kill()
        process.wait(timeout=10)
        watch.close()
