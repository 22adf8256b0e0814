"""Alert rules: YAML files in `alert_rules/`, each rule compiled once when loaded."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import ConfigError
from gateway.rules.evaluator import check_generates
from gateway.rules.expression import (
    Evaluator,
    ExpressionError,
    compile_condition,
    device_attributes_in,
    names_in,
    parse_condition,
    quoted,
)
from gateway.rules.schedule import DailyWindow
from gateway.textfile import parse_yaml, read_text, yaml_files

if TYPE_CHECKING:
    # Imported for its type only: the profiles' module imports the config's, which
    # imports this one.
    from gateway.decode.profile import ProfileSet


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    WARNING = "warning"
    INFO = "info"


class RuleSpec(BaseModel):
    # Durations are finite: one of infinity would never fire, or never clear.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    title: str
    device_types: tuple[str, ...] = Field(min_length=1)
    severity: Severity
    # Fire, SOS, falls, sewer gas, thermal runaway: never muted by a silence.
    life_safety: bool = False
    # condition: one open alert per (rule, device[, port]) while it holds;
    # event: a matching event is an alert; another within `merge_s` of the last, while
    # nobody has taken that alert, joins it (a resident pressing SOS again and again).
    # absence: no message from a device for `after_periods` × its profile's period.
    # inactivity: cumulative `field` not risen for `unchanged_for_s` of active hours while
    # `when` holds (a fall, such as steps reset at midnight, is not activity).
    # correlation: `when` holds for `min_devices` devices at one `place` within `window_s`.
    kind: Literal["condition", "event", "absence", "inactivity", "correlation"] = "condition"
    when: str = "true"
    after_periods: float = Field(2.5, gt=0)
    clear_when: str | None = None
    for_s: float = Field(0.0, ge=0)
    repeat: int = Field(1, ge=1)
    clear_after_s: float = Field(0.0, ge=0)
    merge_s: float = Field(600.0, ge=0)
    per_port: bool = False
    # Local time of day the rule judges in, e.g. "07:00-22:00"; outside it, nothing changes.
    active_hours: str | None = None
    field: str | None = None
    unchanged_for_s: float = Field(0.0, ge=0)
    place: Literal["building", "compound", "area", "community"] = "building"
    min_devices: int = Field(2, ge=2)
    window_s: float = Field(300.0, gt=0)
    # Field -> window in seconds: the condition may then use `<field>_per_min`, the
    # field's change per minute over that window (°C per minute for temperature_c).
    rates: dict[str, Annotated[float, Field(gt=0)]] = {}


@dataclass(frozen=True, slots=True)
class Rule:
    spec: RuleSpec
    # The reference evaluators (closures), and the checked tree the engine generates its
    # evaluators from.
    when: Evaluator
    clear_when: Evaluator | None
    source: str
    when_tree: ast.expr
    window: DailyWindow | None = None
    # The record names its conditions read: a record carrying none of them cannot
    # change the rule's state, so the engine skips the rule for it.
    names: frozenset[str] = frozenset()
    # The registry attributes they read (device.<name>).
    attributes: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.spec.name

    def applies_to(self, device_type: str) -> bool:
        return "*" in self.spec.device_types or device_type in self.spec.device_types


# The settings only some kinds of rule take. One written on a rule of another kind is a
# mistake that would otherwise go unseen: a correlation's min_devices on a rule that
# left out `kind: correlation` fires for every single detector.
_KIND_SETTINGS: dict[str, tuple[str, ...]] = {
    "for_s": ("condition",),
    "repeat": ("condition",),
    "clear_after_s": ("condition",),
    "clear_when": ("condition", "correlation"),
    "merge_s": ("event",),
    "per_port": ("condition", "event"),
    "after_periods": ("absence",),
    "field": ("inactivity",),
    "unchanged_for_s": ("inactivity",),
    "place": ("correlation",),
    "min_devices": ("correlation",),
    "window_s": ("correlation",),
    # An absence rule judges silence, not records, at any hour.
    "when": ("condition", "event", "inactivity", "correlation"),
    "rates": ("condition", "event", "inactivity", "correlation"),
    "active_hours": ("condition", "event", "inactivity", "correlation"),
}


def attributes_read(
    rules: Iterable[Rule], device_types: Iterable[str]
) -> dict[str, frozenset[str]]:
    """Per device type, the registry attributes and thresholds its rules read
    (`device.<name>`)."""
    rules = list(rules)
    return {
        device_type: frozenset().union(*(r.attributes for r in rules if r.applies_to(device_type)))
        for device_type in device_types
    }


def load_rules(folder: Path, profiles: ProfileSet) -> list[Rule]:
    """Every rule of every `*.yaml` and `*.yml` in `folder`, checked against the device profiles; an
    error names the file, rule and field."""
    if not folder.is_dir():
        raise ConfigError(str(folder), "", "alert rule folder not found")
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    sent = _SentByType.of(profiles)
    for path in yaml_files(folder):
        for rule in _load_file(path):
            sent.check(rule, path)
            if rule.name in seen:
                raise ConfigError(
                    str(path), f"rule {rule.name}", f"also defined in {seen[rule.name]}"
                )
            seen[rule.name] = path.name
            _check_rate_windows(rule, rules, path)
            rules.append(rule)
    return rules


def _check_rate_windows(rule: Rule, earlier: Sequence[Rule], path: Path) -> None:
    """A device type's field has one rate window, which every rule reading its rate
    shares: a rule asking for another would change the others' (a slow-heating rule's
    10 minutes would flatten the thermal runaway rule's "5 °C per minute")."""
    for other in earlier:
        types = set(rule.spec.device_types) & set(other.spec.device_types)
        if not types and "*" not in (*rule.spec.device_types, *other.spec.device_types):
            continue
        for field, window_s in rule.spec.rates.items():
            taken_s = other.spec.rates.get(field)
            if taken_s is not None and taken_s != window_s:
                raise ConfigError(
                    str(path),
                    f"rule {rule.name}: rates.{field}",
                    f"{window_s:g} s, where rule {other.name} ({other.source}) reads the "
                    f"rate of {field} over {taken_s:g} s: a field has one window; use "
                    f"{taken_s:g}",
                )


