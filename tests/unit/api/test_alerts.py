from tests.unit.api.conftest import ADMIN, OPERATOR, OTHER_WORKER, WORKER, Site


async def test_an_alert_from_traffic_is_listed_and_shown_with_its_history(site: Site) -> None:
    alert_id = await site.fall()
    listed = (await site.get("/api/v1/alerts")).json()
    assert [a["alert_id"] for a in listed["alerts"]] == [alert_id]
    assert listed["alerts"][0]["place"]["building"] == "3"
    detail = (await site.get(f"/api/v1/alerts/{alert_id}")).json()
    assert detail["alert"]["rule"] == "fall"
    assert [s["state"] for s in detail["history"]] == ["firing"]
    assert detail["notifications"] == []


async def test_an_alert_gives_where_it_fired_as_its_record_said(site: Site) -> None:
    fallen = await site.fall(lat=34.8, lon=113.7)
    site.clock.advance(1)
    unplaced = await site.fall()
    listed = (await site.get("/api/v1/alerts")).json()["alerts"]
    assert {a["alert_id"]: a["position"] for a in listed} == {
        fallen: {"lat": 34.8, "lon": 113.7},
        unplaced: None,
    }
    # The registered place stays the registry's: br-1 has none of its own.
    assert listed[0]["place"]["lat"] is None


async def test_acknowledge_arrive_and_close_go_through_the_desk(site: Site) -> None:
    alert_id = await site.fall()
    site.clock.advance(60)
    ack = await site.post(f"/api/v1/alerts/{alert_id}/acknowledge", WORKER)
    assert ack.status_code == 200, ack.text
    assert ack.json()["acknowledged_by"] == "wang-fang"
    arrived = await site.post(f"/api/v1/alerts/{alert_id}/arrive", WORKER)
    assert arrived.json()["state"] == "arrived"
    closed = await site.post(f"/api/v1/alerts/{alert_id}/close", WORKER, json={"note": "已送医"})
    assert (closed.json()["state"], closed.json()["note"]) == ("closed", "已送医")
    # The desk wrote each handling time, as dashboards read them.
    handling = [
        line for line in site.gateway.outbox.peek(100).lines if line.startswith("alert_handling")
    ]
    assert [line.split(" ")[1].split(",")[1].split("=")[0] for line in handling] == [
        "acknowledge_s", "arrive_s", "close_s",
    ]  # fmt: skip
    assert (await site.get("/api/v1/alerts")).json()["alerts"] == []
    closed_list = (await site.get("/api/v1/alerts?state=closed")).json()["alerts"]
    assert [a["alert_id"] for a in closed_list] == [alert_id]


async def test_a_step_that_does_not_apply_is_409_and_an_unknown_alert_404(site: Site) -> None:
    alert_id = await site.fall()
    await site.post(f"/api/v1/alerts/{alert_id}/acknowledge", OPERATOR)
    again = await site.post(f"/api/v1/alerts/{alert_id}/acknowledge", ADMIN)
    assert again.status_code == 409
    assert "acknowledged by desk" in again.json()["detail"]
    missing = await site.post("/api/v1/alerts/nope/acknowledge", ADMIN)
    assert (missing.status_code, missing.json()["detail"]) == (404, "no alert nope")


async def test_bad_bodies_say_what_is_wrong(site: Site) -> None:
    alert_id = await site.fall()
    empty = await site.post(f"/api/v1/alerts/{alert_id}/close", ADMIN, json={"note": ""})
    assert empty.status_code == 422
    assert empty.json()["detail"].startswith("note:")
    extra = await site.post(f"/api/v1/alerts/{alert_id}/close", ADMIN, json={"note": "x", "by": 1})
    assert extra.status_code == 422 and "by" in extra.json()["detail"]
    not_json = await site.post(f"/api/v1/alerts/{alert_id}/assign", ADMIN, content=b"{")
    assert not_json.status_code == 422
    assign = await site.post(f"/api/v1/alerts/{alert_id}/assign", ADMIN, json={"to": "zhao-lei"})
    assert assign.json()["assigned_to"] == "zhao-lei"


async def test_a_grid_worker_sees_and_handles_only_their_own_cells(site: Site) -> None:
    mine = await site.fall("br-1")
    theirs = await site.fall("br-2")
    listed = (await site.get("/api/v1/alerts", WORKER)).json()["alerts"]
    assert [a["alert_id"] for a in listed] == [mine]
    # Another cell's alert is answered as if it did not exist.
    hidden = await site.get(f"/api/v1/alerts/{theirs}", WORKER)
    assert hidden.status_code == 404
    refused = await site.post(f"/api/v1/alerts/{theirs}/acknowledge", WORKER)
    assert refused.status_code == 404
    assert site.gateway.alerts.get(theirs).acknowledged_by is None
    ok = await site.post(f"/api/v1/alerts/{theirs}/acknowledge", OTHER_WORKER)
    assert ok.status_code == 200


async def test_roles_bound_what_each_may_do(site: Site) -> None:
    alert_id = await site.fall()
    closing = await site.post(f"/api/v1/alerts/{alert_id}/close", OPERATOR, json={"note": "x"})
    assert closing.status_code == 403
    assert "desk is operator" in closing.json()["detail"]
    assigning = await site.post(f"/api/v1/alerts/{alert_id}/assign", WORKER, json={"to": "x"})
    assert assigning.status_code == 403
    assert (await site.get("/api/v1/devices", WORKER)).status_code == 403


async def test_the_list_filters_and_puts_the_most_severe_first(site: Site) -> None:
    fall = await site.fall()
    await site.send("community/hgy/bracelet/br-1/telemetry",
                    {"ts": site.clock.now_ms(), "battery_pct": 5})  # fmt: skip
    alerts = (await site.get("/api/v1/alerts")).json()["alerts"]
    assert [a["severity"] for a in alerts] == ["critical", "info"]
    assert alerts[0]["alert_id"] == fall
    only = (await site.get("/api/v1/alerts?severity=info")).json()["alerts"]
    assert [a["rule"] for a in only] == ["bracelet_low_battery"]
    assert (await site.get("/api/v1/alerts?building=9")).json()["alerts"] == []
    bad = await site.get("/api/v1/alerts?state=sleeping")
    assert bad.status_code == 422 and bad.json()["detail"].startswith("query.state")


async def test_the_alert_stream_says_when_alerts_change(site: Site) -> None:
    first = await site.get("/api/v1/alerts-stream?limit=1", OPERATOR)
    assert first.headers["content-type"].startswith("text/event-stream")
    assert first.text == "event: alerts\ndata: 0\n\n"
    await site.fall()
    after = await site.get("/api/v1/alerts-stream?limit=1", OPERATOR)
    assert after.text == "event: alerts\ndata: 1\n\n"


async def test_a_misspelt_filter_is_refused_rather_than_ignored(site: Site) -> None:
    response = await site.get("/api/v1/alerts?comunity=hgy")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("unknown query parameter(s) ['comunity']")
    twice = await site.get("/api/v1/alerts?community=hgy&community=other")
    assert twice.status_code == 422
    assert twice.json()["detail"] == "query parameter(s) ['community'] given more than once"
