"""The MQTT subscription: QoS 1, a persistent session, acknowledgements held until commit.

MQTT 5 over an asyncio connection, with the mqtt5 package (a sans-I/O codec written in
Rust) reading and writing the packets. Receiving is most of what a busy gateway does:
every read of the socket is parsed into all the packets it holds at once, and a
committed batch is acknowledged in one write. paho-mqtt, which reads one packet per call
with several system calls and builds its MQTT 5 properties in Python, took 58-70 µs of
CPU a message where this takes 8-15 (bench/mqtt_clients.py).

A message is acknowledged to the broker only when the pipeline says it is committed,
and only on the connection that delivered it: packet ids mean nothing on another one.
The broker holds at most `receive_maximum` unacknowledged messages in flight to us.

Brokers that speak only MQTT 3.1.1 get gateway.ingest.mqtt3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from functools import partial

import mqtt5

from gateway.clock import Clock
from gateway.config import MqttConfig
from gateway.errors import NotifyError
from gateway.ingest.message import InboundMessage
from gateway.ingest.mqtt3 import Mqtt3Subscriber
from gateway.ingest.subscription import Subscription

log = logging.getLogger(__name__)

# mqtt5's enums are not Python's: compare their `.value`, and never take their truth
# (QoS.AT_MOST_ONCE is true).
# Retained status only when a subscription is new, not again at every reconnect.
_RETAIN_IF_NEW = mqtt5.RetainHandling.SEND_IF_SUBSCRIPTION_NOT_EXISTS
_AT_LEAST_ONCE = mqtt5.QoS.AT_LEAST_ONCE
_PING = mqtt5.PingReqPacket().write()
# A broker silent for this many keepalive intervals is taken for gone.
SILENT_KEEPALIVES = 1.5


class MqttRefused(Exception):
    """The broker refused the connection or broke the protocol."""


class MqttSubscriber(Subscription):
    """Subscribes to the device topics and yields what arrives in batches."""

    def __init__(
        self,
        config: MqttConfig,
        clock: Clock,
        *,
        topics: Sequence[str] | None = None,
        client_id: str | None = None,
        retired: Sequence[str] = (),
        added: Sequence[str] = (),
        status: bool = False,
    ) -> None:
        super().__init__(
            config, clock, topics=topics, client_id=client_id, retired=retired, added=added,
            status=status,
        )  # fmt: skip
        # Read now: a certificate that cannot be loaded is a start-up error.
        self._ssl = config.tls.ssl_context() if config.tls is not None else None
        self._link: _Link | None = None
        self._runner: asyncio.Task[None] | None = None
        # Our own packets (publishes, subscriptions) waiting for the broker's answer.
        self._answers: dict[int, asyncio.Future[mqtt5.Packet]] = {}
        self._packet_id = 0

    async def start(self) -> None:
        """Begin connecting; reconnects with backoff until stop()."""
        self._runner = asyncio.create_task(self._keep_connected(), name=self._client_id)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        link, self._link = self._link, None
        self.connected.clear()
        if link is not None and not link.transport.is_closing():
            # The session stays at the broker: a normal disconnect, then the socket is
            # closed once what is written has gone out. A normal disconnect drops the
            # will: the status says the stop itself.
            if self._status is not None:
                stopped = self._status.stopped()
                link.transport.write(
                    mqtt5.PublishPacket(self._status.topic, stopped, retain=True).write()
                )
            link.transport.write(mqtt5.DisconnectPacket().write())
            link.transport.close()

    async def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        """Publish at QoS 1 and wait until the broker acknowledged it."""
        link = self._link
        if link is None or not self.connected.is_set():
            raise NotifyError(f"not connected to the broker to publish {topic}", retryable=True)
        packet_id, answer = self._expect_answer()
        try:
            link.transport.write(
                mqtt5.PublishPacket(topic, payload, qos=_AT_LEAST_ONCE, packet_id=packet_id).write()
            )
            try:
                puback = await asyncio.wait_for(answer, timeout_s)
            except TimeoutError as exc:
                raise NotifyError(
                    f"the broker did not acknowledge {topic}", retryable=True
                ) from exc
            except ConnectionError as exc:
                raise NotifyError(f"{exc} before {topic} was acknowledged", retryable=True) from exc
        finally:
            if self._answers.get(packet_id) is answer:
                del self._answers[packet_id]
        if isinstance(puback, mqtt5.PubAckPacket) and puback.reason_code.value >= 0x80:
            raise NotifyError(
                f"the broker refused {topic}: {puback.reason_code.name}", retryable=False
            )

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        """Acknowledge committed QoS 1 messages, in one write.

        One delivered on a connection since lost is not acknowledged: the broker sends
        it again on the new one, and the redelivery filter drops the copy.
        """
        link = self._link
        if link is None or link.transport.is_closing():
            return
        connection = self._connection
        # A message at QoS 2 (queued in the session under an earlier subscription of the
        # client id) is answered as QoS 2 asks: a PUBACK would be a protocol error, the
        # connection dropped and the message sent again, for ever.
        acks = b"".join(
            (mqtt5.PubAckPacket(m.mid) if m.qos == 1 else mqtt5.PubRecPacket(m.mid)).write()
            for m in messages
            if m.qos and m.connection == connection
        )
        if acks:
            link.transport.write(acks)

    # --- the connection ---

    async def _keep_connected(self) -> None:
        config = self._config
        delay_s = config.reconnect_min_s
        while True:
            began_ms = self._clock.now_ms()
            try:
                link = await asyncio.wait_for(self._connect(), config.keepalive_s)
            except (OSError, TimeoutError, MqttRefused) as exc:
                log.warning(
                    "cannot connect to the broker at %s:%d (%s); trying again in %.1f s",
                    config.host,
                    config.port,
                    exc or type(exc).__name__,
                    delay_s,
                )
            else:
                try:
                    await self._keep_alive(link)
                finally:
                    self._lost(link)
                # A connection that lasted is followed by a quick reconnect.
                if self._clock.now_ms() - began_ms > config.reconnect_max_s * 1000:
                    delay_s = config.reconnect_min_s
            await self._clock.sleep(delay_s)
            delay_s = min(delay_s * 2, config.reconnect_max_s)

    async def _connect(self) -> _Link:
        config = self._config
        loop = asyncio.get_running_loop()
        transport, link = await loop.create_connection(
            lambda: _Link(self),
            config.host,
            config.port,
            ssl=self._ssl,
            server_hostname=config.host if self._ssl is not None else None,
        )
        password = config.password.get_secret_value().encode() if config.password else None
        status = self._status
        will = None
        if status is not None:
            will = mqtt5.Will(status.topic, payload=status.will(), qos=_AT_LEAST_ONCE, retain=True)
        transport.write(
            mqtt5.ConnectPacket(
                self._client_id,
                username=config.username,
                password=password,
                clean_start=False,
                will=will,
                keep_alive=config.keepalive_s,
                session_expiry_interval=config.session_expiry_s,
                receive_max=config.receive_maximum,
            ).write()
        )
        try:
            await asyncio.shield(link.ready)
        except BaseException:
            transport.abort()
            raise
        return link

    async def _keep_alive(self, link: _Link) -> None:
        """Until the connection is lost: a PINGREQ every half keepalive, and a broker
        heard from for none of 1.5 keepalives is taken for gone."""
        keepalive_s = link.keepalive_s
        loop = asyncio.get_running_loop()
        while not link.closed.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), keepalive_s / 2)
            if link.closed.done():
                return
            if loop.time() - link.heard_s > keepalive_s * SILENT_KEEPALIVES:
                log.warning("the broker has not answered for %d s; reconnecting", keepalive_s)
                link.transport.abort()
                return
            link.transport.write(_PING)

    def _lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        self.connected.clear()
        if not link.transport.is_closing():
            link.transport.abort()
        # Answers that can no longer come.
        answers, self._answers = self._answers, {}
        for answer in answers.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the broker connection was lost"))

    def _expect_answer(self) -> tuple[int, asyncio.Future[mqtt5.Packet]]:
        for _ in range(65_535):
            self._packet_id = self._packet_id % 65_535 + 1
            if self._packet_id not in self._answers:
                break
        else:
            raise NotifyError("no packet id free: 65,535 packets unanswered", retryable=True)
        answer: asyncio.Future[mqtt5.Packet] = asyncio.get_running_loop().create_future()
        self._answers[self._packet_id] = answer
        return self._packet_id, answer

    # --- packets from the broker, in the order they came ---

    def _on_connack(self, link: _Link, connack: mqtt5.ConnAckPacket) -> None:
        if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            config = self._config
            log.error(
                "broker %s:%d refused the connection: %s",
                config.host,
                config.port,
                connack.reason_code.name,
            )
            link.fail(MqttRefused(connack.reason_code.name))
            return
        self._link = link
        self._connected_anew(connack.session_present)
        if connack.server_keep_alive:
            link.keepalive_s = connack.server_keep_alive
        writes: list[bytes] = []
        if self._topics:
            packet_id, answer = self._expect_answer()
            answer.add_done_callback(partial(self._on_suback, link, self._topics))
            filters = [self._filter(topic) for topic in self._topics]
            writes.append(mqtt5.SubscribePacket(packet_id, filters).write())
        else:
            # A session kept only for what it still holds (Subscription.retired): a
            # SUBSCRIBE without filters is a protocol error.
            self.connected.set()
        if self._status is not None:
            # At most once: should this connection be lost, the will says so, and the
            # next connect says online again.
            writes.append(
                mqtt5.PublishPacket(self._status.topic, self._status.online(), retain=True).write()
            )
        if self._retired:
            packet_id, unsubscribed = self._expect_answer()
            unsubscribed.add_done_callback(self._on_unsuback)
            writes.append(mqtt5.UnsubscribePacket(packet_id, list(self._retired)).write())
        link.transport.write(b"".join(writes))
        link.ready.set_result(link)

    def _on_suback(
        self, link: _Link, asked: Sequence[str], answer: asyncio.Future[mqtt5.Packet]
    ) -> None:
        if answer.exception() is not None:
            return
        suback = answer.result()
        refused: list[str] = []
        if isinstance(suback, mqtt5.SubAckPacket):
            refused = [
                topic
                for topic, code in zip(asked, suback.reason_codes, strict=False)
                if code.value >= 0x80
            ]
        self._subscription_done(asked, refused)
        if link is self._link:
            self.connected.set()
            if refused:
                # An ACL mended at the broker takes effect without a reconnect.
                asyncio.get_running_loop().call_later(
                    self._config.reconnect_max_s, self._subscribe_again, link, refused
                )

    def _filter(self, topic: str) -> mqtt5.TopicFilter:
        return mqtt5.TopicFilter(
            topic,
            max_qos=_AT_LEAST_ONCE,
            retain_as_published=False,
            retain_handling=_RETAIN_IF_NEW,
        )

    def _subscribe_again(self, link: _Link, topics: Sequence[str]) -> None:
        if link is not self._link or link.transport.is_closing():
            return  # the next connect asks for every filter anyway
        packet_id, answer = self._expect_answer()
        answer.add_done_callback(partial(self._on_suback, link, topics))
        link.transport.write(
            mqtt5.SubscribePacket(packet_id, [self._filter(topic) for topic in topics]).write()
        )

    def _on_unsuback(self, answer: asyncio.Future[mqtt5.Packet]) -> None:
        if answer.exception() is not None:
            return
        self._retirement_done()

    def _on_publishes(self, link: _Link, publishes: list[mqtt5.PublishPacket]) -> None:
        received_ms = self._clock.now_ms()
        connection = self._connection
        self._pending.extend(
            InboundMessage(
                p.topic, p.payload, received_ms, p.packet_id or 0, p.qos.value, p.retain, connection
            )
            for p in publishes
        )
        self._wakeup.set()

    def _on_answer(self, packet_id: int, packet: mqtt5.Packet) -> None:
        answer = self._answers.pop(packet_id, None)
        if answer is not None and not answer.done():
            answer.set_result(packet)


class _Link(asyncio.Protocol):
    """One connection to the broker: parses what arrives into packets."""

    def __init__(self, subscriber: MqttSubscriber) -> None:
        loop = asyncio.get_running_loop()
        self._subscriber = subscriber
        self._buffer = bytearray()
        self.transport: asyncio.Transport
        self.keepalive_s = subscriber._config.keepalive_s
        self.heard_s = loop.time()
        self._time = loop.time
        # Kept once the broker has accepted the connection.
        self.ready: asyncio.Future[_Link] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"connection to the broker closed ({exc or 'by the broker'})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.heard_s = self._time()
        buffer = self._buffer
        buffer += data
        publishes: list[mqtt5.PublishPacket] = []
        used = 0
        view = memoryview(buffer)
        try:
            while used < len(buffer):
                try:
                    packet, size = mqtt5.read(view[used:])
                except IndexError:
                    break  # the rest of the packet is still to come
                used += size
                if isinstance(packet, mqtt5.PublishPacket):
                    publishes.append(packet)
                else:
                    # Packets after this one must not overtake the publishes before it.
                    if publishes:
                        self._subscriber._on_publishes(self, publishes)
                        publishes = []
                    self._on_packet(packet)
        except ValueError as exc:
            log.error("the broker sent a malformed packet (%s); reconnecting", exc)
            self.transport.abort()
        finally:
            view.release()
        del buffer[:used]
        if publishes:
            self._subscriber._on_publishes(self, publishes)

    def _on_packet(self, packet: mqtt5.Packet) -> None:
        subscriber = self._subscriber
        if isinstance(packet, mqtt5.ConnAckPacket):
            subscriber._on_connack(self, packet)
        elif isinstance(packet, mqtt5.PubAckPacket | mqtt5.SubAckPacket | mqtt5.UnsubAckPacket):
            subscriber._on_answer(packet.packet_id, packet)
        elif isinstance(packet, mqtt5.PubRelPacket):
            # The second half of a QoS 2 message acknowledged after its commit.
            self.transport.write(mqtt5.PubCompPacket(packet.packet_id).write())
        elif isinstance(packet, mqtt5.DisconnectPacket):
            log.warning(
                "the broker closed the connection: %s%s",
                packet.reason_code.name,
                f" ({packet.reason_str})" if packet.reason_str else "",
            )
            self.fail(MqttRefused(packet.reason_code.name))
        elif not isinstance(packet, mqtt5.PingRespPacket):
            log.warning("unexpected %s from the broker ignored", type(packet).__name__)


Subscriber = MqttSubscriber | Mqtt3Subscriber


def subscriber_for(
    config: MqttConfig,
    clock: Clock,
    *,
    topics: Sequence[str] | None = None,
    client_id: str | None = None,
    retired: Sequence[str] = (),
    added: Sequence[str] = (),
    status: bool = False,
) -> Subscriber:
    """The subscription for the broker's protocol; `status`: it says the gateway's."""
    kind = Mqtt3Subscriber if config.protocol == "3.1.1" else MqttSubscriber
    return kind(
        config, clock, topics=topics, client_id=client_id, retired=retired, added=added,
        status=status,
    )  # fmt: skip
