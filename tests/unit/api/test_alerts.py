from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.clock import ManualClock
from gateway.notify.channel import NotifyError
from gateway.notify.notice import Notice
from gateway.registry import RegisteredDevice
from gateway.rules.alert import AlertState
from tests.unit.api.conftest import (
    ADMIN,
    DESK_HGY,
    OPERATOR,
    OTHER_COMMUNITY_OFFLINE,
    OTHER_WORKER,
    REGISTRY,
    T0,
    TWO_COMMUNITIES,
    WORKER,
    Site,
    count_alerts_read,
    district,
    open_site,
)


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
    # Taken: the wearer's next fall is an alert of its own.
    assert (await site.post(f"/api/v1/alerts/{fallen}/acknowledge")).status_code == 200
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


async def test_an_emergency_contact_is_shown_by_the_same_rule_as_the_wearer(
    tmp_path: Path,
) -> None:
    tell = ("wang-fang", "emergency_contacts")
    async with open_site(tmp_path, ManualClock(T0), tell=tell) as site:
        assert site.gateway.api is not None
        audit = site.gateway.api.context.audit
        alert_id = await site.fall("br-1")
        await site.gateway.notifier.process()
        # 李四 takes the alert from the link in the text message sent to their phone.
        link = site.gateway.links.url(alert_id, "contact:+8613987654321", T0)
        taken = await site.client.post(link.removeprefix("http://gw.test") + "/acknowledge")
        assert taken.status_code == 303

        # An operator sees the number masked, as the wearer's, wherever it names them.
        detail = await site.get(f"/api/v1/alerts/{alert_id}", OPERATOR)
        listed = await site.get("/api/v1/alerts", OPERATOR)
        refused = await site.post(f"/api/v1/alerts/{alert_id}/acknowledge", OPERATOR)
        for response in (detail, listed, refused):
            assert "13987654321" not in response.text
        shown = detail.json()
        assert shown["wearer"]["emergency_contacts"][0]["phone"] == "139****4321"
        assert shown["alert"]["acknowledged_by"] == "contact:139****4321"
        assert {n["receiver"] for n in shown["notifications"]} == {
            "contact:139****4321",
            "wang-fang",
        }
        assert "contact:139****4321" in [s["actor"] for s in shown["history"]]
        assert listed.json()["alerts"][0]["acknowledged_by"] == "contact:139****4321"
        assert refused.status_code == 409
        assert refused.json()["detail"].endswith("acknowledged by contact:139****4321")
        assert audit.entries(actor="desk") == []

        # An admin, and the grid worker of the cell, who may call them: whole, and audited.
        for token, name in ((ADMIN, "root"), (WORKER, "wang-fang")):
            alerts = (await site.get("/api/v1/alerts", token)).json()["alerts"]
            assert alerts[0]["acknowledged_by"] == "contact:+8613987654321"
            (entry,) = audit.entries(actor=name)
            assert (entry.device_id, entry.via) == ("br-1", "GET /api/v1/alerts")
        receivers = {
            n["receiver"]
            for n in (await site.get(f"/api/v1/alerts/{alert_id}", WORKER)).json()["notifications"]
        }
        assert "contact:+8613987654321" in receivers
        newest, _ = audit.entries(actor="wang-fang")
        assert newest.via == f"GET /api/v1/alerts/{alert_id}"


