import shutil
from pathlib import Path

from gateway.api.privacy import (
    coarse_fields,
    coarse_position,
    mask_name,
    mask_phone,
    mask_receiver,
)
from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import PROJECT_ROOT
from gateway.decode.record import Position
from gateway.stats import Stats
from gateway.store.backoff import Backoff
from gateway.store.drain import OutboxDrain
from gateway.store.influx import RejectedLine, WriteResult
from tests.unit.api.conftest import (
    ADMIN,
    DESK_HGY,
    OPERATOR,
    T0,
    WORKER,
    Site,
    serve_site,
    site_config,
)


def test_names_keep_their_first_and_last_character() -> None:
    assert mask_name("张三明") == "张*明"
    assert mask_name("欧阳小明") == "欧**明"
    assert mask_name("王五") == "王*"
    assert mask_name("王") == "*"


def test_phones_keep_the_first_three_and_last_four_digits() -> None:
    assert mask_phone("13812345678") == "138****5678"
    # As the registry keeps it: masked as dialled in the mainland, its prefix showing.
    assert mask_phone("+8613812345678") == "138****5678"
    assert mask_phone("+8637166123456") == "037*****3456"
    assert mask_phone("87654321") == "****4321"
    assert mask_phone("110") == "***"


def test_an_emergency_contact_named_by_their_phone_is_masked_as_a_phone() -> None:
    assert mask_receiver("contact:13987654321") == "contact:139****4321"
    # Receivers in the policy and token names are not personal data.
    assert mask_receiver("wang-fang") == "wang-fang"


def test_a_position_is_made_about_a_kilometre_wide_and_nothing_else_changes() -> None:
    fields = {"lat": 34.75612, "lon": 113.62387, "heart_rate_bpm": 72, "worn": True}
    assert coarse_fields(fields) == {"lat": 34.76, "lon": 113.62, "heart_rate_bpm": 72,
                                     "worn": True}  # fmt: skip
    # Half a position is coarse too; a field that is no number is left alone.
    assert coarse_fields({"lat": 34.75612}) == {"lat": 34.76}
    assert coarse_fields({"lat": True, "lon": 113}) == {"lat": True, "lon": 113.0}
    assert coarse_position(Position(-33.86785, 151.20732)) == Position(-33.87, 151.21)


# Where br-1's wearer is: 800 m from home, in the next compound.
WHERE = {"lat": 34.75612, "lon": 113.62387}
COARSE = {"lat": 34.76, "lon": 113.62}


async def wander(site: Site) -> str:
    """br-1 reports where its wearer is, twice, then they fall there: the fall's alert."""
    for n in range(2):
        await site.send("community/hgy/bracelet/br-1/telemetry",
                        {"ts": T0 + n, "heart_rate_bpm": 72, "worn": True, "battery_pct": 80,
                         "steps": 1200, **WHERE})  # fmt: skip
    return await site.fall("br-1", **WHERE)


async def test_an_operator_sees_where_a_wearer_is_only_coarse(site: Site) -> None:
    alert_id = await wander(site)
    for token in (OPERATOR, DESK_HGY):
        device = (await site.get("/api/v1/devices/hgy/br-1", token)).json()
        assert {k: device["latest"]["fields"][k] for k in ("lat", "lon", "heart_rate_bpm")} == {
            **COARSE, "heart_rate_bpm": 72,
        }  # fmt: skip
        listed = (await site.get("/api/v1/devices?device_type=bracelet", token)).json()
        assert {k: listed["devices"][0]["latest"]["fields"][k] for k in COARSE} == COARSE
        readings = (await site.get("/api/v1/devices/hgy/br-1/readings", token)).json()
        assert len(readings["readings"]) == 2
        for reading in readings["readings"]:
            assert {k: reading["fields"][k] for k in ("lat", "lon", "steps")} == {
                **COARSE, "steps": 1200,
            }  # fmt: skip
        alerts = (await site.get("/api/v1/alerts", token)).json()["alerts"]
        assert [a["position"] for a in alerts] == [COARSE]
        detail = (await site.get(f"/api/v1/alerts/{alert_id}", token)).json()
        assert detail["alert"]["position"] == COARSE
        for response in (device, listed, readings, alerts, detail):
            assert "34.756" not in str(response) and "113.623" not in str(response)
    taken = await site.post(f"/api/v1/alerts/{alert_id}/acknowledge", OPERATOR)
    assert taken.json()["position"] == COARSE
    assert (await site.get("/api/v1/audit")).json() == []


