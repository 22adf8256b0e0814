"""Last-heard times by device, and the devices heard since they were last saved."""

from __future__ import annotations

from gateway.decode.record import DeviceRef
from gateway.rules.presence import LastHeard

SMOKE = DeviceRef("hgy", "smoke_detector", "sd-1")
WRIST = DeviceRef("hgy", "bracelet", "br-1")


def test_heard_devices_are_taken_once_with_their_latest_time() -> None:
    heard = LastHeard()
    heard.set(SMOKE, 100)  # start-up: known, not fresh
    assert heard.take_fresh() == []
    for device, at_ms in ((WRIST, 200), (SMOKE, 300), (WRIST, 400)):
        heard.hear(device, at_ms)
    assert sorted(heard.take_fresh()) == [
        (("hgy", "bracelet"), {"br-1": 400}),
        (("hgy", "smoke_detector"), {"sd-1": 300}),
    ]
    assert heard.take_fresh() == []
    assert heard.get(WRIST) == 400 and heard.get(DeviceRef("hgy", "bracelet", "x")) is None
    assert sorted(heard, key=lambda item: item[1]) == [(SMOKE, 300), (WRIST, 400)]
    assert len(heard) == 2
    assert heard.type_of("hgy", "br-1") == "bracelet" and heard.type_of("other", "br-1") is None
