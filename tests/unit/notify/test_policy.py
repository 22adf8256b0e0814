from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import gateway.notify.router as router_module
import gateway.registry as registry_module
from gateway import PROJECT_ROOT
from gateway.app import check_policy
from gateway.cli import main
from gateway.config import GatewayConfig, load_config
from gateway.decode.decoder import CODECS
from gateway.decode.profile import load_profiles
from gateway.decode.record import DeviceRef
from gateway.errors import ConfigError
from gateway.notify.policy import NotifyPolicy, unreachable
from gateway.notify.router import Router
from gateway.registry import RegisteredDevice, Registry, load_registry
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertEntry
from gateway.rules.rule import load_rules

DEPLOY = PROJECT_ROOT / "deploy"
# The example policy takes its channels' keys and secrets from the environment.
pytestmark = pytest.mark.usefixtures("example_secrets")
# Wednesday 2026-01-07, 09:00 and 21:00 in Shanghai.
WED_0900 = 1_767_747_600_000
WED_2100 = WED_0900 + 12 * 3600 * 1000


def config_with(tmp_path: Path, notify: str) -> Path:
    (tmp_path / "notify.yaml").write_text(notify, encoding="utf-8")
    path = tmp_path / "gateway.yaml"
    path.write_text("mqtt: null\nnotify: notify.yaml\n", encoding="utf-8")
    return path


def entry(device_id: str, severity: str = "critical") -> AlertEntry:
    return AlertEntry(
        alert_id="a", rule="fall", title="Fall", severity=severity, life_safety=True,
        community="huguangyuan", device_type="bracelet", device_id=device_id, port=None,
        state=AlertState.FIRING, started_ms=0, updated_ms=0, fired_ms=0, acknowledged_by=None,
        acknowledged_ms=None, arrived_by=None, arrived_ms=None, assigned_to=None,
        resolved_ms=None, closed_by=None, closed_ms=None, note=None,
    )  # fmt: skip


def test_the_example_policy_routes_by_severity_and_duty_roster(tmp_path: Path) -> None:
    path = config_with(tmp_path, (DEPLOY / "notify.example.yaml").read_text(encoding="utf-8"))
    config = load_config(path)
    assert config.notify is not None
    registry = load_registry(DEPLOY / "devices.example.csv")
    router = Router(config.notify, registry, ZoneInfo("Asia/Shanghai"))
    fall = entry("br-hgy-0001")
    assert [r.escalation for r in router.routes(fall)] == ["critical", "platform"]
    assert [r.escalation for r in router.routes(entry("br-hgy-0001", "info"))] == ["routine"]
    first = config.notify.escalations["critical"][0]
    # 东区 by day: its own grid worker; the wearer's family by SMS, then a call.
    targets = router.targets(first, fall, WED_0900)
    assert [t.receiver for t in targets] == [
        "wang-fang", "contact:+8613987654321", "contact:+8637112345678",
    ]  # fmt: skip
    assert targets[1].channels == ("sms", "voice")
    # At night the community's night duty.
    assert router.targets(first, fall, WED_2100)[0].receiver == "zhao-min"


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ("- {after_s: 0, to: [on_duty, emergency_contacts]}",
         "escalations.critical[0].to", None),
        ("channels: [worker-app, grid-wecom, sms, backup-sms, voice], quiet",
         "receivers[0].channels", None),
    ],
)  # fmt: skip
def test_a_wrong_name_is_found_with_its_file_and_field(
    tmp_path: Path, change: str, field: str, problem: str | None
) -> None:
    text = (DEPLOY / "notify.example.yaml").read_text(encoding="utf-8")
    broken = change.replace("on_duty,", "on_dutty,").replace("grid-wecom,", "grid-wechat,")
    assert change in text
    path = config_with(tmp_path, text.replace(change, broken, 1))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.file == str(tmp_path / "notify.yaml")
    # The policy's own file names the field from its top.
    assert error.value.field == field
    assert "no receiver 'on_dutty'" in str(error.value) or "no channel 'grid-wechat'" in str(
        error.value
    )