async def test_a_position_shown_whole_is_audited_as_such(site: Site) -> None:
    alert_id = await wander(site)
    audit = site.gateway.api.context.audit if site.gateway.api else None
    assert audit is not None

    def read_by(actor: str) -> list[tuple[str, str, str]]:
        return [(e.device_id, e.what, e.via) for e in audit.entries(actor=actor)]

    device = (await site.get("/api/v1/devices/hgy/br-1", ADMIN)).json()
    assert {k: device["latest"]["fields"][k] for k in WHERE} == WHERE
    readings = (await site.get("/api/v1/devices/hgy/br-1/readings", ADMIN)).json()
    assert [{k: r["fields"][k] for k in WHERE} for r in readings["readings"]] == [WHERE] * 2
    assert read_by("root") == [
        ("br-1", "position", "GET /api/v1/devices/hgy/br-1/readings"),
        ("br-1", "wearer name, phone, emergency contacts, position",
         "GET /api/v1/devices/hgy/br-1"),
    ]  # fmt: skip
    # The grid worker of the cell, who must go there: whole, and audited.
    alerts = (await site.get("/api/v1/alerts", WORKER)).json()["alerts"]
    assert [a["position"] for a in alerts] == [WHERE]
    assert read_by("wang-fang") == [("br-1", "position", "GET /api/v1/alerts")]
    detail = (await site.get(f"/api/v1/alerts/{alert_id}", WORKER)).json()
    assert detail["alert"]["position"] == WHERE
    assert read_by("wang-fang")[0] == (
        "br-1", "wearer name, phone, emergency contacts, position", f"GET /api/v1/alerts/{alert_id}"
    )  # fmt: skip


async def test_a_device_no_person_wears_shows_its_position_whole(tmp_path: Path) -> None:
    # The shipped profiles with the bracelet's positions not declared personal.
    profiles = tmp_path / "profiles"
    shutil.copytree(PROJECT_ROOT / "device_profiles", profiles)
    bracelet = profiles / "bracelet.yaml"
    bracelet.write_text(
        bracelet.read_text(encoding="utf-8").replace("personal_positions: true", ""),
        encoding="utf-8",
    )
    clock = ManualClock(T0)
    config = site_config(tmp_path).model_copy(update={"profiles_dir": profiles})
    async with serve_site(Gateway(config, clock), clock) as site:
        await wander(site)
        device = (await site.get("/api/v1/devices/hgy/br-1", OPERATOR)).json()
        assert {k: device["latest"]["fields"][k] for k in WHERE} == WHERE
        alerts = (await site.get("/api/v1/alerts", OPERATOR)).json()["alerts"]
        assert [a["position"] for a in alerts] == [WHERE]
        # Nothing personal was shown whole to the admin but the wearer.
        await site.get("/api/v1/devices/hgy/br-1/readings", ADMIN)
        await site.get("/api/v1/devices/hgy/br-1", ADMIN)
        assert [e["what"] for e in (await site.get("/api/v1/audit")).json()] == [
            "wearer name, phone, emergency contacts"
        ]


async def test_a_rejected_message_of_a_bracelet_shows_where_only_coarse(site: Site) -> None:
    await site.send("community/hgy/bracelet/br-1/telemetry",
                    {"ts": T0, "heart_rate_bpm": 300, **WHERE})  # fmt: skip
    await site.send("community/hgy/bracelet/br-1/telemetry", {"ts": T0, "lat": "34.75612"})
    (odd_lat, too_fast) = (await site.get("/api/v1/quarantine", OPERATOR)).json()
    assert too_fast["reason"] == "out_of_range"
    assert '"lat": 34.76, "lon": 113.62' in too_fast["payload"]
    assert odd_lat["detail"] == "lat must be a number, got '34.76'"
    assert (await site.get("/api/v1/audit")).json() == []
    whole = (await site.get("/api/v1/quarantine", ADMIN)).json()
    assert "34.75612" in whole[0]["detail"] and "113.62387" in whole[1]["payload"]
    (entry,) = (await site.get("/api/v1/audit")).json()
    assert (entry["device_id"], entry["what"], entry["via"]) == (
        "br-1", "position", "GET /api/v1/quarantine"
    )  # fmt: skip


