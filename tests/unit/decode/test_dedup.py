from array import array

from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.record import DeviceRef

BRACELET = DeviceRef("hgy", "bracelet", "br-1")
OTHER = DeviceRef("hgy", "bracelet", "br-2")


def test_a_key_seen_before_is_a_redelivery_for_that_device_only() -> None:
    keys = RedeliveryFilter()
    assert not keys.is_redelivery(BRACELET, 7)
    assert keys.is_redelivery(BRACELET, 7)
    assert not keys.is_redelivery(OTHER, 7)


def test_keys_span_the_whole_64_bit_range() -> None:
    keys = RedeliveryFilter()
    for key in (2**63 - 1, -(2**63), 0):
        assert not keys.is_redelivery(BRACELET, key), key
        assert keys.is_redelivery(BRACELET, key), key


def test_each_device_remembers_its_last_keys_only() -> None:
    keys = RedeliveryFilter(keys_per_device=4)
    for key in range(6):
        keys.is_redelivery(BRACELET, key)
    assert [keys.is_redelivery(BRACELET, k) for k in (5, 4, 3, 2)] == [True] * 4
    # 0 and 1 were forgotten; seeing them again makes them the newest.
    assert not keys.is_redelivery(BRACELET, 1)


def test_the_changed_devices_keys_are_saved_and_restored() -> None:
    keys = RedeliveryFilter(keys_per_device=3)
    for key in (1, 2, 3, 4):
        keys.is_redelivery(BRACELET, key)
    keys.is_redelivery(OTHER, -9)
    saved = sorted(keys.take_changes())
    assert [(c, d) for c, d, _ in saved] == [("hgy", "br-1"), ("hgy", "br-2")]
    assert keys.take_changes() == []

    restored = RedeliveryFilter(keys_per_device=3)
    restored.restore(saved)
    assert restored.is_redelivery(BRACELET, 2)
    assert restored.is_redelivery(OTHER, -9)
    assert not restored.is_redelivery(BRACELET, 1)
    assert restored.take_changes() == [("hgy", "br-1", array("q", [3, 4, 1]).tobytes())]


def test_keys_saved_as_text_by_an_older_version_are_restored() -> None:
    keys = RedeliveryFilter(keys_per_device=3)
    keys.restore([("hgy", "br-1", "-5 6 7 8")])
    assert keys.is_redelivery(BRACELET, 6)
    assert keys.is_redelivery(BRACELET, 8)
    assert not keys.is_redelivery(BRACELET, -5)