async def test_a_withdrawn_notice_names_an_emergency_contact_by_the_same_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tell = ("wang-fang", "emergency_contacts")
    async with open_site(tmp_path, ManualClock(T0), tell=tell) as site:
        console = site.gateway.notifier.channels["console"]
        sent = console.send
        failed: list[str] = []

        async def busy_for_the_contact(notice: Notice) -> None:
            if notice.receiver.startswith("contact:") and not failed:
                failed.append(notice.receiver)
                raise NotifyError("the SMS provider is busy", retryable=True)
            await sent(notice)

        monkeypatch.setattr(console, "send", busy_for_the_contact)
        alert_id = await site.fall("br-1")
        await site.gateway.notifier.process()
        (contact,) = failed
        assert contact == "contact:+8613987654321"
        # The text went out after all (a send cut off by a timeout): 李四 takes the fall,
        # and the retry owed to them is withdrawn, its detail naming them.
        link = site.gateway.links.url(alert_id, contact, T0)
        taken = await site.client.post(link.removeprefix("http://gw.test") + "/acknowledge")
        assert taken.status_code == 303
        site.clock.advance(120)
        await site.gateway.notifier.process()
        assert "withdrawn" in [a.result for a in site.gateway.notifications.attempts(alert_id)]

        def withdrawn(response: httpx.Response) -> str:
            (shown,) = [n for n in response.json()["notifications"] if n["result"] == "withdrawn"]
            return str(shown["detail"])

        # An operator, even a desk of the community, reads it masked, as the receiver.
        for token in (OPERATOR, DESK_HGY):
            detail = await site.get(f"/api/v1/alerts/{alert_id}", token)
            assert "13987654321" not in detail.text
            assert withdrawn(detail).startswith("contact:139****4321 took the alert")
        # The grid worker who may call them reads it whole, and the read is audited.
        whole = await site.get(f"/api/v1/alerts/{alert_id}", WORKER)
        assert withdrawn(whole).startswith("contact:+8613987654321 took the alert")
        (entry,) = (await site.get("/api/v1/audit")).json()
        assert (entry["actor"], entry["device_id"]) == ("wang-fang", "br-1")


async def test_a_pending_alert_is_taken_only_once_it_fires(tmp_path: Path) -> None:
    # An operator "taking" an elderly wearer's heart rate of 170 while it is pending
    # would keep the grid worker of the cell, the only one who can go there (operators
    # neither arrive nor close), from being told when it fires.
    async with open_site(tmp_path, ManualClock(T0)) as site:

        async def heart_rate(bpm: int) -> None:
            await site.send(
                "community/hgy/bracelet/br-1/telemetry",
                {"ts": site.clock.now_ms(), "heart_rate_bpm": bpm, "worn": True},
            )

        await heart_rate(170)
        (pending,) = (await site.get("/api/v1/alerts", OPERATOR)).json()["alerts"]
        assert pending["state"] == "pending"
        alert_id = pending["alert_id"]
        taken = await site.post(f"/api/v1/alerts/{alert_id}/acknowledge", OPERATOR)
        assert taken.status_code == 409
        assert taken.json()["detail"] == f"alert {alert_id} is pending: it has not fired yet"
        reached = await site.post(f"/api/v1/alerts/{alert_id}/arrive", WORKER)
        assert reached.status_code == 409
        for _ in range(3):
            site.clock.advance(30)
            await heart_rate(170)
        await site.gateway.notifier.process()
        entry = site.gateway.alerts.get(alert_id)
        assert entry.fired_ms is not None and entry.acknowledged_by is None
        told = [(a.receiver, a.result) for a in site.gateway.notifications.attempts(alert_id)]
        assert ("wang-fang", "sent") in told
        # Fired, it is taken as any other.
        taken = await site.post(f"/api/v1/alerts/{alert_id}/acknowledge", OPERATOR)
        assert taken.status_code == 200 and taken.json()["acknowledged_by"] == "desk"


async def smoke_alarms(site: Site, *device_ids: str) -> None:
    for device_id in device_ids:
        await site.send(
            f"community/hgy/smoke_detector/{device_id}/event",
            {"ts": site.clock.now_ms(), "event": "alarm"},
        )


async def found(site: Site, query: str) -> set[str]:
    alerts = (await site.get(f"/api/v1/alerts?{query}")).json()["alerts"]
    return {f"{a['rule']}:{a['device_id']}" for a in alerts}


async def test_an_alert_about_a_building_is_found_and_placed_by_its_building(
    site: Site,
) -> None:
    # Two detectors of building 3 alarm: the building's own alert fires beside theirs.
    await smoke_alarms(site, "sd-1", "sd-2")
    (building,) = [
        a
        for a in (await site.get("/api/v1/alerts")).json()["alerts"]
        if a["device_type"] == "building"
    ]
    assert building["device_id"] == "3"
    assert building["place"] == {
        "area": "east", "compound": "lakeside", "building": "3", "unit": None,
        "lat": None, "lon": None,
    }  # fmt: skip
    for query in ("building=3", "compound=lakeside", "area=east", "compound=lakeside&building=3"):
        assert "building_fire:3" in await found(site, query), query
    for query in ("building=9", "compound=hillside", "area=west", "compound=hillside&building=3"):
        assert "building_fire:3" not in await found(site, query), query
    # The link a grid worker is sent says where to go too.
    link = site.gateway.links.url(building["alert_id"], "wang-fang", site.clock.now_ms())
    page = await site.client.get(link.removeprefix("http://gw.test"))
    assert "hgy east lakeside 3" in page.text


