"""The MQTT subscription: QoS 1, a persistent session, acknowledgements held until commit.

paho-mqtt runs the connection on its own network thread (it receives more than twice
as fast as the asyncio clients measured in bench/), with manual acknowledgement: a
message is acknowledged to the broker only when the pipeline says it is committed.
Messages cross to the asyncio side through a deque, in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.clock import Clock
from gateway.config import MqttConfig
from gateway.errors import NotifyError
from gateway.ingest.message import InboundMessage

log = logging.getLogger(__name__)


class MqttSubscriber:
    """Subscribes to the device topics and yields what arrives in batches."""

    def __init__(
        self,
        config: MqttConfig,
        clock: Clock,
        *,
        topics: Sequence[str] | None = None,
        client_id: str | None = None,
        retired: Sequence[str] = (),
    ) -> None:
        self._config = config
        self._clock = clock
        self._topics = tuple(config.topics if topics is None else topics)
        self._client_id = client_id or config.client_id
        # Filters the session may still hold from an earlier configuration: dropped at
        # every connect, after the current ones are in place, so that nothing falls
        # between the two and nothing arrives on both connections for long.
        self._retired = tuple(t for t in retired if t not in self._topics)
        # Told, on the event loop, once the broker has dropped the retired filters.
        self.on_retired: Callable[[Sequence[str]], None] | None = None
        self._pending: deque[InboundMessage] = deque()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Packet ids are only meaningful on the connection that delivered them.
        self._connection = 0
        self._connection_lock = threading.Lock()
        self.connected = threading.Event()
        self.connections = 0
        # Our own publishes (notifications) waiting for the broker's PUBACK, by mid.
        self._published: dict[int, asyncio.Future[None]] = {}
        self._published_lock = threading.Lock()
        self._client = self._make_client()

    @property
    def client_id(self) -> str:
        return self._client_id

    def _make_client(self) -> paho.Client:
        config = self._config
        v5 = config.protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if config.tls is not None:
            tls = config.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_NONE if tls.insecure_skip_verify else ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(tls.insecure_skip_verify)
        client.reconnect_delay_set(
            max(1, round(config.reconnect_min_s)), max(1, round(config.reconnect_max_s))
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_unsubscribe
        return client

    async def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        """Publish at QoS 1 and wait until the broker acknowledged it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._published_lock:
            # Under the lock, so that the PUBACK cannot be handled before we wait for it.
            info = self._client.publish(topic, payload, qos=1)
            self._published[info.mid] = future
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise NotifyError(f"the broker did not acknowledge {topic}", retryable=True) from exc
        finally:
            with self._published_lock:
                self._published.pop(info.mid, None)

    async def start(self) -> None:
        """Begin connecting; paho keeps reconnecting with backoff until stop()."""
        self._loop = asyncio.get_running_loop()
        config = self._config
        properties = None
        if config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = config.session_expiry_s
            properties.ReceiveMaximum = config.receive_maximum
        self._client.connect_async(
            config.host,
            config.port,
            keepalive=config.keepalive_s,
            clean_start=False if config.protocol == "5" else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        close_sockets(self._client)

    async def next_batch(self, max_messages: int, linger_s: float) -> list[InboundMessage]:
        """Wait briefly for messages, then up to `linger_s` more so that commits come in batches."""
        pending = self._pending
        if not pending:
            self._wakeup.clear()
            if not pending:
                # The timeout bounds how long a stop waits, and covers the narrow race
                # between the network thread's check of an empty queue and the clear.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=0.25)
            if not pending:
                return []
        if len(pending) < max_messages:
            await self._clock.sleep(linger_s)
        batch: list[InboundMessage] = []
        while pending and len(batch) < max_messages:
            batch.append(pending.popleft())
        return batch

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        """Acknowledge committed QoS 1 messages.

        One delivered on a connection since lost is not acknowledged: the broker sends
        it again on the new one, and the redelivery filter drops the copy.
        """
        client = self._client
        connection = self._connection
        for message in messages:
            if message.qos and message.connection == connection:
                client.ack(message.mid, message.qos)

    # --- paho's network thread --------------------------------------------

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
        with self._connection_lock:
            self._connection += 1
            self.connections += 1
        # Messages held from the lost connection cannot be acknowledged any more.
        self._pending.clear()
        log.info(
            "%s connected to %s:%d (session %s)",
            self._client_id,
            self._config.host,
            self._config.port,
            "resumed" if flags.session_present else "new",
        )
        if self._config.protocol == "5":
            # Retained status only for new subscriptions, not again on every reconnect.
            options = SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            )
            client.subscribe([(topic, options) for topic in self._topics])
        elif not flags.session_present or self._retired:
            client.subscribe([(topic, 1) for topic in self._topics])
        if self._retired:
            client.unsubscribe(list(self._retired))
        self.connected.set()

    def _on_unsubscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        retired, self._retired = self._retired, ()
        if retired and self.on_retired is not None and self._loop is not None:
            log.info("%s no longer subscribed to %s", self._client_id, ", ".join(retired))
            self._loop.call_soon_threadsafe(self.on_retired, retired)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
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
        with self._published_lock:
            future = self._published.get(mid)
        if future is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(_resolve, future)

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        pending = self._pending
        was_empty = not pending
        pending.append(
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
        if was_empty and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def close_sockets(client: paho.Client) -> None:
    """Close the socket pair paho keeps for waking its loop, which it leaves to the
    garbage collector; collected in a cycle, its sockets may be finalised before paho
    closes them, an unclosed-socket warning."""
    client._reset_sockets()
