"""The gateway's configuration: one typed model, checked once at start-up."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway import PROJECT_ROOT
from gateway.address import HttpAddress
from gateway.errors import ConfigError
from gateway.notify.link import MIN_SECRET_CHARS
from gateway.notify.policy import NotifyPolicy
from gateway.textfile import parse_yaml, read_text


class _Strict(BaseModel):
    # Operator config is strict: a misspelt key is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _key_with_its_certificate(self) -> TlsConfig:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file: a client key needs its certificate, cert_file")
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """The context the broker connections use. Raises ConfigError naming the
        setting (`ca_file`, ...) whose file cannot be read or used, the file being the
        certificate's."""
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, name)
            if path is not None:
                try:
                    path.read_bytes()
                except OSError as exc:
                    raise ConfigError(str(path), name, f"cannot read: {exc.strerror}") from exc
        try:
            context = ssl.create_default_context(cafile=_text(self.ca_file))
        except ssl.SSLError as exc:
            raise ConfigError(
                str(self.ca_file), "ca_file", f"not a PEM certificate authority: {exc}"
            ) from exc
        if self.cert_file is not None:
            key_field = "key_file" if self.key_file is not None else "cert_file"
            try:
                # Without a password, OpenSSL would ask for one on the terminal, or fail
                # with a bare "PEM lib" where there is none (a service).
                context.load_cert_chain(
                    str(self.cert_file), _text(self.key_file), password=_no_passphrase
                )
            except _EncryptedKey as exc:
                raise ConfigError(
                    str(self.key_file or self.cert_file),
                    key_field,
                    "the private key is encrypted; the gateway needs it without a passphrase",
                ) from exc
            except ssl.SSLError as exc:
                raise ConfigError(
                    str(self.cert_file),
                    "cert_file",
                    f"no PEM certificate with its private key (key_file, or in the same "
                    f"file), or the key is not the certificate's: {exc}",
                ) from exc
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    raise _EncryptedKey


class MqttConfig(_Strict):
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = Field("community-gateway", min_length=1, max_length=64)
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    protocol: Literal["3.1.1", "5"] = "5"
    # Two bytes in the CONNECT packet; the session expiry four.
    keepalive_s: int = Field(30, ge=5, le=65_535)
    # How many unacknowledged QoS 1 messages the broker may have in flight to us (MQTT 5).
    receive_maximum: int = Field(10_000, ge=1, le=65_535)
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, le=2**32 - 1)
    topics: tuple[str, ...] = (
        "community/+/+/+/telemetry",
        "community/+/+/+/status",
        "vendor/acme-smoke/+/up",
    )
    # Subscribed on a second connection with a session of its own (client id + "-alarms")
    # and committed on their own, so that an SOS or a fall never queues behind the
    # telemetry before it. Empty: everything comes through `topics`.
    alarm_topics: tuple[str, ...] = ("community/+/+/+/event",)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    # The gateway's own availability, retained, on the connection that carries alarms:
    # online at each connect, offline at a stop, and offline as that connection's last
    # will when the broker loses it otherwise (a crash, a dead box). null: none.
    status_topic: str | None = "gateway/{client_id}/status"

    @property
    def alarm_client_id(self) -> str:
        return f"{self.client_id}-alarms"

    @field_validator("topics", "alarm_topics")
    @classmethod
    def _valid_filters(cls, filters: tuple[str, ...]) -> tuple[str, ...]:
        for topic_filter in filters:
            problem = filter_problem(topic_filter)
            if problem:
                raise ValueError(f"{topic_filter!r} is not an MQTT topic filter: {problem}")
        return filters

    @property
    def status(self) -> str | None:
        """The status topic, with the client id in it."""
        if self.status_topic is None:
            return None
        return self.status_topic.replace("{client_id}", self.client_id)

    @model_validator(mode="after")
    def _status_topic(self) -> MqttConfig:
        topic = self.status
        if topic is None:
            return self
        problem = filter_problem(topic)
        if problem is None and (set(topic) & {"+", "#"} or topic.startswith("$")):
            problem = "a topic to publish on has no wildcards and does not begin with $"
        if problem is not None:
            raise ValueError(f"status_topic: {topic!r} is not an MQTT topic: {problem}")
        for topic_filter in (*self.topics, *self.alarm_topics):
            if filters_overlap(topic_filter, topic):
                raise ValueError(
                    f"status_topic: {topic!r} is matched by {topic_filter!r}: the gateway "
                    "would take its own status in as a device's message"
                )
        return self

    @model_validator(mode="after")
    def _lanes_apart(self) -> MqttConfig:
        # A message matching both would arrive twice, once on each connection.
        for alarm_topic in self.alarm_topics:
            for topic in self.topics:
                if filters_overlap(alarm_topic, topic):
                    raise ValueError(
                        f"alarm_topics {alarm_topic!r} and topics {topic!r} both match some "
                        "topics; each message must reach one connection only (subscribe "
                        "topics to the other kinds, e.g. community/+/+/+/telemetry and "
                        "community/+/+/+/status, or set alarm_topics to [])"
                    )
        return self


