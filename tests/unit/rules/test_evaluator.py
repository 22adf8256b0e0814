"""Generated evaluators judge every condition as the reference closures do: on crafted
records with names missing, on registry attributes and thresholds, on rates, and on
random conditions; and their source holds nothing from a rule file."""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.decode.record import DeviceRef, Event, FieldValue, Reading, TimeSource
from gateway.errors import ConfigError
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.evaluator import Judged, build_handler
from gateway.rules.expression import (
    ExpressionError,
    Unknown,
    compile_condition,
    parse_condition,
)
from gateway.rules.rule import load_rules
from tests.catalogue import SHIPPED_PROFILES

T0 = 1_767_225_600_000
HOME = RegisteredDevice(
    device_id="br-1",
    device_type="bracelet",
    community="hgy",
    home_lat=34.75,
    home_lon=113.62,
    safe_radius_m=500,
    well_depth_cm=200,
    lives_alone=True,
    thresholds={"max_heart_rate_bpm": 170.0, "safe_radius_m": 900.0},
)
PLAIN = RegisteredDevice(
    device_id="br-2", device_type="bracelet", community="hgy", home_lat=34.7, safe_radius_m=50
)
REGISTRY = Registry([HOME, PLAIN])
KNOWN = DeviceRef("hgy", "bracelet", "br-1")
WITHOUT_THRESHOLDS = DeviceRef("hgy", "bracelet", "br-2")
STRANGER = DeviceRef("hgy", "bracelet", "br-9")
ATTRIBUTES = ("home_lat", "home_lon", "safe_radius_m", "well_depth_cm", "lives_alone")
ATTRIBUTES += ("max_heart_rate_bpm", "min_heart_rate_bpm", "unit")


def reading(
    fields: Mapping[str, FieldValue], port: int | None = None, device: DeviceRef = KNOWN
) -> Reading:
    return Reading(device, T0, TimeSource.DEVICE, dict(fields), port=port)


def event(
    kind: str, fields: Mapping[str, FieldValue], port: int | None = None, device: DeviceRef = KNOWN
) -> Event:
    return Event(device, T0, TimeSource.DEVICE, kind, dict(fields), port=port)


def reference_scope(record: Reading | Event, rates: Mapping[str, float]) -> dict[str, Any]:
    """The scope the reference closures read, as the README describes it."""
    scope: dict[str, Any] = {}
    registered = REGISTRY.get(record.device.community, record.device.device_id)
    if registered is not None:
        known = {name: getattr(registered, name, None) for name in ATTRIBUTES}
        known.update(registered.thresholds)
        scope = {f"device.{n}": v for n, v in known.items() if v is not None}
    scope.update(record.fields)
    scope["event"] = record.kind if isinstance(record, Event) else ""
    scope["port"] = record.port
    scope.update(rates)
    return scope


def reference(text: str, record: Reading | Event, rates: Mapping[str, float] = {}) -> object:
    """True, False, None for unknown, or the type of the exception raised."""
    try:
        return bool(compile_condition(text)(reference_scope(record, rates)))
    except Unknown:
        return None
    except Exception as exc:
        return type(exc)


def generated(text: str, record: Reading | Event, rates: Mapping[str, float] = {}) -> object:
    judged: list[bool | None] = []
    faults: list[Exception] = []

    def action(record: Reading | Event, holds: bool | None, rates: object) -> None:
        judged.append(holds)

    shape = (record.device.device_type, type(record), record.port is None, tuple(record.fields))
    windows = {name.removesuffix("_per_min"): 60.0 for name in rates}
    handler = build_handler(
        shape,
        [Judged("rule", parse_condition(text), action, "tracked")],
        windows,
        add_rate=lambda record, field, *_: rates.get(f"{field}_per_min"),
        registered=REGISTRY.get,
        fault=lambda rule, record, exc: faults.append(exc),
        action_fault=lambda rule, record, exc: faults.append(exc),
    )
    handler(record, {"rule": 1}, [])
    (holds,) = judged
    if faults:
        # Where the reference raises, the rule is unknown and the fault reported.
        assert holds is None
        (fault,) = faults
        return type(fault)
    return holds


