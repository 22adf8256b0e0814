"""Real Mosquitto / InfluxDB / VictoriaMetrics processes for integration tests.

Each service runs in its own working directory on free 127.0.0.1 ports and keeps
its port and data across ``restart()``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
HOST = "127.0.0.1"


class MissingBinaryError(RuntimeError):
    """The server binary is not installed."""


class ServiceStartError(RuntimeError):
    """The server process exited or did not become ready in time."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary(name: str, package: str) -> str:
    """Locate ``name`` on PATH or in the usual Debian directories."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    raise MissingBinaryError(
        f"'{name}' not found: install the Debian package '{package}' (apt-get install {package})"
    )


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _listens_on(pid: int, port: int) -> bool:
    """True if process ``pid`` holds the listening TCP socket on 127.0.0.1:``port``.

    Guards against a free_port() race: another server on the same port would
    otherwise pass the readiness check while ours fails to bind.
    """
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":  # 0A = LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


class _ServerProcess:
    """One server process; subclasses provide the command line and the readiness check."""

    binary_name = ""
    package = ""

    def __init__(self, workdir: Path, environment: Mapping[str, str] | None = None) -> None:
        """`environment`: variables set for the server beyond this process's own."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.environment = dict(environment or {})
        self.log_path = workdir / f"{self.binary_name}.log"
        self.host = HOST
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to override -------------------------------------------------------------------
    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def peak_memory_mib(self) -> float:
        """The most memory the running server has held so far (its peak resident set)."""
        if self._proc is None:
            raise RuntimeError(f"{self.binary_name} is not running")
        for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no peak memory in /proc/{self._proc.pid}/status")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.binary_name} is already running")
        binary = find_binary(self.binary_name, self.package)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(binary),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.environment},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise ServiceStartError(
                    f"{self.binary_name} exited with code {code} during start-up\n{self.log_tail()}"
                )
            if _listens_on(self._proc.pid, self.port) and self._ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceStartError(
                    f"{self.binary_name} not ready after {START_TIMEOUT:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if the process is still alive after 10 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def kill(self) -> None:
        """SIGKILL, no chance to flush or save anything."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class MosquittoService(_ServerProcess):
    binary_name = "mosquitto"
    package = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(self.config_text())

    def config_text(self) -> str:
        return "\n".join(
            [
                # When started as root, do not switch to the 'mosquitto' user, which
                # could not write to this directory.
                "user root",
                f"listener {self.port} {HOST}",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {self.data_dir}",
                "persistence_file mosquitto.db",
                # 0 = no limit: the client under test holds QoS 1 acks until it commits.
                "max_queued_messages 0",
                "max_inflight_messages 0",
                # max_packet_size is unlimited by default (0 is rejected by the parser).
                f"log_dest file {self.log_path}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "connection_messages true",
                "log_timestamp_format %Y-%m-%dT%H:%M:%S",
                "",
            ]
        )

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", str(self.config_path)]

    def _ready(self) -> bool:
        return _port_open(self.port)


class InfluxService(_ServerProcess):
    binary_name = "influxd"
    package = "influxdb"

    def __init__(
        self,
        workdir: Path,
        data_settings: Mapping[str, str] | None = None,
        environment: Mapping[str, str] | None = None,
        *,
        auth: bool = False,
    ) -> None:
        """`data_settings`: more settings of the [data] section, as TOML values. `auth`:
        users and their grants are checked, as a deployment has them."""
        super().__init__(workdir, environment)
        self.data_settings = dict(data_settings or {})
        self.auth = auth
        self.rpc_port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.config_path = workdir / "influxdb.conf"
        self.config_path.write_text(self.config_text())

    def config_text(self) -> str:
        d = self.workdir
        more_data = "".join(f"  {key} = {value}\n" for key, value in self.data_settings.items())
        return f"""\
reporting-enabled = false
bind-address = "{HOST}:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false
{more_data}
[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{HOST}:{self.port}"
  auth-enabled = {"true" if self.auth else "false"}
  log-enabled = false
  pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[continuous_queries]
  log-enabled = false

[subscriber]
  enabled = false
"""

    def _command(self, binary: str) -> list[str]:
        return [binary, "-config", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 204
        except httpx.HTTPError:
            return False

    def create_database(self, name: str) -> None:
        self._post_query(f'CREATE DATABASE "{name}"')

    def _post_query(self, q: str) -> None:
        response = httpx.post(f"{self.url}/query", params={"q": q}, timeout=10.0)
        _influx_results(response)

    def query(self, db: str, q: str) -> list[dict[str, Any]]:
        """Run ``q``; rows (column -> value, plus series tags) of the first statement."""
        response = httpx.get(
            f"{self.url}/query", params={"db": db, "q": q, "epoch": "ms"}, timeout=10.0
        )
        results = _influx_results(response)
        rows: list[dict[str, Any]] = []
        for series in results[0].get("series", []) if results else []:
            tags = series.get("tags") or {}
            for values in series.get("values", []):
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows


def _influx_results(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or "error" in body:
        raise RuntimeError(f"InfluxDB error {response.status_code}: {response.text}")
    results: list[dict[str, Any]] = body.get("results", [])
    for result in results:
        if "error" in result:
            raise RuntimeError(f"InfluxDB error: {result['error']}")
    return results


class VictoriaMetricsService(_ServerProcess):
    binary_name = "victoria-metrics"
    package = "victoria-metrics"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.url = f"http://{HOST}:{self.port}"
        self.data_dir = workdir / "data"

    def flags(self) -> list[str]:
        return [
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr={HOST}:{self.port}",
            # Make samples visible to queries as soon as they are flushed.
            "-search.latencyOffset=0s",
            "-search.disableCache",
            # Accept test samples with old timestamps.
            "-retentionPeriod=100y",
            "-loggerLevel=WARN",
        ]

    def _command(self, binary: str) -> list[str]:
        return [binary, *self.flags()]

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def force_flush(self) -> None:
        httpx.get(f"{self.url}/internal/force_flush", timeout=10.0).raise_for_status()

    def export(
        self, match: str, *, min_samples: int = 1, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Series matching ``match`` as parsed export lines (metric, values, timestamps).

        Samples become visible up to about 1 s after the write was acknowledged, even
        after ``/internal/force_flush``, so this polls until at least ``min_samples``
        samples are returned or ``timeout`` passes (then returns what it has).
        ``min_samples=0`` reads once.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.force_flush()
            response = httpx.get(
                f"{self.url}/api/v1/export", params={"match[]": match}, timeout=10.0
            )
            response.raise_for_status()
            series = [json.loads(line) for line in response.text.splitlines() if line.strip()]
            samples = sum(len(line["values"]) for line in series)
            if samples >= min_samples or time.monotonic() > deadline:
                return series
            time.sleep(0.05)