def filters_overlap(first: str, second: str) -> bool:
    """Whether some topic matches both MQTT topic filters."""
    a, b = _levels(first), _levels(second)
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            # "#" also matches its parent level: "a/#" matches "a".
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


def filter_problem(topic_filter: str) -> str | None:
    """What makes a topic filter one the broker would refuse (MQTT 5, 4.7), or None."""
    if not topic_filter:
        return "it is empty"
    if "\0" in topic_filter or len(topic_filter.encode()) > 65_535:
        return "it holds a NUL character or is longer than 65,535 bytes"
    group = topic_filter.split("/", 2)
    if group[0] == "$share" and (len(group) < 3 or not group[1] or set(group[1]) & {"+", "#"}):
        return "a shared subscription is $share/{group}/{filter}, with a group name"
    levels = _levels(topic_filter)
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "# must be a whole level, and the last"
        if "+" in level and level != "+":
            return "+ must be a whole level"
    return None


def _levels(topic_filter: str) -> list[str]:
    levels = topic_filter.split("/")
    # A shared subscription, $share/{group}/{filter}, matches what its filter matches.
    return levels[2:] if levels[0] == "$share" and len(levels) > 2 else levels


class InfluxConfig(_Strict):
    url: HttpAddress
    api: Literal["v1", "v2"] = "v1"
    # InfluxDB 1.x API
    database: str = "community"
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    # InfluxDB 2.x/3.x API (also served by InfluxDB 1.8+)
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    batch_lines: int = Field(5000, ge=1, le=5000)
    # After a write that did not fill a batch, how long to let lines gather before the
    # next: under heavy traffic the database then takes fewer, fuller writes, which cost
    # it less per line.
    linger_s: float = Field(0.25, ge=0, le=10)
    timeout_s: float = Field(10.0, gt=0)
    gzip: bool = True
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str) -> str:
        # An address is shown in logs, by `check` and on the unauthenticated readiness
        # page: what lets the gateway in goes in the fields kept secret.
        address = httpx.URL(url)
        if address.userinfo or {"u", "p", "token"} & set(address.params):
            raise ValueError(
                "put the user and password in influx.username and influx.password (or "
                "influx.token), not in the address, which logs and /health/ready show"
            )
        return url

    @field_validator("token")
    @classmethod
    def _token_in_a_header(cls, token: SecretStr | None) -> SecretStr | None:
        # Sent in the Authorization header, which takes ASCII alone: a token pasted with
        # a typographic quote would fail every write.
        if token is not None:
            for index, char in enumerate(token.get_secret_value()):
                if not " " < char <= "~":
                    raise ValueError(
                        f"character {index + 1} of the token is U+{ord(char):04X}, which "
                        "no token has: pasted with a typographic quote, a space or a "
                        "line break?"
                    )
        return token

    @model_validator(mode="after")
    def _v2_needs_bucket(self) -> InfluxConfig:
        if self.api == "v2" and not self.bucket:
            raise ValueError("api v2 needs 'bucket' (and 'org', 'token' for InfluxDB 2.x)")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be at least backoff_initial_s "
                f"({self.backoff_initial_s})"
            )
        return self


class OutboxConfig(_Strict):
    path: Path = Path("var/outbox.sqlite3")
    max_bytes: int = Field(1 << 30, ge=1 << 20)
    # "full" survives power loss; "normal" survives a crashed process only.
    synchronous: Literal["full", "normal"] = "full"
    quarantine_max_rows: int = Field(100_000, ge=100)
    # Disk set aside beside the outbox and given back when the disk is full, so that the
    # oldest lines can still be dropped to commit alarms; 0 sets none aside.
    reserve_bytes: int = Field(32 << 20, ge=0)


