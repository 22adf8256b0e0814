"""Smart manhole covers (智慧窨井盖): water against well depth, lids, sewer gas."""

from __future__ import annotations

from gateway.dashboards.board import (
    Board,
    bar_gauge,
    data_table,
    flag_mapping,
    state_timeline,
    time_series,
    transform,
)
from gateway.dashboards.query import DEVICE, DEVICE_LABEL, PLACE, Influx

UID = "community-manhole"


def build() -> Board:
    board = Board(
        UID,
        "窨井盖 Manhole covers",
        "Water level against each well's depth (overflow risk past 80%), lids, tilt and gas.",
        ["manhole_cover"],
    )
    board.add(
        bar_gauge(
            "水位/井深 Water level as a share of well depth",
            "Last water level divided by the well depth the registry gives (device_info). "
            "The overflow-risk rule fires past 80%.",
            Influx(
                'SELECT last("water_level_cm") AS "water_level_cm" FROM "manhole_cover" '
                f"WHERE {PLACE} AND $timeFilter GROUP BY {DEVICE}"
            ).table(),
            # The depth of the registry's last point of a cover still registered: one
            # taken out of the sheet, or whose depth was, has none.
            Influx(
                'SELECT "well_depth_cm" FROM ('
                'SELECT last("registered") AS "registered", "well_depth_cm" FROM "device_info" '
                f"WHERE {PLACE} AND \"device_type\" = 'manhole_cover' GROUP BY {DEVICE}"
                f') WHERE "registered" = true GROUP BY {DEVICE}',
                ref_id="B",
            ).table(),
            unit="percentunit",
            maximum=1,
            steps=((None, "green"), (0.6, "orange"), (0.8, "red")),
            transformations=[
                # A well is its community and id together (one id may be a well in each
                # of two communities), and a join takes one field: the two tables are
                # merged on the fields they share, their times (which differ) left out.
                transform("organize", {"excludeByName": {"Time": True}, "renameByName": {}}),
                transform("merge", {}),
                # Only wells with both a level and a depth, as an inner join would keep.
                transform(
                    "filterByValue",
                    {
                        "filters": [
                            {"fieldName": name, "config": {"id": "isNull", "options": {}}}
                            for name in ("water_level_cm", "well_depth_cm")
                        ],
                        "match": "any",
                        "type": "exclude",
                    },
                ),
                transform(
                    "calculateField",
                    {
                        "alias": "filled",
                        "mode": "binary",
                        "binary": {
                            "left": "water_level_cm",
                            "operator": "/",
                            "right": "well_depth_cm",
                        },
                        "replaceFields": False,
                    },
                ),
                # Each bar is named by the text left in its row: community and well id.
                transform(
                    "organize",
                    {
                        "excludeByName": {"water_level_cm": True, "well_depth_cm": True},
                        "renameByName": {},
                    },
                ),
            ],
            height=10,
        )
    )
    board.add(
        time_series(
            "水位 Water level",
            "Water depth from the bottom of each well.",
            Influx(
                f'SELECT max("water_level_cm") FROM "manhole_cover" WHERE {PLACE} '
                f"AND $timeFilter GROUP BY time($__interval), {DEVICE} fill(none)"
            ).alias(DEVICE_LABEL),
            unit="suffix: cm",
            height=10,
        )
    )
    board.add(
        state_timeline(
            "井盖状态 Lid state",
            "Open or closed, as each cover last reported in the interval.",
            Influx(
                f'SELECT last("lid_open") FROM "manhole_cover" WHERE {PLACE} '
                f"AND $timeFilter GROUP BY time($__interval), {DEVICE} fill(previous)"
            ).alias(DEVICE_LABEL),
            mappings=[flag_mapping("open", "red", "closed", "green")],
        )
    )
    board.add(
        time_series(
            "倾斜 Tilt",
            "Lid tilt; the cover-open rule fires past 15°.",
            Influx(
                f'SELECT max("tilt_deg") FROM "manhole_cover" WHERE {PLACE} '
                f"AND $timeFilter GROUP BY time($__interval), {DEVICE} fill(none)"
            ).alias(DEVICE_LABEL),
            unit="degree",
            steps=((None, "green"), (15, "red")),
            draw_steps=True,
        )
    )
    board.add(
        time_series(
            "沼气 Sewer gas (CH₄)",
            "Methane in the well; the sewer-gas rule fires past 5000 ppm.",
            Influx(
                f'SELECT max("ch4_ppm") FROM "manhole_cover" WHERE {PLACE} '
                f"AND $timeFilter GROUP BY time($__interval), {DEVICE} fill(none)"
            ).alias(DEVICE_LABEL),
            unit="ppm",
            steps=((None, "green"), (5000, "red")),
            draw_steps=True,
        )
    )
    board.add(
        data_table(
            "井盖事件 Lid events",
            "Lids opened, closed, displaced or tampered with, newest first.",
            Influx(
                f'SELECT "count" FROM "manhole_cover_event" WHERE {PLACE} AND $timeFilter '
                f'GROUP BY {DEVICE}, "event", "compound"'
            ).table(),
            sort_by="Time",
            descending=True,
        )
    )
    return board
