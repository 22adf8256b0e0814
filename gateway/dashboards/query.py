"""InfluxQL queries as Grafana panel targets, and the template variables they use.

The Foundation SDK has builders for many data sources but not for InfluxDB, so the
InfluxDB query model is declared here as one more variant of the SDK's `Dataquery`.
Queries are raw InfluxQL, which InfluxDB 1.x, 2.x (through its DBRP mapping) and 3.x
all answer.
"""

from __future__ import annotations

from typing import Literal, Self

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as model

DATASOURCE_TYPE = "influxdb"
# Every panel asks the data source the `datasource` variable names, so that the same
# dashboard works on a Grafana whose InfluxDB data source has another uid.
DATASOURCE = model.DataSourceRef(type_val=DATASOURCE_TYPE, uid="${datasource}")
# The uid of the data source the shipped provisioning file creates.
PROVISIONED_DATASOURCE_UID = "community-influxdb"

# The grid cell chosen with the template variables. A device without a building (a
# manhole cover in a street) has an empty tag, which the "All" value `.*` matches.
PLACE = (
    '"community" =~ /^$community$/ AND "area" =~ /^$area$/ '
    'AND "compound" =~ /^$compound$/ AND "building" =~ /^$building$/'
)
COMMUNITY = '"community" =~ /^$community$/'
# A device id is unique only within its community (a building_fire alert's id is the
# building's number), so every series of a device, and every alert series, is told
# apart by both: with every community chosen, one community's device would otherwise
# merge with another's of the same id, its fire hidden by the other's all-clear.
DEVICE = '"community", "device_id"'
# A device as people read it in a legend; a bare id names several in the district view.
DEVICE_LABEL = "$tag_community $tag_device_id"
# Alerts still open: firing, or taken by a grid worker (and perhaps reached) and neither
# resolved nor closed. The rules stage writes `firing` and `resolved` to `alert`, the
# alert desk what people make of it: `acknowledged`, `arrived`, `closed`.
OPEN = "(\"state\" = 'firing' OR \"state\" = 'acknowledged' OR \"state\" = 'arrived')"
# What tells one alert series from another, for the last state of each: an alert keeps
# the grid cell where it began, so a device moved while an alert of it is open has a
# series in each cell, and the alert desk writes to each as to a series of its own.
# Without the cell, closing the old alert would hide the new one, still open.
ALERT_SERIES = f'{DEVICE}, "rule", "port", "area", "compound", "building"'

ResultFormat = Literal["time_series", "table"]


def last_battery(measurement: str, beside: str) -> str:
    """Each device's last battery, with another field of the same report and the place
    it reported from.

    A device moved to another building has a series in each: grouped by the place too, it
    would be a row in each, the old building's battery among them. So the place is
    selected, from the point last() picks, as InfluxQL allows beside one selector only.
    """
    return (
        f'SELECT last("battery_pct") AS "battery_pct", "{beside}", "compound", "building" '
        f'FROM "{measurement}" WHERE {PLACE} AND $timeFilter GROUP BY {DEVICE}'
    )


class InfluxQuery(cogvariants.Dataquery):
    """The InfluxDB data source's query model, InfluxQL in raw mode."""

    def __init__(self, ref_id: str, query: str, result_format: ResultFormat, alias: str) -> None:
        self.ref_id = ref_id
        self.query = query
        self.result_format = result_format
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "datasource": DATASOURCE.to_json(),
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.result_format,
        }
        if self.alias:
            payload["alias"] = self.alias
        return payload


class Influx(cogbuilder.Builder[InfluxQuery]):
    def __init__(self, query: str, *, ref_id: str = "A") -> None:
        self._internal = InfluxQuery(ref_id, query, "time_series", "")

    def build(self) -> InfluxQuery:
        return self._internal

    def table(self) -> Self:
        self._internal.result_format = "table"
        return self

    def alias(self, alias: str) -> Self:
        """A series' name: `$tag_device_id` and the like."""
        self._internal.alias = alias
        return self


def variables() -> list[cogbuilder.Builder[model.VariableModel]]:
    """The data source, then the grid from the community down: each level offers only
    the places inside the ones chosen above it."""
    datasource = (
        dash.DatasourceVariable("datasource")
        .label("InfluxDB")
        .type(DATASOURCE_TYPE)
        .current(
            model.VariableOption(
                selected=True,
                text=PROVISIONED_DATASOURCE_UID,
                value=PROVISIONED_DATASOURCE_UID,
            )
        )
    )
    levels = [
        ("community", "社区 Community", []),
        ("area", "片区 Area", ["community"]),
        ("compound", "小区 Compound", ["community", "area"]),
        ("building", "楼栋 Building", ["community", "area", "compound"]),
    ]
    places: list[cogbuilder.Builder[model.VariableModel]] = [datasource]
    for name, label, above in levels:
        where = " AND ".join(f'"{level}" =~ /^${level}$/' for level in above)
        query = f'SHOW TAG VALUES FROM "device_info" WITH KEY = "{name}"'
        if where:
            query += f" WHERE {where}"
        places.append(
            dash.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text="All", value="$__all"))
        )
    return places


def variable_queries(board: dict[str, object]) -> dict[str, str]:
    """The InfluxQL of each query variable of a generated dashboard, by name."""
    templating = board.get("templating")
    found: dict[str, str] = {}
    if isinstance(templating, dict):
        for variable in templating.get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                found[variable["name"]] = query if isinstance(query, str) else query["query"]
    return found