def test_a_channel_address_that_cannot_be_sent_to_is_found_with_its_file_and_field(
    tmp_path: Path,
) -> None:
    text = (DEPLOY / "notify.example.yaml").read_text(encoding="utf-8")
    address = "https://platform.example.gov.cn/api/community-alerts"
    assert address in text
    path = config_with(tmp_path, text.replace(address, "platform.example.gov.cn/api", 1))
    with pytest.raises(ConfigError, match="http:// or https:// address") as error:
        load_config(path)
    assert error.value.file == str(tmp_path / "notify.yaml")
    assert error.value.field == "channels.city-platform.webhook.url"


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ("cell: {community: huguangyuan, area: 东区}", "rosters[0].cell",
         "no registered device is in huguangyuan/西区"),
        ("cell: {community: huguangyuan}", "rosters[1].cell",
         "no registered device is in huguangyun"),
        ("match: {severities: [major]}", "routes[2].match.rules", "no rule is named 'fire_alrm'"),
        ("match: {severities: [major]}", "routes[2].match.device_types",
         "no device profile is of type 'bracelets'"),
        ("match: {severities: [major]}", "routes[2].match.areas",
         "no registered device is in '西区'"),
    ],
)  # fmt: skip
def test_a_policy_naming_what_the_gateway_does_not_have_is_refused_by_check(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: str,
    field: str,
    problem: str,
) -> None:
    # A typo there would leave a cell with nobody on duty, or send a route's alerts
    # down another chain: to the fallback receivers, or to nobody.
    broken = {
        "rosters[0].cell": change.replace("东区", "西区"),
        "rosters[1].cell": change.replace("huguangyuan", "huguangyun"),
        "routes[2].match.rules": "match: {rules: [fire_alrm]}",
        "routes[2].match.device_types": "match: {device_types: [bracelets]}",
        "routes[2].match.areas": "match: {areas: [西区]}",
    }[field]
    text = (DEPLOY / "notify.example.yaml").read_text(encoding="utf-8")
    assert change in text
    path = config_with(tmp_path, text.replace(change, broken, 1))
    with path.open("a", encoding="utf-8") as config:
        config.write(f"registry_file: {DEPLOY / 'devices.example.csv'}\n")
        config.write("ingest: {require_registered: true}\n")
    assert main(["check", "--config", str(path)]) == 2
    assert f"config error: {tmp_path / 'notify.yaml'}: {field}: {problem}" in (
        capsys.readouterr().err
    )


def test_a_community_may_have_devices_the_registry_does_not_list(tmp_path: Path) -> None:
    # Devices missing from the registry are taken, with only their community known.
    text = (DEPLOY / "notify.example.yaml").read_text(encoding="utf-8")
    change = "cell: {community: huguangyuan}"
    path = config_with(tmp_path, text.replace(change, "cell: {community: unlisted}", 1))
    with path.open("a", encoding="utf-8") as config:
        config.write(f"registry_file: {DEPLOY / 'devices.example.csv'}\n")
    assert main(["check", "--config", str(path)]) == 0


def test_inline_policy_errors_name_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "mqtt: null\nnotify:\n  channels: {c: {type: console}}\n"
        "  receivers: [{name: a, channels: [c], quiet_hours: '25:00-07:00'}]\n"
        "  routes: [{escalation: e}]\n  escalations: {e: [{after_s: 0, to: [a]}]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="expected 'HH:MM-HH:MM'") as error:
        load_config(path)
    assert error.value.file == str(path)
    assert error.value.field == "notify.receivers.0.quiet_hours"


def test_unknown_channel_type_and_missing_secret(tmp_path: Path) -> None:
    path = config_with(
        tmp_path,
        "channels: {x: {type: pager}}\nroutes: [{escalation: e}]\n"
        "escalations: {e: [{after_s: 0, to: [on_duty]}]}\n",
    )
    with pytest.raises(ConfigError, match="does not match any of the expected tags") as error:
        load_config(path)
    assert error.value.field == "channels.x"
    path = config_with(
        tmp_path,
        "channels: {x: {type: dingtalk}}\nroutes: [{escalation: e}]\n"
        "escalations: {e: [{after_s: 0, to: [on_duty]}]}\n",
    )
    with pytest.raises(ConfigError, match="Field required") as error:
        load_config(path)
    assert error.value.field == "channels.x.dingtalk.access_token"