def _load_file(path: Path) -> list[Rule]:
    text = read_text(path)
    data = parse_yaml(path, text)
    items = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError(str(path), "rules", "expected a list of rules under 'rules'")
    rules = []
    for index, item in enumerate(items):
        label = f"rules[{index}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label = f"rule {item['name']}"
        try:
            spec = RuleSpec.model_validate(item)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"])
            raise ConfigError(str(path), f"{label}: {field}", error["msg"]) from exc
        try:
            when_tree = parse_condition(spec.when)
            when = compile_condition(spec.when)
            clear = compile_condition(spec.clear_when) if spec.clear_when else None
            check_generates(when_tree)
        except ExpressionError as exc:
            raise ConfigError(str(path), f"{label}: condition", str(exc)) from exc
        for setting in sorted(spec.model_fields_set & _KIND_SETTINGS.keys()):
            kinds = _KIND_SETTINGS[setting]
            if spec.kind not in kinds:
                raise ConfigError(
                    str(path),
                    f"{label}: {setting}",
                    f"only rules of kind {' or '.join(kinds)} take {setting}; "
                    f"this one is of kind {spec.kind}",
                )
        if spec.kind == "inactivity" and (not spec.field or not spec.unchanged_for_s):
            raise ConfigError(
                str(path), label, "an inactivity rule needs field and unchanged_for_s"
            )
        try:
            window = DailyWindow.parse(spec.active_hours) if spec.active_hours else None
        except ValueError as exc:
            raise ConfigError(str(path), f"{label}: active_hours", str(exc)) from exc
        names = names_in(spec.when) | (names_in(spec.clear_when) if spec.clear_when else set())
        names |= {f"{field}_per_min" for field in spec.rates}
        if spec.field:
            names.add(spec.field)
        attributes = device_attributes_in(spec.when)
        if spec.clear_when:
            attributes |= device_attributes_in(spec.clear_when)
        rules.append(
            Rule(
                spec,
                when,
                clear,
                path.name,
                when_tree,
                window,
                frozenset(names),
                frozenset(attributes),
            )
        )
    return rules


