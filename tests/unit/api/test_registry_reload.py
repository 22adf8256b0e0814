"""The registry reloaded while the gateway runs: a device added, moved or taken out
counts from the next message on, in every stage; a file that is wrong changes nothing."""

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

import gateway.app as app_module
from gateway import PROJECT_ROOT
from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, IngestConfig
from gateway.registry import reread
from gateway.rules.book import was_muted
from gateway.statefile import ReloadAnswer, reload_answer_path
from gateway.store.outbox import Outbox
from gateway.store.series import device_info
from tests.unit.api.conftest import (
    ADMIN,
    OTHER_WORKER,
    REGISTRY,
    T0,
    WORKER,
    Site,
    open_site,
    serve_site,
    site_config,
    ten_silent_minutes,
)
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
    edit_registry(tmp_path, WITHOUT_BR_1)
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
    assert (
        "nothing reloaded, the running rules, registry, API tokens and notification policy "
        "stay" in caplog.text
    )
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


# The test site's registry, with the columns of a wearer's home and safe radius.
HOMES = (
    REGISTRY.replace("home_lon\n", "home_lon,safe_radius_m\n", 1)
    .replace(",34.75,113.62\n", ",34.75,113.62,500\n")
    .replace(",34.76,113.63\n", ",34.76,113.63,500\n")
)
# A new resident's bracelet, at home at 34.75,113.62, who must not go past 200 m.
BR_3_AWAY_LIMIT = "br-3,bracelet,hgy,east,lakeside,5,3-502,,,赵桂兰,13811112222,,34.75,113.62,200\n"


@asynccontextmanager
async def opened(
    tmp_path: Path,
    registry_text: str = REGISTRY,
    *,
    rules_dir: Path | None = None,
    **ingest: Any,
) -> AsyncIterator[Site]:
    """The API tests' site, with `registry_text`, the rules of `rules_dir` and `ingest`
    settings."""
    clock = ManualClock(T0)
    config = site_config(tmp_path, registry_text=registry_text)
    if ingest:
        config = config.model_copy(update={"ingest": IngestConfig(**ingest)})
    if rules_dir is not None:
        config = config.model_copy(update={"rules_dir": rules_dir})
    async with serve_site(Gateway(config, clock), clock) as site:
        yield site


def shipped_rules_in(tmp_path: Path) -> Path:
    """A copy of the shipped rule folder, to edit."""
    rules_dir = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "alert_rules", rules_dir)
    return rules_dir


def open_rules(site: Site, rule: str) -> list[str]:
    """The device ids with an alert of `rule` open."""
    return sorted(a.device_id for a in site.gateway.alerts.open_alerts() if a.rule == rule)


async def tick(site: Site) -> None:
    stage = site.gateway.pipeline.alerts
    assert stage is not None
    await site.gateway.pipeline.commit_alerts(stage.tick(site.clock.now_ms()))


def position(lat: float, lon: float) -> dict[str, Any]:
    return {"heart_rate_bpm": 72, "lat": lat, "lon": lon, "worn": True, "battery_pct": 80}


