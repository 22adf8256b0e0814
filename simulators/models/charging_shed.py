"""电动车充电棚: an e-bike charging shed with 4-12 metered ports, reporting every 15 s."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulators.device import Device
from simulators.models.model import DeviceModel, Fields, Reaction, clamp, local_hour

PORT_TIME_CONSTANT_S = 600.0  # how fast a port's connector follows its load
HEATING_C_PER_W = 0.06  # ~200 W of charging warms a port by ~12 °C
OVERCURRENT_TRIP_S = 90.0  # the shed's breaker cuts an over-current port after this


@dataclass(slots=True)
class Port:
    number: int
    charging: bool = False
    left_s: float = 0.0
    session_s: float = 1.0
    max_current_a: float = 0.0
    current_a: float = 0.0
    voltage_v: float = 0.0
    temperature_c: float = 20.0
    runaway_s: float | None = None
    fault_current_a: float | None = None

    @property
    def power_w(self) -> float:
        return self.voltage_v * self.current_a


class ChargingShedModel(DeviceModel):
    stages = frozenset({"thermal_runaway", "overcurrent", "overcurrent_trip", "shed_smoke"})

    def __init__(self, device: Device, rng: random.Random, start_ms: int) -> None:
        super().__init__(device, rng, start_ms)
        self.ambient_offset_c = rng.uniform(-1.5, 1.5)
        self.ambient_c = self._ambient_target_c()
        self.smoke = False
        self.ports = [Port(n) for n in range(1, (device.port_count or 8) + 1)]
        for port in self.ports:
            port.temperature_c = self.ambient_c
            # Some bikes are already on charge, part of the way through.
            if rng.random() < 0.45:
                self._plug_in(port)
                port.left_s = rng.uniform(0.1, 1.0) * port.session_s
                port.current_a = self._session_current_a(port)
                port.temperature_c = self._port_target_c(port)
        self.hot_port: Port = rng.choice(self.ports)

    def _ambient_target_c(self) -> float:
        swing = 5.0 * math.sin(2 * math.pi * (local_hour(self.now_ms) - 9) / 24)
        return 22.0 + self.ambient_offset_c + swing

    def _plug_in(self, port: Port) -> None:
        port.charging = True
        port.session_s = self.rng.uniform(2 * 3600, 6 * 3600)
        port.left_s = port.session_s
        port.max_current_a = self.rng.uniform(2.0, 4.0)
        port.voltage_v = self.rng.uniform(48.0, 60.0)

    def _session_current_a(self, port: Port) -> float:
        # Constant current, then tapering in the last 30% as the pack fills up.
        share_left = port.left_s / port.session_s
        taper = 1.0 if share_left > 0.3 else 0.5 + 0.5 * share_left / 0.3
        return clamp(port.max_current_a * taper + self.rng.gauss(0, 0.03), 1.5, 4.0)

    def _port_target_c(self, port: Port) -> float:
        return self.ambient_c + HEATING_C_PER_W * port.power_w

    def _plug_in_chance_per_h(self) -> float:
        hour = local_hour(self.now_ms)
        # Residents plug in after work and overnight.
        return 1.0 if 18 <= hour < 23 else 0.15

    def _evolve(self, dt_s: float) -> None:
        ambient_target = self._ambient_target_c() + (6.0 if self.smoke else 0.0)
        self.ambient_c += (ambient_target - self.ambient_c) * (1 - math.exp(-dt_s / 900))
        for port in self.ports:
            self._evolve_port(port, dt_s)
        if any(p.runaway_s is not None and p.temperature_c > 180 for p in self.ports):
            self.smoke = True  # the pack has vented

    def _evolve_port(self, port: Port, dt_s: float) -> None:
        if port.runaway_s is not None:
            # Self-heating accelerates: ≥ 6 °C/min from the start, faster each minute.
            start_c = port.temperature_c
            before_min = port.runaway_s / 60
            port.runaway_s += dt_s
            after_min = port.runaway_s / 60
            rise_c = 6 * (after_min - before_min) + 3 * (after_min**2 - before_min**2)
            port.temperature_c = min(600.0, start_c + rise_c)
            port.current_a = clamp(port.current_a + self.rng.gauss(0, 0.05), 1.5, 6.0)
            return
        if port.fault_current_a is not None:
            port.current_a = port.fault_current_a + self.rng.gauss(0, 0.2)
        elif port.charging:
            port.left_s -= dt_s
            if port.left_s <= 0:
                port.charging, port.current_a, port.voltage_v = False, 0.0, 0.0
            else:
                port.current_a = self._session_current_a(port)
        elif self.rng.random() < self._plug_in_chance_per_h() * dt_s / 3600:
            self._plug_in(port)
            port.current_a = self._session_current_a(port)
        follow = 1 - math.exp(-dt_s / PORT_TIME_CONSTANT_S)
        port.temperature_c += (self._port_target_c(port) - port.temperature_c) * follow

    def reading(self) -> Fields:
        ports = [
            {
                "port": port.number,
                "charging": port.charging,
                "current_a": round(port.current_a, 2),
                "voltage_v": round(port.voltage_v, 1),
                "power_w": round(port.power_w, 1),
                "temperature_c": round(port.temperature_c + self.rng.gauss(0, 0.1), 1),
            }
            for port in self.ports
        ]
        return {"ambient_temp_c": round(self.ambient_c, 1), "smoke": self.smoke, "ports": ports}

    def _react(self, stage: str) -> Reaction:
        port = self.hot_port
        match stage:
            case "thermal_runaway":
                if not port.charging:
                    self._plug_in(port)
                    port.current_a = self._session_current_a(port)
                port.runaway_s = 0.0
                return Reaction(report_now=True)
            case "overcurrent":
                if not port.charging:
                    self._plug_in(port)
                port.fault_current_a = self.rng.uniform(12.0, 15.0)
                port.current_a = port.fault_current_a
                return Reaction(
                    events=({"event": "overcurrent", "port": port.number},),
                    report_now=True,
                    followups=((OVERCURRENT_TRIP_S, "overcurrent_trip"),),
                )
            case "overcurrent_trip":
                port.fault_current_a = None
                port.charging, port.current_a, port.voltage_v = False, 0.0, 0.0
                return Reaction(events=({"event": "power_cut", "port": port.number},))
            case _:  # shed_smoke
                self.smoke = True
                return Reaction(events=({"event": "smoke_alarm"},), report_now=True)
