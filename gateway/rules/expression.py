"""Rule conditions: a small expression language compiled once into Python closures.

    alarm == true or event == 'alarm'
    water_level_cm > 0.8 * device.well_depth_cm
    distance_m(lat, lon, device.home_lat, device.home_lon) > device.safe_radius_m
    heart_rate_bpm > coalesce(device.max_heart_rate_bpm, 150)

Names are the record's fields, `event` (the event kind, or none for a reading),
`port`, and `device.<attribute>` from the registry. Logic is three-valued: a name the
record does not carry is unknown, and an unknown condition changes no alert state,
so a telemetry rule ignores events and the other way round.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from math import asin, cos, radians, sin, sqrt
from typing import Any

# Evaluated against a scope; returns the value, or raises Unknown. This is the reference
# semantics; the engine's generated evaluators (evaluator.py) must agree with it.
Evaluator = Callable[[Mapping[str, Any]], Any]


class Unknown(Exception):
    """A name the record does not carry."""


class ExpressionError(ValueError):
    pass


# Operators as Python source, for the generated evaluators.
COMPARE_SOURCE: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
ARITHMETIC_SOURCE: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
CONSTANTS = {"true": True, "false": False, "none": None}


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine)."""
    phi1, phi2 = radians(lat1), radians(lat2)
    dphi, dlambda = phi2 - phi1, radians(lon2 - lon1)
    a = sin(dphi / 2) ** 2 + cos(phi1) * cos(phi2) * sin(dlambda / 2) ** 2
    return 2 * 6_371_000.0 * asin(sqrt(a))


FUNCTIONS: dict[str, Callable[..., Any]] = {"distance_m": distance_m, "abs": abs}
# How many arguments each takes: a call given other would fail at every record, and its
# rule never fire.
_ARITY = {"distance_m": 4, "abs": 1}
_ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def compile_condition(text: str) -> Evaluator:
    """Compile `text`; raises ExpressionError saying what is wrong."""
    return _compile(parse_condition(text))


def parse_condition(text: str) -> ast.expr:
    """The syntax tree of `text`, checked to hold only what a condition may use; raises
    ExpressionError saying what is wrong. Generated evaluators are built from this tree,
    never from the text."""
    try:
        tree = ast.parse(text, mode="eval")
        # Compiling walks every node and refuses anything it does not know.
        _compile(tree.body)
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg} in {text!r}") from exc
    except (RecursionError, MemoryError) as exc:
        raise ExpressionError("nested too deeply: write it as several shorter terms") from exc
    for node in ast.walk(tree):
        _check_at_load(node)
    return tree.body


# How much of a condition a message quotes.
SHOWN_MAX_CHARS = 120


def quoted(node: ast.AST) -> str:
    """A part of a condition, quoted in a message: cut short, and never deeper than its
    compile went (unparsing recurses further)."""
    try:
        text = ast.unparse(node)
    except RecursionError:
        return "a long part of the condition"
    if len(text) > SHOWN_MAX_CHARS:
        text = text[: SHOWN_MAX_CHARS - 1] + "…"
    return repr(text)


