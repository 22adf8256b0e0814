"""Points as InfluxDB line protocol, the text both InfluxDB and VictoriaMetrics accept.

Escaping follows what the InfluxDB parser (1.x, and the same parser in 2.x) does,
checked against a real InfluxDB 1.6.7:

- A comma, space or equals sign is escaped by a backslash before it. In the tags the
  parser looks back exactly one character, so any other backslash is a literal one
  and is written as it is: `C:\\dir` stays `C:\\dir`, and `a\\,b` is written
  `a\\\\,b`.
- InfluxDB reads the escapes of a measurement twice over, so that `a\\\\,b` is stored
  as `a,b`: a measurement cannot hold a backslash.
- A raw newline ends the line everywhere except inside a quoted string, and no
  escape brings it back in a name or key, so there it becomes a space.
- A backslash at the very end of a tag key or value would escape the separator
  after it, and no escape makes the parser keep it; it becomes a space.
- Before the parser reads the parts of a line it finds where the line ends, and to
  do so takes a backslash and the character after it as a pair throughout, and the
  fields as beginning at the first space not so paired. An odd run of backslashes
  before a space in a tag would have it find the fields too early, and a newline in
  a string field then end the line: the last backslash of such a run becomes a space.
- Field keys are read by both rules: the search above pairs a backslash with the
  character after it, the key ends at the first `=` with no backslash just before it,
  and `\\,`, `\\=`, `\\ ` and `\\"` are then read as the character alone, any other
  backslash kept. So a key, too, cannot end with a backslash (it becomes a space),
  and of an odd run of backslashes before one of those characters the last becomes a
  space. A double quote is escaped as well, as a backslash before it would otherwise
  be lost.
- A line that begins with `#` is a comment, so a measurement cannot begin with one.
  The parser skips tabs and NULs at the start of a line and of its fields: at the
  start of a measurement or field key such a character becomes a space.
- VictoriaMetrics reads a doubled backslash in a tag as one, which InfluxDB does not:
  of a tag that holds a backslash right before a comma, space or equals sign, the two
  keep different values, and no text gives both the same. The gateway's tags (ids,
  communities, the registry's place names) hold none in practice.
- Inside a string field value only `"` and `\\` are escaped. The parser has no
  escape for a newline (`\\n` would be stored as a backslash and an `n`), so a
  newline is written raw: InfluxDB keeps the quoted string together and stores the
  newline exactly. The encoded point is then one line of line protocol spread over
  two lines of text; never split a request body on newlines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.cache import remember
from gateway.decode.record import FieldValue
from gateway.store.point import Point

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "\n": "\\ ", "\r": "\\ "})
# Tag keys and tag values.
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\ ", "\r": "\\ "})
_FIELD_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", '"': '\\"'})
# The last backslash of an odd run before a space, in a tag; and before a character a
# field key escapes.
_ODD_BACKSLASHES_IN_NAME = re.compile(r"(?<!\\)((?:\\\\)*)\\(?= )")
_ODD_BACKSLASHES_IN_FIELD_KEY = re.compile(r'(?<!\\)((?:\\\\)*)\\(?=[,= "])')
# What the parser skips before a line's measurement and before its first field.
_SKIPPED_AT_START = "\t\0"
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})

# Series keys and field keys repeat for every point of a device; caching their escaped
# form skips sorting and escaping on the hot path. Cleared when full so that a storm of
# new device ids cannot grow memory without bound.
_CACHE_MAX_ENTRIES = 65_536
_series_cache: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
# Field key -> escaped key followed by "=".
_field_prefix_cache: dict[str, str] = {}


def encode_point(point: Point) -> str:
    """One point as one line of line protocol, time in milliseconds, no trailing newline.

    Raises ValueError for a point that line protocol cannot carry: no fields, an
    empty measurement or key, NaN or infinity, an integer outside int64.
    """
    series_id = (point.measurement, point.tags)
    series = _series_cache.get(series_id)
    if series is None:
        series = remember(
            _series_cache, series_id, encode_series(point.measurement, point.tags),
            _CACHE_MAX_ENTRIES,
        )  # fmt: skip
    return f"{series} {encode_fields(point.fields)} {point.time_ms}"


def encode_fields(fields: Iterable[tuple[str, FieldValue]]) -> str:
    """The field set of a line: `key=value` pairs joined by commas."""
    encoded = []
    for key, value in fields:
        prefix = _field_prefix_cache.get(key)
        if prefix is None:
            prefix = _field_prefix(key)
        # Exact type checks first: they are the common case and cheaper than isinstance.
        if type(value) is float:
            # Subtraction is NaN for NaN and both infinities: one test instead of two.
            if value - value != 0.0:
                raise ValueError(f"field {key!r}: {value!r} cannot be stored")
            # repr is the shortest text that parses back to the same float.
            encoded.append(prefix + repr(value))
        elif type(value) is int and _INT64_MIN <= value <= _INT64_MAX:
            encoded.append(f"{prefix}{value}i")
        elif type(value) is bool:
            encoded.append(prefix + ("true" if value else "false"))
        elif type(value) is str:
            encoded.append(prefix + '"' + value.translate(_STRING_ESCAPES) + '"')
        else:
            encoded.append(prefix + _field_value(key, value))
    if not encoded:
        raise ValueError("a point has no fields")
    return ",".join(encoded)


class FieldSetEncoder:
    """Encodes field sets whose keys have types known beforehand, as a device profile
    declares them, in the same text as `encode_fields`.

    For each set of keys met, in its order, code is generated once in which the keys'
    text and the values' formats are constants: a value of the declared type is
    formatted without a lookup or a type dispatch. A value of another type, or a key
    not declared, takes `encode_fields`.
    """

    def __init__(self, types: Mapping[str, str]) -> None:
        """`types`: each key's type, one of `int`, `float`, `bool` and `string`."""
        unknown = {t for t in types.values() if t not in _VALUE_FORMATS}
        if unknown:
            raise ValueError(f"unknown field types {sorted(unknown)}")
        self._types = dict(types)
        self._by_keys: dict[tuple[str, ...], Callable[[Mapping[str, FieldValue]], str]] = {}

    def encode(self, fields: Mapping[str, FieldValue]) -> str:
        keys = tuple(fields)
        encode = self._by_keys.get(keys)
        if encode is None:
            encode = remember(self._by_keys, keys, self._compile(keys), _SHAPES_MAX_ENTRIES)
        return encode(fields)

    def _compile(self, keys: tuple[str, ...]) -> Callable[[Mapping[str, FieldValue]], str]:
        if not keys or any(key not in self._types for key in keys):
            return _encode_items
        tests: list[str] = []
        formats: list[str] = []
        values: list[str] = []
        for index, key in enumerate(keys):
            test, value_format, value = _VALUE_FORMATS[self._types[key]]
            name = f"value_{index}"
            tests.append(test.format(name))
            formats.append(_field_prefix(key).replace("%", "%%") + value_format)
            values.append(value.format(name))
        source = "\n".join(
            [
                "def encode(fields):",
                f"    {', '.join(f'value_{i}' for i in range(len(keys)))}, = fields.values()",
                f"    if {' and '.join(tests)}:",
                f"        return {','.join(formats)!r} % ({', '.join(values)},)",
                "    return encode_items(fields)",
            ]
        )
        namespace: dict[str, Any] = {
            "encode_items": _encode_items,
            "STRING_ESCAPES": _STRING_ESCAPES,
        }
        exec(compile(source, "<field set>", "exec"), namespace)
        encode: Callable[[Mapping[str, FieldValue]], str] = namespace["encode"]
        return encode


