"""The device registry: where each device is, who wears it, what its thresholds are.

Operators keep it as a CSV sheet (one row a device) or as YAML with the same keys.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from gateway.errors import ConfigError
from gateway.phone import Phone, normalise_phone
from gateway.textfile import parse_yaml, read_text

COLUMNS = (
    "device_id",
    "device_type",
    "community",
    "area",
    "compound",
    "building",
    "unit",
    "lat",
    "lon",
    "imei",
    "well_depth_cm",
    "home_lat",
    "home_lon",
    "safe_radius_m",
    "lives_alone",
    "wearer_name",
    "wearer_phone",
    "emergency_contacts",
    "thresholds",
)


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    phone: str


def _contact(item: Mapping[str, object]) -> Contact:
    """A contact written as a mapping (YAML); its phone may be written as a number."""
    if set(item) != {"name", "phone"} or not all(
        v is not None and str(v).strip() for v in item.values()
    ):
        raise ValueError(f"expected {{name: ..., phone: ...}}, got {dict(item)!r}")
    phone = item["phone"]
    return _checked_contact(
        str(item["name"]).strip(),
        phone if isinstance(phone, int) and not isinstance(phone, bool) else str(phone).strip(),
    )


def _as_contact(item: object) -> object:
    """A contact from a YAML mapping, or one made in code, its phone checked; anything
    else as it is, for pydantic to refuse."""
    if isinstance(item, Mapping):
        return _contact(item)
    if isinstance(item, Contact):
        return _checked_contact(item.name, item.phone)
    return item


def _checked_contact(name: str, phone: str | int) -> Contact:
    """A contact with their phone in E.164, or ValueError naming the contact."""
    try:
        return Contact(name, normalise_phone(phone))
    except ValueError as exc:
        raise ValueError(f"contact {name}: {exc}") from None


# A pydantic dataclass with slots, not a model: a district's 200,000 devices are held
# by each of the gateway's two processes, and a model's dict and set of the fields given
# made the registry three times the size (395 MiB, not 131, with the place names each
# device's own; bench.registry) and its check slower (6.2 s, not 5.0).
@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class RegisteredDevice:
    device_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    device_type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    community: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")]
    area: str | None = None
    compound: str | None = None
    building: str | None = None
    unit: str | None = None
    lat: Annotated[float | None, Field(ge=-90, le=90)] = None
    lon: Annotated[float | None, Field(ge=-180, le=180)] = None
    imei: Annotated[str | None, Field(pattern=r"^[0-9]{15}$")] = None
    well_depth_cm: Annotated[float | None, Field(gt=0, le=10_000)] = None
    home_lat: Annotated[float | None, Field(ge=-90, le=90)] = None
    home_lon: Annotated[float | None, Field(ge=-180, le=180)] = None
    safe_radius_m: Annotated[float | None, Field(gt=0, allow_inf_nan=False)] = None
    lives_alone: bool = False
    wearer_name: str | None = None
    # Phones, however written, are kept in E.164 (gateway.phone).
    wearer_phone: Phone | None = None
    emergency_contacts: tuple[Contact, ...] = ()
    # Per-device rule thresholds, read by rules as device.<name>: "name=value;name=value".
    # Finite: every comparison with NaN is false, and a rule would never fire.
    thresholds: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(
        default_factory=dict
    )

    @field_validator("thresholds", mode="before")
    @classmethod
    def _parse_thresholds(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        parsed: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(";"))):
            name, sep, number = item.partition("=")
            if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name.strip()):
                raise ValueError(f"expected 'name=value;name=value', got {item!r}")
            parsed[name.strip()] = number.strip()
        return parsed

    @field_validator("emergency_contacts", mode="before")
    @classmethod
    def _parse_contacts(cls, value: object) -> object:
        if isinstance(value, str):
            contacts = []
            for item in filter(None, (part.strip() for part in value.split(";"))):
                name, sep, phone = item.partition(":")
                if not sep or not name.strip() or not phone.strip():
                    raise ValueError(f"expected 'name:phone;name:phone', got {item!r}")
                contacts.append(_checked_contact(name.strip(), phone.strip()))
            return tuple(contacts)
        if isinstance(value, list | tuple):
            return tuple(_as_contact(c) for c in value)
        return value

    @property
    def place_tags(self) -> tuple[tuple[str, str], ...]:
        """The grid cell (片区/小区/楼栋) as time-series tags, for dashboards per place."""
        return place_tags(place_of(self))


_DEVICE = TypeAdapter(RegisteredDevice)


@dataclass(frozen=True, slots=True)
class RegistryChanges:
    added: tuple[RegisteredDevice, ...]
    # As they were registered.
    removed: tuple[RegisteredDevice, ...]
    # Each as it was and as it is now.
    changed: tuple[tuple[RegisteredDevice, RegisteredDevice], ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        return f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed"

    def no_longer(self) -> list[RegisteredDevice]:
        """Devices no longer registered as they were: taken out, or now of another type."""
        retyped = [then for then, now in self.changed if then.device_type != now.device_type]
        return [*self.removed, *retyped]

    def newly(self) -> list[RegisteredDevice]:
        """Devices registered as they were not: added, or now of another type."""
        retyped = [now for then, now in self.changed if then.device_type != now.device_type]
        return [*self.added, *retyped]


class Registry:
    """Registered devices, found by (community, device id) or by a vendor IMEI.

    A registry does not change once made (a reload makes a new one, which the stages
    then take in one step): what the API and the routing of alerts ask of it is indexed
    here once, rather than looked for among all its devices, on the event loop, at every
    request or alert."""

    def __init__(self, devices: Iterable[RegisteredDevice] = ()) -> None:
        self._by_id: dict[tuple[str, str], RegisteredDevice] = {}
        self._by_imei: dict[str, RegisteredDevice] = {}
        for device in devices:
            self._by_id[(device.community, device.device_id)] = device
            if device.imei:
                self._by_imei[device.imei] = device
        grouped: dict[str, list[RegisteredDevice]] = {}
        for device in self._by_id.values():
            grouped.setdefault(device.community, []).append(device)
        # Each community's devices in the order the API lists them: by community, then id.
        self._by_community: dict[str, tuple[RegisteredDevice, ...]] = {
            community: tuple(sorted(found, key=_device_id))
            for community, found in sorted(grouped.items())
        }
        self._ordered = tuple(d for found in self._by_community.values() for d in found)
        at_place: dict[Place, list[RegisteredDevice]] = {}
        for device in self._ordered:
            at_place.setdefault(place_of(device), []).append(device)
        self._at_place = {place: tuple(found) for place, found in at_place.items()}
        self._places = frozenset(self._at_place)
        # The places within each area, compound and building, by (community, level, name).
        within: dict[tuple[str, int, str], list[Place]] = {}
        for place in self._places:
            for level in range(1, 4):
                name = place[level]
                if name is not None:
                    within.setdefault((place[0], level, name), []).append(place)
        # In one order every time: whom they lead to is told in it.
        self._within = {
            key: tuple(sorted(found, key=_place_order)) for key, found in within.items()
        }
        # The communities that have an area, compound or building of a name, by (level,
        # name): a district's repeat them (east, building 3).
        named: dict[tuple[int, str], set[str]] = {}
        for community, level, name in self._within:
            named.setdefault((level, name), set()).add(community)
        self._communities_named = {key: frozenset(found) for key, found in named.items()}
        # A name several places of a community share (every compound has its 1号楼) does
        # not tell an alert about one of them which: such a place goes by its path from
        # the area down (`place_id`), indexed as its name is.
        self._place_ids: dict[tuple[str, int, tuple[str | None, ...]], str] = {}
        for (community, level, name), found in list(self._within.items()):
            paths = {place[1 : level + 1] for place in found}
            if len(paths) < 2:
                continue
            for path in paths:
                place_id = PATH_SEPARATOR.join(part for part in path if part)
                if place_id == name:
                    # Registered without the levels above (a row without its area, most
                    # often one of those places entered short): it goes by the name,
                    # which still finds every place of that name.
                    continue
                self._place_ids[(community, level, path)] = place_id
                self._within[(community, level, place_id)] = tuple(
                    place for place in found if place[1 : level + 1] == path
                )
        places_of: dict[str, list[Place]] = {}
        for place in sorted(self._places, key=_place_order):
            places_of.setdefault(place[0], []).append(place)
        self._community_places = {c: tuple(found) for c, found in places_of.items()}

    def __len__(self) -> int:
        return len(self._by_id)

    def changes_from(self, before: Registry) -> RegistryChanges:
        """What a reload changes: devices added, removed and registered otherwise."""
        now, then = self._by_id, before._by_id
        return RegistryChanges(
            added=tuple(now[key] for key in now.keys() - then.keys()),
            removed=tuple(then[key] for key in then.keys() - now.keys()),
            changed=tuple(
                (then[key], device)
                for key, device in now.items()
                if then.get(key, device) != device
            ),
        )

    def get(self, community: str, device_id: str) -> RegisteredDevice | None:
        return self._by_id.get((community, device_id))

    def device_of(self, alert: AlertAbout) -> RegisteredDevice | None:
        """The registered device an alert is about; None for an alert about a place,
        whose name a device may have too (a bracelet called 3 is not building 3)."""
        device = self._by_id.get((alert.community, alert.device_id))
        return device if device is not None and device.device_type == alert.device_type else None

    def by_imei(self, imei: str) -> RegisteredDevice | None:
        return self._by_imei.get(imei)

    def devices(self) -> Iterable[RegisteredDevice]:
        return self._by_id.values()

    def devices_in(self, community: str | None = None) -> Sequence[RegisteredDevice]:
        """The devices of a community, or of all, ordered by community and device id."""
        if community is None:
            return self._ordered
        return self._by_community.get(community, ())

    def devices_at(self, community: str, place_type: str, name: str) -> list[RegisteredDevice]:
        """The devices registered in a place an alert may be about (see `place_id`)."""
        return [
            device
            for place in self.places_within(community, place_type, name)
            for device in self._at_place[place]
        ]

    def places(self) -> frozenset[Place]:
        """Where the devices are: (community, area, compound, building) of each."""
        return self._places

    def places_within(self, community: str, place_type: str, name: str) -> list[Place]:
        """The registered places inside a place that an alert is about (a building on
        fire, by its `place_id`; a whole community)."""
        if place_type == COMMUNITY:
            return list(self._community_places.get(community, ()))
        return list(self._within.get((community, 1 + PLACE_TYPES.index(place_type), name), ()))

    def place_id(self, device: Placed, place_type: str) -> str | None:
        """What an alert about the area, compound or building a device is in calls that
        place: its name, or, where other places of its community have that name too, its
        path from the area down (east·lakeside·3); None if the device is in none."""
        place = place_of(device)
        level = 1 + PLACE_TYPES.index(place_type)
        name = place[level]
        if name is None:
            return None
        return self._place_ids.get((place[0], level, place[1 : level + 1]), name)

    def holds(self, cell: Place) -> bool:
        """Whether a registered place lies in `cell` (see `within`)."""
        named = [(cell[0], level, name) for level, name in enumerate(cell) if name and level]
        if not named:
            return cell[0] in self._by_community
        # The places of its least common name: a building number repeats across the
        # compounds of a community, a compound's name does not.
        candidates = min((self._within.get(key, ()) for key in named), key=len)
        return any(within(cell, place) for place in candidates)

    def communities_named(self, place_type: str, name: str) -> frozenset[str]:
        """The communities with an area, compound or building of this name."""
        return self._communities_named.get((1 + PLACE_TYPES.index(place_type), name), frozenset())

    def names(self, place_type: str) -> list[str]:
        """The names of the registry's areas, compounds or buildings, sorted."""
        level = 1 + PLACE_TYPES.index(place_type)
        return sorted({name for at, name in self._communities_named if at == level})

    def site(self, community: str, device_type: str, device_id: str) -> Site | None:
        """Where an alert is: its device's registered place, unit and position, or the
        place it is about (a building on fire), with the levels above it that all of it
        shares; None for a device not registered."""
        if device_type in ALERT_PLACES:
            return Site(*self.place(community, device_type, device_id))
        device = self.get(community, device_id)
        if device is None:
            return None
        return Site(device.community, device.area, device.compound, device.building,
                    device.unit, device.lat, device.lon)  # fmt: skip

    def place(self, community: str, place_type: str, name: str) -> Place:
        """A place an alert is about (see `place_id`), with the levels above it that all
        of it shares."""
        if place_type == COMMUNITY:
            return (community, None, None, None)
        level = 1 + PLACE_TYPES.index(place_type)
        within = self._within.get((community, level, name), ())
        levels: list[str | None] = [None, None, None]
        levels[level - 1] = name
        # Its own name too: a place known by its path has that of its level.
        for at in range(1, level + 1):
            shared = {p[at] for p in within}
            if len(shared) == 1:
                levels[at - 1] = shared.pop()
        return (community, levels[0], levels[1], levels[2])