CONDITIONS = [
    "t > 60",
    "t > 60 or event == 'alarm'",
    "t > 60 and event == 'alarm'",
    "not (t > 60)",
    "-t < -60",
    "t * 2 + 1 > h / 4 - 3",
    "10 < t < 80",
    "10 < t < h",
    "100 < t < h",
    "t < 10 < h",
    "h > 1 or t > 60 or x == 1",
    "h > 1 and t > 60 and x == 1",
    "x == 1 or not (h > 1)",
    "(x == 1 or t > 60) and (h < 5 or event in ('a', 'b'))",
    "event in ('alarm', 'fall') or port == 3",
    "event not in ('alarm',)",
    "port in (1, 2, 3)",
    "s == 'on'",
    "s",
    "t",
    "x",
    "true",
    "none == none",
    "coalesce(x, t) > 50",
    "coalesce(x, none) == none",
    "coalesce(x, h) > 1",
    "coalesce() > 1",
    "coalesce(x, y)",
    "h > coalesce(device.max_heart_rate_bpm, 150)",
    "h < coalesce(device.min_heart_rate_bpm, 40)",
    "distance_m(lat, lon, device.home_lat, device.home_lon) > device.safe_radius_m",
    "abs(t - h) > 5",
    "water > 0.8 * device.well_depth_cm",
    "device.lives_alone == true and worn == true",
    "device.unit == none",
    "device.nothing > 1 or t > 60",
    "t_per_min >= 5 or t > 80",
    "t < 60 and t_per_min < 1",
    "s > 3",
    "t / zero > 1",
    "abs(s) > 1",
    "s + 1 > 2 or x > 1",
    "x > 1 or s + 1 > 2",
    "t in (5, 65.0)",
]
RECORDS = [
    reading({"t": 65.0, "h": 20, "s": "on", "zero": 0}),
    reading({"t": 40.0, "h": 2}),
    reading({"t": 90}, port=3),
    reading({"h": 170, "worn": True, "lat": 34.76, "lon": 113.62}),
    reading({"h": 30, "worn": False, "lat": 34.7501, "lon": 113.6201}, device=STRANGER),
    reading({"water": 170.0, "t": 12.5, "x": 1}),
    reading({"h": 170, "worn": True, "lat": 34.7, "lon": 113.62}, device=WITHOUT_THRESHOLDS),
    reading({}),
    event("alarm", {}),
    event("fall", {"t": 70.0, "lat": 34.75, "lon": 113.62}, port=1),
    event("a", {"h": 0, "x": 2}),
]


@pytest.mark.parametrize("text", CONDITIONS)
def test_crafted_conditions_judge_as_the_reference(text: str) -> None:
    for record in RECORDS:
        assert generated(text, record) == reference(text, record), (text, record)


def test_rates_known_unknown_and_a_field_of_the_same_name() -> None:
    for text in ("t_per_min >= 5 or t > 80", "t < 60 and t_per_min < 1", "t_per_min > 1"):
        for rates in ({}, {"t_per_min": 6.0}, {"t_per_min": 0.5}):
            for record in (reading({"t": 70.0}), reading({"t": 70.0, "t_per_min": 9.0})):
                # The reference scope carries only known rates, over the fields.
                known = {k: v for k, v in rates.items() if v is not None}
                assert generated(text, record, rates) == reference(text, record, known)