# Per declared type: the test that a value has it (and can be stored), its format, and
# what is formatted.
_VALUE_FORMATS = {
    "float": ("type({0}) is float and {0} - {0} == 0.0", "%r", "{0}"),
    "int": (f"type({{0}}) is int and {_INT64_MIN} <= {{0}} <= {_INT64_MAX}", "%di", "{0}"),
    "bool": ("type({0}) is bool", "%s", "('true' if {0} else 'false')"),
    "string": ("type({0}) is str", '"%s"', "{0}.translate(STRING_ESCAPES)"),
}
# Sets of keys compiled per encoder, at most: a profile's optional fields make a few.
_SHAPES_MAX_ENTRIES = 1024


def _encode_items(fields: Mapping[str, FieldValue]) -> str:
    return encode_fields(fields.items())


def encode_points(points: Iterable[Point]) -> list[str]:
    """Every point encoded with `encode_point`, in order."""
    return [encode_point(point) for point in points]


def encode_series(measurement: str, tags: Iterable[tuple[str, str]]) -> str:
    """The measurement and tag set of a line, tags sorted."""
    if not measurement:
        raise ValueError("measurement is empty")
    if measurement[0] == "#":
        raise ValueError(f"measurement {measurement!r} begins with #, which makes a comment")
    if "\\" in measurement:
        raise ValueError(f"measurement {measurement!r} holds a backslash")
    if measurement[0] in _SKIPPED_AT_START:
        measurement = " " + measurement[1:]
    parts = [_escape(measurement, _MEASUREMENT_ESCAPES)]
    # InfluxDB sorts tags itself; sending them sorted spares it that work.
    for key, value in sorted(tags):
        if not key:
            raise ValueError(f"empty tag key in measurement {measurement!r}")
        if not value:
            # Line protocol has no empty tag value; an absent tag reads back the same.
            continue
        parts.append(_escape(key, _KEY_ESCAPES) + "=" + _escape(value, _KEY_ESCAPES))
    return ",".join(parts)


