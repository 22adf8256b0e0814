import asyncio
import logging
from pathlib import Path

import pytest

from gateway.app import Gateway, notification_log_path
from gateway.app import _told as told
from gateway.clock import ManualClock, SystemClock
from gateway.config import GatewayConfig
from gateway.errors import DamagedStoreError, StoreError
from gateway.ingest.process import TelemetryProcess
from gateway.notify.log import NotificationLog
from gateway.stats import Stats
from gateway.store.database import damage_noted, damaged_files, move_aside
from gateway.store.outbox import Outbox
from tests.integration.services import free_port
from tests.unit.disk import damage

T0 = 1_767_225_600_000


def outbox_with_lines(path: Path) -> None:
    outbox = Outbox(path)
    for batch in range(5):
        outbox.commit([f"m,batch={batch} v={i}i {i}" for i in range(2000)], [])
    outbox.close()


@pytest.mark.parametrize("where", ["header", "schema", "tables"])
def test_a_damaged_outbox_is_moved_aside_and_a_new_one_made(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox_with_lines(path)
    damaged = damage(path, where)
    with caplog.at_level(logging.ERROR):
        outbox = Outbox(path, recover_damaged=True)
    try:
        assert outbox.depth() == 0
        outbox.commit(["m v=1i 1"], [])
        assert outbox.depth() == 1
    finally:
        outbox.close()
    aside = tmp_path / "o.sqlite3.damaged"
    assert aside.read_bytes() == damaged
    message = caplog.records[-1].getMessage()
    assert str(path) in message and str(aside) in message and "damaged" in message


def test_without_recovery_a_damaged_outbox_is_an_error_naming_it_and_noted_beside_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox_with_lines(path)
    damaged = damage(path, "header")
    with pytest.raises(
        DamagedStoreError, match=r"cannot open the outbox: file is not a database: .*o\.sqlite3"
    ):
        Outbox(path)
    assert path.read_bytes() == damaged
    assert not list(tmp_path.glob("*.damaged*"))
    assert "file is not a database" in (damage_noted(path) or "")


def test_damage_found_while_running_stops_commits_and_reads_and_the_next_start_moves_it_aside(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox_with_lines(path)
    # Not checked whole, as the telemetry process opens it: the damage shows in use.
    outbox = Outbox(path)
    damaged = damage(path, "tables")
    try:
        with pytest.raises(DamagedStoreError, match="outbox commit failed: database disk image"):
            outbox.commit(["m v=1i 1"], [])
        with pytest.raises(DamagedStoreError, match="reading the outbox failed"):
            outbox.peek(10)
        # Read on connections of their own, beside the commits, while the gateway runs.
        with pytest.raises(DamagedStoreError, match="reading the registry's series failed"):
            outbox.registry_series()
        with pytest.raises(DamagedStoreError, match="reading the subscriptions failed"):
            outbox.subscriptions("gw")
    finally:
        outbox.close()
    assert "database disk image is malformed" in (damage_noted(path) or "")
    Outbox(path, recover_damaged=True).close()
    assert (tmp_path / "o.sqlite3.damaged").read_bytes() == damaged
    assert damage_noted(path) is None
    outbox = Outbox(path, recover_damaged=True)
    try:
        assert outbox.depth() == 0 and not (tmp_path / "o.sqlite3.damaged-1").exists()
    finally:
        outbox.close()


def test_an_outbox_that_cannot_be_opened_for_another_reason_is_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    path.mkdir()
    with pytest.raises(StoreError, match="cannot open the outbox"):
        Outbox(path, recover_damaged=True)
    assert path.is_dir() and not list(tmp_path.glob("*.damaged*"))


def test_moving_aside_takes_the_first_free_name_and_the_files_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    (tmp_path / "o.sqlite3.damaged").write_bytes(b"older")
    (tmp_path / "o.sqlite3.damaged-1-wal").write_bytes(b"older log")
    for suffix, data in (("", b"db"), ("-wal", b"log"), ("-shm", b"shm")):
        (tmp_path / f"o.sqlite3{suffix}").write_bytes(data)
    aside = move_aside(path)
    assert aside == tmp_path / "o.sqlite3.damaged-2"
    assert (tmp_path / "o.sqlite3.damaged-2").read_bytes() == b"db"
    assert (tmp_path / "o.sqlite3.damaged-2-wal").read_bytes() == b"log"
    assert (tmp_path / "o.sqlite3.damaged-2-shm").read_bytes() == b"shm"
    assert (tmp_path / "o.sqlite3.damaged").read_bytes() == b"older"
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith("o.sqlite3") and "damaged" not in p.name
    ]
    # Each file moved aside counts once (.damaged, .damaged-2), its companions not (nor
    # the log left of -1), nor other names.
    (tmp_path / "o.sqlite3.damaged-x").write_bytes(b"")
    (tmp_path / "n.sqlite3.damaged").write_bytes(b"")
    assert damaged_files(path, tmp_path / "n.sqlite3") == 3


async def run_briefly(gateway: Gateway) -> None:
    running = asyncio.create_task(gateway.run())
    await asyncio.sleep(0.05)
    gateway.stop()
    await asyncio.wait_for(running, timeout=10)


async def test_a_gateway_starts_on_a_damaged_outbox_and_notification_log(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    config = GatewayConfig.model_validate({"mqtt": None, "outbox": {"path": path}})
    await run_briefly(Gateway(config, ManualClock(T0)))
    outbox_with_lines(path)
    log_path = notification_log_path(path)
    # Damage in the tables only shows where they are read: SQLite's check finds it.
    damage(path, "tables")
    damage(log_path, "header")
    gateway = Gateway(config, ManualClock(T0))
    assert gateway.outbox.depth() == 0 and gateway.alerts.open_alerts() == []
    assert gateway.damaged_files() == 2
    await run_briefly(gateway)
    assert (tmp_path / "o.sqlite3.damaged").exists()
    assert log_path.with_name(log_path.name + ".damaged").exists()


async def test_damage_found_while_running_stops_the_gateway_and_the_next_start_mends_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    config = GatewayConfig.model_validate({"mqtt": None, "outbox": {"path": path}})
    outbox_with_lines(path)
    clock = ManualClock(T0)
    gateway = Gateway(config, clock)
    damage(path, "tables")
    running = asyncio.create_task(gateway.run())
    await asyncio.sleep(0.05)
    # The outbox's depth is looked at every second.
    clock.advance(1.0)
    with pytest.raises(DamagedStoreError, match="database disk image is malformed"):
        await asyncio.wait_for(running, timeout=5)
    gateway = Gateway(config, ManualClock(T0))
    assert gateway.outbox.depth() == 0
    await run_briefly(gateway)
    assert (tmp_path / "o.sqlite3.damaged").exists() and damage_noted(path) is None


async def test_damage_the_telemetry_process_finds_ends_its_restarts(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    # No broker listens there: the process's first work is its outbox.
    mqtt = {"host": "127.0.0.1", "port": free_port()}
    config = GatewayConfig.model_validate({"mqtt": mqtt, "outbox": {"path": path}})
    outbox_with_lines(path)
    damage(path, "tables")
    telemetry = TelemetryProcess(config, SystemClock(), Stats())
    with pytest.raises(DamagedStoreError, match=r"telemetry process ended: .*malformed"):
        await asyncio.wait_for(telemetry.run(asyncio.Event()), timeout=30)
    assert telemetry.started == 1


def test_a_stage_failing_with_a_group_of_errors_is_told_by_the_gateway_error_in_it() -> None:
    damaged = DamagedStoreError("outbox commit failed: database disk image is malformed")
    group = ExceptionGroup("lanes", [ExceptionGroup("inner", [damaged]), ValueError("x")])
    assert told(group) is damaged
    other = ExceptionGroup("lanes", [ValueError("x")])
    assert told(other) is other


def test_a_damaged_notification_log_is_moved_aside_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "n.sqlite3"
    NotificationLog(path).close()
    damage(path, "header")
    with pytest.raises(StoreError, match="cannot open the notification log"):
        NotificationLog(path)
    NotificationLog(path, recover_damaged=True).close()
    assert (tmp_path / "n.sqlite3.damaged").exists()
