"""How long letting go of old records holds the files' write locks, and what an alarm's
commit waits for meanwhile.

    .venv/bin/python -m bench.retention [--alerts 100000]

An alert book and notification log of `--alerts` alerts closed long ago (each with five
steps of history, three notifications with their short links, six delivery attempts
and an escalation step), and a tenth as many still open, on a temporary disk; then one
pass of the retention, timed a slice at a time and paused between slices as the
gateway does, while two threads commit a row every
10 ms, one to the outbox file, as an alarm's commit would, and one to the notification
log, as the notifier does, and time how long each commit takes: for 10 s alone first,
to compare with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.clock import ManualClock
from gateway.config import DAY_MS, RetentionConfig
from gateway.notify.log import NotificationLog
from gateway.registry import Registry
from gateway.retention import SLICE_PAUSE_S, Pruned, Retention
from gateway.rules.book import AlertBook
from gateway.rules.silence import SilenceBook
from gateway.store.database import open_book, transaction

NOW_MS = 1_800_000_000_000
CLOSED_MS = NOW_MS - 4 * 365 * DAY_MS
ALARM_EVERY_S = 0.01
BASELINE_S = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Path(tmp) / "outbox.sqlite3"
        log_path = Path(tmp) / "outbox.notifications.sqlite3"
        book = AlertBook(outbox)
        notifications = NotificationLog(log_path)
        silences = SilenceBook(outbox, Registry())
        started = time.perf_counter()
        _fill(outbox, log_path, args.alerts)
        print(f"filled {args.alerts:,} closed alerts in {time.perf_counter() - started:.1f} s;"
              f" {_mib(outbox):.0f} MiB + {_mib(log_path):.0f} MiB")  # fmt: skip
        retention = Retention(
            RetentionConfig(), outbox, log_path, silences, ManualClock(NOW_MS),
        )  # fmt: skip
        waits_s: dict[Path, list[float]] = {outbox: [], log_path: []}
        stop = threading.Event()
        writers = [
            threading.Thread(target=_commit_alarms, args=(path, stop, waits))
            for path, waits in waits_s.items()
        ]
        for writer in writers:
            writer.start()
        # The same commits with nothing else going on, to compare with.
        time.sleep(BASELINE_S)
        alone = {path: list(waits) for path, waits in waits_s.items()}
        for waits in waits_s.values():
            waits.clear()
        slices_s: list[float] = []
        pruned = 0
        began = time.perf_counter()
        for step in _timed(retention.slices(), slices_s):
            pruned += step.alerts
        took_s = time.perf_counter() - began
        stop.set()
        for writer in writers:
            writer.join()
        retention.close()
        for closing in (book, notifications, silences):
            closing.close()
    print(f"let go of {pruned:,} alerts in {took_s:.1f} s ({pruned / took_s:,.0f} alerts/s),"
          f" {len(slices_s)} slices")  # fmt: skip
    print(f"a slice: median {statistics.median(slices_s) * 1000:.1f} ms,"
          f" longest {max(slices_s) * 1000:.1f} ms")  # fmt: skip
    for path, what in ((outbox, "an alarm's commit"), (log_path, "a notification's record")):
        print(f"{what}: alone {_spread(alone[path])}; meanwhile {_spread(waits_s[path])}")


def _spread(took_s: list[float]) -> str:
    ordered = sorted(took_s)
    return (
        f"median {statistics.median(ordered) * 1000:.1f} ms,"
        f" p99 {ordered[int(len(ordered) * 0.99)] * 1000:.1f} ms,"
        f" longest {ordered[-1] * 1000:.1f} ms ({len(ordered)} commits)"
    )


def _timed(slices: Iterator[Pruned], took_s: list[float]) -> Iterator[Pruned]:
    while True:
        began = time.perf_counter()
        step = next(slices, None)
        if step is None:
            return
        took_s.append(time.perf_counter() - began)
        yield step
        if step:
            time.sleep(SLICE_PAUSE_S)


def _fill(outbox: Path, log_path: Path, count: int) -> None:
    book = open_book(outbox, "", "the alert book")
    log = open_book(log_path, "", "the notification log")
    alert_ids = [f"fall:c{i % 20}:br-{i}:{CLOSED_MS - i}" for i in range(count)]
    opened = count // 10
    with transaction(book):
        book.executemany(
            "INSERT INTO alerts (alert_id, rule, title, severity, life_safety, community,"
            " device_type, device_id, state, started_ms, updated_ms, fired_ms, closed_by,"
            " closed_ms, note) VALUES (?, 'fall', '跌倒 Fall', 'critical', 1, 'c', 'bracelet',"
            " 'br', ?, ?, ?, ?, ?, ?, ?)",
            (
                (alert_id, "firing" if i < opened else "closed", CLOSED_MS - i, CLOSED_MS,
                 CLOSED_MS, None if i < opened else "wang-fang",
                 None if i < opened else CLOSED_MS, None if i < opened else "已送医")
                for i, alert_id in enumerate(alert_ids)
            ),
        )  # fmt: skip
        book.executemany(
            "INSERT INTO alert_history (alert_id, state, at_ms, actor, note)"
            " VALUES (?, 'firing', ?, 'rules', NULL)",
            ((alert_id, CLOSED_MS) for alert_id in alert_ids for _ in range(5)),
        )
    with transaction(log):
        keys = [(alert_id, f"{alert_id}/grid.{n}/wang-fang/firing")
                for alert_id in alert_ids for n in range(3)]  # fmt: skip
        log.executemany(
            "INSERT INTO notifications VALUES (?, ?, '[\"sms\"]', 0, 1, ?, 'sent', ?, ?)",
            ((key, alert_id, CLOSED_MS, _notice(key), CLOSED_MS) for alert_id, key in keys),
        )
        log.executemany(
            "INSERT INTO short_links VALUES (?, ?)",
            ((_code(key), "https://gw.example/a/" + "x" * 120) for _, key in keys),
        )
        log.executemany(
            "INSERT INTO notification_attempts (notification_key, alert_id, receiver, channel,"
            " at_ms, result, detail, latency_ms) VALUES (?, ?, 'wang-fang', 'sms', ?, 'sent',"
            " 'ok', 120.0)",
            ((key, alert_id, CLOSED_MS) for alert_id, key in keys for _ in range(2)),
        )
        log.executemany(
            "INSERT INTO escalation_plan VALUES (?, 'grid', 0, ?, 'done')",
            ((alert_id, CLOSED_MS) for alert_id in alert_ids),
        )
    book.close()
    log.close()


def _commit_alarms(path: Path, stop: threading.Event, waits_s: list[float]) -> None:
    conn = open_book(path, "CREATE TABLE IF NOT EXISTS alarms (at REAL);", "alarms")
    while not stop.is_set():
        began = time.perf_counter()
        with transaction(conn):
            conn.execute("INSERT INTO alarms VALUES (?)", (began,))
        waits_s.append(time.perf_counter() - began)
        time.sleep(ALARM_EVERY_S)
    conn.close()


def _code(key: str) -> str:
    """A short code per notification, as LinkSigner.code makes one."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _notice(key: str) -> str:
    """A notice's JSON about as long as a fall's, with its short link's code."""
    return json.dumps({"key": key, "link_code": _code(key), "lines": ["地点: hgy east 3"] * 12})


def _mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / (1 << 20)


if __name__ == "__main__":
    main()
