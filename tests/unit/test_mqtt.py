"""The MQTT 5 subscription's handling of the bytes a broker sends, on a recorded
transport: what reaches the pipeline and what is acknowledged. Its talk with a real
Mosquitto is tested by the integration tests."""

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mqtt5
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.app import Gateway
from gateway.clock import ManualClock, SystemClock
from gateway.config import GatewayConfig, MqttConfig
from gateway.ingest.message import InboundMessage
from gateway.ingest.mqtt import MqttSubscriber, _Link, subscriber_for
from gateway.ingest.mqtt3 import Mqtt3Subscriber

TOPIC = "community/c1/b2/bracelet-0001/telemetry"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def packets(self) -> list[mqtt5.Packet]:
        """What was written since the last call, as packets."""
        found: list[mqtt5.Packet] = []
        view = memoryview(bytes(self.written))
        used = 0
        while used < len(view):
            packet, size = mqtt5.read(view[used:])
            found.append(packet)
            used += size
        self.written.clear()
        return found


def connect(
    subscriber: MqttSubscriber, *, session_present: bool = False
) -> tuple[_Link, RecordingTransport]:
    link = _Link(subscriber)
    transport = RecordingTransport()
    link.connection_made(transport)
    link.data_received(mqtt5.ConnAckPacket(session_present=session_present).write())
    return link, transport


def publish(packet_id: int, body: bytes, *, retain: bool = False) -> bytes:
    return mqtt5.PublishPacket(
        TOPIC, body, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=packet_id, retain=retain
    ).write()


def subscriber(retired: Sequence[str] = (), **config: object) -> MqttSubscriber:
    made = subscriber_for(MqttConfig.model_validate(config), ManualClock(), retired=retired)
    assert isinstance(made, MqttSubscriber)
    return made


async def test_the_connack_subscribes_at_qos_1_and_retires_old_filters() -> None:
    sub = subscriber(["devices/#"], topics=["community/+/+/+/telemetry"], alarm_topics=[])
    retired: list[list[str]] = []
    sub.on_retired = lambda topics: retired.append(list(topics))
    link, transport = connect(sub)
    subscribe, unsubscribe = transport.packets()
    assert isinstance(subscribe, mqtt5.SubscribePacket)
    assert [(f.pattern, f.max_qos.value) for f in subscribe.topic_filters] == [
        ("community/+/+/+/telemetry", 1)
    ]
    # Retained status once for a new subscription, not again after every reconnect.
    assert subscribe.topic_filters[0].retain_handling.value == 1
    assert isinstance(unsubscribe, mqtt5.UnsubscribePacket)
    assert unsubscribe.patterns == ["devices/#"]
    assert not sub.connected.is_set()
    link.data_received(
        mqtt5.SubAckPacket(
            subscribe.packet_id, [mqtt5.SubAckReasonCode.GRANTED_QOS_AT_LEAST_ONCE]
        ).write()
        + mqtt5.UnsubAckPacket(unsubscribe.packet_id, [mqtt5.UnsubAckReasonCode.SUCCESS]).write()
    )
    await asyncio.sleep(0)
    assert sub.connected.is_set()
    assert retired == [["devices/#"]]


async def test_packets_split_anywhere_across_reads_arrive_whole_and_in_order() -> None:
    sub = subscriber()
    link, transport = connect(sub)
    transport.packets()
    bodies = [b'{"heart_rate_bpm": %d}' % n for n in range(60, 90)]
    stream = b"".join(publish(n + 1, body) for n, body in enumerate(bodies))
    stream += mqtt5.PingRespPacket().write() + publish(99, b"{}", retain=True)
    # Every cut a socket could make: one byte at a time, then in uneven pieces.
    for size in (1, 7, 64, len(stream)):
        for start in range(0, len(stream), size):
            link.data_received(stream[start : start + size])
        batch = await sub.next_batch(1000, 0.0)
        assert [m.payload for m in batch] == [*bodies, b"{}"]
        assert [m.mid for m in batch] == [*range(1, 31), 99]
        assert {m.topic for m in batch} == {TOPIC}
        assert [m.qos for m in batch] == [1] * 31
        assert [m.retain for m in batch] == [False] * 30 + [True]
        assert not link._buffer


