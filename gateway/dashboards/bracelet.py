"""Elderly residents' bracelets (智能手环).

Only device ids and places: wearers' names and phone numbers never reach the time
series, and these dashboards hang on public screens.
"""

from __future__ import annotations

from gateway.dashboards.board import (
    Board,
    data_table,
    device_map,
    flag_mapping,
    marker_layer,
    state_timeline,
    time_series,
    transform,
)
from gateway.dashboards.query import (
    ALERT_SERIES,
    DEVICE,
    DEVICE_LABEL,
    OPEN,
    PLACE,
    Influx,
    last_battery,
)

UID = "community-bracelet"

_PRIVACY = " Wearers are shown by bracelet id and place only."


def build() -> Board:
    board = Board(
        UID,
        "智能手环 Bracelets",
        "Heart rate, activity, falls and SOS, wearers outside their safe area." + _PRIVACY,
        ["bracelet"],
    )
    board.add(
        time_series(
            "心率 Heart rate",
            "Mean heart rate while the bracelet is worn; the rule fires below 40 or above "
            "150 bpm held for 60 s." + _PRIVACY,
            Influx(
                f'SELECT mean("heart_rate_bpm") FROM "bracelet" WHERE {PLACE} '
                f'AND "worn" = true AND $timeFilter GROUP BY time($__interval), {DEVICE} '
                "fill(none)"
            ).alias(DEVICE_LABEL),
            unit="suffix: bpm",
            steps=((None, "red"), (40, "green"), (150, "red")),
            draw_steps=True,
        )
    )
    board.add(
        time_series(
            "活动 Activity (steps)",
            "Steps taken today, as the bracelet counts them; a flat line all day for "
            "someone living alone is the no-activity alert." + _PRIVACY,
            Influx(
                f'SELECT max("steps") FROM "bracelet" WHERE {PLACE} AND $timeFilter '
                f"GROUP BY time($__interval), {DEVICE} fill(none)"
            ).alias(DEVICE_LABEL),
        )
    )
    outside = Influx(
        'SELECT "lat", "lon", "state" FROM ('
        'SELECT last("state") AS "state", last("lat") AS "lat", last("lon") AS "lon" '
        f'FROM "alert" WHERE {PLACE} AND "rule" = \'left_safe_area\' '
        f'GROUP BY {ALERT_SERIES}) WHERE {OPEN} GROUP BY {DEVICE}, "building"'
    ).table()
    board.add(
        device_map(
            "离开安全区域 Wearers outside their safe area",
            "Bracelets with an open left-safe-area alert, at their registered place." + _PRIVACY,
            [outside],
            [marker_layer("Outside safe area", "A", "orange", 10)],
            height=10,
        )
    )
    board.add(
        data_table(
            "离开安全区域 Outside their safe area (list)",
            "The same bracelets as a list, with when the alert started." + _PRIVACY,
            Influx(
                'SELECT "state", "started_ms" FROM ('
                'SELECT last("state") AS "state", last("started_ms") AS "started_ms" '
                f'FROM "alert" WHERE {PLACE} AND "rule" = \'left_safe_area\' '
                f"GROUP BY {ALERT_SERIES}) "
                f'WHERE {OPEN} GROUP BY {DEVICE}, "compound", "building"'
            ).table(),
            # A row of two last()s has no point's time (1970 here, with no time range):
            # when the alert started is `started_ms`, shown as a time.
            transformations=[
                transform("organize", {"excludeByName": {"Time": True}, "renameByName": {}})
            ],
            column_units=(("started_ms", "dateTimeAsIso"),),
            height=10,
        )
    )
    board.add(
        time_series(
            "跌倒与求助 Falls and SOS",
            "Fall, SOS and bracelet-removed events per interval." + _PRIVACY,
            Influx(
                f'SELECT sum("count") FROM "bracelet_event" WHERE {PLACE} AND $timeFilter '
                'GROUP BY time($__interval), "event" fill(none)'
            ).alias("$tag_event"),
            bars=True,
        )
    )
    board.add(
        state_timeline(
            "佩戴 Worn",
            "Whether each bracelet is being worn." + _PRIVACY,
            Influx(
                f'SELECT last("worn") FROM "bracelet" WHERE {PLACE} AND $timeFilter '
                f"GROUP BY time($__interval), {DEVICE} fill(previous)"
            ).alias(DEVICE_LABEL),
            mappings=[flag_mapping("worn", "green", "not worn", "orange")],
        )
    )
    board.add(
        data_table(
            "电池 Batteries, lowest first",
            "Last reported battery of every bracelet, with the blood oxygen and place of "
            "that report; the low-battery rule fires under 15%." + _PRIVACY,
            Influx(last_battery("bracelet", beside="spo2_pct")).table(),
            steps=((None, "red"), (15, "orange"), (30, "green")),
            sort_by="battery_pct",
            width=24,
        )
    )
    return board
