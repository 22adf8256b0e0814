"""The `run` command: its signals, in a process of its own, and what stops it starting."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import PROJECT_ROOT
from gateway.cli import main

# The gateway sends itself SIGHUP once it has taken its pid file, as `reload` may
# whenever it finds the file held: while the gateway is still being made.
HUPPED_AT_START = """
import os, signal, sys
import gateway.app

class Hupped(gateway.app.Gateway):
    def __init__(self, config):
        super().__init__(config)
        os.kill(os.getpid(), signal.SIGHUP)

gateway.app.Gateway = Hupped
from gateway.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def test_a_reload_while_the_gateway_starts_is_carried_out_once_it_runs(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"outbox: {{path: {tmp_path / 'outbox.sqlite3'}}}\nmqtt: null\n")
    log = tmp_path / "gateway.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", HUPPED_AT_START, str(config)], cwd=PROJECT_ROOT, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 20
        while "reloaded" not in log.read_text() and process.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert process.poll() is None, f"ended with {process.returncode}: {log.read_text()}"
        assert "reloaded" in log.read_text() and "alert rules" in log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_an_outbox_folder_that_cannot_be_made_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`outbox.path` under a file (a typo), or where the gateway may not make a folder:
    `run` says which folder and why, and exits 1, as for a pid file it cannot open;
    `check` names the file in the way."""
    blocker = tmp_path / "state"
    blocker.write_text("not a folder")
    config = tmp_path / "gateway.yaml"
    config.write_text(f"mqtt: null\noutbox:\n  path: {blocker}/outbox.sqlite3\n")
    assert main(["run", "--config", str(config)]) == 1
    assert f"error: {blocker}" in capsys.readouterr().err
    assert main(["check", "--config", str(config)]) == 2
    assert f"outbox.path: {blocker} is not a folder" in capsys.readouterr().err


def test_reload_refuses_a_registry_sheet_saved_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A filter left on, the wrong tab exported: said at once, with the file, rather than
    # "0 registered devices ... told to reload them" and a refusal in the gateway's log.
    registry = tmp_path / "devices.csv"
    registry.write_text("device_id,device_type,community\n", encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"mqtt: null\noutbox: {{path: {tmp_path / 'outbox.sqlite3'}}}\nregistry_file: {registry}\n"
    )
    assert main(["reload", "--config", str(config)]) == 2
    assert f"{registry}: names no device" in capsys.readouterr().err


def test_reload_does_not_call_a_running_gateway_it_may_not_signal_absent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run as a user who may not signal the gateway, reload says so: not that no gateway
    # runs, which would send an administrator to start a second one.
    outbox = tmp_path / "outbox.sqlite3"
    config = tmp_path / "gateway.yaml"
    config.write_text(f"mqtt: null\noutbox: {{path: {outbox}}}\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_PID_FILE, str(outbox.with_suffix(".pid"))],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"

        def not_permitted(pid: int, signum: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "kill", not_permitted)
        assert main(["reload", "--config", str(config)]) == 1
    finally:
        monkeypatch.undo()
        holder.kill()
        holder.communicate()
    err = capsys.readouterr().err
    assert str(holder.pid) in err
    assert "no running gateway" not in err, err


HOLD_THE_PID_FILE = """
import sys
from pathlib import Path
from gateway.store.lock import PidLock
PidLock.take(Path(sys.argv[1]), "another gateway")
print("held", flush=True)
sys.stdin.read()
"""
