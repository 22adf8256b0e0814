"""`make demo`, the first thing a new user runs: the whole system on embedded defaults.

The demo is run as users run it, a `community-gateway demo` process, and looked at as
they would look at it: what it prints, the pages and API it points to while it runs,
the link a grid worker's notification carries, and the files it leaves.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# The demo's bad-input scenario sends one message of each kind of bad input that the
# simulators make (simulators.malformed), each counted under the gateway's reason.
BAD_INPUT_REASONS = {
    "bad_crc",
    "bad_frame_header",
    "bad_frame_length",
    "not_json",
    "out_of_range",
    "too_large",
    "unknown_device_type",
    "unregistered_device",
    "wrong_type",
}
# The demo's fire begins 6 s after its start; a loaded machine is given far longer.
WAIT_S = 90.0


class Demo:
    """A `community-gateway demo` process, its output read line by line as it comes."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        # The demo keeps its files in a new temporary folder: under the test's here.
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            # As in a terminal: Ctrl-C reaches the demo's process group.
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float = WAIT_S) -> re.Match[str]:
        """The first line from now on that matches; fails with the output so far."""
        deadline = time.monotonic() + timeout_s
        while (left_s := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left_s)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        pytest.fail(f"the demo never printed {pattern!r}; it printed:\n" + "\n".join(self.lines))

    def finish(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[type[Demo]]:
    demos: list[Demo] = []

    class _Demo(Demo):
        def __init__(self, *args: str) -> None:
            super().__init__(tmp_path, *args)
            demos.append(self)

    yield _Demo
    for demo in demos:
        demo.stop()


def _summary(line: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r"\b([a-z_]+)=(\d+)\b", line)}


def _processes_naming(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if text in args:
            found.append(" ".join(args))
    return found


def test_the_demo_shows_the_whole_system_and_stops_cleanly_on_ctrl_c(
    start_demo: type[Demo],
) -> None:
    demo = start_demo()
    first = demo.wait_for(r"^demo: broker on 127\.0\.0\.1:(\d+), .*, files in (\S+)$")
    broker_port, workdir = first.group(1), Path(first.group(2))
    board = demo.wait_for(r"alert board: (http://\S+)/board#token=(\S+)$")
    base_url, token = board.group(1), board.group(2)
    demo.wait_for(r"API \(operator token \S+\): http://\S+/docs$")
    assert "nobody hears" not in "\n".join(demo.lines)

    # A fire is part of the demo: its grid worker is told, with a link to take it.
    told = demo.wait_for(r"notify grid-worker: 【紧急告警】火警.*处理: (http://\S+/a/\S+)$")
    link = told.group(1)
    demo.wait_for(r"alerts=[1-9]")
    with httpx.Client(base_url=base_url, timeout=10) as client:
        listed = client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200, listed.text
        fires = [a for a in listed.json()["alerts"] if a["rule"] == "fire_alarm"]
        assert fires and fires[0]["state"] == "firing"
        assert fires[0]["device_type"] == "smoke_detector"
        page = client.get(link.removeprefix(base_url))
        assert page.status_code == 200
        assert fires[0]["device_id"] in page.text
        assert client.get("/board").status_code == 200
        assert client.get("/docs").status_code == 200
        assert client.get("/api/v1/alerts").status_code == 401

    # Every kind of bad input is counted by its reason, and the demo goes on.
    running = demo.wait_for(r"rejected=9 \(")
    assert set(re.findall(r"([a-z_]+)=1\b", running.string.split("rejected=9")[1])) == (
        BAD_INPUT_REASONS
    )
    demo.wait_for(r"^\[\s*\d+ s\] in=")

    os.killpg(demo.process.pid, signal.SIGINT)
    assert demo.finish(timeout_s=30) == 0, "\n".join(demo.lines)
    done = next(line for line in demo.lines if line.startswith("demo: done."))
    counts = _summary(done)
    assert counts["in"] > 0 and counts["notified"] >= 1
    # The simulators it started stop with it.
    assert _processes_naming(broker_port) == []

    # No InfluxDB: everything stored waits in the outbox it names, and every bad
    # message is in the quarantine with its reason.
    outbox = workdir / "outbox.sqlite3"
    assert f"demo: outbox and quarantine in {outbox}" in demo.lines
    with sqlite3.connect(outbox) as db:
        (waiting,) = db.execute("SELECT COALESCE(SUM(line_count), 0) FROM chunks").fetchone()
        reasons = [row[0] for row in db.execute("SELECT reason FROM quarantine")]
    assert counts["written"] == 0
    assert waiting == counts["stored"] > 0
    assert sorted(reasons) == sorted(BAD_INPUT_REASONS)


def test_the_demo_stops_by_itself_after_the_seconds_asked(start_demo: type[Demo]) -> None:
    demo = start_demo("--seconds", "2")
    assert demo.finish(timeout_s=WAIT_S) == 0, "\n".join(demo.lines)
    ticks = [line for line in demo.lines if re.match(r"^\[\s*\d+ s\] in=", line)]
    assert 1 <= len(ticks) <= 3, demo.lines
    done = next(line for line in demo.lines if line.startswith("demo: done."))
    assert _summary(done)["in"] > 0


def test_a_small_demo_fleet_plays_what_it_can_and_counts_its_messages(
    start_demo: type[Demo],
) -> None:
    # Five devices have no charging shed to heat: that scenario is left out, saying why,
    # and the devices still report, where the whole simulator used to refuse to start.
    demo = start_demo("--devices", "5", "--seconds", "8")
    assert demo.finish(timeout_s=WAIT_S) == 0, "\n".join(demo.lines)
    assert any(
        "left out" in line and "thermal_runaway" in line and "charging_shed" in line
        for line in demo.lines
    ), demo.lines
    done = next(line for line in demo.lines if line.startswith("demo: done."))
    assert _summary(done)["in"] > 0, demo.lines
