from __future__ import annotations

import enum
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.decode.record import FieldValue
from gateway.store.line_protocol import (
    FieldSetEncoder,
    encode_fields,
    encode_point,
    encode_points,
    parse_line,
)
from gateway.store.point import Point
from tests.stored_text import (
    HOSTILE_TEXT,
    MEASUREMENTS,
    as_stored_field_key,
    as_stored_measurement,
    as_stored_name,
)

T_MS = 1_767_225_600_000


def point(
    fields: tuple[tuple[str, FieldValue], ...] = (("v", 1.5),),
    tags: tuple[tuple[str, str], ...] = (),
    measurement: str = "m",
) -> Point:
    return Point(measurement=measurement, tags=tags, fields=fields, time_ms=T_MS)


def test_typical_point() -> None:
    p = Point(
        measurement="reading",
        tags=(("device_id", "th-001"), ("community", "c1"), ("device_type", "th")),
        fields=(("temperature_c", 21.5), ("battery_mv", 3012), ("door_open", False)),
        time_ms=T_MS,
    )
    assert encode_point(p) == (
        "reading,community=c1,device_id=th-001,device_type=th "
        f"temperature_c=21.5,battery_mv=3012i,door_open=false {T_MS}"
    )


def test_tags_sorted_by_key_and_empty_values_omitted() -> None:
    p = point(tags=(("z", "1"), ("a", "2"), ("port", ""), ("m", "3")))
    assert encode_point(p) == f"m,a=2,m=3,z=1 v=1.5 {T_MS}"


def test_field_order_is_kept() -> None:
    assert encode_point(point((("b", 1), ("a", 2)))) == f"m b=1i,a=2i {T_MS}"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1i"),
        (-7, "-7i"),
        (0, "0i"),
        (2**63 - 1, "9223372036854775807i"),
        (-(2**63), "-9223372036854775808i"),
        (True, "true"),
        (False, "false"),
        (3.0, "3.0"),
        (-0.0, "-0.0"),
        (0.1, "0.1"),
        (1e20, "1e+20"),
        (1e-5, "1e-05"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        ("plain", '"plain"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("C:\\dir\\", '"C:\\\\dir\\\\"'),
        ("a,b c=d", '"a,b c=d"'),
        ("湖光苑 3号楼", '"湖光苑 3号楼"'),
        # InfluxDB has no escape for a newline in a string; it keeps a raw one.
        ("line1\nline2\r\n", '"line1\nline2\r\n"'),
    ],
)
def test_field_values(value: FieldValue, text: str) -> None:
    assert encode_point(point((("f", value),))) == f"m f={text} {T_MS}"


def test_floats_round_trip() -> None:
    for value in (0.1 + 0.2, 1 / 3, 123456789.123456789, 2.5e-300, -1e300):
        line = encode_point(point((("f", value),)))
        assert float(line.split(" ")[1].removeprefix("f=")) == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="'f'"):
        encode_point(point((("f", value),)))


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_ints_outside_int64_rejected(value: int) -> None:
    with pytest.raises(ValueError, match="int64"):
        encode_point(point((("f", value),)))


def test_subclasses_of_field_types() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Mode(enum.StrEnum):
        AUTO = "auto"

    class Ratio(float):
        pass

    p = point((("level", Level.HIGH), ("mode", Mode.AUTO), ("r", Ratio(0.5))))
    assert encode_point(p) == f'm level=3i,mode="auto",r=0.5 {T_MS}'


def test_unsupported_type_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported type"):
        encode_point(point((("f", None),)))  # type: ignore[arg-type]


def test_no_fields_rejected() -> None:
    with pytest.raises(ValueError, match="no fields"):
        encode_point(point(fields=()))


@pytest.mark.parametrize(
    "p",
    [
        point(measurement=""),
        point(tags=(("", "v"),)),
        point(fields=(("", 1),)),
    ],
)
def test_empty_names_rejected(p: Point) -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_point(p)


def test_measurement_escapes_comma_and_space_only() -> None:
    p = point(measurement="a,b c=d")
    assert encode_point(p) == f"a\\,b\\ c=d v=1.5 {T_MS}"