async def test_a_resident_registered_by_a_reload_is_judged_with_their_own_safe_area(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new resident's bracelet is added while another bracelet's reading is judged:
    # a district's sheet is read for seconds, while the telemetry goes on. The resident,
    # 2 km from home, is judged against their own safe area, not left unjudged until the
    # next restart.
    async with opened(tmp_path, HOMES) as site:
        path = config_file(site, tmp_path)
        edit_registry(tmp_path, HOMES + BR_3_AWAY_LIMIT)
        gateway = site.gateway
        reading, release = threading.Event(), threading.Event()

        def slow_read(*args: Any) -> Any:
            # A district's sheet: read for seconds, while the telemetry goes on.
            reading.set()
            release.wait(10)
            return reread(*args)

        monkeypatch.setattr(app_module, "reread", slow_read)
        reload = asyncio.create_task(gateway.reload(path))
        assert await asyncio.to_thread(reading.wait, 10)
        # br-1, at home, reports meanwhile, as every bracelet does each minute.
        await site.send("community/hgy/bracelet/br-1/telemetry", position(34.75, 113.62))
        release.set()
        await reload
        assert gateway.registry.get("hgy", "br-3") is not None

        site.clock.advance(60)
        # The new resident, 2 km north of home.
        await site.send("community/hgy/bracelet/br-3/telemetry", position(34.768, 113.62))
        assert open_rules(site, "left_safe_area") == ["br-3"]


async def test_a_reload_with_a_broken_rule_file_takes_nothing_and_then_all_once_mended(
    tmp_path: Path,
) -> None:
    # The rules, the registry, the tokens and the policy are checked together and taken
    # together, as `reload` checks them before it signals: a hand-sent SIGHUP or a
    # service manager's reload does what the command would have.
    rules_dir = shipped_rules_in(tmp_path)
    async with opened(tmp_path, HOMES, rules_dir=rules_dir) as site:
        # Any bracelet's report compiles the evaluator of its shape.
        await site.send("community/hgy/bracelet/br-1/telemetry", position(34.75, 113.62))
        path = config_file(site, tmp_path)
        shed_rules = (rules_dir / "charging_shed.yaml").read_text("utf-8")
        (rules_dir / "charging_shed.yaml").write_text("rules: [{name: broken}]\n", "utf-8")
        edit_registry(tmp_path, HOMES + BR_3_AWAY_LIMIT)
        refused = await site.gateway.reload(path)
        assert not refused.taken
        assert refused.said.startswith(
            f"refused them, the running ones stay: {rules_dir / 'charging_shed.yaml'}: rule broken: "
        )
        assert site.gateway.registry.get("hgy", "br-3") is None

        (rules_dir / "charging_shed.yaml").write_text(shed_rules, "utf-8")
        taken = await site.gateway.reload(path)
        assert taken.taken and taken.number == refused.number + 1
        assert taken.said.startswith(
            "took them: 5 registered devices (1 added, 0 removed, 0 changed), "
        )
        assert site.gateway.registry.get("hgy", "br-3") is not None
        site.clock.advance(60)
        await site.send("community/hgy/bracelet/br-3/telemetry", position(34.768, 113.62))
        assert open_rules(site, "left_safe_area") == ["br-3"]
        # What `community-gateway reload` shows is kept beside the outbox.
        kept = ReloadAnswer.read(reload_answer_path(site.gateway.config.outbox.path))
        assert kept == taken


# The test site's registry, with a column of thresholds.
THRESHOLDS = REGISTRY.replace("home_lon\n", "home_lon,thresholds\n", 1)
# A resident whose doctor set her upper heart rate at 120, with the name misspelt.
BR_3_MISSPELT = BR_3.rstrip("\n") + ",max_heart_rate=120\n"


async def test_a_threshold_no_rule_reads_is_refused_naming_its_row_and_the_name_meant(
    tmp_path: Path,
) -> None:
    # Taken, the misspelt limit would be read by nothing: the resident's heart rate of
    # 140 judged by the rule's default of 150, and nobody sent.
    async with opened(tmp_path) as site:
        path = config_file(site, tmp_path)
        edit_registry(tmp_path, THRESHOLDS + BR_3_MISSPELT)
        refused = await site.gateway.reload(path)
        assert not refused.taken
        assert refused.said.startswith(
            f"refused them, the running ones stay: {tmp_path / 'devices.csv'}: line 6 (br-3): thresholds: no alert rule of bracelet "
            "reads 'max_heart_rate'; did you mean 'max_heart_rate_bpm'? (they read: "
        )
        assert site.gateway.registry.get("hgy", "br-3") is None

        edit_registry(tmp_path, THRESHOLDS + BR_3_MISSPELT.replace("rate=", "rate_bpm="))
        assert (await site.gateway.reload(path)).taken
        for _ in range(3):
            await site.send(
                "community/hgy/bracelet/br-3/telemetry",
                {"ts": site.clock.now_ms(), "heart_rate_bpm": 140, "worn": True},
            )
            site.clock.advance(30)
        assert open_rules(site, "abnormal_heart_rate") == ["br-3"]


async def test_rules_that_stop_reading_a_threshold_of_the_registry_are_refused(
    tmp_path: Path,
) -> None:
    rules_dir = shipped_rules_in(tmp_path)
    spelt = THRESHOLDS + BR_3_MISSPELT.replace("rate=", "rate_bpm=")
    async with opened(tmp_path, spelt, rules_dir=rules_dir) as site:
        bracelet = rules_dir / "bracelet.yaml"
        bracelet.write_text(
            bracelet.read_text("utf-8").replace("device.max_heart_rate_bpm", "180"), "utf-8"
        )
        refused = await site.post("/api/v1/rules/reload", ADMIN)
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            f"{tmp_path / 'devices.csv'}: br-3 of hgy: thresholds: no alert rule of bracelet "
            "reads 'max_heart_rate_bpm'; did you mean 'min_heart_rate_bpm'? (they read: "
            "home_lat, home_lon, lives_alone, min_heart_rate_bpm, safe_radius_m)"
        )
        (heart,) = [r for r in site.gateway.loaded_rules if r.name == "abnormal_heart_rate"]
        assert "device.max_heart_rate_bpm" in heart.spec.when