async def test_a_bracelets_message_under_another_devices_type_shows_where_only_coarse(
    site: Site,
) -> None:
    # br-1 is registered as a bracelet: whatever topic its firmware publishes on (a
    # smoke detector's, or a type no profile knows), what it sends is where its wearer
    # is, their flat at night.
    for device_type in ("smoke_detector", "wristband_v2"):
        await site.send(f"community/hgy/{device_type}/br-1/telemetry",
                        {"ts": T0, "heart_rate_bpm": 72, **WHERE})  # fmt: skip
    refused = (await site.get("/api/v1/quarantine", OPERATOR)).json()
    assert [q["reason"] for q in refused] == ["unknown_device_type", "device_type_mismatch"]
    for q in refused:
        assert '"lat": 34.76, "lon": 113.62' in q["payload"]
        assert "34.75612" not in q["detail"] and "113.62387" not in q["detail"]
    assert (await site.get("/api/v1/audit")).json() == []
    whole = (await site.get("/api/v1/quarantine", ADMIN)).json()
    assert all('"lat": 34.75612, "lon": 113.62387' in q["payload"] for q in whole)
    (entry,) = (await site.get("/api/v1/audit")).json()
    assert (entry["device_id"], entry["what"], entry["via"]) == (
        "br-1", "position", "GET /api/v1/quarantine"
    )  # fmt: skip


async def test_a_message_without_a_position_is_shown_as_it_came_and_not_audited(
    site: Site,
) -> None:
    # A fall indoors, without a fix: lat and lon empty, refused as the wrong type.
    await site.send("community/hgy/bracelet/br-1/event",
                    {"ts": T0, "event": "fall", "lat": "", "lon": "", "confidence": 0.873})  # fmt: skip
    for token in (OPERATOR, ADMIN):
        (refused,) = (await site.get("/api/v1/quarantine", token)).json()
        assert '"lon": "", "confidence": 0.873}' in refused["payload"]
    assert (await site.get("/api/v1/audit")).json() == []


async def test_a_bracelet_s_position_in_millionths_of_a_degree_is_masked(site: Site) -> None:
    await site.send("community/hgy/bracelet/br-1/telemetry",
                    {"ts": T0, "heart_rate_bpm": 72, "lat": 34756121, "lon": 113623874})  # fmt: skip
    (refused,) = (await site.get("/api/v1/quarantine", OPERATOR)).json()
    assert refused["reason"] == "out_of_range"
    assert '"lat": 34******, "lon": 11*******' in refused["payload"]
    assert refused["detail"].startswith("lat=34******")


class TypeConflict:
    """InfluxDB refusing the bracelet's lines, as a partial write does: `lat` was once
    written to the database as an integer."""

    async def write(self, lines: list[str]) -> WriteResult:
        refused = tuple(
            RejectedLine(line, "400: partial write: field type conflict")
            for line in lines
            if line.startswith("bracelet")
        )
        return WriteResult(len(lines) - len(refused), refused, 1)


async def test_a_bracelet_s_line_the_database_refused_shows_where_only_coarse(site: Site) -> None:
    await site.send("community/hgy/bracelet/br-1/telemetry",
                    {"ts": T0, "heart_rate_bpm": 72, **WHERE})  # fmt: skip
    drain = OutboxDrain(site.gateway.outbox, TypeConflict(), Backoff(1.0, 2.0), site.clock,
                        Stats(), batch_lines=50)  # fmt: skip
    while await drain.drain_once():
        pass
    (refused,) = (await site.get("/api/v1/quarantine", OPERATOR)).json()
    assert (refused["topic"], refused["reason"]) == ("", "refused_by_database")
    assert "lat=34.76,lon=113.62" in refused["payload"]
    assert (await site.get("/api/v1/audit")).json() == []
    (whole,) = (await site.get("/api/v1/quarantine", ADMIN)).json()
    assert "lat=34.75612,lon=113.62387" in whole["payload"]
    (entry,) = (await site.get("/api/v1/audit")).json()
    assert (entry["community"], entry["device_id"], entry["what"]) == ("hgy", "br-1", "position")
