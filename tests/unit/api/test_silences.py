import sqlite3
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.clock import ManualClock
from tests.unit.api.conftest import (
    ADMIN,
    DESK_HGY,
    OPERATOR,
    REGISTRY,
    T0,
    TWO_COMMUNITIES,
    WORKER,
    Site,
    open_site,
    serve_site,
    site_config,
)

# Building 3 of compound hillside too, as building numbers repeat across the compounds
# of a community (湖光苑 3号楼, 湖光新苑 3号楼).
TWO_BUILDINGS_3 = REGISTRY.replace(
    "sd-2,smoke_detector,hgy,east,lakeside,3", "sd-2,smoke_detector,hgy,west,hillside,3"
)


async def tampering(site: Site) -> dict[str, str | None]:
    """Both detectors of a building 3 tampered with: the note on each one's alert."""
    for device_id in ("sd-1", "sd-2"):
        await site.send(
            f"community/hgy/smoke_detector/{device_id}/event",
            {"ts": site.clock.now_ms(), "event": "tamper"},
        )
    notes: dict[str, str | None] = {}
    for alert in (await site.get("/api/v1/alerts?rule=smoke_tampering")).json()["alerts"]:
        history = (await site.get(f"/api/v1/alerts/{alert['alert_id']}")).json()["history"]
        notes[alert["device_id"]] = history[0]["note"]
    return notes


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
    # Ended, it is kept: the low battery's history names it by its id, which no later
    # silence is given.
    later = await site.post("/api/v1/silences", OPERATOR, json={
        "device_id": "sd-1", "community": "hgy", "ends_ms": T0 + 60_000, "reason": "换电池",
    })  # fmt: skip
    assert later.json()["id"] == silence["id"] + 1


