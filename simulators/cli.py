"""Command-line flags for `community-gateway simulate` and `python -m simulators`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from simulators.layout import COMMUNITY_NAME
from simulators.publisher import (
    SimulationOptions,
    SimulationReport,
    fleet_of,
    run_simulation,
)
from simulators.scenario import Scenario, ScenarioKind

# Flags that only matter when publishing: with none of them, --write-registry just writes.
PUBLISH_FLAGS = (
    "host", "port", "username", "password", "seconds", "messages", "scenario", "processes",
    "period_scale",
)  # fmt: skip


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def _rate(text: str) -> float | None:
    """msg/s, or None for 'max'."""
    if text == "max":
        return None
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error}: give msg/s, or 'max'") from None


def _community(text: str) -> str:
    if not COMMUNITY_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a community name ([a-z0-9-]{{1,32}})")
    return text


def _scenario(text: str) -> Scenario:
    try:
        return Scenario.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = ", ".join(k.value for k in ScenarioKind)
    broker = parser.add_argument_group("broker")
    broker.add_argument("--host", default=None, help="MQTT broker host (default 127.0.0.1)")
    broker.add_argument("--port", type=int, default=None, help="MQTT broker port (default 1883)")
    broker.add_argument("--username", default=None)
    broker.add_argument("--password", default=None)
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--devices", type=positive_int, default=100, help="number of devices (100)")
    fleet.add_argument(
        "--communities", type=positive_int, default=3, help="number of communities (3)"
    )
    fleet.add_argument(
        "--community",
        type=_community,
        action="append",
        default=[],
        metavar="NAME",
        help="community name, repeatable; overrides --communities",
    )
    fleet.add_argument("--seed", type=int, default=1, help="same seed, same traffic (1)")
    fleet.add_argument(
        "--write-registry",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the device registry CSV; alone, write it and exit",
    )
    run = parser.add_argument_group("traffic")
    run.add_argument(
        "--rate",
        type=_rate,
        default=argparse.SUPPRESS,
        metavar="R",
        help="total msg/s, device after device, or 'max' for as fast as acknowledged; "
        "without it each device reports at its own period in real time",
    )
    run.add_argument("--seconds", type=positive_float, default=None, help="run this long (60)")
    run.add_argument("--messages", type=positive_int, default=None, help="stop after this many")
    run.add_argument(
        "--scenario",
        type=_scenario,
        action="append",
        default=[],
        metavar="KIND@S[:DEVICE]",
        help=f"inject a scenario at S seconds, repeatable; kinds: {kinds}",
    )
    # Defaults left None, and given in options_from_args: given at all, they publish.
    run.add_argument("--processes", type=positive_int, default=None, help="publisher processes (1)")
    run.add_argument(
        "--period-scale",
        type=positive_float,
        default=None,
        metavar="F",
        help="multiply every reporting period by F (0.01: 100 times faster)",
    )


def options_from_args(ns: argparse.Namespace) -> SimulationOptions:
    has_rate = hasattr(ns, "rate")
    seconds = ns.seconds
    if seconds is None and ns.messages is None:
        seconds = 60.0
    return SimulationOptions(
        host=ns.host or "127.0.0.1",
        port=ns.port or 1883,
        username=ns.username,
        password=ns.password,
        devices=ns.devices,
        communities=ns.communities,
        community_names=tuple(ns.community),
        seed=ns.seed,
        seconds=seconds,
        max_messages=ns.messages,
        rate_msg_s=ns.rate if has_rate else None,
        realistic=not has_rate,
        period_scale=ns.period_scale or 1.0,
        scenarios=tuple(ns.scenario),
        processes=ns.processes or 1,
    )


def wants_publishing(ns: argparse.Namespace) -> bool:
    if ns.write_registry is None:
        return True
    # Given, whatever its value: `--rate max` is None.
    given = hasattr(ns, "rate")
    return given or any(getattr(ns, name, None) not in (None, []) for name in PUBLISH_FLAGS)


def run_from_args(ns: argparse.Namespace) -> int:
    """Write the registry if asked, then publish unless only the registry was asked for."""
    options = options_from_args(ns)
    if ns.write_registry is not None:
        fleet = fleet_of(options)
        try:
            ns.write_registry.write_text(fleet.registry_csv(), encoding="utf-8")
        except OSError as error:
            reason = error.strerror or error
            print(
                f"simulate: cannot write the registry to {ns.write_registry}: {reason}",
                file=sys.stderr,
            )
            return 1
        print(f"wrote {len(fleet.devices)} devices to {ns.write_registry}", file=sys.stderr)
    if not wants_publishing(ns):
        return 0
    try:
        report: SimulationReport = run_simulation(options)
    except (ConnectionError, OSError) as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Publish realistic, seeded device traffic to an MQTT broker.",
    )
    add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        return run_from_args(ns)
    except ValueError as error:
        parser.error(str(error))
