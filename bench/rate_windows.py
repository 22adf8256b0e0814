"""Saving the rate windows (`<field>_per_min`) of a district's charging sheds: how long
the event loop takes to gather them, and how long their write holds the outbox's write
lock, which an alarm's commit waits for.

    .venv/bin/python -m bench.rate_windows [--sheds 20000] [--repeat 3]

Each shed's eight ports report their temperature every 15 s (the profile's period), and
the thermal-runaway rule keeps a 60 s window of them: five samples a port. The gateway
writes the windows every 30 s, whole, in a transaction of the outbox's file. Times are
the best of `--repeat` runs (the machine is shared), with every run.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from bench import best_of
from gateway.decode.record import DeviceRef, Reading, TimeSource
from gateway.rules.book import AlertBook
from gateway.rules.rate import RateWindows

PORTS = 8
PERIOD_MS = 15_000
WINDOW_MS = 60_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheds", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    windows = RateWindows()
    for at_ms in range(0, WINDOW_MS + PERIOD_MS, PERIOD_MS):
        for shed in range(args.sheds):
            device = DeviceRef(f"c{shed % 150}", "charging_shed", f"cs-{shed:05d}")
            for port in range(1, PORTS + 1):
                reading = Reading(device, at_ms, TimeSource.DEVICE, {}, port=port)
                windows.add(reading, "temperature_c", WINDOW_MS, 30.0 + port)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.sqlite3"
        AlertBook(path).close()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        gather_s, write_s = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            saved = windows.saved()
            gather_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            AlertBook.write_rates(conn, saved)
            conn.execute("COMMIT")
            write_s.append(time.perf_counter() - started)
        conn.close()
    size_mb = sum(len(row[-1]) for row in saved) / 1e6
    print(f"{args.sheds:,} sheds, {len(windows):,} windows, {len(saved):,} rows, {size_mb:.1f} MB")
    print(f"  gathered on the event loop: {best_of(gather_s)}")
    print(f"  written under the outbox's write lock: {best_of(write_s)}")


if __name__ == "__main__":
    main()