async def test_a_building_number_in_two_compounds_is_found_where_it_is(tmp_path: Path) -> None:
    # Building numbers repeat across the compounds of a community (湖光苑 3号楼, 湖光新苑
    # 3号楼): an alert about one of them is named by its path, and found there alone.
    registry = REGISTRY + "sd-9,smoke_detector,hgy,west,hillside,3,,,,,,,,\n"
    async with open_site(tmp_path, ManualClock(T0), registry_text=registry) as site:
        await smoke_alarms(site, "sd-1", "sd-2")
        (building,) = [
            a for a in (await site.get("/api/v1/alerts")).json()["alerts"]
            if a["device_type"] == "building"
        ]  # fmt: skip
        assert building["device_id"] == "east·lakeside·3"
        place = building["place"]
        assert (place["area"], place["compound"], place["building"]) == ("east", "lakeside", "3")
        fire = "building_fire:east·lakeside·3"
        assert fire in await found(site, "compound=lakeside&building=3")
        assert fire not in await found(site, "compound=hillside&building=3")


# Bracelets of wang-fang's community outside her cells, and of another community.
ELSEWHERE = REGISTRY + "".join(
    f"br-5{n},bracelet,hgy,west,hillside,9,1-10{n},,,,,,34.76,113.63\n"
    f"br-9{n},bracelet,lgy,north,pine,7,1-10{n},,,,,,30.10,120.10\n"
    for n in range(6)
)


async def falls(site: Site, community: str, *device_ids: str) -> None:
    for device_id in device_ids:
        site.clock.advance(60)
        await site.send(
            f"community/{community}/bracelet/{device_id}/event",
            {"ts": site.clock.now_ms(), "event": "fall", "confidence": 0.9},
        )


async def test_a_history_is_not_pushed_out_by_newer_alerts_of_others(tmp_path: Path) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=ELSEWHERE) as site:
        own = await site.fall("br-1")
        site.clock.advance(60)
        await site.post(f"/api/v1/alerts/{own}/close", WORKER, json={"note": "扶起, 无碍"})
        newer = await site.fall("br-1")
        # Many newer alerts, in her community but outside her cells, and elsewhere.
        await falls(site, "hgy", *(f"br-5{n}" for n in range(6)))
        await falls(site, "lgy", *(f"br-9{n}" for n in range(6)))

        async def listed(query: str, token: str = WORKER) -> list[str]:
            response = await site.get(f"/api/v1/alerts?{query}", token)
            assert response.status_code == 200, response.text
            return [a["alert_id"] for a in response.json()["alerts"]]

        # The newest of those she may see, however many she may not came after them.
        assert await listed("state=all&limit=1") == [newer]
        assert await listed("state=all&limit=2") == [own, newer]
        assert await listed("state=closed&limit=1") == [own]
        assert await listed("state=firing&community=hgy&area=east&limit=5") == [newer]
        # Filters narrow the search itself, for everyone.
        assert await listed("state=all&device_id=br-1&limit=1", ADMIN) == [newer]
        assert await listed("state=closed&rule=fall&limit=1", OPERATOR) == [own]
        assert await listed(f"state=all&community=hgy&since_ms={T0}&limit=20", OTHER_WORKER) == [
            a for a in await listed("state=all&community=hgy&limit=20", ADMIN)
            if a not in (own, newer)
        ]  # fmt: skip
        assert len(await listed("state=all&limit=20", ADMIN)) == 14


