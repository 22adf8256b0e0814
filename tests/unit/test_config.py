from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gateway import PROJECT_ROOT
from gateway.cli import main
from gateway.config import MqttConfig, filters_overlap, load_config, load_status_config
from gateway.decode.decoder import CODECS
from gateway.decode.profile import load_profiles
from gateway.errors import ConfigError
from gateway.registry import load_registry
from gateway.textfile import parse_yaml

EXAMPLE = PROJECT_ROOT / "deploy" / "gateway.example.yaml"


def token(role: str, more: str) -> str:
    """A config of one API token of `role`, with `more` of its fields."""
    return f"api: {{tokens: [{{name: d, role: {role}, token: token-0123456789abcdef, {more}}}]}}"


@pytest.mark.usefixtures("example_secrets")
def test_the_shipped_example_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "device profiles: 5" in out
    assert "registered devices: 5" in out


def test_relative_paths_and_environment_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_SECRET", "s3cret")
    path = tmp_path / "gw.yaml"
    path.write_text("mqtt: {username: gw, password: ${MQTT_SECRET}}\noutbox: {path: data/o.db}\n")
    config = load_config(path)
    assert config.mqtt is not None and config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    assert config.outbox.path == tmp_path / "data" / "o.db"


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("mqtt: {port: 99999}", "mqtt.port", "less than or equal to 65535"),
        ("mqtt: {prot: 1}", "mqtt.prot", "Extra inputs"),
        ("influx: {url: http://x, api: v2}", "influx", "bucket"),
        ("ingest: {commit_interval_s: fast}", "ingest.commit_interval_s", "valid number"),
        ("- a list", "", "mapping"),
        ("mqtt: [unclosed", "", "not valid YAML"),
        ("mqtt: {topics: ['community/+/+/+/+']}", "mqtt", "alarm_topics"),
        # A database or page address the gateway could not use is found here, not by
        # the first write or notification link.
        ("influx: {url: '127.0.0.1:8086'}", "influx.url", "http:// or https:// address"),
        ("influx: {url: 'ftp://db:8086'}", "influx.url", "scheme should be 'http' or 'https'"),
        ("influx: {url: 'http://db:80860'}", "influx.url", "invalid port number"),
        ("influx: {url: ' http://db:8086'}", "influx.url", "(spaces)"),
        ("influx: {url: 'http://gw:s3cret@db:8086'}", "influx.url", "influx.password"),
        ("influx: {url: 'http://db:8086?u=gw&p=s3cret'}", "influx.url", "influx.password"),
        # Built at the first write, the backoff would end the gateway at every start.
        (
            "influx: {url: 'http://db:8086', backoff_max_s: 0.2}",
            "influx",
            "backoff_max_s (0.2) must be at least backoff_initial_s (0.5)",
        ),
        # Sent in a header, which takes ASCII alone: every write would fail.
        (
            "influx: {url: 'http://db:8086', api: v2, bucket: b, token: 'abc’def-0123'}",
            "influx.token",
            "character 4 of the token is U+2019, which no token has",
        ),
        # A value quoted in the problem is not taken for a field's name.
        ("influx: {url: 'http: //db:8086'}", "influx.url", "got 'http: //db:8086'"),
        ("api: {public_url: 'gw.example'}", "api.public_url", "http:// or https:// address"),
        ("mqtt: {host: ''}", "mqtt.host", "at least 1 character"),
        ("retention: {alerts_days: 0}", "retention.alerts_days", "greater than or equal to 1"),
        ("retention: {audit_days: forever}", "retention.audit_days", "valid integer"),
        (
            "retention: {alerts_days: 1000000000000}",
            "retention.alerts_days",
            "less than or equal to 36500",
        ),
        # Filters the broker would refuse, so that no subscription could be made.
        ("mqtt: {topics: ['community/#/x']}", "mqtt.topics", "# must be a whole level"),
        ("mqtt: {topics: ['community/b+/x']}", "mqtt.topics", "+ must be a whole level"),
        ("mqtt: {alarm_topics: ['']}", "mqtt.alarm_topics", "it is empty"),
        ("mqtt: {topics: ['$share//community/+']}", "mqtt.topics", "with a group name"),
        # Any link posted to a group chat is a sample to guess a short secret from.
        ("api: {link_secret: x}", "api.link_secret", "at least 32 characters"),
        ("api: {link_secret: change-me}", "api.link_secret", "at least 32 characters"),
        ("api: {link_secret: '12345678'}", "api.link_secret", "at least 32 characters"),
        # uvicorn would take a misspelt proxy for a name that matches no client.
        ("api: {trusted_proxies: [gw-proxy]}", "api.trusted_proxies", "not an IP address"),
        ("api: {trusted_proxies: [10.0.0.1/24]}", "api.trusted_proxies", "not an IP address"),
        # A desk's communities, named as the topics and the registry name them.
        (
            token("operator", "communities: [HGY]"),
            "api.tokens.0.communities.0",
            "should match pattern '^[a-z0-9-]{1,32}$'",
        ),
        (token("operator", "communities: hgy"), "api.tokens.0.communities", "valid tuple"),
        (
            token("operator", "communities: []"),
            "api.tokens.0.communities",
            "operator 'd' needs at least one, or leave it out for all of them",
        ),
        (
            token("admin", "communities: [hgy]"),
            "api.tokens.0.communities",
            "admin 'd' sees every community",
        ),
        (
            token("grid_worker", "cells: [{community: hgy}], communities: [hgy]"),
            "api.tokens.0.communities",
            "grid worker 'd' is limited by their cells",
        ),
    ],
)
def test_a_bad_config_names_the_file_the_field_and_the_problem(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert problem in info.value.problem


def test_check_exits_non_zero_naming_the_profile_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "smoke.yaml").write_text(
        "device_type: smoke_detector\ntopics: ['community/+/smoke_detector/+/+']\nperiod_s: 60\n"
        "telemetry:\n  measurement: smoke\n  fields:\n    battery_pct: {type: int, min: 100, max: 0}\n"
    )
    config = tmp_path / "gw.yaml"
    config.write_text(f"profiles_dir: {profiles}\n")
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(profiles / "smoke.yaml") in err
    assert "telemetry.fields.battery_pct" in err
    assert "min 100.0 is greater than max 0.0" in err


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ("telemetry: {measurement: x, fields: {time: {type: int}}}", "telemetry.fields.time"),
        ("telemetry: {measurement: x, fields: {building: {type: string}}}",
         "telemetry.fields.building"),
        ("telemetry: {measurement: x, fields: {v: {type: int}}, parts: {field: ports, key: port,"
         " measurement: y, fields: {port: {type: int}}}}", "telemetry.parts.fields.port"),
        ("telemetry: {measurement: x, fields: {v: {type: int}}}\n"
         "events: {measurement: e, kinds: [k], fields: {count: {type: int}}}", "events.fields.count"),
    ],
)  # fmt: skip
def test_a_profile_field_named_as_a_tag_or_influxdb_time_is_refused(
    tmp_path: Path, fields: str, field: str
) -> None:
    # InfluxDB 1.x drops a field named time without an error: its values would be lost.
    (tmp_path / "x.yaml").write_text(f"device_type: x\ntopics: [a/b]\nperiod_s: 1\n{fields}\n")
    with pytest.raises(ConfigError) as info:
        load_profiles(tmp_path, CODECS)
    assert (info.value.file, info.value.field) == (str(tmp_path / "x.yaml"), field)
    assert "is InfluxDB's time or a tag of the series" in info.value.problem


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        ("community/+/x+/+/+", "+ must be a whole level"),
        ("community/#/x", "# must be a whole level, and the last"),
        ("/community/+", "it begins with /"),
    ],
)
def test_a_profile_topic_the_broker_would_refuse_is_named(
    tmp_path: Path, topic: str, problem: str
) -> None:
    (tmp_path / "x.yaml").write_text(
        f"device_type: x\ntopics: ['{topic}']\nperiod_s: 1\n"
        "telemetry: {measurement: x, fields: {v: {type: int}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_profiles(tmp_path, CODECS)
    assert info.value.file == str(tmp_path / "x.yaml")
    assert f"topic {topic!r} is not a valid MQTT topic filter: {problem}" in info.value.problem


def test_unknown_codec_and_missing_profile_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device profile folder not found"):
        load_profiles(tmp_path / "nowhere", CODECS)
    (tmp_path / "x.yaml").write_text(
        "device_type: x\ncodec: morse\ntopics: [a/b]\nperiod_s: 1\n"
        "telemetry: {measurement: x, fields: {v: {type: int}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_profiles(tmp_path, CODECS)
    assert (info.value.field, info.value.file) == ("codec", str(tmp_path / "x.yaml"))


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ("sd 1,smoke_detector,hgy,,", "line 2 (sd 1): device_id", "pattern"),
        ("sd-1,smoke_detector,HGY,,", "line 2 (sd-1): community", "pattern"),
        ("sd-1,smoke_detector,hgy,12345,", "line 2 (sd-1): imei", "pattern"),
        ("mh-1,manhole_cover,hgy,,-5", "line 2 (mh-1): well_depth_cm", "greater than 0"),
    ],
)
def test_a_bad_registry_row_names_the_line_and_field(
    tmp_path: Path, row: str, field: str, problem: str
) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(f"device_id,device_type,community,imei,well_depth_cm\n{row}\n")
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert info.value.field == field
    assert problem in info.value.problem


