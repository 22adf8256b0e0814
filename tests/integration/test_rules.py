"""Alert rules fed by real MQTT traffic, across a restart."""

from __future__ import annotations

from pathlib import Path

from tests.integration.harness import Publisher, gateway_config, running, wait_until
from tests.integration.services import MosquittoService

T0 = 1_767_225_600_000


async def test_a_fire_alarm_firing_before_a_restart_is_not_new_after_it(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    topic = f"community/{namespace}/smoke_detector/sd-9/"
    config = gateway_config(tmp_path, mosquitto, namespace)
    publisher = Publisher(mosquitto)
    try:
        async with running(config) as gateway:
            publisher.publish_all([(topic + "event", {"ts": T0, "seq": 1, "event": "alarm"})])
            await wait_until(lambda: gateway.stats.alerts_firing == 1, what="fire alarm")
        async with running(config) as gateway:
            publisher.publish_all(
                [(topic + "telemetry", {"ts": T0 + 60_000, "seq": 2, "alarm": True})]
            )
            await wait_until(lambda: gateway.stats.messages_in == 1, what="next report")
            assert gateway.stats.alerts_firing == 0
            publisher.publish_all(
                [(topic + "telemetry", {"ts": T0 + 120_000, "seq": 3, "alarm": False})]
            )
            await wait_until(lambda: gateway.stats.alerts_resolved == 1, what="all clear")
    finally:
        publisher.close()
