"""How Grafana 11 reads the generated dashboards, as far as they use it: the unit it
gives a field after a panel's overrides, and a small model of its transformations
(`merge`, `calculateField` in binary and reduceRow modes, `organize`, `filterByValue` with
`isNull`), written from Grafana's source. Any other transformation raises, so a panel
using one extends the model rather than pass by accident.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from gateway.dashboards.catalogue import dashboards

Frame = dict[str, list[Any]]
# What `merge` leaves in a row for a field its frame did not have: JavaScript's
# undefined, NaN in arithmetic (a null from the data source is 0 there).
UNDEFINED = object()

# Grafana's units of time: a count shown in one reads as a duration.
TIME_UNITS = {"ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "dtdhms",
              "dthms", "clockms", "clocks"}  # fmt: skip
DATE_UNITS = {
    "dateTimeAsIso", "dateTimeAsIsoNoDateIfToday", "dateTimeAsUS",
    "dateTimeAsUSNoDateIfToday", "dateTimeAsLocal", "dateTimeAsLocalNoDateIfToday",
    "dateTimeAsSystem", "dateTimeFromNow",
}  # fmt: skip


def find_panel(board: str, title_start: str) -> dict[str, Any]:
    return next(
        p for p in dashboards()[f"{board}.json"]["panels"] if p["title"].startswith(title_start)
    )


def panels_of(board: str) -> Iterator[dict[str, Any]]:
    for p in dashboards()[f"{board}.json"]["panels"]:
        if p["type"] != "row":
            yield p


# -- how Grafana shows a field: its unit, after the panel's overrides ----------------------


def _matches(matcher: dict[str, Any], name: str, display: str, ref_id: str) -> bool:
    kind, option = matcher.get("id"), matcher.get("options")
    if kind == "byName":
        return option in (name, display)
    if kind == "byRegexp":
        pattern = str(option).strip("/")
        return bool(re.search(pattern, name) or re.search(pattern, display))
    if kind == "byFrameRefID":
        return option == ref_id
    return False


def unit_of(p: dict[str, Any], name: str, *, display: str = "", ref_id: str = "A") -> str | None:
    """The unit a panel gives a field: its defaults, then the overrides that match it."""
    config = p.get("fieldConfig", {})
    unit = config.get("defaults", {}).get("unit")
    for override in config.get("overrides", []):
        if _matches(override.get("matcher", {}), name, display or name, ref_id):
            for prop in override.get("properties", []):
                if prop.get("id") == "unit":
                    unit = prop.get("value")
    return None if unit is None else str(unit)


# -- Grafana's transformations, as far as these dashboards use them ------------------------


def _merge(frames: list[Frame]) -> list[Frame]:
    """Grafana's `merge`: rows of the frames merged where the fields every frame has are
    equal; a field a row lacks is left undefined."""
    data = [f for f in frames if f]
    if len(frames) <= 1 or not data:
        return frames
    names: list[str] = []
    for frame in data:
        names += [n for n in frame if n not in names]
    keys = [n for n in names if all(n in frame for frame in data)]
    if not keys:
        return frames
    rows: list[dict[str, Any]] = []
    by_key: dict[str, list[dict[str, Any]]] = {}
    for frame in data:
        length = len(next(iter(frame.values())))
        for i in range(length):
            value = {n: frame[n][i] for n in frame}
            key = "".join(str(value[k]) for k in keys)
            merged = False
            for existing in by_key.get(key, []):
                if all(existing.get(n) in (None, value[n]) for n in value):
                    existing.update(value)
                    merged = True
            if not merged:
                by_key.setdefault(key, []).append(value)
                rows.append(value)
    return [{n: [row.get(n, UNDEFINED) for row in rows] for n in names}]


def _js_number(value: Any) -> float:
    if value is UNDEFINED:
        return math.nan
    return 0.0 if value is None else float(value)


_OPERATORS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else (math.nan if a == 0 or math.isnan(a) else math.inf),
}


def _operand(frame: Frame, value: Any) -> list[Any] | None:
    if isinstance(value, dict):
        name = (value.get("matcher") or {}).get("options")
        fixed = value.get("fixed")
    else:
        name, fixed = value, None
    if name in frame:
        return frame[name]
    try:
        constant = float(str(fixed if fixed is not None else name))
    except (TypeError, ValueError):
        return None
    return [constant] * len(next(iter(frame.values()), []))


_REDUCERS: dict[str, Callable[[list[Any]], Any]] = {
    "sum": sum,
    "max": lambda v: max(v) if v else None,
    "min": lambda v: min(v) if v else None,
    "mean": lambda v: sum(v) / len(v) if v else None,
    "last": lambda v: v[-1] if v else None,
}


def _reduce_row(frame: Frame, reduce: dict[str, Any]) -> list[Any]:
    include = reduce.get("include")
    names = [
        n for n, values in frame.items()
        if n != "Time" and (n in include if include else _numeric(values))
    ]  # fmt: skip
    null_as_zero = reduce.get("nullValueMode") == "null as zero"
    length = len(next(iter(frame.values()), []))
    values = []
    for i in range(length):
        row = [frame[n][i] for n in names]
        row = [0.0 if v in (None, UNDEFINED) and null_as_zero else v for v in row]
        row = [v for v in row if v not in (None, UNDEFINED)]
        values.append(_REDUCERS[reduce.get("reducer", "sum")](row))
    return values


def _calculate(frame: Frame, options: dict[str, Any]) -> Frame:
    mode = options.get("mode")
    if mode == "reduceRow":
        reduce = options.get("reduce", {})
        values = _reduce_row(frame, reduce)
        name = options.get("alias") or reduce.get("reducer", "sum")
    elif mode == "binary":
        binary = options["binary"]
        left, right = _operand(frame, binary["left"]), _operand(frame, binary["right"])
        if left is None or right is None:
            # Grafana leaves the frame as it is when an operand is not found.
            return frame
        operation = _OPERATORS[binary["operator"]]
        values = [operation(_js_number(a), _js_number(b)) for a, b in zip(left, right, strict=True)]
        name = options.get("alias") or f"{binary['left']} {binary['operator']} {binary['right']}"
    else:
        raise NotImplementedError(f"calculateField mode {mode!r}")
    if options.get("replaceFields"):
        kept = {"Time": frame["Time"]} if "Time" in frame else {}
        return {**kept, name: values}
    return {**frame, name: values}


def _organize(frame: Frame, options: dict[str, Any]) -> Frame:
    excluded = {n for n, out in options.get("excludeByName", {}).items() if out}
    renamed = options.get("renameByName", {})
    return {renamed.get(n) or n: v for n, v in frame.items() if n not in excluded}


def _filter_by_value(frame: Frame, options: dict[str, Any]) -> Frame:
    filters = options["filters"]
    for f in filters:
        if f["config"]["id"] != "isNull":
            raise NotImplementedError(f"filterByValue {f['config']['id']!r}")
    length = len(next(iter(frame.values()), []))
    keep = []
    for i in range(length):
        hits = [frame.get(f["fieldName"], [None] * length)[i] is None for f in filters]
        hit = any(hits) if options.get("match") == "any" else all(hits)
        keep.append(not hit if options.get("type") == "exclude" else hit)
    return {n: [v for v, k in zip(values, keep, strict=True) if k] for n, values in frame.items()}


def transformed(frames: list[Frame], transformations: list[dict[str, Any]]) -> list[Frame]:
    for step in transformations:
        kind, options = step["id"], step.get("options", {})
        if kind == "merge":
            frames = _merge(frames)
        elif kind == "calculateField":
            frames = [_calculate(f, options) if f else f for f in frames]
        elif kind == "organize":
            frames = [_organize(f, options) for f in frames]
        elif kind == "filterByValue":
            frames = [_filter_by_value(f, options) for f in frames]
        else:
            raise NotImplementedError(f"transformation {kind!r}")
    return frames


def _numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None and v is not UNDEFINED]
    return bool(present) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in present
    )


def numeric_fields(frames: list[Frame]) -> dict[str, list[Any]]:
    """The fields a bar gauge or stat draws by default: numbers, not the time."""
    shown: dict[str, list[Any]] = {}
    for frame in frames:
        for name, values in frame.items():
            if name != "Time" and _numeric(values):
                shown.setdefault(name, []).extend(values)
    return shown
