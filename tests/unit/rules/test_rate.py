"""Rate windows as flat sample arrays give the rates a deque of (time, value) in time
order gives."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import deque

from gateway.decode.record import DeviceRef, Reading, TimeSource
from gateway.rules.rate import ROW_DOUBLES, RateWindows

# Shared, as by the records of one message, which the windows take advantage of.
DEVICES = {
    device_id: DeviceRef("hgy", "charging_shed", device_id) for device_id in ("cs-1", "cs-2")
}


def add(
    windows: RateWindows, device_id: str, port: int | None, at_ms: int, value: float
) -> float | None:
    device = DEVICES[device_id] if at_ms % 2 else DeviceRef("hgy", "charging_shed", device_id)
    record = Reading(device, at_ms, TimeSource.DEVICE, {"t": value}, port=port)
    return windows.add(record, "t", 60_000.0, value)


def deque_rate(
    history: deque[tuple[int, float]], at_ms: int, value: float, window_ms: float
) -> float | None:
    # In time order: a late reading takes its place among the others.
    history.insert(bisect_right([t for t, _ in history], at_ms), (at_ms, value))
    while len(history) > 1 and history[1][0] <= at_ms - window_ms:
        history.popleft()
    # One from long before the window goes once the window's own cover half of it.
    if (
        len(history) > 1
        and history[0][0] < at_ms - window_ms * 1.5
        and at_ms - history[1][0] >= window_ms / 2
    ):
        history.popleft()
    first_ms, first = history[0]
    if at_ms - first_ms >= window_ms / 2:
        return round((value - first) / (at_ms - first_ms) * 60_000, 9)
    return None


def test_rates_equal_those_of_a_deque_of_samples() -> None:
    rnd = random.Random(7)
    windows = RateWindows()
    histories: dict[tuple[str, int | None], deque[tuple[int, float]]] = {}
    at_ms = 1_767_225_600_000
    for _ in range(20_000):
        device, port = rnd.choice(["cs-1", "cs-2"]), rnd.choice([None, 1, 2, 3])
        # Mostly forward, sometimes a late reading from before the last one.
        at_ms += rnd.choice([0, 1, 999, 15_000, 15_000, 61_000, -20_000])
        value = rnd.uniform(20, 90)
        window_ms = 60_000.0
        expected = deque_rate(
            histories.setdefault((device, port), deque()), at_ms, value, window_ms
        )
        assert add(windows, device, port, at_ms, value) == expected
    assert len(windows) == len(histories)


def test_a_rate_is_unknown_until_half_the_window_is_covered() -> None:
    windows = RateWindows()
    assert add(windows, "cs-1", 1, 0, 40.0) is None
    assert add(windows, "cs-1", 1, 15_000, 42.0) is None
    assert add(windows, "cs-1", 1, 30_000, 44.0) == 8.0
    # Sparse readings: the sample before the window's start still gives a rate.
    assert add(windows, "cs-1", 1, 200_000, 44.0) == 0.0


def test_a_community_of_many_sheds_is_saved_in_bounded_rows_and_restored_whole() -> None:
    # 300 sheds of one community, eight ports each, five samples a port: more than a row
    # holds, so several rows of that community, each within the bound, giving back the
    # same rates after a restart.
    windows = RateWindows()
    sheds = [DeviceRef("hgy", "charging_shed", f"cs-{n:03d}") for n in range(300)]
    for at_ms in range(0, 75_000, 15_000):
        for device in sheds:
            for port in range(1, 9):
                record = Reading(device, at_ms, TimeSource.DEVICE, {}, port=port)
                windows.add(record, "t", 60_000.0, 30.0 + port + at_ms / 15_000)
    rows = windows.saved()
    assert len(rows) > 1 and {row[0] for row in rows} == {"hgy"}
    assert all(len(row[2]) <= ROW_DOUBLES * 8 for row in rows)
    restored = RateWindows()
    restored.restore(rows)
    for device in sheds:
        for port in range(1, 9):
            record = Reading(device, 75_000, TimeSource.DEVICE, {}, port=port)
            # One degree every 15 s: 4 a minute, wherever the shed was in the rows.
            assert restored.add(record, "t", 60_000.0, 30.0 + port + 5) == 4.0
