"""How records map to time series, as the device profiles declare, encoded as lines."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from gateway.cache import remember
from gateway.decode.profile import FieldSpec, ProfileSet
from gateway.decode.record import DeviceRef, Event, FieldValue, Reading, Record, TimeSource
from gateway.registry import RegisteredDevice, Registry, Site, place_of, place_tags
from gateway.rules.alert import AlertChange, AlertState
from gateway.store.line_protocol import FieldSetEncoder, encode_fields, encode_series

STATUS_MEASUREMENT = "device_status"
# A point without a device timestamp is marked, so that dashboards can tell.
_GATEWAY_TIME = (("gateway_time", True),)
_GATEWAY_TIME_TEXT = encode_fields(_GATEWAY_TIME)
_GATEWAY, _DEVICE = TimeSource.GATEWAY, TimeSource.DEVICE
_EVENT_COUNT = (("count", 1),)
# Series prefixes cached; cleared when full so that a storm of new ids stays bounded.
_CACHE_MAX_ENTRIES = 200_000


class SeriesMapper:
    def __init__(self, profiles: ProfileSet, registry: Registry) -> None:
        self._registry = registry
        self._telemetry: dict[str, str] = {}
        self._parts: dict[str, tuple[str, str]] = {}
        self._events: dict[str, str] = {}
        # Each device type's field types, of a whole reading and of a part's.
        types: dict[tuple[str, bool], dict[str, str]] = {}
        # A vendor profile shares its device type's series; the JSON profile names them,
        # and a vendor's may add fields.
        for profile in sorted(profiles.by_name.values(), key=lambda p: p.codec != "json"):
            device_type = profile.device_type
            self._telemetry.setdefault(device_type, profile.telemetry.measurement)
            _add_types(types.setdefault((device_type, False), {}), profile.telemetry.fields)
            if profile.telemetry.parts:
                parts = profile.telemetry.parts
                self._parts.setdefault(device_type, (parts.measurement, parts.key))
                _add_types(types.setdefault((device_type, True), {}), parts.fields)
            if profile.events:
                self._events.setdefault(device_type, profile.events.measurement)
        self._encoders = {key: FieldSetEncoder(field_types) for key, field_types in types.items()}
        # A reading's series, with the encoder of its fields, by device and port.
        self._readings: dict[tuple[DeviceRef, int | None], tuple[str, FieldSetEncoder]] = {}
        self._series: dict[tuple[object, ...], str] = {}

    def use_registry(self, registry: Registry) -> None:
        """A reloaded registry: a device moved to another building is tagged there from
        its next point on."""
        self._registry = registry
        self._readings.clear()
        self._series.clear()

    def line(self, record: Record) -> str:
        """The record as one line of line protocol. Raises ValueError if it cannot be one."""
        if isinstance(record, Reading):
            reading = self._readings.get((record.device, record.port))
            if reading is None:
                reading = self._reading_series(record)
            prefix, encoder = reading
            text = encoder.encode(record.fields)
            if record.time_source is _GATEWAY:
                return f"{prefix} {text},{_GATEWAY_TIME_TEXT} {record.time_ms}"
            return f"{prefix} {text} {record.time_ms}"
        key: tuple[object, ...]
        fields: tuple[tuple[str, FieldValue], ...]
        if isinstance(record, Event):
            key = (1, record.device, record.kind, record.port)
            fields = tuple((k, v) for k, v in record.fields.items() if k != "port") + _EVENT_COUNT
        else:
            key = (2, record.device)
            fields = (("online", record.online),)
        series = self._series.get(key)
        if series is None:
            series = remember(self._series, key, self._series_of(record), _CACHE_MAX_ENTRIES)
        if record.time_source is not _DEVICE:
            fields += _GATEWAY_TIME
        return f"{series} {encode_fields(fields)} {record.time_ms}"

    def _reading_series(self, record: Reading) -> tuple[str, FieldSetEncoder]:
        device = record.device
        series = self._series_of(record)
        # A device type with a series for this reading has an encoder for its fields.
        reading = (series, self._encoders[(device.device_type, record.port is not None)])
        return remember(self._readings, (device, record.port), reading, _CACHE_MAX_ENTRIES)

    def _series_of(self, record: Record) -> str:
        device = record.device
        tags: list[tuple[str, str]] = [
            ("community", device.community),
            ("device_id", device.device_id),
        ]
        registered = self._registry.get(device.community, device.device_id)
        if registered is not None:
            tags.extend(registered.place_tags)
        if isinstance(record, Reading):
            if record.port is None:
                measurement = self._telemetry[device.device_type]
            else:
                measurement, key = self._parts[device.device_type]
                tags.append((key, str(record.port)))
        elif isinstance(record, Event):
            measurement = self._events[device.device_type]
            tags.append(("event", record.kind))
            if record.port is not None:
                tags.append(("port", str(record.port)))
        else:
            measurement = STATUS_MEASUREMENT
            tags.append(("device_type", device.device_type))
        return encode_series(measurement, tags)


def _add_types(types: dict[str, str], fields: Mapping[str, FieldSpec]) -> None:
    for name, spec in fields.items():
        types.setdefault(name, spec.type)


ALERT_MEASUREMENT = "alert"


# The `alert` point's state of a pending alert that ended before it fired.
ENDED_UNFIRED = "ended"


def alert_line(change: AlertChange, site: Site | None) -> str:
    """An alert's change of state, for timelines and annotations.

    The alert carries its grid cell as tags (where its device was when it began, or the
    place it is about: a building on fire), and its device's position as fields, so that
    dashboards can group alerts by place and put them on the map. Every change of an
    alert is tagged alike, as dashboards take the last state of each series.
    """
    device = change.device
    tags = [
        ("community", device.community),
        ("device_id", device.device_id),
        ("device_type", device.device_type),
        ("rule", change.rule),
        ("severity", str(change.severity)),
    ]
    if change.port is not None:
        tags.append(("port", str(change.port)))
    # A pending alert whose condition broke before it fired ended unannounced: not an
    # alert resolved, which the dashboards mark as one.
    ended = change.state is AlertState.RESOLVED and not change.fired
    fields: tuple[tuple[str, FieldValue], ...] = (
        ("state", ENDED_UNFIRED if ended else str(change.state)),
        ("alert_id", change.alert_id),
        ("title", change.title),
        ("life_safety", change.life_safety),
        ("started_ms", change.started_ms),
    )
    if site is not None:
        tags.extend(place_tags(place_of(site)))
        if site.lat is not None and site.lon is not None:
            fields += (("lat", site.lat), ("lon", site.lon))
    return f"{encode_series(ALERT_MEASUREMENT, tags)} {encode_fields(fields)} {change.at_ms}"


DEVICE_INFO_MEASUREMENT = "device_info"


# How long a series the registry no longer has is written as no longer registered, at
# every writing: a point dropped from a full outbox is made good the next day, and past
# a month the series is let be, for InfluxDB's retention policy to let go of, or its
# administrator to drop, its place then leaving the dashboards' place lists.
RETRACTED_FOR_MS = 30 * 86_400_000


# A device_info series' community and device id, whose characters need no escaping; a
# comma or an equals sign inside another tag's value is escaped.
_COMMUNITY_TAG = re.compile(r"(?<!\\),community=([a-z0-9-]+)(?:,|$)")
_DEVICE_ID_TAG = re.compile(r"(?<!\\),device_id=([A-Za-z0-9_-]+)(?:,|$)")


def registered_in(series: Iterable[str]) -> set[tuple[str, str]]:
    """The (community, device id) of the devices whose device_info series were written."""
    found = set()
    for prefix in series:
        community = _COMMUNITY_TAG.search(prefix)
        device_id = _DEVICE_ID_TAG.search(prefix)
        if community is not None and device_id is not None:
            found.add((community[1], device_id[1]))
    return found


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    lines: list[str]
    # The series of the registry's devices, to compare with next time; and those it no
    # longer has (devices taken out, moved or retyped), with when that was first found,
    # to write again next time.
    series: frozenset[str]
    ended: Mapping[str, int]


def device_info(
    registry: Registry,
    at_ms: int,
    written: Collection[str] = (),
    ended: Mapping[str, int | None] | None = None,
) -> DeviceInfo:
    """Each registered device's place and position, for maps of devices that do not send
    their own. Names and phone numbers of wearers stay out: dashboards are public screens.
    A series written before (`written`, `ended`) that this registry does not have is
    written as no longer registered: the dashboards read each series' last point with no
    time range, and would show a device taken out, or in its old building, for ever. It
    is written so at every writing, as the others are, so that a point dropped from a
    full outbox is made good the next day, for RETRACTED_FOR_MS. `ended`: when each was
    first found ended (None: not known, taken as now)."""
    lines = []
    series = set()
    for device in registry.devices():
        tags = [
            ("community", device.community),
            ("device_id", device.device_id),
            ("device_type", device.device_type),
            *device.place_tags,
        ]
        fields: tuple[tuple[str, FieldValue], ...] = (("registered", True), *_position(device))
        if device.well_depth_cm is not None:
            fields += (("well_depth_cm", device.well_depth_cm),)
        prefix = encode_series(DEVICE_INFO_MEASUREMENT, tags)
        series.add(prefix)
        lines.append(f"{prefix} {encode_fields(fields)} {at_ms}")
    # A millisecond before: a device moved to another building is one group in the
    # dashboards' queries, whose last point must be the registered one.
    ended = ended or {}
    gone: dict[str, int] = {}
    for prefix in sorted((set(written) | set(ended)) - series):
        since_ms = ended.get(prefix)
        since_ms = at_ms if since_ms is None else since_ms
        if at_ms - since_ms < RETRACTED_FOR_MS:
            gone[prefix] = since_ms
            lines.append(f"{prefix} registered=false {at_ms - 1}")
    return DeviceInfo(lines, frozenset(series), gone)


def _position(device: RegisteredDevice) -> tuple[tuple[str, FieldValue], ...]:
    if device.lat is None or device.lon is None:
        return ()
    return (("lat", device.lat), ("lon", device.lon))
