"""The simulated fleet's registry entries: who each device is and where it sits."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DeviceType(StrEnum):
    SMOKE_DETECTOR = "smoke_detector"
    MANHOLE_COVER = "manhole_cover"
    BRACELET = "bracelet"
    CHARGING_SHED = "charging_shed"


# Typical reporting periods from the device contract.
TYPICAL_PERIOD_S: dict[DeviceType, float] = {
    DeviceType.SMOKE_DETECTOR: 3600.0,
    DeviceType.MANHOLE_COVER: 600.0,
    DeviceType.BRACELET: 60.0,
    DeviceType.CHARGING_SHED: 15.0,
}


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    phone: str


@dataclass(frozen=True, slots=True)
class Wearer:
    """The elderly resident who wears a bracelet."""

    name: str
    phone: str
    home_lat: float
    home_lon: float
    safe_radius_m: float
    lives_alone: bool
    emergency_contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    device_type: DeviceType
    community: str
    area: str
    compound: str
    building: str
    unit: str
    lat: float
    lon: float
    imei: str | None = None
    well_depth_cm: float | None = None
    wearer: Wearer | None = None
    port_count: int | None = None

    @property
    def typical_period_s(self) -> float:
        return TYPICAL_PERIOD_S[self.device_type]

    @property
    def building_key(self) -> tuple[str, str, str]:
        """Buildings are named per compound; this names one across the fleet."""
        return (self.community, self.compound, self.building)