async def test_a_registry_naming_a_device_type_whose_profile_came_after_the_start_says_restart(
    tmp_path: Path,
) -> None:
    # The device profiles, which every stage is built on, are read at start: the check
    # of the files on disk passes, the running gateway refuses, and says what to do.
    profiles = tmp_path / "profiles"
    shutil.copytree(PROJECT_ROOT / "device_profiles", profiles)
    async with opened(tmp_path) as site:
        path = config_file(site, tmp_path)
        config = yaml.safe_load(path.read_text("utf-8"))
        config["profiles_dir"] = str(profiles)
        path.write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
        water = (profiles / "manhole_cover.yaml").read_text("utf-8")
        (profiles / "water_meter.yaml").write_text(
            water.replace("device_type: manhole_cover", "device_type: water_meter").replace(
                "name: manhole_cover", "name: water_meter"
            ),
            "utf-8",
        )
        edit_registry(tmp_path, REGISTRY + "wm-1,water_meter,hgy,east,lakeside,3" + "," * 8 + "\n")
        refused = await site.gateway.reload(path)
        assert not refused.taken
        assert "line 6 (wm-1): device_type: no device profile is of type 'water_meter'" in (
            refused.said
        )
        assert refused.said.endswith(
            f"; the device profiles in {profiles} changed since the gateway started: they are "
            "read at start, restart it to take them"
        )


def telemetry(site: Site, **fields: Any) -> dict[str, Any]:
    return {"ts": site.clock.now_ms(), **fields}


# The registry with resident br-1 taken out.
WITHOUT_BR_1 = "".join(
    line for line in REGISTRY.splitlines(keepends=True) if not line.startswith("br-1,")
)
# The resident of br-1 moved from hgy to lgy, both served by the gateway.
MOVED_TO_LGY = REGISTRY.replace(
    "br-1,bracelet,hgy,east,lakeside,3,", "br-1,bracelet,lgy,north,pine,7,"
)


async def offline_after_ten_minutes_reporting_from_lgy(site: Site) -> list[tuple[str, str]]:
    """br-1 reporting from lgy every minute for ten minutes, the rules judging each: the
    (community, device id) of the offline alerts open then."""
    for _ in range(10):
        site.clock.advance(60)
        await site.send(
            "community/lgy/bracelet/br-1/telemetry",
            telemetry(site, heart_rate_bpm=72, worn=True, battery_pct=80),
        )
        await tick(site)
    return [
        (a.community, a.device_id)
        for a in site.gateway.alerts.open_alerts()
        if a.rule == "device_offline"
    ]


async def test_a_bracelet_moved_to_another_community_is_not_left_offline_in_the_old_one(
    tmp_path: Path,
) -> None:
    # A resident moves from hgy to lgy, both served by the gateway, and the bracelet
    # reports from lgy every minute: hgy's grid worker is not told it is offline there,
    # which no message could ever resolve.
    async with opened(tmp_path) as site:
        path = config_file(site, tmp_path)
        edit_registry(tmp_path, MOVED_TO_LGY)
        await site.gateway.reload(path)
        offline = await offline_after_ten_minutes_reporting_from_lgy(site)
        assert ("lgy", "br-1") not in offline
        assert ("hgy", "br-1") not in offline