async def test_a_batch_is_acknowledged_in_one_write_on_its_own_connection_only() -> None:
    sub = subscriber()
    link, transport = connect(sub)
    transport.packets()
    link.data_received(publish(7, b"{}") + publish(8, b"{}"))
    first = await sub.next_batch(1000, 0.0)
    # The connection is lost before the commit: a new one delivers them again.
    link.connection_lost(ConnectionResetError())
    sub._lost(link)
    link2, transport2 = connect(sub, session_present=True)
    transport2.packets()
    sub.ack(first)
    assert transport.written == b"" and transport2.packets() == []
    link2.data_received(publish(7, b"{}") + publish(8, b"{}"))
    again = await sub.next_batch(1000, 0.0)
    sub.ack(again)
    acks = transport2.packets()
    assert [p.packet_id for p in acks if isinstance(p, mqtt5.PubAckPacket)] == [7, 8]
    assert len(acks) == 2


async def test_messages_held_from_a_lost_connection_are_dropped_at_the_next() -> None:
    sub = subscriber()
    link, _ = connect(sub)
    link.data_received(publish(1, b"{}"))
    link.connection_lost(None)
    sub._lost(link)
    connect(sub, session_present=True)
    assert await sub.next_batch(1000, 0.0) == []


async def test_a_malformed_packet_drops_the_connection_not_the_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = subscriber()
    link, transport = connect(sub)
    caplog.set_level(logging.ERROR)
    link.data_received(publish(1, b"{}") + b"\x30\xff\xff\xff\xff\x7f")
    assert transport.aborted
    assert "malformed packet" in caplog.text
    # What came before it is still taken in, and redelivered if not acknowledged.
    assert [m.mid for m in await sub.next_batch(1000, 0.0)] == [1]


async def test_a_refused_connection_says_why() -> None:
    sub = subscriber()
    link = _Link(sub)
    transport = RecordingTransport()
    link.connection_made(transport)
    link.data_received(
        mqtt5.ConnAckPacket(reason_code=mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD).write()
    )
    with pytest.raises(Exception, match="BAD_USER_NAME_OR_PASSWORD"):
        await link.ready
    assert transport.closing
    assert sub.connections == 0


def test_mqtt_3_1_1_brokers_get_the_paho_subscription() -> None:
    made = subscriber_for(MqttConfig(protocol="3.1.1"), ManualClock())
    assert isinstance(made, Mqtt3Subscriber)