class IngestConfig(_Strict):
    max_payload_bytes: int = Field(16 * 1024, ge=256)
    # Reject messages from devices missing from the registry.
    require_registered: bool = False
    commit_interval_s: float = Field(0.05, gt=0)
    # Also bounds how long an alarm's commit may wait behind a telemetry batch's.
    commit_max_messages: int = Field(1000, ge=1)
    # Reject device timestamps this far ahead of the gateway's clock.
    max_future_skew_s: float = Field(24 * 3600, gt=0)
    # Receive, decode and store the telemetry (mqtt.topics) in a process of its own, on
    # a core of its own; the rules still judge it in the main process. Only with
    # mqtt.alarm_topics, whose connection the main process keeps.
    telemetry_process: bool = True


DAY_MS = 24 * 3600 * 1000


class RetentionConfig(_Strict):
    """How long the gateway's own records are kept. The time series have their own
    retention, in InfluxDB."""

    # Alerts a person closed (and alerts that ended before they fired), with their
    # history, notifications and delivery attempts, and silences that ended: this many
    # days after they closed or ended; null keeps them.
    alerts_days: int | None = Field(3 * 365, ge=1, le=36_500)
    # Reads of personal data: this many days; null keeps them. Records of how personal
    # data was handled are to be kept three years (PIPL, art. 56).
    audit_days: int | None = Field(3 * 365, ge=1, le=36_500)

    @property
    def alerts_kept_ms(self) -> int | None:
        return None if self.alerts_days is None else self.alerts_days * DAY_MS

    @property
    def audit_kept_ms(self) -> int | None:
        return None if self.audit_days is None else self.audit_days * DAY_MS


class GridCell(_Strict):
    """A cell of the community grid (片区 area / 小区 compound / 楼栋 building); a level
    left out takes in everything below the levels given."""

    community: str = Field(pattern=r"^[a-z0-9-]{1,32}$")
    area: str | None = None
    compound: str | None = None
    building: str | None = None


