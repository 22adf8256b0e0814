"""Turns an inbound MQTT message into typed records, or rejects it with a reason."""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from gateway.cache import remember
from gateway.decode import acme
from gateway.decode.profile import DeviceProfile, FieldSpec, ProfileSet
from gateway.decode.record import (
    DeviceRef,
    Event,
    FieldValue,
    Reading,
    Record,
    StatusReport,
    TimeSource,
)
from gateway.decode.rejection import RejectReason
from gateway.errors import DecodeError
from gateway.ingest.message import InboundMessage
from gateway.registry import Registry

if TYPE_CHECKING:
    from gateway.config import IngestConfig

CODECS = frozenset({"json", "acme_smoke"})

log = logging.getLogger(__name__)

_COMMUNITY = re.compile(r"[a-z0-9-]{1,32}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KINDS = frozenset({"telemetry", "event", "status"})
_IMEI = re.compile(r"[0-9]{15}")
# Epoch milliseconds before 2000-01-01 are taken for a device clock that was never set,
# or for seconds sent where milliseconds were expected.
_EARLIEST_TS_MS = 946_684_800_000
# Devices whose clock was found off, each said once; forgotten all at once when full.
_CLOCKS_OFF_MAX_ENTRIES = 10_000
# RFC 3339's leap second, which Python's datetime does not take.
_LEAP_SECOND = re.compile(r"(T\d\d:\d\d:)60", re.IGNORECASE)
_SEQ_MAX = (1 << 63) - 1
# A named tuple's constructor is a Python function around tuple.__new__: calling that
# directly, with every value in its order, spares a frame per reading.
_new = tuple.__new__
# Topics remembered; forgotten all at once when full, so that a storm of new ids stays
# bounded.
_ROUTES_MAX_ENTRIES = 200_000


class DecodedMessage(NamedTuple):
    device: DeviceRef
    records: tuple[Record, ...]
    # Identifies a redelivery of the same message: its `seq`, or failing that its `ts`.
    dedup_key: int | None


FieldChecker = Callable[[Mapping[str, Any]], dict[str, FieldValue]]


def _field_checker(specs: Mapping[str, FieldSpec]) -> FieldChecker:
    """A profile's field specs compiled once into a checker.

    The checker is Python source generated from the specs, in which each field's name,
    type and range are constants rather than looked up in a loop: a value of the exact
    type and in range passes one test. Anything else goes to `_check_value`, which
    converts it (an integral float for an int, an int for a float) or rejects it with
    the reason.
    """
    namespace: dict[str, Any] = {
        "check_value": _check_value,
        "DecodeError": DecodeError,
        "MISSING_FIELD": RejectReason.MISSING_FIELD,
    }
    source = ["def check(payload):", "    values = {}", "    get = payload.get"]
    for index, (name, spec) in enumerate(specs.items()):
        low, high = f"low_{index}", f"high_{index}"
        namespace[low], namespace[high] = spec.min, spec.max
        source += [
            f"    value = get({name!r})",
            "    if value is not None:",
            f"        if not ({_fast_test(spec, low, high)}):",
            f"            value = check_value({name!r}, {spec.type!r}, {low}, {high}, value)",
            f"        values[{name!r}] = value",
        ]
        if spec.required:
            message = f"{name} is required"
            source += ["    else:", f"        raise DecodeError(MISSING_FIELD, {message!r})"]
    source.append("    return values")
    exec(compile("\n".join(source), "<device profile fields>", "exec"), namespace)
    check: FieldChecker = namespace["check"]
    return check


def _fast_test(spec: FieldSpec, low: str, high: str) -> str:
    """An expression true of a value that `_check_value` would return unchanged."""
    if spec.type == "bool":
        return "type(value) is bool"
    if spec.type == "string":
        return "type(value) is str"
    tests = ["type(value) is " + spec.type]
    if spec.min is not None:
        tests.append(f"{low} <= value")
    if spec.max is not None:
        tests.append(f"value <= {high}")
    bounded = [bound for bound in (spec.min, spec.max) if bound is not None]
    if spec.type == "float" and not (len(bounded) == 2 and all(map(math.isfinite, bounded))):
        # Without two finite bounds an infinity passes the range. NaN and the infinities
        # are the values that, less themselves, are not 0.
        tests.append("value - value == 0.0")
    return " and ".join(tests)


def _check_value(
    name: str, kind: str, low: float | None, high: float | None, value: Any
) -> FieldValue:
    number: int | float
    if kind == "bool":
        if type(value) is not bool:
            raise DecodeError(RejectReason.WRONG_TYPE, f"{name} must be a boolean, got {value!r}")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise DecodeError(RejectReason.WRONG_TYPE, f"{name} must be a string, got {value!r}")
        return value
    if kind == "int":
        if type(value) is int:
            number = value
        elif type(value) is float and value.is_integer():
            number = int(value)
        else:
            raise DecodeError(RejectReason.WRONG_TYPE, f"{name} must be an integer, got {value!r}")
    else:
        if type(value) is float:
            if not math.isfinite(value):
                raise DecodeError(RejectReason.WRONG_TYPE, f"{name} must be finite, got {value}")
            number = value
        elif type(value) is int:
            number = float(value)
        else:
            raise DecodeError(RejectReason.WRONG_TYPE, f"{name} must be a number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise DecodeError(RejectReason.OUT_OF_RANGE, f"{name}={number} is outside [{low}, {high}]")
    return number


class _CompiledProfile:
    __slots__ = ("event_fields", "event_kinds", "part_fields", "profile", "telemetry_fields")

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.telemetry_fields = _field_checker(profile.telemetry.fields)
        parts = profile.telemetry.parts
        self.part_fields = _field_checker(parts.fields) if parts else None
        self.event_kinds = frozenset(profile.events.kinds) if profile.events else frozenset()
        self.event_fields = _field_checker(profile.events.fields if profile.events else {})


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a topic's messages go: the profile that decodes them and, on a canonical
    topic, the device and the kind of message it names."""

    compiled: _CompiledProfile
    # None on a vendor's topic: the device is named in the payload.
    device: DeviceRef | None
    kind: str
    # A vendor's topic, split at its slashes: it must name the device the payload does.
    topic_parts: tuple[str, ...]


class Decoder:
    def __init__(
        self,
        profiles: ProfileSet,
        registry: Registry,
        *,
        max_payload_bytes: int = 16 * 1024,
        require_registered: bool = False,
        max_future_skew_s: float = 24 * 3600,
    ) -> None:
        self._by_type = {t: _CompiledProfile(p) for t, p in profiles.by_device_type.items()}
        self._vendor = tuple(_CompiledProfile(p) for p in profiles.vendor)
        self._registry = registry
        self._max_payload_bytes = max_payload_bytes
        self._require_registered = require_registered
        self._max_future_skew_ms = int(max_future_skew_s * 1000)
        # Each topic is checked once, and its device named by one DeviceRef, which
        # later stages then find by identity.
        self._routes: dict[str, _Route] = {}
        self._clocks_off: set[DeviceRef] = set()

    @classmethod
    def configured(cls, profiles: ProfileSet, registry: Registry, ingest: IngestConfig) -> Decoder:
        return cls(
            profiles,
            registry,
            max_payload_bytes=ingest.max_payload_bytes,
            require_registered=ingest.require_registered,
            max_future_skew_s=ingest.max_future_skew_s,
        )

    def use_registry(self, registry: Registry) -> None:
        """A reloaded registry, from the next message on: each topic is checked again."""
        self._registry = registry
        self._routes.clear()

    def decode(self, message: InboundMessage) -> DecodedMessage:
        """Raises DecodeError with the reason the message is rejected."""
        if len(message.payload) > self._max_payload_bytes:
            raise DecodeError(
                RejectReason.TOO_LARGE,
                f"{len(message.payload)} bytes, at most {self._max_payload_bytes}",
            )
        route = self._routes.get(message.topic)
        if route is None:
            route = remember(
                self._routes, message.topic, self._route(message.topic), _ROUTES_MAX_ENTRIES
            )
        if route.device is None:
            return self._decode_vendor(message, route)
        return self._decode_canonical(message, route.compiled, route.device, route.kind)

    def _route(self, topic: str) -> _Route:
        """What a topic says about its messages, checked once a registry."""
        parts = topic.split("/")
        if len(parts) == 5 and parts[0] == "community":
            _, community, device_type, device_id, kind = parts
            if not _COMMUNITY.fullmatch(community):
                raise DecodeError(RejectReason.BAD_TOPIC, f"community {community!r} is not valid")
            if not _DEVICE_ID.fullmatch(device_id):
                raise DecodeError(RejectReason.BAD_TOPIC, f"device id {device_id!r} is not valid")
            if kind not in _KINDS:
                raise DecodeError(RejectReason.BAD_TOPIC, f"kind {kind!r} is not {sorted(_KINDS)}")
            compiled = self._by_type.get(device_type)
            if compiled is None:
                raise DecodeError(
                    RejectReason.UNKNOWN_DEVICE_TYPE, f"no device profile for {device_type!r}"
                )
            self._check_registered(community, device_type, device_id)
            return _Route(compiled, DeviceRef(community, device_type, device_id), kind, ())
        for compiled in self._vendor:
            if _topic_matches(compiled.profile.topics, parts):
                return _Route(compiled, None, "up", tuple(parts))
        raise DecodeError(RejectReason.BAD_TOPIC, f"no device profile takes topic {topic!r}")

    def _decode_canonical(
        self, message: InboundMessage, compiled: _CompiledProfile, device: DeviceRef, kind: str
    ) -> DecodedMessage:
        body = _parse_object(message.payload)
        time_ms, source, stamp_ms = self._timestamp(device, body, message.received_ms)
        clock_right = source is TimeSource.DEVICE
        seq = _seq(body)
        records: tuple[Record, ...]
        if kind == "telemetry":
            records = self._readings(compiled, device, body, time_ms, source, seq)
        elif kind == "event":
            event = self._event(compiled, device, body, time_ms, source, seq)
            records = (event,)
            # Two events at one time (a fall and an SOS in the same second) are two.
            detail = zlib.crc32(f"{event.kind}/{event.port}".encode())
            key = _dedup_key(kind, seq, stamp_ms, message.payload, detail,
                             clock_right=clock_right)  # fmt: skip
            return _new(DecodedMessage, (device, records, key))
        else:
            online = body.get("online")
            if online is None:
                raise DecodeError(RejectReason.MISSING_FIELD, "a status needs 'online'")
            if type(online) is not bool:
                raise DecodeError(
                    RejectReason.WRONG_TYPE, f"online must be a boolean, got {online!r}"
                )
            if message.retain and source is TimeSource.GATEWAY:
                source = TimeSource.RETAINED
            records = (StatusReport(device, time_ms, source, online, seq),)
        key = _dedup_key(kind, seq, stamp_ms, message.payload, clock_right=clock_right)
        return _new(DecodedMessage, (device, records, key))

    def _decode_vendor(self, message: InboundMessage, route: _Route) -> DecodedMessage:
        compiled = route.compiled
        body = _parse_object(message.payload)
        imei = body.get("imei")
        if not isinstance(imei, str) or not _IMEI.fullmatch(imei):
            raise DecodeError(RejectReason.WRONG_TYPE, f"imei must be 15 digits, got {imei!r}")
        if imei not in route.topic_parts:
            raise DecodeError(RejectReason.BAD_TOPIC, f"imei {imei} differs from the topic's")
        registered = self._registry.by_imei(imei)
        if registered is None:
            raise DecodeError(
                RejectReason.UNREGISTERED_DEVICE, f"IMEI {imei} is not in the registry"
            )
        hex_payload = body.get("payload")
        if not isinstance(hex_payload, str):
            raise DecodeError(RejectReason.WRONG_TYPE, "payload must be a hex string")
        frame = acme.decode_frame(hex_payload)
        device = DeviceRef(registered.community, compiled.profile.device_type, registered.device_id)
        time_ms, source, stamp_ms = self._timestamp(device, body, message.received_ms)
        fields = compiled.telemetry_fields(
            {
                "obscuration_pct_per_m": frame.obscuration_pct_per_m,
                "temperature_c": frame.temperature_c,
                "battery_pct": frame.battery_pct,
                "alarm": frame.alarm,
                "tamper": frame.tamper,
                "low_battery": frame.low_battery,
                "fault": frame.fault,
            }
        )
        records: list[Record] = [Reading(device, time_ms, source, fields)]
        records.extend(Event(device, time_ms, source, name, {}) for name in frame.events)
        key = _dedup_key("up", _seq(body), stamp_ms, message.payload, frame.crc,
                         clock_right=source is TimeSource.DEVICE)  # fmt: skip
        return DecodedMessage(device, tuple(records), key)

    def _check_registered(self, community: str, device_type: str, device_id: str) -> None:
        registered = self._registry.get(community, device_id)
        if registered is None:
            if self._require_registered:
                raise DecodeError(
                    RejectReason.UNREGISTERED_DEVICE,
                    f"{device_id} in {community} is not in the registry",
                )
        elif registered.device_type != device_type:
            raise DecodeError(
                RejectReason.DEVICE_TYPE_MISMATCH,
                f"{device_id} is registered as {registered.device_type}, sent as {device_type}",
            )

    def _timestamp(
        self, device: DeviceRef, body: Mapping[str, Any], received_ms: int
    ) -> tuple[int, TimeSource, int | None]:
        """The record's time and where it comes from, and the device's own, if it sent
        one, which tells every delivery of a message apart from other messages."""
        ts = body.get("ts")
        if ts is None:
            return received_ms, TimeSource.GATEWAY, None
        if type(ts) is int:
            time_ms = ts
        elif type(ts) is float and ts.is_integer():
            # JSON has one kind of number: a firmware's library may write 64-bit integers
            # as doubles (1.7672256e12), as it may any integer field.
            time_ms = int(ts)
        elif isinstance(ts, str):
            time_ms = _rfc3339_ms(ts)
        else:
            raise DecodeError(
                RejectReason.BAD_TIMESTAMP, f"ts must be epoch ms or RFC 3339, got {ts!r}"
            )
        # What tells a message apart is the device's time as sent, whenever its clock was
        # ever set: not whether it is usable as the record's time, which depends on when
        # the message came, and a redelivery comes later.
        stamp_ms = time_ms if time_ms >= _EARLIEST_TS_MS else None
        # When the message was read stands for now: the clock is read once a read of the
        # socket, not once a message.
        if _EARLIEST_TS_MS <= time_ms <= received_ms + self._max_future_skew_ms:
            return time_ms, TimeSource.DEVICE, stamp_ms
        # A clock never set, reset by a flat battery, running far ahead, or seconds sent
        # for milliseconds: what the device says is kept all the same (a fire alarm is a
        # fire alarm), at the time it came, marked as such. A time before the clock was
        # ever set tells no message from another (a clock stuck at 0 sends it with every
        # one): only `seq` may then.
        if device not in self._clocks_off:
            if len(self._clocks_off) >= _CLOCKS_OFF_MAX_ENTRIES:
                self._clocks_off.clear()
            self._clocks_off.add(device)
            log.warning("%s/%s/%s sends times its clock cannot have (ts %s): what it sends is "
                        "kept at the time it comes", device.community, device.device_type,
                        device.device_id, ts)  # fmt: skip
        return received_ms, TimeSource.GATEWAY, stamp_ms

    def _readings(
        self,
        compiled: _CompiledProfile,
        device: DeviceRef,
        body: Mapping[str, Any],
        time_ms: int,
        source: TimeSource,
        seq: int | None,
    ) -> tuple[Record, ...]:
        fields = compiled.telemetry_fields(body)
        records: list[Record] = []
        parts = compiled.profile.telemetry.parts
        if parts is not None and compiled.part_fields is not None:
            items = body.get(parts.field)
            if items is not None:
                if not isinstance(items, list) or len(items) > parts.max_items:
                    raise DecodeError(
                        RejectReason.WRONG_TYPE,
                        f"{parts.field} must be a list of at most {parts.max_items} objects",
                    )
                for item in items:
                    if not isinstance(item, dict):
                        raise DecodeError(
                            RejectReason.WRONG_TYPE, f"{parts.field} items must be objects"
                        )
                    key = item.get(parts.key)
                    if type(key) is not int or key < 0:
                        raise DecodeError(
                            RejectReason.WRONG_TYPE,
                            f"{parts.field}[].{parts.key} must be a non-negative integer",
                        )
                    part_values = compiled.part_fields(item)
                    if part_values:
                        records.append(
                            _new(Reading, (device, time_ms, source, part_values, seq, key))
                        )
        if fields:
            records.insert(0, _new(Reading, (device, time_ms, source, fields, seq, None)))
        if not records:
            raise DecodeError(RejectReason.MISSING_FIELD, "telemetry carries no known field")
        return tuple(records)

    def _event(
        self,
        compiled: _CompiledProfile,
        device: DeviceRef,
        body: Mapping[str, Any],
        time_ms: int,
        source: TimeSource,
        seq: int | None,
    ) -> Event:
        kind = body.get("event")
        if kind is None:
            raise DecodeError(RejectReason.MISSING_FIELD, "an event needs an 'event' string")
        if not isinstance(kind, str):
            raise DecodeError(RejectReason.WRONG_TYPE, f"event must be a string, got {kind!r}")
        if kind not in compiled.event_kinds:
            raise DecodeError(
                RejectReason.UNKNOWN_EVENT,
                f"{kind!r} is not an event of {device.device_type}: {sorted(compiled.event_kinds)}",
            )
        fields = compiled.event_fields(body)
        port = fields.get("port")
        return Event(
            device, time_ms, source, kind, fields, seq, port if type(port) is int else None
        )


def _parse_object(payload: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(RejectReason.NOT_JSON, f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise DecodeError(
            RejectReason.NOT_OBJECT, f"expected a JSON object, got {type(body).__name__}"
        )
    return body


def _seq(body: Mapping[str, Any]) -> int | None:
    seq = body.get("seq")
    if seq is None:
        return None
    if type(seq) is float and seq.is_integer():
        seq = int(seq)
    # The redelivery filter keeps keys as 64-bit integers, and a message without `ts`
    # has its `seq` for a key: a larger one would stop the batch it came in, and the
    # broker would send that batch again and again.
    if type(seq) is not int or not 0 <= seq <= _SEQ_MAX:
        raise DecodeError(
            RejectReason.WRONG_TYPE,
            f"seq must be an integer from 0 to {_SEQ_MAX}, got {seq!r}",
        )
    return seq


# Negative, as a `seq` never is: a message without `seq` keyed (code, ts) must not share
# the key of one with `seq` (seq, ts), an alarm with `seq` 2 sent in the millisecond of
# a status without one.
_KIND_CODES = {"telemetry": -1, "event": -2, "status": -3, "up": -4}


def _rfc3339_ms(ts: str) -> int:
    """Epoch milliseconds of an RFC 3339 time, which must have its offset; a leap second
    is taken for the second after it."""
    leap = _LEAP_SECOND.search(ts)
    text = _LEAP_SECOND.sub(r"\g<1>59", ts, count=1) if leap else ts
    # RFC 3339 lets the zone's Z be written small.
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DecodeError(RejectReason.BAD_TIMESTAMP, f"ts {ts!r} is not RFC 3339") from exc
    if parsed.tzinfo is None:
        raise DecodeError(RejectReason.BAD_TIMESTAMP, f"ts {ts!r} has no UTC offset")
    return round(parsed.timestamp() * 1000) + (1000 if leap else 0)


def _dedup_key(
    kind: str,
    seq: int | None,
    stamp_ms: int | None,
    payload: bytes,
    detail: int = 0,
    *,
    clock_right: bool = True,
) -> int | None:
    """A small int per message, the same for every delivery of it, in every process:
    made of ints alone, whose hashes Python does not salt.

    `seq` and the device's `ts` together where both are sent: a device that restarts
    counts from 0 again, and its new messages must not pass for old ones. `seq` without a
    time (none sent, or a clock never set): with the message's bytes, which every
    delivery of it repeats, and a device counting again from 0 after a battery change
    does not (its readings differ), or it would be silenced as if each were one before.
    Without `seq`, the time and `detail`, which tells apart messages a device may send at
    one time, if the time is one the device's clock can have (`clock_right`): a clock
    stuck ahead sends one time with every message, each of which would pass for the first.
    """
    if seq is not None:
        return hash((seq, stamp_ms if stamp_ms is not None else zlib.crc32(payload)))
    if stamp_ms is None or not clock_right:
        return None
    code = _KIND_CODES[kind]
    return hash((code, stamp_ms, detail)) if detail else hash((code, stamp_ms))


def _topic_matches(filters: tuple[str, ...], parts: list[str]) -> bool:
    for topic_filter in filters:
        pattern = topic_filter.split("/")
        if pattern[-1] == "#":
            if len(parts) >= len(pattern) - 1 and all(
                p in ("+", t) for p, t in zip(pattern[:-1], parts, strict=False)
            ):
                return True
        elif len(pattern) == len(parts) and all(
            p in ("+", t) for p, t in zip(pattern, parts, strict=True)
        ):
            return True
    return False