async def test_a_building_alert_is_placed_in_cells_by_the_registrys_places(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    await smoke_alarms(site, "sd-1", "sd-2")

    def every_device() -> list[RegisteredDevice]:
        raise AssertionError("the whole registry was looked through for one alert")

    monkeypatch.setattr(site.gateway.registry, "devices", every_device)
    mine = await found_as(site, WORKER, "")
    assert "building_fire:3" in mine
    assert "building_fire:3" in await found_as(site, WORKER, "state=all&building=3")
    assert "building_fire:3" not in await found_as(site, OTHER_WORKER, "state=all")
    (building,) = [
        a for a in (await site.get("/api/v1/alerts", WORKER)).json()["alerts"]
        if a["device_type"] == "building"
    ]  # fmt: skip
    assert (await site.get(f"/api/v1/alerts/{building['alert_id']}", WORKER)).status_code == 200
    hidden = await site.get(f"/api/v1/alerts/{building['alert_id']}", OTHER_WORKER)
    assert hidden.status_code == 404


async def found_as(site: Site, token: str, query: str) -> set[str]:
    response = await site.get(f"/api/v1/alerts?{query}", token)
    assert response.status_code == 200, response.text
    return {f"{a['rule']}:{a['device_id']}" for a in response.json()["alerts"]}


async def test_a_desk_limited_to_its_community_sees_and_takes_its_alerts_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_COMMUNITIES) as site:
        own = await site.fall("br-1")
        # Community lgy's br-1, the same id, falls after.
        await falls(site, "lgy", "br-1")
        everyone = (await site.get("/api/v1/alerts", OPERATOR)).json()["alerts"]
        (other,) = [a["alert_id"] for a in everyone if a["community"] == "lgy"]

        async def listed(query: str) -> list[str]:
            response = await site.get(f"/api/v1/alerts?{query}", DESK_HGY)
            assert response.status_code == 200, response.text
            return [a["alert_id"] for a in response.json()["alerts"]]

        assert await listed("") == [own]
        assert await listed("device_id=br-1&rule=fall") == [own]
        assert await listed("community=lgy") == []
        # The book is asked for the desk's community alone: lgy's newer alert never
        # takes the place of hgy's in a page.
        asked: list[object] = []
        search = site.gateway.alerts.search

        def searched(**query: Any) -> Any:
            asked.append(query["communities"])
            return search(**query)

        monkeypatch.setattr(site.gateway.alerts, "search", searched)
        assert await listed("state=all&limit=1") == [own]
        assert await listed("state=firing&community=lgy") == []
        assert asked == [["hgy"], ["hgy"]]
        # Another community's alert is answered as one that does not exist.
        for alert_id in (other, "no-such-alert"):
            hidden = await site.get(f"/api/v1/alerts/{alert_id}", DESK_HGY)
            assert (hidden.status_code, hidden.json()["detail"]) == (404, f"no alert {alert_id}")
        taken = await site.post(f"/api/v1/alerts/{other}/acknowledge", DESK_HGY)
        assert (taken.status_code, taken.json()["detail"]) == (404, f"no alert {other}")
        # What no operator does is refused alike whichever community's alert it is.
        for step, body in (("arrive", None), ("close", {"note": "x"}), ("assign", {"to": "x"})):
            for alert_id in (own, other):
                refused = await site.post(f"/api/v1/alerts/{alert_id}/{step}", DESK_HGY, json=body)
                assert refused.status_code == 403, (step, alert_id)
        mine = await site.post(f"/api/v1/alerts/{own}/acknowledge", DESK_HGY)
        assert (mine.status_code, mine.json()["acknowledged_by"]) == (200, "desk-hgy")
        detail = (await site.get(f"/api/v1/alerts/{own}", DESK_HGY)).json()
        assert detail["alert"]["community"] == "hgy"
        assert detail["wearer"] == {
            "name": "张*明", "phone": "138****5678", "masked": True,
            "emergency_contacts": [{"name": "李*", "phone": "139****4321"}],
        }  # fmt: skip
        # Community lgy's alert is as it was, for those who see it.
        shown = (await site.get(f"/api/v1/alerts/{other}", OPERATOR)).json()["alert"]
        assert (shown["state"], shown["acknowledged_by"]) == ("firing", None)


