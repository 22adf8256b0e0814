"""The MQTT 3.1.1 subscription, for brokers that do not speak MQTT 5 (the demo's
embedded broker): QoS 1, a persistent session, acknowledgements held until commit.

MQTT 5 brokers get gateway.ingest.mqtt, which parses many packets per read; MQTT 3.1.1
has no way for a client to say how many unacknowledged messages it takes (the broker's
own setting decides), so that path matters less for throughput. paho-mqtt with manual
acknowledgement: a message is acknowledged to the broker only
when the pipeline says it is committed. paho's socket is served by the asyncio event
loop, not by a network thread of its own: one interpreter runs one thread at a time,
and a thread that only receives would take turns with the one that decodes, at a cost
per message larger than receiving itself (bench/mqtt_clients.py measures both ways).
Only the blocking connect runs in a worker thread, so that a broker slow to answer
does not hold up the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.clock import Clock
from gateway.config import MqttConfig
from gateway.errors import NotifyError
from gateway.ingest.message import InboundMessage
from gateway.ingest.subscription import Subscription

log = logging.getLogger(__name__)

# paho reads one packet per call: packets read at most in one wake of the loop, so that
# a busy connection does not keep the loop from the batches it fills.
READS_PER_WAKE = 200
# How often paho's keepalive is looked after (PINGREQ sent, a silent broker noticed).
MISC_INTERVAL_S = 1.0


class Mqtt3Subscriber(Subscription):
    """Subscribes to the device topics over MQTT 3.1.1 and yields what arrives in batches."""

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
        self._received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # The socket the loop watches, while connected.
        self._fd: int | None = None
        self._lost = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        # Our own publishes (notifications) waiting for the broker's PUBACK, by mid.
        self._published: dict[int, asyncio.Future[None]] = {}
        # The filters of each subscription waiting for the broker's SUBACK, by mid.
        self._asked: dict[int, tuple[str, ...]] = {}
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        config = self._config
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv311,
            clean_session=False,
            manual_ack=True,
        )
        _sign_in(client, config)
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_unsubscribe
        client.on_subscribe = self._on_subscribe
        return client

    async def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        """Publish at QoS 1 and wait until the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Sent by the loop later, so the PUBACK cannot come before the future is kept.
        info = self._client.publish(topic, payload, qos=1)
        self._published[info.mid] = future
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise NotifyError(f"the broker did not acknowledge {topic}", retryable=True) from exc
        finally:
            self._published.pop(info.mid, None)

    async def start(self) -> None:
        """Begin connecting; reconnects with backoff until stop()."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        config = self._config
        self._client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        self._runner = asyncio.create_task(self._keep_connected(), name=self._client_id)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        client = self._client
        if self._status is not None and self.connected.is_set():
            # A normal disconnect drops the will: the status says the stop itself.
            client.publish(self._status.topic, self._status.stopped(), qos=0, retain=True)
        if client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            # The DISCONNECT is small: it goes out at once, and paho then closes.
            client.loop_write()
        self._forget_socket()
        client._sock_close()  # a connection made while stopping, or a DISCONNECT unsent

    async def _keep_connected(self) -> None:
        config = self._config
        client = self._client
        delay_s = config.reconnect_min_s
        while True:
            self._lost.clear()
            if self._status is not None:
                client.will_set(self._status.topic, self._status.will(), qos=1, retain=True)
            try:
                # Blocking: DNS, TCP and the TLS handshake.
                await asyncio.to_thread(client.reconnect)
            except OSError as exc:
                log.warning(
                    "cannot reach the broker at %s:%d (%s); trying again in %.1f s",
                    config.host,
                    config.port,
                    exc,
                    delay_s,
                )
            else:
                self._watch_socket()
                began_ms = self._clock.now_ms()
                while not self._lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._lost.wait(), MISC_INTERVAL_S)
                    client.loop_misc()
                # A connection that lasted is followed by a quick reconnect.
                if self._clock.now_ms() - began_ms > config.reconnect_max_s * 1000:
                    delay_s = config.reconnect_min_s
            await self._clock.sleep(delay_s)
            delay_s = min(delay_s * 2, config.reconnect_max_s)

    def _watch_socket(self) -> None:
        client = self._client
        sock = client.socket()
        if sock is None:
            self._lost.set()
            return
        self._fd = sock.fileno()
        assert self._loop is not None
        self._loop.add_reader(self._fd, self._on_readable)
        # paho asked for the CONNECT to be written from the worker thread.
        if client.want_write():
            self._loop.add_writer(self._fd, client.loop_write)

    def _forget_socket(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None

    def _on_readable(self) -> None:
        client = self._client
        for _ in range(READS_PER_WAKE):
            received = self._received
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            # A read that brought no message found the socket empty (or read another
            # kind of packet; the loop calls again if more is waiting). Decrypted bytes
            # held by TLS are not seen by the loop, so they are read now.
            if self._received == received and not _tls_pending(client.socket()):
                return
        # Bytes TLS already holds would wake nobody: read on at the loop's next turn.
        if _tls_pending(client.socket()) and self._loop is not None:
            self._loop.call_soon(self._on_readable)

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        """Acknowledge committed QoS 1 messages.

        One delivered on a connection since lost is not acknowledged: the broker sends
        it again on the new one, and the redelivery filter drops the copy. Nor is any
        while a new connection waits for the broker's CONNACK: its packet id would name
        another message of the session there.
        """
        if not self.connected.is_set():
            return
        client = self._client
        connection = self._connection
        for message in messages:
            if message.qos and message.connection == connection:
                client.ack(message.mid, message.qos)

    # --- paho's callbacks: on the loop, except those from a connect in progress ---

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_socket_close(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self._on_loop():
            self._forget_socket()

    def _on_register_write(self, client: paho.Client, userdata: object, sock: Any) -> None:
        # From a connect in progress, `_watch_socket` registers it once connected.
        if self._on_loop() and self._fd is not None and self._loop is not None:
            self._loop.add_writer(self._fd, client.loop_write)

    def _on_unregister_write(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self._on_loop() and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error(
                "broker %s:%d refused the connection: %s",
                self._config.host,
                self._config.port,
                reason,
            )
            return
        self._connected_anew(flags.session_present)
        # A SUBACK the lost connection never had will not come.
        self._asked.clear()
        # A resumed session holds its filters: subscribed again, they would have the
        # broker send every retained status once more (MQTT 3.1.1 has no retain
        # handling). Those configured since it was last subscribed, it does not hold.
        if not self._topics:
            pass  # a session kept only for what it still holds (Subscription.retired)
        elif not flags.session_present or self._retired:
            self._subscribe(self._topics)
        elif self._added:
            self._subscribe(self._added)
        if self._retired:
            client.unsubscribe(list(self._retired))
        if self._status is not None:
            # At most once: should this connection be lost, the will says so, and the
            # next connect says online again.
            client.publish(self._status.topic, self._status.online(), qos=0, retain=True)
        self.connected.set()

    def _subscribe(self, topics: Sequence[str]) -> None:
        _, mid = self._client.subscribe([(topic, 1) for topic in topics])
        if mid is not None:
            self._asked[mid] = tuple(topics)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        asked = self._asked.pop(mid, self._topics)
        refused = [topic for topic, r in zip(asked, reasons, strict=False) if r.is_failure]
        self._subscription_done(asked, refused)
        if refused and self._loop is not None:
            # An ACL mended at the broker takes effect without a reconnect.
            self._loop.call_later(self._config.reconnect_max_s, self._subscribe_again, refused)

    def _subscribe_again(self, topics: Sequence[str]) -> None:
        if self.connected.is_set():
            self._subscribe(topics)  # else the next connect asks for them

    def _on_unsubscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._retirement_done()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if self._on_loop():
            self._lost.set()
        if reason.is_failure:
            log.warning("lost the broker connection (%s); reconnecting", reason)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        future = self._published.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self._received += 1
        self._pending.append(
            InboundMessage(
                msg.topic,
                bytes(msg.payload),
                self._clock.now_ms(),
                msg.mid,
                msg.qos,
                msg.retain,
                self._connection,
            )
        )
        self._wakeup.set()


def _sign_in(client: paho.Client, config: MqttConfig) -> None:
    """The config's credentials and TLS, set on `client`."""
    if config.username is not None:
        password = config.password.get_secret_value() if config.password else None
        client.username_pw_set(config.username, password)
    if config.tls is not None:
        client.tls_set_context(config.tls.ssl_context())
        client.tls_insecure_set(config.tls.insecure_skip_verify)


def publish_retained(
    config: MqttConfig, topic: str, payload: bytes, *, client_id: str, timeout_s: float
) -> None:
    """Connect on a clean session of `client_id`'s, publish `payload` retained at QoS 1,
    wait for the broker to acknowledge it, and disconnect: for what the gateway says
    while it has no connection of its own. Raises OSError, ConnectionError if the broker
    refuses the connection, or TimeoutError."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv311,
        clean_session=True,
    )
    _sign_in(client, config)
    answered = threading.Event()
    refused: list[ReasonCode] = []

    def on_connect(
        client: paho.Client, userdata: object, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            refused.append(reason)
        answered.set()

    client.on_connect = on_connect
    client.connect(config.host, config.port, keepalive=config.keepalive_s)
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            raise TimeoutError(f"the broker at {config.host}:{config.port} did not answer")
        if refused:
            raise ConnectionError(f"the broker refused the connection: {refused[0]}")
        published = client.publish(topic, payload, qos=1, retain=True)
        published.wait_for_publish(timeout_s)
        if not published.is_published():
            raise TimeoutError(f"the broker did not acknowledge {topic}")
    finally:
        client.disconnect()
        client.loop_stop()


def _tls_pending(sock: Any) -> bool:
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
