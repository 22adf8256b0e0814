"""The track table counts tracks by device and rule, so the engine can skip untracked devices."""

from __future__ import annotations

from gateway.rules.track import Track, TrackTable


def test_tracks_are_counted_by_device_id() -> None:
    table = TrackTable([(("fire_alarm", "hgy", "sd-1", None), Track(True, 0, 1))])
    table[("over_current", "hgy", "cs-1", 3)] = Track(False, 0, 1)
    table[("over_current", "hgy", "cs-1", 4)] = Track(False, 0, 1)
    table[("over_current", "hgy", "cs-1", 4)] = Track(True, 5, 2)  # replaced, not added
    table[("cover_open", "hgy", "cs-1", None)] = Track(False, 0, 1)
    assert table.counts == {"sd-1": {"fire_alarm": 1}, "cs-1": {"over_current": 2, "cover_open": 1}}
    assert table.pop(("cover_open", "hgy", "cs-1", None)) is not None
    del table[("over_current", "hgy", "cs-1", 3)]
    assert table.pop(("over_current", "hgy", "cs-1", 4)) == Track(True, 5, 2)
    assert table.pop(("over_current", "hgy", "cs-1", 4)) is None
    assert table.counts == {"sd-1": {"fire_alarm": 1}}
    assert len(table) == 1 and ("fire_alarm", "hgy", "sd-1", None) in table
    assert [key for key, _ in table.items()] == [("fire_alarm", "hgy", "sd-1", None)]
    gone = ("over_current", "hgy", "cs-1", 4)
    assert table.split([("fire_alarm", "hgy", "sd-1", None), gone]) == (
        [(("fire_alarm", "hgy", "sd-1", None), Track(True, 0, 1))],
        [gone],
    )