class ApiToken(_Strict):
    # Who the token is: recorded as the actor of what it does and in the audit.
    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")
    role: Literal["admin", "operator", "grid_worker"]
    # Long enough that guessing is hopeless even past the failed-login limit.
    token: SecretStr
    # A grid worker's own cells: the alerts they see and handle.
    cells: tuple[GridCell, ...] = ()
    # The communities an operator's token sees and acts on, when one installation
    # serves several (a district's); unset: all of them.
    communities: tuple[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")], ...] | None = None

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("a token needs at least 16 characters")
        return value

    @model_validator(mode="after")
    def _grid_worker_has_cells(self) -> ApiToken:
        if self.role == "grid_worker" and not self.cells:
            raise ValueError(f"grid worker {self.name!r} needs at least one cell")
        if self.role != "grid_worker" and self.cells:
            raise ValueError(f"cells are for grid workers; {self.name!r} is {self.role}")
        return self

    @model_validator(mode="after")
    def _communities_for_operators(self) -> ApiToken:
        if self.communities is None:
            return self
        if self.role == "grid_worker":
            raise ValueError(
                f"communities: grid worker {self.name!r} is limited by their cells, "
                "which name their communities"
            )
        if self.role == "admin":
            # What only an admin does (reload the rules, read the audit of every
            # community's personal data) is for the whole installation: an admin limited
            # to some communities would be an operator.
            raise ValueError(
                f"communities: admin {self.name!r} sees every community; give a desk "
                "limited to some communities the operator role"
            )
        if not self.communities:
            # An empty list would let the token see nothing: a slip, never a wish.
            raise ValueError(
                f"communities: operator {self.name!r} needs at least one, "
                "or leave it out for all of them"
            )
        return self


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Where phones reach the gateway: the base of the links in notifications.
    public_url: HttpAddress = "http://127.0.0.1:8080"
    # Signs those links; when unset, one is made and kept beside the outbox. At least
    # 32 characters (`openssl rand -hex 24`): any link is a sample to guess it from.
    link_secret: SecretStr | None = None
    # How long a link in a notification can be used to act on its alert.
    link_ttl_s: float = Field(72 * 3600, gt=0)
    tokens: tuple[ApiToken, ...] = ()
    # Failed authentications a client address may make in a minute; then its further
    # failures are refused until the minute passes (a good token or link still works).
    auth_failures_per_min: int = Field(10, ge=1)
    # The reverse proxies whose X-Forwarded-For names the client: each an address
    # (10.0.0.5) or a network (10.0.0.0/24). Behind a proxy on another host, its
    # address goes here, or every phone is taken for the proxy by the failed-login
    # limit and the logs. Requests from anyone else are taken as they come.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    # Readiness fails below this much free disk where the outbox lives.
    min_free_disk_bytes: int = Field(256 << 20, ge=0)

    @field_validator("link_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(
                f"a link secret needs at least {MIN_SECRET_CHARS} characters "
                "(`openssl rand -hex 24`), or leave it unset to have one made"
            )
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                # Strict, as uvicorn takes a network: 10.0.0.1/24 would match nothing.
                ipaddress.ip_network(entry, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (10.0.0.5, 10.0.0.0/24)"
                ) from exc
        return value

    @model_validator(mode="after")
    def _tokens_unique(self) -> ApiConfig:
        names = [t.name for t in self.tokens]
        secrets = [t.token.get_secret_value() for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("two tokens have the same name")
        if len(set(secrets)) != len(secrets):
            raise ValueError("two tokens have the same secret")
        return self


class GatewayConfig(_Strict):
    mqtt: MqttConfig | None = MqttConfig()
    # None: no time-series database; points stay in the outbox.
    influx: InfluxConfig | None = None
    outbox: OutboxConfig = OutboxConfig()
    ingest: IngestConfig = IngestConfig()
    retention: RetentionConfig = RetentionConfig()
    # None: no HTTP API or pages; notification links still carry `public_url`.
    api: ApiConfig | None = None
    # None: alerts are logged, nobody is notified.
    notify: NotifyPolicy | None = None
    profiles_dir: Path = PROJECT_ROOT / "device_profiles"
    rules_dir: Path = PROJECT_ROOT / "alert_rules"
    registry_file: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Local time for rules bounded by time of day.
    timezone: str = "Asia/Shanghai"
    # How often the gateway writes its own health to the time series; null: never.
    health_interval_s: float | None = Field(10.0, gt=0)
    # The files read, for the errors found once the rest is loaded: this config's, and
    # the notification policy's own (None when it is written inline under `notify`).
    # Set by load_config.
    _file: Path | None = PrivateAttr(None)
    _notify_file: Path | None = PrivateAttr(None)

    def error(self, field: str, problem: str) -> ConfigError:
        """An error of the setting `field`, naming the config file."""
        return ConfigError(str(self._file or "config"), field, problem)

    def notify_error(self, field: str, problem: str) -> ConfigError:
        """An error of the notification policy's `field`, naming its file."""
        if self._notify_file is None:
            return self.error(f"notify.{field}", problem)
        return ConfigError(str(self._notify_file), field, problem)

    @field_validator("mqtt")
    @classmethod
    def _takes_events(cls, mqtt: MqttConfig | None) -> MqttConfig | None:
        # Set apart from the rest or not, the devices' alarms must reach some connection.
        if mqtt is not None and not any(
            filters_overlap(topic_filter, "community/+/+/+/event")
            for topic_filter in (*mqtt.topics, *mqtt.alarm_topics)
        ):
            raise ValueError(
                "alarm_topics: neither it nor topics match the devices' events "
                "(community/{community}/{type}/{id}/event): no SOS, fall or fire alarm "
                "would be heard; keep alarm_topics' default, or add "
                "community/+/+/+/event to topics"
            )
        return mqtt

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as Asia/Shanghai)"
            ) from exc
        return value


def load_config(path: Path) -> GatewayConfig:
    """Read and check a YAML config file; relative paths are taken from the file's folder.

    `${NAME}` in a value is replaced by the environment variable NAME, so that
    secrets need not be written into the file.
    """
    raw = _read_mapping(path)
    policy_file = raw.get("notify")
    policy_path = None
    if isinstance(policy_file, str):
        # The notification policy may live in a file of its own (rosters change often).
        policy_path = path.parent / policy_file
        raw["notify"] = _read_mapping(policy_path)
        try:
            NotifyPolicy.model_validate(raw["notify"])
        except ValidationError as exc:
            raise config_error(str(policy_path), exc) from exc
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise config_error(str(path), exc) from exc
    config = _resolve_paths(config, path.parent)
    config._file = path
    config._notify_file = policy_path
    if config.mqtt is not None and config.mqtt.tls is not None:
        # Read as the connections will, so that a certificate that cannot be used is
        # named here, with its setting, rather than by a failed start.
        try:
            config.mqtt.tls.ssl_context()
        except ConfigError as exc:
            raise ConfigError(
                str(path), f"mqtt.tls.{exc.field}", f"{exc.file}: {exc.problem}"
            ) from exc
    return config


