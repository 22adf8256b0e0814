"""The closed loop: a simulated fall through real Mosquitto reaches a grid worker by
webhook and by MQTT, and is acknowledged, reached and closed on the page its link opens;
the handling times land in InfluxDB."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pytest_httpserver import HTTPServer

from gateway.clock import SystemClock
from gateway.config import GatewayConfig, MqttConfig
from gateway.ingest.mqtt import subscriber_for
from gateway.notify.hooks import MqttPublisher
from gateway.notify.log import AttemptResult
from gateway.notify.policy import MqttChannel
from gateway.rules.alert import AlertState
from simulators.fleet import Fleet
from simulators.scenario import Scenario, ScenarioKind
from tests.integration.harness import (
    Publisher,
    close_sockets,
    gateway_config,
    running,
    wait_until,
)
from tests.integration.services import InfluxService, MosquittoService
from tests.unit.notify.test_notifier import SMOKE, Rig, fall, reading


def notify_policy(namespace: str, webhook_url: str) -> dict[str, object]:
    return {
        "channels": {
            "worker-app": {"type": "webhook", "url": webhook_url,
                           "headers": {"Authorization": "Bearer app-token"}},
            "app-topic": {"type": "mqtt"},
        },
        "receivers": [
            {"name": "wang-fang", "display_name": "王芳", "phone": "13800000001",
             "channels": ["worker-app"]},
            {"name": "duty-phone", "channels": ["app-topic"]},
        ],
        "rosters": [{"cell": {"community": namespace},
                     "shifts": [{"receiver": "wang-fang"}]}],
        "routes": [{"match": {"severities": ["critical"]}, "escalation": "critical"}],
        "escalations": {"critical": [{"after_s": 0,
                                      "to": ["on_duty", "duty-phone", "emergency_contacts"]},
                                     {"after_s": 180, "to": ["duty-phone"]}]},
        # A wearer's family, by their number as the registry has it: "+86..." must not
        # become a wildcard in the topic, which would make the broker drop the
        # gateway's connection.
        "emergency_contact_channels": ["app-topic"],
    }  # fmt: skip


async def test_a_fall_reaches_the_grid_worker_who_closes_it_through_the_link(
    tmp_path: Path,
    mosquitto: MosquittoService,
    influxdb: InfluxService,
    influx_db: str,
    namespace: str,
    httpserver: HTTPServer,
) -> None:
    fleet = Fleet.build(seed=5, devices=8, communities=1, community_names=[namespace])
    registry_file = tmp_path / "devices.csv"
    # The wearers' families by their numbers in the international form.
    registry = re.sub(r"(?<=:)(1\d{10})\b", r"+86\1", fleet.registry_csv())
    registry_file.write_text(registry, encoding="utf-8")
    start_ms = time.time_ns() // 1_000_000 - 600_000
    messages = [
        (m.topic, m.payload)
        for m in fleet.messages(
            start_ms=start_ms, duration_s=300, scenarios=[Scenario(ScenarioKind.FALL, 60.0)]
        )
    ]
    httpserver.expect_request("/notify", method="POST").respond_with_data("", status=204)
    base = gateway_config(tmp_path, mosquitto, namespace, registry_file=registry_file,
                          influx={"url": influxdb.url, "database": influx_db})  # fmt: skip
    config = GatewayConfig.model_validate(
        {
            **base.model_dump(exclude_none=True),
            "api": {"port": 0, "public_url": "https://gw.example.cn"},
            "notify": notify_policy(namespace, httpserver.url_for("/notify")),
        }
    )
    # What the app's topics received: (the receiver's level of the topic, the document).
    app_received: list[tuple[str, dict[str, object]]] = []
    app = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    app.on_message = lambda client, userdata, message: app_received.append(
        (message.topic.rsplit("/", 1)[1], json.loads(message.payload))
    )
    app.connect(mosquitto.host, mosquitto.port)
    app.subscribe(f"notify/{namespace}/+", qos=1)
    app.loop_start()
    publisher = Publisher(mosquitto)
    try:
        async with running(config) as gateway:
            publisher.publish_all(messages)  # type: ignore[arg-type]

            def falls() -> list[dict[str, object]]:
                bodies = [json.loads(r.get_data()) for r, _ in httpserver.log]
                return [b for b in bodies if b["rule"] == "fall"]

            await wait_until(lambda: len(falls()) == 1, what="the fall notification")
            (request, _) = next(
                (r, s) for r, s in httpserver.log if json.loads(r.get_data())["rule"] == "fall"
            )
            assert request.headers["Authorization"] == "Bearer app-token"
            document = falls()[0]
            assert request.headers["Idempotency-Key"] == document["key"]
            assert document["severity"] == "critical"
            assert document["receiver"] == "wang-fang"
            device = document["device"]
            assert isinstance(device, dict) and device["device_type"] == "bracelet"
            ack_url = str(document["ack_url"])
            assert ack_url.startswith("https://gw.example.cn/a/")

            def app_falls() -> list[str]:
                return sorted(receiver for receiver, m in app_received if m["rule"] == "fall")

            wearer = gateway.registry.get(namespace, str(device["device_id"]))
            assert wearer is not None and wearer.emergency_contacts
            family = [f"contact:{c.phone}".replace("+", "%2B") for c in wearer.emergency_contacts]
            assert all(f.startswith("contact:%2B86") for f in family)
            # The duty phone and the family through the app, the family's numbers whole
            # in one level of the topic.
            await wait_until(
                lambda: app_falls() == sorted(["duty-phone", *family]), what="the app's copies"
            )

            # The grid worker opens the link on the phone and takes the alert there.
            assert gateway.api is not None
            await asyncio.wait_for(gateway.api.started.wait(), 10)
            token = ack_url.rsplit("/", 1)[1]
            page = f"http://127.0.0.1:{gateway.api.port}/a/{token}"
            link = gateway.links.verify(token, gateway.clock.now_ms())
            async with httpx.AsyncClient() as phone:
                opened = await phone.get(page)
                assert opened.status_code == 200
                assert "跌倒" in opened.text
                for action, form in (("acknowledge", None), ("arrive", None),
                                     ("close", {"note": "已扶起，无外伤"})):  # fmt: skip
                    answer = await phone.post(f"{page}/{action}", data=form)
                    assert answer.status_code == 303, answer.text
                again = await phone.post(f"{page}/acknowledge")
                assert again.status_code == 409
            closed = gateway.alerts.get(link.alert_id)
            assert (closed.state, closed.closed_by, closed.note) == (
                AlertState.CLOSED, "wang-fang", "已扶起，无外伤",
            )  # fmt: skip
            assert [(s.state, s.actor) for s in gateway.alerts.history(link.alert_id)][1:] == [
                (AlertState.ACKNOWLEDGED, "wang-fang"),
                (AlertState.ARRIVED, "wang-fang"),
                (AlertState.CLOSED, "wang-fang"),
            ]
            # Acknowledged: the escalation waiting for its 180 s is stopped.
            assert not gateway.notifications.due_steps(gateway.clock.now_ms() + 200_000)

            def handling() -> dict[str, object]:
                rows = influxdb.query(
                    influx_db,
                    "SELECT max(acknowledge_s) AS ack, max(arrive_s) AS arrive,"
                    " max(close_s) AS close FROM alert_handling"
                    f" WHERE alert_id = '{link.alert_id}' AND rule = 'fall'",
                )
                return rows[0] if rows else {}

            await wait_until(
                lambda: handling().get("close") is not None, what="handling times in InfluxDB"
            )
            times = handling()
            assert times["close"] >= times["arrive"] >= times["ack"] > 0  # type: ignore[operator]

            def sent_by() -> set[str]:
                rows = influxdb.query(
                    influx_db,
                    "SELECT count(\"count\") FROM notification WHERE result = 'sent'"
                    f" AND alert_id = '{link.alert_id}' GROUP BY channel",
                )
                return {str(row["channel"]) for row in rows}

            await wait_until(
                lambda: sent_by() == {"worker-app", "app-topic"}, what="notifications in InfluxDB"
            )
        # A restart sends nothing again.
        before = len(httpserver.log)
        async with running(config):
            await asyncio.sleep(1.0)
        assert len(httpserver.log) == before
    finally:
        publisher.close()
        app.disconnect()
        app.loop_stop()
        close_sockets(app)


async def test_a_fall_reaches_a_worker_whose_app_is_offline_by_her_next_channel(
    tmp_path: Path, fresh_mosquitto: MosquittoService, namespace: str
) -> None:
    """A broker acknowledges a publish nobody subscribes to, and drops it: the app's
    channel cannot say she has it, so a fall goes by her next channel too."""
    config = MqttConfig.model_validate(
        {"host": fresh_mosquitto.host, "port": fresh_mosquitto.port,
         "client_id": f"gw-{namespace}"[:64], "topics": [f"{namespace}/#"],
         "alarm_topics": [], "status_topic": None}
    )  # fmt: skip
    connection = subscriber_for(config, SystemClock(), status=False)
    await connection.start()
    try:
        await wait_until(connection.connected.is_set, timeout_s=10)
        rig = Rig(tmp_path / "outbox.sqlite3")
        # wang-fang's first channel is the grid-worker app, then SMS, as in the shipped
        # policy; her app subscribes to nothing.
        app = MqttPublisher("wecom", MqttChannel(type="mqtt", timeout_s=5), connection.publish)
        rig.channels["wecom"] = rig.notifier.channels["wecom"] = app  # type: ignore[assignment]
        rig.feed(fall())
        await rig.after(0)
        (alert,) = [e for e in rig.book.open_alerts() if e.rule == "fall"]
        mine = [(a.channel, a.result) for a in rig.log.attempts(alert.alert_id)
                if a.receiver == "wang-fang"]  # fmt: skip
        assert mine == [("wecom", AttemptResult.SENT), ("sms", AttemptResult.SENT)]
        # A low battery stops at the app once the broker took it.
        rig.feed(reading(SMOKE, 10, battery_pct=10))
        await rig.after(10)
        (low,) = [e for e in rig.book.open_alerts() if e.rule == "smoke_low_battery"]
        told = [(a.channel, a.result) for a in rig.log.attempts(low.alert_id)]
        assert told == [("wecom", AttemptResult.SENT)]
    finally:
        connection.stop()
