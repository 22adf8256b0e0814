import asyncio
import logging
from pathlib import Path

import pytest

from gateway.app import Gateway, notification_log_path
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.errors import StoreError
from gateway.notify.log import NotificationLog
from gateway.store.database import move_aside
from gateway.store.outbox import Outbox

PAGE_BYTES = 4096


def damage(path: Path, where: str) -> bytes:
    """Overwrites the file's header, or the page after it that holds the schema, as a
    failing card might; returns the bytes it left."""
    data = bytearray(path.read_bytes())
    start, end = (0, 100) if where == "header" else (100, PAGE_BYTES)
    data[start:end] = b"\xde\xad" * ((end - start) // 2)
    path.write_bytes(bytes(data))
    return bytes(data)


def outbox_with_lines(path: Path) -> None:
    outbox = Outbox(path)
    outbox.commit([f"m v={i}i {i}" for i in range(100)], [])
    outbox.close()


@pytest.mark.parametrize("where", ["header", "schema"])
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


def test_without_recovery_a_damaged_outbox_is_an_error_naming_it_and_left_as_it_is(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox_with_lines(path)
    damaged = damage(path, "header")
    with pytest.raises(StoreError, match=r"cannot open the outbox in .*o\.sqlite3: file is not"):
        Outbox(path)
    assert path.read_bytes() == damaged
    assert not list(tmp_path.glob("*.damaged*"))


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


async def run_briefly(gateway: Gateway) -> None:
    running = asyncio.create_task(gateway.run())
    await asyncio.sleep(0.05)
    gateway.stop()
    await asyncio.wait_for(running, timeout=10)


async def test_a_gateway_starts_on_a_damaged_outbox_and_notification_log(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    config = GatewayConfig.model_validate({"mqtt": None, "outbox": {"path": path}})
    await run_briefly(Gateway(config, ManualClock(1_767_225_600_000)))
    log_path = notification_log_path(path)
    damage(path, "header")
    damage(log_path, "header")
    gateway = Gateway(config, ManualClock(1_767_225_600_000))
    assert gateway.outbox.depth() == 0 and gateway.alerts.open_alerts() == []
    await run_briefly(gateway)
    assert (tmp_path / "o.sqlite3.damaged").exists()
    assert log_path.with_name(log_path.name + ".damaged").exists()


def test_a_damaged_notification_log_is_moved_aside_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "n.sqlite3"
    NotificationLog(path).close()
    damage(path, "header")
    with pytest.raises(StoreError, match="cannot open the notification log"):
        NotificationLog(path)
    NotificationLog(path, recover_damaged=True).close()
    assert (tmp_path / "n.sqlite3.damaged").exists()