def _random_condition(rnd: random.Random, depth: int) -> str:
    leaves = ["a", "b", "s", "event", "port", "device.safe_radius_m", "device.missing"]
    leaves += ["1", "2.5", "0", "'x'", "true", "false", "none"]
    if depth <= 0 or rnd.random() < 0.25:
        return rnd.choice(leaves)
    kind = rnd.randrange(8)
    left, right = _random_condition(rnd, depth - 1), _random_condition(rnd, depth - 1)
    if kind == 0:
        return f"({left} {rnd.choice(['and', 'or'])} {right})"
    if kind == 1:
        return f"(not {left})"
    if kind == 2:
        ops = ["==", "!=", "<", "<=", ">", ">="]
        chain = f"{left} {rnd.choice(ops)} {right}"
        if rnd.random() < 0.3:
            chain += f" {rnd.choice(ops)} {_random_condition(rnd, depth - 1)}"
        return f"({chain})"
    if kind == 3:
        return f"({left} {rnd.choice(['+', '-', '*', '/'])} {right})"
    if kind == 4:
        return f"coalesce({left}, {right})"
    if kind == 5:
        return f"({left} {rnd.choice(['in', 'not in'])} ({right}, {left}))"
    if kind == 6:
        return f"(-{left})"
    return f"abs({left})"


def test_random_conditions_judge_as_the_reference() -> None:
    rnd = random.Random(20)
    values: list[FieldValue] = [0, 1, 2.5, -3, "x", True, False]
    judged = 0
    for _ in range(1500):
        text = _random_condition(rnd, 4)
        try:
            parse_condition(text)
        except ExpressionError:
            continue  # refused when its rule loads (ordering by a text), never judged
        judged += 1
        fields = {name: rnd.choice(values) for name in ("a", "b", "s") if rnd.random() < 0.7}
        port = rnd.choice([None, 1, 0])
        device = rnd.choice([KNOWN, STRANGER, WITHOUT_THRESHOLDS])
        if rnd.random() < 0.5:
            record: Reading | Event = reading(fields, port, device)
        else:
            record = event(rnd.choice(["x", "alarm", ""]), fields, port, device)
        assert generated(text, record) == reference(text, record), (text, record)
    assert judged > 1000


def test_the_source_holds_nothing_from_the_rule_file() -> None:
    text = 'payload == \'__import__("os").system("true")\' or device.evil_name > 1'
    holds: list[bool | None] = []
    handler = build_handler(
        ("bracelet", Reading, True, ("payload",)),
        [Judged("rule", parse_condition(text), lambda r, h, _: holds.append(h), "true")],
        {},
        add_rate=lambda *args: None,
        registered=REGISTRY.get,
        fault=lambda rule, record, exc: None,
        action_fault=lambda rule, record, exc: None,
    )
    code = handler.__code__
    made_here = re.compile(r"^(t\d+|k\d+|_UNKNOWN)$")
    fixed = {"record", "tracked", "changes", "fields", "time_ms", "event", "port", "device"}
    fixed |= {"thresholds", "registered", "add_rate", "getattr", "append", "get", "type"}
    fixed |= {"kind", "device_id", "community", "float", "int", "time_ms"}
    fixed |= {"fault", "action_fault", "exc", "Exception"}
    for name in (*code.co_names, *code.co_varnames):
        assert made_here.match(name) or name in fixed, name
    assert all(not isinstance(c, str) or c in ("",) for c in code.co_consts if c is not None)
    handler(reading({"payload": '__import__("os").system("true")'}), None, [])
    assert holds == [True]


def test_a_condition_nested_too_deeply_names_file_rule_and_field(tmp_path: Path) -> None:
    deep = "a > 1 and (" * 150 + "a > 1" + ")" * 150
    (tmp_path / "deep.yaml").write_text(
        "rules:\n  - {name: deep, title: Deep, device_types: [x], severity: info, when: '"
        + deep
        + "'}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_rules(tmp_path, SHIPPED_PROFILES)
    assert info.value.file == str(tmp_path / "deep.yaml")
    assert info.value.field == "rule deep: condition"
    assert "nested too deeply" in info.value.problem


def test_parse_condition_refuses_what_the_reference_refuses() -> None:
    for text in ("__import__('os')", "a.b > 1", "a ** 2 > 1", "lambda: 1", "a[0] > 1"):
        with pytest.raises(ValueError, match="not allowed"):
            parse_condition(text)
    assert isinstance(parse_condition("a > 1"), ast.Compare)
