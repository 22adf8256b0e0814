import json
import re
from pathlib import Path

import pytest

from gateway import PROJECT_ROOT
from gateway.cli import main
from gateway.dashboards.catalogue import dashboards, render
from gateway.dashboards.query import OPEN, PROVISIONED_DATASOURCE_UID
from gateway.health import HealthReport
from gateway.rules.alert import AlertState
from gateway.stats import Stats
from gateway.store.line_protocol import parse_line
from tests.unit.dashboards.grafana import (
    DATE_UNITS,
    TIME_UNITS,
    Frame,
    find_panel,
    numeric_fields,
    panels_of,
    transformed,
    unit_of,
)

SHIPPED = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"


def test_generating_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    assert main(["dashboards", "--out", str(tmp_path / "one")]) == 0
    assert main(["dashboards", "--out", str(tmp_path / "two")]) == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    assert one == two
    assert len(one) == 7


def test_a_folder_that_cannot_be_written_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "file"
    taken.write_text("")
    assert main(["dashboards", "--out", str(taken / "dashboards")]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot write the dashboards to {taken}")


def test_the_committed_dashboards_are_what_the_code_generates() -> None:
    fresh = {name: render(board) for name, board in dashboards().items()}
    shipped = {p.name: p.read_text(encoding="utf-8") for p in SHIPPED.glob("*.json")}
    assert shipped.keys() == fresh.keys(), "run: community-gateway dashboards"
    for name, text in fresh.items():
        assert shipped[name] == text, f"{name} is stale; run: community-gateway dashboards"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_panels_have_unique_ids_and_ask_the_chosen_influxdb(name: str) -> None:
    board = dashboards()[name]
    assert board["uid"] == name.removesuffix(".json")
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "influxdb", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["rawQuery"] is True
            assert target["query"].startswith("SELECT ")
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "community", "area", "compound", "building"]
    assert board["templating"]["list"][0]["current"]["value"] == PROVISIONED_DATASOURCE_UID


def test_device_panels_follow_the_chosen_place() -> None:
    for name in ("community-smoke.json", "community-manhole.json", "community-bracelet.json"):
        for panel in dashboards()[name]["panels"]:
            for target in panel.get("targets", []):
                assert '"building" =~ /^$building$/' in target["query"], panel["title"]


def test_bracelet_dashboard_shows_no_wearer_details() -> None:
    text = json.dumps(dashboards()["community-bracelet.json"])
    for personal in ("wearer_name", "wearer_phone", "emergency_contacts", "home_lat", "home_lon"):
        assert personal not in text


def test_charging_temperatures_draw_the_rule_limits() -> None:
    board = dashboards()["community-charging.json"]
    panel = next(p for p in board["panels"] if p["title"].endswith("Port temperatures"))
    defaults = panel["fieldConfig"]["defaults"]
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 60, 80]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line+area"


