import asyncio
import shutil
from pathlib import Path

import pytest

from gateway.app import RESERVE_CHECK_S, Gateway
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.errors import StoreError
from gateway.store.outbox import Outbox
from gateway.store.reserve import DiskReserve
from tests.integration.harness import wait_until
from tests.unit.disk import fill, small_disk

MIB = 1 << 20


def test_the_space_is_taken_from_the_disk_given_back_once_and_set_aside_again(
    tmp_path: Path,
) -> None:
    reserve = DiskReserve(tmp_path / "o.sqlite3.reserve", 4 * MIB)
    assert not reserve.held and not reserve.given_back
    assert reserve.restore() and reserve.held
    # Blocks of the disk's, not a sparse file that holds none back.
    assert reserve.path.stat().st_blocks * 512 >= 4 * MIB
    assert reserve.release()
    assert reserve.given_back and not reserve.held
    assert reserve.path.stat().st_blocks == 0
    # Another process's commit, finding it given back, has nothing more to give.
    assert not DiskReserve(reserve.path, 4 * MIB).release()
    assert reserve.restore() and reserve.held and not reserve.given_back
    assert not list(tmp_path.glob("*.part"))


def test_it_is_not_set_aside_without_room_for_it_twice_over(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    reserve = DiskReserve(tmp_path / "o.sqlite3.reserve", free // 2 + MIB)
    assert not reserve.restore()
    assert not reserve.path.exists()


def test_none_is_set_aside_when_none_is_asked_for(tmp_path: Path) -> None:
    reserve = DiskReserve(tmp_path / "o.sqlite3.reserve", 0)
    assert not reserve.restore() and not reserve.release()
    assert not reserve.path.exists() and not reserve.given_back


def test_a_failure_to_set_it_aside_is_logged_once_until_its_reason_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    reserve = DiskReserve(tmp_path / "gone" / "o.sqlite3.reserve", MIB)
    for _ in range(3):
        assert not reserve.restore()
    assert len(warnings()) == 1 and "No such file or directory" in warnings()[0]
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "o.sqlite3.reserve.part").mkdir()
    for _ in range(3):
        assert not reserve.restore()
    assert len(warnings()) == 2 and "Is a directory" in warnings()[1]
    (tmp_path / "gone" / "o.sqlite3.reserve.part").rmdir()
    assert reserve.restore() and reserve.release()
    # After it was set aside, the same failure again is news.
    (tmp_path / "gone" / "o.sqlite3.reserve.part").mkdir()
    assert not reserve.restore()
    assert len(warnings()) == 3


def stored_lines(outbox: Outbox, batches: int) -> None:
    for batch in range(batches):
        lines = [f'm,device_id=d{batch} v={i}i,note="{"x" * 100}" {batch}' for i in range(200)]
        outbox.commit(lines, [])


@pytest.mark.parametrize("reserve_mib", [0, 1])
def test_on_a_disk_full_to_its_last_byte_the_space_set_aside_lets_an_alarm_in(
    tmp_path: Path, reserve_mib: int
) -> None:
    with small_disk(tmp_path / "disk", 4 * MIB) as disk:
        outbox = Outbox(disk / "o.sqlite3", reserve_bytes=reserve_mib * MIB)
        try:
            assert outbox.reserve.restore() == bool(reserve_mib)
            stored_lines(outbox, 20)
            filler = fill(disk)
            sos = ["bracelet_event,device_id=br-1,event=sos count=1i 99"]
            if not reserve_mib:
                # Dropping the oldest lines needs room too, which there is none of.
                with pytest.raises(StoreError, match="database or disk is full") as failed:
                    outbox.commit(sos, [])
                assert failed.value.retryable
                assert outbox.depth() == 4000
                return
            result = outbox.commit(sos, [])
            # Stored, by dropping the oldest lines in the room given back.
            assert result.lines == 1 and 0 < result.evicted_lines < 4000
            assert outbox.depth() == 4000 - result.evicted_lines + 1
            assert outbox.reserve.given_back
            assert outbox.peek(5000).lines[-1] == sos[0]
            # Set aside again once the other program's file is gone.
            filler.unlink()
            assert outbox.reserve.restore() and outbox.reserve.held
        finally:
            outbox.close()


async def test_a_running_gateway_sets_the_space_aside_and_again_once_given_back(
    tmp_path: Path,
) -> None:
    config = GatewayConfig.model_validate(
        {"mqtt": None, "outbox": {"path": tmp_path / "o.sqlite3", "reserve_bytes": MIB}}
    )
    clock = ManualClock(1_767_225_600_000)
    gateway = Gateway(config, clock)
    reserve = gateway.outbox.reserve
    running = asyncio.create_task(gateway.run())
    try:
        await wait_until(lambda: reserve.held, timeout_s=5, what="the disk set aside")
        assert reserve.release()
        clock.advance(RESERVE_CHECK_S / 2)
        await asyncio.sleep(0.05)
        assert reserve.given_back
        clock.advance(RESERVE_CHECK_S / 2)
        await wait_until(lambda: reserve.held, timeout_s=5, what="the disk set aside")
    finally:
        gateway.stop()
        await asyncio.wait_for(running, timeout=10)
