"""One gateway, and one telemetry process, on an outbox at a time: the pid files' locks,
held by real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway import app
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.errors import StoreError
from gateway.store.lock import PidLock, holder_pid, pid_path, telemetry_pid_path, wait_until_free

# Takes the lock named on its command line, says so, and holds it until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from gateway.store.lock import PidLock
lock = PidLock.take(Path(sys.argv[1]), "a holder")
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


class Holder:
    """Another process holding a lock."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "held\n"

    @property
    def pid(self) -> int:
        return self.process.pid

    def let_go(self) -> None:
        self.process.communicate(timeout=10)
        assert self.process.returncode == 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=10)


@pytest.fixture
def hold() -> Iterator[Callable[[Path], Holder]]:
    """Starts a process holding the lock on a path; ended after the test."""
    started: list[Holder] = []

    def start(path: Path) -> Holder:
        started.append(Holder(path))
        return started[-1]

    yield start
    for holder in started:
        if holder.process.poll() is None:
            holder.kill()


def test_a_lock_another_process_holds_is_refused_naming_the_file_and_its_pid(
    tmp_path: Path, hold: Callable[[Path], Holder]
) -> None:
    path = tmp_path / "o.pid"
    holder = hold(path)
    assert holder_pid(path) == holder.pid
    with pytest.raises(StoreError, match=rf"o\.pid: another gateway \(pid {holder.pid}\) runs"):
        PidLock.take(path, "another gateway")
    holder.let_go()
    assert not path.exists() and holder_pid(path) is None
    lock = PidLock.take(path, "another gateway")
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()
    assert not path.exists()


def test_a_pid_file_left_by_a_killed_holder_holds_nothing(
    tmp_path: Path, hold: Callable[[Path], Holder]
) -> None:
    path = tmp_path / "o.pid"
    holder = hold(path)
    holder.kill()
    # The file stays, naming a process that is gone (or, later, any other process).
    assert path.read_text() == f"{holder.pid}\n"
    assert holder_pid(path) is None
    lock = PidLock.take(path, "another gateway")
    assert holder_pid(path) == os.getpid()
    lock.release()


def test_a_held_pid_file_that_names_no_single_process_gives_no_pid(tmp_path: Path) -> None:
    path = tmp_path / "o.pid"
    lock = PidLock.take(path, "another gateway")
    # Signalled, 0 would reach the whole process group and -1 every process there is.
    for text in ("-1\n", "0\n", "", "gateway\n"):
        path.write_text(text)
        assert holder_pid(path) is None
    with pytest.raises(StoreError, match=r"another gateway \(pid unknown\) runs"):
        PidLock.take(path, "another gateway")
    lock.release()


def test_the_same_process_cannot_take_a_lock_twice(tmp_path: Path) -> None:
    path = tmp_path / "o.pid"
    lock = PidLock.take(path, "another gateway")
    with pytest.raises(StoreError, match=rf"pid {os.getpid()}"):
        PidLock.take(path, "another gateway")
    lock.release()
    lock.release()
    PidLock.take(path, "another gateway").release()


def test_waiting_for_a_lock_ends_at_once_when_none_holds_it_and_names_the_holder_after_the_timeout(
    tmp_path: Path, hold: Callable[[Path], Holder]
) -> None:
    path = tmp_path / "o.telemetry.pid"
    wait_until_free(path, 0, "a telemetry process")
    holder = hold(path)
    with pytest.raises(StoreError, match=rf"a telemetry process \(pid {holder.pid}\) still runs"):
        wait_until_free(path, 0, "a telemetry process")
    holder.let_go()
    wait_until_free(path, 0, "a telemetry process")


def offline(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {"mqtt": None, "outbox": {"path": tmp_path / "var" / "outbox.sqlite3"}}
    )


async def test_a_second_gateway_on_the_same_outbox_is_refused_until_the_first_stops(
    tmp_path: Path,
) -> None:
    config = offline(tmp_path)
    first = Gateway(config)
    assert holder_pid(pid_path(config.outbox.path)) == os.getpid()
    with pytest.raises(StoreError, match=r"outbox\.pid: another gateway \(pid \d+\) runs"):
        Gateway(config)
    first.stop()
    await first.run()
    assert holder_pid(pid_path(config.outbox.path)) is None
    # One that never runs lets go of it when closed.
    Gateway(config).close()
    assert holder_pid(pid_path(config.outbox.path)) is None
    second = Gateway(config)
    second.stop()
    await second.run()


async def test_a_gateway_waits_for_the_telemetry_process_of_one_that_ended(
    tmp_path: Path, hold: Callable[[Path], Holder], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = offline(tmp_path)
    config.outbox.path.parent.mkdir()
    orphan = hold(telemetry_pid_path(config.outbox.path))
    monkeypatch.setattr(app, "STOP_TIMEOUT_S", 0)
    with pytest.raises(StoreError, match=rf"ended \(pid {orphan.pid}\) still runs"):
        Gateway(config)
    # Refused before it opened anything, and without keeping its own lock.
    assert not config.outbox.path.exists()
    assert holder_pid(pid_path(config.outbox.path)) is None
    orphan.let_go()
    gateway = Gateway(config)
    gateway.stop()
    await gateway.run()