MISTYPED = REGISTRY + "sd-3,bracelet,hgy,east,lakeside,5,,34.75,113.62,,,,,\n"
FIXED = REGISTRY + "sd-3,smoke_detector,hgy,east,lakeside,5,,34.75,113.62,,,,,\n"


async def ten_minutes_of_sd_3_reports(site: Site) -> None:
    """Smoke detector sd-3 reporting every minute, the rules' timers running."""
    reading = {"obscuration_pct_per_m": 0.1, "temperature_c": 21.0, "battery_pct": 90}
    for _ in range(10):
        site.clock.advance(60)
        await site.send("community/hgy/smoke_detector/sd-3/telemetry", telemetry(site, **reading))
        await tick(site)


async def test_a_device_whose_type_is_corrected_is_not_found_offline_as_its_old_type(
    tmp_path: Path,
) -> None:
    # A smoke detector entered in the sheet as a bracelet (its reports refused as not of
    # its registered type), corrected and reloaded: its reports are taken, and it is not
    # found offline as the bracelet it never was, at every tick again.
    async with opened(tmp_path, MISTYPED) as site:
        path = config_file(site, tmp_path)
        edit_registry(tmp_path, FIXED)
        await site.gateway.reload(path)
        await ten_minutes_of_sd_3_reports(site)
        assert "sd-3" not in open_rules(site, "device_offline")


async def test_a_device_taken_out_of_the_registry_is_not_found_offline(tmp_path: Path) -> None:
    # With only registered devices taken in, a resident's bracelet is taken out of the
    # sheet (the resident moved away): it is not found offline, in an alert its refused
    # messages could never resolve.
    async with opened(tmp_path, require_registered=True) as site:
        # Watched from the start, and saved as such.
        record_registry(site)
        await tick(site)
        path = config_file(site, tmp_path)
        edit_registry(tmp_path, WITHOUT_BR_1)
        await site.gateway.reload(path)
        assert site.gateway.registry.get("hgy", "br-1") is None
        for _ in range(10):
            site.clock.advance(60)
            await tick(site)
        assert "br-1" not in open_rules(site, "device_offline")
    # Nor after a restart: what was saved of it was let go with it.
    async with opened(tmp_path, WITHOUT_BR_1, require_registered=True) as site:
        for _ in range(10):
            site.clock.advance(60)
            await tick(site)
        assert "br-1" not in open_rules(site, "device_offline")


HEADER_ONLY = REGISTRY.splitlines(keepends=True)[0]


