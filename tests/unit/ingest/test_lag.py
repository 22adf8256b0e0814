import logging

import pytest

from gateway.decode.record import DeviceRef, Reading, TimeSource
from gateway.ingest.lag import AGES_KEPT, BEHIND_WARN_S, IngestLag

NOW_MS = 1_767_225_600_000


def reading(device: int, age_s: float, source: TimeSource = TimeSource.DEVICE) -> Reading:
    ref = DeviceRef("hgy", "bracelet", f"br-{device}")
    return Reading(ref, NOW_MS - int(age_s * 1000), source, {"heart_rate_bpm": 70})


def test_the_lag_is_the_age_of_the_messages_taken_in() -> None:
    lag = IngestLag()
    assert lag.lag_s is None
    assert lag.observe([reading(i, 12.5) for i in range(10)], NOW_MS) == 12.5
    assert lag.lag_s == 12.5


def test_one_device_whose_clock_is_off_does_not_move_it() -> None:
    lag = IngestLag()
    for _ in range(5):
        lag.observe([reading(0, 3600.0), *(reading(i, 2.0) for i in range(1, 5))], NOW_MS)
    assert lag.lag_s == 2.0


def test_messages_without_the_device_time_tell_nothing() -> None:
    lag = IngestLag()
    lag.observe([reading(i, 0.0, TimeSource.GATEWAY) for i in range(10)], NOW_MS)
    assert lag.lag_s is None
    lag.observe([reading(1, 5.0), reading(2, 0.0, TimeSource.GATEWAY)], NOW_MS)
    assert lag.lag_s == 5.0


def test_clocks_ahead_of_the_gateway_make_no_negative_lag() -> None:
    lag = IngestLag()
    lag.observe([reading(i, -30.0) for i in range(10)], NOW_MS)
    assert lag.lag_s == 0.0


def test_a_large_upload_of_old_readings_does_not_outweigh_the_other_devices() -> None:
    # A wearer's bracelet back in range sends an hour it kept, in one large batch.
    lag = IngestLag()
    lag.observe([reading(0, 3600.0 - i) for i in range(1000)], NOW_MS)
    for _ in range(10):
        lag.observe([reading(i, 1.0) for i in range(1, 11)], NOW_MS)
    assert lag.lag_s == 1.0


def test_the_lag_follows_the_latest_messages() -> None:
    lag = IngestLag()
    lag.observe([reading(i, 90.0) for i in range(AGES_KEPT)], NOW_MS)
    assert lag.lag_s == 90.0
    for _ in range(AGES_KEPT):
        lag.observe([reading(1, 0.5)], NOW_MS)
    assert lag.lag_s == 0.5


def test_a_batch_adds_at_most_its_share_of_ages() -> None:
    lag = IngestLag()
    # 31 old messages in one batch count as 16 at most: 20 fresh ones after them are
    # the greater part.
    lag.observe([reading(i, 90.0) for i in range(31)], NOW_MS)
    for i in range(20):
        lag.observe([reading(i, 0.5)], NOW_MS)
    assert lag.lag_s == 0.5


def test_a_message_counts_once_however_many_ports_it_reports() -> None:
    # Sheds, whose ten ports come as records of their own, are not ten times the others.
    lag = IngestLag()
    shed = reading(0, 30.0)._replace(device=DeviceRef("hgy", "charging_shed", "cs-1"))
    for _ in range(10):
        ports = [shed._replace(port=p) for p in range(10)]
        lag.observe([shed, *ports, reading(1, 1.0), reading(2, 1.0)], NOW_MS)
    assert lag.lag_s == 1.0


def settle(lag: IngestLag, age_s: float) -> None:
    """As many small batches of messages that old as the lag is taken over."""
    for i in range(AGES_KEPT):
        lag.observe([reading(i, age_s)], NOW_MS)


def test_falling_behind_is_logged_once_and_so_is_catching_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lag = IngestLag()
    caplog.set_level(logging.INFO, logger="gateway.ingest.lag")
    for age_s in (1.0, BEHIND_WARN_S, BEHIND_WARN_S * 2, BEHIND_WARN_S * 0.6):
        settle(lag, age_s)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "taking messages in 60 s after the devices sent them: the gateway is behind, "
            "and the rest waits at the broker",
        )
    ]
    settle(lag, 2.0)
    assert [(r.levelname, r.getMessage()) for r in caplog.records[1:]] == [
        ("INFO", "taking messages in 2 s after the devices sent them again")
    ]
