"""Device profiles: one YAML file per device type in `device_profiles/`.

A profile declares the topics a device type uses, its codec, its fields with type,
unit and valid range, its typical reporting period, and how readings map to
time series.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.config import config_error, filter_problem
from gateway.errors import ConfigError
from gateway.textfile import parse_yaml, read_text, yaml_files

_NAME = r"^[a-z][a-z0-9_]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    type: Literal["float", "int", "bool", "string"]
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    required: bool = False
    description: str | None = None

    @model_validator(mode="after")
    def _range_fits_type(self) -> FieldSpec:
        if self.type in ("bool", "string") and (self.min is not None or self.max is not None):
            raise ValueError(f"a {self.type} field takes no min/max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class PartsSpec(_Strict):
    """A list inside a telemetry payload whose items are series of their own (a shed's ports)."""

    field: str = Field(pattern=_NAME)
    key: str = Field(pattern=_NAME)
    measurement: str = Field(pattern=_NAME)
    fields: dict[str, FieldSpec]
    # More than any shed has ports: a bound on the records one message makes, should
    # `ingest.max_payload_bytes` allow far more than the contract's 16 KiB.
    max_items: int = Field(1024, ge=1)


class TelemetrySpec(_Strict):
    measurement: str = Field(pattern=_NAME)
    fields: dict[str, FieldSpec]
    parts: PartsSpec | None = None


class EventSpec(_Strict):
    measurement: str = Field(pattern=_NAME)
    kinds: tuple[str, ...] = Field(min_length=1)
    fields: dict[str, FieldSpec] = {}


class DeviceProfile(_Strict):
    name: str = Field(pattern=_NAME)
    device_type: str = Field(pattern=_NAME)
    description: str | None = None
    codec: str = "json"
    topics: tuple[str, ...] = Field(min_length=1)
    period_s: float = Field(gt=0)
    # Worn or carried by a person: where the device is (`lat`, `lon`) is where they are,
    # personal data shown by the rules of gateway.api.privacy.
    personal_positions: bool = False
    telemetry: TelemetrySpec
    events: EventSpec | None = None

    @model_validator(mode="after")
    def _topics_are_filters(self) -> DeviceProfile:
        for topic in self.topics:
            problem = filter_problem(topic) or ("it begins with /" if topic[0] == "/" else None)
            if problem:
                raise ValueError(f"topic {topic!r} is not a valid MQTT topic filter: {problem}")
        return self

    @model_validator(mode="after")
    def _fields_are_not_tags(self) -> DeviceProfile:
        # InfluxDB 1.x drops a field named time without a word (the write succeeds), and
        # shows a field named as a tag of its series beside it, as `community_1`.
        parts = self.telemetry.parts
        kept = {
            "telemetry.fields": (self.telemetry.fields, _SERIES_TAGS | {"port"}),
            "telemetry.parts.fields": (
                parts.fields if parts else {},
                _SERIES_TAGS | {parts.key if parts else "port"},
            ),
            # An event's port is its series' tag, not a field; every event counts 1.
            "events.fields": (self.events.fields if self.events else {}, _SERIES_TAGS | {"count"}),
        }
        for where, (fields, taken) in kept.items():
            for name in fields:
                if name in taken:
                    raise ValueError(
                        f"{where}.{name}: {name!r} is InfluxDB's time or a tag of the "
                        f"series, {sorted(taken)}; name the field otherwise"
                    )
        return self


# Tags of every series (and the place tags of the registry), and InfluxDB's own time.
_SERIES_TAGS = frozenset(
    {"time", "community", "device_id", "area", "compound", "building", "event", "device_type"}
)


class ProfileSet:
    """All loaded profiles, found by device type (canonical JSON) or by codec."""

    def __init__(self, profiles: Mapping[str, DeviceProfile]) -> None:
        self.by_name = dict(profiles)
        self.by_device_type: dict[str, DeviceProfile] = {}
        for profile in profiles.values():
            if profile.codec == "json":
                self.by_device_type[profile.device_type] = profile
        self.vendor = tuple(p for p in profiles.values() if p.codec != "json")
        personal = [p for p in profiles.values() if p.personal_positions]
        self.personal_position_types = frozenset(p.device_type for p in personal)
        # The series of those device types, which name the device in their tags.
        self.personal_measurements = frozenset(
            m
            for p in personal
            for m in (
                p.telemetry.measurement,
                p.telemetry.parts.measurement if p.telemetry.parts else None,
                p.events.measurement if p.events else None,
            )
            if m is not None
        )

    def __len__(self) -> int:
        return len(self.by_name)

    def device_types(self) -> frozenset[str]:
        return frozenset(p.device_type for p in self.by_name.values())

    def periods_s(self) -> dict[str, float]:
        """Each device type's typical reporting period, for the offline rules."""
        return {t: p.period_s for t, p in self.by_device_type.items()}


def load_profiles(folder: Path, known_codecs: frozenset[str]) -> ProfileSet:
    """Load every `*.yaml` and `*.yml` in `folder`; an error names the file, the field and the problem."""
    if not folder.is_dir():
        raise ConfigError(str(folder), "", "device profile folder not found")
    profiles: dict[str, DeviceProfile] = {}
    json_types: dict[str, Path] = {}
    for path in yaml_files(folder):
        profile = _load_one(path)
        if profile.codec not in known_codecs:
            raise ConfigError(
                str(path),
                "codec",
                f"unknown codec {profile.codec!r}; known: {sorted(known_codecs)}",
            )
        if profile.name in profiles:
            raise ConfigError(str(path), "name", f"profile {profile.name!r} is defined twice")
        if profile.codec == "json":
            if profile.device_type in json_types:
                raise ConfigError(
                    str(path),
                    "device_type",
                    f"{profile.device_type!r} already has a JSON profile in "
                    f"{json_types[profile.device_type].name}",
                )
            json_types[profile.device_type] = path
        profiles[profile.name] = profile
    if not profiles:
        raise ConfigError(str(folder), "", "no device profiles (*.yaml, *.yml) found")
    return ProfileSet(profiles)


def _load_one(path: Path) -> DeviceProfile:
    text = read_text(path)
    raw = parse_yaml(path, text)
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "", "expected a mapping at the top level")
    raw.setdefault("name", path.stem)
    try:
        return DeviceProfile.model_validate(raw)
    except ValidationError as exc:
        raise config_error(str(path), exc) from exc
