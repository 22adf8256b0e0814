"""Smoke detectors (烟感): alarms and batteries."""

from __future__ import annotations

from gateway.dashboards.board import Board, data_table, single_stat, time_series
from gateway.dashboards.query import DEVICE, DEVICE_LABEL, PLACE, Influx, last_battery

UID = "community-smoke"


def build() -> Board:
    board = Board(
        UID,
        "烟感 Smoke detectors",
        "Detectors in alarm, alarm and fault events, smoke density and batteries.",
        ["smoke_detector"],
    )
    board.add(
        single_stat(
            "报警中 Detectors in alarm",
            "Detectors whose last report in the time range says they are alarming.",
            Influx(
                'SELECT count("alarm") AS "alarming" FROM ('
                f'SELECT last("alarm") AS "alarm" FROM "smoke_detector" WHERE {PLACE} '
                f'AND $timeFilter GROUP BY {DEVICE}) WHERE "alarm" = true'
            ),
            steps=((None, "green"), (1, "red")),
        )
    )
    board.add(
        single_stat(
            "低电量 Batteries below 20%",
            "Detectors whose last reported battery is under the low-battery rule's 20%.",
            Influx(
                'SELECT count("battery_pct") AS "low" FROM ('
                f'SELECT last("battery_pct") AS "battery_pct" FROM "smoke_detector" '
                f'WHERE {PLACE} AND $timeFilter GROUP BY {DEVICE}) WHERE "battery_pct" < 20'
            ),
            steps=((None, "green"), (1, "orange")),
        )
    )
    board.add(
        time_series(
            "报警与故障 Alarm, tamper and fault events",
            "Events the detectors sent, per interval, by kind.",
            Influx(
                f'SELECT sum("count") FROM "smoke_detector_event" WHERE {PLACE} '
                'AND $timeFilter GROUP BY time($__interval), "event" fill(none)'
            ).alias("$tag_event"),
            bars=True,
        )
    )
    board.add(
        time_series(
            "烟雾浓度 Smoke obscuration",
            "Highest obscuration per interval, by detector.",
            Influx(
                f'SELECT max("obscuration_pct_per_m") FROM "smoke_detector" WHERE {PLACE} '
                f"AND $timeFilter GROUP BY time($__interval), {DEVICE} fill(none)"
            ).alias(DEVICE_LABEL),
            unit="suffix:%/m",
            width=12,
        )
    )
    board.add(
        data_table(
            "电池 Batteries, lowest first",
            "Last reported battery level of every detector, with the signal strength and "
            "building of that report.",
            Influx(last_battery("smoke_detector", beside="rssi_dbm")).table(),
            steps=((None, "red"), (20, "orange"), (40, "green")),
            sort_by="battery_pct",
            width=12,
            height=10,
        )
    )
    board.add(
        data_table(
            "事件记录 Recent events",
            "Every event in the time range, newest first.",
            Influx(
                f'SELECT "count" FROM "smoke_detector_event" WHERE {PLACE} AND $timeFilter '
                f'GROUP BY {DEVICE}, "event", "building"'
            ).table(),
            sort_by="Time",
            descending=True,
            width=12,
            height=10,
        )
    )
    return board