async def test_a_silence_that_cannot_be_made_says_why(site: Site) -> None:
    nothing = await site.post("/api/v1/silences", json={"ends_ms": T0 + 1, "reason": "x"})
    assert nothing.status_code == 422
    assert "needs a device, a place or a rule" in nothing.json()["detail"]
    backwards = await site.post("/api/v1/silences", json={
        "device_id": "sd-1", "starts_ms": T0 + 120_000, "ends_ms": T0 + 60_000, "reason": "x",
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


async def test_a_silence_for_a_building_names_its_compound(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock, registry_text=TWO_BUILDINGS_3) as site:
        made = await site.post("/api/v1/silences", OPERATOR, json={
            "community": "hgy", "compound": "lakeside", "building": "3",
            "ends_ms": T0 + 3_600_000, "reason": "湖光苑3号楼检修",
        })  # fmt: skip
        assert made.status_code == 201, made.text
        silence = made.json()
        assert (silence["area"], silence["compound"], silence["building"]) == (
            None, "lakeside", "3",
        )  # fmt: skip
        # Building 3 of lakeside is muted; building 3 of hillside is not.
        assert await tampering(site) == {"sd-1": f"muted by silence {silence['id']}", "sd-2": None}
    # Kept with its compound across a restart.
    async with open_site(tmp_path, clock, registry_text=TWO_BUILDINGS_3) as site:
        (kept,) = (await site.get("/api/v1/silences")).json()
        assert kept == silence


async def test_a_silence_for_an_area_mutes_that_area_alone(tmp_path: Path) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_BUILDINGS_3) as site:
        made = await site.post("/api/v1/silences", OPERATOR, json={
            "community": "hgy", "area": "west", "ends_ms": T0 + 3_600_000, "reason": "西区停电",
        })  # fmt: skip
        assert made.status_code == 201, made.text
        assert await tampering(site) == {
            "sd-1": None,
            "sd-2": f"muted by silence {made.json()['id']}",
        }
        unplaced = await site.post("/api/v1/silences", OPERATOR, json={
            "compound": "lakeside", "ends_ms": T0 + 1, "reason": "x",
        })  # fmt: skip
        assert unplaced.status_code == 422
        assert unplaced.json()["detail"] == "a compound is named within its community"


async def test_a_silence_for_a_device_mutes_it_in_its_own_community_alone(
    tmp_path: Path,
) -> None:
    # The same bracelet id in a second community of the installation.
    registry = REGISTRY + "br-1,bracelet,lgy,north,pine,7,1-101,,,赵六,13600002222,,30.10,120.10\n"
    async with open_site(tmp_path, ManualClock(T0), registry_text=registry) as site:
        # Made for community hgy's br-1 (a battery change), an id that repeats elsewhere.
        bare = await site.post("/api/v1/silences", OPERATOR, json={
            "device_id": "br-1", "ends_ms": T0 + 3_600_000, "reason": "更换手环电池",
        })  # fmt: skip
        assert bare.status_code == 422
        assert bare.json()["detail"] == "a device is named within its community"
        made = await site.post("/api/v1/silences", OPERATOR, json={
            "community": "hgy", "device_id": "br-1", "ends_ms": T0 + 3_600_000,
            "reason": "更换手环电池",
        })  # fmt: skip
        assert made.status_code == 201, made.text
        # Community lgy's wearer of br-1: heart rate dangerously low, worn.
        for community in ("hgy", "lgy"):
            for offset_s in (0, 30, 61):
                await site.send(f"community/{community}/bracelet/br-1/telemetry",
                                {"ts": T0 + offset_s * 1000, "heart_rate_bpm": 30, "worn": True})  # fmt: skip
        notes = {}
        for community in ("hgy", "lgy"):
            (alert,) = (await site.get(f"/api/v1/alerts?community={community}")).json()["alerts"]
            detail = (await site.get(f"/api/v1/alerts/{alert['alert_id']}")).json()
            notes[community] = detail["history"][0]["note"]
        assert notes == {"hgy": f"muted by silence {made.json()['id']}", "lgy": None}


async def test_silences_made_before_compounds_and_areas_keep_working(tmp_path: Path) -> None:
    # A silence as an earlier version stored it, with no area or compound column.
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as conn:
        conn.execute(
            "CREATE TABLE silences (id INTEGER PRIMARY KEY, community TEXT, building TEXT,"
            " device_id TEXT, rule TEXT, starts_ms INTEGER NOT NULL, ends_ms INTEGER NOT NULL,"
            " author TEXT NOT NULL, reason TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO silences (community, building, starts_ms, ends_ms, author, reason)"
            " VALUES ('hgy', '3', ?, ?, 'desk', '检修烟感')",
            (T0, T0 + 3_600_000),
        )
    conn.close()
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_BUILDINGS_3) as site:
        (old,) = (await site.get("/api/v1/silences")).json()
        assert (old["community"], old["area"], old["compound"], old["building"]) == (
            "hgy", None, None, "3",
        )  # fmt: skip
        # As before: every building 3 of the community.
        muted = f"muted by silence {old['id']}"
        assert await tampering(site) == {"sd-1": muted, "sd-2": muted}
        made = await site.post("/api/v1/silences", OPERATOR, json={
            "community": "hgy", "compound": "hillside", "ends_ms": T0 + 1, "reason": "x",
        })  # fmt: skip
        assert made.status_code == 201, made.text


