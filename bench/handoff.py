"""The two sides of the handoff between the gateway's processes, alone on one thread with
no broker and no database, over the bench fleet's messages: the CPU time a message costs

- the telemetry process: decoding, lines, the handoff's records and the commit;
- the main process: judging the handed-over records and committing what the rules made
  of them (alerts, rule timers, when devices were last heard).

Each run starts on an empty outbox; the first `--warm` messages fill the caches and the
devices' state and are not counted. The machine is shared: every run is reported, and
the best of each side.

    .venv/bin/python -m bench.handoff [--messages 40000] [--warm 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

from bench.pipeline import NoBroker, fleet_messages, offline_config
from gateway.app import Gateway
from gateway.decode.decoder import Decoder
from gateway.decode.dedup import RedeliveryFilter
from gateway.heap import set_aside_startup_objects
from gateway.ingest.message import InboundMessage
from gateway.pipeline import IngestPipeline
from gateway.stats import Stats
from gateway.store.outbox import Outbox
from gateway.store.series import SeriesMapper

# Messages a batch, as the telemetry process commits them under load.
BATCH_MESSAGES = 1000


async def run_once(workdir: Path, inbound: list[InboundMessage], warm: int) -> tuple[float, float]:
    """CPU µs a message of the telemetry side and of the judging side."""
    config = offline_config(workdir)
    gateway = Gateway(config)
    # The telemetry process's pipeline, on the same outbox through a connection of its own.
    profiles, registry = gateway.profiles, gateway.registry
    outbox = Outbox.configured(config.outbox)
    telemetry = IngestPipeline(
        Decoder.configured(profiles, registry, config.ingest),
        RedeliveryFilter(),
        SeriesMapper(profiles, registry),
        outbox,
        Stats(),
        handoff=True,
    )
    # As both processes do after start-up.
    set_aside_startup_objects()
    sides = [0.0, 0.0]
    for first in range(0, len(inbound), BATCH_MESSAGES):
        began = time.process_time()
        await telemetry.handle(NoBroker(), inbound[first : first + BATCH_MESSAGES])
        handed = time.process_time()
        while await gateway.pipeline.judge_handoffs():
            pass
        judged = time.process_time()
        if first >= warm:
            sides[0] += handed - began
            sides[1] += judged - handed
    outbox.close()
    gateway.close()
    counted = len(inbound) - warm
    gc.unfreeze()
    return sides[0] / counted * 1e6, sides[1] / counted * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--warm", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not 0 <= args.warm < args.messages:
        parser.error("--warm must be below --messages")
    inbound = fleet_messages(args.messages)
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(asyncio.run(run_once(Path(tmp), inbound, args.warm)))
    print(f"{'messages counted':<40}{args.messages - args.warm:>12,}")
    for name, index in (("telemetry side", 0), ("judging side", 1)):
        every = ", ".join(f"{run[index]:.2f}" for run in runs)
        best = min(run[index] for run in runs)
        print(f"{name + ', CPU µs a message':<40}{best:>12.2f}   (runs: {every})")


if __name__ == "__main__":
    main()
