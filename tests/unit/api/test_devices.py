from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.registry import RegisteredDevice
from tests.unit.api.conftest import (
    ADMIN,
    DESK_HGY,
    OPERATOR,
    REGISTRY,
    T0,
    TWO_COMMUNITIES,
    WORKER,
    Site,
    count_alerts_read,
    district,
    open_site,
)

# Device ids repeat across communities: each is one of its community.
ANOTHER_COMMUNITY = REGISTRY + "".join(
    f"{device_id},smoke_detector,lgy,north,pine,7,,30.10,120.10,,,,,\n"
    for device_id in ("sd-2", "sd-1")
)
MANHOLE = {"tilt_deg": 1.0, "lid_open": False, "water_level_cm": 10.0, "battery_pct": 80}


def ids(body: dict[str, object]) -> list[str]:
    devices = body["devices"]
    assert isinstance(devices, list)
    return [f"{d['community']}/{d['device_id']}" for d in devices]


async def test_devices_with_latest_values_state_and_filters(site: Site) -> None:
    await site.send("community/hgy/smoke_detector/sd-1/telemetry",
                    {"ts": T0, "obscuration_pct_per_m": 0.1, "temperature_c": 21.5,
                     "battery_pct": 90, "alarm": False})  # fmt: skip
    await site.fall("br-1")
    await site.send("community/hgy/smoke_detector/sd-2/status", {"ts": T0, "online": False})
    listed = (await site.get("/api/v1/devices?community=hgy")).json()
    by_id = {d["device_id"]: d for d in listed["devices"]}
    assert listed["total"] == 4
    assert by_id["sd-1"]["latest"]["fields"]["temperature_c"] == 21.5
    assert (by_id["sd-1"]["state"], by_id["sd-1"]["online"]) == ("normal", True)
    assert by_id["br-1"]["state"] == "alarm"
    assert by_id["sd-2"]["state"] == "offline"
    assert by_id["br-2"]["last_seen_ms"] is None
    alarmed = (await site.get("/api/v1/devices?state=alarm")).json()["devices"]
    assert [d["device_id"] for d in alarmed] == ["br-1"]
    smoke = (await site.get("/api/v1/devices?device_type=smoke_detector&building=3")).json()
    assert [d["device_id"] for d in smoke["devices"]] == ["sd-1", "sd-2"]
    west = (await site.get("/api/v1/devices?area=west")).json()["devices"]
    assert [d["device_id"] for d in west] == ["br-2"]
    page = (await site.get("/api/v1/devices?limit=1&offset=1")).json()
    assert (page["total"], [d["device_id"] for d in page["devices"]]) == (4, ["br-2"])


async def test_an_unregistered_device_heard_from_is_listed_too(site: Site) -> None:
    await site.send("community/hgy/manhole_cover/mc-7/telemetry",
                    {"ts": T0, "tilt_deg": 1.0, "lid_open": False, "water_level_cm": 10.0,
                     "battery_pct": 80})  # fmt: skip
    device = (await site.get("/api/v1/devices/hgy/mc-7")).json()
    assert (device["registered"], device["device_type"]) == (False, "manhole_cover")


async def test_personal_data_is_masked_for_operators_and_whole_for_admin(site: Site) -> None:
    masked = (await site.get("/api/v1/devices/hgy/br-1", OPERATOR)).json()["wearer"]
    assert masked == {
        "name": "张*明", "phone": "138****5678", "masked": True,
        "emergency_contacts": [{"name": "李*", "phone": "139****4321"}],
    }  # fmt: skip
    assert (await site.get("/api/v1/audit")).json() == []
    whole = (await site.get("/api/v1/devices/hgy/br-1", ADMIN)).json()["wearer"]
    assert (whole["name"], whole["phone"], whole["masked"]) == ("张三明", "+8613812345678", False)
    (entry,) = (await site.get("/api/v1/audit")).json()
    assert (entry["actor"], entry["role"], entry["device_id"]) == ("root", "admin", "br-1")
    assert entry["via"] == "GET /api/v1/devices/hgy/br-1"
    assert entry["at_ms"] == T0