def test_a_registered_device_of_a_type_no_profile_has_is_named_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each of its messages, a fire alarm among them, would be refused as not of its type.
    registry = tmp_path / "devices.csv"
    registry.write_text(
        "device_id,device_type,community\nsd-1,smoke_detector,hgy\nsd-2,smoke_detecter,hgy\n"
    )
    config = tmp_path / "gw.yaml"
    config.write_text("mqtt: null\nregistry_file: devices.csv\n")
    assert main(["check", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"config error: {registry}: line 3 (sd-2): device_type: no device profile is of type "
        "'smoke_detecter'; known: ['bracelet', 'charging_shed', 'manhole_cover', "
        "'smoke_detector']\n"
    )


def test_registry_rejects_duplicates_and_unknown_columns(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text("device_id,device_type,community\nsd-1,smoke_detector,hgy\nsd-1,bracelet,hgy\n")
    with pytest.raises(ConfigError, match="also at line 2"):
        load_registry(path)
    path.write_text("device_id,device_type,community,colour\n")
    with pytest.raises(ConfigError, match="unknown column"):
        load_registry(path)


def test_registry_in_yaml_with_contacts(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(
        "devices:\n"
        "  - {device_id: br-1, device_type: bracelet, community: hgy, lives_alone: true,\n"
        "     emergency_contacts: [{name: 张丽, phone: '13987654321'}]}\n"
    )
    (device,) = load_registry(path).devices()
    assert device.lives_alone is True
    assert device.emergency_contacts[0].name == "张丽"
    csv = load_registry(PROJECT_ROOT / "deploy" / "devices.example.csv")
    wearer = csv.get("huguangyuan", "br-hgy-0001")
    assert wearer is not None and [c.phone for c in wearer.emergency_contacts] == [
        "+8613987654321",
        "+8637112345678",
    ]
    assert csv.by_imei("860425041234563") is not None


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("community/+/+/+/event", "community/+/+/+/+", True),
        ("community/+/+/+/event", "community/+/+/+/telemetry", False),
        ("community/+/+/+/event", "community/#", True),
        ("community/hgy/+/+/event", "community/+/bracelet/+/+", True),
        ("community/hgy/+/+/event", "community/yxg/+/+/+", False),
        ("community/+/+/+/event", "vendor/acme-smoke/+/up", False),
        ("a/#", "a", True),
        ("a/+", "a", False),
        ("$share/gw/community/+/+/+/event", "community/+/+/+/+", True),
    ],
)
def test_topic_filters_overlap_when_some_topic_matches_both(
    first: str, second: str, overlap: bool
) -> None:
    assert filters_overlap(first, second) is overlap
    assert filters_overlap(second, first) is overlap


def test_the_default_lanes_take_every_kind_of_the_contract_once() -> None:
    config = MqttConfig()
    for kind in ("telemetry", "event", "status"):
        topic = f"community/hgy/bracelet/br-1/{kind}"
        lanes = [
            any(filters_overlap(f, topic) for f in config.topics),
            any(filters_overlap(f, topic) for f in config.alarm_topics),
        ]
        assert lanes.count(True) == 1, kind
    assert any(filters_overlap(f, "vendor/acme-smoke/860000000000001/up") for f in config.topics)


@pytest.mark.parametrize(
    ("topics", "taken"),
    [
        (None, False),  # the default topics: telemetry, status and the vendor frames
        (["community/+/+/+/+", "vendor/acme-smoke/+/up"], True),
        (["community/hgy/+/+/#"], True),
    ],
)
def test_alarm_topics_set_empty_needs_topics_that_take_the_events(
    tmp_path: Path, topics: list[str] | None, taken: bool
) -> None:
    # Everything on one connection: unless that one takes the events, every SOS, fall
    # and fire alarm would reach no connection at all.
    mqtt: dict[str, object] = {"alarm_topics": []}
    if topics is not None:
        mqtt["topics"] = topics
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({"mqtt": mqtt}))
    if taken:
        load_config(path)
        return
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert (error.value.file, error.value.field) == (str(path), "mqtt.alarm_topics")
    assert "no SOS, fall or fire alarm would be heard" in error.value.problem


