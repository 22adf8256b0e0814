import sqlite3
import sys
from array import array
from pathlib import Path

import pytest

from gateway.config import IngestConfig, MqttConfig
from gateway.decode import dedup
from gateway.decode.dedup import (
    LOG_KEYS_PER_DEVICE,
    UNACKNOWLEDGED_BATCHES,
    RedeliveryFilter,
    SavedKeys,
)
from gateway.decode.record import DeviceRef
from gateway.store.outbox import Outbox

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


def test_a_key_whose_bytes_straddle_two_remembered_keys_is_new() -> None:
    # The keys' bytes are searched: a match across two keys must not count.
    first, second = 0x1122334455667788, 0x0102030405060708
    data = array("q", [first, second]).tobytes()
    keys = RedeliveryFilter()
    for key in (first, second):
        keys.is_redelivery(BRACELET, key)
    for offset in range(1, 8):
        straddling = int.from_bytes(data[offset : offset + 8], sys.byteorder, signed=True)
        assert not keys.is_redelivery(BRACELET, straddling), offset
        assert keys.is_redelivery(BRACELET, straddling), offset


def test_each_device_remembers_its_last_keys_only() -> None:
    keys = RedeliveryFilter(keys_per_device=4)
    for key in range(6):
        keys.is_redelivery(BRACELET, key)
        keys.take_changes()
    assert [keys.is_redelivery(BRACELET, k) for k in (5, 4, 3, 2)] == [True] * 4
    # 0 and 1 were forgotten; seeing them again makes them the newest.
    assert not keys.is_redelivery(BRACELET, 1)


def saved_and_restored(keys: RedeliveryFilter, outbox: Outbox, **kwargs: int) -> RedeliveryFilter:
    """Commit what the filter has to save with a batch, then a filter as a restart
    makes it from the outbox."""
    outbox.commit([], [], keys.take_changes())
    restored = RedeliveryFilter(**kwargs)
    restored.restore(outbox.redelivery_keys())
    return restored


def log_rows(outbox: Outbox) -> int:
    return len(outbox.redelivery_keys().log)


def test_a_batchs_keys_survive_a_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    keys = RedeliveryFilter(keys_per_device=3)
    for key in (1, 2, 3):
        keys.is_redelivery(BRACELET, key)
        outbox.commit([], [], keys.take_changes())
    keys.is_redelivery(BRACELET, 4)
    keys.is_redelivery(OTHER, -9)
    restored = saved_and_restored(keys, outbox, keys_per_device=3)
    assert restored.is_redelivery(BRACELET, 2)
    assert restored.is_redelivery(BRACELET, 4)
    assert restored.is_redelivery(OTHER, -9)
    # The oldest fell out, as it did before the restart.
    assert not restored.is_redelivery(BRACELET, 1)


def test_a_batch_keeps_all_its_keys_for_a_redelivery_of_all_of_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    keys = RedeliveryFilter(keys_per_device=4)
    keys.is_redelivery(OTHER, 1)
    # A backlog from a few devices: one batch holds many messages of each. The gateway
    # stops after the batch's commit, before the broker had its acknowledgement.
    for key in range(100, 110):
        keys.is_redelivery(BRACELET, key)
    restored = saved_and_restored(keys, outbox, keys_per_device=4)
    assert all(restored.is_redelivery(BRACELET, k) for k in range(100, 110))
    # In the filter that carries on too, while the broker may not have the batch's
    # acknowledgement: a lost connection has it send the batches after it again too.
    for key in range(200, 200 + UNACKNOWLEDGED_BATCHES - 1):
        keys.is_redelivery(BRACELET, key)
        keys.take_changes()
    assert all(keys.is_redelivery(BRACELET, k) for k in range(100, 110))
    # Then the device keeps its last few again.
    keys.is_redelivery(BRACELET, 300)
    keys.take_changes()
    last = 200 + UNACKNOWLEDGED_BATCHES - 2
    assert [keys.is_redelivery(BRACELET, k) for k in (300, last, last - 1, last - 2)] == [
        True,
        True,
        True,
        True,
    ]
    assert not keys.is_redelivery(BRACELET, last - 3)


def test_a_lost_connection_finds_every_batch_on_its_way_to_the_broker_again() -> None:
    keys = RedeliveryFilter(keys_per_device=4)
    # A backlog from one device, in batches whose acknowledgements were on their way
    # when the connection was lost.
    for batch in range(3):
        for key in range(batch * 100, batch * 100 + 10):
            assert not keys.is_redelivery(BRACELET, key)
        keys.take_changes()
    # The broker sends all of them again.
    assert all(
        keys.is_redelivery(BRACELET, k) for b in range(3) for k in range(b * 100, b * 100 + 10)
    )


