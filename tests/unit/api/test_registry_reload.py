"""The registry reloaded while the gateway runs: a device added, moved or taken out
counts from the next message on, in every stage; a file that is wrong changes nothing."""

from pathlib import Path

import pytest
import yaml

from gateway.app import Gateway
from gateway.config import GatewayConfig
from tests.unit.api.conftest import ADMIN, REGISTRY, WORKER, Site, ten_silent_minutes
from tests.unit.api.test_pages import link_path

# A new resident's bracelet, in building 5 of lakeside, with a family contact.
BR_3 = (
    "br-3,bracelet,hgy,east,lakeside,5,3-502,,,赵桂兰,13811112222,赵强:13911112222,34.75,113.62\n"
)
# A bracelet handed out and not worn yet: it never reports.
BR_4 = "br-4,bracelet,hgy,east,lakeside,5,3-503,,,钱玉英,13811113333,,34.75,113.62\n"


def config_file(site: Site, tmp_path: Path) -> Path:
    """The site's config as a file, the registry it names being tmp_path/devices.csv."""
    config = site.gateway.config
    assert config.api is not None and config.api.link_secret is not None
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    # Dumped, secrets are masked; the file holds them as an operator writes them.
    for dumped, token in zip(data["api"]["tokens"], config.api.tokens, strict=True):
        dumped["token"] = token.token.get_secret_value()
    data["api"]["link_secret"] = config.api.link_secret.get_secret_value()
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    GatewayConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    return path


def edit_registry(tmp_path: Path, text: str) -> None:
    (tmp_path / "devices.csv").write_text(text, encoding="utf-8")


def lines_of(gateway: Gateway, measurement: str, device_id: str) -> list[str]:
    """The device's points of a measurement in the outbox."""
    return [
        line
        for line in gateway.outbox.peek(10_000).lines
        if line.split(" ", 1)[0].split(",")[:1] == [measurement]
        and f"device_id={device_id}" in line.split(" ", 1)[0].split(",")
    ]


async def test_a_bracelet_registered_while_the_gateway_runs_is_placed_routed_and_watched(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_file(site, tmp_path)
    edit_registry(tmp_path, REGISTRY + BR_3 + BR_4)
    with caplog.at_level("INFO", "gateway.app"):
        await site.gateway.reload(path)
    assert "reloaded the registry: 6 devices (2 added, 0 removed, 0 changed)" in caplog.text

    alert_id = await site.fall("br-3")
    # Its points are tagged with its building, for the dashboards per place.
    (event,) = lines_of(site.gateway, "bracelet_event", "br-3")
    assert "building=5" in event and "compound=lakeside" in event
    # The grid worker of its cell sees it, with its place and wearer, as any other.
    seen = await site.get(f"/api/v1/alerts/{alert_id}", WORKER)
    assert seen.status_code == 200
    assert seen.json()["alert"]["place"]["building"] == "5"
    device = (await site.get("/api/v1/devices/hgy/br-3")).json()
    assert device["registered"] is True and device["wearer"]["name"] == "赵桂兰"
    # Its family contact is told, and may act through the link sent.
    taken = await site.client.post(
        link_path(site, alert_id, "contact:+8613911112222") + "/acknowledge"
    )
    assert taken.status_code == 303
    assert site.gateway.alerts.get(alert_id).acknowledged_by == "contact:+8613911112222"

    # The bracelet never worn is found offline after its silence, counted from the reload.
    await ten_silent_minutes(site)
    offline = [a for a in site.gateway.alerts.open_alerts() if a.rule == "device_offline"]
    assert "br-4" in {a.device_id for a in offline}


async def test_a_device_moved_to_another_building_is_tagged_there_from_its_next_point(
    site: Site, tmp_path: Path
) -> None:
    path = config_file(site, tmp_path)
    reading = {"obscuration_pct_per_m": 0.1, "temperature_c": 21.0, "battery_pct": 90}
    await site.send("community/hgy/smoke_detector/sd-1/telemetry", reading)
    edit_registry(tmp_path, REGISTRY.replace("sd-1,smoke_detector,hgy,east,lakeside,3,",
                                             "sd-1,smoke_detector,hgy,east,lakeside,4,"))  # fmt: skip
    await site.gateway.reload(path)
    site.clock.advance(60)
    await site.send("community/hgy/smoke_detector/sd-1/telemetry", reading)
    before, after = lines_of(site.gateway, "smoke_detector", "sd-1")
    assert "building=3" in before and "building=4" in after


async def test_a_device_taken_out_of_the_registry_is_shown_as_unregistered(
    site: Site, tmp_path: Path
) -> None:
    path = config_file(site, tmp_path)
    await site.fall("br-1")
    br_1 = next(line for line in REGISTRY.splitlines(keepends=True) if line.startswith("br-1,"))
    edit_registry(tmp_path, REGISTRY.replace(br_1, ""))
    await site.gateway.reload(path)
    device = (await site.get("/api/v1/devices/hgy/br-1")).json()
    # What it sent before is still shown; whose it was, no longer.
    assert device["registered"] is False and device["wearer"] is None
    assert device["latest"]["last_event"] == "fall"


# Lakeside's devices all gone, while wang-fang's token still names the compound; and a
# row with a latitude past the pole.
LAKESIDE_GONE = "".join(line + "\n" for line in REGISTRY.splitlines() if ",lakeside," not in line)
BAD_ROW = REGISTRY + "br-3,bracelet,hgy,east,lakeside,5,,95.0,,,,,,\n"


@pytest.mark.parametrize(
    ("registry_text", "problem"),
    [
        (LAKESIDE_GONE, "gateway.yaml: api.tokens[3].cells[0]: no registered device is in "
                        "hgy/east/lakeside"),
        (BAD_ROW, "devices.csv: line 6 (br-3): lat: Input should be less than or equal to 90"),
    ],
)  # fmt: skip
async def test_a_registry_that_fails_its_check_leaves_the_running_one_and_says_why(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture, registry_text: str, problem: str
) -> None:
    path = config_file(site, tmp_path)
    running = site.gateway.registry
    edit_registry(tmp_path, registry_text)
    with caplog.at_level("ERROR", "gateway.app"):
        await site.gateway.reload(path)
    assert "registry, API tokens and notification policy not reloaded" in caplog.text
    assert problem in caplog.text
    assert site.gateway.registry is running
    # The grid worker still sees the alerts of the cell, and no new device is shown.
    assert (await site.get("/api/v1/alerts", WORKER)).status_code == 200
    assert (await site.get("/api/v1/devices/hgy/br-3", ADMIN)).status_code == 404


async def test_a_reload_with_the_registry_unchanged_keeps_it(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A reload for the rules or the tokens alone: a district's registry is not taken
    # again by every stage for nothing.
    path = config_file(site, tmp_path)
    running = site.gateway.registry
    with caplog.at_level("INFO", "gateway.app"):
        await site.gateway.reload(path)
    assert site.gateway.registry is running
    assert "reloaded the registry" not in caplog.text