async def test_a_grid_worker_sees_whole_personal_data_of_their_cells_only(site: Site) -> None:
    mine = await site.fall("br-1")
    theirs = await site.fall("br-2")
    detail = (await site.get(f"/api/v1/alerts/{mine}", WORKER)).json()
    assert detail["wearer"]["phone"] == "+8613812345678"
    operator_view = (await site.get(f"/api/v1/alerts/{theirs}", OPERATOR)).json()
    assert operator_view["wearer"] == {
        "name": "王*", "phone": "137****1111", "masked": True, "emergency_contacts": [],
    }  # fmt: skip
    audit = (await site.get("/api/v1/audit?actor=wang-fang")).json()
    assert [(e["role"], e["device_id"]) for e in audit] == [("grid_worker", "br-1")]
    # The audit is for admin only.
    assert (await site.get("/api/v1/audit", OPERATOR)).status_code == 403


async def test_every_whole_read_in_a_list_is_audited(site: Site) -> None:
    await site.get("/api/v1/devices", ADMIN)
    audit = (await site.get("/api/v1/audit")).json()
    # The two bracelets carry personal data; the smoke detectors none.
    assert sorted(e["device_id"] for e in audit) == ["br-1", "br-2"]


async def test_an_unknown_device_is_404(site: Site) -> None:
    response = await site.get("/api/v1/devices/hgy/nope")
    assert (response.status_code, response.json()) == (404, {"detail": "no device hgy/nope"})
    assert (await site.get("/api/v1/devices/hgy/nope/readings")).status_code == 404


async def test_readings_come_from_the_outbox_without_a_database(site: Site) -> None:
    for n in range(3):
        await site.send("community/hgy/charging_shed/cs-1/telemetry",
                        {"ts": T0 + n * 1000, "ambient_temp_c": 20.0 + n, "smoke": False,
                         "ports": [{"port": 1, "charging": True, "current_a": 2.5,
                                    "voltage_v": 220.0, "power_w": 550.0,
                                    "temperature_c": 30.0}]})  # fmt: skip
    await site.send(
        "community/hgy/charging_shed/cs-1/event", {"ts": T0, "event": "power_cut", "port": 1}
    )
    body = (await site.get("/api/v1/devices/hgy/cs-1/readings?limit=3")).json()
    assert body["source"] == "outbox"
    assert [(r["measurement"], r["time_ms"], r["port"]) for r in body["readings"]] == [
        ("charging_port", T0 + 2000, 1), ("charging_shed", T0 + 2000, None),
        ("charging_port", T0 + 1000, 1),
    ]  # fmt: skip
    assert body["readings"][1]["fields"] == {"ambient_temp_c": 22.0, "smoke": False}
    since = (await site.get(f"/api/v1/devices/hgy/cs-1/readings?since_ms={T0 + 2000}")).json()
    assert len(since["readings"]) == 2
    bad = await site.get("/api/v1/devices/hgy/cs-1/readings?limit=0")
    assert bad.status_code == 422 and "limit" in bad.json()["detail"]


async def test_a_cleared_condition_is_no_alarm_though_its_alert_is_still_open(site: Site) -> None:
    topic = "community/hgy/smoke_detector/sd-1/telemetry"
    reading = {"obscuration_pct_per_m": 9.0, "temperature_c": 30.0, "battery_pct": 90}
    await site.send(topic, {"ts": T0, **reading, "alarm": True})
    assert (await site.get("/api/v1/devices/hgy/sd-1")).json()["state"] == "alarm"
    # Off, and still off at the next hourly report: the fire alarm's clear time passed.
    for at_s in (60, 3660):
        site.clock.advance(at_s - (site.clock.now_ms() - T0) / 1000)
        await site.send(topic, {"ts": T0 + at_s * 1000, **reading, "alarm": False})
    (alert,) = (await site.get("/api/v1/alerts")).json()["alerts"]
    assert alert["state"] == "resolved"
    assert (await site.get("/api/v1/devices/hgy/sd-1")).json()["state"] == "normal"


