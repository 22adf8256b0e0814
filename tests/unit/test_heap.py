import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.heap import YOUNG_OBJECTS_PER_PASS, set_aside_startup_objects


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    # Put back in the collector's care what the test set aside, so the suite can free it.
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_garbage_is_collected_and_the_living_set_aside(unfrozen: None) -> None:
    kept = _Node()
    garbage = _Node()
    garbage.other = _Node()
    garbage.other.other = garbage
    collected = weakref.ref(garbage)
    del garbage

    set_aside_startup_objects()

    assert gc.get_freeze_count() > 0
    tracked = {id(o) for o in gc.get_objects()}
    # Frozen objects are outside every generation the collector walks.
    assert id(kept) not in tracked
    # A cycle left by start-up is freed, not kept for good.
    assert collected() is None
    # The young objects of a batch are walked every several hundred messages, not 20.
    assert gc.get_threshold()[0] == YOUNG_OBJECTS_PER_PASS