def test_a_resumed_mqtt_3_1_1_session_is_subscribed_to_filters_configured_since() -> None:
    # An ACME detector's frames moved from `topics` to `alarm_topics`, on a 3.1.1 broker:
    # the alarm connection's session already exists, and the main connection drops the
    # vendor filter as retired. Unless subscribed here, every ACME frame, fire alarms
    # included, would reach no connection.
    sub, subscribed, recorded = vendor_filter_added_to_the_alarm_session()
    sub._on_connect(sub._client, None, RESUMED, CONNECTED, None)
    # The new filter alone: the ones the session holds would have the broker send every
    # retained status again.
    assert subscribed == [[VENDOR]]
    sub._on_subscribe(sub._client, None, 1, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")], None)
    assert recorded == [[VENDOR]]
    # Held by the session from then on: the next resumed connect subscribes nothing.
    sub._on_connect(sub._client, None, RESUMED, CONNECTED, None)
    assert subscribed == [[VENDOR]]


def test_a_filter_the_mqtt_3_1_1_broker_refused_is_asked_for_again() -> None:
    # An ACL that denies the subscription (SUBACK 0x80): the filter is not the session's,
    # and the next connect, or a later try, asks for it again once the ACL is mended.
    sub, subscribed, recorded = vendor_filter_added_to_the_alarm_session()
    sub._on_connect(sub._client, None, RESUMED, CONNECTED, None)
    sub._on_subscribe(sub._client, None, 1, [ReasonCode(PacketTypes.SUBACK, identifier=0x80)], None)
    assert (recorded, sub.refused) == ([], (VENDOR,))
    sub._on_connect(sub._client, None, RESUMED, CONNECTED, None)
    assert subscribed == [[VENDOR], [VENDOR]]
    sub._on_subscribe(sub._client, None, 2, [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")], None)
    assert (recorded, sub.refused) == ([[VENDOR]], ())


async def test_a_refused_subscription_is_a_fault_and_the_gateway_not_ready(
    tmp_path: Path,
) -> None:
    # The broker refuses the alarm connection's subscription (an ACL without the
    # gateway's role): no SOS, fall or fire alarm would arrive, which people are told.
    config = GatewayConfig.model_validate(
        {
            "mqtt": {"port": 18999},
            "outbox": {"path": tmp_path / "outbox.sqlite3", "synchronous": "normal"},
            "ingest": {"telemetry_process": False},
        }
    )
    gateway = Gateway(config, ManualClock(1_767_225_600_000))
    try:
        alarms = gateway.alarm_subscriber
        assert isinstance(alarms, MqttSubscriber)
        link, transport = connect(alarms)
        (subscribe,) = [p for p in transport.packets() if isinstance(p, mqtt5.SubscribePacket)]
        link.data_received(
            mqtt5.SubAckPacket(subscribe.packet_id, [mqtt5.SubAckReasonCode.NOT_AUTHORIZED]).write()
        )
        await asyncio.sleep(0)
        assert gateway._faults() == {
            "subscriptions": "the broker refused the subscriptions to community/+/+/+/event: "
            "nothing sent on them arrives"
        }
        assert gateway.refused_subscriptions() == ["community/+/+/+/event"]
    finally:
        gateway.close()


VENDOR = "vendor/acme-smoke/+/up"


def vendor_filter_added_to_the_alarm_session() -> tuple[
    Mqtt3Subscriber, list[list[str]], list[list[str]]
]:
    """An alarm connection on a 3.1.1 broker given the vendor filter since its session
    was made; the filters each SUBSCRIBE asks for, and those recorded as the session's."""
    sub = Mqtt3Subscriber(
        MqttConfig(protocol="3.1.1"), ManualClock(),
        topics=["community/+/+/+/event", VENDOR], client_id="community-gateway-alarms",
        added=[VENDOR],
    )  # fmt: skip
    recorded: list[list[str]] = []
    sub.on_subscribed = lambda topics: recorded.append(list(topics))
    return sub, subscriptions_asked(sub), recorded


def subscriptions_asked(sub: Mqtt3Subscriber) -> list[list[str]]:
    """The filters of each SUBSCRIBE the subscriber's paho client sends (mid 1, 2, ...)."""
    subscribed: list[list[str]] = []

    def subscribe(topics: list[tuple[str, int]], *_: object, **__: object) -> tuple[int, int]:
        subscribed.append([topic for topic, _ in topics])
        return 0, len(subscribed)

    sub._client.subscribe = subscribe  # type: ignore[method-assign,assignment]
    return subscribed


RESUMED = paho.ConnectFlags(session_present=True)
CONNECTED = ReasonCode(PacketTypes.CONNACK, "Success")


def test_filters_are_recorded_as_the_session_s_once_the_broker_has_them(tmp_path: Path) -> None:
    def started(alarm_topics: list[str]) -> Gateway:
        return Gateway(GatewayConfig.model_validate({
            "mqtt": {"protocol": "3.1.1", "alarm_topics": alarm_topics,
                     "topics": ["community/+/+/+/telemetry"]},
            "outbox": {"path": tmp_path / "outbox.sqlite3"},
            "ingest": {"telemetry_process": False},
        }))  # fmt: skip

    first = started(["community/+/+/+/event"])
    alarms = first.alarm_subscriber
    assert isinstance(alarms, Mqtt3Subscriber)
    alarms._subscription_done(alarms._topics)
    first.close()
    second = started(["community/+/+/+/event", "vendor/acme-smoke/+/up"])
    # Stopped before the broker had the new filter: the next start still subscribes it.
    second.close()
    third = started(["community/+/+/+/event", "vendor/acme-smoke/+/up"])
    assert isinstance(third.alarm_subscriber, Mqtt3Subscriber)
    assert third.alarm_subscriber._added == ("vendor/acme-smoke/+/up",)
    third.close()


async def test_a_qos_2_message_is_answered_as_qos_2_asks_never_with_a_puback() -> None:
    # A persistent session may hold messages queued under a QoS 2 subscription of an
    # earlier client of the same id: the broker sends them at QoS 2 after the CONNACK.
    # A PUBACK for a QoS 2 packet id is a protocol error (the broker drops the
    # connection, sends the message again, gets a PUBACK again: nothing goes on).
    link, transport = connect(subscriber(alarm_topics=[]), session_present=True)
    sub = link._subscriber
    transport.packets()
    link.data_received(
        mqtt5.PublishPacket(TOPIC, b"{}", qos=mqtt5.QoS.EXACTLY_ONCE, packet_id=3).write()
    )
    batch = await sub.next_batch(1000, 0.0)
    assert [m.qos for m in batch] == [2]
    sub.ack(batch)
    assert [(type(p), p.packet_id) for p in transport.packets()] == [(mqtt5.PubRecPacket, 3)]
    link.data_received(mqtt5.PubRelPacket(3).write())
    assert [(type(p), p.packet_id) for p in transport.packets()] == [(mqtt5.PubCompPacket, 3)]


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """A packet's first byte and body, as a broker reads it."""
    kind = (await reader.readexactly(1))[0]
    length, multiplier = 0, 1
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            break
    return kind, await reader.readexactly(length)


def publish_3(packet_id: int, payload: bytes) -> bytes:
    topic = TOPIC.encode()
    body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + payload
    return bytes([0x32, len(body)]) + body


CONNECT, CONNACK, PUBACK, SUBSCRIBE = 0x10, b"\x20\x02\x00\x00", 0x40, 0x82


async def test_mqtt_3_1_1_never_acknowledges_on_a_new_connection_what_came_on_the_old() -> None:
    # A broker restarted while a batch was being committed: the commit ends while the
    # new connection waits for its CONNACK. The batch's packet id is the old
    # connection's; on the new one it may name another message of the session, which
    # would be acknowledged uncommitted, and lost at a crash.
    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    server = await asyncio.start_server(lambda r, w: connections.put_nowait((r, w)), "127.0.0.1", 0)
    config = MqttConfig(
        protocol="3.1.1", port=server.sockets[0].getsockname()[1], topics=[TOPIC],
        alarm_topics=[], reconnect_min_s=0.01, reconnect_max_s=0.05, status_topic=None,
    )  # fmt: skip
    sub = Mqtt3Subscriber(config, SystemClock())
    writers: list[asyncio.StreamWriter] = []
    try:
        await sub.start()
        reader, writer = await asyncio.wait_for(connections.get(), 5)
        writers.append(writer)
        assert (await asyncio.wait_for(read_packet(reader), 5))[0] == CONNECT
        writer.write(CONNACK)
        kind, body = await asyncio.wait_for(read_packet(reader), 5)
        assert kind == SUBSCRIBE
        writer.write(b"\x90\x03" + body[:2] + b"\x01" + publish_3(5, b'{"worn": true}'))
        batch: list[InboundMessage] = []
        while not batch:
            batch = await asyncio.wait_for(sub.next_batch(1000, 0.1), 5)
        assert [(m.mid, m.qos) for m in batch] == [(5, 1)]
        writer.close()
        reader, writer = await asyncio.wait_for(connections.get(), 5)
        writers.append(writer)
        assert (await asyncio.wait_for(read_packet(reader), 5))[0] == CONNECT
        sub.ack(batch)
        # A new session: the CONNACK has it subscribe. Nothing was written before.
        writer.write(CONNACK)
        assert (await asyncio.wait_for(read_packet(reader), 5))[0] == SUBSCRIBE
    finally:
        sub.stop()
        for opened in writers:
            opened.close()
        server.close()
        await server.wait_closed()


async def test_messages_held_when_the_broker_comes_back_without_the_session_are_kept() -> None:
    # A broker restarted without persistence, or a session expired, holds nothing of
    # what it sent before: the gateway's copy of a message not yet batched is the only
    # one left.
    sub = subscriber()
    link, _ = connect(sub)
    link.data_received(publish(1, b'{"seq": 1, "heart_rate_bpm": 70}'))
    link.connection_lost(ConnectionResetError())
    sub._lost(link)
    connect(sub, session_present=False)
    batch = await sub.next_batch(1000, 0.0)
    assert [m.payload for m in batch] == [b'{"seq": 1, "heart_rate_bpm": 70}']


async def test_mqtt_3_1_1_messages_held_when_the_broker_lost_the_session_are_kept() -> None:
    sub = Mqtt3Subscriber(
        MqttConfig(protocol="3.1.1", alarm_topics=[], topics=[TOPIC]), ManualClock()
    )
    sub._client.subscribe = lambda *_, **__: (0, 1)  # type: ignore[method-assign,assignment]
    success = ReasonCode(PacketTypes.CONNACK, "Success")
    new_session = paho.ConnectFlags(session_present=False)
    sub._on_connect(sub._client, None, new_session, success, None)
    message = paho.MQTTMessage(mid=4, topic=TOPIC.encode())
    message.payload = b'{"seq": 1, "heart_rate_bpm": 70}'
    message.qos = 1
    sub._on_message(sub._client, None, message)
    sub._on_connect(sub._client, None, new_session, success, None)
    batch = await sub.next_batch(1000, 0.0)
    assert [m.payload for m in batch] == [b'{"seq": 1, "heart_rate_bpm": 70}']


async def test_a_qos_0_message_taken_in_before_a_reconnect_is_kept() -> None:
    # A message the broker sent at QoS 0 (a device publishing so: the broker grants the
    # lower QoS) needs no acknowledgement and is never sent again: one waiting for the
    # next batch when the connection is lost is kept, where one at QoS 1 is left to the
    # broker to send again.
    receiving = subscriber()
    receiving._connected_anew(session_present=False)
    alarm = mqtt5.PublishPacket("community/hgy/smoke_detector/sd-1/event", b'{"event":"alarm"}')
    reading = mqtt5.PublishPacket(
        "community/hgy/smoke_detector/sd-1/telemetry", b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE,
        packet_id=7,
    )  # fmt: skip
    receiving._on_publishes(None, [alarm, reading])  # type: ignore[arg-type]
    receiving._connected_anew(session_present=True)
    batch = await receiving.next_batch(100, 0.0)
    assert [(m.topic, m.qos) for m in batch] == [("community/hgy/smoke_detector/sd-1/event", 0)]


async def test_an_orderly_stop_acknowledges_the_alarm_batch_it_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch committed during an orderly stop is acknowledged too: sent again after the
    # restart, an SOS without seq or ts (both optional) would be stored twice.
    config = GatewayConfig.model_validate(
        {
            "mqtt": {"port": 18999, "status_topic": None},
            "outbox": {"path": tmp_path / "outbox.sqlite3", "synchronous": "normal"},
            "ingest": {"telemetry_process": False},
        }
    )
    gateway = Gateway(config, ManualClock(1_767_225_600_000))
    alarms = gateway.alarm_subscriber
    assert isinstance(alarms, MqttSubscriber) and isinstance(gateway.subscriber, MqttSubscriber)

    async def no_broker() -> None:  # the test plays the broker
        return None

    monkeypatch.setattr(gateway.subscriber, "start", no_broker)
    monkeypatch.setattr(alarms, "start", no_broker)
    link, transport = connect(alarms)
    transport.packets()
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    release = threading.Event()
    commit = gateway.outbox.commit

    def gated(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 2 and args[2] is not None:  # a batch's commit (it saves keys)
            loop.call_soon_threadsafe(entered.set)
            release.wait(10)
        return commit(*args, **kwargs)

    monkeypatch.setattr(gateway.outbox, "commit", gated)
    link.data_received(
        mqtt5.PublishPacket(
            "community/hgy/bracelet/br-1/event", b'{"event": "sos"}',
            qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=7,
        ).write()
    )  # fmt: skip
    running = asyncio.create_task(gateway.run())
    await asyncio.wait_for(entered.wait(), 10)
    # The stop comes while the batch is being committed.
    gateway.stop()
    for _ in range(100):
        await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(running, 15)
    acked = [p.packet_id for p in transport.packets() if isinstance(p, mqtt5.PubAckPacket)]
    assert acked == [7]


async def test_alarms_left_in_the_old_alarm_session_survive_a_crash_before_they_are_stored(
    tmp_path: Path,
) -> None:
    # The old alarm session's alarms, delivered and not yet stored when the gateway is
    # killed, are sent again: the next start resumes the session once more.

    def config(**mqtt: object) -> GatewayConfig:
        return GatewayConfig.model_validate(
            {
                "mqtt": {"port": 18999, "status_topic": None, **mqtt},
                "outbox": {"path": tmp_path / "outbox.sqlite3", "synchronous": "normal"},
                "ingest": {"telemetry_process": False},
            }
        )

    # A gateway that had an alarm connection, subscribed at the broker.
    lanes = Gateway(config(), ManualClock(1_767_225_600_000))
    assert isinstance(lanes.alarm_subscriber, MqttSubscriber)
    lanes.alarm_subscriber._subscription_done(lanes.alarm_subscriber._topics)
    lanes.close()
    single_lane = {"topics": ["community/+/+/+/+"], "alarm_topics": []}

    single = Gateway(config(**single_lane), ManualClock(1_767_225_600_000))
    try:
        leftover = single.alarm_leftover
        assert isinstance(leftover, MqttSubscriber)
        link, transport = connect(leftover, session_present=True)
        unsubscribe = next(p for p in transport.packets() if isinstance(p, mqtt5.UnsubscribePacket))
        # What the session held, then the answer to the UNSUBSCRIBE, in one read.
        link.data_received(
            mqtt5.PublishPacket(
                "community/hgy/bracelet/br-1/event", b'{"ts": 1767225600000, "event": "sos"}',
                qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=3,
            ).write()
            + mqtt5.UnsubAckPacket(
                unsubscribe.packet_id, [mqtt5.UnsubAckReasonCode.SUCCESS]
            ).write()
        )  # fmt: skip
        await asyncio.sleep(0)
        # Taken in, waiting for its batch: not committed, not acknowledged.
        assert [m.mid for m in leftover._pending] == [3]
    finally:
        single.close()  # SIGKILL: the SOS was neither committed nor acknowledged
    again = Gateway(config(**single_lane), ManualClock(1_767_225_600_000))
    try:
        assert again.alarm_leftover is not None
    finally:
        again.close()
