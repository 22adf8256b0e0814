"""The Mosquitto config shipped in deploy/ runs a broker that refuses anonymous clients
and lets each device publish only on its own topics.

The test copies deploy/mosquitto/mosquitto.conf with its ports, folders and
certificates moved into a temporary folder; the ACL file is used exactly as shipped.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import PROJECT_ROOT
from tests.integration.harness import gateway_config, running, wait_until
from tests.integration.services import HOST, MosquittoService, free_port
from tests.integration.test_broker_security import make_certificates

SHIPPED = PROJECT_ROOT / "deploy" / "mosquitto"
PASSWORDS = {
    "gateway": "gw-pw",
    "sd-hgy-0001": "pw-1",
    "sd-hgy-0002": "pw-2",
    # A grid worker's app, by the receiver's name in the notification policy.
    "wang-fang": "pw-app",
}


class ShippedMosquitto(MosquittoService):
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.certs = workdir / "certs"
        make_certificates(self.certs)
        shutil.copy(SHIPPED / "acl", workdir / "acl")
        passwd = workdir / "passwd"
        passwd.write_text("")
        for user, password in PASSWORDS.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
        passwd.chmod(0o600)
        self.plain_port = free_port()
        super().__init__(workdir)

    def config_text(self) -> str:
        text = (SHIPPED / "mosquitto.conf").read_text()
        replacements = {
            "listener 1883 127.0.0.1": f"listener {self.plain_port} {HOST}",
            # Tests listen on the loopback address only.
            "listener 8883\n": f"listener {self.port} {HOST}\n",
            "/etc/mosquitto/certs/": f"{self.certs}/",
            "/etc/mosquitto/": f"{self.workdir}/",
            "/var/lib/mosquitto/": f"{self.data_dir}/",
        }
        for shipped, here in replacements.items():
            assert shipped in text, f"the shipped config no longer has {shipped!r}"
            text = text.replace(shipped, here)
        # Started as root here, it must not switch to the 'mosquitto' user.
        return "user root\n" + text


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ShippedMosquitto]:
    service = ShippedMosquitto(tmp_path / "mosquitto")
    service.start()
    try:
        yield service
    finally:
        service.stop()


class Client:
    """A connection; `refused` is the broker's answer when it is not a success."""

    def __init__(
        self,
        broker: ShippedMosquitto,
        user: str | None,
        password: str | None = None,
        *,
        tls: bool = True,
    ) -> None:
        self.answered = threading.Event()
        self.reason: mqtt.ReasonCode | None = None
        self.received: list[str] = []
        self.got = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user or 'anonymous'}-{free_port()}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set(ca_certs=str(broker.certs / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(HOST, broker.port if tls else broker.plain_port)
        self.client.loop_start()
        assert self.answered.wait(10), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # type: ignore[no-untyped-def]
        self.reason = reason
        self.answered.set()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self.got:
            self.received.append(message.topic)
            self.got.notify_all()

    @property
    def connected(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_anonymous_clients_and_wrong_passwords_are_refused(broker: ShippedMosquitto) -> None:
    for attempt in (
        Client(broker, None),
        Client(broker, None, tls=False),
        Client(broker, "sd-hgy-0001", "wrong"),
    ):
        try:
            assert not attempt.connected
            assert attempt.reason is not None
            assert attempt.reason.getName() in ("Not authorized", "Bad user name or password")
        finally:
            attempt.close()
    allowed = Client(broker, "sd-hgy-0001", PASSWORDS["sd-hgy-0001"])
    assert allowed.connected
    allowed.close()


def test_a_device_publishes_only_on_its_own_topics(broker: ShippedMosquitto) -> None:
    gateway = Client(broker, "gateway", PASSWORDS["gateway"])
    device = Client(broker, "sd-hgy-0001", PASSWORDS["sd-hgy-0001"])
    try:
        assert gateway.connected and device.connected
        subscribed = threading.Event()
        gateway.client.on_subscribe = lambda *args: subscribed.set()
        gateway.client.subscribe([("community/#", 1), ("vendor/#", 1)])
        assert subscribed.wait(10)
        forged = [
            "community/hgy/smoke_detector/sd-hgy-0002/telemetry",
            "community/hgy/smoke_detector/sd-hgy-0002/status",
            "community/hgy/bracelet/br-hgy-0001/event",
            "vendor/acme-smoke/860425041234563/up",
        ]
        own = "community/hgy/smoke_detector/sd-hgy-0001/telemetry"
        # Published in order on one connection, a forged message would reach the
        # subscriber before the device's own last one.
        for topic in [*forged, own]:
            device.client.publish(topic, b'{"battery_pct": 90}', qos=1).wait_for_publish(10)
        with gateway.got:
            assert gateway.got.wait_for(lambda: own in gateway.received, timeout=10)
        assert gateway.received == [own]
    finally:
        gateway.close()
        device.close()


def test_the_gateway_publishes_notifications_and_its_status_and_an_app_reads_only_its_own(
    broker: ShippedMosquitto,
) -> None:
    gateway = Client(broker, "gateway", PASSWORDS["gateway"])
    app = Client(broker, "wang-fang", PASSWORDS["wang-fang"])
    device = Client(broker, "sd-hgy-0001", PASSWORDS["sd-hgy-0001"])
    try:
        assert gateway.connected and app.connected and device.connected
        subscribed = threading.Event()
        app.client.on_subscribe = lambda *args: subscribed.set()
        # Everything it may read: its own notifications only.
        app.client.subscribe("notify/#", qos=1)
        assert subscribed.wait(10)
        others = "notify/hgy/li-qiang"
        forged = "notify/hgy/wang-fang"
        # A device cannot pass for the gateway, nor the app read another's notifications.
        device.client.publish(forged, b'{"title": "forged"}', qos=1).wait_for_publish(10)
        gateway.client.publish(others, b'{"title": "for li-qiang"}', qos=1).wait_for_publish(10)
        # The gateway's own, acknowledged as accepted (MQTT 5: a refusal would say so).
        acknowledged: list[mqtt.ReasonCode] = []
        gateway.client.on_publish = lambda c, u, mid, reason, props: acknowledged.append(reason)
        mine = gateway.client.publish(forged, b'{"title": "SOS"}', qos=1)
        mine.wait_for_publish(10)
        # And its own status (mqtt.status_topic), which a device may not say for it.
        status = "gateway/community-gateway/status"
        gateway.client.publish(status, b'{"online": true}', qos=1, retain=True).wait_for_publish(10)
        refused: list[mqtt.ReasonCode] = []
        device.client.on_publish = lambda c, u, mid, reason, props: refused.append(reason)
        device.client.publish(status, b'{"online": false}', qos=1).wait_for_publish(10)
        with app.got:
            assert app.got.wait_for(lambda: len(app.received) >= 1, timeout=10)
        assert [reason.is_failure for reason in acknowledged] == [False, False]
        assert [reason.getName() for reason in refused] == ["Not authorized"]
        # Published in order: anything the ACL let through would have come first.
        assert app.received == [forged]
    finally:
        gateway.close()
        app.close()
        device.close()


def test_the_shipped_broker_settings_for_outages(broker: ShippedMosquitto) -> None:
    text = (SHIPPED / "mosquitto.conf").read_text()
    settings = dict(
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert settings["allow_anonymous"] == "false"
    assert settings["persistence"] == "true"
    assert int(settings["autosave_interval"]) <= 30
    assert settings["max_inflight_messages"] == "0"
    assert int(settings["max_queued_messages"]) >= 1_000_000
    assert "pattern write community/+/+/%u/#" in (SHIPPED / "acl").read_text().splitlines()
    assert broker.running


async def test_the_gateway_logs_in_over_tls_and_takes_only_genuine_device_messages(
    tmp_path: Path, broker: ShippedMosquitto
) -> None:
    base = gateway_config(tmp_path, broker, "hgy")
    assert base.mqtt is not None
    config = base.model_copy(
        update={
            "mqtt": base.mqtt.model_validate(
                {
                    **base.mqtt.model_dump(),
                    "username": "gateway",
                    "password": PASSWORDS["gateway"],
                    "tls": {"ca_file": str(broker.certs / "ca.crt")},
                }
            )
        }
    )
    async with running(config) as gateway:
        assert not len(gateway.rules.heard)  # no registry: no device known yet
        device = await asyncio.to_thread(Client, broker, "sd-hgy-0001", PASSWORDS["sd-hgy-0001"])
        try:
            for topic in (
                "community/hgy/smoke_detector/sd-hgy-0002/telemetry",
                "community/hgy/smoke_detector/sd-hgy-0001/telemetry",
            ):
                info = device.client.publish(topic, b'{"battery_pct": 90}', qos=1)
                await asyncio.to_thread(info.wait_for_publish, 10)
            # The forged message was sent first: had the broker let it through, the
            # gateway would have heard of sd-hgy-0002 by the time it hears sd-hgy-0001.
            # Counted once its batch committed; judged by the rules once handed over.
            await wait_until(
                lambda: gateway.stats.messages_in >= 1 and len(gateway.rules.heard) >= 1,
                what="the genuine reading",
            )
            assert {ref.device_id for ref, _ in gateway.rules.heard} == {"sd-hgy-0001"}
            assert gateway.stats.messages_in == 1
        finally:
            device.close()