def test_a_route_naming_an_area_of_several_communities_must_name_its_community() -> None:
    # A district's installation: both communities have an area called east.
    registry = Registry(
        RegisteredDevice(device_id=f"sd-{n}", device_type="smoke_detector", community=c,
                         area="east", compound=compound, building=building)
        for n, (c, compound, building) in enumerate((("hgy", "lakeside", "3"),
                                                     ("lgy", "pine", "7")))
    )  # fmt: skip
    document = {
        "channels": {"console": {"type": "console"}},
        "receivers": [{"name": "hgy-east", "channels": ["console"]}],
        "routes": [{"match": {"areas": ["east"]}, "escalation": "east"}, {"escalation": "east"}],
        "escalations": {"east": [{"after_s": 0, "to": ["hgy-east"]}]},
    }
    policy = NotifyPolicy.model_validate(document)
    # hgy's east-area worker would be told of lgy's east area too.
    assert unreachable(policy, registry, (), (), all_registered=True) == (
        "routes[0].match.areas",
        "'east' is in several communities (hgy, lgy): name the one meant in "
        "routes[0].match.communities",
    )
    document["routes"][0]["match"]["communities"] = ["hgy"]  # type: ignore[index]
    named = NotifyPolicy.model_validate(document)
    assert unreachable(named, registry, (), (), all_registered=True) is None


@pytest.mark.parametrize(("key", "name"), [("areas", "west"), ("compounds", "pine")])
def test_a_route_naming_a_place_its_communities_do_not_have_is_refused(key: str, name: str) -> None:
    # hgy has no area west, no compound pine: lgy has. The route would never match, and
    # hgy's alerts meant for it would go down the next route.
    registry = Registry(
        RegisteredDevice(device_id="sd-1", device_type="smoke_detector", community=c,
                         area=area, compound=compound, building="3")
        for c, area, compound in (("hgy", "east", "lakeside"), ("lgy", "west", "pine"))
    )  # fmt: skip
    policy = NotifyPolicy.model_validate(
        {
            "channels": {"console": {"type": "console"}},
            "receivers": [{"name": "hgy-west", "channels": ["console"]}],
            "routes": [
                {"match": {"communities": ["hgy"], key: [name]}, "escalation": "west"},
                {"escalation": "west"},
            ],
            "escalations": {"west": [{"after_s": 0, "to": ["hgy-west"]}]},
        }
    )
    assert unreachable(policy, registry, (), (), all_registered=False) == (
        f"routes[0].match.{key}",
        f"no registered device of hgy is in {name!r}, which is in lgy",
    )


def test_receivers_phones_are_kept_in_e164_however_they_were_typed() -> None:
    written = ["+86 138 0000 0001", "0086 13800000002", "138-0000-0003", "0371-66123456"]
    policy = NotifyPolicy.model_validate(
        {
            "channels": {"sms": {"type": "console"}},
            "receivers": [
                {"name": f"r{index}", "phone": phone, "channels": ["sms"]}
                for index, phone in enumerate(written)
            ],
            "routes": [{"escalation": "e"}],
            "escalations": {"e": [{"after_s": 0, "to": ["r0"]}]},
        }
    )
    assert [r.phone for r in policy.receivers] == [
        "+8613800000001", "+8613800000002", "+8613800000003", "+8637166123456",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("phone", "why"),
    [("12345", "too short"), ("138001380001234", "too long"), ("138OO138OOO", "letters")],
)
def test_a_receiver_s_number_that_cannot_be_dialled_is_named_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], phone: str, why: str
) -> None:
    text = (DEPLOY / "notify.example.yaml").read_text(encoding="utf-8")
    written = 'name: wang-fang, display_name: 王芳, phone: "13800000001"'
    assert written in text
    path = config_with(tmp_path, text.replace(written, written.replace("13800000001", phone)))
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {tmp_path / 'notify.yaml'}: receivers.0.phone: ")
    assert "receiver 'wang-fang': expected a phone number such as 13800138000" in err
    assert f"got {phone!r}: {why}" in err


def test_a_contact_is_reached_however_their_number_was_written() -> None:
    # A link names an emergency contact by their number: one sent before the registry
    # kept numbers in E.164 names them as it had them then.
    policy = NotifyPolicy.model_validate(
        {
            "channels": {"sms": {"type": "console"}},
            "routes": [{"escalation": "e"}],
            "escalations": {"e": [{"after_s": 0, "to": ["emergency_contacts"]}]},
            "emergency_contact_channels": ["sms"],
        }
    )
    registry = load_registry(DEPLOY / "devices.example.csv")
    router = Router(policy, registry, ZoneInfo("Asia/Shanghai"))
    for receiver in ("contact:+8613987654321", "contact:13987654321",
                     "contact:139 8765 4321", "contact:0371-12345678"):  # fmt: skip
        assert router.reaches(receiver, DeviceRef("huguangyuan", "bracelet", "br-hgy-0001")), (
            receiver
        )
    assert not router.reaches(
        "contact:13700001111", DeviceRef("huguangyuan", "bracelet", "br-hgy-0001")
    )
    assert not router.reaches(
        "contact:13987654321", DeviceRef("huguangyuan", "smoke_detector", "sd-hgy-0001")
    )