def test_the_log_of_keys_goes_once_the_lists_are_written_whole(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    keys = RedeliveryFilter()
    for key in range(LOG_KEYS_PER_DEVICE - 1):
        keys.is_redelivery(BRACELET, key)
        outbox.commit([], [], keys.take_changes())
    assert log_rows(outbox) == LOG_KEYS_PER_DEVICE - 1
    assert outbox.redelivery_keys().lists == []
    keys.is_redelivery(BRACELET, 100)
    restored = saved_and_restored(keys, outbox)
    assert log_rows(outbox) == 0
    assert [c for c, _, _, _ in outbox.redelivery_keys().lists] == ["hgy"]
    assert all(restored.is_redelivery(BRACELET, k) for k in [*range(LOG_KEYS_PER_DEVICE - 1), 100])
    # And the log starts again after it.
    keys.is_redelivery(BRACELET, 101)
    restored = saved_and_restored(keys, outbox)
    assert log_rows(outbox) == 1
    assert restored.is_redelivery(BRACELET, 101)
    assert restored.is_redelivery(BRACELET, 100)


def test_a_large_fleets_lists_are_written_over_several_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dedup, "WHOLE_LISTS_PER_BATCH", 2)
    outbox = Outbox(tmp_path / "o.sqlite3")
    keys = RedeliveryFilter()
    devices = [DeviceRef("hgy", "bracelet", f"br-{n}") for n in range(5)]
    for key in range(LOG_KEYS_PER_DEVICE):
        for device in devices:
            keys.is_redelivery(device, key)
    written = []
    for _ in range(3):
        outbox.commit([], [], keys.take_changes())
        written.append((len(outbox.redelivery_keys().lists), log_rows(outbox)))
    # Two lists a batch; the log goes with the last of them.
    assert written == [(2, 1), (4, 1), (5, 0)]
    # A restart in the middle of the writing loses nothing either.
    keys.is_redelivery(devices[0], 500)
    outbox.commit([], [], keys.take_changes())
    restored = RedeliveryFilter()
    restored.restore(outbox.redelivery_keys())
    assert all(restored.is_redelivery(d, k) for d in devices for k in range(LOG_KEYS_PER_DEVICE))
    assert restored.is_redelivery(devices[0], 500)


def test_keys_saved_as_text_by_an_older_version_are_restored() -> None:
    keys = RedeliveryFilter(keys_per_device=3)
    keys.restore(SavedKeys([("hgy", "br-1", "-5 6 7", 0)], []))
    assert keys.is_redelivery(BRACELET, -5)
    assert keys.is_redelivery(BRACELET, 7)
    assert not keys.is_redelivery(BRACELET, 5)


def test_a_list_written_before_a_crash_keeps_its_newest_keys_over_the_log_behind_it() -> None:
    keys = RedeliveryFilter(keys_per_device=3)
    for key in range(1, 6):
        keys.is_redelivery(BRACELET, key)
    first = keys.take_changes()
    keys.is_redelivery(BRACELET, 6)
    second = keys.take_changes()
    assert first.added is not None and second.added is not None
    # The device's list was written with the second batch, [4, 5, 6], and the gateway
    # stopped before the lists of the other devices changed, and so the log, were done.
    written = array("q", [4, 5, 6]).tobytes()
    restored = RedeliveryFilter(keys_per_device=3)
    restored.restore(
        SavedKeys([("hgy", "br-1", written, 2)], [(1, first.added), (2, second.added)])
    )
    assert [restored.is_redelivery(BRACELET, k) for k in (4, 5, 6)] == [True] * 3
    # Keys after the list's batch are replayed from the log, and numbering goes on.
    keys.is_redelivery(BRACELET, 7)
    third = keys.take_changes()
    assert third.added is not None
    again = RedeliveryFilter(keys_per_device=3)
    again.restore(
        SavedKeys(
            [("hgy", "br-1", written, 2)],
            [(1, first.added), (2, second.added), (3, third.added)],
        )
    )
    assert [again.is_redelivery(BRACELET, k) for k in (5, 6, 7)] == [True] * 3
    assert again.take_changes().batch == 4


