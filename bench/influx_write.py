"""What InfluxDB spends on each line of the bench fleet, as the gateway writes them: the
storage's share of the machine on the day of a run, apart from the gateway's.

The bench fleet's messages are decoded and turned into lines by the gateway's own
stages, then written by the gateway's writer in batches of 5,000 lines, as fast as
InfluxDB answers, to a new InfluxDB for each variant:

- `shipped`: the settings the tests and `bench.pipeline` run InfluxDB with;
- `fsync-delay`: the write-ahead log synced at most every 100 ms, not every write;
- `tsi1`: the series index on disk instead of in memory;
- `no-gzip`: the shipped settings, the bodies not compressed (`influx.gzip: false`);
- `zlib`: the shipped settings, the bodies compressed by zlib, as where ISA-L has no
  build, instead of ISA-L;
- `sorted`: the shipped settings, each batch's lines sorted by series;
- `gogc-200`: the shipped settings, InfluxDB's Go runtime collecting its garbage when
  the heap has grown by 200% since the last collection rather than by 100% (`GOGC=200`
  in its environment): less CPU for collecting, more memory.

The variants run alternately, `--repeat` times each. CPU time counts InfluxDB's work
until a second after the last write was answered; the writer's includes compressing.
InfluxDB's peak memory is its peak resident set by then.

    .venv/bin/python -m bench.influx_write [--messages 150000] [--repeat 2] [--variants a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.pipeline import cpu_seconds, fleet_messages, write_registry
from gateway import PROJECT_ROOT
from gateway.config import InfluxConfig
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.profile import load_profiles
from gateway.errors import DecodeError
from gateway.registry import load_registry
from gateway.store import influx as writer_module
from gateway.store.influx import InfluxWriter
from gateway.store.series import SeriesMapper
from tests.integration.services import InfluxService

BATCH_LINES = 5000
# InfluxDB goes on with a write after answering it (the cache, the index): counted too.
SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class Variant:
    data_settings: Mapping[str, str]
    environment: Mapping[str, str] = field(default_factory=dict)
    gzip: bool = True
    sort: bool = False
    zlib: bool = False


VARIANTS = {
    "shipped": Variant({}),
    "fsync-delay": Variant({"wal-fsync-delay": '"100ms"'}),
    "tsi1": Variant({"index-version": '"tsi1"'}),
    "no-gzip": Variant({}, gzip=False),
    "zlib": Variant({}, zlib=True),
    "sorted": Variant({}, sort=True),
    "gogc-200": Variant({}, environment={"GOGC": "200"}),
}


def fleet_lines(workdir: Path, messages: int) -> list[str]:
    """The lines the gateway stores for the bench fleet's first `messages` messages."""
    registry = load_registry(write_registry(workdir))
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    decoder = Decoder(profiles, registry)
    mapper = SeriesMapper(profiles, registry)
    lines: list[str] = []
    for message in fleet_messages(messages):
        try:
            decoded = decoder.decode(message)
        except DecodeError:
            continue
        lines.extend(mapper.line(record) for record in decoded.records)
    return lines


async def write_all(influx: InfluxService, batches: list[list[str]], gzip: bool) -> float:
    """Writes every batch; the writer's CPU seconds."""
    config = InfluxConfig(url=influx.url, database="bench", gzip=gzip)
    async with InfluxWriter(config) as writer:
        began = cpu_seconds()
        for batch in batches:
            result = await writer.write(batch)
            if result.rejected:
                raise RuntimeError(f"InfluxDB refused {result.rejected[0]}")
        return cpu_seconds() - began


@dataclass(frozen=True, slots=True)
class Outcome:
    influx_us_per_line: float
    writer_us_per_line: float
    lines_per_s: float
    influx_peak_mib: float


def run_variant(workdir: Path, lines: list[str], variant: Variant) -> Outcome:
    """`lines` written to a new InfluxDB run as `variant` says."""
    if variant.sort:
        batches = [sorted(lines[i : i + BATCH_LINES]) for i in range(0, len(lines), BATCH_LINES)]
    else:
        batches = [lines[i : i + BATCH_LINES] for i in range(0, len(lines), BATCH_LINES)]
    influx = InfluxService(workdir, variant.data_settings, variant.environment)
    influx.start()
    try:
        influx.create_database("bench")
        assert influx.pid is not None
        before = cpu_seconds(influx.pid)
        began = time.perf_counter()
        shipped = writer_module.compress
        if variant.zlib:
            writer_module.compress = writer_module.gzip_with_zlib
        try:
            writer_s = asyncio.run(write_all(influx, batches, variant.gzip))
        finally:
            writer_module.compress = shipped
        elapsed = time.perf_counter() - began
        time.sleep(SETTLE_S)
        influx_s = cpu_seconds(influx.pid) - before
        peak_mib = influx.peak_memory_mib()
    finally:
        influx.stop()
    return Outcome(
        influx_s / len(lines) * 1e6, writer_s / len(lines) * 1e6, len(lines) / elapsed, peak_mib
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=150_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--variants",
        type=lambda names: names.split(","),
        default=list(VARIANTS),
        help=f"which, separated by commas, in the order to run them (all: {','.join(VARIANTS)})",
    )
    args = parser.parse_args()
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        parser.error(
            f"--variants: no variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        lines = fleet_lines(workdir, args.messages)
        print(f"{len(lines):,} lines of {args.messages:,} messages")
        print(
            f"{'variant':12} {'InfluxDB µs/line':>17} {'writer µs/line':>15} {'lines/s':>10}"
            f" {'InfluxDB peak MiB':>18}"
        )
        for run in range(args.repeat):
            for name in args.variants:
                o = run_variant(workdir / f"{name}-{run}", lines, VARIANTS[name])
                print(
                    f"{name:12} {o.influx_us_per_line:17.2f} {o.writer_us_per_line:15.2f}"
                    f" {o.lines_per_s:10,.0f} {o.influx_peak_mib:18.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
