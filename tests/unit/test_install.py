"""What a community centre's installer runs: the install guide's steps in order, the
systemd unit's stop, and the environment the configs take their secrets from."""

from __future__ import annotations

import configparser
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import PROJECT_ROOT
from gateway.cli import main

DEPLOY = PROJECT_ROOT / "deploy"
GUIDE = DEPLOY / "INSTALL.md"


def unit_service() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "community-gateway.service")
    return unit["Service"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


# --- secrets from the env file ---------------------------------------------------------


@pytest.mark.usefixtures("example_secrets")
@pytest.mark.parametrize(
    ("variable", "field"),
    [
        # The grid workers' WeCom robot (notify.example.yaml's channels.grid-wecom.key).
        ("WECOM_GRID_ROBOT_KEY", "key"),
        # The gateway's broker login (gateway.example.yaml's mqtt.password).
        ("GATEWAY_MQTT_PASSWORD", "mqtt.password"),
    ],
)
def test_a_secret_left_empty_in_the_env_file_is_refused_by_check(
    variable: str,
    field: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A line of /etc/community-gateway/env left `KEY=`: an empty secret is refused by
    # `check`, as an unset one is, not found by the first fire alarm's notification.
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "http://192.168.1.10:8080")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "admin-0123456789abcdef")
    monkeypatch.setenv("GATEWAY_DESK_TOKEN", "desk-0123456789abcdef")
    monkeypatch.setenv(variable, "")
    code = main(["check", "--config", str(DEPLOY / "gateway.example.yaml")])
    err = capsys.readouterr().err
    assert code != 0, f"check passed with {variable} set to an empty value"
    assert variable in err or field in err, err


# --- stopping under systemd -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _telemetry_child(pid: int, deadline_s: float) -> int:
    while time.monotonic() < deadline_s:
        for child in _children(pid):
            try:
                cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                return child
        time.sleep(0.1)
    raise AssertionError("no telemetry process was started")


def _signal_mask(pid: int, name: str) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_stop_by_systemd_does_not_kill_the_telemetry_process_mid_batch(
    tmp_path: Path,
) -> None:
    # `systemctl stop` (every upgrade) may signal every process of the service: the
    # telemetry process is left to the gateway to stop, after its batch in hand.
    if unit_service().get("KillMode") == "mixed":
        return  # systemd then sends SIGTERM to the main process alone
    config = tmp_path / "gateway.yaml"
    # A broker port nobody listens on: the gateway keeps trying, the process runs.
    config.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {_free_port()}}}\n"
        f"outbox: {{path: {tmp_path / 'var' / 'outbox.sqlite3'}}}\n"
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        child = _telemetry_child(gateway.pid, time.monotonic() + 30)
        # Let it set up its signal handling before it is read.
        time.sleep(2)
        handled = _signal_mask(child, "SigIgn") | _signal_mask(child, "SigCgt")
        term = 1 << (signal.SIGTERM - 1)
        assert handled & term, (
            "the telemetry process takes SIGTERM's default (dies at once), and the unit "
            "lets systemd send it SIGTERM with the main process (no KillMode=mixed)"
        )
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()


# --- upgrading under Compose ----------------------------------------------------------


def test_the_compose_upgrade_makes_mosquitto_read_the_release_s_acl() -> None:
    # The ACL is mounted as a file, which a running container keeps reading as it was
    # after `git pull` replaced it: the upgrade restarts Mosquitto rather than HUPs it.
    mounts = {}
    for volume in compose()["services"]["mosquitto"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    acl_source = mounts.get("/etc/mosquitto/acl")
    if acl_source is None or not (DEPLOY / acl_source).is_file():
        return  # mounted with its folder: a HUP reads the file now there
    guide = GUIDE.read_text()
    upgrade = guide[guide.index("## 5. Upgrade") :]
    start = upgrade.index("With Docker Compose: `git pull`")
    paragraph = upgrade[start : upgrade.index("\n\n", start)]
    recreated = re.search(
        r"docker\s+compose\s+(restart|stop|down|up\s+-d\s+--force-recreate)\b[^`]*\bmosquitto",
        paragraph,
    )
    assert recreated, (
        "the Compose upgrade only signals Mosquitto, whose single-file ACL mount still "
        f"holds the old file: {paragraph!r}"
    )


# --- the guide's steps in order -------------------------------------------------------


def test_the_broker_login_step_runs_where_step_1_leaves_the_shell() -> None:
    # The guide's steps pasted in order: step 2's paths start at the repository's root,
    # where step 1 leaves the shell.
    guide = GUIDE.read_text()
    step1 = section(guide, "## 1. Certificates", "## 2. Broker logins")
    step2 = section(guide, "## 2. Broker logins", "## 3. Alert links")
    if "cd deploy/mosquitto/certs" not in step1:
        return
    goes_back = re.search(
        r"\(\s*(mkdir[^\n]*&&\s*)?cd deploy/mosquitto/certs|^\s+cd\s+(-|\.\./\.\./\.\.|\$OLDPWD)\s*$",
        step1,
        re.M,
    )
    from_the_root = re.findall(r"\sdeploy/mosquitto/passwd\b", step2)
    assert goes_back or not from_the_root, (
        "step 1 leaves the shell in deploy/mosquitto/certs; step 2's "
        f"{len(from_the_root)} paths are from the repository's root"
    )