def test_lists_saved_before_they_named_their_batch_are_restored(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute(
        "CREATE TABLE redelivery_keys (community TEXT NOT NULL, device_id TEXT NOT NULL, "
        "keys BLOB NOT NULL, PRIMARY KEY (community, device_id)) WITHOUT ROWID"
    )
    old.execute(
        "INSERT INTO redelivery_keys VALUES ('hgy', 'br-1', ?)", (array("q", [7]).tobytes(),)
    )
    old.close()
    restored = RedeliveryFilter()
    restored.restore(Outbox(path).redelivery_keys())
    assert restored.is_redelivery(BRACELET, 7)


def test_a_restart_remembers_the_bursts_of_batches_already_in_a_list() -> None:
    keys = RedeliveryFilter(keys_per_device=4)
    log = []
    for batch in range(2):
        for key in range(batch * 100, batch * 100 + 10):
            keys.is_redelivery(BRACELET, key)
        taken = keys.take_changes()
        assert taken.added is not None
        log.append((taken.batch, taken.added))
    # Stopped in the middle of writing the lists, this device's with the second batch.
    written = array("q", [*range(10), *range(100, 110)]).tobytes()
    restored = RedeliveryFilter(keys_per_device=4)
    restored.restore(SavedKeys([("hgy", "br-1", written, 2)], log))
    # The broker sends the two batches again, after a new message of the device.
    restored.is_redelivery(BRACELET, 500)
    restored.take_changes()
    assert all(restored.is_redelivery(BRACELET, k) for b in (0, 100) for k in range(b, b + 10))


def test_a_burst_already_in_a_list_written_whole_survives_a_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    keys = RedeliveryFilter(keys_per_device=4)
    # A backlog: one batch of many messages of one device, its list written whole with
    # it (and the log of it gone), then a batch with one more.
    for key in range(100, 110):
        keys.is_redelivery(BRACELET, key)
    first = keys.take_changes()
    assert first.lists and first.log_through == first.batch
    outbox.commit([], [], first)
    keys.is_redelivery(BRACELET, 200)
    restored = saved_and_restored(keys, outbox, keys_per_device=4)
    # The gateway stopped before the broker had the acknowledgements: it sends both again.
    assert all(restored.is_redelivery(BRACELET, k) for k in (*range(100, 110), 200))


SHED = DeviceRef("hgy", "charging_shed", "cs-1")


def test_a_lost_connections_whole_window_of_unacknowledged_messages_is_known_when_sent_again() -> (
    None
):
    # A backlog of few devices: full batches, many messages of each. The path to the
    # broker dies unnoticed (seen only after 1.5 keepalives): everything the broker had
    # in flight, up to receive_maximum, is committed from what was received, acknowledged
    # on a connection that is gone or not at all, and sent again on the next connection.
    in_flight = MqttConfig().receive_maximum
    batch_size = IngestConfig().commit_max_messages
    keys = RedeliveryFilter()
    sheds = [DeviceRef("hgy", "charging_shed", f"cs-{n}") for n in range(50)]
    sent = []
    for key in range(in_flight):
        device = sheds[key % len(sheds)]
        assert not keys.is_redelivery(device, key)
        sent.append((device, key))
        if (key + 1) % batch_size == 0:
            keys.take_changes()
    taken_for_new = [key for device, key in sent if not keys.is_redelivery(device, key)]
    assert taken_for_new == []


def test_a_message_just_before_a_burst_of_its_device_is_known_when_both_come_again() -> None:
    keys = RedeliveryFilter()
    # A shed's reading, then in the next batch the readings it kept while its own link
    # was down.
    assert not keys.is_redelivery(SHED, 0)
    keys.take_changes()
    for key in range(1, 41):
        assert not keys.is_redelivery(SHED, key)
    keys.take_changes()
    # The connection is lost before the broker had either batch's acknowledgement.
    assert [key for key in range(41) if not keys.is_redelivery(SHED, key)] == []


def test_a_message_just_before_a_burst_of_its_device_is_known_after_a_restart(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite3")
    keys = RedeliveryFilter()
    others = [DeviceRef("hgy", "charging_shed", f"cs-{n}") for n in range(2, 13)]
    # The shed's reading comes with a busy batch of another's: the lists are written.
    keys.is_redelivery(SHED, 0)
    for key in range(100, 120):
        keys.is_redelivery(others[0], key)
    first = keys.take_changes()
    assert ("hgy", "cs-1") in {(c, d) for c, d, _ in first.lists}
    outbox.commit([], [], first)
    # Then the readings the shed kept while its own link was down, among other devices'.
    for key in range(1, 41):
        keys.is_redelivery(SHED, key)
    for device in others[1:]:
        keys.is_redelivery(device, 500)
    outbox.commit([], [], keys.take_changes())
    # The gateway crashes before the broker had the acknowledgements: both batches again.
    restored = RedeliveryFilter()
    restored.restore(outbox.redelivery_keys())
    assert [key for key in range(41) if not restored.is_redelivery(SHED, key)] == []