def _device_id(device: RegisteredDevice) -> str:
    return device.device_id


def _place_order(place: Place) -> tuple[str, ...]:
    return tuple(part or "" for part in place)


# A device's community, area, compound and building.
Place = tuple[str, str | None, str | None, str | None]


class Placed(Protocol):
    """A registered device, or a grid cell (a roster's, a grid worker's) named as one."""

    @property
    def community(self) -> str: ...
    @property
    def area(self) -> str | None: ...
    @property
    def compound(self) -> str | None: ...
    @property
    def building(self) -> str | None: ...


class AlertAbout(Protocol):
    """What an alert is about: a device, or a place named as one (see ALERT_PLACES)."""

    @property
    def community(self) -> str: ...
    @property
    def device_type(self) -> str: ...
    @property
    def device_id(self) -> str: ...


def place_of(placed: Placed) -> Place:
    return (placed.community, placed.area, placed.compound, placed.building)


def place_tags(place: Place) -> tuple[tuple[str, str], ...]:
    """A place's grid cell (片区/小区/楼栋) as time-series tags, for dashboards per place."""
    return tuple((key, value) for key, value in zip(PLACE_TYPES, place[1:], strict=True) if value)


def within(cell: Place, place: Place) -> bool:
    """Whether `place` lies in `cell`, whose levels left out (None) take any."""
    return all(want is None or want == have for want, have in zip(cell, place, strict=True))