def test_addresses_are_kept_as_written(tmp_path: Path) -> None:
    # Parsed, a bare host would gain a slash, and the paths appended to it would double it.
    path = tmp_path / "gw.yaml"
    path.write_text(
        "influx: {url: 'http://127.0.0.1:8086'}\napi: {public_url: 'https://gw.example/centre'}\n"
    )
    config = load_config(path)
    assert config.influx is not None and config.influx.url == "http://127.0.0.1:8086"
    assert config.api is not None and config.api.public_url == "https://gw.example/centre"


def test_shared_and_wildcard_filters_are_taken() -> None:
    config = MqttConfig(
        topics=("$share/gateways/community/+/+/+/telemetry", "vendor/acme-smoke/#", "#"),
        alarm_topics=(),
        status_topic=None,
    )
    assert config.topics[0].startswith("$share/gateways/")


def test_the_status_topic_has_the_client_id_and_is_no_filter_and_none_of_the_subscribed() -> None:
    assert MqttConfig(client_id="gw-hgy").status == "gateway/gw-hgy/status"
    assert MqttConfig(status_topic="site/{client_id}").status == "site/community-gateway"
    assert MqttConfig(status_topic=None).status is None
    for topic, problem in (
        ("gateway/+/status", "has no wildcards"),
        ("$SYS/gateway", "does not begin with \\$"),
        ("", "it is empty"),
        ("community/hgy/gateway/gw/status", "is matched by 'community/\\+/\\+/\\+/status'"),
    ):
        with pytest.raises(ValidationError, match=f"status_topic: .*{problem}"):
            MqttConfig(status_topic=topic)