@pytest.mark.parametrize(
    ("step", "body", "field"),
    [("close", {"note": "   "}, "note"), ("assign", {"to": "   "}, "to")],
)
async def test_a_blank_note_or_assignee_is_a_bad_body_not_a_conflict(
    tmp_path: Path, step: str, body: dict[str, str], field: str
) -> None:
    # 409 says the step does not apply to the alert as it is; the body is what is wrong.
    async with open_site(tmp_path, ManualClock(T0)) as site:
        alert_id = await site.fall("br-1")
        response = await site.post(f"/api/v1/alerts/{alert_id}/{step}", ADMIN, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith(field)


async def test_a_district_s_open_alerts_come_most_severe_first_a_page_at_a_time(
    tmp_path: Path,
) -> None:
    # Every open alert of a district was tens of MB made on the loop the alarms are told
    # on, at every change the board reloads for; a page of them, the most severe first,
    # keeps a fall at the top however many devices are offline.
    async with district(tmp_path) as site:
        fallen = await site.fall()
        answer = (await site.get("/api/v1/alerts?state=open&limit=20")).json()
        assert len(answer["alerts"]) == 20
        assert answer["alerts"][0]["alert_id"] == fallen
        total = len(site.gateway.alerts.open_alerts())
        assert answer["total"] == total > OTHER_COMMUNITY_OFFLINE
        every = (await site.get("/api/v1/alerts?state=open&limit=5000")).json()
        assert len(every["alerts"]) == every["total"] == total
        # Other states list the newest `limit`, and say no total.
        assert (await site.get("/api/v1/alerts?state=firing&limit=5")).json()["total"] is None


async def test_a_desks_open_alerts_are_read_from_its_own_communities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A desk's board loads its open alerts at every change of any community's alerts:
    # reading every community's to throw the others' away holds the loop the alarms
    # are committed on (over half a second at 60,000 open).
    async with district(tmp_path) as site:
        await site.fall()
        read = count_alerts_read(monkeypatch)
        own = (await site.get("/api/v1/alerts?state=open", DESK_HGY)).json()["alerts"]
        assert own and {a["community"] for a in own} == {"hgy"}
        assert read[0] == len(own), f"{read[0]} alerts read to list {len(own)}"
        # The same for anyone who names the community.
        read[0] = 0
        named = (await site.get("/api/v1/alerts?state=open&community=hgy")).json()["alerts"]
        assert named == own
        assert read[0] == len(own), f"{read[0]} alerts read to list {len(own)}"


async def test_assigning_an_alert_is_told_on_the_alert_stream(site: Site) -> None:
    # A client reads the list again when the stream's version moves: an alert given to
    # someone is a change of it.
    alert_id = await site.fall()
    before = (await site.get("/api/v1/alerts", OPERATOR)).json()["version"]
    given = await site.post(f"/api/v1/alerts/{alert_id}/assign", ADMIN, json={"to": "zhao-lei"})
    assert given.status_code == 200, given.text
    after = (await site.get("/api/v1/alerts", OPERATOR)).json()
    assert after["alerts"][0]["assigned_to"] == "zhao-lei"
    assert after["version"] > before, "the alert changed, the stream's version did not"


async def test_an_alert_given_to_an_emergency_contact_is_masked_in_its_history_too(
    site: Site,
) -> None:
    # A fall given to the wearer's family contact: the desk, which sees personal data
    # masked, sees the contact masked in the history's note too.
    alert_id = await site.fall()
    contact = "contact:+8613987654321"  # br-1's, 李四
    given = await site.post(f"/api/v1/alerts/{alert_id}/assign", ADMIN, json={"to": contact})
    assert given.status_code == 200, given.text
    read = await site.get(f"/api/v1/alerts/{alert_id}", OPERATOR)
    assert read.status_code == 200
    assert read.json()["alert"]["assigned_to"] == "contact:139****4321"
    assert "13987654321" not in read.text, [s["note"] for s in read.json()["history"]]


async def test_a_body_that_is_not_utf8_is_answered_saying_so(site: Site) -> None:
    # A close note sent from a tool that saves GBK (a Chinese Windows default): the
    # answer says what to mend, not only that the body could not be parsed.
    alert_id = await site.fall()
    answer = await site.post(
        f"/api/v1/alerts/{alert_id}/close",
        ADMIN,
        content='{"note": "已送医"}'.encode("gbk"),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"] == "body: not UTF-8 (byte 0xD2 at offset 10); send it as UTF-8"
    assert site.gateway.alerts.get(alert_id).state is not AlertState.CLOSED