@dataclass(frozen=True, slots=True)
class Site:
    """Where an alert is, as the registry said when it began (see Registry.site): kept
    with the alert, so that a device taken out or moved while its alert is open leaves
    the alert where it was, in its grid cell's view and escalation."""

    community: str
    area: str | None = None
    compound: str | None = None
    building: str | None = None
    unit: str | None = None
    lat: float | None = None
    lon: float | None = None


# The places an alert may be about instead of a device, as they nest.
PLACE_TYPES = ("area", "compound", "building")
COMMUNITY = "community"
# Those and the whole community (rule.place), as an alert's device type.
ALERT_PLACES = (COMMUNITY, *PLACE_TYPES)
# Between the levels of a place's path, where its name alone does not tell it (place_id).
PATH_SEPARATOR = "·"


def registry_for(
    path: Path | None,
    device_types: Collection[str],
    read_by_rules: Mapping[str, Collection[str]] | None = None,
) -> Registry:
    """The registry a config names, its device types checked; none named, an empty one."""
    return load_registry(path, device_types, read_by_rules) if path is not None else Registry()


def reread(
    path: Path | None,
    device_types: Collection[str],
    running: Registry,
    read_by_rules: Mapping[str, Collection[str]] | None = None,
) -> tuple[Registry, RegistryChanges]:
    """The registry a config names now, and how it differs from the running one."""
    registry = registry_for(path, device_types, read_by_rules)
    return registry, registry.changes_from(running)