def test_a_variable_is_replaced_in_the_values_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Characters that mean something to YAML stay in the secret, whatever the style.
    monkeypatch.setenv("MQTT_SECRET", "a#b: c'd\"e")
    monkeypatch.setenv("MQTT_USER", "gw")
    path = tmp_path / "gw.yaml"
    path.write_text(
        "# ${NOT_SET} in a comment is not looked up\n"
        "mqtt: {username: ${MQTT_USER}, password: ${MQTT_SECRET}}\n"
        'influx:\n  url: http://db:8086\n  password: "${MQTT_SECRET}"\n'
    )
    config = load_config(path)
    assert config.mqtt is not None and config.mqtt.password is not None
    assert config.mqtt.username == "gw"
    assert config.mqtt.password.get_secret_value() == "a#b: c'd\"e"
    assert config.influx is not None and config.influx.password is not None
    assert config.influx.password.get_secret_value() == "a#b: c'd\"e"


def test_a_variable_that_is_not_set_is_named_with_its_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WECOM_KEY_NOT_SET", raising=False)
    (tmp_path / "notify.yaml").write_text(
        "channels:\n  grid: {type: wecom, key: '${WECOM_KEY_NOT_SET}'}\n"
        "routes: [{escalation: e}]\nescalations: {e: [{after_s: 0, to: [on_duty]}]}\n"
    )
    path = tmp_path / "gw.yaml"
    path.write_text("mqtt: null\nnotify: notify.yaml\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.file == str(tmp_path / "notify.yaml")
    assert error.value.field == "channels.grid.key"
    assert "no environment variable WECOM_KEY_NOT_SET is set" in error.value.problem


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("gw.yaml", ""),
        ("devices.csv", "(from a spreadsheet: as 'CSV UTF-8')"),
        ("profiles/smoke_detector.yaml", ""),
        ("rules/smoke_detector.yaml", ""),
    ],
)
def test_a_file_not_in_utf8_is_named_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, how: str
) -> None:
    # A registry saved by a spreadsheet on a Chinese desktop comes out in GBK.
    for folder in ("profiles", "rules"):
        source = PROJECT_ROOT / ("device_profiles" if folder == "profiles" else "alert_rules")
        (tmp_path / folder).mkdir()
        for path in source.glob("*.yaml"):
            (tmp_path / folder / path.name).write_bytes(path.read_bytes())
    (tmp_path / "devices.csv").write_text(
        "device_id,device_type,community,building\nsd-1,smoke_detector,hgy,一号楼\n"
    )
    (tmp_path / "gw.yaml").write_text(
        "mqtt: null\nprofiles_dir: profiles\nrules_dir: rules\nregistry_file: devices.csv\n"
        "# 湖光苑社区\n"
    )
    assert main(["check", "--config", str(tmp_path / "gw.yaml")]) == 0
    capsys.readouterr()
    changed = tmp_path / name
    changed.write_bytes(changed.read_text(encoding="utf-8").encode("gbk"))
    assert main(["check", "--config", str(tmp_path / "gw.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {changed}: not UTF-8 text (byte 0x"), err
    assert err.rstrip().endswith(f"save it as UTF-8 {how}".rstrip()), err


@pytest.mark.parametrize(
    "broken",
    [
        "timezone: Asia/Beijing\n",
        "api: {tokens: [{name: a, role: admin, token: short}]}\n",
        "influx: {url: 'http://db:8086', password: '${INFLUX_PASSWORD_NOT_SET}'}\n",
        "notify: missing-policy.yaml\n",
    ],
)
def test_a_refused_config_still_gives_the_broker_and_outbox_to_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    monkeypatch.setenv("MQTT_SECRET", "s3cret")
    monkeypatch.delenv("INFLUX_PASSWORD_NOT_SET", raising=False)
    path = tmp_path / "gw.yaml"
    path.write_text(
        "mqtt: {host: broker.local, username: gw, password: '${MQTT_SECRET}'}\n"
        "outbox: {path: data/o.db}\n" + broken
    )
    with pytest.raises(ConfigError):
        load_config(path)
    sections = load_status_config(path)
    assert sections is not None and sections.mqtt is not None
    assert sections.mqtt.host == "broker.local"
    assert sections.mqtt.password is not None
    assert sections.mqtt.password.get_secret_value() == "s3cret"
    assert sections.outbox.path == tmp_path / "data" / "o.db"


def test_a_refused_config_gives_the_policy_that_is_sound_alone_to_tell_people_with(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.yaml"
    policy = (
        "channels: {robot: {type: webhook, url: 'http://127.0.0.1:9/hook'}}\n"
        "receivers: [{name: office, channels: [robot]}]\n"
        "routes: [{escalation: all}]\n"
        "escalations: {all: [{after_s: 0, to: [office]}]}\n"
        "fallback_receivers: [office]\n"
    )
    (tmp_path / "notify.yaml").write_text(policy)
    base = "mqtt: {host: broker.local}\nnotify: notify.yaml\nrules_dir: 7\n"
    path.write_text(base + "timezone: Asia/Urumqi\n")
    sections = load_status_config(path)
    assert sections is not None and sections.notify is not None
    assert [r.name for r in sections.notify.fault_receivers()] == ["office"]
    assert sections.timezone == "Asia/Urumqi"
    # A time zone refused: the default one.
    path.write_text(base + "timezone: Asia/Beijing\n")
    sections = load_status_config(path)
    assert sections is not None and sections.notify is not None
    assert sections.timezone == "Asia/Shanghai"
    # A policy refused: the broker and outbox all the same, and nobody to tell.
    (tmp_path / "notify.yaml").write_text(policy.replace("[office]}]", "[ofice]}]"))
    sections = load_status_config(path)
    assert sections is not None and sections.mqtt is not None
    assert sections.notify is None


@pytest.mark.parametrize(
    "text",
    [
        "mqtt: {port: 99999}\n",
        "mqtt: {host: b, password: '${MQTT_SECRET_NOT_SET}'}\n",
        "mqtt: {host: b, tls: {ca_file: no-such-ca.pem}}\n",
        "outbox: {max_bytes: lots}\n",
        "mqtt: [unclosed\n",
    ],
)
def test_a_config_whose_broker_or_outbox_is_wrong_gives_nothing_to_say_it_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.delenv("MQTT_SECRET_NOT_SET", raising=False)
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)
    assert load_status_config(path) is None


def test_a_long_link_secret_and_proxy_addresses_and_networks_are_taken(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "api:\n  link_secret: 0123456789abcdef0123456789abcdef\n"
        "  trusted_proxies: [10.0.0.5, 10.0.1.0/24, 'fd00::/8']\n"
    )
    api = load_config(path).api
    assert api is not None and api.link_secret is not None
    assert api.trusted_proxies == ("10.0.0.5", "10.0.1.0/24", "fd00::/8")
    path.write_text("api: {}\n")
    api = load_config(path).api
    # By default the proxy on the box itself, and no other.
    assert api is not None and api.trusted_proxies == ("127.0.0.1",)


def test_a_desk_limited_to_some_communities_is_taken_and_unset_means_all(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "api: {tokens: [{name: desk, role: operator, token: desk-token-0123456789,"
        " communities: [hgy, lgy-2]},"
        " {name: all, role: operator, token: all-desks-token-0123456789}]}\n"
    )
    config = load_config(path)
    assert config.api is not None
    desk, everywhere = config.api.tokens
    assert (desk.communities, everywhere.communities) == (("hgy", "lgy-2"), None)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        # MQTT's keep alive is two bytes, its session expiry four: the CONNECT packet
        # cannot carry more, so `run` fails at every connect where `check` said ok.
        ("mqtt: {keepalive_s: 70000}", "mqtt.keepalive_s"),
        ("mqtt: {session_expiry_s: 4294967296}", "mqtt.session_expiry_s"),
    ],
)
def test_mqtt_numbers_the_protocol_cannot_carry_are_refused(
    tmp_path: Path, text: str, field: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.field) == (str(path), field)


