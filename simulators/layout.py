"""Where a community's buildings and devices are: names, grid cells and coordinates."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

COMMUNITY_NAME = re.compile(r"[a-z0-9-]{1,32}")

METRES_PER_DEGREE_LAT = 111_320.0


@dataclass(frozen=True, slots=True)
class Site:
    """A community: its topic name, the short code in device ids, and its centre."""

    name: str
    code: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Building:
    area: str
    compound: str
    building: str
    lat: float
    lon: float


# The three communities of the case documents, placed where they are (Zhengzhou, Dengfeng).
KNOWN_SITES: dict[str, Site] = {
    "huguangyuan": Site("huguangyuan", "hgy", 34.7962, 113.6606),
    "lvyun": Site("lvyun", "lvy", 34.7431, 113.7128),
    "yingxiange": Site("yingxiange", "yxg", 34.4557, 113.0478),
}
DEFAULT_NAMES = ("huguangyuan", "lvyun", "yingxiange")
ZHENGZHOU = (34.7466, 113.6253)


def community_names(count: int) -> list[str]:
    return [
        DEFAULT_NAMES[i] if i < len(DEFAULT_NAMES) else f"community-{i + 1}" for i in range(count)
    ]


def site_for(name: str, index: int) -> Site:
    if not COMMUNITY_NAME.fullmatch(name):
        raise ValueError(f"community name {name!r} must match [a-z0-9-]{{1,32}}")
    if name in KNOWN_SITES:
        return KNOWN_SITES[name]
    # Other communities spread over the city on a golden-angle spiral, a few km apart.
    angle = index * 2.399963
    radius_deg = 0.03 + 0.012 * math.sqrt(index)
    code = f"c{index + 1}" if name.startswith("community-") else name
    return Site(
        name,
        code,
        round(ZHENGZHOU[0] + radius_deg * math.sin(angle), 6),
        round(ZHENGZHOU[1] + radius_deg * math.cos(angle), 6),
    )


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """A point `north_m` north and `east_m` east of (lat, lon); fine at community scale."""
    dlat = north_m / METRES_PER_DEGREE_LAT
    dlon = east_m / (METRES_PER_DEGREE_LAT * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance."""
    r_m = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r_m * math.asin(math.sqrt(h))


def plan_buildings(site: Site, device_count: int, rng: random.Random) -> list[Building]:
    """Three-level grid: 片区 area -> 小区 compound -> 楼栋 building.

    About eight devices per building, up to six buildings per compound and three
    compounds per area, so a building has several smoke detectors to set off together.
    """
    building_count = max(1, math.ceil(device_count / 8))
    compound_count = max(1, math.ceil(building_count / 6))
    area_count = max(1, math.ceil(compound_count / 3))
    compound_centres = []
    for c in range(compound_count):
        bearing = 2 * math.pi * c / compound_count + rng.uniform(-0.3, 0.3)
        reach_m = 0.0 if compound_count == 1 else rng.uniform(180, 320)
        compound_centres.append(
            offset(site.lat, site.lon, reach_m * math.cos(bearing), reach_m * math.sin(bearing))
        )
    buildings = []
    for b in range(building_count):
        c = b * compound_count // building_count
        a = c * area_count // compound_count
        lat, lon = offset(*compound_centres[c], rng.uniform(-90, 90), rng.uniform(-90, 90))
        buildings.append(
            Building(
                area=f"area-{a + 1}",
                compound=f"compound-{c + 1}",
                building=f"building-{b + 1}",
                lat=round(lat, 6),
                lon=round(lon, 6),
            )
        )
    return buildings
