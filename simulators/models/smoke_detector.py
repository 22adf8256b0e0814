"""烟感: an NB-IoT smoke detector on a ceiling, reporting hourly to save its battery."""

from __future__ import annotations

import math
import random

from simulators.device import Device
from simulators.models.model import DeviceModel, Fields, Reaction, clamp, local_hour

# A ten-year lithium cell: a hundredth of a percent a day is about right.
BATTERY_DRAIN_PCT_PER_H = 0.0004
# Detectors in alarm report every minute until the smoke clears.
ALARM_PERIOD_S = 60.0
ALARM_OBSCURATION_PCT_PER_M = 10.0
LOW_BATTERY_PCT = 15.0


class SmokeDetectorModel(DeviceModel):
    stages = frozenset({"fire", "low_battery"})

    def __init__(self, device: Device, rng: random.Random, start_ms: int) -> None:
        super().__init__(device, rng, start_ms)
        self.room_temp_c = rng.uniform(21.0, 26.0)
        self.battery_pct = rng.uniform(45.0, 100.0)
        self.rssi_base_dbm = rng.randint(-100, -72)
        self.fire_minutes: float | None = None
        self.alarm = False
        self.temperature_c = self._room_temperature_c()
        self.obscuration_pct_per_m = abs(rng.gauss(0.0, 0.04))

    def _room_temperature_c(self) -> float:
        # Indoors the day swings a couple of degrees, warmest mid-afternoon.
        swing = 2.5 * math.sin(2 * math.pi * (local_hour(self.now_ms) - 9) / 24)
        return clamp(self.room_temp_c + swing + self.rng.gauss(0, 0.2), 20.0, 30.0)

    def _evolve(self, dt_s: float) -> None:
        self.battery_pct = max(0.0, self.battery_pct - BATTERY_DRAIN_PCT_PER_H * dt_s / 3600)
        if self.fire_minutes is None:
            self.temperature_c = self._room_temperature_c()
            self.obscuration_pct_per_m = abs(self.rng.gauss(0.0, 0.04))
            return
        self.fire_minutes += dt_s / 60
        minutes = self.fire_minutes
        # Smoke thickens and the room heats as the fire grows, until the sensor saturates.
        self.obscuration_pct_per_m = clamp(
            ALARM_OBSCURATION_PCT_PER_M + 6 * minutes + self.rng.gauss(0, 0.5), 0.0, 100.0
        )
        self.temperature_c = clamp(self.room_temp_c + 4 * minutes + 0.4 * minutes**2, -40, 125)

    def reading(self) -> Fields:
        return {
            "obscuration_pct_per_m": round(self.obscuration_pct_per_m, 2),
            "temperature_c": round(self.temperature_c, 1),
            "battery_pct": round(self.battery_pct),
            "alarm": self.alarm,
            "rssi_dbm": self.rssi_base_dbm + self.rng.randint(-3, 3),
        }

    def report_period_s(self) -> float:
        return ALARM_PERIOD_S if self.alarm else super().report_period_s()

    def _react(self, stage: str) -> Reaction:
        if stage == "fire":
            self.fire_minutes = 0.0
            self.alarm = True
            self.obscuration_pct_per_m = ALARM_OBSCURATION_PCT_PER_M + abs(self.rng.gauss(0, 1))
            self.temperature_c = self.room_temp_c + 1.0
            return Reaction(events=({"event": "alarm"},), report_now=True)
        # low_battery
        self.battery_pct = min(self.battery_pct, LOW_BATTERY_PCT)
        return Reaction(events=({"event": "low_battery"},), report_now=True)