async def test_a_devices_state_is_read_from_its_own_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A device's page, and a page of the list, are told from the open alerts of the
    # devices shown: read whole, a district's thousands held the loop the alarms are
    # committed on for each device looked at.
    async with district(tmp_path) as site:
        await site.fall("br-1")
        read = count_alerts_read(monkeypatch)
        assert (await site.get("/api/v1/devices/hgy/br-1")).json()["state"] == "alarm"
        assert read[0] <= 2, f"{read[0]} alerts read to show one device"
        read[0] = 0
        page = (await site.get("/api/v1/devices?limit=2")).json()
        assert [(d["device_id"], d["state"]) for d in page["devices"]] == [
            ("br-1", "alarm"), ("br-2", "offline"),
        ]  # fmt: skip
        assert read[0] <= 4, f"{read[0]} alerts read to show a page of two devices"
        # A state asked for is looked for among the open alerts of the community asked for.
        in_hgy = len([a for a in site.gateway.alerts.open_alerts() if a.community == "hgy"])
        read[0] = 0
        alarmed = (await site.get("/api/v1/devices?community=hgy&state=alarm")).json()
        assert ids(alarmed) == ["hgy/br-1"]
        assert read[0] == in_hgy, f"{read[0]} alerts read where hgy has {in_hgy} open"


async def test_pages_of_the_list_keep_one_order_of_community_and_id(tmp_path: Path) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=ANOTHER_COMMUNITY) as site:
        # Unregistered devices heard from take their places among the registered ones.
        for where in ("lgy/manhole_cover/mc-1", "hgy/manhole_cover/mc-7"):
            await site.send(f"community/{where}/telemetry", {"ts": T0, **MANHOLE})
        everything = [
            "hgy/br-1", "hgy/br-2", "hgy/mc-7", "hgy/sd-1", "hgy/sd-2",
            "lgy/mc-1", "lgy/sd-1", "lgy/sd-2",
        ]  # fmt: skip
        assert ids((await site.get("/api/v1/devices")).json()) == everything
        paged: list[str] = []
        for offset in range(0, 9, 3):
            page = (await site.get(f"/api/v1/devices?limit=3&offset={offset}")).json()
            assert page["total"] == 8
            paged += ids(page)
        assert paged == everything
        lgy = (await site.get("/api/v1/devices?community=lgy&limit=2&offset=1")).json()
        assert (lgy["total"], ids(lgy)) == (3, ["lgy/sd-1", "lgy/sd-2"])
        smoke = (
            await site.get("/api/v1/devices?device_type=smoke_detector&limit=2&offset=1")
        ).json()
        assert (smoke["total"], ids(smoke)) == (4, ["hgy/sd-2", "lgy/sd-1"])
        manholes = (await site.get("/api/v1/devices?device_type=manhole_cover")).json()
        assert (manholes["total"], ids(manholes)) == (2, ["hgy/mc-7", "lgy/mc-1"])
        beyond = (await site.get("/api/v1/devices?offset=8")).json()
        assert (beyond["total"], beyond["devices"]) == (8, [])


async def test_a_page_of_one_community_is_read_from_its_devices_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    district = REGISTRY + "".join(
        f"dev-{n:03d},smoke_detector,c{c:03d},a1,p1,{n % 5},,30.1,120.1,,,,,\n"
        for c in range(20)
        for n in range(50)
    )
    async with open_site(tmp_path, ManualClock(T0), registry_text=district) as site:
        registry = site.gateway.registry
        asked: list[str | None] = []
        by_community = registry.devices_in

        def devices_in(community: str | None = None) -> Sequence[RegisteredDevice]:
            asked.append(community)
            return by_community(community)

        def every_device() -> list[RegisteredDevice]:
            raise AssertionError("the whole registry was looked through for one page")

        monkeypatch.setattr(registry, "devices_in", devices_in)
        monkeypatch.setattr(registry, "devices", every_device)
        page = (await site.get("/api/v1/devices?community=c005&limit=20&offset=10")).json()
        assert page["total"] == 50
        assert ids(page) == [f"c005/dev-{n:03d}" for n in range(10, 30)]
        built = (await site.get("/api/v1/devices?community=c005&building=3&limit=3")).json()
        assert (built["total"], ids(built)) == (
            10,
            ["c005/dev-003", "c005/dev-008", "c005/dev-013"],
        )
        assert asked == ["c005", "c005"]


