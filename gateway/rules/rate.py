"""Rates of change over a time window: `<field>_per_min` in rule conditions.

Each (device, port, field) keeps its recent samples as one flat array of doubles,
time and value in turn: a charging shed's eight ports hold a few samples each, and
an object per sample (or a deque per port) would cost several times the samples
themselves. Epoch milliseconds are exact in a double.
"""

from __future__ import annotations

from array import array

SeriesKey = tuple[str, str, str]  # (community, device_id, field)


class RateWindows:
    __slots__ = ("_series",)

    def __init__(self) -> None:
        # Per device and field, per port (None for the device itself): the samples.
        self._series: dict[SeriesKey, dict[int | None, array[float]]] = {}

    def __len__(self) -> int:
        return sum(len(ports) for ports in self._series.values())

    def add(
        self,
        community: str,
        device_id: str,
        port: int | None,
        field: str,
        window_ms: float,
        at_ms: int,
        value: float,
    ) -> float | None:
        """Take a sample; the change per minute since the window's start, or None while
        the samples span less than half the window (too short to say anything)."""
        key = (community, device_id, field)
        try:
            samples = self._series[key][port]
        except KeyError:
            samples = self._series.setdefault(key, {}).setdefault(port, array("d"))
        samples.append(at_ms)
        samples.append(value)
        # Keep one sample at or before the window's start, so that readings sparser
        # than the window still give a rate.
        cut_ms = at_ms - window_ms
        while len(samples) > 2 and samples[2] <= cut_ms:
            del samples[:2]
        span_ms = at_ms - samples[0]
        if span_ms >= window_ms / 2:
            return (value - samples[1]) / span_ms * 60_000
        return None