def on_duty_policy(
    receivers: list[dict[str, Any]], rosters: list[dict[str, Any]]
) -> dict[str, Any]:
    """A policy that tells whoever is on duty in the alert's cell, else the office."""
    return {
        "channels": {"console": {"type": "console"}},
        "receivers": receivers,
        "rosters": rosters,
        "routes": [{"escalation": "grid"}],
        "escalations": {"grid": [{"after_s": 0, "to": ["on_duty"]}]},
        "fallback_receivers": ["office"],
    }


def test_checking_a_district_s_policy_looks_each_cell_up_rather_than_in_every_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `check`, the start and every `reload` (on the event loop, every alarm waiting)
    # check that each roster's and each grid worker's cell holds a registered device: a
    # district's 4,200 compound rosters, each compared with its 25,050 places, took 27 s.
    communities, compounds = 50, 20
    lines = ["device_id,device_type,community,area,compound,building"]
    receivers: list[dict[str, Any]] = [{"name": "office", "channels": ["console"]}]
    rosters: list[dict[str, Any]] = []
    tokens: list[dict[str, Any]] = []
    for c in range(communities):
        for k in range(compounds):
            lines.append(f"sd-{k},smoke_detector,c{c},a1,k{k},1")
            name = f"gw-{c}-{k}"
            cell = {"community": f"c{c}", "area": "a1", "compound": f"k{k}"}
            receivers.append({"name": name, "channels": ["console"]})
            rosters.append({"cell": cell, "shifts": [{"receiver": name, "hours": "00:00-23:59"}]})
            tokens.append({"name": name, "role": "grid_worker", "token": f"token-of-{name}-0123456",
                           "cells": [cell]})  # fmt: skip
    registry_file = tmp_path / "devices.csv"
    registry_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    policy = on_duty_policy(receivers, rosters)
    config = GatewayConfig.model_validate(
        {"mqtt": None, "outbox": {"path": tmp_path / "outbox.sqlite3"},
         "registry_file": registry_file, "notify": policy, "api": {"tokens": tokens}}
    )  # fmt: skip
    profiles = load_profiles(config.profiles_dir, CODECS)
    registry = load_registry(registry_file, profiles.device_types())
    rules = load_rules(config.rules_dir, profiles)
    places = len(registry.places())
    cells = communities * compounds
    assert places == cells == 1000
    compared = [0]
    original = registry_module.within

    def counting(cell: Any, place: Any) -> bool:
        compared[0] += 1
        return original(cell, place)

    monkeypatch.setattr(registry_module, "within", counting)
    check_policy(config, registry, rules, profiles)
    # About as many comparisons as cells (rosters' and tokens') and places, not their
    # product.
    assert compared[0] <= 10 * (2 * cells + places), f"{compared[0]} place comparisons"


def test_routing_one_alert_looks_at_its_own_community_s_rosters_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A flood of offline alerts (a carrier's outage) is planned in one round of the
    # notifier that never yields: with every roster of the district looked at for each
    # alert, 20,000 alerts took 9.2 s, no alarm told meanwhile.
    communities = 600
    receivers: list[dict[str, Any]] = [{"name": "office", "channels": ["console"]}]
    rosters: list[dict[str, Any]] = []
    for c in range(communities):
        for area in ("east", "west"):
            name = f"gw-{c}-{area}"
            receivers.append({"name": name, "channels": ["console"]})
            rosters.append(
                {
                    "cell": {"community": f"c{c}", "area": area},
                    "shifts": [{"receiver": name, "hours": "00:00-23:59"}],
                }
            )
    policy = NotifyPolicy.model_validate(on_duty_policy(receivers, rosters))
    device = RegisteredDevice(
        device_id="sd-1", device_type="smoke_detector", community="c7", area="east",
        compound="k1", building="3",
    )  # fmt: skip
    router = Router(policy, Registry([device]), ZoneInfo("Asia/Shanghai"))
    walked = [0]
    original: Callable[..., bool] = router_module._in_cell

    def counting(*args: Any) -> bool:
        walked[0] += 1
        return original(*args)

    monkeypatch.setattr(router_module, "_in_cell", counting)
    on_duty = router.on_duty(("c7", "east", "k1", "3"), "c7", WED_0900)
    assert [r.name for r in on_duty] == ["gw-7-east"]
    assert walked[0] <= 10, f"{walked[0]} rosters looked at for one alert of c7"
