"""E-bike charging sheds (电动车充电棚): port temperatures, currents, sessions."""

from __future__ import annotations

from gateway.dashboards.board import (
    Board,
    flag_mapping,
    single_stat,
    state_timeline,
    time_series,
)
from gateway.dashboards.query import DEVICE, DEVICE_LABEL, PLACE, Influx

UID = "community-charging"

# The rules' limits: port overheating past 60 °C, thermal runaway risk past 80 °C.
PORT_TEMPERATURE_STEPS = ((None, "green"), (60, "orange"), (80, "red"))
OVER_CURRENT_A = 10
# A port as people read it in a legend: its shed (community and id), then its number.
_PORT_LABEL = f"{DEVICE_LABEL} port $tag_port"


def build() -> Board:
    board = Board(
        UID,
        "充电棚 E-bike charging sheds",
        "Port temperatures against the 60 °C and 80 °C limits, currents, charging sessions.",
        ["charging_shed"],
    )
    board.add(
        single_stat(
            "充电中 Ports charging",
            "Ports whose last report in the time range says they are charging.",
            Influx(
                'SELECT count("charging") AS "charging" FROM ('
                f'SELECT last("charging") AS "charging" FROM "charging_port" WHERE {PLACE} '
                f'AND $timeFilter GROUP BY {DEVICE}, "port") WHERE "charging" = true'
            ),
        )
    )
    board.add(
        single_stat(
            "最高端口温度 Hottest port",
            "The highest port temperature in the time range.",
            Influx(
                f'SELECT max("temperature_c") FROM "charging_port" WHERE {PLACE} AND $timeFilter'
            ),
            unit="celsius",
            steps=PORT_TEMPERATURE_STEPS,
        )
    )
    board.add(
        single_stat(
            "用电量 Energy delivered",
            "Energy the ports delivered in the time range.",
            Influx(
                'SELECT sum("energy_wh") FROM ('
                'SELECT integral("power_w", 1h) AS "energy_wh" FROM "charging_port" '
                f'WHERE {PLACE} AND $timeFilter GROUP BY {DEVICE}, "port")'
            ),
            unit="watth",
            width=12,
        )
    )
    board.add(
        time_series(
            "端口温度 Port temperatures",
            "Highest temperature of each port per interval; orange past 60 °C (port "
            "overheating), red past 80 °C (thermal runaway risk).",
            Influx(
                f'SELECT max("temperature_c") FROM "charging_port" WHERE {PLACE} '
                f'AND $timeFilter GROUP BY time($__interval), {DEVICE}, "port" fill(none)'
            ).alias(_PORT_LABEL),
            unit="celsius",
            steps=PORT_TEMPERATURE_STEPS,
            draw_steps=True,
            width=24,
            height=10,
        )
    )
    board.add(
        time_series(
            "电流 Port currents",
            f"Highest current of each port per interval; over-current past {OVER_CURRENT_A} A.",
            Influx(
                f'SELECT max("current_a") FROM "charging_port" WHERE {PLACE} '
                f'AND $timeFilter GROUP BY time($__interval), {DEVICE}, "port" fill(none)'
            ).alias(_PORT_LABEL),
            unit="amp",
            steps=((None, "green"), (OVER_CURRENT_A, "red")),
            draw_steps=True,
        )
    )
    board.add(
        time_series(
            "棚内温度 Shed ambient temperature",
            "Air temperature inside each shed.",
            Influx(
                f'SELECT mean("ambient_temp_c") FROM "charging_shed" WHERE {PLACE} '
                f"AND $timeFilter GROUP BY time($__interval), {DEVICE} fill(none)"
            ).alias(DEVICE_LABEL),
            unit="celsius",
        )
    )
    board.add(
        state_timeline(
            "充电会话 Charging sessions",
            "When each port was charging: one bar a session.",
            Influx(
                f'SELECT last("charging") FROM "charging_port" WHERE {PLACE} '
                f'AND $timeFilter GROUP BY time($__interval), {DEVICE}, "port" fill(previous)'
            ).alias(_PORT_LABEL),
            mappings=[flag_mapping("charging", "blue", "idle", "transparent")],
            width=24,
            height=12,
        )
    )
    board.add(
        time_series(
            "充电棚事件 Shed events",
            "Smoke alarms, power cuts and over-current events per interval.",
            Influx(
                f'SELECT sum("count") FROM "charging_shed_event" WHERE {PLACE} '
                'AND $timeFilter GROUP BY time($__interval), "event" fill(none)'
            ).alias("$tag_event"),
            bars=True,
            width=24,
        )
    )
    return board
