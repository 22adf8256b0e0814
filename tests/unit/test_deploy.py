"""The files in deploy/: Docker Compose, Grafana provisioning, the systemd unit.

Docker cannot run here; the Compose file is checked for what the edge box relies on.
"""

from __future__ import annotations

import configparser
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml
from fastapi.routing import APIRoute

from gateway import PROJECT_ROOT
from gateway.api.health import router as health_router
from gateway.cli import main
from gateway.config import ApiConfig, load_config
from gateway.dashboards.query import PROVISIONED_DATASOURCE_UID

DEPLOY = PROJECT_ROOT / "deploy"
CONTAINER_ETC = "/etc/community-gateway/"
# The variable holding the address phones open, the base of every alert link, and one
# an installer would set: the box as phones on the community network reach it.
PUBLIC_URL = "GATEWAY_PUBLIC_URL"
PHONES_OPEN = "http://192.168.1.10:8080"
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def mounts(service: str) -> dict[str, str]:
    """Container path -> host path (relative to deploy/) or volume name."""
    found = {}
    for volume in compose()["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def env_example_names() -> set[str]:
    return {
        line.partition("=")[0]
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def variables(config_file: str) -> set[str]:
    """The ${NAME}s the values of a shipped config take (not those in its comments)."""
    raw = yaml.safe_load((DEPLOY / config_file).read_text())
    return {name for value in strings(raw) for name in VARIABLE.findall(value)}


def reachable_api(config_file: Path) -> ApiConfig:
    """The config's API, checked for what alert links and the board depend on."""
    api = load_config(config_file).api
    assert api is not None, "no api: the links in notifications would lead nowhere"
    # Links carry the address the installer set, not a default naming the box itself.
    assert api.public_url == PHONES_OPEN
    # Phones and the centre's proxy come from the network, never from the box itself.
    assert api.host in ("0.0.0.0", "::"), api.host
    assert {"admin", "operator"} <= {token.role for token in api.tokens}
    return api


def published_ports(service: str) -> dict[int, int]:
    """Container port -> host port, of the ports the Compose file publishes."""
    found = {}
    for entry in compose()["services"][service].get("ports", []):
        *_, host, container = str(entry).removesuffix("/tcp").split(":")
        found[int(container)] = int(host)
    return found


def test_every_service_restarts_and_keeps_its_state_in_a_named_volume() -> None:
    services = compose()["services"]
    assert set(services) == {"mosquitto", "influxdb", "grafana", "gateway"}
    named = set(compose()["volumes"])
    for name, service in services.items():
        assert service["restart"] in ("always", "unless-stopped"), name
        assert set(mounts(name).values()) & named, f"{name} keeps no state in a volume"


def test_bind_mounts_point_at_files_that_exist() -> None:
    for name in compose()["services"]:
        for source in mounts(name).values():
            if source.startswith("./") and not source.startswith(
                ("./mosquitto/passwd", "./mosquitto/certs", "./backup")
            ):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


@pytest.mark.usefixtures("example_secrets")
def test_the_debian_config_passes_check_and_serves_the_alert_links(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PUBLIC_URL, PHONES_OPEN)
    config = DEPLOY / "gateway.example.yaml"
    assert main(["check", "--config", str(config)]) == 0
    assert "registered devices: 5" in capsys.readouterr().out
    reachable_api(config)


@pytest.mark.parametrize("config_file", ["gateway.example.yaml", "gateway.compose.yaml"])
def test_the_configs_take_the_public_url_and_api_tokens_from_env_example(
    config_file: str,
) -> None:
    # env.example is what the installer fills in, for systemd as for Compose: a
    # variable missing from it is found at the first start, not at the install.
    assert variables(config_file) <= env_example_names()
    raw = yaml.safe_load((DEPLOY / config_file).read_text())["api"]
    assert raw["public_url"] == f"${{{PUBLIC_URL}}}"
    for token in raw["tokens"]:
        assert VARIABLE.fullmatch(token["token"]), f"{token['name']}: a token in the file"


@pytest.fixture
def container_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The gateway's config as its container sees it: /etc/community-gateway holds what
    the Compose file mounts there, and the environment what the Compose file gives it,
    and nothing else. A file or a secret the configs need but the Compose file does not
    give fails the config's loading as it would fail the gateway's start."""
    for name in compose()["services"]["gateway"]["environment"]:
        monkeypatch.setenv(name, PHONES_OPEN if name == PUBLIC_URL else f"example-{name.lower()}")
    etc = tmp_path / "etc-community-gateway"
    etc.mkdir()
    for target, source in mounts("gateway").items():
        if target.startswith(CONTAINER_ETC):
            name = target.removeprefix(CONTAINER_ETC)
            # The broker's CA is made at install (INSTALL.md, step 1); any will do.
            made_at_install = source == "./mosquitto/certs/ca.crt"
            shutil.copy(certifi.where() if made_at_install else DEPLOY / source, etc / name)
    config = etc / "gateway.yaml"
    config.write_text(config.read_text().replace(CONTAINER_ETC, f"{etc}/"))
    return config


def test_the_compose_config_passes_check_with_the_files_its_container_is_given(
    container_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--config", str(container_config)]) == 0, capsys.readouterr().err
    assert "registered devices: 5" in capsys.readouterr().out
    reachable_api(container_config)


def test_compose_publishes_the_port_the_gateway_api_listens_on(container_config: Path) -> None:
    api = reachable_api(container_config)
    # Without it the board and the alert links answer nowhere outside Docker's network.
    assert api.port in published_ports("gateway")


def test_compose_runs_the_gateway_on_its_own_config_and_registry() -> None:
    gateway = mounts("gateway")
    assert gateway["/etc/community-gateway/gateway.yaml"] == "./gateway.compose.yaml"
    config = yaml.safe_load((DEPLOY / "gateway.compose.yaml").read_text())
    registry_in_container = f"/etc/community-gateway/{config['registry_file']}"
    assert registry_in_container in gateway
    assert config["mqtt"]["tls"]["ca_file"] in gateway
    assert config["outbox"]["path"].startswith("/var/lib/community-gateway/")
    assert gateway["/var/lib/community-gateway"] == "gateway-data"
    assert (
        DEPLOY / compose()["services"]["gateway"]["build"]["dockerfile"].removeprefix("deploy/")
    ).exists()


def test_the_image_copies_every_file_the_package_build_reads() -> None:
    # pip builds the package inside the image: a file pyproject.toml names that the
    # Dockerfile leaves out fails the build (setuptools refuses a missing license file).
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    wanted = {project["readme"], *project.get("license-files", [])}
    copied = {
        name
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for name in line.split()[1:-1]
    }
    assert wanted <= copied, f"not copied into the image: {sorted(wanted - copied)}"


def test_compose_secrets_come_from_the_environment() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert "change-me" not in text
    for name in yaml.safe_load(
        "\n".join(
            f"{line.split('=')[0]}: x"
            for line in (DEPLOY / "env.example").read_text().splitlines()
            if "=" in line
        )
    ):
        assert f"${{{name}:?" in text, name


def test_grafana_loads_the_generated_dashboards_from_influxdb() -> None:
    grafana = mounts("grafana")
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/community-gateway.yaml").read_text()
    )["providers"]
    path = providers[0]["options"]["path"]
    assert grafana[path] == "./grafana/dashboards"
    assert sorted((DEPLOY / "grafana/dashboards").glob("*.json"))
    sources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/influxdb.yaml").read_text()
    )["datasources"]
    assert sources[0]["uid"] == PROVISIONED_DATASOURCE_UID
    assert sources[0]["type"] == "influxdb"
    assert (
        sources[0]["jsonData"]["dbName"]
        == yaml.safe_load((DEPLOY / "gateway.compose.yaml").read_text())["influx"]["database"]
    )


def test_the_systemd_unit_runs_unprivileged_and_always_restarts() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "community-gateway.service")
    service = unit["Service"]
    assert service["User"] not in ("", "root")
    assert service["Restart"] == "always"
    assert service["ExecStart"].endswith("run --config /etc/community-gateway/gateway.yaml")
    assert service["StateDirectory"] == "community-gateway"
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[hardening] == "yes", hardening
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""


def test_install_guide_says_what_the_alert_links_need() -> None:
    guide = (DEPLOY / "INSTALL.md").read_text()
    api = yaml.safe_load((DEPLOY / "gateway.compose.yaml").read_text())["api"]
    for name in {name for value in strings(api) for name in VARIABLE.findall(value)}:
        assert name in guide, name
    assert f"{api['port']}/tcp" in guide, "the port to open in the firewall"
    # How to see it answer, at a path the API serves.
    assert any(route.path in guide for route in health_router.routes if isinstance(route, APIRoute))


def test_install_guide_covers_backup_and_upgrade() -> None:
    guide = (DEPLOY / "INSTALL.md").read_text()
    for needed in ("apt-get install", "mosquitto_passwd", ".backup", "influxd backup", "Upgrade"):
        assert needed in guide, needed


def test_install_guide_writes_recovered_lines_as_the_gateway_and_stops_at_a_refusal() -> None:
    """The guide turns InfluxDB's authentication on: lines read back from a damaged
    outbox are written with the gateway's own InfluxDB login, from its env file, and a
    write refused stops the loop naming its file rather than losing the lines unseen."""
    guide = (DEPLOY / "INSTALL.md").read_text()
    assert "auth-enabled = true" in guide
    influx = yaml.safe_load((DEPLOY / "gateway.compose.yaml").read_text())["influx"]
    (password,) = VARIABLE.findall(influx["password"])
    assert password in env_example_names()
    lines = guide.splitlines()
    writes = [i for i, line in enumerate(lines) if "curl" in line and "/write?" in line]
    assert writes
    for i in writes:
        flags = re.findall(r"\s-([A-Za-z]+)", lines[i])
        assert f'-u "{influx["username"]}:${password}"' in lines[i], lines[i]
        # Silenced (-s), curl's reason must still be shown (-S).
        assert not any("s" in f for f in flags) or any("S" in f for f in flags), lines[i]
        after = "\n".join(lines[i : i + 3])
        assert "$f" in after.partition("||")[2] and "break" in after, after