def load_registry(
    path: Path,
    device_types: Collection[str] | None = None,
    read_by_rules: Mapping[str, Collection[str]] | None = None,
) -> Registry:
    """Read a registry file (.csv, .yaml or .yml); every error names the row and the field.

    With `device_types` (those the device profiles declare), a device of another type is
    an error: every message it sends would be refused as not of its registered type, a
    fire alarm among them. With `read_by_rules` (per device type, the names its alert
    rules read as `device.<name>`), so is a threshold none of them reads: a misspelt
    `max_heart_rate=120` would leave a resident judged by the rule's default of 150."""
    text = read_text(path, encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path, text)
    elif path.suffix.lower() in (".yaml", ".yml"):
        rows = _yaml_rows(path, text)
    else:
        raise ConfigError(str(path), "", "expected a .csv, .yaml or .yml file")
    return Registry(_validate_rows(path, rows, device_types, read_by_rules))


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text), strict=True)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise ConfigError(str(path), "header", f"not a valid CSV line: {exc}") from exc
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise ConfigError(str(path), "header", f"unknown column(s) {unknown}; known: {COLUMNS}")
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        # The last would be taken: a `unit` column retyped `area` puts every device in
        # an area named after its unit, routed to nobody's roster.
        raise ConfigError(str(path), "header", f"column(s) {twice} given twice: one of each")
    for required in ("device_id", "device_type", "community"):
        if required not in header:
            raise ConfigError(str(path), "header", f"missing column {required!r}")
    rows = []
    # Where the next row begins, for a row the csv module cannot read to its end.
    begins = reader.line_num + 1
    try:
        for record in reader:
            where = f"line {reader.line_num}"
            extra = record.pop(None, None)
            if extra is not None:
                # Dropped, a second contact written after a comma would never be told.
                raise ConfigError(
                    str(path),
                    where,
                    f"{len(header) + len(extra)} cells where the header has {len(header)}: "
                    "a comma inside a value? (contacts and thresholds are separated by ';')",
                )
            breaks = sum(value.count("\n") for value in record.values() if value)
            if breaks:
                # A quote left open runs its cell on over the rows after it.
                raise ConfigError(
                    str(path),
                    f"line {reader.line_num - breaks}",
                    f'a cell runs on to line {reader.line_num}: a quote (") left open?',
                )
            cleaned = {k: v.strip() for k, v in record.items() if v and v.strip()}
            rows.append((where, cleaned))
            begins = reader.line_num + 1
    except csv.Error as exc:
        raise ConfigError(
            str(path),
            f"line {begins}",
            f'not a valid CSV row: {exc} (a quote (") left open?)',
        ) from exc
    return rows


