from pathlib import Path

import pytest

from gateway.api import quarantine
from gateway.clock import ManualClock
from tests.unit.api.conftest import (
    DESK_HGY,
    IMEI_HGY,
    IMEI_LGY,
    OPERATOR,
    T0,
    TWO_COMMUNITIES,
    WORKER,
    Site,
    open_site,
)


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


async def test_a_desk_limited_to_its_community_sees_its_rejected_messages_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_COMMUNITIES) as site:
        # A vendor's message belongs to the community the registry puts its IMEI in; an
        # IMEI it does not list, or a topic of no community, to none.
        own = [
            "community/hgy/smoke_detector/sd-1/telemetry",
            f"vendor/acme-smoke/{IMEI_HGY}/up",
        ]
        for topic in (*own, "community/lgy/smoke_detector/sd-1/telemetry",
                      f"vendor/acme-smoke/{IMEI_LGY}/up", "vendor/acme-smoke/861111111111111/up",
                      "somewhere/else"):  # fmt: skip
            await site.send(topic, b"{ not json")
        # Many more of another community's after them.
        for _ in range(30):
            await site.send("community/lgy/bracelet/br-1/telemetry", {"heart_rate_bpm": 999})

        async def topics(query: str, token: str = DESK_HGY) -> list[str]:
            response = await site.get(f"/api/v1/quarantine?{query}", token)
            assert response.status_code == 200, response.text
            return [q["topic"] for q in response.json()]

        assert await topics("") == own[::-1]
        assert await topics("limit=1") == own[1:]
        assert await topics("reason=not_json") == own[::-1]
        assert await topics("reason=out_of_range") == []
        assert len(await topics("limit=1000", OPERATOR)) == 36
        # A desk's search looks through the newest rejected messages alone, however
        # many there are of others.
        monkeypatch.setattr(quarantine, "MAX_SCOPED_SCAN_ROWS", 10)
        assert await topics("") == []