def _check_at_load(node: ast.AST) -> None:
    """What would fail at every record, refused when the rule loads instead."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        wanted = _ARITY.get(node.func.id)
        if wanted is not None and len(node.args) != wanted:
            raise ExpressionError(
                f"{quoted(node)}: {node.func.id} takes {wanted} argument(s), not {len(node.args)}"
            )
    if isinstance(node, ast.BoolOp | ast.UnaryOp) and isinstance(
        node.op, ast.And | ast.Or | ast.Not
    ):
        operands = node.values if isinstance(node, ast.BoolOp) else [node.operand]
        for operand in operands:
            if isinstance(operand, ast.Constant) and not isinstance(operand.value, bool):
                # `event == 'sos' or 'fall'` is always true: a text is no condition.
                raise ExpressionError(
                    f"{quoted(node)}: {ast.unparse(operand)} is no condition; "
                    f"compare with it, as in event in ('sos', 'fall')"
                )
    if isinstance(node, ast.Compare):
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn) and not isinstance(right, ast.Tuple | ast.List):
                # ('displaced') is a text, whose `in` finds parts of it: '' is in every one.
                raise ExpressionError(
                    f"{quoted(node)}: `in` takes a list of values, such as "
                    "('displaced',) or ('sos', 'fall')"
                )
    if isinstance(node, ast.Compare) and any(isinstance(op, _ORDERING) for op in node.ops):
        for operand in (node.left, *node.comparators):
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                raise ExpressionError(
                    f"{quoted(node)} orders by the text {operand.value!r}: write a "
                    "number without quotes"
                )


def names_in(text: str) -> set[str]:
    """The record names an expression reads (not `device.*`, not constants)."""
    tree = ast.parse(text, mode="eval")
    return {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name)
        and node.id not in CONSTANTS
        and node.id not in FUNCTIONS
        and node.id not in ("device", "coalesce")
    }


def device_attributes_in(text: str) -> set[str]:
    """The registry attributes an expression reads (`device.<name>`)."""
    tree = ast.parse(text, mode="eval")
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "device"
    }


def _compile(node: ast.expr) -> Evaluator:
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v) for v in node.values]
        return _all(parts) if isinstance(node.op, ast.And) else _any(parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand)
        return lambda scope: not inner(scope)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _compile(node.operand)
        return lambda scope: -inner(scope)
    if isinstance(node, ast.Compare):
        return _comparison(node)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        op = _ARITHMETIC[type(node.op)]
        left, right = _compile(node.left), _compile(node.right)
        return lambda scope: op(left(scope), right(scope))
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
        value = node.value
        return lambda scope: value
    if isinstance(node, ast.Tuple | ast.List):
        items = [_compile(e) for e in node.elts]
        return lambda scope: tuple(item(scope) for item in items)
    if isinstance(node, ast.Name):
        return _name(node.id)
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "device"
    ):
        return _name(f"device.{node.attr}")
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "coalesce"
        and not node.keywords
    ):
        return _coalesce([_compile(a) for a in node.args])
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FUNCTIONS
        and not node.keywords
    ):
        function = FUNCTIONS[node.func.id]
        args = [_compile(a) for a in node.args]
        return lambda scope: function(*(a(scope) for a in args))
    raise ExpressionError(f"{quoted(node)} is not allowed in a condition")


def _coalesce(options: list[Evaluator]) -> Evaluator:
    """The first known value: a per-device threshold, else the rule's default."""

    def evaluate(scope: Mapping[str, Any]) -> Any:
        for option in options:
            try:
                return option(scope)
            except Unknown:
                continue
        raise Unknown("coalesce")

    return evaluate


def _name(name: str) -> Evaluator:
    if name in CONSTANTS:
        constant = CONSTANTS[name]
        return lambda scope: constant

    def lookup(scope: Mapping[str, Any]) -> Any:
        value = scope.get(name)
        if value is None:
            raise Unknown(name)
        return value

    return lookup


def _comparison(node: ast.Compare) -> Evaluator:
    left = _compile(node.left)
    steps = [
        (_COMPARE[type(op)], _compile(c))
        for op, c in zip(node.ops, node.comparators, strict=True)
        if type(op) in _COMPARE
    ]
    if len(steps) != len(node.ops):
        raise ExpressionError(f"{quoted(node)} uses an unsupported comparison")

    def compare(scope: Mapping[str, Any]) -> bool:
        a = left(scope)
        for op, right in steps:
            b = right(scope)
            if not op(a, b):
                return False
            a = b
        return True

    return compare


def _all(parts: list[Evaluator]) -> Evaluator:
    def evaluate(scope: Mapping[str, Any]) -> bool:
        unknown = False
        for part in parts:
            try:
                if not part(scope):
                    return False
            except Unknown:
                unknown = True
        if unknown:
            raise Unknown("and")
        return True

    return evaluate


def _any(parts: list[Evaluator]) -> Evaluator:
    def evaluate(scope: Mapping[str, Any]) -> bool:
        unknown = False
        for part in parts:
            try:
                if part(scope):
                    return True
            except Unknown:
                unknown = True
        if unknown:
            raise Unknown("or")
        return False

    return evaluate
