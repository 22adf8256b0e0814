"""Generated evaluators: one Python function per record shape that judges every rule the
shape can affect, at the cost of plain Python code rather than a tree of closures.

A shape is a device type, whether the record is an event, whether it has a port, and
the names of its fields. The function is generated from the rules' checked syntax trees
(expression.parse_condition): its source holds only identifiers made here and Python
operators from a fixed table; every name, string and number from a rule file is passed
in as a value, never written into the source.

The semantics are those of expression.py: a name the record does not carry is
unknown; an unknown operand makes a comparison, arithmetic, a function call or a tuple
unknown; `and`/`or` are three-valued and stop at the first deciding operand;
`coalesce` takes the first known value. Operands are evaluated in the same order, so a
condition raises where the reference would. A rule is judged as True, False or None
(unknown), and handed to its action when it can change something.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.decode.record import Event, Reading
from gateway.rules.expression import (
    ARITHMETIC_SOURCE,
    COMPARE_SOURCE,
    CONSTANTS,
    FUNCTIONS,
    ExpressionError,
)

# (device_type, record class, has no port, field names in order)
Shape = tuple[str, type, bool, tuple[str, ...]]
# (record, the rules with a track for its device or None, changes to append to)
Handler = Callable[[Reading | Event, Mapping[str, int] | None, list[Any]], None]
# A rule's action: (record, holds, rates) -> an alert change or None.
Action = Callable[[Reading | Event, bool | None, dict[str, float]], Any]
# Told of a condition, or an action, that raised: (rule name, record, exception).
Fault = Callable[[str, Reading | Event, Exception], None]

# The value of a coalesce() that no option made known (None can be a known value there).
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class Judged:
    """A rule to judge in a generated evaluator."""

    name: str
    when: ast.expr
    action: Action
    # When the action is called: "true" (holds); "tracked" (holds, or the rule has a
    # track for the device: what a false or unknown condition can change is a track);
    # "known_tracked" (as "tracked", and never when unknown); "always" (every record that
    # has a name the rule reads).
    call_when: str
    # Active hours: outside them the rule changes nothing.
    in_window: Callable[[int], bool] | None = None


@dataclass(frozen=True, slots=True)
class _Operand:
    # Source of the value (a local or a namespace name); "" when statically unknown.
    source: str
    # Source that is true when the value is unknown; "" when it is always known.
    unknown: str = ""
    # The value, when known while generating: (value,).
    constant: tuple[object, ...] = ()
    # The value is True or False (or None when unknown): a comparison or logic.
    boolean: bool = False

    @property
    def never_known(self) -> bool:
        return not self.source


_NEVER = _Operand("")
# Nodes whose value is loaded before any condition is evaluated: no code of their own.
_LOADED = (ast.Name, ast.Constant, ast.Attribute)


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"_UNKNOWN": _UNKNOWN}
        self.depth = 1
        self._count = 0

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def open(self, header: str) -> None:
        """Start a block; `close` ends it."""
        self.emit(header)
        self.depth += 1
        self.emit("pass")

    def close(self, blocks: int | bool = 1) -> None:
        self.depth -= int(blocks)

    def local(self) -> str:
        self._count += 1
        return f"t{self._count}"

    def value(self, value: object) -> str:
        """A namespace name bound to `value`."""
        self._count += 1
        name = f"k{self._count}"
        self.namespace[name] = value
        return name


class _Generator:
    """Writes the statements computing one condition; blocks nest only as deep as the
    condition does, so that a long `or` makes long code, not deep code."""

    def __init__(self, source: _Source, shape: Shape, loaded: dict[str, str]) -> None:
        self.out = source
        self.is_event = issubclass(shape[1], Event)
        # Names loaded at the top of the function: name -> local or namespace name.
        self.loaded = loaded

    def constant(self, value: object) -> _Operand:
        return _Operand(self.out.value(value), constant=(value,), boolean=type(value) is bool)

    def name(self, name: str) -> _Operand:
        if name in CONSTANTS:
            return self.constant(CONSTANTS[name])
        if name == "event" and not self.is_event:
            return self.constant("")  # a reading is known not to be an event
        local = self.loaded.get(name)
        if local is None:
            return _NEVER
        if name == "port":
            return _Operand(local)  # loaded only when the record has one
        return _Operand(local, f"{local} is None")

    def expression(self, node: ast.expr) -> _Operand:
        if isinstance(node, ast.BoolOp):
            return self._bool(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return self._all_known([node.operand], lambda a: f"not {a}", boolean=True)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return self._all_known([node.operand], lambda a: f"-{a}")
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.BinOp):
            operator = ARITHMETIC_SOURCE[type(node.op)]
            return self._all_known([node.left, node.right], lambda a, b: f"{a} {operator} {b}")
        if isinstance(node, ast.Constant):
            return self.constant(node.value)
        if isinstance(node, ast.Tuple | ast.List):
            return self._all_known(list(node.elts), lambda *items: f"({', '.join(items)},)")
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return self.name(f"device.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "coalesce":
                return self._coalesce(node.args)
            function = self.out.value(FUNCTIONS[node.func.id])
            return self._all_known(list(node.args), lambda *args: f"{function}({', '.join(args)})")
        # parse_condition refused anything else.
        raise ValueError(f"unexpected node {type(node).__name__}")

    def _all_known(
        self, nodes: list[ast.expr], combine: Callable[..., str], *, boolean: bool = False
    ) -> _Operand:
        """Operands in order, each only while the ones before are known; the value
        (never None) when all are, else None. Worked out here when all are constants
        and it raises nothing."""
        out = self.out
        result = out.local()
        sources: list[str] = []
        unknowns: list[str] = []
        constant = True
        blocks = 0
        for index, node in enumerate(nodes):
            if index and unknowns and not isinstance(node, _LOADED):
                # This operand has code of its own: run it only if those before are known.
                if not blocks:
                    out.emit(f"{result} = None")
                out.open(f"if not ({' or '.join(unknowns)}):")
                unknowns = []
                blocks += 1
            operand = self.expression(node)
            if operand.never_known:
                if not blocks:
                    out.emit(f"{result} = None")
                out.close(blocks)
                return _NEVER
            sources.append(operand.source)
            constant = constant and bool(operand.constant)
            if operand.unknown:
                unknowns.append(operand.unknown)
        value = combine(*sources)
        if constant:
            try:
                folded = eval(value, dict(out.namespace))
            except Exception:  # it raises at run time, as the reference does
                pass
            else:
                return self.constant(folded)
        if unknowns:
            out.emit(f"{result} = None if {' or '.join(unknowns)} else {value}")
        else:
            out.emit(f"{result} = {value}")
        out.close(blocks)
        return _Operand(result, f"{result} is None", boolean=boolean)

    def _compare(self, node: ast.Compare) -> _Operand:
        """A chain stops at its first false step: later operands are not evaluated."""
        out = self.out
        if len(node.ops) == 1:
            # One step: the right operand only while the left one is known, as for
            # arithmetic.
            operator = COMPARE_SOURCE[type(node.ops[0])]
            return self._all_known(
                [node.left, node.comparators[0]], lambda a, b: f"{a} {operator} {b}", boolean=True
            )
        result, going = out.local(), out.local()
        out.emit(f"{result} = None")
        left = self.expression(node.left)
        if left.never_known:
            return _NEVER
        out.emit(f"{going} = True" if not left.unknown else f"{going} = not ({left.unknown})")
        previous = left.source
        boolean = _Operand(result, f"{result} is None", boolean=True)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            out.open(f"if {going}:")
            right = self.expression(comparator)
            if right.never_known:
                out.emit(f"{going} = False")
                out.close()
                return boolean
            comparison = f"{previous} {COMPARE_SOURCE[type(op)]} {right.source}"
            if right.unknown:
                out.emit(f"{going} = not ({right.unknown})")
                out.open(f"if {going}:")
                self._step(result, going, comparison)
                out.close()
            else:
                self._step(result, going, comparison)
            out.close()
            previous = right.source
        out.emit(f"if {going}:")
        out.emit(f"    {result} = True")
        return boolean

    def _step(self, result: str, going: str, comparison: str) -> None:
        self.out.emit(f"if not ({comparison}):")
        self.out.emit(f"    {result} = False")
        self.out.emit(f"    {going} = False")

    def _bool(self, node: ast.BoolOp) -> _Operand:
        """Three-valued: the first deciding operand decides, and those after it are not
        evaluated; otherwise unknown if any operand was, else the neutral value."""
        out = self.out
        deciding = isinstance(node.op, ast.Or)  # the value that decides
        result, unknown = out.local(), out.local()
        at_run_time: list[_Operand] = []  # operands judged only at run time
        never = False  # some operand so far is unknown whatever the record
        decided = False  # a constant operand decides, once those before it did not
        mark = 0
        for value in node.values:
            guarded = bool(at_run_time)
            if guarded:
                out.open(f"if {result} is None:")
            operand = self.expression(value)
            if operand.never_known:
                if at_run_time:
                    out.emit(f"{unknown} = True")
                never = True
            elif operand.constant:
                if bool(operand.constant[0]) is deciding:
                    if not at_run_time:
                        out.close(guarded)
                        return self.constant(deciding)
                    out.emit(f"{result} = {deciding}")
                    decided = True
            else:
                if not at_run_time:
                    mark = len(out.lines)
                    out.emit(f"{result} = None")
                    out.emit(f"{unknown} = {never}")
                at_run_time.append(operand)
                test = operand.source if deciding else f"not {operand.source}"
                if operand.unknown:
                    out.emit(f"if {operand.unknown}:")
                    out.emit(f"    {unknown} = True")
                    out.emit(f"elif {test}:")
                else:
                    out.emit(f"if {test}:")
                out.emit(f"    {result} = {deciding}")
            out.close(guarded)
            if decided:
                break
        if not at_run_time:
            return _NEVER if never else self.constant(not deciding)
        if len(at_run_time) == 1 and at_run_time[0].boolean and not never and not decided:
            # The others are constants that decide nothing: the one operand is the value.
            del out.lines[mark:]
            return at_run_time[0]
        out.emit(f"if {result} is None and not {unknown}:")
        out.emit(f"    {result} = {not deciding}")
        return _Operand(result, f"{result} is None", boolean=True)

    def _coalesce(self, options: list[ast.expr]) -> _Operand:
        """The first known option; None may be a known value here, hence _UNKNOWN."""
        out = self.out
        result = out.local()
        at_run_time = False
        for option in options:
            guarded = at_run_time
            if guarded:
                out.open(f"if {result} is _UNKNOWN:")
            operand = self.expression(option)
            if not operand.never_known and not at_run_time and not operand.unknown:
                out.close(guarded)
                return operand  # known whatever the record: the options after it never run
            if not operand.never_known:
                if not at_run_time:
                    out.emit(f"{result} = _UNKNOWN")
                    at_run_time = True
                if operand.unknown:
                    out.emit(f"if not ({operand.unknown}):")
                    out.emit(f"    {result} = {operand.source}")
                else:
                    out.emit(f"{result} = {operand.source}")
            out.close(guarded)
            if not operand.never_known and not operand.unknown:
                break
        if not at_run_time:
            return _NEVER
        return _Operand(result, f"{result} is _UNKNOWN")


def names_read(node: ast.expr) -> set[str]:
    """Every name a condition reads, `device.<attribute>` included."""
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id not in CONSTANTS:
            names.add(child.id)
        elif (
            isinstance(child, ast.Attribute)
            and isinstance(child.value, ast.Name)
            and child.value.id == "device"
        ):
            names.add(f"device.{child.attr}")
    return names


def build_handler(
    shape: Shape,
    judged: Sequence[Judged],
    rate_fields: Mapping[str, float],
    *,
    add_rate: Callable[..., float | None],
    registered: Callable[[str, str], Any],
    fault: Fault,
    action_fault: Fault,
    device_has: Callable[[str], bool] = lambda attribute: True,
) -> Handler:
    """The function judging `judged` for records of `shape`, in order, appending what
    their actions return to the list it is given: handler(record, tracked, changes),
    `tracked` holding the names of the rules with a track for the record's device. `registered` gives a
    device's registry entry, whose attributes and thresholds are `device.<name>`;
    `device_has` says whether getattr() can find a name on an entry at all (where it
    cannot, only the thresholds are looked up).

    Every rate field of the device type that the record carries as a number takes its
    sample, once, whether a rule reads the rate or not, as the reference does for any
    record some rule reads; its actions get the rates as a mapping."""
    out = _Source()
    fields = set(shape[3])
    wanted: set[str] = set()
    for rule in judged:
        wanted |= names_read(rule.when)
    loaded: dict[str, str] = {}
    generator = _Generator(out, shape, loaded)
    out.emit("fields = record.fields")
    if any(rule.in_window for rule in judged):
        out.emit("time_ms = record.time_ms")
    if generator.is_event:
        loaded["event"] = "event"
        out.emit("event = record.kind")
    else:
        loaded["event"] = out.value("")
    if not shape[2] and "port" in wanted:
        loaded["port"] = "port"
        out.emit("port = record.port")
    rates: dict[str, str] = {}
    for field, window_s in rate_fields.items():
        if field not in fields:
            continue
        rate = rates[f"{field}_per_min"] = out.local()
        value = out.local()
        out.emit(f"{value} = fields[{out.value(field)}]")
        out.emit(f"if type({value}) is int or type({value}) is float:")
        out.emit(
            f"    {rate} = add_rate(record, {out.value(field)}, {out.value(window_s * 1000)},"
            f" float({value}))"
        )
        out.emit("else:")
        out.emit(f"    {rate} = None")
    # The scope of the reference: record fields over registry attributes, then `event`
    # and `port`, then the rates that are known.
    for name in sorted(wanted - {"event", "port"}):
        if name in rates:
            local = loaded[name] = rates[name]
            if name in fields:  # a field of the same name stands in for an unknown rate
                out.emit(f"if {local} is None:")
                out.emit(f"    {local} = fields[{out.value(name)}]")
        elif name in fields:
            local = loaded[name] = out.local()
            out.emit(f"{local} = fields[{out.value(name)}]")
    attributes = sorted(n for n in wanted if n.startswith("device.") and n not in loaded)
    if attributes:
        out.emit("device = registered(record.device.community, record.device.device_id)")
        for name in attributes:
            loaded[name] = out.local()
            out.emit(f"{loaded[name]} = None")
        out.open("if device is not None:")
        out.emit("thresholds = device.thresholds")
        # A registry threshold of the same name overrides the attribute; most devices
        # have no thresholds.
        out.open("if thresholds:")
        for name in attributes:
            attribute = out.value(name.removeprefix("device."))
            out.emit(f"{loaded[name]} = thresholds.get({attribute})")
            if device_has(name.removeprefix("device.")):
                out.emit(f"if {loaded[name]} is None:")
                out.emit(f"    {loaded[name]} = getattr(device, {attribute}, None)")
        out.close()
        out.open("else:")
        for name in attributes:
            if device_has(name.removeprefix("device.")):
                attribute = out.value(name.removeprefix("device."))
                out.emit(f"{loaded[name]} = getattr(device, {attribute}, None)")
        out.close(2)
    rates_mapping = "{" + ", ".join(f"{out.value(n)}: {v}" for n, v in rates.items()) + "}"
    for rule in judged:
        holds = out.local()
        # A condition can fail at run time on values no check could foresee (a division
        # by a registry attribute of 0, a threshold of the wrong type): the rule is then
        # unknown for this record and the fault reported, and the rules after it are
        # still judged.
        out.open("try:")
        operand = generator.expression(rule.when)
        if operand.never_known:
            out.emit(f"{holds} = None")
        elif operand.boolean:
            out.emit(f"{holds} = {operand.source}")
        elif operand.unknown:
            out.emit(
                f"{holds} = None if {operand.unknown} else (True if {operand.source} else False)"
            )
        else:
            out.emit(f"{holds} = True if {operand.source} else False")
        out.close()
        out.open("except Exception as exc:")
        out.emit(f"{holds} = None")
        out.emit(f"fault({out.value(rule.name)}, record, exc)")
        out.close()
        tracked = f"(tracked is not None and {out.value(rule.name)} in tracked)"
        gate = {
            "true": holds,
            "tracked": f"({holds} or {tracked})",
            "known_tracked": f"({holds} or {tracked}) and {holds} is not None",
            "always": "True",
        }[rule.call_when]
        if rule.in_window is not None:
            gate += f" and {out.value(rule.in_window)}(time_ms)"
        out.open(f"if {gate}:")
        change = out.local()
        # An action failing (a fault of the gateway's) costs only its own rule's change:
        # the rules after it, a fire alarm among them, still judge the record.
        out.open("try:")
        out.emit(f"{change} = {out.value(rule.action)}(record, {holds}, {rates_mapping})")
        out.close()
        out.open("except Exception as exc:")
        out.emit(f"{change} = None")
        out.emit(f"action_fault({out.value(rule.name)}, record, exc)")
        out.close()
        out.emit(f"if {change} is not None:")
        out.emit(f"    changes.append({change})")
        out.close()
    text = "def handle(record, tracked, changes):\n" + "\n".join(out.lines) + "\n"
    namespace = dict(
        out.namespace,
        add_rate=add_rate,
        registered=registered,
        fault=fault,
        action_fault=action_fault,
    )
    exec(compile(text, f"<rules for {shape[0]}>", "exec"), namespace)
    handler: Handler = namespace["handle"]
    return handler


def check_generates(condition: ast.expr) -> None:
    """Raise ExpressionError if no evaluator can be generated for `condition` (nested past
    what Python compiles), so that a rule file says so when it loads."""
    names = tuple(sorted(names_read(condition)))
    try:
        build_handler(
            ("", Reading, False, names),
            [Judged("check", condition, lambda record, holds, rates: None, "true")],
            {},
            add_rate=lambda *args: None,
            registered=lambda community, device_id: None,
            fault=lambda rule, record, exc: None,
            action_fault=lambda rule, record, exc: None,
        )
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise ExpressionError("nested too deeply to be evaluated") from exc
