"""Whatever devices send, every message is stored or quarantined with its reason, once.

Messages are generated around the device contract: its topics, right or wrong in each
part, and JSON payloads whose known fields take values of every type and size, edge
values of the ranges included, with unknown fields, lists, nesting and bytes that are
not JSON at all. A batch of them is prepared as the pipeline prepares a batch.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import PROJECT_ROOT
from gateway.decode.acme import crc16_modbus
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.profile import FieldSpec, load_profiles
from gateway.decode.record import Event, Record, StatusReport
from gateway.decode.rejection import RejectReason
from gateway.errors import DecodeError
from gateway.ingest.message import InboundMessage
from gateway.pipeline import IngestPipeline
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.engine import RuleEngine
from gateway.stats import Stats
from gateway.store.outbox import Outbox
from gateway.store.series import SeriesMapper
from simulators.acme import AcmeFrame, FrameType, StatusBits
from tests.catalogue import shipped_rules

NOW_MS = 1_767_225_600_000
PROFILES = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
JSON_PROFILES = [p for p in PROFILES.by_name.values() if p.codec == "json"]
IMEI = "860000000000001"
# One registered device of each type, with what the shipped rules read of the registry.
REGISTERED = {
    "smoke_detector": RegisteredDevice(
        device_id="d-1", device_type="smoke_detector", community="hgy", building="3"
    ),
    "manhole_cover": RegisteredDevice(
        device_id="mh-1", device_type="manhole_cover", community="hgy", well_depth_cm=250
    ),
    "bracelet": RegisteredDevice(
        device_id="br-1",
        device_type="bracelet",
        community="hgy",
        home_lat=34.79,
        home_lon=113.66,
        safe_radius_m=500,
        lives_alone=True,
        thresholds={"min_heart_rate_bpm": 45, "max_heart_rate_bpm": 120},
    ),
    "charging_shed": RegisteredDevice(
        device_id="cs-1", device_type="charging_shed", community="hgy", building="7"
    ),
}
REGISTRY = Registry(
    [
        *REGISTERED.values(),
        RegisteredDevice(
            device_id="acme-1", device_type="smoke_detector", community="hgy", imei=IMEI
        ),
    ]
)
# The last number of a line is its time in ms.
_LINE_END = re.compile(r" (\d+)$")


@st.composite
def _field_values(draw: st.DrawFn, spec: FieldSpec) -> Any:
    """Mostly a value the field takes; else one near or beyond its bounds, or of any type."""
    if draw(st.integers(0, 19)) < 18:
        low = spec.min if spec.min is not None else -1e6
        high = spec.max if spec.max is not None else 1e6
        if spec.type == "bool":
            return draw(st.booleans())
        if spec.type == "string":
            return draw(st.text(max_size=20))
        numbers = st.integers(math.ceil(low), math.floor(high))
        if spec.type == "int":
            return draw(numbers)
        return draw(st.floats(low, high, allow_nan=False, allow_infinity=False) | numbers)
    edges: list[Any] = [0, -1, 1, 0.5, 2**63, -(2**63) - 1, 1e308, -1e308, True, False]
    for bound in (spec.min, spec.max):
        if bound is not None:
            edges += [bound, bound - 1, bound + 1, int(bound), math.nextafter(bound, math.inf)]
    return draw(st.one_of(st.sampled_from(edges), json_values(max_leaves=3)))


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=max_leaves,
    )


@st.composite
def payloads(draw: st.DrawFn, kind: str, device_type: str) -> dict[str, Any]:
    profile = next(p for p in JSON_PROFILES if p.device_type == device_type)
    body: dict[str, Any] = {}
    specs: Mapping[str, FieldSpec] = profile.telemetry.fields
    if kind == "event" and profile.events is not None:
        specs = profile.events.fields
        kinds = list(profile.events.kinds)
        body["event"] = draw(st.sampled_from([*kinds, "no_such_event", 7, None]))
    if kind == "status":
        body["online"] = draw(st.sampled_from([True, False] * 4 + [None, 1, "true"]))
    for name, spec in specs.items():
        if draw(st.integers(0, 9)) > 0:
            body[name] = draw(_field_values(spec))
    parts = profile.telemetry.parts
    if kind == "telemetry" and parts is not None and draw(st.booleans()):
        item = st.fixed_dictionaries(
            {parts.key: st.integers(0, 12) if draw(st.integers(0, 9)) else json_values(1)},
            optional={name: _field_values(spec) for name, spec in parts.fields.items()},
        )
        if draw(st.integers(0, 9)) > 0:
            body[parts.field] = draw(st.lists(item, max_size=4))
        else:
            body[parts.field] = draw(
                st.lists(item, min_size=parts.max_items, max_size=parts.max_items + 1)
                | json_values(max_leaves=2)
            )
    good_ts = [NOW_MS, NOW_MS - 60_000, "2026-01-01T00:00:00+08:00", "2026-01-01T08:00:00Z"]
    bad_ts = [946_684_799_999, NOW_MS * 1000, "2026-01-01T00:00:00", "yesterday", 1.5e12, True]
    if draw(st.booleans()):
        bad = draw(st.integers(0, 9)) == 0
        body["ts"] = draw(
            st.sampled_from(bad_ts) | json_values(1) if bad else st.sampled_from(good_ts)
        )
    if draw(st.booleans()):
        bad = draw(st.integers(0, 9)) == 0
        body["seq"] = draw(
            st.sampled_from([-1, 2**63]) | json_values(1) if bad else st.integers(0, 5)
        )
    body.update(draw(st.dictionaries(st.text(max_size=6), json_values(max_leaves=2), max_size=2)))
    return body


@st.composite
def acme_frames(draw: st.DrawFn) -> str:
    """A vendor frame of any content after its header, its CRC right; or any hex."""
    if draw(st.booleans()):
        return draw(st.text("0123456789abcdefABCDEF", max_size=24))
    body = bytes([0xAA]) + draw(st.binary(min_size=7, max_size=7))
    return (body + crc16_modbus(body).to_bytes(2, "little")).hex()


@st.composite
def messages(draw: st.DrawFn) -> InboundMessage:
    what = draw(st.sampled_from(["canonical"] * 8 + ["vendor", "bytes"]))
    if what == "vendor":
        frame = AcmeFrame(FrameType.ALARM, StatusBits.ALARM, 80, 23.5, 0.02).encode().hex()
        # Mostly the registered detector, named alike by its topic and its payload.
        imei = draw(st.sampled_from([IMEI] * 6 + ["860000000000002", "86", 12]))
        body = {
            "imei": imei,
            "payload": draw(st.sampled_from([frame, frame[:-2], "zz" * 10, 5]) | acme_frames()),
            "ts": draw(st.sampled_from([NOW_MS, NOW_MS, None, "now"])),
        }
        named = imei if draw(st.integers(0, 9)) else "860000000000002"
        topic = f"vendor/acme-smoke/{named}/up"
        return InboundMessage(topic, json.dumps(body).encode(), received_ms=NOW_MS)
    device_type = draw(st.sampled_from([p.device_type for p in JSON_PROFILES]))
    kind = draw(st.sampled_from(["telemetry"] * 12 + ["event"] * 6 + ["status"] * 2 + ["other"]))
    registered = REGISTERED[device_type].device_id
    community, typed = "hgy", device_type
    device_id = draw(st.sampled_from(["d-2", "d-3", registered, registered]))
    # Now and then one part of the topic is wrong.
    wrong = draw(st.integers(0, 30))
    if wrong == 0:
        community = draw(st.sampled_from(["Bad Community", "x" * 33, ""]))
    elif wrong == 1:
        typed = "gas_detector"
    elif wrong == 2:
        device_id = draw(st.sampled_from(["bad id", "acme-1", "d-1", "é"]))
    topic = f"community/{community}/{typed}/{device_id}/{kind}"
    if what == "bytes":
        payload = draw(st.binary(max_size=40) | st.just(b"x" * (16 * 1024 + 1)))
    else:
        body = draw(payloads(kind, device_type))
        payload = json.dumps(body, allow_nan=True).encode()
    return InboundMessage(topic, payload, received_ms=NOW_MS)


@pytest.fixture(scope="module")
def outbox() -> Iterator[Outbox]:
    with tempfile.TemporaryDirectory() as folder:
        box = Outbox(Path(folder) / "outbox.sqlite3")
        yield box
        box.close()


def _prepared(outbox: Outbox) -> tuple[IngestPipeline, Decoder]:
    decoder = Decoder(PROFILES, REGISTRY)
    mapper = SeriesMapper(PROFILES, REGISTRY)
    return IngestPipeline(decoder, RedeliveryFilter(), mapper, outbox, Stats()), decoder


def _specs(device_type: str, which: str) -> dict[str, FieldSpec]:
    """The fields a device type's profiles declare, a vendor's among them."""
    specs: dict[str, FieldSpec] = {}
    for profile in PROFILES.by_name.values():
        if profile.device_type != device_type:
            continue
        if which == "event":
            specs.update(profile.events.fields if profile.events else {})
        elif which == "part":
            specs.update(profile.telemetry.parts.fields if profile.telemetry.parts else {})
        else:
            specs.update(profile.telemetry.fields)
    return specs


def _conforms(record: Record) -> None:
    """A record's fields have the types and ranges its profiles declare."""
    device_type = record.device.device_type
    if isinstance(record, StatusReport):
        assert type(record.online) is bool
        return
    if isinstance(record, Event):
        kinds = {k for p in PROFILES.by_name.values() if p.events for k in p.events.kinds}
        assert record.kind in kinds
        specs = _specs(device_type, "event")
    else:
        specs = _specs(device_type, "telemetry" if record.port is None else "part")
    assert set(record.fields) <= set(specs)
    for name, value in record.fields.items():
        spec = specs[name]
        assert type(value).__name__ == {"string": "str"}.get(spec.type, spec.type), (name, value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert math.isfinite(value)
            assert spec.min is None or value >= spec.min, (name, value)
            assert spec.max is None or value <= spec.max, (name, value)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(messages(), min_size=1, max_size=30))
