"""Rates of change over a time window: `<field>_per_min` in rule conditions.

Each (device, port, field) keeps its recent samples as one flat array of doubles,
time and value in turn: a charging shed's eight ports hold a few samples each, and
an object per sample (or a deque per port) would cost several times the samples
themselves. Epoch milliseconds are exact in a double.
"""

from __future__ import annotations

from array import array

from gateway.decode.record import Event, Reading

SeriesKey = tuple[str, str, str]  # (community, device_id, field)


class RateWindows:
    __slots__ = ("_last", "_series")

    def __init__(self) -> None:
        # Per device and field, per port (None for the device itself): the samples.
        self._series: dict[SeriesKey, dict[int | None, array[float]]] = {}
        # The record, field and ports of the last call: a charging shed's ports come one
        # after another, as records sharing their device.
        self._last: tuple[object, str, dict[int | None, array[float]]] = (None, "", {})

    def __len__(self) -> int:
        return sum(len(ports) for ports in self._series.values())

    def add(
        self, record: Reading | Event, field: str, window_ms: float, value: float
    ) -> float | None:
        """Take the record's sample of `field`; the change per minute since the window's
        start, or None while the samples span less than half the window (too short to
        say anything)."""
        device = record.device
        last_device, last_field, ports = self._last
        if device is not last_device or field != last_field:
            key = (device.community, device.device_id, field)
            ports = self._series.get(key)  # type: ignore[assignment]
            if ports is None:
                ports = self._series[key] = {}
            self._last = (device, field, ports)
        samples = ports.get(record.port)
        if samples is None:
            samples = ports[record.port] = array("d")
        at_ms = record.time_ms
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

    def saved(self) -> list[tuple[str, str, str, int | None, bytes]]:
        """Every window as (community, device_id, field, port, samples), to keep across a
        restart: a rate is unknown until its window is half covered again otherwise."""
        return [
            (community, device_id, field, port, samples.tobytes())
            for (community, device_id, field), ports in self._series.items()
            for port, samples in ports.items()
            if samples
        ]

    def restore(self, saved: list[tuple[str, str, str, int | None, bytes]]) -> None:
        for community, device_id, field, port, blob in saved:
            samples = array("d")
            samples.frombytes(blob)
            self._series.setdefault((community, device_id, field), {})[port] = samples
        self._last = (None, "", {})
