"""A seeded fleet of devices spread over communities, and the traffic it sends."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from gateway.registry import COLUMNS as REGISTRY_COLUMNS
from simulators.acme import imei_check_digit
from simulators.device import Device, DeviceType
from simulators.layout import Building, Site, community_names, offset, plan_buildings, site_for
from simulators.message import SimMessage
from simulators.people import make_wearer
from simulators.scenario import Scenario
from simulators.simulation import Simulation, last_will, online_status

# The mix of a typical community: detectors in every stairwell, bracelets for some of the
# elderly, covers along the roads, a few e-bike sheds.
TYPE_SHARES: dict[DeviceType, float] = {
    DeviceType.SMOKE_DETECTOR: 0.50,
    DeviceType.BRACELET: 0.22,
    DeviceType.MANHOLE_COVER: 0.18,
    DeviceType.CHARGING_SHED: 0.10,
}
ID_PREFIX: dict[DeviceType, str] = {
    DeviceType.SMOKE_DETECTOR: "sd",
    DeviceType.BRACELET: "br",
    DeviceType.MANHOLE_COVER: "mh",
    DeviceType.CHARGING_SHED: "cs",
}
# About one detector in four reaches us through the carrier's NB-IoT platform.
VENDOR_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class Shard:
    """Which devices one worker process sends for: every `count`-th, from `index`."""

    index: int = 0
    count: int = 1

    def owns(self, device_index: int) -> bool:
        return device_index % self.count == self.index


@dataclass(frozen=True, slots=True)
class Fleet:
    seed: int
    devices: tuple[Device, ...]
    shard: Shard = Shard()

    @classmethod
    def build(
        cls,
        *,
        seed: int,
        devices: int,
        communities: int = 3,
        community_names: Sequence[str] | None = None,
    ) -> Fleet:
        if devices < 1:
            raise ValueError("a fleet needs at least one device")
        names = list(community_names) if community_names else _default_names(communities)
        if len(set(names)) != len(names):
            raise ValueError(f"community names repeat: {names}")
        sites = [site_for(name, i) for i, name in enumerate(names)]
        rng = random.Random(f"fleet:{seed}")
        per_site = [
            devices // len(sites) + (1 if i < devices % len(sites) else 0)
            for i in range(len(sites))
        ]
        built: list[Device] = []
        imeis: set[str] = set()
        for site, count in zip(sites, per_site, strict=True):
            if count:
                built.extend(_community_devices(site, count, rng, imeis))
        if not imeis:
            _give_one_vendor(built, random.Random(f"fleet:{seed}:vendor"), imeis)
        return cls(seed=seed, devices=tuple(built))

    def sharded(self, index: int, count: int) -> Fleet:
        if not 0 <= index < count:
            raise ValueError(f"shard {index} of {count} does not exist")
        return Fleet(self.seed, self.devices, Shard(index, count))

    @property
    def local_devices(self) -> tuple[Device, ...]:
        return tuple(d for i, d in enumerate(self.devices) if self.shard.owns(i))

    def device(self, device_id: str) -> Device:
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise KeyError(device_id)

    # --- registry ---

    def registry_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(REGISTRY_COLUMNS)
        for d in self.devices:
            w = d.wearer
            writer.writerow(
                [
                    d.device_id,
                    d.device_type.value,
                    d.community,
                    d.area,
                    d.compound,
                    d.building,
                    d.unit,
                    f"{d.lat:.6f}",
                    f"{d.lon:.6f}",
                    d.imei or "",
                    "" if d.well_depth_cm is None else f"{d.well_depth_cm:g}",
                    "" if w is None else f"{w.home_lat:.6f}",
                    "" if w is None else f"{w.home_lon:.6f}",
                    "" if w is None else f"{w.safe_radius_m:g}",
                    "" if w is None else ("true" if w.lives_alone else "false"),
                    "" if w is None else w.name,
                    "" if w is None else w.phone,
                    ""
                    if w is None
                    else ";".join(f"{c.name}:{c.phone}" for c in w.emergency_contacts),
                    "",  # thresholds: the rules' defaults
                ]
            )
        return out.getvalue()

    # --- traffic ---

    def messages(
        self,
        *,
        start_ms: int,
        duration_s: float,
        scenarios: Sequence[Scenario] = (),
        period_scale: float = 1.0,
    ) -> Iterator[SimMessage]:
        """Each device at its typical period × `period_scale`, with scenarios, in time order."""
        return self._simulation(start_ms, scenarios, period_scale).scheduled(duration_s)

    def stream(
        self,
        *,
        rate_msg_s: float,
        start_ms: int,
        scenarios: Sequence[Scenario] = (),
    ) -> Iterator[SimMessage]:
        """Endless telemetry, device after device, `rate_msg_s` in all, with scenarios."""
        return self._simulation(start_ms, scenarios, 1.0).streamed(rate_msg_s)

    def status_messages(self, start_ms: int) -> list[SimMessage]:
        return [online_status(d, start_ms) for d in self.local_devices]

    def last_will(self, device: Device | str, time_ms: int = 0) -> SimMessage:
        return last_will(self.device(device) if isinstance(device, str) else device, time_ms)

    def _simulation(
        self, start_ms: int, scenarios: Sequence[Scenario], period_scale: float
    ) -> Simulation:
        return Simulation(
            self.devices,
            seed=self.seed,
            start_ms=start_ms,
            owned=[i for i in range(len(self.devices)) if self.shard.owns(i)],
            scenarios=scenarios,
            period_scale=period_scale,
            sends_fleet_wide=self.shard.index == 0,
        )


def _default_names(count: int) -> list[str]:
    if count < 1:
        raise ValueError("a fleet needs at least one community")
    return community_names(count)


def _type_counts(count: int) -> dict[DeviceType, int]:
    """Largest-remainder split of `count` by TYPE_SHARES, every type present from four."""
    exact = {t: share * count for t, share in TYPE_SHARES.items()}
    counts = {t: math.floor(v) for t, v in exact.items()}
    by_remainder = sorted(TYPE_SHARES, key=lambda t: exact[t] - counts[t], reverse=True)
    for t in by_remainder[: count - sum(counts.values())]:
        counts[t] += 1
    if count >= len(TYPE_SHARES):
        for t in TYPE_SHARES:
            if counts[t] == 0:
                richest = max(counts, key=lambda k: counts[k])
                counts[richest] -= 1
                counts[t] = 1
    return counts


def _community_devices(site: Site, count: int, rng: random.Random, imeis: set[str]) -> list[Device]:
    buildings = plan_buildings(site, count, rng)
    counts = _type_counts(count)
    devices: list[Device] = []
    for device_type in (
        DeviceType.SMOKE_DETECTOR,
        DeviceType.MANHOLE_COVER,
        DeviceType.BRACELET,
        DeviceType.CHARGING_SHED,
    ):
        total = counts[device_type]
        vendor_count = 0
        if device_type is DeviceType.SMOKE_DETECTOR:
            vendor_count = max(1 if total >= 2 else 0, round(total * VENDOR_SHARE))
        # Spread vendor detectors over the list rather than bunching them at the end.
        vendor_at = (
            {round((k + 0.5) * total / vendor_count) for k in range(vendor_count)}
            if vendor_count
            else set()
        )
        for n in range(total):
            device_id = f"{ID_PREFIX[device_type]}-{site.code}-{n + 1:04d}"
            building = (
                buildings[n % len(buildings)]
                if device_type is DeviceType.SMOKE_DETECTOR
                else rng.choice(buildings)
            )
            devices.append(
                _make_device(
                    device_id, device_type, site, building, rng, imeis, vendor=n in vendor_at
                )
            )
    return devices


def _give_one_vendor(devices: list[Device], rng: random.Random, imeis: set[str]) -> None:
    """Make the first detector of a fleet too small for one in four an ACME one, so
    that the vendor protocol (and `malformed`'s bad frames) reaches a registered IMEI;
    unless it is the fleet's only device, which must speak JSON. Its own random
    numbers leave every other device as it was."""
    if len(devices) < 2:
        return
    for i, device in enumerate(devices):
        if device.device_type is DeviceType.SMOKE_DETECTOR:
            devices[i] = dataclasses.replace(device, imei=_new_imei(rng, imeis))
            return


def _make_device(
    device_id: str,
    device_type: DeviceType,
    site: Site,
    building: Building,
    rng: random.Random,
    imeis: set[str],
    *,
    vendor: bool,
) -> Device:
    unit = ""
    imei = None
    well_depth_cm = None
    wearer = None
    port_count = None
    lat, lon = building.lat, building.lon
    match device_type:
        case DeviceType.SMOKE_DETECTOR:
            unit = str(rng.randint(1, 4))
            lat, lon = offset(lat, lon, rng.uniform(-12, 12), rng.uniform(-12, 12))
            if vendor:
                imei = _new_imei(rng, imeis)
        case DeviceType.BRACELET:
            unit = str(rng.randint(1, 4))
            wearer = make_wearer(rng, building.lat, building.lon)
        case DeviceType.MANHOLE_COVER:
            # Along the roads between buildings.
            lat, lon = offset(lat, lon, rng.uniform(-60, 60), rng.uniform(-60, 60))
            well_depth_cm = float(rng.randrange(150, 410, 10))
        case DeviceType.CHARGING_SHED:
            lat, lon = offset(lat, lon, rng.uniform(20, 40), rng.uniform(-30, 30))
            port_count = rng.randint(4, 12)
    return Device(
        device_id=device_id,
        device_type=device_type,
        community=site.name,
        area=building.area,
        compound=building.compound,
        building=building.building,
        unit=unit,
        lat=round(lat, 6),
        lon=round(lon, 6),
        imei=imei,
        well_depth_cm=well_depth_cm,
        wearer=wearer,
        port_count=port_count,
    )


def _new_imei(rng: random.Random, taken: set[str]) -> str:
    while True:
        # 86: a Type Allocation Code range used by Chinese NB-IoT module makers.
        body = "86" + "".join(str(rng.randrange(10)) for _ in range(12))
        imei = body + imei_check_digit(body)
        if imei not in taken:
            taken.add(imei)
            return imei