def smoke_reading(ts: int) -> dict[str, object]:
    return {"ts": ts, "obscuration_pct_per_m": 0.1, "temperature_c": 21.0,
            "battery_pct": 90, "alarm": False}  # fmt: skip


async def test_readings_from_the_outbox_are_the_devices_own_whatever_others_send(
    tmp_path: Path,
) -> None:
    registry = ANOTHER_COMMUNITY + "sd-10,smoke_detector,hgy,east,lakeside,3,,34.75,113.62,,,,,\n"
    async with open_site(tmp_path, ManualClock(T0), registry_text=registry) as site:
        await site.send("community/hgy/smoke_detector/sd-1/telemetry", smoke_reading(T0))
        await site.send("community/hgy/smoke_detector/sd-1/status", {"ts": T0, "online": True})
        # Newer lines: the same id in another community, an id it begins, and the
        # device's own status and events, many more than the readings asked for.
        for n in range(1, 8):
            for device in ("lgy/smoke_detector/sd-1", "hgy/smoke_detector/sd-10"):
                await site.send(f"community/{device}/telemetry", smoke_reading(T0 + n * 1000))
            await site.send(
                "community/hgy/smoke_detector/sd-1/event",
                {"ts": T0 + n * 1000, "event": "self_test"},
            )
        answer = (await site.get("/api/v1/devices/hgy/sd-1/readings?limit=1", OPERATOR)).json()
        assert answer["source"] == "outbox"
        assert [r["time_ms"] for r in answer["readings"]] == [T0]
        assert answer["readings"][0]["fields"]["temperature_c"] == 21.0
        others = (await site.get("/api/v1/devices/lgy/sd-1/readings?limit=3", OPERATOR)).json()
        assert [r["time_ms"] for r in others["readings"]] == [T0 + n * 1000 for n in (7, 6, 5)]
        until = f"/api/v1/devices/hgy/sd-10/readings?until_ms={T0 + 2000}&limit=5"
        assert [r["time_ms"] for r in (await site.get(until, OPERATOR)).json()["readings"]] == [
            T0 + 2000, T0 + 1000,
        ]  # fmt: skip


async def test_a_desk_limited_to_its_community_sees_its_devices_alone(tmp_path: Path) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_COMMUNITIES) as site:
        # The same ids in both communities, each with its own values; and a device of
        # each that the registry does not list.
        for community, temperature_c in (("hgy", 21.0), ("lgy", 35.0)):
            reading = {**smoke_reading(T0), "temperature_c": temperature_c}
            await site.send(f"community/{community}/smoke_detector/sd-1/telemetry", reading)
        for where in ("lgy/manhole_cover/mc-1", "hgy/manhole_cover/mc-7"):
            await site.send(f"community/{where}/telemetry", {"ts": T0, **MANHOLE})
        own = ["hgy/acme-1", "hgy/br-1", "hgy/br-2", "hgy/mc-7", "hgy/sd-1", "hgy/sd-2"]

        async def listed(query: str) -> tuple[int, list[str]]:
            response = await site.get(f"/api/v1/devices?{query}", DESK_HGY)
            assert response.status_code == 200, response.text
            return response.json()["total"], ids(response.json())

        assert await listed("") == (6, own)
        assert await listed("limit=2&offset=3") == (6, own[3:5])
        assert await listed("community=hgy&device_type=smoke_detector") == (
            3, ["hgy/acme-1", "hgy/sd-1", "hgy/sd-2"],
        )  # fmt: skip
        assert await listed("device_type=manhole_cover") == (1, ["hgy/mc-7"])
        assert await listed("area=north") == (0, [])
        # Another community named is one the desk has no device in.
        assert await listed("community=lgy") == (0, [])
        assert await listed("community=lgy&device_type=smoke_detector") == (0, [])
        assert (await site.get("/api/v1/devices", OPERATOR)).json()["total"] == 11
        device = (await site.get("/api/v1/devices/hgy/sd-1", DESK_HGY)).json()
        assert device["latest"]["fields"]["temperature_c"] == 21.0
        readings = (await site.get("/api/v1/devices/hgy/sd-1/readings", DESK_HGY)).json()
        assert [r["fields"]["temperature_c"] for r in readings["readings"]] == [21.0]
        # Another community's device is answered as one that does not exist.
        for path in ("lgy/sd-1", "lgy/mc-1", "lgy/no-such-device"):
            for suffix in ("", "/readings"):
                hidden = await site.get(f"/api/v1/devices/{path}{suffix}", DESK_HGY)
                assert (hidden.status_code, hidden.json()["detail"]) == (404, f"no device {path}")
        other = (await site.get("/api/v1/devices/lgy/sd-1", OPERATOR)).json()
        assert other["latest"]["fields"]["temperature_c"] == 35.0


