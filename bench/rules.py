"""Rule evaluation cost per message with every default rule loaded and 100k registered
devices, and the rule state kept per device.

    .venv/bin/python -m bench.rules [--devices 100000] [--messages 200000] [--repeat 3]

As in the pipeline, what the rules decided (changed tracks, devices heard) is taken for
saving after each commit batch, here every 1,000 messages (the pipeline's 50 ms at 20,000
msg/s), inside the timed loop: otherwise it piles up for the whole run and is counted as
rule state. The records replayed are exempt from garbage collection (gc.freeze), as they
are not the gateway's to hold. The timed pass runs `--repeat` times on a fresh engine;
the best is reported (the machine is shared), with every run.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

from gateway import PROJECT_ROOT
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.profile import load_profiles
from gateway.ingest.message import InboundMessage
from gateway.registry import load_registry
from gateway.rules.engine import RuleEngine
from gateway.rules.rule import load_rules
from simulators.fleet import Fleet

# Messages per commit batch, after which the pipeline takes what the rules decided.
COMMIT_MESSAGES = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    fleet = Fleet.build(seed=5, devices=args.devices, communities=20)
    with tempfile.TemporaryDirectory() as tmp:
        registry_file = Path(tmp) / "devices.csv"
        registry_file.write_text(fleet.registry_csv(), encoding="utf-8")
        registry = load_registry(registry_file)
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    decoder = Decoder(profiles, registry)
    start_ms = time.time_ns() // 1_000_000
    records = []
    for i, message in enumerate(fleet.stream(rate_msg_s=20_000, start_ms=start_ms)):
        if i >= args.messages:
            break
        records.append(
            decoder.decode(InboundMessage(message.topic, message.payload, start_ms)).records
        )
    rules = load_rules(PROJECT_ROOT / "alert_rules", profiles)
    periods = profiles.periods_s()

    def run_once() -> tuple[RuleEngine, float, float]:
        engine = RuleEngine(rules, registry, periods, now_ms=start_ms)
        began = time.perf_counter()
        for i, batch in enumerate(records, 1):
            engine.evaluate(batch)
            if i % COMMIT_MESSAGES == 0:
                engine.take_changes()
                engine.take_seen()
        evaluated = time.perf_counter()
        engine.tick(start_ms + 1000)
        return engine, evaluated - began, time.perf_counter() - evaluated

    # The replayed records stay in memory, which the gateway never holds: kept out of
    # the collector's sweeps (a full sweep over them took ~0.4 s inside a timed run).
    gc.collect()
    gc.freeze()
    tracemalloc.start()
    kept, _, _ = run_once()
    state_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    # Timed again without tracemalloc, which slows allocation.
    runs = [run_once()[1:] for _ in range(args.repeat)]
    elapsed, tick_s = min(run[0] for run in runs), min(run[1] for run in runs)

    print(f"rules loaded                 {len(rules):>10}")
    print(f"registered devices           {len(registry):>10,}")
    print(f"messages evaluated           {len(records):>10,}")
    print(f"evaluation µs per message    {elapsed / len(records) * 1e6:>10.2f}")
    print(f"offline sweep ms (all devs)  {tick_s * 1000:>10.1f}")
    every = ", ".join(f"{e / len(records) * 1e6:.2f} µs / {t * 1000:.1f} ms" for e, t in runs)
    print(f"  runs: {every}")
    print(f"rule state bytes per device  {state_bytes / len(registry):>10.0f}")


if __name__ == "__main__":
    main()