def _yaml_rows(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    data = parse_yaml(path, text)
    if isinstance(data, dict):
        data = data.get("devices")
    if not isinstance(data, list):
        raise ConfigError(str(path), "devices", "expected a list of devices")
    rows = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ConfigError(str(path), f"devices[{index}]", "expected a mapping")
        rows.append((f"devices[{index}]", item))
    return rows


# The columns whose values many devices share.
_REPEATED = ("device_type", "community", "area", "compound", "building")


def _validate_rows(
    path: Path,
    rows: list[tuple[str, dict[str, Any]]],
    device_types: Collection[str] | None,
    read_by_rules: Mapping[str, Collection[str]] | None,
) -> list[RegisteredDevice]:
    devices: list[RegisteredDevice] = []
    seen_ids: dict[tuple[str, str], str] = {}
    seen_imeis: dict[str, str] = {}
    # A place's names, a community's and a type's, once each, not once a device.
    names: dict[str, str] = {}
    for where, row in rows:
        for column in _REPEATED:
            value = row.get(column)
            if type(value) is str:
                row[column] = names.setdefault(value, value)
        try:
            device = _DEVICE.validate_python(row)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"])
            name = row.get("device_id", "?")
            problem = error["msg"]
            if error["type"] == "unexpected_keyword_argument":
                problem = f"unknown key; known: {', '.join(COLUMNS)}"
            raise ConfigError(str(path), f"{where} ({name}): {field}", problem) from exc
        if device_types is not None and device.device_type not in device_types:
            raise ConfigError(
                str(path),
                f"{where} ({device.device_id}): device_type",
                f"no device profile is of type {device.device_type!r}; "
                f"known: {sorted(device_types)}",
            )
        if read_by_rules is not None and device.thresholds:
            unread = _unread_threshold(device, read_by_rules.get(device.device_type, ()))
            if unread is not None:
                raise ConfigError(str(path), f"{where} ({device.device_id}): thresholds", unread)
        key = (device.community, device.device_id)
        if key in seen_ids:
            raise ConfigError(
                str(path), f"{where}: device_id", f"{device.device_id!r} also at {seen_ids[key]}"
            )
        seen_ids[key] = where
        if device.imei:
            if device.imei in seen_imeis:
                raise ConfigError(
                    str(path), f"{where}: imei", f"{device.imei} also at {seen_imeis[device.imei]}"
                )
            seen_imeis[device.imei] = where
        devices.append(device)
    return devices


def check_thresholds(
    registry: Registry, read_by_rules: Mapping[str, Collection[str]], path: Path | None
) -> None:
    """Raises ConfigError naming the first device of a loaded registry with a threshold
    that no rule of its type reads (rules reloaded without one the sheet's thresholds
    are for)."""
    for device in registry.devices():
        problem = _unread_threshold(device, read_by_rules.get(device.device_type, ()))
        if problem is not None:
            where = f"{device.device_id} of {device.community}: thresholds"
            raise ConfigError(str(path or "registry"), where, problem)


def _unread_threshold(device: RegisteredDevice, read: Collection[str]) -> str | None:
    for name in device.thresholds:
        if name in read:
            continue
        close = difflib.get_close_matches(name, read, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"no alert rule of {device.device_type} reads {name!r}{hint} "
            f"(they read: {', '.join(sorted(read)) or 'nothing of the registry'})"
        )
    return None
