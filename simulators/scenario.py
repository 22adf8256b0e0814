"""Things that go wrong, injected at a simulated time, and which devices they hit."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from simulators.device import Device, DeviceType
from simulators.malformed import malformed_senders


class ScenarioKind(StrEnum):
    FIRE = "fire"
    FALL = "fall"
    SOS = "sos"
    LID_OPENED = "lid_opened"
    OVERFLOW = "overflow"
    SEWER_GAS = "sewer_gas"
    THERMAL_RUNAWAY = "thermal_runaway"
    OVERCURRENT = "overcurrent"
    SHED_SMOKE = "shed_smoke"
    HEART_RATE = "heart_rate"
    WANDER = "wander"
    NO_ACTIVITY = "no_activity"
    LOW_BATTERY = "low_battery"
    SILENT = "silent"
    MALFORMED = "malformed"


_SMOKE, _MANHOLE, _BRACELET, _SHED = (
    DeviceType.SMOKE_DETECTOR,
    DeviceType.MANHOLE_COVER,
    DeviceType.BRACELET,
    DeviceType.CHARGING_SHED,
)

# Which device types a scenario can hit; `silent` and `malformed` are handled by the engine.
TARGET_TYPES: dict[ScenarioKind, tuple[DeviceType, ...]] = {
    ScenarioKind.FIRE: (_SMOKE,),
    ScenarioKind.FALL: (_BRACELET,),
    ScenarioKind.SOS: (_BRACELET,),
    ScenarioKind.LID_OPENED: (_MANHOLE,),
    ScenarioKind.OVERFLOW: (_MANHOLE,),
    ScenarioKind.SEWER_GAS: (_MANHOLE,),
    ScenarioKind.THERMAL_RUNAWAY: (_SHED,),
    ScenarioKind.OVERCURRENT: (_SHED,),
    ScenarioKind.SHED_SMOKE: (_SHED,),
    ScenarioKind.HEART_RATE: (_BRACELET,),
    ScenarioKind.WANDER: (_BRACELET,),
    ScenarioKind.NO_ACTIVITY: (_BRACELET,),
    ScenarioKind.LOW_BATTERY: (_SMOKE, _MANHOLE, _BRACELET),
    ScenarioKind.SILENT: (_SMOKE, _MANHOLE, _BRACELET, _SHED),
    ScenarioKind.MALFORMED: (),
}

# A fire spreads: other detectors in the building alarm this many seconds after the first.
FIRE_SPREAD_S = (20.0, 150.0)


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: ScenarioKind
    at_s: float
    target: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """`kind@seconds[:device_id]`, e.g. `fire@30`, `fall@10:br-hgy-0003`."""
        kind_text, at, rest = text.strip().partition("@")
        if not at:
            raise ValueError(f"scenario {text!r}: expected kind@seconds[:device_id]")
        try:
            kind = ScenarioKind(kind_text)
        except ValueError:
            known = ", ".join(k.value for k in ScenarioKind)
            raise ValueError(f"scenario {text!r}: unknown kind {kind_text!r} ({known})") from None
        seconds_text, _, target = rest.partition(":")
        try:
            at_s = float(seconds_text)
        except ValueError:
            raise ValueError(f"scenario {text!r}: {seconds_text!r} is not seconds") from None
        if not at_s >= 0:
            raise ValueError(f"scenario {text!r}: time must be >= 0 s")
        return cls(kind, at_s, target or None)

    def __str__(self) -> str:
        at = f"{self.at_s:g}"
        return f"{self.kind}@{at}" + (f":{self.target}" if self.target else "")


@dataclass(frozen=True, slots=True)
class Hit:
    """A scenario stage reaching one device (none: fleet-wide) at `at_s` into the run."""

    device_id: str | None
    stage: str
    at_s: float


def resolve(
    scenarios: Sequence[Scenario], devices: Sequence[Device], seed: int
) -> list[tuple[Scenario, list[Hit]]]:
    """Each scenario of a run with the devices it hits, in the order given, chosen the
    same way whichever process asks.

    A `silent` without a target is chosen last, among the devices no other scenario of
    the run hits: a device it silenced would send none of what another scenario asks of
    it. Raises ValueError for a scenario no device of the fleet takes."""
    # Each silent without a target spares what the scenarios resolved before it hit.
    order = sorted(range(len(scenarios)), key=lambda i: _silent_by_default(scenarios[i]))
    hits: dict[int, list[Hit]] = {}
    taken: set[str] = set()
    for i in order:
        hits[i] = _resolve(scenarios[i], devices, seed, frozenset(taken))
        taken.update(h.device_id for h in hits[i] if h.device_id is not None)
        if scenarios[i].kind is ScenarioKind.MALFORMED:
            # Sent as devices of the fleet, which a silent one would not be.
            taken.update(d.device_id for d in malformed_senders(devices) if d is not None)
    return [(scenario, hits[i]) for i, scenario in enumerate(scenarios)]


def _silent_by_default(scenario: Scenario) -> bool:
    return scenario.kind is ScenarioKind.SILENT and scenario.target is None


def _resolve(
    scenario: Scenario, devices: Sequence[Device], seed: int, taken: frozenset[str]
) -> list[Hit]:
    kind = scenario.kind
    if kind is ScenarioKind.MALFORMED:
        return [Hit(None, kind.value, scenario.at_s)]
    targets = _targets(scenario, devices, taken)
    if kind is ScenarioKind.FIRE:
        rng = random.Random(f"{seed}:fire:{scenario}")
        hits = [Hit(targets[0].device_id, kind.value, scenario.at_s)]
        for device in targets[1:]:
            hits.append(
                Hit(device.device_id, kind.value, scenario.at_s + rng.uniform(*FIRE_SPREAD_S))
            )
        return hits
    return [Hit(device.device_id, kind.value, scenario.at_s) for device in targets]


def _targets(scenario: Scenario, devices: Sequence[Device], taken: frozenset[str]) -> list[Device]:
    kind = scenario.kind
    allowed = TARGET_TYPES[kind]
    if scenario.target is not None:
        chosen = next((d for d in devices if d.device_id == scenario.target), None)
        if chosen is None:
            raise ValueError(f"scenario {scenario}: no device {scenario.target!r} in the fleet")
        if chosen.device_type not in allowed:
            names = ", ".join(allowed)
            raise ValueError(f"scenario {scenario}: {chosen.device_id} is not one of {names}")
        if kind is ScenarioKind.FIRE:
            return [chosen, *_same_building(chosen, devices)]
        return [chosen]
    if kind is ScenarioKind.FIRE:
        return _default_fire(scenario, devices)
    if kind in (ScenarioKind.LOW_BATTERY, ScenarioKind.SILENT):
        # One of each type it applies to, so every type's rule gets exercised; a silent
        # one that no other scenario needs to send anything.
        avoid = taken if kind is ScenarioKind.SILENT else frozenset()
        firsts = [
            next((d for d in devices if d.device_type is t and d.device_id not in avoid), None)
            for t in allowed
        ]
        found = [d for d in firsts if d is not None]
        if not found:
            if any(d.device_type in allowed for d in devices):
                raise ValueError(
                    f"scenario {scenario}: every device it applies to is hit by another"
                    " scenario of the run; give it one with :device_id"
                )
            raise ValueError(f"scenario {scenario}: the fleet has no device it applies to")
        return found
    candidates = [d for d in devices if d.device_type in allowed]
    if kind is ScenarioKind.NO_ACTIVITY and candidates:
        # The rule watches only wearers who live alone: another would raise nothing.
        candidates = [d for d in candidates if d.wearer is not None and d.wearer.lives_alone]
        if not candidates:
            raise ValueError(
                f"scenario {scenario}: the fleet has no bracelet whose wearer lives alone; "
                "give one with :device_id"
            )
    if not candidates:
        names = ", ".join(allowed)
        raise ValueError(f"scenario {scenario}: the fleet has no {names}")
    return [candidates[0]]


def _same_building(first: Device, devices: Sequence[Device]) -> list[Device]:
    return [
        d
        for d in devices
        if d.device_type is _SMOKE
        and d.building_key == first.building_key
        and d.device_id != first.device_id
    ]


def _default_fire(scenario: Scenario, devices: Sequence[Device]) -> list[Device]:
    """The first building with a vendor (ACME) detector in it, else the first with any."""
    smoke = [d for d in devices if d.device_type is _SMOKE]
    if not smoke:
        raise ValueError(f"scenario {scenario}: the fleet has no smoke_detector")
    with_vendor = next((d for d in smoke if d.imei is not None), None)
    anchor = with_vendor or smoke[0]
    building = [d for d in smoke if d.building_key == anchor.building_key]
    # The first alarm comes from a plain JSON detector when the building has one.
    building.sort(key=lambda d: d.imei is not None)
    return building