def _field_prefix(key: str) -> str:
    if not key:
        raise ValueError("empty field key")
    text = key.replace("\n", " ").replace("\r", " ")
    if text[0] in _SKIPPED_AT_START:
        text = " " + text[1:]
    if "\\" in text:
        if text[-1] == "\\":
            text = text[:-1] + " "
        text = _ODD_BACKSLASHES_IN_FIELD_KEY.sub(r"\1 ", text)
    prefix = text.translate(_FIELD_KEY_ESCAPES) + "="
    return remember(_field_prefix_cache, key, prefix, _CACHE_MAX_ENTRIES)


def _escape(text: str, table: dict[int, str]) -> str:
    """A measurement (which holds no backslash), tag key or tag value."""
    if "\\" in text:
        text = text.replace("\n", " ").replace("\r", " ")
        if text[-1] == "\\":
            text = text[:-1] + " "
        text = _ODD_BACKSLASHES_IN_NAME.sub(r"\1 ", text)
    return text.translate(table)


def _field_value(key: str, value: FieldValue) -> str:
    """The slow path: bools, integers out of range, subclasses (IntEnum, StrEnum...)."""
    # bool before int, as bool is an int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _int(key, int(value))
    if isinstance(value, float):
        return _float(key, float(value))
    if isinstance(value, str):
        return '"' + str(value).translate(_STRING_ESCAPES) + '"'
    raise ValueError(f"field {key!r}: unsupported type {type(value).__name__}")


def _float(key: str, value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"field {key!r}: {value!r} cannot be stored")
    # repr is the shortest text that parses back to the same float.
    return repr(value)


def _int(key: str, value: int) -> str:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"field {key!r}: {value} is outside the int64 range")
    return f"{value}i"


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
    """A line as `encode_point` writes it, read back: measurement, tags, fields, time in
    milliseconds. Raises ValueError for anything else."""
    series, rest = _split_unescaped(line, " ", quotes=False)
    if rest is None:
        raise ValueError("no fields")
    field_text, time_text = _split_last_space(rest)
    parts = _split_all(series, ",")
    measurement = _unescape(parts[0])
    tags: dict[str, str] = {}
    for part in parts[1:]:
        key, value = _split_unescaped(part, "=", quotes=False)
        if value is None:
            raise ValueError(f"tag without a value: {part!r}")
        tags[_unescape(key)] = _unescape(value)
    fields: dict[str, FieldValue] = {}
    for part in _split_all(field_text, ",", quotes=True):
        key, value = _split_unescaped(part, "=", quotes=False)
        if value is None:
            raise ValueError(f"field without a value: {part!r}")
        fields[_unescape(key).replace('\\"', '"')] = _parse_value(value)
    return measurement, tags, fields, int(time_text)


def _split_unescaped(text: str, sep: str, *, quotes: bool) -> tuple[str, str | None]:
    # As the InfluxDB parser reads it: a separator right after a backslash is escaped;
    # among the fields (`quotes`), a backslash and the character after it are a pair,
    # and a double quote not so paired begins or ends a string value.
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and (quoted or quotes):
            index += 2
            continue
        if quoted:
            if char == '"':
                quoted = False
        elif quotes and char == '"':
            quoted = True
        elif char == sep and (index == 0 or text[index - 1] != "\\"):
            return text[:index], text[index + 1 :]
        index += 1
    return text, None


def _split_all(text: str, sep: str, *, quotes: bool = False) -> list[str]:
    parts: list[str] = []
    rest: str | None = text
    while rest is not None:
        part, rest = _split_unescaped(rest, sep, quotes=quotes)
        parts.append(part)
    return parts


def _split_last_space(text: str) -> tuple[str, str]:
    # Fields may hold quoted spaces; the time is what follows the last space.
    fields, _, time_text = text.rpartition(" ")
    if not fields or not time_text.lstrip("-").isdigit():
        raise ValueError("no timestamp")
    return fields, time_text


def _unescape(text: str) -> str:
    for escaped in ("\\,", "\\=", "\\ "):
        text = text.replace(escaped, escaped[1])
    return text


def _parse_value(text: str) -> FieldValue:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text in ("t", "T", "true", "True", "TRUE"):
        return True
    if text in ("f", "F", "false", "False", "FALSE"):
        return False
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)
