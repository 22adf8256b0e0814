"""智能手环: a bracelet worn by an elderly resident, reporting every minute."""

from __future__ import annotations

import math
import random

from simulators.device import Device, Wearer
from simulators.layout import offset
from simulators.models.model import DeviceModel, Fields, Reaction, clamp, local_day, local_hour

BATTERY_DRAIN_PCT_PER_H = 0.6  # about a week on a full charge
CHARGE_PCT_PER_H = 35.0  # flat to full in about three hours
# A wearer takes the bracelet off at bedtime to charge it when its gauge reads below
# their own habit, drawn from this range: every three to five nights, never so late
# that it warns of a low battery.
CHARGE_BELOW_PCT = (35.0, 60.0)
WAKE_H = 7.0
BED_H = 21.0
WALK_CHANCE_PER_H = 1 / 3  # a stroll every three waking hours or so
WALK_SPEED_M_S = 0.9
WALK_STEPS_PER_MIN = (80.0, 110.0)
POTTER_STEPS_PER_MIN = (0.0, 12.0)  # moving about the flat
GPS_NOISE_M = 4.0
ABNORMAL_HR_S = 5 * 60
LOW_BATTERY_PCT = 12.0


class BraceletModel(DeviceModel):
    stages = frozenset(
        {"fall", "sos", "heart_rate", "heart_rate_end", "wander", "no_activity", "low_battery"}
    )

    def __init__(self, device: Device, rng: random.Random, start_ms: int) -> None:
        super().__init__(device, rng, start_ms)
        self.wearer: Wearer = device.wearer or Wearer(
            "", "", device.lat, device.lon, 500.0, False, ()
        )
        self.lat, self.lon = self.wearer.home_lat, self.wearer.home_lon
        self.hr_base_bpm = rng.uniform(62.0, 78.0)
        self.hr_bpm = self.hr_base_bpm
        self.spo2_pct = rng.randint(95, 99)
        self.battery_pct = rng.uniform(35.0, 100.0)
        self.day = local_day(start_ms)
        # Steps so far today, as if the day had gone normally up to now.
        self.steps = rng.uniform(900, 1500) * clamp(local_hour(start_ms) - 7, 0, 14) / 2
        self.worn = True
        self.walk_left_s = 0.0
        self.walk_out_s = 0.0
        self.walk_bearing = 0.0
        self.wandering = False
        self.still = False  # no_activity: lying at home, not a step
        self.abnormal_hr_bpm: float | None = None
        self.charge_below_pct = rng.uniform(*CHARGE_BELOW_PCT)
        self.charging = False

    # --- evolution ---

    def _evolve(self, dt_s: float) -> None:
        today = local_day(self.now_ms)
        if today != self.day:
            self.day, self.steps = today, 0.0
        hour = local_hour(self.now_ms)
        awake = WAKE_H <= hour < BED_H
        self._evolve_battery(dt_s, hour, awake)
        moving = False
        if self.still:
            pass
        elif self.wandering:
            self._move(self.walk_bearing, WALK_SPEED_M_S * dt_s)
            moving = True
        elif self.walk_left_s > 0:
            self._walk(dt_s)
            moving = True
        elif awake:
            self.steps += self.rng.uniform(*POTTER_STEPS_PER_MIN) * dt_s / 60
            if self.rng.random() < WALK_CHANCE_PER_H * dt_s / 3600:
                self._start_walk()
        if moving:
            self.steps += self.rng.uniform(*WALK_STEPS_PER_MIN) * dt_s / 60
        self._evolve_heart(dt_s, moving)

    def _evolve_battery(self, dt_s: float, hour: float, awake: bool) -> None:
        if self.charging:
            self.battery_pct = min(100.0, self.battery_pct + CHARGE_PCT_PER_H * dt_s / 3600)
            if awake:
                # Back on the wrist in the morning.
                self.charging, self.worn = False, True
            return
        self.battery_pct = max(0.0, self.battery_pct - BATTERY_DRAIN_PCT_PER_H * dt_s / 3600)
        bedtime = BED_H <= hour < BED_H + 1
        at_home = not (self.still or self.wandering or self.walk_left_s > 0)
        if bedtime and at_home and self.battery_pct < self.charge_below_pct:
            self.charging, self.worn = True, False

    def _start_walk(self) -> None:
        # Out and back along one bearing, never further than 60% of the safe radius.
        duration_s = self.rng.uniform(10 * 60, 40 * 60)
        reach_m = min(WALK_SPEED_M_S * duration_s / 2, 0.6 * self.wearer.safe_radius_m)
        self.walk_out_s = reach_m / WALK_SPEED_M_S
        self.walk_left_s = 2 * self.walk_out_s
        self.walk_bearing = self.rng.uniform(0, 2 * math.pi)

    def _walk(self, dt_s: float) -> None:
        self.walk_left_s = max(0.0, self.walk_left_s - dt_s)
        elapsed = 2 * self.walk_out_s - self.walk_left_s
        along_m = WALK_SPEED_M_S * min(elapsed, 2 * self.walk_out_s - elapsed)
        if self.walk_left_s <= 0:
            self.lat, self.lon = self.wearer.home_lat, self.wearer.home_lon
            return
        self.lat, self.lon = offset(
            self.wearer.home_lat,
            self.wearer.home_lon,
            along_m * math.cos(self.walk_bearing),
            along_m * math.sin(self.walk_bearing),
        )

    def _move(self, bearing: float, metres: float) -> None:
        self.lat, self.lon = offset(
            self.lat, self.lon, metres * math.cos(bearing), metres * math.sin(bearing)
        )

    def _evolve_heart(self, dt_s: float, moving: bool) -> None:
        self.hr_base_bpm = clamp(
            self.hr_base_bpm + self.rng.gauss(0, 0.3 * math.sqrt(dt_s / 60)), 60.0, 80.0
        )
        target = self.hr_base_bpm + (18.0 if moving else 0.0)
        settle = 1 - math.exp(-dt_s / 120)
        self.hr_bpm = self.hr_bpm + (target - self.hr_bpm) * settle + self.rng.gauss(0, 1.0)
        self.hr_bpm = clamp(self.hr_bpm, 55.0, 100.0)

    # --- reports ---

    def position(self) -> tuple[float, float]:
        north_m, east_m = self.rng.gauss(0, GPS_NOISE_M), self.rng.gauss(0, GPS_NOISE_M)
        lat, lon = offset(self.lat, self.lon, north_m, east_m)
        return round(lat, 6), round(lon, 6)

    def reading(self) -> Fields:
        lat, lon = self.position()
        if self.abnormal_hr_bpm is not None:
            heart_rate = self.abnormal_hr_bpm + self.rng.gauss(0, 2)
        else:
            heart_rate = self.hr_bpm
        return {
            "heart_rate_bpm": round(clamp(heart_rate, 0, 250)),
            "spo2_pct": self.spo2_pct - self.rng.randint(0, 1),
            "steps": int(self.steps),
            "lat": lat,
            "lon": lon,
            "worn": self.worn,
            "battery_pct": round(self.battery_pct),
        }

    # --- scenarios ---

    def _react(self, stage: str) -> Reaction:
        # Whatever befalls the wearer, the bracelet is on them; one on the charger would
        # not see it.
        self.charging, self.worn = False, True
        match stage:
            case "fall" | "sos":
                lat, lon = self.position()
                self.walk_left_s = 0.0
                event: Fields = {"event": stage}
                if stage == "fall":
                    event["confidence"] = 0.9
                event |= {"lat": lat, "lon": lon}
                return Reaction(events=(event,))
            case "heart_rate":
                # Bradycardia or tachycardia, held long enough for the 60 s rule.
                high = self.rng.random() < 0.5
                self.abnormal_hr_bpm = (
                    self.rng.uniform(160, 175) if high else self.rng.uniform(32, 37)
                )
                return Reaction(report_now=True, followups=((ABNORMAL_HR_S, "heart_rate_end"),))
            case "heart_rate_end":
                self.abnormal_hr_bpm = None
                return Reaction(report_now=True)
            case "wander":
                # Already out on a walk near the edge of the safe area, and keeps going.
                self.walk_left_s = 0.0
                self.wandering = True
                self.walk_bearing = self.rng.uniform(0, 2 * math.pi)
                edge_m = 0.85 * self.wearer.safe_radius_m
                self.lat, self.lon = offset(
                    self.wearer.home_lat,
                    self.wearer.home_lon,
                    edge_m * math.cos(self.walk_bearing),
                    edge_m * math.sin(self.walk_bearing),
                )
                return Reaction(report_now=True)
            case "no_activity":
                self.still = True
                self.walk_left_s = 0.0
                self.wandering = False
                self.lat, self.lon = self.wearer.home_lat, self.wearer.home_lon
                return Reaction()
            case _:  # low_battery
                self.battery_pct = min(self.battery_pct, LOW_BATTERY_PCT)
                return Reaction(report_now=True)