def test_alert_timeline_is_an_annotation_from_influxdb() -> None:
    board = dashboards()["community-alerts.json"]
    fired = board["annotations"]["list"][0]
    assert fired["datasource"]["type"] == "influxdb"
    assert 'FROM "alert"' in fired["target"]["query"]
    assert fired["textColumn"] == "title"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboards()[name]["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_open_alerts_are_those_fired_and_neither_resolved_nor_closed() -> None:
    # The alert desk writes `acknowledged`, `arrived` and `closed` to `alert`.
    shown = {state for state in AlertState if f"\"state\" = '{state}'" in OPEN}
    assert shown == {AlertState.FIRING, AlertState.ACKNOWLEDGED, AlertState.ARRIVED}
    board = dashboards()["community-overview.json"]
    queries = [t["query"] for p in board["panels"] for t in p.get("targets", [])]
    assert sum(OPEN in query for query in queries) == 4


# Tags unique only within a community: a device id (a building_fire alert's is its
# building's number), a port of it, and the places below the community.
_WITHIN_COMMUNITY = {"device_id", "port", "area", "compound", "building"}


def _grouped_tags(query: str) -> list[set[str]]:
    """The tags of each GROUP BY of a query and its subqueries."""
    plain = re.sub(r"(time|fill)\([^)]*\)", "", query)
    return [
        set(re.findall(r'"(\w+)"', clause.split(")")[0])) for clause in plain.split("GROUP BY ")[1:]
    ]


def test_whatever_tells_devices_or_places_apart_tells_communities_apart() -> None:
    # In the district view (every community chosen) the same id in two communities must
    # stay two devices, two alert series, two map markers, two legend entries.
    checked = 0
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                where = f"{name} {panel['title']} {target['refId']}"
                for tags in _grouped_tags(target["query"]):
                    if tags & _WITHIN_COMMUNITY:
                        checked += 1
                        assert "community" in tags, where
                if "$tag_device_id" in target.get("alias", ""):
                    assert "$tag_community" in target["alias"], where
            for step in panel.get("transformations", []):
                # A join takes one field: a device id alone pairs one community's device
                # with another's.
                assert step["id"] != "joinByField", f"{name} {panel['title']}"
        for annotation in board["annotations"].get("list", []):
            if '"device_id"' in annotation["target"]["query"]:
                assert '"community"' in annotation["target"]["query"], annotation["name"]
                assert "community" in annotation["tagsColumn"].split(","), annotation["name"]
    assert checked > 30


def test_online_rate_draws_the_rate_not_the_device_counts_behind_it() -> None:
    # A bar gauge in percentunit draws every number of a row: the counts the rate comes
    # from would read 40 registered detectors as a full bar of "4000%".
    p = find_panel("community-overview", "在线率")
    registered: Frame = {
        "Time": [0, 0],
        "device_type": ["smoke_detector", "bracelet"],
        "registered": [40, 10],
    }
    offline: Frame = {"Time": [0, 0], "device_type": ["smoke_detector", "bracelet"],
                      "offline": [2, 1]}  # fmt: skip
    shown = numeric_fields(transformed([registered, offline], p["transformations"]))
    assert set(shown) == {"online_rate"}, f"drawn in {p['fieldConfig']['defaults']['unit']}"
    assert shown["online_rate"] == [0.95, 0.9]


def test_the_online_rate_of_a_type_with_none_offline_is_100_percent() -> None:
    # The offline count has no row for a type with no device offline.
    p = find_panel("community-overview", "在线率")
    registered: Frame = {
        "Time": [0, 0],
        "device_type": ["smoke_detector", "bracelet"],
        "registered": [40, 10],
    }
    offline: Frame = {"Time": [0], "device_type": ["smoke_detector"], "offline": [2]}
    shown = numeric_fields(transformed([registered, offline], p["transformations"]))
    assert shown == {"online_rate": [0.95, 1.0]}


def test_disk_filled_up_shows_its_flag() -> None:
    # The gateway writes the flag as a boolean, which a stat shows only when told to:
    # else "No data", whether or not the outbox's reserve was spent.
    (line,) = HealthReport("gw").lines(Stats(), 0, reserve_given_back=True)
    _, _, fields, _ = parse_line(line)
    flags = {name for name, value in fields.items() if isinstance(value, bool)}
    assert "disk_reserve_given_back" in flags
    checked = 0
    for board in dashboards():
        for p in panels_of(board.removesuffix(".json")):
            if p["type"] != "stat":
                continue
            for target in p["targets"]:
                found = re.match(r'SELECT (?:last|first|max|min)\("(\w+)"\) FROM "gateway"',
                                 target["query"])  # fmt: skip
                if found and found.group(1) in flags:
                    checked += 1
                    shown = p["options"]["reduceOptions"].get("fields")
                    assert shown, f"{p['title']}: a boolean in a numeric-only stat"
                    assert re.search(shown.strip("/"), target["alias"]), p["title"]
    assert checked >= 1


def test_time_to_respond_tables_count_alerts_in_alerts_not_seconds() -> None:
    for title in ("确认", "到场", "关闭"):
        p = find_panel("community-alerts", title)
        assert 'AS "alerts"' in p["targets"][0]["query"]
        assert unit_of(p, "p90") in TIME_UNITS
        assert unit_of(p, "alerts") not in TIME_UNITS, f"{p['title']}: a count in seconds"


def test_write_failures_are_counts_on_an_axis_of_their_own() -> None:
    # On the latency's axis 3 failed writes would read "3 ms", unseen at its foot.
    checked = 0
    for p in panels_of("community-gateway-health"):
        for target in p["targets"]:
            query = target["query"]
            if "write_failures" not in query and "commit_failures" not in query:
                continue
            name = re.search(r'AS "(\w+)"', query)
            field = name.group(1) if name else "sum"
            display = target.get("alias", "").replace("$tag_instance", "gw")
            unit = unit_of(p, field, display=display, ref_id=target["refId"])
            checked += 1
            assert unit not in TIME_UNITS, f"{p['title']} {target['refId']}: counts in {unit}"
    assert checked == 2


def test_outside_safe_area_list_shows_when_each_alert_started_as_a_time() -> None:
    # `started_ms` is epoch milliseconds; the row's own time is none of the alert's.
    p = find_panel("community-bracelet", "离开安全区域 Outside their safe area (list)")
    assert '"started_ms"' in p["targets"][0]["query"]
    assert unit_of(p, "started_ms") in DATE_UNITS
    assert "Time" not in transformed([{"Time": [0], "started_ms": [1]}], p["transformations"])[0]


def _returned_columns(query: str) -> set[str]:
    """The columns an InfluxQL query without subqueries returns: what it selects (by
    name or alias) and the tags it groups by."""
    selected = query.split(" FROM ", 1)[0]
    columns = set(re.findall(r'AS "(\w+)"', selected))
    columns |= set(re.findall(r'(?<![\(\w])"(\w+)"(?!\s*\))', re.sub(r'AS "\w+"', "", selected)))
    if "GROUP BY" in query:
        columns |= set(re.findall(r'"(\w+)"', query.split("GROUP BY", 1)[1]))
    return columns


def test_alert_annotations_carry_the_tags_they_name() -> None:
    # Operators tell a fire alarm from a low battery on the time axis, and filter the
    # marks, by these tags.
    for annotation in dashboards()["community-alerts.json"]["annotations"]["list"]:
        query = annotation["target"]["query"]
        missing = set(annotation["tagsColumn"].split(",")) - _returned_columns(query)
        assert not missing, f"{annotation['name']}: {sorted(missing)} not returned"
