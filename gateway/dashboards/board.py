"""A dashboard under construction, and the kinds of panel the dashboards use.

Panels get ids in the order they are added and the SDK lays them out left to right,
so the same code always gives the same JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import bargauge, geomap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import geomap as geomap_model

from gateway.dashboards.query import DATASOURCE, Influx, variables

# (value, colour); the first step's value is None: the base colour below every threshold.
Steps = Sequence[tuple[float | None, str]]
PanelBuilder = cogbuilder.Builder[model.Panel]

TAG = "community-gateway"


class Board:
    def __init__(self, uid: str, title: str, description: str, tags: Sequence[str]) -> None:
        self.uid = uid
        self._builder = (
            dash.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG, *tags])
            .time("now-6h", "now")
            .refresh("30s")
            .timezone("browser")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .link(
                dash.DashboardLink("Community dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )
        for variable in variables():
            self._builder.with_variable(variable)
        self._next_id = 1

    def row(self, title: str) -> None:
        self._builder.with_row(dash.Row(title).id(self._take_id()))

    def add(self, panel: Any) -> None:
        """A panel builder of any kind; the SDK types each kind's builder separately."""
        panel.id(self._take_id()).datasource(DATASOURCE)
        self._builder.with_panel(panel)

    def annotate(self, name: str, query: str, colour: str, *, text: str, tags: str) -> None:
        """Events from InfluxDB drawn on every time axis of the dashboard."""
        self._builder.annotation(_InfluxAnnotation(name, query, colour, text, tags))

    def to_json(self) -> dict[str, Any]:
        built: dict[str, Any] = json.loads(json.dumps(self._builder.build(), cls=JSONEncoder))
        return built

    def _take_id(self) -> int:
        taken, self._next_id = self._next_id, self._next_id + 1
        return taken


class _Annotation(model.AnnotationQuery):
    def __init__(self, base: model.AnnotationQuery, influx: dict[str, object]) -> None:
        super().__init__(
            name=base.name,
            datasource=base.datasource,
            enable=base.enable,
            icon_color=base.icon_color,
        )
        self._influx = influx

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), **self._influx}


class _InfluxAnnotation(cogbuilder.Builder[model.AnnotationQuery]):
    """The SDK's annotation target only has Grafana's own fields; InfluxDB annotations
    carry their query, and which columns give the text and the tags."""

    def __init__(self, name: str, query: str, colour: str, text: str, tags: str) -> None:
        base = dash.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True)
        self._annotation = _Annotation(
            base.icon_color(colour).build(),
            {
                "target": {"query": query, "rawQuery": True, "refId": "Anno"},
                "query": query,
                "textColumn": text,
                "tagsColumn": tags,
            },
        )

    def build(self) -> model.AnnotationQuery:
        return self._annotation


def thresholds(steps: Steps) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=colour) for value, colour in steps])
    )


GREEN: Steps = ((None, "green"),)


