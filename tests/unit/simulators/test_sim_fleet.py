from __future__ import annotations

import csv
import io
import re
from collections import Counter

import pytest

from simulators import REGISTRY_COLUMNS, DeviceType, Fleet

HEADER = (
    "device_id,device_type,community,area,compound,building,unit,lat,lon,imei,well_depth_cm,"
    "home_lat,home_lon,safe_radius_m,lives_alone,wearer_name,wearer_phone,emergency_contacts,"
    "thresholds"
)


def test_same_seed_same_fleet() -> None:
    a = Fleet.build(seed=3, devices=50)
    b = Fleet.build(seed=3, devices=50)
    assert a == b
    assert a.registry_csv().encode() == b.registry_csv().encode()
    assert Fleet.build(seed=4, devices=50).registry_csv() != a.registry_csv()


def test_devices_spread_over_communities_and_types(fleet: Fleet) -> None:
    assert len(fleet.devices) == 60
    communities = Counter(d.community for d in fleet.devices)
    assert communities == {"huguangyuan": 20, "lvyun": 20, "yingxiange": 20}
    types = Counter(d.device_type for d in fleet.devices)
    assert types[DeviceType.SMOKE_DETECTOR] > types[DeviceType.BRACELET]
    assert types[DeviceType.BRACELET] > types[DeviceType.CHARGING_SHED] >= 3
    assert types[DeviceType.MANHOLE_COVER] >= 3
    vendor = [d for d in fleet.devices if d.imei]
    assert vendor and all(d.device_type is DeviceType.SMOKE_DETECTOR for d in vendor)
    assert all(re.fullmatch(r"\d{15}", d.imei or "") for d in vendor)
    assert len({d.device_id for d in fleet.devices}) == 60
    for d in fleet.devices:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", d.device_id)
        assert re.fullmatch(r"[a-z0-9-]{1,32}", d.community)
        assert 34.0 < d.lat < 35.2 and 112.5 < d.lon < 114.3  # Zhengzhou / Dengfeng
        assert d.area and d.compound and d.building
    sheds = [d for d in fleet.devices if d.device_type is DeviceType.CHARGING_SHED]
    assert all(4 <= (d.port_count or 0) <= 12 for d in sheds)


def test_more_communities_get_generated_names() -> None:
    fleet = Fleet.build(seed=1, devices=10, communities=5)
    names = list(dict.fromkeys(d.community for d in fleet.devices))
    assert names == ["huguangyuan", "lvyun", "yingxiange", "community-4", "community-5"]
    custom = Fleet.build(seed=1, devices=4, community_names=["jinkeyuan"])
    assert {d.community for d in custom.devices} == {"jinkeyuan"}
    with pytest.raises(ValueError):
        Fleet.build(seed=1, devices=4, community_names=["Bad Name"])


def test_registry_csv_header_and_cells(fleet: Fleet) -> None:
    text = fleet.registry_csv()
    assert text.splitlines()[0] == HEADER
    assert ",".join(REGISTRY_COLUMNS) == HEADER
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["device_id"] for r in rows] == [d.device_id for d in fleet.devices]
    for row in rows:
        float(row["lat"]), float(row["lon"])
        kind = row["device_type"]
        assert bool(row["imei"]) == (
            row["device_id"] in {d.device_id for d in fleet.devices if d.imei}
        )
        assert bool(row["well_depth_cm"]) == (kind == "manhole_cover")
        wearer_cells = ("home_lat", "home_lon", "safe_radius_m", "lives_alone", "wearer_name",
                        "wearer_phone", "emergency_contacts")  # fmt: skip
        if kind == "bracelet":
            assert row["lives_alone"] in ("true", "false")
            assert float(row["safe_radius_m"]) > 0
            assert re.fullmatch(r"1\d{10}", row["wearer_phone"])
            assert re.search(r"[\u4e00-\u9fff]", row["wearer_name"])
            for contact in row["emergency_contacts"].split(";"):
                name, phone = contact.split(":")
                assert name and re.fullmatch(r"1\d{10}", phone)
        else:
            assert all(row[c] == "" for c in wearer_cells)
        if kind == "manhole_cover":
            assert 100 <= float(row["well_depth_cm"]) <= 500
