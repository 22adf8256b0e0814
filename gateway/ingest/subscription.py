"""What the gateway's broker connections share, whichever protocol they speak: the
session's topic filters, and the messages waiting for the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

import orjson

from gateway import __version__
from gateway.clock import Clock
from gateway.config import MqttConfig
from gateway.ingest.message import InboundMessage

log = logging.getLogger(__name__)


class Status:
    """The gateway's availability on its status topic (`mqtt.status_topic`), retained:
    what is published at a connect and at a stop, and the connection's last will."""

    def __init__(self, topic: str, client_id: str, clock: Clock) -> None:
        self.topic = topic
        self._client_id = client_id
        self._clock = clock

    def online(self) -> bytes:
        return self._document(True, "connected")

    def stopped(self) -> bytes:
        return self._document(False, "stopped")

    def cannot_start(self, problem: str) -> bytes:
        """Said by a start that ends before the gateway runs: a broken rule file, say."""
        return self._document(False, f"cannot start: {problem}")

    def will(self) -> bytes:
        """Published by the broker when it loses the connection without a DISCONNECT."""
        return self._document(False, "connection lost")

    def _document(self, online: bool, reason: str) -> bytes:
        return orjson.dumps(
            {
                "online": online,
                "reason": reason,
                "client_id": self._client_id,
                "version": __version__,
                # When the gateway said it; the will's, when it connected.
                "at_ms": self._clock.now_ms(),
            }
        )


class Subscription:
    """A persistent session's subscriptions, and what arrives on them, in batches."""

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
        self._config = config
        self._clock = clock
        self._topics = tuple(config.topics if topics is None else topics)
        self._client_id = client_id or config.client_id
        # Said on this connection, if `status` and the config names a topic.
        topic = config.status if status else None
        self._status = Status(topic, config.client_id, clock) if topic is not None else None
        # Filters the session may still hold from an earlier configuration: dropped at
        # every connect, after the current ones are in place, so that nothing falls
        # between the two and nothing arrives on both connections for long.
        self._retired = tuple(t for t in retired if t not in self._topics)
        # Told, on the event loop, once the broker has dropped the retired filters.
        self.on_retired: Callable[[Sequence[str]], None] | None = None
        # Filters configured since the session was last subscribed, which a resumed
        # session does not hold yet: subscribed at the next connect whatever the session,
        # and told once the broker has them.
        self._added = tuple(t for t in added if t in self._topics)
        self.on_subscribed: Callable[[Sequence[str]], None] | None = None
        # Filters the broker refused (an ACL that denies them): nothing arrives on them,
        # which the gateway's fault watch and readiness tell; asked for again now and then.
        self.refused: tuple[str, ...] = ()
        self._pending: deque[InboundMessage] = deque()
        self._wakeup = asyncio.Event()
        # Counts connections: a message carries the number of the one that delivered
        # it, since packet ids mean nothing on another one.
        self._connection = 0
        # Read by other threads (readiness, the telemetry process's reports).
        self.connected = threading.Event()
        self.connections = 0

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def holds_messages(self) -> bool:
        """Whether messages taken in wait for the next batch."""
        return bool(self._pending)

    async def next_batch(self, max_messages: int, linger_s: float) -> list[InboundMessage]:
        """Wait briefly for messages, then up to `linger_s` more so that commits come in batches."""
        pending = self._pending
        if not pending:
            self._wakeup.clear()
            # The timeout bounds how long a stop waits.
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

    def _connected_anew(self, session_present: bool) -> None:
        self._connection += 1
        self.connections += 1
        # Messages held from the lost connection cannot be acknowledged any more: a
        # resumed session sends them again. Not those it sent at QoS 0 (a device
        # publishing so), which it never sends again; nor any of them when the broker
        # lost the session (restarted without persistence, or the session expired),
        # as it holds nothing of them now.
        if session_present:
            unsent_again = [message for message in self._pending if not message.qos]
            self._pending.clear()
            self._pending.extend(unsent_again)
        log.info(
            "%s connected to %s:%d (session %s)",
            self._client_id,
            self._config.host,
            self._config.port,
            "resumed" if session_present else "new",
        )

    def _subscription_done(self, asked: Sequence[str], refused: Sequence[str] = ()) -> None:
        """The broker answered a subscription to `asked`, and has them but `refused`.
        One refused is not recorded as the session's: a resumed session is asked for it
        again."""
        for topic in refused:
            log.error("the broker refused %s the subscription to %s", self._client_id, topic)
        self.refused = (*(t for t in self.refused if t not in asked), *refused)
        added = tuple(t for t in self._added if t in asked and t not in refused)
        self._added = tuple(t for t in self._added if t not in added)
        if added and self.on_subscribed is not None:
            self.on_subscribed(added)

    def _retirement_done(self) -> None:
        """The broker has dropped the retired filters."""
        retired, self._retired = self._retired, ()
        if retired and self.on_retired is not None:
            log.info("%s no longer subscribed to %s", self._client_id, ", ".join(retired))
            self.on_retired(retired)