def time_series(
    title: str,
    description: str,
    *queries: Influx,
    unit: str = "short",
    steps: Steps = GREEN,
    draw_steps: bool = False,
    bars: bool = False,
    right_axis: Sequence[str] = (),
    right_unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """`right_axis`: the ref ids of queries drawn against an axis of their own on the
    right, in `right_unit`, such as counts beside a duration."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .targets(list(queries))
        .unit(unit)
        .thresholds(thresholds(steps))
        .span(width)
        .height(height)
    )
    if draw_steps:
        # Thresholds drawn on the graph, so a temperature is seen against its limits.
        panel.thresholds_style(
            common_builder.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.LINE_AND_AREA
            )
        )
    if bars:
        panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    for ref_id in right_axis:
        panel.override_by_query(
            ref_id,
            [
                model.DynamicConfigValue(id_val="unit", value=right_unit),
                model.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            ],
        )
    return panel


def single_stat(
    title: str,
    description: str,
    *queries: Influx,
    unit: str = "short",
    steps: Steps = GREEN,
    mappings: Sequence[model.ValueMapping] = (),
    field: str | None = None,
    width: int = 6,
    height: int = 5,
) -> stat.Panel:
    """`field`: the name of the one field to show (a query's alias), for a value that is
    not a number: a stat shows numeric fields only unless told which."""
    reduce = common_builder.ReduceDataOptions().calcs(["lastNotNull"])
    if field is not None:
        # Escaped as Grafana escapes a field's name when one is picked in its editor.
        reduce.fields("/^" + re.sub(r"[\\^$*+?.()|\[\]{}/]", r"\\\g<0>", field) + "$/")
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .targets(list(queries))
        .unit(unit)
        .thresholds(thresholds(steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(reduce)
        .span(width)
        .height(height)
    )
    if mappings:
        panel.mappings(list(mappings))
    return panel


def bar_gauge(
    title: str,
    description: str,
    *queries: Influx,
    unit: str = "short",
    steps: Steps = GREEN,
    maximum: float | None = None,
    transformations: Sequence[model.DataTransformerConfig] = (),
    width: int = 12,
    height: int = 8,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .targets(list(queries))
        .unit(unit)
        .min(0)
        .thresholds(thresholds(steps))
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(common_builder.ReduceDataOptions().values(True).calcs([]))
        .transformations(list(transformations))
        .span(width)
        .height(height)
    )
    if maximum is not None:
        panel.max(maximum)
    return panel


def data_table(
    title: str,
    description: str,
    *queries: Influx,
    unit: str = "short",
    steps: Steps = GREEN,
    sort_by: str | None = None,
    descending: bool = False,
    transformations: Sequence[model.DataTransformerConfig] = (),
    column_units: Sequence[tuple[str, str]] = (),
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    """`column_units`: (column, unit) for the columns not in the panel's `unit`."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .targets(list(queries))
        .unit(unit)
        .thresholds(thresholds(steps))
        .transformations(list(transformations))
        .filterable(True)
        .span(width)
        .height(height)
    )
    if sort_by is not None:
        panel.sort_by(
            [common_builder.TableSortByFieldState().display_name(sort_by).desc(descending)]
        )
    for column, column_unit in column_units:
        panel.override_by_name(column, [model.DynamicConfigValue(id_val="unit", value=column_unit)])
    return panel


def state_timeline(
    title: str,
    description: str,
    *queries: Influx,
    mappings: Sequence[model.ValueMapping] = (),
    width: int = 12,
    height: int = 8,
) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .targets(list(queries))
        .mappings(list(mappings))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .span(width)
        .height(height)
    )


def flag_mapping(true_text: str, true_colour: str, false_text: str, false_colour: str) -> Any:
    return model.ValueMap(
        options={
            "true": model.ValueMappingResult(text=true_text, color=true_colour, index=0),
            "false": model.ValueMappingResult(text=false_text, color=false_colour, index=1),
        }
    )


def marker_layer(name: str, ref_id: str, colour: str, size: int) -> common_builder.MapLayerOptions:
    """Markers at the `lat`/`lon` of the rows one query returns."""
    return (
        common_builder.MapLayerOptions()
        .type("markers")
        .name(name)
        .config(
            {
                "showLegend": True,
                "style": {
                    "color": {"fixed": colour},
                    "opacity": 0.9,
                    "size": {"fixed": size},
                    "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                },
            }
        )
        .location(
            common_builder.FrameGeometrySource()
            .mode(common.FrameGeometrySourceMode.COORDS)
            .latitude("lat")
            .longitude("lon")
        )
        .filter_data({"id": "byRefId", "options": ref_id})
        .tooltip(True)
    )


def device_map(
    title: str,
    description: str,
    queries: Sequence[Influx],
    layers: Sequence[common_builder.MapLayerOptions],
    *,
    width: int = 12,
    height: int = 14,
) -> geomap.Panel:
    return (
        geomap.Panel()
        .title(title)
        .description(description)
        .targets(list(queries))
        .view(geomap.MapViewConfig().id("fit").all_layers(True).padding(10))
        # Grafana's default base map; a box without internet shows the markers alone.
        .basemap(common_builder.MapLayerOptions().type("default").name("Basemap"))
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True))
        .layers(list(layers))
        .tooltip(geomap.TooltipOptions().mode(geomap_model.TooltipMode.DETAILS))
        .span(width)
        .height(height)
    )


def transform(kind: str, options: dict[str, object]) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(id_val=kind, options=options)
