"""`community-gateway`: run, check, simulate, demo, dashboards, push-dashboards."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import PROJECT_ROOT, __version__
from gateway.config import GatewayConfig, load_config, load_status_config
from gateway.errors import ConfigError, GatewayError
from gateway.logs import configure_logging
from gateway.statefile import ReloadAnswer, reload_answer_path
from gateway.store.lock import holder_pid, pid_path

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="community-gateway",
        description="Monitoring gateway for smart complete communities.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the gateway")
    run.add_argument("--config", type=Path, required=True, help="gateway YAML config file")

    check = commands.add_parser("check", help="check a config, its device profiles and registry")
    check.add_argument("--config", type=Path, required=True)

    reload = commands.add_parser(
        "reload",
        help="check the alert rules, the registry, the API tokens and the notification "
        "policy, and have the running gateway load them",
    )
    reload.add_argument("--config", type=Path, required=True)

    from simulators.cli import add_arguments, positive_float, positive_int, run_from_args

    simulate = commands.add_parser("simulate", help="publish simulated device traffic")
    add_arguments(simulate)

    demo = commands.add_parser("demo", help="the whole system on embedded defaults")
    demo.add_argument("--seconds", type=positive_float, default=None, help="stop after N seconds")
    demo.add_argument("--devices", type=positive_int, default=200)
    demo.add_argument(
        "--period-scale",
        type=positive_float,
        default=0.05,
        help="devices report this many times their typical period (0.05: 20 times faster)",
    )
    demo.add_argument("--seed", type=int, default=7)

    dashboards = commands.add_parser(
        "dashboards", help="generate the Grafana dashboards as JSON files"
    )
    dashboards.add_argument(
        "--out", type=Path, default=DASHBOARD_FOLDER, help=f"folder (default {DASHBOARD_FOLDER})"
    )

    push = commands.add_parser(
        "push-dashboards",
        help="create or replace the dashboards in a running Grafana over its HTTP API",
        description="Secrets are best given in the environment: GRAFANA_TOKEN (a service "
        "account token), or GRAFANA_USER and GRAFANA_PASSWORD.",
    )
    push.add_argument("--url", default=os.environ.get("GRAFANA_URL"), help="or GRAFANA_URL")
    push.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"), help="or GRAFANA_TOKEN")
    push.add_argument("--user", default=os.environ.get("GRAFANA_USER"), help="or GRAFANA_USER")
    push.add_argument(
        "--password", default=os.environ.get("GRAFANA_PASSWORD"), help="or GRAFANA_PASSWORD"
    )
    push.add_argument("--folder-uid", default=None, help="an existing folder to put them in")
    push.add_argument("--timeout-s", type=float, default=10.0)

    args = parser.parse_args(argv)
    try:
        if args.command == "dashboards":
            return _dashboards(args.out)
        if args.command == "push-dashboards":
            return _push_dashboards(args)
        if args.command == "check":
            return _check(args.config)
        if args.command == "reload":
            return _reload(args.config)
        if args.command == "run":
            try:
                config = load_config(args.config)
            except ConfigError as exc:
                # A config file an upgrade no longer takes: said as a broken rule file is.
                if (sections := load_status_config(args.config)) is not None:
                    asyncio.run(_cannot_start(sections, str(exc)))
                raise
            _configure_logging(config)
            return asyncio.run(_run(config, args.config))
        if args.command == "simulate":
            try:
                return run_from_args(args)
            except ValueError as error:
                # What the simulators refuse of the flags: a scenario's device, say.
                simulate.error(str(error))
        from gateway.demo import run_demo

        return asyncio.run(run_demo(args.seconds, args.devices, args.period_scale, args.seed))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _check(path: Path) -> int:
    from gateway.app import load_catalogue

    config = load_config(path)
    profiles, registry, rules = load_catalogue(config)
    if (blocker := _not_a_folder(config.outbox.path.parent)) is not None:
        raise config.error("outbox.path", f"{blocker} is not a folder")
    print(f"{path}: ok")
    print(f"  device profiles: {len(profiles)} ({', '.join(sorted(profiles.by_name))})")
    print(f"  registered devices: {len(registry)}")
    print(f"  alert rules: {len(rules)}")
    if config.notify is not None:
        policy = config.notify
        print(
            f"  notifications: {len(policy.channels)} channels, {len(policy.receivers)} receivers,"
            f" {len(policy.rosters)} rosters, {len(policy.routes)} routes"
        )
    else:
        print("  notifications: none (alerts are logged only)")
    print(f"  outbox: {config.outbox.path}")
    print(f"  time-series database: {config.influx.url if config.influx else 'none (outbox only)'}")
    api = config.api
    served = f"{api.host}:{api.port}, {len(api.tokens)} token(s)" if api else "none"
    print(f"  API and pages: {served}")
    return 0


def _not_a_folder(folder: Path) -> Path | None:
    """The file standing where `folder` or one above it should be, if any. Whether the
    gateway may make the folder is left to its start: `check` may run as another user."""
    for place in (folder, *folder.parents):
        if place.exists():
            return None if place.is_dir() else place
    return None


DASHBOARD_FOLDER = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"


def _dashboards(folder: Path) -> int:
    from gateway.dashboards.catalogue import write_dashboards

    try:
        written = write_dashboards(folder)
    except OSError as exc:
        print(
            f"error: cannot write the dashboards to {folder}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    for path in written:
        print(path)
    return 0


def _push_dashboards(args: argparse.Namespace) -> int:
    from gateway.dashboards.catalogue import dashboards
    from gateway.dashboards.push import Credential, push_dashboards

    if not args.url:
        print("error: give Grafana's address with --url or GRAFANA_URL", file=sys.stderr)
        return 2
    credential = Credential(token=args.token, user=args.user, password=args.password)
    boards = dashboards()
    urls = push_dashboards(
        args.url, credential, boards, folder_uid=args.folder_uid, timeout_s=args.timeout_s
    )
    for name, url in zip(boards, urls, strict=True):
        print(f"{name}: {url}")
    return 0


def _configure_logging(config: GatewayConfig) -> None:
    configure_logging(config.log_level, "%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _run(config: GatewayConfig, path: Path) -> int:
    from gateway.app import Gateway
    from gateway.heap import set_aside_startup_objects

    # Handled before the gateway is made: making it takes the pid file by which `reload`
    # finds it, and SIGHUP's default would end it while it opens its files. The loop
    # runs a handler only at an await, so not before the gateway is there.
    made: list[Gateway] = []
    # Held until they end: the loop keeps only weak references to its tasks.
    reloads: set[asyncio.Task[ReloadAnswer]] = set()

    def stop() -> None:
        for gateway in made:
            gateway.stop()

    def reload() -> None:
        for gateway in made:
            task = asyncio.create_task(gateway.reload(path), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        gateway = Gateway(config)
    except ConfigError as exc:
        # In a restart loop on a broken rule or registry file, it would otherwise say
        # nothing: whoever watches its status learns why it does not run.
        await _cannot_start(config, str(exc))
        raise
    made.append(gateway)
    set_aside_startup_objects()
    # The gateway's pid is in its pid file for as long as it runs (gateway.store.lock).
    await gateway.run()
    return 0


# How long a start that failed waits on the broker to say so.
CANNOT_START_TIMEOUT_S = 5.0
# And on the people who hear of the gateway's faults, each by their channels in turn.
CANNOT_START_TELL_TIMEOUT_S = 20.0


async def _cannot_start(config: GatewayConfig, problem: str) -> None:
    """Publish the problem on the status topic, and tell the people who hear of the
    gateway's faults; unless another gateway runs on this outbox: its status and faults
    are its own."""
    from gateway.app import tell_refused_start
    from gateway.clock import SystemClock
    from gateway.store.lock import PidLock

    try:
        lock = PidLock.take(pid_path(config.outbox.path), "another gateway")
    except (GatewayError, OSError):
        return
    try:
        await asyncio.to_thread(_say_cannot_start, config, problem)
        try:
            await asyncio.wait_for(
                tell_refused_start(config, problem, SystemClock()), CANNOT_START_TELL_TIMEOUT_S
            )
        except TimeoutError:
            log.warning("telling that the gateway cannot start took over %.0f s; left off",
                        CANNOT_START_TELL_TIMEOUT_S)  # fmt: skip
    finally:
        lock.release()


def _say_cannot_start(config: GatewayConfig, problem: str) -> None:
    """Publish the problem on the status topic."""
    from gateway.clock import SystemClock
    from gateway.ingest.mqtt3 import publish_retained
    from gateway.ingest.subscription import Status

    mqtt = config.mqtt
    if mqtt is None or mqtt.status is None:
        return
    try:
        status = Status(mqtt.status, mqtt.client_id, SystemClock())
        publish_retained(
            mqtt,
            status.topic,
            status.cannot_start(problem),
            client_id=f"{mqtt.client_id}-status",
            timeout_s=CANNOT_START_TIMEOUT_S,
        )
    except (OSError, TimeoutError) as exc:
        log.warning("could not say on %s that the gateway cannot start: %s", mqtt.status, exc)


# How long `reload` waits for the gateway's answer: a district's registry takes seconds
# to read and compare (bench.registry), more on a box that is busy.
RELOAD_ANSWER_TIMEOUT_S = 60.0


def _reload(path: Path) -> int:
    """Check the config and the rules here, where errors can be shown, then tell the
    running gateway, and show its answer: it may still refuse what passes here (a device
    type whose profile was added since it started)."""
    from gateway.app import load_catalogue

    config = load_config(path)
    # Checked as the gateway checks them: the rules against the profiles, the policy
    # against the registry and the rules.
    _, registry, rules = load_catalogue(config)
    if config.registry_file is not None and not len(registry):
        # As the running gateway would refuse it, said here where it is seen: a sheet
        # saved empty (a filter left on, the wrong tab exported).
        raise ConfigError(
            str(config.registry_file),
            "",
            "names no device; a running gateway keeps the registry it has (to run without "
            "one, leave registry_file out and restart it)",
        )
    tokens = len(config.api.tokens) if config.api is not None else 0
    pid_file = pid_path(config.outbox.path)
    # Only a running gateway holds its pid file: one left by a gateway that was killed
    # may name a process that is not a gateway at all.
    pid = holder_pid(pid_file)
    if pid is None:
        print(f"no running gateway for {path} (none holds {pid_file})", file=sys.stderr)
        return 1
    answers = reload_answer_path(config.outbox.path)
    before = ReloadAnswer.read(answers)
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        print(f"gateway {pid} runs for {path}, but this user may not signal it: run this "
              "as the gateway's user, or `systemctl reload community-gateway`",
              file=sys.stderr)  # fmt: skip
        return 1
    except OSError as exc:
        print(f"no running gateway for {path} (pid {pid}: {exc})", file=sys.stderr)
        return 1
    policy = "the notification policy, " if config.notify is not None else ""
    print(f"{len(registry)} registered devices, {len(rules)} rules, {policy}{tokens} API "
          f"tokens checked; gateway {pid} told to reload them", flush=True)  # fmt: skip
    deadline_s = time.monotonic() + RELOAD_ANSWER_TIMEOUT_S
    while time.monotonic() < deadline_s:
        answer = ReloadAnswer.read(answers)
        if answer is not None and answer.pid == pid and answer != before:
            print(f"gateway {pid} {answer.said}", file=sys.stdout if answer.taken else sys.stderr)
            return 0 if answer.taken else 1
        if holder_pid(pid_file) != pid:
            print(f"gateway {pid} ended before it answered", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"gateway {pid} has not answered in {RELOAD_ANSWER_TIMEOUT_S:.0f} s; its log says "
          "whether it took them", file=sys.stderr)  # fmt: skip
    return 1


if __name__ == "__main__":
    sys.exit(main())