def test_every_message_is_stored_or_quarantined_once_and_never_trips_the_gateway(
    outbox: Outbox, batch: list[InboundMessage]
) -> None:
    pipeline, decoder = _prepared(outbox)
    prepared = pipeline.prepare(batch)

    # A message that trips a fault of the gateway's is quarantined rather than stop the
    # batch: none of these may.
    faults = [q for q in prepared.quarantined if q.reason == RejectReason.INTERNAL_ERROR]
    assert faults == [], faults[0].detail
    assert all(q.reason in set(RejectReason) and q.detail for q in prepared.quarantined)
    # Each message once: stored, quarantined, or a redelivery of one stored.
    taken = len(prepared.types)
    assert taken + len(prepared.quarantined) + prepared.redeliveries == len(batch)
    assert len(prepared.lines) == len(prepared.records) >= taken

    for record, line in zip(prepared.records, prepared.lines, strict=True):
        _conforms(record)
        end = _LINE_END.search(line)
        assert end is not None and int(end.group(1)) == record.time_ms, line

    # The shipped rules judge whatever was stored without a fault.
    engine = RuleEngine(shipped_rules(), REGISTRY, PROFILES.periods_s())
    engine.evaluate(prepared.records)
    assert not engine.faults.counts

    # The same messages again, as the broker redelivers them: a message with a key (its
    # `seq` or its device's `ts`) is not stored twice; one without is stored again, as
    # nothing tells it from a new one.
    keyed = unkeyed = 0
    mapper = SeriesMapper(PROFILES, REGISTRY)
    for message in batch:
        try:
            decoded = decoder.decode(message)
            for record in decoded.records:
                mapper.line(record)
        except (DecodeError, ValueError):
            continue
        if decoded.dedup_key is None:
            unkeyed += 1
        else:
            keyed += 1
    assert taken == unkeyed + keyed - prepared.redeliveries
    again = pipeline.prepare(batch)
    assert len(again.quarantined) == len(prepared.quarantined)
    assert again.redeliveries == keyed
    assert len(again.types) == unkeyed
