"""Rates of change over a time window: `<field>_per_min` in rule conditions.

Each (device, port, field) keeps its recent samples as one flat array of doubles,
time and value in turn: a charging shed's eight ports hold a few samples each, and
an object per sample (or a deque per port) would cost several times the samples
themselves. Epoch milliseconds are exact in a double.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable, Iterator

import orjson

from gateway.decode.record import Event, Reading

SeriesKey = tuple[str, str, str]  # (community, device_id, field)
# A community's windows as saved, in rows: (community, series as JSON, [[device_id,
# field, doubles], ...], their windows packed one after another).
SavedWindows = tuple[str, str, bytes]
# The port of a window of the device's own, as packed.
_NO_PORT = -1.0
# The most doubles a saved row holds (64 KiB), unless one series' windows hold more.
ROW_DOUBLES = 8192


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
        if samples and at_ms < samples[-2]:
            # Before the newest sample (one from a clock that ran ahead for a while, or
            # one sent late): in its place in time, or the window's start, trimmed by
            # time below, would stay where the sample ahead of it is, for hours.
            at = _place_of(samples, at_ms)
            samples[at:at] = array("d", (at_ms, value))
        else:
            samples.append(at_ms)
            samples.append(value)
        # Keep one sample at or before the window's start, so that readings sparser
        # than the window still give a rate; but not one from long before it (a port
        # back after an hour) once the window's own samples cover half of it, which
        # would flatten a port heating fast.
        cut_ms = at_ms - window_ms
        while len(samples) > 2 and samples[2] <= cut_ms:
            del samples[:2]
        if (
            len(samples) > 2
            and samples[0] < cut_ms - window_ms / 2
            and at_ms - samples[2] >= window_ms / 2
        ):
            del samples[:2]
        span_ms = at_ms - samples[0]
        if span_ms >= window_ms / 2:
            # Rounded past the readings' own precision: 27.3 to 32.3 °C in a minute is
            # 5 °C a minute, not 4.9999999999999964, which "≥ 5" would miss.
            return round((value - samples[1]) / span_ms * 60_000, 9)
        return None

    def saved(self) -> list[SavedWindows]:
        """Every window, to keep across a restart: a rate is unknown until its window is
        half covered again otherwise. Rows of a community's series, not a row a port: a
        district's 20,000 charging sheds' 160,000 ports hold the outbox's write lock,
        which alarms' commits wait for, a tenth of the time. A row holds at most
        ROW_DOUBLES samples' worth, so that saving makes no block large enough to be
        kept by the allocator after it (a row a community took 25 MiB more at the peak)."""
        rows: list[SavedWindows] = []
        filling: dict[str, tuple[list[tuple[str, str, int]], array[float]]] = {}
        for (community, device_id, field), ports in self._series.items():
            packed = _pack_windows(ports.items())
            if not packed:
                continue
            series, windows = filling.setdefault(community, ([], array("d")))
            if windows and len(windows) + len(packed) > ROW_DOUBLES:
                rows.append(_row(community, series, windows))
                series, windows = filling[community] = ([], array("d"))
            series.append((device_id, field, len(packed)))
            windows.extend(packed)
        rows += [
            _row(community, series, windows) for community, (series, windows) in filling.items()
        ]
        return rows

    def forget(self, devices: Collection[tuple[str, str]]) -> None:
        """Let go of the windows of these devices (community, device id): taken out of
        the registry, moved to another community or retyped. A device registered again
        by the same id starts afresh, not from the samples of the one it replaced."""
        if devices:
            gone = frozenset(devices)
            self._series = {k: v for k, v in self._series.items() if k[:2] not in gone}
            self._last = (None, "", {})

    def put(self, key: SeriesKey, port: int | None, samples: array[float]) -> None:
        """A window as it was saved."""
        self._series.setdefault(key, {})[port] = samples

    def restore(self, saved: Iterable[SavedWindows]) -> None:
        for community, series, packed in saved:
            windows = array("d")
            windows.frombytes(packed)
            at = 0
            for device_id, field, length in orjson.loads(series):
                for port, samples in _unpack_windows(windows[at : at + length]):
                    self.put((community, device_id, field), port, samples)
                at += length
        self._last = (None, "", {})


def _place_of(samples: array[float], at_ms: float) -> int:
    """Where a sample of time `at_ms` goes among time-ordered (time, value) pairs: after
    those of its time or before."""
    low, high = 0, len(samples) // 2
    while low < high:
        middle = (low + high) // 2
        if samples[2 * middle] <= at_ms:
            low = middle + 1
        else:
            high = middle
    return 2 * low


def _row(community: str, series: list[tuple[str, str, int]], windows: array[float]) -> SavedWindows:
    return community, orjson.dumps(series).decode(), windows.tobytes()


def _pack_windows(windows: Iterable[tuple[int | None, array[float]]]) -> array[float]:
    """Windows as one array of doubles: for each, its port (-1 for the device's own), how
    many doubles follow, then its samples. Empty windows are left out."""
    packed = array("d")
    for port, samples in windows:
        if samples:
            packed.append(_NO_PORT if port is None else port)
            packed.append(len(samples))
            packed.extend(samples)
    return packed


def _unpack_windows(packed: array[float]) -> Iterator[tuple[int | None, array[float]]]:
    at = 0
    while at < len(packed):
        port, count = packed[at], int(packed[at + 1])
        yield None if port == _NO_PORT else int(port), packed[at + 2 : at + 2 + count]
        at += 2 + count
