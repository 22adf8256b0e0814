"""The device registry reloaded by a running gateway, its telemetry in its own process."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.store.lock import telemetry_pid_path
from simulators.acme import AcmeFrame, FrameType, StatusBits
from tests.integration.harness import Publisher, gateway_config, wait_until
from tests.integration.services import InfluxService, MosquittoService
from tests.integration.test_pipeline import influx_v1, rows

T0 = 1_767_225_600_000
IMEI = "869123456789012"
VENDOR_TOPIC = f"vendor/acme-smoke/{IMEI}/up"
HEADER = "device_id,device_type,community,area,compound,building,imei\n"


def outbox_rows(outbox: Path, query: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of the running gateway's outbox, read beside it (none while it makes its
    tables)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as db:
            return db.execute(query, params).fetchall()
    except sqlite3.OperationalError:
        return []


def vendor_frame(ts_ms: int) -> dict[str, Any]:
    frame = AcmeFrame(FrameType.PERIODIC, StatusBits.NONE, 88, 21.5, 0.05).encode()
    return {"imei": IMEI, "ts": ts_ms, "payload": frame.hex()}


def smoke_reading(seq: int) -> dict[str, Any]:
    return {"ts": T0 + seq, "seq": seq, "temperature_c": 22.0, "battery_pct": 90, "alarm": False}


async def test_a_reload_registers_an_imei_moves_a_detector_and_a_broken_registry_changes_nothing(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
) -> None:
    ns = namespace
    registry = tmp_path / "devices.csv"
    registry.write_text(HEADER + f"sd-1,smoke_detector,{ns},东区,湖光苑,3号楼,\n", encoding="utf-8")
    config = gateway_config(
        tmp_path, mosquitto, ns, influx=influx_v1(influxdb, influx_db), registry_file=registry
    )
    mqtt = config.mqtt
    # With the alarms on their own connection, the telemetry runs in its own process.
    assert mqtt is not None and mqtt.alarm_topics and config.ingest.telemetry_process
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    outbox = config.outbox.path
    log_file = tmp_path / "gateway.log"
    smoke_topic = f"community/{ns}/smoke_detector/sd-1/telemetry"

    def log_lines(text: str) -> list[str]:
        return [line for line in log_file.read_text().splitlines() if text in line]

    def smoke_points(device_id: str) -> list[dict[str, Any]]:
        query = f"SELECT * FROM smoke_detector WHERE device_id = '{device_id}' ORDER BY time"
        return rows(influxdb, influx_db, query)

    def quarantined() -> list[tuple[Any, ...]]:
        return outbox_rows(outbox, "SELECT topic, reason FROM quarantine")

    def cli_reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "reload", "--config", str(config_file)],
            capture_output=True,
            text=True,
            check=False,
        )

    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config_file)], stderr=log
        )
    publisher = Publisher(mosquitto)
    try:
        # The broker answered the telemetry connection's subscription: from now on it
        # keeps what devices send for it.
        await wait_until(
            lambda: (
                (VENDOR_TOPIC.replace(IMEI, "+"),)
                in outbox_rows(
                    outbox,
                    "SELECT topic FROM subscriptions WHERE client_id = ?",
                    mqtt.client_id,
                )
            ),
            what="telemetry subscribed",
        )
        assert log_lines(f"[telemetry]: {mqtt.client_id} connected to")

        # Before the reload: the detector is in building 3; the IMEI names no device, so
        # its frame is kept aside, never stored under a made-up device.
        publisher.publish_all([(smoke_topic, smoke_reading(1)), (VENDOR_TOPIC, vendor_frame(T0))])
        await wait_until(lambda: len(smoke_points("sd-1")) == 1, what="the first reading")
        await wait_until(lambda: bool(quarantined()), what="the unknown IMEI's frame quarantined")
        assert quarantined() == [(VENDOR_TOPIC, "unregistered_device")]
        assert smoke_points("sd-1")[0]["building"] == "3号楼"

        # One edit: the IMEI registered, the detector moved to building 4.
        registry.write_text(
            HEADER
            + f"sd-1,smoke_detector,{ns},东区,湖光苑,4号楼,\n"
            + f"acme-8,smoke_detector,{ns},西区,湖光新苑,7号楼,{IMEI}\n",
            encoding="utf-8",
        )
        result = cli_reload()
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("2 registered devices, ")
        assert f"gateway {process.pid} told to reload them" in result.stdout
        # It waits for the gateway's answer, which comes once both processes hold the
        # registry: the vendor frames and the telemetry are decoded and placed in the
        # telemetry process, and the next frame counts.
        assert (
            f"gateway {process.pid} took them: 2 registered devices (1 added, 0 removed, "
            "1 changed), " in result.stdout
        )
        assert log_lines(": reloaded the registry: 2 devices (1 added, 0 removed, 1 changed)")
        assert log_lines("[telemetry]: reloaded the registry: 2 devices")

        publisher.publish_all(
            [(smoke_topic, smoke_reading(2)), (VENDOR_TOPIC, vendor_frame(T0 + 10))]
        )
        await wait_until(lambda: len(smoke_points("acme-8")) == 1, what="the new device's frame")
        await wait_until(lambda: len(smoke_points("sd-1")) == 2, what="the moved reading")
        (vendor,) = smoke_points("acme-8")
        assert (vendor["time"], vendor["community"], vendor["building"]) == (T0 + 10, ns, "7号楼")
        assert (vendor["compound"], vendor["area"], vendor["battery_pct"]) == (
            "湖光新苑",
            "西区",
            88,
        )
        before, after = smoke_points("sd-1")
        assert (before["time"], before["building"]) == (T0 + 1, "3号楼")
        assert (after["time"], after["building"]) == (T0 + 2, "4号楼")

        # A broken edit is refused, by the command and by the gateway signalled anyway.
        registry.write_text(
            HEADER
            + f"sd-1,smoke_detector,{ns},东区,湖光苑,4号楼,\n"
            + f"acme-8,toaster,{ns},西区,湖光新苑,7号楼,{IMEI}\n",
            encoding="utf-8",
        )
        refused = cli_reload()
        assert refused.returncode == 2
        assert str(registry) in refused.stderr and "toaster" in refused.stderr
        # Whoever edits the file on the host may send SIGHUP by hand, or a service
        # manager's reload may: the gateway checks the file again itself.
        process.send_signal(signal.SIGHUP)
        refusal = (
            "nothing reloaded, the running rules, registry, API tokens and notification policy stay"
        )
        await wait_until(lambda: bool(log_lines(refusal)), what="the refusal logged")
        (logged,) = log_lines(refusal)
        assert " ERROR " in logged and str(registry) in logged

        # The running registry stays, in both processes: the device whose row broke the
        # file still sends frames that land where it was registered.
        publisher.publish_all([(VENDOR_TOPIC, vendor_frame(T0 + 20))])
        await wait_until(lambda: len(smoke_points("acme-8")) == 2, what="a frame after the refusal")
        assert smoke_points("acme-8")[1]["building"] == "7号楼"
        assert process.poll() is None
        # One reload in each process, the first edit's; the broken file reached neither.
        assert len(log_lines("reloaded the registry:")) == 2
        assert quarantined() == [(VENDOR_TOPIC, "unregistered_device")]

        # The sheet, mended, kept under another name, and the old file deleted: a
        # telemetry process started again (after a crash) reads the file the config
        # names now, the same devices though they are.
        renamed = tmp_path / "devices-2027.csv"
        renamed.write_text(
            HEADER
            + f"sd-1,smoke_detector,{ns},东区,湖光苑,4号楼,\n"
            + f"acme-8,smoke_detector,{ns},西区,湖光新苑,7号楼,{IMEI}\n",
            encoding="utf-8",
        )
        moved = config.model_copy(update={"registry_file": renamed})
        config_file.write_text(yaml.safe_dump(moved.model_dump(mode="json", exclude_none=True)))
        assert cli_reload().returncode == 0
        registry.unlink()
        connected = f"[telemetry]: {mqtt.client_id} connected to"
        await wait_until(lambda: bool(log_lines(connected)), what="telemetry connected")
        telemetry_pid = int(telemetry_pid_path(outbox).read_text().split()[0])
        os.kill(telemetry_pid, signal.SIGKILL)
        await wait_until(lambda: len(log_lines(connected)) == 2, what="telemetry started again")
        publisher.publish_all([(VENDOR_TOPIC, vendor_frame(T0 + 30))])
        await wait_until(lambda: len(smoke_points("acme-8")) == 3, what="a frame after it")
        assert not log_lines("cannot read")
    finally:
        publisher.close()
        process.terminate()
        process.wait(timeout=15)
