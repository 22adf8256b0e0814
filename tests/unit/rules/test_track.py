"""The track table counts tracks by device, so the engine can skip untracked devices."""

from __future__ import annotations

from gateway.rules.track import Track, TrackTable


def test_tracks_are_counted_by_device_id() -> None:
    table = TrackTable([(("fire_alarm", "hgy", "sd-1", None), Track(True, 0, 1))])
    table[("over_current", "hgy", "cs-1", 3)] = Track(False, 0, 1)
    table[("over_current", "hgy", "cs-1", 4)] = Track(False, 0, 1)
    table[("over_current", "hgy", "cs-1", 4)] = Track(True, 5, 2)  # replaced, not added
    assert table.counts == {"sd-1": 1, "cs-1": 2}
    del table[("over_current", "hgy", "cs-1", 3)]
    assert table.pop(("over_current", "hgy", "cs-1", 4)) == Track(True, 5, 2)
    assert table.pop(("over_current", "hgy", "cs-1", 4)) is None
    assert table.counts == {"sd-1": 1}
    assert len(table) == 1 and ("fire_alarm", "hgy", "sd-1", None) in table
    assert [key for key, _ in table.items()] == [("fire_alarm", "hgy", "sd-1", None)]
