import shutil
from pathlib import Path

import httpx
import pytest

from gateway import PROJECT_ROOT
from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.errors import ConfigError
from gateway.notify.policy import NotifyPolicy
from tests.unit.api.conftest import (
    ADMIN,
    DESK_HGY,
    OPERATOR,
    T0,
    Site,
    serve_site,
    site_config,
)

GOOD = "rules:\n  - {name: hot_shed, title: 棚内高温, device_types: [charging_shed], severity: info, when: 'ambient_temp_c > 45'}\n"


async def test_the_running_rules_are_listed(site: Site) -> None:
    rules = (await site.get("/api/v1/rules", OPERATOR)).json()
    fall = next(r for r in rules if r["name"] == "fall")
    assert (fall["severity"], fall["life_safety"], fall["kind"]) == ("critical", True, "event")


async def test_a_desk_limited_to_its_community_reads_the_rules_of_the_installation(
    site: Site,
) -> None:
    # The rules judge every community alike: the desk sees them as any operator does,
    # and changes them no more than any operator does.
    listed = await site.get("/api/v1/rules", DESK_HGY)
    assert listed.status_code == 200
    assert listed.json() == (await site.get("/api/v1/rules", OPERATOR)).json()
    check = await site.post("/api/v1/rules/check", DESK_HGY, content=GOOD)
    assert (check.status_code, check.json()["detail"]) == (
        403, "desk-hgy is operator; this needs admin",
    )  # fmt: skip
    assert (await site.post("/api/v1/rules/reload", DESK_HGY)).status_code == 403
    assert (await site.get("/api/v1/audit", DESK_HGY)).status_code == 403


async def test_a_rule_file_is_checked_without_being_loaded(site: Site) -> None:
    ok = await site.post("/api/v1/rules/check?file=extra.yaml", content=GOOD,
                         headers={"Content-Type": "application/yaml"})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"file": "extra.yaml", "rules": ["hot_shed"]}
    assert "hot_shed" not in {r["name"] for r in (await site.get("/api/v1/rules")).json()}
    broken = await site.post(
        "/api/v1/rules/check?file=extra.yaml", content="rules:\n  - {name: x, when: 'a >'}\n"
    )
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("extra.yaml: rule x: ")
    # Checked against the device profiles too: a misspelt field would never fire.
    silent = await site.post(
        "/api/v1/rules/check?file=extra.yaml", content=GOOD.replace("ambient_temp_c", "ambient_c")
    )
    assert silent.status_code == 422
    assert silent.json()["detail"].startswith(
        "extra.yaml: rule hot_shed: condition: 'ambient_c' is not a field that charging_shed sends"
    )
    twice = await site.post("/api/v1/rules/check", content=GOOD.replace("hot_shed", "fall"))
    assert "also defined in" in twice.json()["detail"]
    bad_name = await site.post("/api/v1/rules/check?file=../x.yaml", content=GOOD)
    assert bad_name.status_code == 422 and bad_name.json()["detail"].startswith("query.file")
    assert (await site.post("/api/v1/rules/check", OPERATOR, content=GOOD)).status_code == 403


async def test_reload_takes_the_folder_or_says_what_is_broken(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "alert_rules", rules_dir)
    config = site_config(tmp_path).model_copy(update={"rules_dir": rules_dir})
    gateway = Gateway(config, ManualClock(T0))
    assert gateway.api is not None
    transport = httpx.ASGITransport(app=gateway.api.app)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gw.test", headers=headers
    ) as client:
        before = len(gateway.loaded_rules)
        (rules_dir / "extra.yaml").write_text(GOOD)
        reloaded = await client.post("/api/v1/rules/reload")
        assert reloaded.json() == {"rules": before + 1}
        (rules_dir / "extra.yaml").write_text("rules: 3\n")
        refused = await client.post("/api/v1/rules/reload")
        assert refused.status_code == 422
        assert (
            refused.json()["detail"]
            == f"{rules_dir / 'extra.yaml'}: rules: expected a list of rules under 'rules'"
        )
        assert len(gateway.loaded_rules) == before + 1
    gateway.close()


async def test_rules_reloaded_through_the_api_that_a_route_no_longer_finds_are_refused(
    tmp_path: Path,
) -> None:
    # Rules reloaded through the API that a route of the policy names no longer (fall
    # renamed) are refused, as at a SIGHUP: every fall would go down another chain.
    rules_dir = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "alert_rules", rules_dir)
    clock = ManualClock(T0)
    config = site_config(tmp_path)
    assert config.notify is not None
    notify = config.notify.model_dump(by_alias=True)
    notify["routes"] = [
        {"match": {"rules": ["fall"]}, "escalation": "grid"},
        {"escalation": "grid"},
    ]
    config = config.model_copy(
        update={"rules_dir": rules_dir, "notify": NotifyPolicy.model_validate(notify)}
    )
    async with serve_site(Gateway(config, clock), clock) as site:
        bracelet = rules_dir / "bracelet.yaml"
        bracelet.write_text(
            bracelet.read_text(encoding="utf-8").replace("name: fall\n", "name: fall_detected\n"),
            encoding="utf-8",
        )
        with pytest.raises(ConfigError, match=r"routes\[0\]\.match\.rules"):
            site.gateway.reload_rules()
        assert "fall" in {rule.name for rule in site.gateway.loaded_rules}


# Whatever a rule file holds, its check names the file and what is wrong, never a crash:
# nesting too deep to read, or a long condition with a mistake in it.
async def test_a_rule_file_nested_too_deeply_is_refused_naming_it(site: Site) -> None:
    answer = await site.post("/api/v1/rules/check", content="rules: " + "[" * 2000 + "]" * 2000)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == "new.yaml: nested too deeply to read"


async def test_a_long_condition_with_a_mistake_is_refused_with_the_mistake(site: Site) -> None:
    terms = " + ".join(["battery_pct"] * 600)
    text = (
        "rules:\n  - name: long_sum\n    title: t\n    device_types: [bracelet]\n"
        f"    severity: info\n    when: \"{terms} in 'x'\"\n"
    )
    answer = await site.post("/api/v1/rules/check", content=text)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith("new.yaml: rule long_sum: condition: ") and "`in`" in detail
    assert len(detail) < 400