def test_a_grid_workers_cell_where_no_device_is_registered_is_named_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `area: eats` for east: the worker's page and API show no alert, ever; a roster's
    # cell with the same typo is refused (notify.policy.unreachable), a token's is not.
    (tmp_path / "devices.csv").write_text(
        "device_id,device_type,community,area\nsd-1,smoke_detector,hgy,east\n", encoding="utf-8"
    )
    config = tmp_path / "gw.yaml"
    config.write_text(
        "mqtt: null\nregistry_file: devices.csv\n"
        "api:\n  tokens:\n"
        "    - {name: wang-fang, role: grid_worker, token: worker-token-0123456789,\n"
        "       cells: [{community: hgy, area: eats}]}\n"
    )
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "api.tokens" in err and "eats" in err


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        # A wearer's emergency contact written as a mapping, its phone left out: named,
        # not a KeyError traceback.
        ("devices.yaml",
         "devices:\n"
         "  - {device_id: br-1, device_type: bracelet, community: hgy,\n"
         "     emergency_contacts: [{name: 张丽}]}\n",
         ("devices[0]", "emergency_contacts")),
        # One unbalanced quote (a building typed as "3号楼) would have the csv module read
        # the rest of the sheet as that one cell: sd-2 and sd-3 would vanish.
        ("devices.csv",
         "device_id,device_type,community,building\n"
         'sd-1,smoke_detector,hgy,"3号楼\n'
         "sd-2,smoke_detector,hgy,4号楼\n"
         "sd-3,smoke_detector,hgy,5号楼\n",
         ("line 2",)),
        # A second emergency contact after a comma instead of a semicolon: the extra
        # cell would be dropped without a word, and that contact never told of a fall.
        ("devices.csv",
         "device_id,device_type,community,wearer_name,wearer_phone,emergency_contacts\n"
         "br-1,bracelet,hgy,张三,13812345678,李四:13987654321,王五:13700001111\n",
         ("line 2",)),
    ],
)  # fmt: skip
def test_a_registry_that_would_lose_devices_or_contacts_is_refused(
    tmp_path: Path, name: str, text: str, named: tuple[str, ...]
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert info.value.file == str(path)
    assert all(part in info.value.field for part in named), info.value


def test_a_setting_written_twice_in_the_config_file_is_refused(tmp_path: Path) -> None:
    # YAML keeps the last: the broker's second `mqtt:` would silently take the place of
    # the first, with its login and TLS.
    path = tmp_path / "gw.yaml"
    path.write_text("mqtt:\n  host: broker.local\ntimezone: Asia/Shanghai\nmqtt: null\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.field) == (str(path), "mqtt")
    assert "lines 1 and 4" in info.value.problem


def test_a_yaml_merge_may_be_overridden_by_the_mapping_s_own_keys(tmp_path: Path) -> None:
    # `<<: *defaults` then a key of its own is YAML's way to override, not a key twice.
    text = "a: &d {x: 1, y: 2}\nb:\n  <<: *d\n  y: 3\n"
    assert parse_yaml(tmp_path / "f.yaml", text) == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}


# A landline written without quotes or a dash (Zhengzhou, 0371 66123456): its digits are
# all 0-7, so YAML 1.1 would read an octal number, 4191725358, itself a valid number, a
# landline of Liaoyang (0419): the alarms would call a stranger.
UNQUOTED_LANDLINE = "037166123456"
POLICY = """\
channels:
  sms: {type: console}
receivers:
  - {name: community-office, phone: %s, channels: [sms]}
routes:
  - {escalation: all}
escalations:
  all:
    - {after_s: 0, to: [community-office]}
"""


def test_a_landline_written_without_quotes_in_the_policy_is_the_landline(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "mqtt: null\nnotify:\n"
        + "".join(f"  {line}\n" for line in (POLICY % UNQUOTED_LANDLINE).splitlines()),
        encoding="utf-8",
    )
    loaded = load_config(config)
    assert loaded.notify is not None
    assert loaded.notify.receivers[0].phone == "+8637166123456"
    # Numbers the config wants still read as numbers.
    assert parse_yaml(config, "port: 08080\nratio: 0.5\nnone: 0") == {
        "port": "08080", "ratio": 0.5, "none": 0,
    }  # fmt: skip


def test_check_refuses_require_registered_without_a_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only registered devices taken in, and none registered: every message would be
    # refused, fire alarms and SOS among them.
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"mqtt: null\noutbox: {{path: {tmp_path / 'outbox.sqlite3'}}}\n"
        "ingest: {require_registered: true}\n",
        encoding="utf-8",
    )
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "require_registered" in err


def test_check_refuses_an_operator_token_limited_to_a_community_with_no_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only registered devices taken in: a desk limited to a misspelt community would see
    # nothing, for good.
    registry = tmp_path / "devices.csv"
    registry.write_text("device_id,device_type,community\nsd-1,smoke_detector,hgy\n", "utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"mqtt: null\noutbox: {{path: {tmp_path / 'outbox.sqlite3'}}}\n"
        f"registry_file: {registry}\n"
        "ingest: {require_registered: true}\n"
        "api:\n  tokens:\n"
        "    - {name: desk-hgy, role: operator, token: desk-token-0123456789, "
        "communities: [hgyy]}\n",
        encoding="utf-8",
    )
    assert main(["check", "--config", str(config)]) == 2
    assert "api.tokens[0].communities" in capsys.readouterr().err
