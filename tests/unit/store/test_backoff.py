from __future__ import annotations

import random

import pytest

from gateway.store.backoff import Backoff


class _Top(random.Random):
    """Always draws the top of the range, to see the cap of each attempt."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_cap_doubles_up_to_max() -> None:
    backoff = Backoff(0.5, 6.0, rng=_Top())
    assert [backoff.next_delay_s() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]


def test_full_jitter_stays_within_cap() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(7))
    delays = [backoff.next_delay_s() for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert 0.0 <= delays[0] <= 1.0
    # Jittered, not a fixed sequence.
    assert len(set(delays)) > 100


def test_seeded_rng_repeats() -> None:
    first = Backoff(0.5, 60.0, rng=random.Random(42))
    second = Backoff(0.5, 60.0, rng=random.Random(42))
    assert [first.next_delay_s() for _ in range(10)] == [second.next_delay_s() for _ in range(10)]


def test_reset_starts_again() -> None:
    backoff = Backoff(0.5, 60.0, rng=_Top())
    for _ in range(5):
        backoff.next_delay_s()
    backoff.reset()
    assert backoff.next_delay_s() == 0.5


def test_retry_after_is_a_floor() -> None:
    backoff = Backoff(0.5, 60.0, rng=_Top())
    assert backoff.next_delay_s(retry_after_s=30.0) == 30.0
    # A Retry-After beyond max_s is still honoured: the server knows best.
    assert backoff.next_delay_s(retry_after_s=120.0) == 120.0
    # A short Retry-After does not shorten the backoff.
    assert backoff.next_delay_s(retry_after_s=0.1) == 2.0


def test_retry_after_holds_the_writes_ten_minutes_at_most() -> None:
    backoff = Backoff(0.5, 60.0, rng=_Top())
    assert backoff.next_delay_s(retry_after_s=2 * 86_400.0) == 600.0
    assert Backoff(0.5, 900.0, rng=_Top()).next_delay_s(retry_after_s=86_400.0) == 900.0


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(0.001, 60.0, rng=_Top())
    for _ in range(10_000):
        delay = backoff.next_delay_s()
    assert delay == 60.0


@pytest.mark.parametrize(("initial_s", "max_s"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_bounds_rejected(initial_s: float, max_s: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s, max_s)


def test_equal_bounds() -> None:
    backoff = Backoff(2.0, 2.0, rng=_Top())
    assert [backoff.next_delay_s() for _ in range(3)] == [2.0, 2.0, 2.0]