async def test_a_sheet_emptied_by_mistake_is_refused_like_one_that_empties_a_cell(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A sheet saved with its header and no rows (a filter left on in the spreadsheet, an
    # export of the wrong tab) would leave every device unregistered at once: grid workers
    # would see none of their alerts, rosters by cell route nothing, and with only
    # registered devices taken in, every message, fire alarms among them, be refused.
    async with opened(tmp_path) as site:
        path = config_file(site, tmp_path)
        running = site.gateway.registry
        edit_registry(tmp_path, HEADER_ONLY)
        with caplog.at_level("ERROR", "gateway.app"):
            await site.gateway.reload(path)
        assert site.gateway.registry is running, "the reload emptied the running registry"
        assert "devices.csv: names no device, where the running registry has 4" in caplog.text


async def test_a_device_whose_type_was_corrected_while_stopped_is_not_found_offline_as_its_old(
    tmp_path: Path,
) -> None:
    # The same correction made with the gateway stopped: what it saved of the device as a
    # bracelet is let go at the start, not watched as a bracelet for ever.
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock, registry_text=MISTYPED) as site:
        await tick(site)
    async with open_site(tmp_path, clock, registry_text=FIXED) as site:
        await ten_minutes_of_sd_3_reports(site)
        assert "sd-3" not in open_rules(site, "device_offline")


def series_of(line: str) -> str:
    return line.split(" ", 1)[0]


async def test_an_open_alert_of_a_device_taken_out_stays_in_its_cell_where_it_began(
    site: Site, tmp_path: Path
) -> None:
    # A resident moved out while their fall was still being handled: the grid worker who
    # has it keeps it, sees where to go, and closes it where dashboards show it open.
    path = config_file(site, tmp_path)
    alert_id = await site.fall("br-1")
    edit_registry(tmp_path, WITHOUT_BR_1)
    await site.gateway.reload(path)

    seen = await site.get(f"/api/v1/alerts/{alert_id}", WORKER)
    assert seen.status_code == 200
    place = seen.json()["alert"]["place"]
    assert (place["compound"], place["building"], place["unit"]) == ("lakeside", "3", "2-301")
    listed = await site.get("/api/v1/alerts", WORKER, params={"building": "3"})
    assert alert_id in {a["alert_id"] for a in listed.json()["alerts"]}
    assert (await site.get(f"/api/v1/alerts/{alert_id}", OTHER_WORKER)).status_code == 404

    closed = await site.post(f"/api/v1/alerts/{alert_id}/close", WORKER, json={"note": "已搬走"})
    assert closed.status_code == 200
    firing, closing = lines_of(site.gateway, "alert", "br-1")
    assert 'state="firing"' in firing and 'state="closed"' in closing
    assert series_of(closing) == series_of(firing)
    assert "building=3" in series_of(closing).split(",")


async def test_an_alert_of_a_device_moved_while_it_is_open_stays_where_it_began(
    site: Site, tmp_path: Path
) -> None:
    path = config_file(site, tmp_path)
    await site.send("community/hgy/smoke_detector/sd-1/telemetry", {"alarm": True})
    (fire,) = [a for a in site.gateway.alerts.open_alerts() if a.rule == "fire_alarm"]
    # Found registered in the wrong building, and corrected while the alarm sounds.
    edit_registry(tmp_path, REGISTRY.replace("sd-1,smoke_detector,hgy,east,lakeside,3,",
                                             "sd-1,smoke_detector,hgy,west,hillside,9,"))  # fmt: skip
    await site.gateway.reload(path)
    # Still with the grid worker of the cell it began in, and routed there.
    assert (await site.get(f"/api/v1/alerts/{fire.alert_id}", WORKER)).status_code == 200
    assert (await site.get(f"/api/v1/alerts/{fire.alert_id}", OTHER_WORKER)).status_code == 404
    assert site.gateway.notifier is not None
    assert site.gateway.notifier.router.place(site.gateway.alerts.get(fire.alert_id)) == (
        "hgy", "east", "lakeside", "3",
    )  # fmt: skip
    # Its all-clear (off for ten minutes) ends the series the dashboards show it open in.
    site.clock.advance(60)
    await site.send("community/hgy/smoke_detector/sd-1/telemetry", {"alarm": False})
    site.clock.advance(660)
    await site.send("community/hgy/smoke_detector/sd-1/telemetry", {"alarm": False})
    assert site.gateway.alerts.get(fire.alert_id).resolved_ms is not None
    fire_lines = [
        line for line in lines_of(site.gateway, "alert", "sd-1") if "rule=fire_alarm" in line
    ]
    assert len(fire_lines) == 2 and 'state="resolved"' in fire_lines[-1]
    assert series_of(fire_lines[0]) == series_of(fire_lines[1])
    assert "building=3" in series_of(fire_lines[1]).split(",")


# br-1, found registered in the wrong building, and corrected: west, hillside 9.
BR_1_MOVED = REGISTRY.replace(
    "br-1,bracelet,hgy,east,lakeside,3,2-301,", "br-1,bracelet,hgy,west,hillside,9,1-102,"
)


# Hillside, in area west, has a building 3 too: registered by a reload while lakeside's
# building 3 is on fire.
HILLSIDE_3 = "sd-9,smoke_detector,hgy,west,hillside,3,,,,,,,,\n"


async def lakeside_on_fire_then_hillside_registered(site: Site, tmp_path: Path) -> str:
    """Lakeside's building 3 on fire (its number its own then), then a reload that
    registers hillside's building 3: the fire's alert id."""
    path = config_file(site, tmp_path)
    for device_id in ("sd-1", "sd-2"):
        await site.send(
            f"community/hgy/smoke_detector/{device_id}/event",
            {"ts": site.clock.now_ms(), "event": "alarm"},
        )
    (fire,) = [a.alert_id for a in site.gateway.alerts.open_alerts() if a.rule == "building_fire"]
    edit_registry(tmp_path, REGISTRY + HILLSIDE_3)
    answer = await site.gateway.reload(path)
    assert answer.taken, answer.said
    return fire


# An open alert stays where it began: the grid worker of another compound, whose
# building of the same number a reload registered, neither lists nor opens lakeside's
# fire.
async def test_a_grid_worker_does_not_see_another_compounds_open_fire_after_a_reload(
    site: Site, tmp_path: Path
) -> None:
    fire = await lakeside_on_fire_then_hillside_registered(site, tmp_path)
    mine = (await site.get("/api/v1/alerts", WORKER)).json()["alerts"]
    assert fire in {a["alert_id"] for a in mine}
    theirs = (await site.get("/api/v1/alerts", OTHER_WORKER)).json()["alerts"]
    assert fire not in {a["alert_id"] for a in theirs}
    assert (await site.get(f"/api/v1/alerts/{fire}", OTHER_WORKER)).status_code == 404


# A desk filtering the board by compound or area sees that place's alerts: an open fire
# stays in the compound it began in.
async def test_an_open_fire_is_not_found_in_another_compound_after_a_reload(
    site: Site, tmp_path: Path
) -> None:
    fire = await lakeside_on_fire_then_hillside_registered(site, tmp_path)
    for query in ("compound=lakeside", "area=east"):
        listed = (await site.get(f"/api/v1/alerts?{query}", ADMIN)).json()["alerts"]
        assert fire in {a["alert_id"] for a in listed}, query
    for query in ("compound=hillside", "area=west"):
        listed = (await site.get(f"/api/v1/alerts?{query}", ADMIN)).json()["alerts"]
        assert fire not in {a["alert_id"] for a in listed}, query


# The grid worker handling a fall must be able to call the wearer and the family: a
# reload that moves the bracelet to another cell (its wearer moved house) leaves them
# whole on the alert she is handling, which stays hers alone.
async def test_the_grid_worker_handling_a_fall_still_sees_whom_to_call_after_a_reload(
    site: Site, tmp_path: Path
) -> None:
    path = config_file(site, tmp_path)
    fall = await site.fall()
    edit_registry(tmp_path, BR_1_MOVED)
    assert (await site.gateway.reload(path)).taken
    assert (await site.get(f"/api/v1/alerts/{fall}", OTHER_WORKER)).status_code == 404
    detail = await site.get(f"/api/v1/alerts/{fall}", WORKER)
    assert detail.status_code == 200
    assert detail.json()["alert"]["place"]["compound"] == "lakeside"
    wearer = detail.json()["wearer"]
    assert (wearer["name"], wearer["masked"]) == ("张三明", False)
    assert wearer["emergency_contacts"][0]["phone"] == "+8613987654321"


# A new resident's bracelet, sending before the registry's sheet had it.
BR_9 = "br-9,bracelet,hgy,east,lakeside,5,3-502,,,赵桂兰,13811112222,,34.75,113.62\n"


def last_state_of_series(lines: list[str], series: str) -> str:
    """The state dashboards show for a series: that of its last point."""
    (last, *_) = [line for line in reversed(lines) if series_of(line) == series]
    return last.split('state="', 1)[1].split('"', 1)[0]


async def test_closing_an_alert_that_began_before_its_device_moved_ends_it_on_the_dashboards(
    site: Site, tmp_path: Path
) -> None:
    # A fall in building 3, taken by its grid worker; the bracelet is then found
    # registered in the wrong building and corrected, and its wearer falls again. The
    # first fall, closed, must no longer show open in building 3's dashboards: the
    # second is in another series (building 9's), and hides nothing there.
    path = config_file(site, tmp_path)
    first = await site.fall("br-1")
    assert (await site.post(f"/api/v1/alerts/{first}/acknowledge", WORKER)).status_code == 200
    edit_registry(tmp_path, BR_1_MOVED)
    await site.gateway.reload(path)
    site.clock.advance(60)
    second = await site.fall("br-1")
    assert second != first

    closed = await site.post(f"/api/v1/alerts/{first}/close", WORKER, json={"note": "误报"})
    assert closed.status_code == 200
    lines = lines_of(site.gateway, "alert", "br-1")
    first_series = series_of(next(line for line in lines if f'alert_id="{first}"' in line))
    assert "building=3" in first_series.split(",")
    assert last_state_of_series(lines, first_series) == "closed"


async def test_an_alert_of_a_device_registered_while_it_is_open_ends_in_the_series_it_began_in(
    site: Site, tmp_path: Path
) -> None:
    # A new bracelet falls before the operator adds it to the sheet; added while the
    # fall is handled, its closing must end the series its firing was written to, or
    # the dashboards show the fall open for ever.
    path = config_file(site, tmp_path)
    alert_id = await site.fall("br-9")
    edit_registry(tmp_path, REGISTRY + BR_9)
    await site.gateway.reload(path)

    closed = await site.post(f"/api/v1/alerts/{alert_id}/close", ADMIN, json={"note": "已处理"})
    assert closed.status_code == 200
    firing, closing = lines_of(site.gateway, "alert", "br-9")
    assert 'state="firing"' in firing and 'state="closed"' in closing
    assert series_of(closing) == series_of(firing)


async def test_a_silence_of_the_place_where_an_alert_began_mutes_it_when_it_fires(
    site: Site, tmp_path: Path
) -> None:
    # A heart rate out of range is pending for a minute before it fires. The bracelet's
    # building is corrected meanwhile; the alert stays in building 3 (its notices,
    # routes and dashboards say so), so building 3's silence mutes it as it fires, as
    # the notifier's second look at a muted alert judges it by building 3 too.
    path = config_file(site, tmp_path)
    topic = "community/hgy/bracelet/br-1/telemetry"
    await site.send(topic, {"worn": True, "heart_rate_bpm": 190})
    (pending,) = [a for a in site.gateway.alerts.open_alerts() if a.rule == "abnormal_heart_rate"]
    assert str(pending.state) == "pending" and pending.site is not None
    assert pending.site.building == "3"

    edit_registry(tmp_path, BR_1_MOVED)
    await site.gateway.reload(path)
    now_ms = site.clock.now_ms()
    silence = site.gateway.silences.add(
        author="desk", reason="更换手环电池", starts_ms=now_ms, ends_ms=now_ms + 3_600_000,
        community="hgy", compound="lakeside", building="3", now_ms=now_ms,
    )  # fmt: skip
    site.clock.advance(70)
    await site.send(topic, {"worn": True, "heart_rate_bpm": 190})

    fired = site.gateway.alerts.get(pending.alert_id)
    assert str(fired.state) == "firing" and fired.site == pending.site
    history = site.gateway.alerts.history(fired.alert_id)
    assert was_muted(history), [(str(s.state), s.note) for s in history]
    assert any(f"silence {silence.id}" in (s.note or "") for s in history)


async def test_a_device_taken_out_while_the_gateway_was_stopped_is_not_found_offline(
    tmp_path: Path,
) -> None:
    # Taken out of the sheet while the gateway was stopped (an upgrade, a restart rather
    # than a reload), with only registered devices taken in: not found offline at the start,
    # in an alert its refused messages could never resolve.
    async with opened(tmp_path, require_registered=True) as site:
        # Watched from the start, and saved as such.
        record_registry(site)
        await tick(site)
    async with opened(tmp_path, WITHOUT_BR_1, require_registered=True) as site:
        assert site.gateway.registry.get("hgy", "br-1") is None
        for _ in range(10):
            site.clock.advance(60)
            await tick(site)
        assert "br-1" not in open_rules(site, "device_offline")


async def test_a_bracelet_moved_to_another_community_while_stopped_is_not_offline_in_the_old(
    tmp_path: Path,
) -> None:
    # Moved to another community while the gateway was stopped: reporting from the new
    # one, it is not found offline in the old.
    async with opened(tmp_path) as site:
        record_registry(site)
        await tick(site)
    async with opened(tmp_path, MOVED_TO_LGY) as site:
        offline = await offline_after_ten_minutes_reporting_from_lgy(site)
        assert ("hgy", "br-1") not in offline


def record_registry(site: Site) -> None:
    """The registry's device_info points, committed as the gateway does at its start."""
    gateway = site.gateway
    info = device_info(gateway.registry, site.clock.now_ms())
    record = partial(Outbox.write_registry_series, series=info.series, ended=info.ended)
    gateway.outbox.commit(info.lines, [], None, record)
