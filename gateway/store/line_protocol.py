"""Points as InfluxDB line protocol, the text both InfluxDB and VictoriaMetrics accept.

Escaping follows what the InfluxDB parser (1.x, and the same parser in 2.x) does,
checked against a real InfluxDB 1.6.7:

- A comma, space or equals sign is escaped by a backslash before it. The parser
  looks back exactly one character, so any other backslash is a literal one and is
  written as it is: `C:\\dir` stays `C:\\dir`, and `a\\,b` is written `a\\\\,b`.
- A backslash at the very end of a name or tag value would escape the separator
  after it, and no escape makes the parser keep it; it becomes a space.
- A raw newline ends the line everywhere except inside a quoted string, and no
  escape brings it back in a name or tag, so there it becomes a space as well.
- Inside a string field value only `"` and `\\` are escaped. The parser has no
  escape for a newline (`\\n` would be stored as a backslash and an `n`), so a
  newline is written raw: InfluxDB keeps the quoted string together and stores the
  newline exactly. The encoded point is then one line of line protocol spread over
  two lines of text; never split a request body on newlines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from gateway.decode.record import FieldValue
from gateway.store.point import Point

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "\n": "\\ ", "\r": "\\ "})
# Tag keys, tag values and field keys.
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\ ", "\r": "\\ "})
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
        series = encode_series(point.measurement, point.tags)
        if len(_series_cache) >= _CACHE_MAX_ENTRIES:
            _series_cache.clear()
        _series_cache[series_id] = series
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


def encode_points(points: Iterable[Point]) -> list[str]:
    """Every point encoded with `encode_point`, in order."""
    return [encode_point(point) for point in points]


def encode_series(measurement: str, tags: Iterable[tuple[str, str]]) -> str:
    """The measurement and tag set of a line, tags sorted."""
    if not measurement:
        raise ValueError("measurement is empty")
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
    prefix = _escape(key, _KEY_ESCAPES) + "="
    if len(_field_prefix_cache) >= _CACHE_MAX_ENTRIES:
        _field_prefix_cache.clear()
    _field_prefix_cache[key] = prefix
    return prefix


def _escape(text: str, table: dict[int, str]) -> str:
    if text[-1] == "\\":
        text = text[:-1] + " "
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
