"""What the API takes and gives, as typed models: the OpenAPI document is made of them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.decode.record import FieldValue


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


def _said(text: str) -> str:
    if not text.strip():
        raise ValueError("must say something, not only spaces")
    return text


# Text a person must write: a close note, who takes an alert.
Said = Annotated[str, AfterValidator(_said)]


class _In(BaseModel):
    # A misspelt key in a request is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Out):
    detail: str


class ContactOut(_Out):
    name: str
    phone: str


class PersonOut(_Out):
    """A bracelet's wearer; `masked` says whether names and numbers are shown masked."""

    name: str | None
    phone: str | None
    emergency_contacts: list[ContactOut]
    masked: bool


class PlaceOut(_Out):
    area: str | None
    compound: str | None
    building: str | None
    unit: str | None
    lat: float | None
    lon: float | None


class PositionOut(_Out):
    """WGS-84 degrees."""

    lat: float
    lon: float


class LatestOut(_Out):
    time_ms: int
    fields: dict[str, FieldValue]
    ports: dict[str, dict[str, FieldValue]]
    last_event: str | None
    last_event_ms: int | None


DeviceState = Literal["alarm", "offline", "normal"]


class DeviceOut(_Out):
    community: str
    device_type: str
    device_id: str
    registered: bool
    place: PlaceOut
    state: DeviceState
    online: bool | None
    last_seen_ms: int | None
    wearer: PersonOut | None
    latest: LatestOut | None


class DeviceListOut(_Out):
    total: int
    devices: list[DeviceOut]


class ReadingOut(_Out):
    time_ms: int
    measurement: str
    port: int | None
    fields: dict[str, FieldValue]


class ReadingsOut(_Out):
    # "influxdb", or "outbox": only the lines not yet written to a database.
    source: Literal["influxdb", "outbox"]
    readings: list[ReadingOut]


class StepOut(_Out):
    state: str
    at_ms: int
    actor: str
    note: str | None


class AttemptOut(_Out):
    receiver: str
    channel: str
    at_ms: int
    result: str
    detail: str
    latency_ms: float | None


class AlertOut(_Out):
    alert_id: str
    rule: str
    title: str
    severity: str
    life_safety: bool
    community: str
    device_type: str
    device_id: str
    port: int | None
    state: str
    started_ms: int
    updated_ms: int
    fired_ms: int | None
    acknowledged_by: str | None
    acknowledged_ms: int | None
    arrived_by: str | None
    arrived_ms: int | None
    assigned_to: str | None
    resolved_ms: int | None
    closed_by: str | None
    closed_ms: int | None
    note: str | None
    repeats: int = Field(
        description="events that joined the alert after the one that made it (an SOS"
        " pressed again within the rule's merge_s, while nobody had taken the alert)"
    )
    repeated_ms: int | None = Field(description="when the last of them came")
    place: PlaceOut | None
    position: PositionOut | None = Field(
        description="where the alert fired, as the record that fired it said (a fall's lat"
        " and lon); null when it said nothing. `place` is where the device was registered when"
        " the alert began."
        " A device worn by a person gives where they were: to those who see its wearer"
        " masked, to two decimals of a degree (about a kilometre)"
    )


class AlertListOut(_Out):
    version: int
    alerts: list[AlertOut]
    # For `state=open`: how many open alerts match, of which the `limit` most severe
    # are listed. None for other states, which list the newest `limit`.
    total: int | None = None


class AlertDetailOut(_Out):
    alert: AlertOut
    history: list[StepOut]
    notifications: list[AttemptOut]
    wearer: PersonOut | None


class CloseIn(_In):
    note: Said = Field(max_length=2000, description="what was found and done")


class AssignIn(_In):
    to: Said = Field(max_length=64, description="who takes the alert")


class SilenceIn(_In):
    community: str | None = Field(None, pattern=r"^[a-z0-9-]{1,32}$")
    # A place, within the community: the levels given must all match the device's.
    area: str | None = Field(None, min_length=1, max_length=64)
    compound: str | None = Field(None, min_length=1, max_length=64)
    building: str | None = Field(None, min_length=1, max_length=64)
    device_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    rule: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    # Now when left out.
    starts_ms: int | None = Field(None, ge=0, le=(1 << 53))
    ends_ms: int = Field(ge=0, le=(1 << 53))
    reason: str = Field(min_length=1, max_length=500)


class SilenceOut(_Out):
    id: int
    community: str | None
    area: str | None
    compound: str | None
    building: str | None
    device_id: str | None
    rule: str | None
    starts_ms: int
    ends_ms: int
    author: str
    reason: str


class RuleOut(_Out):
    name: str
    title: str
    kind: str
    severity: str
    life_safety: bool
    device_types: list[str]
    file: str


class RuleCheckOut(_Out):
    file: str
    rules: list[str]


class ReloadOut(_Out):
    rules: int


class QuarantineOut(_Out):
    id: int
    received_ms: int
    topic: str
    # The raw bytes as text, undecodable bytes replaced.
    payload: str
    reason: str
    detail: str


class AuditOut(_Out):
    id: int
    at_ms: int
    actor: str
    role: str
    community: str
    device_id: str
    what: str
    via: str


class CheckOut(_Out):
    name: Literal["broker", "influxdb", "disk"]
    ok: bool
    detail: str


class HealthOut(_Out):
    status: Literal["ok", "unavailable"]
    checks: list[CheckOut]


Responses = dict[int | str, dict[str, Any]]
_ERROR_TEXT = {
    400: "a body that cannot be read",
    401: "no token, or one that matches no one",
    403: "the caller's role does not allow it",
    404: "not found",
    409: "the step does not apply to the alert as it is",
    413: "a request body over its limit (64 KiB; 256 KiB for a rule file), refused unread",
    422: "a bad body (not UTF-8, not JSON, a field missing or of the wrong type) or "
    "parameter; the detail names it",
    429: "too many failed authentications from this address; see Retry-After",
    502: "the time-series database failed",
}


def error_responses(*codes: int, **described: str) -> Responses:
    """OpenAPI entries for error answers, each with its `detail`."""
    out: Responses = {}
    for code in codes:
        text = described.get(f"e{code}", _ERROR_TEXT[code])
        out[code] = {"model": ErrorOut, "description": text}
    return out


# Any request may be refused for its body's size before it is read, and for a query
# parameter it does not take.
AUTH_ERRORS = error_responses(400, 401, 403, 413, 422, 429)
