from tests.unit.api.conftest import ADMIN, OPERATOR, T0, WORKER, Site


async def test_silences_are_made_listed_and_ended(site: Site) -> None:
    made = await site.post("/api/v1/silences", OPERATOR, json={
        "community": "hgy", "building": "3", "ends_ms": T0 + 3_600_000, "reason": "检修烟感",
    })  # fmt: skip
    assert made.status_code == 201, made.text
    silence = made.json()
    assert (silence["author"], silence["starts_ms"]) == ("desk", T0)
    assert [s["id"] for s in (await site.get("/api/v1/silences")).json()] == [silence["id"]]
    # A low battery in building 3 is muted; a fall there goes out anyway.
    await site.send("community/hgy/bracelet/br-1/telemetry", {"ts": T0, "battery_pct": 5})
    await site.fall("br-1")
    alerts = {a["rule"]: a["alert_id"] for a in (await site.get("/api/v1/alerts")).json()["alerts"]}
    notes = {
        rule: (await site.get(f"/api/v1/alerts/{alert_id}")).json()["history"][0]["note"]
        for rule, alert_id in alerts.items()
    }
    assert notes["bracelet_low_battery"] == f"muted by silence {silence['id']}"
    assert "overridden" in notes["fall"]
    assert (await site.delete(f"/api/v1/silences/{silence['id']}", OPERATOR)).status_code == 204
    assert (await site.get("/api/v1/silences")).json() == []
    gone = await site.delete(f"/api/v1/silences/{silence['id']}", ADMIN)
    assert (gone.status_code, gone.json()["detail"]) == (404, f"no silence {silence['id']}")


async def test_a_silence_that_cannot_be_made_says_why(site: Site) -> None:
    nothing = await site.post("/api/v1/silences", json={"ends_ms": T0 + 1, "reason": "x"})
    assert nothing.status_code == 422
    assert "needs a device, a place or a rule" in nothing.json()["detail"]
    backwards = await site.post("/api/v1/silences", json={
        "device_id": "sd-1", "starts_ms": T0, "ends_ms": T0 - 1, "reason": "x",
    })  # fmt: skip
    assert "must end after it starts" in backwards.json()["detail"]
    no_reason = await site.post("/api/v1/silences", json={"device_id": "sd-1", "ends_ms": T0})
    assert no_reason.status_code == 422 and no_reason.json()["detail"].startswith("reason:")
    bad_id = await site.post("/api/v1/silences", json={
        "device_id": "no spaces", "ends_ms": T0 + 1, "reason": "x",
    })  # fmt: skip
    assert bad_id.status_code == 422 and bad_id.json()["detail"].startswith("device_id:")


async def test_grid_workers_do_not_silence(site: Site) -> None:
    refused = await site.post("/api/v1/silences", WORKER, json={
        "device_id": "sd-1", "ends_ms": T0 + 1, "reason": "x",
    })  # fmt: skip
    assert refused.status_code == 403
    assert (await site.get("/api/v1/silences", WORKER)).status_code == 403


async def test_a_silence_id_beyond_what_is_stored_is_refused_plainly(site: Site) -> None:
    response = await site.delete(f"/api/v1/silences/{1 << 70}")
    assert response.status_code == 422 and response.json()["detail"].startswith("path.silence_id")
