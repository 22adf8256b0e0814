"""Running the gateway against the real services, and publishing to it as devices do."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import GatewayConfig
from tests.integration.services import MosquittoService


def gateway_config(
    tmp_path: Path,
    broker: MosquittoService,
    namespace: str,
    *,
    influx: dict[str, Any] | None = None,
    registry_file: Path | None = None,
    health_interval_s: float | None = None,
    **ingest: Any,
) -> GatewayConfig:
    """A config that listens only to this test's community and the vendor topic."""
    return GatewayConfig.model_validate(
        {
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "client_id": f"gw-{namespace}"[:64],
                "topics": [
                    f"community/{namespace}/+/+/telemetry",
                    f"community/{namespace}/+/+/status",
                    "vendor/acme-smoke/+/up",
                ],
                "alarm_topics": [f"community/{namespace}/+/+/event"],
                # A test's session should not outlive the test by long in the shared broker.
                "session_expiry_s": 60,
                "reconnect_min_s": 0.5,
                "reconnect_max_s": 1,
            },
            "influx": influx,
            "outbox": {"path": tmp_path / "outbox.sqlite3", "synchronous": "normal"},
            "ingest": {"commit_interval_s": 0.02, **ingest},
            "registry_file": registry_file,
            # Off unless a test asks: its lines would change the counts other tests check.
            "health_interval_s": health_interval_s,
        }
    )


@asynccontextmanager
async def running(config: GatewayConfig) -> AsyncIterator[Gateway]:
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    try:
        assert gateway.subscriber is not None
        await wait_until(gateway.subscriber.connected.is_set, what="gateway connected")
        if gateway.alarm_subscriber is not None:
            await wait_until(gateway.alarm_subscriber.connected.is_set, what="alarms connected")
        # The subscription is in place once the broker has answered it; a publish
        # before that would only reach a persistent session that does not exist yet.
        await asyncio.sleep(0.2)
        yield gateway
    finally:
        gateway.stop()
        await asyncio.wait_for(task, timeout=15)


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


class Publisher:
    """A device-side MQTT client publishing at QoS 1 and waiting for the broker's ack."""

    def __init__(self, broker: MosquittoService) -> None:
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"dev-{uuid.uuid4().hex[:10]}",
        )
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def publish(
        self, topic: str, payload: dict[str, Any] | bytes, *, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self._client.publish(topic, body, qos=1, retain=retain)

    def publish_all(self, messages: list[tuple[str, dict[str, Any] | bytes]]) -> None:
        infos = [self.publish(topic, payload) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        close_sockets(self._client)


def close_sockets(client: mqtt.Client) -> None:
    """Close the socket pair paho's network thread keeps for waking its loop, which it
    leaves to the garbage collector; collected in a cycle, its sockets may be finalised
    before paho closes them, an unclosed-socket warning."""
    client._reset_sockets()
