"""The community at a glance: where every device is and what state it is in."""

from __future__ import annotations

from gateway.dashboards.board import (
    Board,
    bar_gauge,
    device_map,
    marker_layer,
    single_stat,
    time_series,
    transform,
)
from gateway.dashboards.query import ALERT_SERIES, DEVICE, OPEN, PLACE, Influx

UID = "community-overview"

# The last state of each alert series (one open alert per rule, device, port and cell).
_LAST_ALERT = (
    'SELECT last("state") AS "state", last("lat") AS "lat", last("lon") AS "lon" '
    f'FROM "alert" WHERE {PLACE} AND {{rule}} GROUP BY {ALERT_SERIES}, "device_type", '
    '"severity"'
)
# The online rate's count of devices offline, 0 for a type with none.
_OFFLINE_OR_0 = "offline_or_0"


def build() -> Board:
    board = Board(
        UID,
        "社区总览 Community overview",
        "Every device on the map by state, open alerts, online rate and traffic.",
        ["overview"],
    )
    # A device's series where the registry no longer has it (taken out, or moved to
    # another building) ends with a point of registered=false. The position is the one
    # of the last point: a last() of its own would keep the old building's position of
    # a device moved where the registry gives none.
    devices = Influx(
        'SELECT "lat", "lon" FROM ('
        'SELECT last("registered") AS "registered", "lat", "lon" '
        f'FROM "device_info" WHERE {PLACE} GROUP BY {DEVICE}, "device_type"'
        f') WHERE "registered" = true GROUP BY {DEVICE}, "device_type"'
    ).table()
    offline = Influx(
        'SELECT "lat", "lon", "state" FROM ('
        + _LAST_ALERT.format(rule="\"rule\" = 'device_offline'")
        + f') WHERE {OPEN} GROUP BY {DEVICE}, "device_type"',
        ref_id="B",
    ).table()
    alarm = Influx(
        'SELECT "lat", "lon", "state" FROM ('
        + _LAST_ALERT.format(rule="\"rule\" != 'device_offline'")
        + f') WHERE {OPEN} GROUP BY {DEVICE}, "device_type", "rule", "severity"',
        ref_id="C",
    ).table()
    board.add(
        single_stat(
            "未处理告警 Open alerts by severity",
            "Alerts firing, acknowledged or reached and neither resolved nor closed, by severity.",
            Influx(
                'SELECT count("state") AS "open" FROM ('
                + 'SELECT last("state") AS "state" FROM "alert" '
                + f'WHERE {PLACE} GROUP BY {ALERT_SERIES}, "severity"'
                + f') WHERE {OPEN} GROUP BY "severity"'
            ).alias("$tag_severity"),
            steps=((None, "green"), (1, "red")),
            width=8,
            height=8,
        )
    )
    registered = Influx(
        'SELECT count("registered") AS "registered" FROM ('
        'SELECT last("registered") AS "registered" FROM "device_info" '
        f'WHERE {PLACE} GROUP BY {DEVICE}, "device_type"'
        ') WHERE "registered" = true GROUP BY "device_type"'
    ).table()
    offline_count = Influx(
        'SELECT count("state") AS "offline" FROM ('
        'SELECT last("state") AS "state" FROM "alert" '
        f'WHERE {PLACE} AND "rule" = \'device_offline\' GROUP BY {ALERT_SERIES}, "device_type"'
        f') WHERE {OPEN} GROUP BY "device_type"',
        ref_id="B",
    ).table()
    board.add(
        bar_gauge(
            "在线率 Online rate by device type",
            "Registered devices not offline, as a share of the registered devices.",
            registered,
            offline_count,
            unit="percentunit",
            maximum=1,
            steps=((None, "red"), (0.9, "orange"), (0.98, "green")),
            transformations=[
                transform("merge", {}),
                # A type with no device offline has no row of the offline count, and with
                # none offline at all (the normal state) there is no `offline` field, which
                # a binary operation takes for no operand and adds nothing. A sum of the
                # field alone is its count where there is one, else 0.
                transform(
                    "calculateField",
                    {
                        "alias": _OFFLINE_OR_0,
                        "mode": "reduceRow",
                        "reduce": {"include": ["offline"], "reducer": "sum"},
                        "replaceFields": False,
                    },
                ),
                transform(
                    "calculateField",
                    {
                        "alias": "online",
                        "mode": "binary",
                        "binary": {"left": "registered", "operator": "-", "right": _OFFLINE_OR_0},
                        "replaceFields": False,
                    },
                ),
                transform(
                    "calculateField",
                    {
                        "alias": "online_rate",
                        "mode": "binary",
                        "binary": {"left": "online", "operator": "/", "right": "registered"},
                    },
                ),
                # The gauge draws every number in a row: the rate alone, not the counts
                # it comes from read as percentages.
                transform(
                    "organize",
                    {
                        "excludeByName": {
                            name: True
                            for name in ("Time", "registered", "offline", _OFFLINE_OR_0, "online")
                        },
                        "renameByName": {},
                    },
                ),
            ],
            width=16,
            height=8,
        )
    )
    board.add(
        device_map(
            "设备地图 Devices by state",
            "Green: normal; grey: offline (silent for 2.5 reporting periods); red: an "
            "open alert. Positions come from the device registry (device_info).",
            [devices.alias("devices"), offline, alarm],
            [
                marker_layer("Normal", "A", "green", 6),
                marker_layer("Offline", "B", "#8e8e8e", 8),
                marker_layer("Alarm", "C", "red", 10),
            ],
            width=24,
            height=16,
        )
    )
    board.add(
        time_series(
            "消息速率 Messages per minute",
            "Device messages the gateway took in, per minute (all its communities).",
            Influx(
                'SELECT sum("messages_in") FROM "gateway" WHERE $timeFilter '
                'GROUP BY time(1m), "instance" fill(0)'
            ).alias("$tag_instance"),
            unit="short",
            bars=True,
            width=24,
            height=7,
        )
    )
    return board
