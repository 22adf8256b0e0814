"""What every device model does: evolve with simulated time, report, react to scenarios."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from simulators.device import Device

Fields = dict[str, object]

CHINA_UTC_OFFSET_MS = 8 * 3600 * 1000
# Longer gaps are walked through in steps so that walks, rain and charging stay smooth.
MAX_STEP_S = 60.0


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a device does when a scenario stage reaches it."""

    events: tuple[Fields, ...] = ()
    # Send a telemetry report at once (an alarm is not kept for the next periodic report).
    report_now: bool = False
    # Later stages of the same scenario: (seconds from now, stage name).
    followups: tuple[tuple[float, str], ...] = ()


def local_hour(time_ms: int) -> float:
    """Hour of the day in China Standard Time, where all the communities are."""
    return ((time_ms + CHINA_UTC_OFFSET_MS) % 86_400_000) / 3_600_000


def local_day(time_ms: int) -> int:
    return (time_ms + CHINA_UTC_OFFSET_MS) // 86_400_000


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


class DeviceModel(ABC):
    """A device's physical state; `advance` moves it to a later simulated time."""

    # Scenario stages this model understands; the first name of a scenario is its kind.
    stages: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, device: Device, rng: random.Random, start_ms: int) -> None:
        self.device = device
        self.rng = rng
        self.now_ms = start_ms

    def advance(self, now_ms: int) -> None:
        while self.now_ms < now_ms:
            step_ms = min(now_ms - self.now_ms, int(MAX_STEP_S * 1000))
            self.now_ms += step_ms
            self._evolve(step_ms / 1000.0)

    def trigger(self, stage: str, now_ms: int) -> Reaction:
        if stage not in self.stages:
            raise ValueError(f"{self.device.device_type} cannot do scenario stage {stage!r}")
        self.advance(now_ms)
        return self._react(stage)

    def report_period_s(self) -> float:
        """How often to report now: the typical period, shorter while something is wrong."""
        return self.device.typical_period_s

    @abstractmethod
    def reading(self) -> Fields:
        """The telemetry fields (without `ts` and `seq`) for the current state."""

    @abstractmethod
    def _evolve(self, dt_s: float) -> None:
        """Move the state on by `dt_s` seconds, ending at `self.now_ms`."""

    @abstractmethod
    def _react(self, stage: str) -> Reaction: ...
