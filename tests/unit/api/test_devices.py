from tests.unit.api.conftest import ADMIN, OPERATOR, T0, WORKER, Site


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
    assert (whole["name"], whole["phone"], whole["masked"]) == ("张三明", "13812345678", False)
    (entry,) = (await site.get("/api/v1/audit")).json()
    assert (entry["actor"], entry["role"], entry["device_id"]) == ("root", "admin", "br-1")
    assert entry["via"] == "GET /api/v1/devices/hgy/br-1"
    assert entry["at_ms"] == T0


async def test_a_grid_worker_sees_whole_personal_data_of_their_cells_only(site: Site) -> None:
    mine = await site.fall("br-1")
    theirs = await site.fall("br-2")
    detail = (await site.get(f"/api/v1/alerts/{mine}", WORKER)).json()
    assert detail["wearer"]["phone"] == "13812345678"
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
