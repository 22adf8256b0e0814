"""Alerts and their handling: the timeline, how fast grid workers respond, escalations.

`alert` is written by the rules stage (fired, resolved) and by the alert desk
(acknowledged, arrived, closed); `alert_handling`, `escalation` and `notification` by
the notification stage.
"""

from __future__ import annotations

from gateway.dashboards.board import Board, data_table, single_stat, time_series
from gateway.dashboards.query import ALERT_SERIES, COMMUNITY, OPEN, PLACE, Influx

UID = "community-alerts"

# A grid cell is inside its community: building 3 of one is not building 3 of another.
_CELL = '"community", "area", "compound", "building"'
# What the annotations are tagged with, to tell a fire alarm from a low battery on the
# time axis and filter by. A tag column is there only if the query returns it.
_TAGS = ("community", "device_id", "rule", "severity")
_TAGS_SELECTED = ", ".join(f'"{tag}"' for tag in _TAGS)
# The changes of alerts someone was told of: a pending alert's waiting for its duration,
# and its ending unfired, are nobody's alert.
_ANNOUNCED = "\"state\" != 'pending' AND \"state\" != 'ended'"


def _handling(field: str) -> str:
    return (
        f'SELECT mean("{field}") AS "mean", percentile("{field}", 90) AS "p90", '
        f'count("{field}") AS "alerts" FROM "alert_handling" WHERE {PLACE} AND $timeFilter '
        f"GROUP BY {_CELL}"
    )


def build() -> Board:
    board = Board(
        UID,
        "告警处置 Alerts and handling",
        "Alert timeline, open alerts, time to acknowledge / arrive / close by grid cell, "
        "escalations and notifications.",
        ["alerts"],
    )
    board.annotate(
        "告警 Alerts fired",
        f'SELECT "title", {_TAGS_SELECTED} FROM "alert" WHERE {PLACE} '
        "AND \"state\" = 'firing' AND $timeFilter",
        "red",
        text="title",
        tags=",".join(_TAGS),
    )
    board.annotate(
        "恢复 Alerts resolved",
        f'SELECT "title", {_TAGS_SELECTED} FROM "alert" WHERE {PLACE} '
        "AND \"state\" = 'resolved' AND $timeFilter",
        "green",
        text="title",
        tags=",".join(_TAGS),
    )
    board.add(
        single_stat(
            "未处理告警 Open alerts",
            "Alerts firing, acknowledged or reached and neither resolved nor closed.",
            Influx(
                'SELECT count("state") AS "open" FROM ('
                f'SELECT last("state") AS "state" FROM "alert" WHERE {PLACE} '
                f"GROUP BY {ALERT_SERIES}) WHERE {OPEN}"
            ),
            steps=((None, "green"), (1, "red")),
        )
    )
    board.add(
        time_series(
            "告警趋势 Alerts fired by severity",
            "Alerts that started firing, per interval, by severity.",
            Influx(
                f'SELECT count("alert_id") FROM "alert" WHERE {PLACE} AND "state" = \'firing\' '
                'AND $timeFilter GROUP BY time($__interval), "severity" fill(none)'
            ).alias("$tag_severity"),
            bars=True,
            width=18,
        )
    )
    board.add(
        data_table(
            "告警记录 Alert changes",
            "Every change of every alert in the time range, newest first: fired, "
            "acknowledged, reached, resolved, closed.",
            Influx(
                'SELECT "state", "title", "alert_id", "life_safety" FROM "alert" '
                f"WHERE {PLACE} AND {_ANNOUNCED} AND $timeFilter "
                f'GROUP BY "device_id", "rule", "severity", {_CELL}'
            ).table(),
            sort_by="Time",
            descending=True,
            width=24,
            height=10,
        )
    )
    board.row("处置时效 Time to respond, by grid cell")
    for title, field, description in (
        ("确认 Time to acknowledge", "acknowledge_s", "From firing to a grid worker taking it."),
        ("到场 Time to arrive", "arrive_s", "From firing to the grid worker on the spot."),
        ("关闭 Time to close", "close_s", "From firing to the alert closed, with a note."),
    ):
        board.add(
            data_table(
                title,
                description + " Mean and 90th percentile per grid cell, and how many alerts.",
                Influx(_handling(field)).table(),
                unit="s",
                steps=((None, "green"), (600, "orange"), (1800, "red")),
                column_units=(("alerts", "short"),),
                sort_by="p90",
                descending=True,
                width=8,
            )
        )
    board.row("升级与通知 Escalations and notifications")
    board.add(
        time_series(
            "升级 Escalations",
            "Alerts escalated to the next step of their policy, per interval, by step.",
            Influx(
                f'SELECT count("step_index") FROM "escalation" WHERE {COMMUNITY} '
                'AND $timeFilter GROUP BY time($__interval), "step", "severity" fill(none)'
            ).alias("$tag_step ($tag_severity)"),
            bars=True,
            width=8,
        )
    )
    board.add(
        time_series(
            "通知 Notifications by channel and result",
            "Messages sent to grid workers per interval (WeCom, DingTalk, SMS, voice).",
            Influx(
                f'SELECT sum("count") FROM "notification" WHERE {COMMUNITY} AND $timeFilter '
                'GROUP BY time($__interval), "channel", "result" fill(none)'
            ).alias("$tag_channel $tag_result"),
            bars=True,
            width=8,
        )
    )
    board.add(
        time_series(
            "通知延迟 Notification latency",
            "How long a channel took to accept a message, from the start of the send to the "
            "provider's answer: the mean over the messages accepted. Failed and retried sends "
            "(a timeout's wait among them) are counted in the panel beside, not here.",
            Influx(
                f'SELECT mean("latency_ms") FROM "notification" WHERE {COMMUNITY} '
                "AND \"result\" = 'sent' AND $timeFilter "
                'GROUP BY time($__interval), "channel" fill(none)'
            ).alias("$tag_channel"),
            unit="ms",
            width=8,
        )
    )
    return board
