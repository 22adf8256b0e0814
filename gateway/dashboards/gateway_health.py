"""The gateway's own health: ingest, rejects, outbox and writes to the database."""

from __future__ import annotations

from gateway.dashboards.board import Board, flag_mapping, single_stat, time_series
from gateway.dashboards.query import Influx

UID = "community-gateway-health"


def build() -> Board:
    board = Board(
        UID,
        "网关运行 Gateway health",
        "Ingest rate and lag, rejected messages by reason, outbox depth and write latency, "
        "from the gateway's own reports (every health_interval_s).",
        ["gateway"],
    )
    board.add(
        single_stat(
            "积压 Outbox depth",
            "Lines waiting in the outbox for the database; it grows while InfluxDB is away.",
            Influx('SELECT last("outbox_depth") FROM "gateway" WHERE $timeFilter'),
            steps=((None, "green"), (10000, "orange"), (1000000, "red")),
            width=3,
        )
    )
    board.add(
        single_stat(
            "接收滞后 Ingest lag",
            "How long after the devices sent them the gateway takes messages in (the median "
            "over its last messages that carry the device's time). It grows while the "
            "gateway cannot keep up, and what it has not taken in waits at the broker; "
            "readings judged late make alerts late.",
            Influx('SELECT last("ingest_lag_s") FROM "gateway" WHERE $timeFilter'),
            unit="s",
            steps=((None, "green"), (10, "orange"), (60, "red")),
            width=3,
        )
    )
    board.add(
        single_stat(
            "写入延迟 Write latency",
            "How long the last write to the database took.",
            Influx('SELECT last("write_latency_ms") FROM "gateway" WHERE $timeFilter'),
            unit="ms",
            steps=((None, "green"), (1000, "orange"), (5000, "red")),
            width=3,
        )
    )
    board.add(
        single_stat(
            "拒收 Rejected messages",
            "Device messages rejected and quarantined in the time range.",
            Influx('SELECT sum("rejected") FROM "gateway" WHERE $timeFilter'),
            steps=((None, "green"), (1, "orange")),
            width=3,
        )
    )
    board.add(
        single_stat(
            "规则故障 Rule faults",
            "Records a rule failed on at run time (a division by 0, a threshold of the "
            "wrong type) and could not judge; the log and gateway_rule_faults_total name "
            "the rule.",
            Influx('SELECT sum("rule_faults") FROM "gateway" WHERE $timeFilter'),
            steps=((None, "green"), (1, "red")),
            width=3,
        )
    )
    board.add(
        single_stat(
            "未处理告警 Open alerts",
            "Alerts open, as the gateway last counted them.",
            Influx('SELECT last("alerts_open") FROM "gateway" WHERE $timeFilter'),
            steps=((None, "green"), (1, "red")),
            width=3,
        )
    )
    # A flag, stored as a boolean: not one of the numbers a stat shows unasked.
    filled_up = "disk filled up"
    board.add(
        single_stat(
            "磁盘已满 Disk filled up",
            "Whether the disk filled up and the space set aside for the outbox "
            "(outbox.reserve_bytes) was given back to keep alarms coming in; it is set "
            "aside again once the disk has room for it twice over. Free disk space.",
            Influx('SELECT last("disk_reserve_given_back") FROM "gateway" WHERE $timeFilter').alias(
                filled_up
            ),
            mappings=[flag_mapping("filled up", "red", "no", "green")],
            field=filled_up,
            width=3,
        )
    )
    board.add(
        single_stat(
            "损坏文件 Damaged files",
            "Files of the gateway's that SQLite found damaged, moved aside beside the "
            "outbox (<name>.damaged) and a new one begun: the disk may be failing. Delete "
            "them once looked into (deploy/INSTALL.md, Backup).",
            Influx('SELECT last("damaged_files") FROM "gateway" WHERE $timeFilter'),
            steps=((None, "green"), (1, "red")),
            width=3,
        )
    )
    board.add(
        time_series(
            "接收速率 Ingest rate",
            "Messages taken in, lines stored in the outbox and lines written to the "
            "database, per minute.",
            Influx(
                'SELECT sum("messages_in") AS "messages in", sum("lines_stored") AS '
                '"lines stored", sum("lines_written") AS "lines written" FROM "gateway" '
                'WHERE $timeFilter GROUP BY time(1m), "instance" fill(0)'
            ).alias("$col ($tag_instance)"),
            unit="short",
        )
    )
    board.add(
        time_series(
            "拒收原因 Rejects by reason",
            "Rejected messages per minute, by reason (see the README's table of reasons).",
            Influx(
                'SELECT sum("rejected") FROM "gateway_rejects" WHERE $timeFilter '
                'GROUP BY time(1m), "reason" fill(none)'
            ).alias("$tag_reason"),
            bars=True,
        )
    )
    board.add(
        time_series(
            "积压趋势 Outbox depth",
            "Lines waiting for the database.",
            Influx(
                'SELECT max("outbox_depth") FROM "gateway" WHERE $timeFilter '
                'GROUP BY time($__interval), "instance" fill(none)'
            ).alias("$tag_instance"),
        )
    )
    board.add(
        time_series(
            "写入延迟趋势 Write latency and failures",
            "Latency of writes to the database, and on the right-hand axis the writes that "
            "failed and the commits of the outbox that failed, per minute (a full disk: see "
            "readiness).",
            Influx(
                'SELECT max("write_latency_ms") AS "latency" FROM "gateway" WHERE $timeFilter '
                'GROUP BY time($__interval), "instance" fill(none)'
            ).alias("latency ($tag_instance)"),
            Influx(
                'SELECT sum("write_failures") AS "failures" FROM "gateway" WHERE $timeFilter '
                'GROUP BY time(1m), "instance" fill(none)',
                ref_id="B",
            ).alias("failed writes ($tag_instance)"),
            Influx(
                'SELECT sum("commit_failures") AS "failures" FROM "gateway" WHERE $timeFilter '
                'GROUP BY time(1m), "instance" fill(none)',
                ref_id="C",
            ).alias("failed outbox commits ($tag_instance)"),
            unit="ms",
            # Counts: on the latency's axis, 3 failures would read 3 ms, unseen at the
            # foot of an axis of hundreds of milliseconds.
            right_axis=("B", "C"),
        )
    )
    return board
