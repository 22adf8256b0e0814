"""A district's device registry: how long it takes to read, the memory it holds, and what
a reload costs the event loop.

    .venv/bin/python -m bench.registry [--devices 200000] [--communities 150] [--repeat 3]

The registry is the simulators' fleet's (wearers' phones and family contacts, homes,
well depths, IMEIs), as `simulate --write-registry` writes it. Each of the gateway's two
processes holds one, and a reload holds the new one beside the running one until it is
taken. At a reload, reading it and comparing it with the running one run in a thread;
taking it (the rules watching the devices it adds, the API's latest values sorted into
registered and not) runs on the event loop, between two batches. Times are the best of
`--repeat` runs (the machine is shared), with every run.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench import best_of
from gateway import PROJECT_ROOT
from gateway.api.latest import LatestValues
from gateway.decode.decoder import CODECS
from gateway.decode.profile import load_profiles
from gateway.registry import load_registry
from gateway.rules.engine import RuleEngine
from simulators.fleet import Fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--communities", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    types = profiles.device_types()
    fleet = Fleet.build(seed=11, devices=args.devices, communities=args.communities)
    sheet = fleet.registry_csv()
    # The reload's sheet: one device in a hundred moved to another building, as many added.
    lines = sheet.splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    columns = header.rstrip("\n").split(",")
    moved = [_with(row, columns, "building") if i % 100 == 0 else row for i, row in enumerate(rows)]
    added = [_with(row, columns, "device_id", "imei") for row in rows[: len(rows) // 100]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "devices.csv"
        path.write_text(sheet, encoding="utf-8")
        reloaded = Path(tmp) / "reloaded.csv"
        reloaded.write_text(header + "".join(moved + added), encoding="utf-8")

        load_s = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            load_registry(path, types)
            load_s.append(time.perf_counter() - started)
        gc.collect()
        tracemalloc.start()
        running = load_registry(path, types)
        gc.collect()
        held_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        new = load_registry(reloaded, types)

    compare_s, take_s = [], []
    for _ in range(args.repeat):
        engine = RuleEngine([], running, profiles.periods_s())
        latest = LatestValues(running)
        started = time.perf_counter()
        changes = new.changes_from(running)
        compare_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        engine.use_registry(new, changes, 1)
        latest.use_registry(new)
        take_s.append(time.perf_counter() - started)
    print(f"registry of {len(running):,} devices in {args.communities} communities")
    print(f"  read and checked: {best_of(load_s)}")
    print(f"  held: {held_bytes / 2**20:.0f} MiB, {held_bytes / len(running):.0f} B a device")
    print(f"  a reload ({changes}): compared in a thread {best_of(compare_s)}; "
          f"taken on the event loop {best_of(take_s)}")  # fmt: skip


def _with(row: str, columns: list[str], *changed: str) -> str:
    """The sheet's row with these columns changed: a device id or building made another,
    an IMEI left out (two devices never share one)."""
    cells = row.rstrip("\n").split(",")
    for name in changed:
        at = columns.index(name)
        cells[at] = "" if name == "imei" else f"{cells[at]}-new"
    return ",".join(cells) + "\n"


if __name__ == "__main__":
    main()
