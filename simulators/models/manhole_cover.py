"""智慧窨井盖: a smart manhole cover watching its lid, the water and the gas below."""

from __future__ import annotations

import random

from simulators.device import Device
from simulators.models.model import DeviceModel, Fields, Reaction, clamp

# Covers report more often while something is wrong, as real threshold-triggered ones do.
ALERT_PERIOD_S = 60.0
RAIN_CHANCE_PER_H = 1 / 48
# Ordinary rain never fills a well past this share of its depth; `overflow` does.
RAIN_PEAK_SHARE = 0.55
OVERFLOW_PEAK_SHARE = 0.95
OVERFLOW_RISE_S = 15 * 60
OVERFLOW_HOLD_S = 30 * 60
DRAIN_TIME_CONSTANT_S = 90 * 60
GAS_RISE_S = 3 * 60
GAS_HOLD_S = 20 * 60
LID_OPEN_S = 20 * 60


class ManholeCoverModel(DeviceModel):
    stages = frozenset(
        {"lid_opened", "lid_closed", "overflow", "overflow_end", "sewer_gas", "sewer_gas_end",
         "low_battery"}
    )  # fmt: skip

    def __init__(self, device: Device, rng: random.Random, start_ms: int) -> None:
        super().__init__(device, rng, start_ms)
        self.depth_cm = device.well_depth_cm or 200.0
        self.base_level_cm = self.depth_cm * rng.uniform(0.03, 0.12)
        self.water_level_cm = self.base_level_cm * rng.uniform(0.9, 1.2)
        self.rain_left_s = 0.0
        self.rain_rate_cm_per_s = 0.0
        self.storm_target_cm: float | None = None
        self.storm_rate_cm_per_s = 0.0
        self.tilt_base_deg = rng.uniform(0.3, 2.5)
        self.lid_open = False
        self.has_gas_sensor = rng.random() < 0.6
        self.ch4_background_ppm = rng.uniform(5.0, 60.0)
        self.ch4_ppm = self.ch4_background_ppm
        self.gas_target_ppm: float | None = None
        self.battery_pct = rng.uniform(60.0, 100.0)

    def _evolve(self, dt_s: float) -> None:
        self.battery_pct = max(0.0, self.battery_pct - 0.0005 * dt_s / 3600)
        self._evolve_water(dt_s)
        if self.gas_target_ppm is not None:
            step = self.gas_target_ppm / GAS_RISE_S * dt_s
            self.ch4_ppm = min(self.gas_target_ppm, self.ch4_ppm + step)
        else:
            # Background methane wanders; after a gas episode it vents back down.
            target = self.ch4_background_ppm
            self.ch4_ppm = target + (self.ch4_ppm - target) * 0.5 ** (dt_s / 120)
            self.ch4_ppm = max(0.0, self.ch4_ppm + self.rng.gauss(0, 2))

    def _evolve_water(self, dt_s: float) -> None:
        if self.storm_target_cm is not None:
            self.water_level_cm = min(
                self.storm_target_cm, self.water_level_cm + self.storm_rate_cm_per_s * dt_s
            )
            return
        if self.rain_left_s <= 0 and self.rng.random() < RAIN_CHANCE_PER_H * dt_s / 3600:
            self.rain_left_s = self.rng.uniform(3600, 4 * 3600)
            peak_cm = self.depth_cm * self.rng.uniform(0.2, RAIN_PEAK_SHARE)
            self.rain_rate_cm_per_s = max(0.0, peak_cm - self.water_level_cm) / self.rain_left_s
        if self.rain_left_s > 0:
            self.rain_left_s -= dt_s
            self.water_level_cm += self.rain_rate_cm_per_s * dt_s
        else:
            excess = self.water_level_cm - self.base_level_cm
            self.water_level_cm = self.base_level_cm + excess * 0.5 ** (
                dt_s / DRAIN_TIME_CONSTANT_S
            )

    def reading(self) -> Fields:
        tilt_deg = (
            self.rng.uniform(70, 88)
            if self.lid_open
            else clamp(self.tilt_base_deg + self.rng.gauss(0, 0.15), 0.0, 3.0)
        )
        fields: Fields = {
            "tilt_deg": round(tilt_deg, 1),
            "lid_open": self.lid_open,
            "water_level_cm": round(clamp(self.water_level_cm, 0, 1000), 1),
        }
        if self.has_gas_sensor or self.gas_target_ppm is not None:
            fields["ch4_ppm"] = round(self.ch4_ppm, 1)
        fields["battery_pct"] = round(self.battery_pct)
        return fields

    def report_period_s(self) -> float:
        alarming = (
            self.lid_open
            or self.storm_target_cm is not None
            or self.gas_target_ppm is not None
            or self.water_level_cm > 0.6 * self.depth_cm
            or self.ch4_ppm > 1000
        )
        return ALERT_PERIOD_S if alarming else super().report_period_s()

    def _react(self, stage: str) -> Reaction:
        match stage:
            case "lid_opened":
                self.lid_open = True
                return Reaction(
                    events=({"event": "lid_opened"},),
                    report_now=True,
                    followups=((LID_OPEN_S, "lid_closed"),),
                )
            case "lid_closed":
                self.lid_open = False
                return Reaction(events=({"event": "lid_closed"},), report_now=True)
            case "overflow":
                # A cloudburst: water climbs to near the rim and stays until the storm passes.
                self.storm_target_cm = self.depth_cm * OVERFLOW_PEAK_SHARE
                rise_cm = max(0.0, self.storm_target_cm - self.water_level_cm)
                self.storm_rate_cm_per_s = rise_cm / OVERFLOW_RISE_S
                return Reaction(followups=((OVERFLOW_RISE_S + OVERFLOW_HOLD_S, "overflow_end"),))
            case "overflow_end":
                self.storm_target_cm = None
                self.rain_left_s = 0.0
                return Reaction()
            case "sewer_gas":
                self.gas_target_ppm = self.rng.uniform(6000, 9000)
                return Reaction(followups=((GAS_RISE_S + GAS_HOLD_S, "sewer_gas_end"),))
            case "sewer_gas_end":
                self.gas_target_ppm = None
                return Reaction()
            case _:  # low_battery
                self.battery_pct = min(self.battery_pct, 12.0)
                return Reaction(report_now=True)