def load_status_config(path: Path) -> GatewayConfig | None:
    """Of a config file that `load_config` refused, its `mqtt` and `outbox` sections
    alone, when they pass its checks: enough to say on the status topic why the
    gateway does not start. None when even they do not. With them, the notification
    policy and time zone, when they pass too: enough to tell the people who hear of
    the gateway's faults."""
    try:
        marked = _read_marked(path)
        sections = {name: marked[name] for name in ("mqtt", "outbox") if name in marked}
        config = GatewayConfig.model_validate(_substituted(sections, "", path))
        config = _resolve_paths(config, path.parent)
        if config.mqtt is not None and config.mqtt.tls is not None:
            config.mqtt.tls.ssl_context()
    except (ConfigError, ValidationError):
        return None
    update: dict[str, Any] = {}
    with contextlib.suppress(ConfigError, ValidationError):
        policy = marked.get("notify")
        if isinstance(policy, str):
            policy = _read_mapping(path.parent / policy)
        else:
            policy = _substituted(policy, "notify", path)
        update["notify"] = GatewayConfig.model_validate({"notify": policy}).notify
    with contextlib.suppress(ConfigError, ValidationError):
        zone = _substituted(marked.get("timezone", config.timezone), "timezone", path)
        update["timezone"] = GatewayConfig.model_validate({"timezone": zone}).timezone
    return config.model_copy(update=update)


def _read_mapping(path: Path) -> dict[str, object]:
    substituted: dict[str, object] = _substituted(_read_marked(path), "", path)
    return substituted


def _read_marked(path: Path) -> dict[str, object]:
    """The file's top-level mapping, each ${NAME} in it still marked."""
    text = read_text(path)
    # Each ${NAME} is marked in the text and replaced in the values read: a value with
    # `#`, `: ` or a quote in it stays whole, and one in a comment is never looked up.
    marked = _VARIABLE.sub(lambda match: f"{_MARK}{match.group(1)}{_MARK}", text)
    raw = parse_yaml(path, marked) or {}
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "", "expected a mapping at the top level")
    return raw


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Letters, digits and hyphens only, so that YAML reads a marked ${NAME} as it would
# read a word, in any kind of scalar; no variable's name holds a hyphen.
_MARK = "env-var-6a1f-"
_MARKED = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_]*){_MARK}")


def _substituted(value: Any, field: str, path: Path) -> Any:
    """`value` read from `path`, with each marked ${NAME} replaced by the environment
    variable NAME. One that is not set, or set empty (a line of the env file left
    `KEY=`), is an error, found when the file is read rather than by the first alarm
    sent with an unset key."""
    if isinstance(value, str):

        def variable(match: re.Match[str]) -> str:
            name = match.group(1)
            found = os.environ.get(name)
            if not found:
                said = "is empty" if found is not None else "is set"
                raise ConfigError(
                    str(path),
                    field,
                    f"${{{name}}}: no environment variable {name} {said}"
                    if found is None
                    else f"${{{name}}}: the environment variable {name} {said}",
                )
            return found

        return _MARKED.sub(variable, value)
    if isinstance(value, dict):
        return {
            _substituted(key, field, path): _substituted(
                item, f"{field}.{key}" if field else str(key), path
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_substituted(item, f"{field}.{i}", path) for i, item in enumerate(value)]
    return value


_FIELD_PATH = re.compile(r"[\w\-]+(\[\d+\])?(\.[\w\-]+(\[\d+\])?)*")


def config_error(file: str, exc: ValidationError) -> ConfigError:
    """The first problem of a pydantic error, as a ConfigError naming the field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "value_error":
        # A check across fields names the field itself: "routes[0].escalation: ...";
        # any other ": " is in the problem, or in the value it quotes.
        inner, colon, problem = str(first["ctx"].get("error", "")).partition(": ")
        if colon and _FIELD_PATH.fullmatch(inner):
            field = ".".join(part for part in (field, inner) if part)
            first = {**first, "msg": problem}
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[1:]
    )
    message = first["msg"] + (f" (also {problems})" if problems else "")
    return ConfigError(file, field, message)


def _resolve_paths(config: GatewayConfig, base: Path) -> GatewayConfig:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    outbox = config.outbox.model_copy(update={"path": resolve(config.outbox.path)})
    update: dict[str, object] = {
        "outbox": outbox,
        "profiles_dir": resolve(config.profiles_dir),
        "rules_dir": resolve(config.rules_dir),
    }
    if config.registry_file is not None:
        update["registry_file"] = resolve(config.registry_file)
    if config.mqtt is not None and config.mqtt.tls is not None:
        tls = config.mqtt.tls
        files = {
            name: resolve(path)
            for name in ("ca_file", "cert_file", "key_file")
            if (path := getattr(tls, name)) is not None
        }
        update["mqtt"] = config.mqtt.model_copy(update={"tls": tls.model_copy(update=files)})
    return config.model_copy(update=update)
