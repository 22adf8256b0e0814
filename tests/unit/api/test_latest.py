from pathlib import Path

import pytest

import gateway.api.latest as latest_module
from gateway.api.latest import LatestValues
from gateway.clock import ManualClock
from gateway.decode.record import DeviceRef, Reading, TimeSource
from gateway.ingest.message import InboundMessage
from gateway.registry import RegisteredDevice, Registry
from tests.unit.api.conftest import ADMIN, T0, FakeSource, open_site

# A bound small enough to fill in a test; the gateway's holds a district's 200,000.
BOUND = 20


async def test_a_registered_bracelet_heard_after_a_storm_of_stray_ids_shows_its_latest_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stray ids fill the bound for unregistered devices: the district's own devices
    # keep their latest values, and a wandering wearer's page where the bracelet is now.
    monkeypatch.setattr(latest_module, "MAX_UNREGISTERED_DEVICES", BOUND)
    async with open_site(tmp_path, ManualClock(T0)) as site:
        strays = [
            InboundMessage(f"community/hgy/bracelet/stray-{i}/telemetry",
                           f'{{"ts": {T0}, "battery_pct": 50}}'.encode(), T0, i + 1, 1)
            for i in range(BOUND + 5)
        ]  # fmt: skip
        await site.gateway.pipeline.handle(FakeSource(), strays)
        site.clock.advance(1)
        now_ms = site.clock.now_ms()
        await site.send(
            "community/hgy/bracelet/br-1/telemetry",
            {"ts": now_ms, "heart_rate_bpm": 72, "lat": 34.7512, "lon": 113.6234},
        )
        shown = (await site.get("/api/v1/devices/hgy/br-1", ADMIN)).json()
        assert shown["registered"] is True
        assert (shown["last_seen_ms"], shown["online"]) == (now_ms, True)
        assert shown["latest"]["fields"]["heart_rate_bpm"] == 72
        assert shown["latest"]["fields"]["lat"] == 34.7512


def test_past_the_bound_the_unregistered_device_heard_from_longest_ago_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A storm of stray ids must not keep an unregistered device installed after it from
    # being shown: the bound lets go of the ids gone silent, not of the newcomers.
    monkeypatch.setattr(latest_module, "MAX_UNREGISTERED_DEVICES", 3)
    bracelet = RegisteredDevice(
        device_id="br-1", device_type="bracelet", community="hgy", area="east",
        compound="lakeside", building="3",
    )  # fmt: skip
    latest = LatestValues(Registry([bracelet]))

    def hear(device_id: str, time_ms: int) -> DeviceRef:
        device = DeviceRef("hgy", "bracelet", device_id)
        latest.listen([Reading(device, time_ms, TimeSource.DEVICE, {"battery_pct": 50})])
        return device

    strays = [hear(f"stray-{i}", T0) for i in range(3)]
    registered = hear("br-1", T0)
    # Heard again: stray-1 is now the one heard from longest ago.
    hear("stray-0", T0 + 1)
    newcomer = hear("br-new", T0 + 2)
    assert set(latest.unregistered()) == {strays[0], strays[2], newcomer}
    assert latest.get(registered) is not None and latest.get(strays[1]) is None


def test_a_device_registered_by_a_reload_is_kept_whatever_the_strays_and_one_taken_out_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(latest_module, "MAX_UNREGISTERED_DEVICES", 3)
    bracelet = RegisteredDevice(device_id="br-1", device_type="bracelet", community="hgy")
    latest = LatestValues(Registry([bracelet]))

    def hear(device_id: str) -> DeviceRef:
        device = DeviceRef("hgy", "bracelet", device_id)
        latest.listen([Reading(device, T0, TimeSource.DEVICE, {"battery_pct": 50})])
        return device

    # A new resident's bracelet, on before the registry listed it.
    new = hear("br-new")
    registered = hear("br-1")
    latest.use_registry(
        Registry([RegisteredDevice(device_id="br-new", device_type="bracelet", community="hgy")])
    )
    # A storm of stray ids fills the bound: the newly registered bracelet stays, the
    # one taken out of the registry is let go with the strays heard before it.
    strays = [hear(f"stray-{i}") for i in range(3)]
    assert set(latest.unregistered()) == set(strays)
    assert latest.get(new) is not None and latest.get(registered) is None
