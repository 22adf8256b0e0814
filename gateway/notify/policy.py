"""The notification policy: channels, receivers, duty rosters, routes and escalation chains.

Part of the gateway's config (`notify:`), checked with it at start-up: every name a
route, a step or a roster uses must be defined, so that a typo is found before an
alarm needs it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.address import HttpAddress
from gateway.phone import normalise_phone
from gateway.registry import PLACE_TYPES, Placed, Registry, place_of
from gateway.rules.rule import Severity
from gateway.rules.schedule import DailyWindow

# Receivers resolved when an alert is routed, not named in `receivers`.
ON_DUTY = "on_duty"
EMERGENCY_CONTACTS = "emergency_contacts"
SPECIAL_RECEIVERS = (ON_DUTY, EMERGENCY_CONTACTS)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# What a message offers to SMS and voice templates, by name.
TEMPLATE_FIELDS = (
    "title", "severity", "place", "device", "time", "state", "link", "link_code", "alert_id",
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _window(value: str | None) -> str | None:
    if value is not None:
        DailyWindow.parse(value)
    return value


class _ChannelBase(_Strict):
    timeout_s: float = Field(10.0, gt=0)


class _TemplateChannel(_ChannelBase):
    # Message fields, in the order of the template's variables.
    params: tuple[str, ...] = ("title", "place", "time")

    @field_validator("params")
    @classmethod
    def _known_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in TEMPLATE_FIELDS]
        if unknown:
            raise ValueError(f"unknown template field(s) {unknown}; known: {TEMPLATE_FIELDS}")
        return value


class WecomChannel(_ChannelBase):
    """WeCom (企业微信) group robot."""

    type: Literal["wecom"]
    key: SecretStr
    url: HttpAddress = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
    per_minute: int = Field(20, ge=1)


class DingtalkChannel(_ChannelBase):
    """DingTalk (钉钉) group robot, signed with HMAC-SHA256 when `secret` is set."""

    type: Literal["dingtalk"]
    access_token: SecretStr
    secret: SecretStr | None = None
    url: HttpAddress = "https://oapi.dingtalk.com/robot/send"
    per_minute: int = Field(20, ge=1)
    # DingTalk blocks a robot that exceeds its limit for this long.
    blocked_s: float = Field(600, ge=0)


class FeishuChannel(_ChannelBase):
    """Feishu (飞书) custom bot, signed when `secret` is set."""

    type: Literal["feishu"]
    hook: SecretStr
    secret: SecretStr | None = None
    url: HttpAddress = "https://open.feishu.cn/open-apis/bot/v2/hook"
    per_second: int = Field(5, ge=1)


class AliyunSmsChannel(_TemplateChannel):
    type: Literal["aliyun_sms"]
    access_key_id: str
    access_key_secret: SecretStr
    sign_name: str
    template_code: str
    url: HttpAddress = "https://dysmsapi.aliyuncs.com/"
    region: str = "cn-hangzhou"


class AliyunVoiceChannel(_TemplateChannel):
    type: Literal["aliyun_voice"]
    access_key_id: str
    access_key_secret: SecretStr
    tts_code: str
    called_show_number: str | None = None
    url: HttpAddress = "https://dyvmsapi.aliyuncs.com/"
    region: str = "cn-hangzhou"
    play_times: int = Field(2, ge=1, le=3)
    # Aliyun takes one call a minute to a number.
    per_number_per_minute: int = Field(1, ge=1)


class TencentSmsChannel(_TemplateChannel):
    type: Literal["tencent_sms"]
    secret_id: str
    secret_key: SecretStr
    sdk_app_id: str
    sign_name: str
    template_id: str
    url: HttpAddress = "https://sms.tencentcloudapi.com/"
    region: str = "ap-guangzhou"


class TencentVoiceChannel(_TemplateChannel):
    type: Literal["tencent_voice"]
    secret_id: str
    secret_key: SecretStr
    voice_sdk_app_id: str
    template_id: str
    url: HttpAddress = "https://vms.tencentcloudapi.com/"
    region: str = "ap-guangzhou"
    play_times: int = Field(2, ge=1, le=3)
    per_number_per_minute: int = Field(1, ge=1)


class WebhookChannel(_ChannelBase):
    """JSON to any HTTP endpoint, with an Idempotency-Key header."""

    type: Literal["webhook"]
    url: HttpAddress
    headers: dict[str, SecretStr] = {}


class MqttChannel(_ChannelBase):
    """Published at QoS 1 for a grid-worker app; `{community}` and `{receiver}` filled in."""

    type: Literal["mqtt"]
    topic: str = "notify/{community}/{receiver}"

    @field_validator("topic")
    @classmethod
    def _publishable(cls, value: str) -> str:
        try:
            filled = value.format(community="c", receiver="r")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"expected a topic with no fields but {{community}} and {{receiver}}, "
                f"got {value!r} ({exc!r})"
            ) from exc
        if not filled or any(c in filled for c in "+#\0"):
            raise ValueError(f"expected a topic to publish to, with no + or # in it, got {value!r}")
        return value


class ConsoleChannel(_ChannelBase):
    type: Literal["console"]


ChannelConfig = Annotated[
    WecomChannel
    | DingtalkChannel
    | FeishuChannel
    | AliyunSmsChannel
    | AliyunVoiceChannel
    | TencentSmsChannel
    | TencentVoiceChannel
    | WebhookChannel
    | MqttChannel
    | ConsoleChannel,
    Field(discriminator="type"),
]


class Receiver(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    display_name: str | None = None
    # However written, kept in E.164 (gateway.phone).
    phone: str | None = None
    # Tried in this order: the next one takes over when one fails or is over its limit.
    channels: tuple[str, ...] = Field(min_length=1)
    # Non-critical notifications wait until these hours end; critical ones never wait.
    quiet_hours: str | None = None

    _quiet = field_validator("quiet_hours")(_window)

    @field_validator("phone", mode="before")
    @classmethod
    def _dialable(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str | int) or isinstance(value, bool):
            return value
        try:
            return normalise_phone(value)
        except ValueError as exc:
            # Named, as a policy's receivers are known by their names, not their places.
            raise ValueError(f"receiver {info.data.get('name', '?')!r}: {exc}") from None


class Cell(_Strict):
    """A grid cell: a community, or an area, compound or building within it."""

    community: str
    area: str | None = None
    compound: str | None = None
    building: str | None = None


class Shift(_Strict):
    receiver: str
    days: tuple[Weekday, ...] = WEEKDAYS
    hours: str = "00:00-00:00"

    _hours = field_validator("hours")(_window)


class Roster(_Strict):
    """Who is on duty for a grid cell, and when."""

    cell: Cell
    shifts: tuple[Shift, ...] = Field(min_length=1)


class Match(_Strict):
    """Empty lists match everything."""

    severities: tuple[Severity, ...] = ()
    rules: tuple[str, ...] = ()
    device_types: tuple[str, ...] = ()
    communities: tuple[str, ...] = ()
    areas: tuple[str, ...] = ()
    compounds: tuple[str, ...] = ()
    buildings: tuple[str, ...] = ()


class Route(_Strict):
    match: Match = Match()
    escalation: str
    # Go on to the next routes after this one matched.
    continue_: bool = Field(False, alias="continue")
    # Tell those this route's chain told, at any step, when the condition clears.
    send_resolved: bool = True


class Step(_Strict):
    after_s: float = Field(ge=0)
    to: tuple[str, ...] = Field(min_length=1)
    # Instead of each receiver's own channels, for this step (a voice call, say).
    channels: tuple[str, ...] = ()


class Delivery(_Strict):
    max_tries: int = Field(3, ge=1)
    backoff_initial_s: float = Field(2.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)


class GatewayFaults(_Strict):
    """Who hears, straight from the gateway's memory, that alarms may not get through:
    its broker connection down, its outbox unable to commit (a dead or read-only disk),
    or its rounds of notifications failing. Each receiver by their own channels, the
    first that takes it."""

    # How long a fault lasts before anyone is told, and how long it is gone before they
    # hear that it is over: a broker restart or one failed commit is no news.
    after_s: float = Field(60.0, ge=0)
    # Told again while it lasts; null: once.
    repeat_s: float | None = Field(3600.0, gt=0)
    # Receivers' names; unset: the fallback receivers.
    to: tuple[str, ...] | None = None


class NotifyPolicy(_Strict):
    channels: dict[str, ChannelConfig]
    receivers: tuple[Receiver, ...] = ()
    rosters: tuple[Roster, ...] = ()
    routes: tuple[Route, ...] = Field(min_length=1)
    escalations: dict[str, tuple[Step, ...]]
    # How a wearer's emergency contacts are reached, in order.
    emergency_contact_channels: tuple[str, ...] = ()
    # Who is told when a roster has nobody on duty.
    fallback_receivers: tuple[str, ...] = ()
    delivery: Delivery = Delivery()
    gateway_faults: GatewayFaults = GatewayFaults()

    @model_validator(mode="after")
    def _names_exist(self) -> NotifyPolicy:
        names = [r.name for r in self.receivers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"receivers: names used twice: {duplicates}")
        for name in names:
            if name in SPECIAL_RECEIVERS:
                raise ValueError(f"receivers: {name!r} is reserved")
        known = set(names)
        for index, receiver in enumerate(self.receivers):
            self._channels_exist(f"receivers[{index}].channels", receiver.channels)
        self._channels_exist("emergency_contact_channels", self.emergency_contact_channels)
        for index, roster in enumerate(self.rosters):
            for number, shift in enumerate(roster.shifts):
                if shift.receiver not in known:
                    raise ValueError(
                        f"rosters[{index}].shifts[{number}].receiver: no receiver "
                        f"{shift.receiver!r}; known: {sorted(known)}"
                    )
        for name in self.fallback_receivers:
            if name not in known:
                raise ValueError(f"fallback_receivers: no receiver {name!r}")
        for name in self.gateway_faults.to or ():
            if name not in known:
                raise ValueError(f"gateway_faults.to: no receiver {name!r}; known: {sorted(known)}")
        for index, route in enumerate(self.routes):
            if route.escalation not in self.escalations:
                raise ValueError(
                    f"routes[{index}].escalation: no escalation {route.escalation!r}; "
                    f"known: {sorted(self.escalations)}"
                )
        for chain, steps in self.escalations.items():
            if not steps:
                raise ValueError(f"escalations.{chain}: needs at least one step")
            if list(steps) != sorted(steps, key=lambda s: s.after_s):
                raise ValueError(f"escalations.{chain}: steps must be in order of after_s")
            for number, step in enumerate(steps):
                where = f"escalations.{chain}[{number}]"
                for target in step.to:
                    if target not in known and target not in SPECIAL_RECEIVERS:
                        raise ValueError(
                            f"{where}.to: no receiver {target!r}; known: {sorted(known)}, "
                            f"{ON_DUTY}, {EMERGENCY_CONTACTS}"
                        )
                if EMERGENCY_CONTACTS in step.to and not (
                    step.channels or self.emergency_contact_channels
                ):
                    raise ValueError(
                        f"{where}.to: {EMERGENCY_CONTACTS} need channels to reach them"
                    )
                self._channels_exist(f"{where}.channels", step.channels)
        return self

    def _channels_exist(self, where: str, channels: tuple[str, ...]) -> None:
        for name in channels:
            if name not in self.channels:
                raise ValueError(f"{where}: no channel {name!r}; known: {sorted(self.channels)}")

    def receiver(self, name: str) -> Receiver:
        return next(r for r in self.receivers if r.name == name)

    def fault_receivers(self) -> tuple[Receiver, ...]:
        names = self.gateway_faults.to
        return tuple(
            self.receiver(n) for n in (self.fallback_receivers if names is None else names)
        )


def unreachable(
    policy: NotifyPolicy,
    registry: Registry,
    rule_names: Collection[str],
    device_types: Collection[str],
    *,
    all_registered: bool,
) -> tuple[str, str] | None:
    """The first part of the policy that names what the gateway does not have, as
    (field, problem), or None. A roster for a cell with no device in it never has anyone
    on duty, and a route matching a rule, a device type or a place that does not exist
    never sends an alert down its chain: a typo there sends a fire to the fallback
    receivers, or to nobody. With no device registered, places are not checked. Unless `all_registered` (devices missing from
    the registry are refused), a community may have devices the registry does not list,
    so that only its areas, compounds and buildings, which come from the registry, are."""
    for index, roster in enumerate(policy.rosters):
        problem = empty_cell(roster.cell, registry, all_registered=all_registered)
        if problem is not None:
            return f"rosters[{index}].cell", problem
    for index, route in enumerate(policy.routes):
        match = route.match
        for name in match.rules:
            if name not in rule_names:
                return f"routes[{index}].match.rules", f"no rule is named {name!r}"
        for name in match.device_types:
            if name not in device_types:
                return (
                    f"routes[{index}].match.device_types",
                    f"no device profile is of type {name!r}; known: {sorted(device_types)}",
                )
        if not registry.places():
            continue
        if all_registered:
            communities = {place[0] for place in registry.places()}
            for name in match.communities:
                if name not in communities:
                    return (
                        f"routes[{index}].match.communities",
                        f"no registered device is in {name!r}; known: {sorted(communities)}",
                    )
        for key, place_type in zip(("areas", "compounds", "buildings"), PLACE_TYPES, strict=True):
            for name in getattr(match, key):
                there = registry.communities_named(place_type, name)
                if not there:
                    return (
                        f"routes[{index}].match.{key}",
                        f"no registered device is in {name!r}; known: {registry.names(place_type)}",
                    )
                if match.communities and there.isdisjoint(match.communities):
                    return (
                        f"routes[{index}].match.{key}",
                        f"no registered device of {', '.join(match.communities)} is in "
                        f"{name!r}, which is in {', '.join(sorted(there))}",
                    )
                # An installation of several communities (a district's) repeats names
                # (east, building 3): unless the route names its communities, it would
                # send the other communities' alerts there down its chain too.
                if not match.communities and len(there) > 1:
                    return (
                        f"routes[{index}].match.{key}",
                        f"{name!r} is in several communities ({', '.join(sorted(there))}): "
                        f"name the one meant in routes[{index}].match.communities",
                    )
    return None


def empty_cell(cell: Placed, registry: Registry, *, all_registered: bool) -> str | None:
    """What is wrong with a grid cell that no registered device is in, or None (see
    `unreachable`): nobody on duty there, nor a grid worker of it, would ever see an
    alert."""
    wanted = place_of(cell)
    if wanted[1:] == (None, None, None) and not all_registered:
        return None
    if registry.places() and not registry.holds(wanted):
        return f"no registered device is in {'/'.join(p for p in wanted if p is not None)}"
    return None