async def test_a_desk_of_several_communities_lists_theirs_in_one_order(tmp_path: Path) -> None:
    district = REGISTRY + "".join(
        f"dev-{n},smoke_detector,{c},a1,p1,1,,30.1,120.1,,,,,\n"
        for c in ("c1", "c2", "c3")
        for n in range(3)
    )
    tokens = [{"name": "desk-c", "role": "operator", "token": "desk-c-token-0123456789",
               "communities": ["c3", "c1"]}]  # fmt: skip
    async with open_site(tmp_path, ManualClock(T0), registry_text=district, tokens=tokens) as site:
        await site.send("community/c3/manhole_cover/dev-10/telemetry", {"ts": T0, **MANHOLE})
        # Community c1's, then c3's with the device heard from in its place.
        theirs = ["c1/dev-0", "c1/dev-1", "c1/dev-2", "c3/dev-0", "c3/dev-1", "c3/dev-10",
                  "c3/dev-2"]  # fmt: skip
        paged: list[str] = []
        for offset in range(0, 8, 3):
            page = await site.get(f"/api/v1/devices?limit=3&offset={offset}",
                                  "desk-c-token-0123456789")  # fmt: skip
            assert page.json()["total"] == 7
            paged += ids(page.json())
        assert paged == theirs


async def test_readings_with_since_after_until_are_refused(tmp_path: Path) -> None:
    async with open_site(tmp_path, ManualClock(T0)) as site:
        response = await site.get(
            f"/api/v1/devices/hgy/sd-1/readings?since_ms={T0}&until_ms={T0 - 3_600_000}"
        )
        assert response.status_code == 422, response.text
        assert "since_ms" in response.json()["detail"]


# A detector numbered like a building (ids 1, 2, 3 in a community are common) is not in
# alarm because that building is on fire: the desk would send someone to the wrong
# building.
async def test_a_device_named_like_a_building_on_fire_is_not_shown_in_alarm(
    tmp_path: Path,
) -> None:
    quiet = "3,smoke_detector,hgy,west,hillside,9,,,,,,,,\n"
    async with open_site(tmp_path, ManualClock(T0), registry_text=REGISTRY + quiet) as site:
        for device_id in ("sd-1", "sd-2"):
            await site.send(
                f"community/hgy/smoke_detector/{device_id}/event",
                {"ts": site.clock.now_ms(), "event": "alarm"},
            )
        fires = [
            a.device_id for a in site.gateway.alerts.open_alerts() if a.rule == "building_fire"
        ]
        assert fires == ["3"]
        device = (await site.get("/api/v1/devices/hgy/3", ADMIN)).json()
        assert device["state"] == "normal"
        alarming = (await site.get("/api/v1/devices?state=alarm", ADMIN)).json()["devices"]
        assert {d["device_id"] for d in alarming} == {"sd-1", "sd-2"}
        for state in ("open", "all"):
            its_alerts = await site.get(f"/api/v1/alerts?device_id=3&state={state}", ADMIN)
            assert its_alerts.json()["alerts"] == [], state
