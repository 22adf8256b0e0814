from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.cli import main as gateway_main
from gateway.registry import load_registry
from simulators import MessageKind, Scenario
from simulators.cli import add_arguments, main, options_from_args, wants_publishing
from simulators.publisher import SimulationOptions, SimulationReport, run_simulation


class _Counter:
    """A subscriber to everything the simulators send, counting by topic kind."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.kinds: Counter[str] = Counter()
        self.retained = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-test-counter")
        self.client.on_connect = lambda c, *_: c.subscribe([("community/#", 1), ("vendor/#", 1)])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        kind = "vendor" if msg.topic.startswith("vendor/") else msg.topic.rsplit("/", 1)[1]
        with self.lock:
            self.kinds[kind] += 1
            self.retained += int(msg.retain)

    def total(self) -> int:
        with self.lock:
            return sum(self.kinds.values())

    def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.total() < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_run_simulation_publishes_to_a_real_broker(broker_port: int) -> None:
    counter = _Counter(broker_port)
    try:
        options = SimulationOptions(
            port=broker_port,
            devices=40,
            seed=3,
            seconds=5.0,
            max_messages=400,
            rate_msg_s=800.0,
            scenarios=(Scenario.parse("malformed@0.1"), Scenario.parse("sos@0.2")),
            processes=2,
        )
        report = run_simulation(options)
        counter.wait_for(report.total_acknowledged)
    finally:
        counter.close()
    assert report.processes == 2
    assert report.published == report.acknowledged
    assert report.acknowledged[MessageKind.STATUS] == 40
    assert report.acknowledged[MessageKind.MALFORMED] == 9
    assert report.acknowledged[MessageKind.EVENT] == 1
    assert report.total_acknowledged == 40 + 400
    assert counter.total() == report.total_acknowledged
    assert counter.kinds["status"] == 40
    # 400 messages at 800 msg/s: paced, so about half a second.
    assert 0.4 < report.elapsed_s < 4
    assert report.rate_msg_s > 0 and "msg/s" in report.summary()


def _children_of(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def test_publisher_processes_end_with_a_run_stopped_by_sigterm(broker_port: int) -> None:
    # A CI job's timeout or the demo's stop ends the run with SIGTERM: its publishers
    # must not go on flooding the broker for the rest of the run's minutes.
    counter = _Counter(broker_port)
    run = subprocess.Popen(
        [sys.executable, "-m", "simulators", "--port", str(broker_port), "--devices", "20",
         "--processes", "2", "--rate", "200", "--seconds", "600"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        counter.wait_for(100, timeout_s=60)
        assert counter.total() >= 100, "the run never published"
        publishers = _children_of(run.pid)
        assert len(publishers) >= 2
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := {p for p in publishers if Path(f"/proc/{p}").exists()}) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert not left, "publisher processes outlived their run"
    finally:
        if run.poll() is None:
            run.kill()
        counter.close()


def test_report_combines_processes() -> None:
    a = SimulationReport({"telemetry": 10}, {"telemetry": 9}, 2.0)
    b = SimulationReport({"telemetry": 5, "status": 1}, {"telemetry": 5, "status": 1}, 3.0)
    both = SimulationReport.combine([a, b])
    assert both.published == {"telemetry": 15, "status": 1}
    assert both.total_acknowledged == 15 and both.elapsed_s == 3.0 and both.processes == 2
    assert both.rate_msg_s == 5.0


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_flags_make_options() -> None:
    ns = _parse(
        "--host", "broker", "--port", "2883", "--devices", "500", "--communities", "4",
        "--rate", "1000", "--seconds", "30", "--seed", "9", "--scenario", "fire@30",
        "--scenario", "malformed@5", "--processes", "2", "--period-scale", "0.1",
    )  # fmt: skip
    options = options_from_args(ns)
    assert (options.host, options.port, options.devices, options.communities) == (
        "broker", 2883, 500, 4,
    )  # fmt: skip
    assert options.rate_msg_s == 1000 and not options.realistic
    assert options.seconds == 30 and options.seed == 9 and options.processes == 2
    assert [str(s) for s in options.scenarios] == ["fire@30", "malformed@5"]
    assert options.period_scale == 0.1
    realistic = options_from_args(_parse())
    assert realistic.realistic and realistic.seconds == 60 and realistic.port == 1883
    assert options_from_args(_parse("--rate", "max")).rate_msg_s is None


def test_write_registry_alone_writes_and_exits(tmp_path: Path) -> None:
    path = tmp_path / "registry.csv"
    ns = _parse("--write-registry", str(path), "--devices", "12")
    assert not wants_publishing(ns)
    # Port 1 would refuse a connection: returning 0 shows nothing was published.
    assert main(["--write-registry", str(path), "--devices", "12"]) == 0
    assert path.read_text(encoding="utf-8").count("\n") == 13
    assert wants_publishing(_parse("--write-registry", str(path), "--seconds", "5"))
    # Any flag that only matters when publishing, whatever its value: `--rate max` is
    # None, and the defaults of `--processes` and `--period-scale` are numbers.
    for flags in (("--rate", "max"), ("--processes", "1"), ("--period-scale", "1")):
        assert wants_publishing(_parse("--write-registry", str(path), *flags)), flags
    # Every number it writes is one the gateway dials: a mainland mobile.
    phones = [
        phone
        for device in load_registry(path).devices()
        for phone in (device.wearer_phone, *(c.phone for c in device.emergency_contacts))
        if phone
    ]
    assert phones and all(re.fullmatch(r"\+861\d{10}", phone) for phone in phones), phones


def test_write_registry_into_a_missing_folder_says_so_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `dashboards --out` does: the path and the reason, and a non-zero exit."""
    path = tmp_path / "missing" / "registry.csv"
    for run in (main, lambda argv: gateway_main(["simulate", *argv])):
        assert run(["--write-registry", str(path), "--devices", "5"]) == 1
        assert f"{path}: No such file or directory" in capsys.readouterr().err


def test_cli_publishes(
    broker_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "registry.csv"
    argv = ["--port", str(broker_port), "--devices", "10", "--rate", "max", "--messages", "50",
            "--write-registry", str(path)]  # fmt: skip
    assert main(argv) == 0
    assert path.exists()
    assert "total 60/60" in capsys.readouterr().out  # 10 status + 50 messages


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--devices", "0"], "argument --devices: 0 is not at least 1"),
        (["--communities", "x"], "argument --communities: 'x' is not a whole number"),
        (["--community", "Bad Name"], "argument --community: 'Bad Name' is not a community name"),
        (["--processes", "0"], "argument --processes: 0 is not at least 1"),
        (["--period-scale", "0"], "argument --period-scale: 0 is not a number above 0"),
        (["--seconds", "-1"], "argument --seconds: -1 is not a number above 0"),
        (["--rate", "nan"], "argument --rate: nan is not a number above 0"),
        (["--rate", "fast"], "argument --rate: 'fast' is not a number: give msg/s, or 'max'"),
        (["--messages", "0"], "argument --messages: 0 is not at least 1"),
        (["--scenario", "fire@1:nobody", "--port", "1"], "no device 'nobody' in the fleet"),
    ],
)
def test_bad_flags_are_refused_with_what_is_wrong_not_a_traceback(
    flags: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ["--write-registry", str(tmp_path / "registry.csv")]
    for run in (main, lambda argv: gateway_main(["simulate", *argv])):
        with pytest.raises(SystemExit) as exited:
            run([*registry, *flags])
        assert exited.value.code == 2
        assert says in capsys.readouterr().err
