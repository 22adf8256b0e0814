"""A message as it came off the broker, before anything is known about it."""

from __future__ import annotations

from typing import NamedTuple


class InboundMessage(NamedTuple):
    topic: str
    payload: bytes
    received_ms: int
    # Broker packet id; 0 for QoS 0. Acknowledged only after the message is committed.
    mid: int = 0
    qos: int = 0
    retain: bool = False
    # Which broker connection delivered it: packet ids mean nothing on another one.
    connection: int = 0