async def test_a_desk_limited_to_its_community_silences_within_it_alone(tmp_path: Path) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_COMMUNITIES) as site:

        async def make(token: str, **where: str) -> tuple[int, dict[str, object]]:
            made = await site.post("/api/v1/silences", token, json={
                **where, "ends_ms": T0 + 3_600_000, "reason": "检修",
            })  # fmt: skip
            return made.status_code, made.json()

        status, theirs = await make(ADMIN, community="lgy", device_id="sd-1")
        assert status == 201
        status, everywhere = await make(ADMIN, rule="smoke_tampering")
        assert status == 201
        status, mine = await make(DESK_HGY, community="hgy", device_id="sd-1")
        assert (status, mine["author"]) == (201, "desk-hgy")
        # Neither another community's devices nor every community's may be muted.
        for where in ({"community": "lgy", "device_id": "sd-1"}, {"rule": "smoke_tampering"},
                      {"community": "nowhere"}):  # fmt: skip
            status, refused = await make(DESK_HGY, **where)
            assert status == 403, where
            assert refused["detail"] == (
                "desk-hgy silences only within its communities (hgy): name one as `community`"
            )
        # Its own, and the one of every community that mutes its alerts too.
        listed = (await site.get("/api/v1/silences", DESK_HGY)).json()
        assert [s["id"] for s in listed] == [everywhere["id"], mine["id"]]
        # Another community's silence is answered as one that does not exist.
        for silence_id in (theirs["id"], 999):
            gone = await site.delete(f"/api/v1/silences/{silence_id}", DESK_HGY)
            assert (gone.status_code, gone.json()["detail"]) == (404, f"no silence {silence_id}")
        shared = await site.delete(f"/api/v1/silences/{everywhere['id']}", DESK_HGY)
        assert shared.status_code == 403
        assert (await site.delete(f"/api/v1/silences/{mine['id']}", DESK_HGY)).status_code == 204
        kept = (await site.get("/api/v1/silences", OPERATOR)).json()
        assert [s["id"] for s in kept] == [theirs["id"], everywhere["id"]]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        # Times typed in seconds rather than milliseconds: a silence of 1970, that
        # mutes nothing and is not even listed.
        ({"building": "3", "starts_ms": T0 // 1000, "ends_ms": T0 // 1000 + 3600}, "ends_ms"),
        # It can never match: silences match by the device's registered place.
        ({"building": "3号楼", "ends_ms": T0 + 3_600_000}, "3号楼"),
        # A rule misspelt mutes nothing.
        ({"rule": "smoke_low_batery", "ends_ms": T0 + 3_600_000}, "smoke_low_batery"),
    ],
)
async def test_a_silence_that_would_mute_nothing_is_refused(
    tmp_path: Path, body: dict[str, object], named: str
) -> None:
    async with open_site(tmp_path, ManualClock(T0)) as site:
        made = await site.post(
            "/api/v1/silences", OPERATOR, json={"community": "hgy", "reason": "检修", **body}
        )
        assert made.status_code == 422, made.text
        assert named in made.json()["detail"]


async def test_a_silence_ending_in_the_past_says_so_when_its_start_is_left_out(
    site: Site,
) -> None:
    # The usual mistake, `ends_ms` in seconds with `starts_ms` left out: the answer names
    # `ends_ms`, not a start the operator never gave.
    made = await site.post(
        "/api/v1/silences",
        OPERATOR,
        json={"community": "hgy", "device_id": "br-1", "ends_ms": T0 // 1000 + 3600,
              "reason": "检修"},
    )  # fmt: skip
    assert made.status_code == 422
    assert made.json()["detail"].startswith(f"ends_ms {T0 // 1000 + 3600} is already past")


async def test_a_silence_of_a_community_no_device_can_be_in_is_refused(tmp_path: Path) -> None:
    # With only registered devices taken in, a silence of a misspelt community (lyg for
    # lgy) would mute nothing: refused, as a place without a device is.
    config = site_config(tmp_path, registry_text=TWO_COMMUNITIES)
    config = config.model_copy(
        update={"ingest": config.ingest.model_copy(update={"require_registered": True})}
    )
    clock = ManualClock(T0)
    async with serve_site(Gateway(config, clock), clock) as site:
        made = await site.post(
            "/api/v1/silences",
            ADMIN,
            json={"community": "lyg", "ends_ms": T0 + 3_600_000, "reason": "检修"},
        )
        assert made.status_code == 422, made.text
        assert "lyg" in made.json()["detail"]


# A silence ends when its author meant: a time in microseconds is refused, as one in
# seconds is, not taken as a silence muting the community for good.
async def test_a_silence_ending_in_microseconds_is_refused(site: Site) -> None:
    an_hour_on_us = (T0 + 3_600_000) * 1000
    answer = await site.post(
        "/api/v1/silences",
        json={"community": "hgy", "ends_ms": an_hour_on_us, "reason": "maintenance"},
    )
    assert answer.status_code == 422, answer.text
    assert "more than a year" in answer.json()["detail"]
    a_season = await site.post(
        "/api/v1/silences",
        json={"community": "hgy", "ends_ms": T0 + 90 * 86_400_000, "reason": "管网改造"},
    )
    assert a_season.status_code == 201, a_season.text


# A script told 405 reads in Allow what the address takes: silences are made with POST.
async def test_a_method_not_allowed_names_every_method_the_address_takes(site: Site) -> None:
    answer = await site.client.put(
        "/api/v1/silences", headers={"Authorization": f"Bearer {ADMIN}"}, json={}
    )
    assert answer.status_code == 405
    assert {m.strip() for m in answer.headers["allow"].split(",")} == {"GET", "POST"}