def test_tag_and_field_keys_escape_comma_equals_space() -> None:
    p = point(tags=(("k,1 =", "v,1 ="),), fields=(("f,1 =", 1),))
    assert encode_point(p) == f"m,k\\,1\\ \\==v\\,1\\ \\= f\\,1\\ \\==1i {T_MS}"


def test_double_quotes_are_literal_in_names_and_tags_and_escaped_in_field_keys() -> None:
    # InfluxDB reads `\"` in a field key as a double quote, and would lose a backslash
    # before a raw one.
    p = point(measurement='m"', tags=(('t"', 'v"'),), fields=(('f"', 1),))
    assert encode_point(p) == f'm",t"=v" f\\"=1i {T_MS}'


def test_backslashes_in_tags_are_literal() -> None:
    # The parser only looks one character back: a backslash not before a special
    # character is a literal one, and one before an escaped special stays as it is.
    p = point(tags=(("k", "a\\b"), ("x", "a\\,b")), fields=(("f\\g", 1),))
    assert encode_point(p) == f"m,k=a\\b,x=a\\\\,b f\\g=1i {T_MS}"


def test_a_measurement_cannot_hold_a_backslash_as_influxdb_reads_its_escapes_twice() -> None:
    with pytest.raises(ValueError, match="backslash"):
        encode_point(point(measurement="C:\\m"))


def test_trailing_backslash_becomes_space() -> None:
    p = point(tags=(("t\\", "v\\"),), fields=(("f\\", 1),))
    assert encode_point(p) == f"m,t\\ =v\\  f\\ =1i {T_MS}"


def test_an_odd_run_of_backslashes_before_a_space_ends_in_a_space() -> None:
    # The line's end is found by pairing each backslash with the character after it:
    # `\\\\ ` would have the fields begin at that space.
    p = point(tags=(("k", "a\\ b"), ("x", "a\\\\ b"), ("y\\ z", "1")))
    assert encode_point(p) == f"m,k=a\\ \\ b,x=a\\\\\\ b,y\\ \\ z=1 v=1.5 {T_MS}"


def test_field_keys_keep_only_even_runs_of_backslashes_before_what_they_escape() -> None:
    fields = (("a\\,b", 1), ("c\\\\=d", 2), ("e\\\\", 3), ('g\\"', 4), ("h\\i", 5))
    line = encode_point(point(fields=fields))
    assert line == (f'm a\\ \\,b=1i,c\\\\\\=d=2i,e\\ \\ =3i,g\\ \\"=4i,h\\i=5i {T_MS}')
    assert parse_line(line)[2] == {"a ,b": 1, "c\\\\=d": 2, "e  ": 3, 'g "': 4, "h\\i": 5}


def test_a_measurement_cannot_begin_with_a_hash_which_makes_the_line_a_comment() -> None:
    with pytest.raises(ValueError, match="comment"):
        encode_point(point(measurement="#m"))
    assert encode_point(point(measurement="m#")) == f"m# v=1.5 {T_MS}"


def test_newlines_in_names_become_spaces() -> None:
    p = point(measurement="m\nx", tags=(("t\r\n", "a\nb"),), fields=(("f\n", 1),))
    line = encode_point(p)
    assert line == f"m\\ x,t\\ \\ =a\\ b f\\ =1i {T_MS}"
    assert "\n" not in line


def test_non_ascii_is_kept() -> None:
    p = point(measurement="住户", tags=(("小区", "湖光苑 3号楼"),), fields=(("温度", 1),))
    assert encode_point(p) == f"住户,小区=湖光苑\\ 3号楼 温度=1i {T_MS}"


def test_cached_series_give_same_text() -> None:
    tags = (("device_id", "d-1"), ("community", "c"))
    first = encode_point(point(tags=tags))
    again = encode_point(point(tags=(("device_id", "d-1"), ("community", "c"))))
    assert first == again == f"m,community=c,device_id=d-1 v=1.5 {T_MS}"


def test_encode_points_keeps_order() -> None:
    lines = encode_points([point((("v", i),)) for i in range(3)])
    assert lines == [f"m v={i}i {T_MS}" for i in range(3)]


def test_negative_time() -> None:
    p = Point(measurement="m", tags=(), fields=(("v", 1),), time_ms=-5)
    assert encode_point(p) == "m v=1i -5"


