"""Rule tracks: the state of each (rule, device, port) whose condition has been seen.

Few devices have a track at any time. The table counts tracks by device id, so that
the engine can tell in one lookup that a record's device has none and skip the rules
whose conditions do not hold for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# (rule, community, device id or place, port)
TrackKey = tuple[str, str, str, int | None]


@dataclass(slots=True)
class Track:
    """The state of one (rule, device, port) whose condition has been seen true."""

    firing: bool
    since_ms: int
    readings: int
    clearing_since_ms: int | None = None
    alert_id: str = ""
    # Inactivity rules: the watched field's value, unchanged since `since_ms`.
    last_value: float | None = None


class TrackTable:
    """Tracks by key, with a count of tracks by device id (key[2])."""

    __slots__ = ("_tracks", "counts")

    def __init__(self, tracks: Iterable[tuple[TrackKey, Track]] = ()) -> None:
        self._tracks: dict[TrackKey, Track] = {}
        # Device id -> how many tracks carry it; absent when none do.
        self.counts: dict[str, int] = {}
        self.update(tracks)

    def __len__(self) -> int:
        return len(self._tracks)

    def __iter__(self) -> Iterator[TrackKey]:
        return iter(self._tracks)

    def __contains__(self, key: object) -> bool:
        return key in self._tracks

    def __getitem__(self, key: TrackKey) -> Track:
        return self._tracks[key]

    def get(self, key: TrackKey) -> Track | None:
        return self._tracks.get(key)

    def items(self) -> list[tuple[TrackKey, Track]]:
        """A copy, so that the caller may change the table while going through it."""
        return list(self._tracks.items())

    def __setitem__(self, key: TrackKey, track: Track) -> None:
        if key not in self._tracks:
            self.counts[key[2]] = self.counts.get(key[2], 0) + 1
        self._tracks[key] = track

    def __delitem__(self, key: TrackKey) -> None:
        del self._tracks[key]
        self._forget(key[2])

    def pop(self, key: TrackKey) -> Track | None:
        track = self._tracks.pop(key, None)
        if track is not None:
            self._forget(key[2])
        return track

    def update(self, tracks: Iterable[tuple[TrackKey, Track]]) -> None:
        for key, track in tracks:
            self[key] = track

    def _forget(self, device_id: str) -> None:
        left = self.counts[device_id] - 1
        if left:
            self.counts[device_id] = left
        else:
            del self.counts[device_id]
