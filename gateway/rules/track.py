"""Rule tracks: the state of each (rule, device, port) whose condition has been seen.

Few devices have a track at any time. The table counts tracks by device id and rule,
so that the engine can tell in one lookup that a record's device has none, and skip
the rules whose conditions do not hold for it and that have no track for it.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
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
    # Condition rules: the time of the newest record the condition held for. A record
    # older than it (a detector's report from before its alarm, judged after the alarm,
    # which comes on a lane of its own) says nothing of now, and clears nothing.
    # Event rules: the gateway's time when the last event joined the alert, from which
    # `merge_s` runs until the track is let go; by the device's time, a bracelet's clock
    # minutes behind would have it let go before the next press could join it.
    held_ms: int | None = None

    def shift(self, after_ms: int, by_ms: int) -> bool:
        """Moves its times later than `after_ms` by `by_ms` (see RuleEngine.clock_set);
        whether any moved."""
        moved = False
        if self.since_ms > after_ms:
            self.since_ms += by_ms
            moved = True
        if self.clearing_since_ms is not None and self.clearing_since_ms > after_ms:
            self.clearing_since_ms += by_ms
            moved = True
        if self.held_ms is not None and self.held_ms > after_ms:
            self.held_ms += by_ms
            moved = True
        return moved


class TrackTable:
    """Tracks by key, counted by device id (key[2]) and rule (key[0])."""

    __slots__ = ("_tracks", "counts")

    def __init__(self, tracks: Iterable[tuple[TrackKey, Track]] = ()) -> None:
        self._tracks: dict[TrackKey, Track] = {}
        # Device id -> rule -> how many tracks; a device or rule without one is absent.
        self.counts: dict[str, dict[str, int]] = {}
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

    def of_rules(self, rules: Container[str]) -> list[tuple[TrackKey, Track]]:
        """The tracks of these rules, as a copy: a district's tens of thousands of
        offline devices each have a track that a tick of other rules need not copy."""
        return [(key, track) for key, track in self._tracks.items() if key[0] in rules]

    def __setitem__(self, key: TrackKey, track: Track) -> None:
        if key not in self._tracks:
            rules = self.counts.get(key[2])
            if rules is None:
                rules = self.counts[key[2]] = {}
            rules[key[0]] = rules.get(key[0], 0) + 1
        self._tracks[key] = track

    def __delitem__(self, key: TrackKey) -> None:
        del self._tracks[key]
        self._forget(key)

    def pop(self, key: TrackKey) -> Track | None:
        track = self._tracks.pop(key, None)
        if track is not None:
            self._forget(key)
        return track

    def split(
        self, keys: Iterable[TrackKey]
    ) -> tuple[list[tuple[TrackKey, Track]], list[TrackKey]]:
        """Of `keys`, the tracks there are, and the keys of tracks there are not."""
        tracks = self._tracks
        there = [(key, tracks[key]) for key in keys if key in tracks]
        gone = [key for key in keys if key not in tracks]
        return there, gone

    def update(self, tracks: Iterable[tuple[TrackKey, Track]]) -> None:
        for key, track in tracks:
            self[key] = track

    def _forget(self, key: TrackKey) -> None:
        rules = self.counts[key[2]]
        left = rules[key[0]] - 1
        if left:
            rules[key[0]] = left
        elif len(rules) > 1:
            del rules[key[0]]
        else:
            del self.counts[key[2]]
