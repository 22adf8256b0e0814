from tests.unit.api.conftest import OPERATOR, WORKER, Site


async def test_rejected_messages_are_listed_with_their_reasons(site: Site) -> None:
    await site.send("community/hgy/bracelet/br-1/telemetry", b"\xffnot json")
    await site.send("community/hgy/bracelet/br-1/telemetry", {"heart_rate_bpm": 999})
    listed = (await site.get("/api/v1/quarantine", OPERATOR)).json()
    assert [q["reason"] for q in listed] == ["out_of_range", "not_json"]
    assert listed[1]["payload"] == "\ufffdnot json"
    assert listed[1]["topic"] == "community/hgy/bracelet/br-1/telemetry"
    only = (await site.get("/api/v1/quarantine?reason=not_json&limit=5")).json()
    assert [q["reason"] for q in only] == ["not_json"]
    assert (await site.get("/api/v1/quarantine", WORKER)).status_code == 403
