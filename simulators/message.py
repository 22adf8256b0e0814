"""What the simulators hand to a publisher: one MQTT message, already encoded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

# The gateway rejects larger payloads (device contract, "Payloads").
MAX_PAYLOAD_BYTES = 16 * 1024


class MessageKind(StrEnum):
    """What a message is, for counting; the gateway only sees topic and payload."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"
    VENDOR = "vendor"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class SimMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    # When it is sent, by the schedule; a payload's `ts` may run ahead of it (see
    # Simulation._stamp).
    time_ms: int
    device_id: str | None
    kind: MessageKind = MessageKind.TELEMETRY
    # For malformed messages: which kind of bad input this is (see `malformed.BadInput`).
    label: str = ""


def device_topic(community: str, device_type: str, device_id: str, kind: str) -> str:
    return f"community/{community}/{device_type}/{device_id}/{kind}"


def vendor_topic(imei: str) -> str:
    return f"vendor/acme-smoke/{imei}/up"


def encode_json(fields: Mapping[str, object]) -> bytes:
    # Compact and key-ordered as given, so the same state always gives the same bytes.
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