@dataclass(frozen=True, slots=True)
class _SentByType:
    """What the devices of each type send, by their profiles: the names a rule's
    conditions can read, and the kinds of event. A rule reading a name that none of its
    device types sends, or waiting for an event none of them sends, would never fire:
    an SOS rule waiting for 'sso' would leave every SOS unheard, so it is refused."""

    names: dict[str, frozenset[str]]
    events: dict[str, frozenset[str]]
    # The profiles' types of each field, by device type (`event` is text).
    kinds_of: dict[str, dict[str, frozenset[str]]]

    @classmethod
    def of(cls, profiles: ProfileSet) -> _SentByType:
        names: dict[str, set[str]] = {}
        events: dict[str, set[str]] = {}
        kinds_of: dict[str, dict[str, set[str]]] = {}
        for profile in profiles.by_name.values():
            # Every record has `event` ("" for a reading) and `port` (None but for a part).
            known = names.setdefault(profile.device_type, {"event", "port"})
            typed = kinds_of.setdefault(profile.device_type, {"event": {"string"}})
            declared = [profile.telemetry.fields]
            if profile.telemetry.parts is not None:
                declared.append(profile.telemetry.parts.fields)
            kinds = events.setdefault(profile.device_type, set())
            if profile.events is not None:
                declared.append(profile.events.fields)
                kinds.update(profile.events.kinds)
            for fields in declared:
                known.update(fields)
                for field, spec in fields.items():
                    typed.setdefault(field, set()).add(spec.type)
        return cls(
            {t: frozenset(n) for t, n in names.items()},
            {t: frozenset(k) for t, k in events.items()},
            {t: {f: frozenset(k) for f, k in typed.items()} for t, typed in kinds_of.items()},
        )

    def check(self, rule: Rule, path: Path) -> None:
        spec = rule.spec
        label = f"rule {rule.name}"
        unknown = [t for t in spec.device_types if t != "*" and t not in self.names]
        if unknown:
            raise ConfigError(
                str(path),
                f"{label}: device_types",
                f"no device profile is of type {unknown[0]!r}; known: {sorted(self.names)}",
            )
        types = sorted(self.names) if "*" in spec.device_types else list(spec.device_types)
        fields = frozenset().union(*(self.names[t] for t in types)) - {"event", "port"}
        for field in spec.rates:
            if field not in fields:
                raise ConfigError(
                    str(path),
                    f"{label}: rates",
                    f"{field!r} is not a field that {_either(types)} sends; "
                    f"known: {sorted(fields)}",
                )
        readable = fields | {"event", "port"} | {f"{f}_per_min" for f in spec.rates}
        unread = sorted(rule.names - readable)
        if unread:
            name = unread[0]
            raise ConfigError(
                str(path),
                f"{label}: {'field' if name == spec.field else 'condition'}",
                f"{name!r} is not a field that {_either(types)} sends; known: {sorted(fields)}",
            )
        kinds = frozenset().union(*(self.events[t] for t in types))
        trees = [rule.when_tree]
        if spec.clear_when:
            trees.append(parse_condition(spec.clear_when))
        for kind in sorted(set().union(*(_event_kinds_in(tree) for tree in trees))):
            if kind not in kinds:
                raise ConfigError(
                    str(path),
                    f"{label}: condition",
                    f"no event {kind!r} is sent by {_either(types)}; their events: {sorted(kinds)}",
                )
        typed: dict[str, set[str]] = {}
        for device_type in types:
            for field, field_kinds in self.kinds_of[device_type].items():
                typed.setdefault(field, set()).update(field_kinds)
        for tree in trees:
            problem = _mistyped_comparison(tree, typed)
            if problem:
                raise ConfigError(str(path), f"{label}: condition", problem)


# What a constant of a condition can equal, by the profiles' field types. Python's
# `1 == True` makes numbers and yes/no comparable, and a rule relying on it still works.
_COMPARABLE = {
    "string": frozenset({"string"}),
    "bool": frozenset({"bool", "int", "float"}),
    "number": frozenset({"int", "float", "bool"}),
}


def _constant_kind(node: ast.expr) -> str | None:
    """`string`, `bool` or `number` for a constant of a condition, else None."""
    if isinstance(node, ast.Name) and node.id in ("true", "false"):
        return "bool"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return "string"
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return "number"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return "number" if _constant_kind(node.operand) == "number" else None
    return None


def _mistyped_comparison(tree: ast.expr, typed: dict[str, set[str]]) -> str | None:
    """What is wrong with a comparison of a field with a constant it can never equal
    (`alarm == 'true'` on a yes/no field is false at every report, and the fire rule
    would never fire), or None."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        fields = [o.id for o in operands if isinstance(o, ast.Name) and o.id in typed]
        for field in fields:
            for operand in operands:
                items = operand.elts if isinstance(operand, ast.Tuple | ast.List) else [operand]
                for item in items:
                    kind = _constant_kind(item)
                    if kind is not None and not _COMPARABLE[kind] & typed[field]:
                        declared = " or ".join(sorted(typed[field]))
                        return (
                            f"{quoted(node)} compares {field}, a {declared} field, "
                            f"with {ast.unparse(item)}, which it never equals"
                            + (
                                ": write true or false without quotes"
                                if "bool" in typed[field]
                                else ""
                            )
                        )
    return None


def _either(types: list[str]) -> str:
    return types[0] if len(types) == 1 else f"any of {', '.join(types)}"


def _event_kinds_in(tree: ast.expr) -> set[str]:
    """The kinds of event a condition compares `event` with."""
    kinds: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        if not any(isinstance(o, ast.Name) and o.id == "event" for o in operands):
            continue
        for operand in operands:
            items = operand.elts if isinstance(operand, ast.Tuple | ast.List) else [operand]
            kinds.update(
                item.value
                for item in items
                if isinstance(item, ast.Constant) and isinstance(item.value, str) and item.value
            )
    return kinds