@pytest.mark.parametrize(
    "tags, fields",
    [
        ((("device_id", "sd-1"), ("community", "hgy")), (("temperature_c", 21.5), ("alarm", True))),
        ((("device_id", "C:\\dir\\,x y=z"), ("community", "a,b")), (("n", -3), ("s", 'he said "hi" \\'))),
        ((("port", "2"),), (("note", "two words, one=sign\nand a newline"), ("ok", False))),
    ],
)  # fmt: skip
def test_parse_line_reads_back_what_encode_point_wrote(
    tags: tuple[tuple[str, str], ...], fields: tuple[tuple[str, FieldValue], ...]
) -> None:
    line = encode_point(point(fields=fields, tags=tags, measurement="m x,y"))
    assert parse_line(line) == ("m x,y", dict(tags), dict(fields), T_MS)


@pytest.mark.parametrize("line", ["m", "m v=1", "m,t v=1 x", "m,t v 1"])
def test_parse_line_refuses_what_is_not_a_line(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)


# A profile's fields, with names line protocol must escape, and a % that a format
# string would take for its own.
DECLARED = {
    "temperature_c": "float",
    "battery_pct": "int",
    "alarm": "bool",
    "note": "string",
    "a b,c=d": "float",
    "load_%": "int",
    "名称": "string",
}


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature_c": 21.5, "battery_pct": 80, "alarm": False, "note": "ok"},
        # Optional fields absent, and present in another order.
        {"alarm": True},
        {"battery_pct": 3, "temperature_c": -0.0},
        {"note": 'say "hi" \\ there\nnow', "名称": "东区 3号楼", "a b,c=d": 1e-7},
        {"load_%": -(2**63), "temperature_c": 1e300},
        {"load_%": 2**63 - 1},
        # Values of another type than declared are written as what they are.
        {"temperature_c": 20, "battery_pct": 80.0, "alarm": 1, "note": True},
        {"battery_pct": True, "temperature_c": False},
        # A key not declared.
        {"temperature_c": 21.5, "humidity_pct": 40},
    ],
)
def test_a_declared_field_set_encodes_as_encode_fields_does(fields: dict[str, FieldValue]) -> None:
    encoder = FieldSetEncoder(DECLARED)
    # Twice: the first time compiles the set of keys, the second uses what it compiled.
    assert encoder.encode(fields) == encode_fields(fields.items())
    assert encoder.encode(fields) == encode_fields(fields.items())


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature_c": math.nan},
        {"battery_pct": 80, "temperature_c": -math.inf},
        {"load_%": 2**63},
        {"battery_pct": -(2**63) - 1},
        {},
    ],
)
def test_a_declared_field_set_refuses_what_encode_fields_refuses(
    fields: dict[str, FieldValue],
) -> None:
    with pytest.raises(ValueError) as expected:
        encode_fields(fields.items())
    with pytest.raises(ValueError) as refused:
        FieldSetEncoder(DECLARED).encode(fields)
    assert str(refused.value) == str(expected.value)


def test_a_field_set_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown field types \\['decimal'\\]"):
        FieldSetEncoder({"price": "decimal"})


@settings(max_examples=300, deadline=None)
@given(
    measurement=MEASUREMENTS,
    tags=st.lists(
        st.tuples(HOSTILE_TEXT, HOSTILE_TEXT), max_size=3, unique_by=lambda t: as_stored_name(t[0])
    ),
    fields=st.lists(
        st.tuples(HOSTILE_TEXT, st.text(max_size=12) | st.integers(-5, 5) | st.booleans()),
        min_size=1,
        max_size=3,
        unique_by=lambda f: as_stored_field_key(f[0]),
    ),
)
def test_parse_line_reads_any_line_as_influxdb_stores_it(
    measurement: str, tags: list[tuple[str, str]], fields: list[tuple[str, FieldValue]]
) -> None:
    # What the readings API shows of a line still in the outbox is what InfluxDB will
    # show once it is written (tests.stored_text, checked against a real InfluxDB).
    line = encode_point(point(tuple(fields), tuple(tags), measurement))
    assert parse_line(line) == (
        as_stored_measurement(measurement),
        {as_stored_name(key): as_stored_name(value) for key, value in tags},
        {as_stored_field_key(key): value for key, value in fields},
        T_MS,
    )
