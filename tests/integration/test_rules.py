"""Alert rules fed by real MQTT traffic, across a restart."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import PROJECT_ROOT
from gateway.app import RULE_TICK_S, Gateway
from gateway.clock import SystemClock
from gateway.config import GatewayConfig
from gateway.decode.record import Record
from gateway.rules.alert import AlertChange
from gateway.rules.stage import AlertDecision
from gateway.store.lock import pid_path
from simulators.acme import AcmeFrame, FrameType, StatusBits
from tests.catalogue import shipped_rules
from tests.integration.harness import Publisher, gateway_config, running, wait_until
from tests.integration.services import MosquittoService

T0 = 1_767_225_600_000


async def test_a_fire_alarm_firing_before_a_restart_is_not_new_after_it(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    topic = f"community/{namespace}/smoke_detector/sd-9/"
    config = gateway_config(tmp_path, mosquitto, namespace)
    publisher = Publisher(mosquitto)
    try:
        async with running(config) as gateway:
            publisher.publish_all([(topic + "event", {"ts": T0, "seq": 1, "event": "alarm"})])
            await wait_until(lambda: gateway.stats.alerts_firing == 1, what="fire alarm")
        async with running(config) as gateway:
            publisher.publish_all(
                [(topic + "telemetry", {"ts": T0 + 60_000, "seq": 2, "alarm": True})]
            )
            await wait_until(lambda: gateway.stats.messages_in == 1, what="next report")
            assert gateway.stats.alerts_firing == 0
            # Off, and still off at the next hourly report: the all-clear.
            publisher.publish_all(
                [
                    (topic + "telemetry", {"ts": T0 + 120_000, "seq": 3, "alarm": False}),
                    (topic + "telemetry", {"ts": T0 + 3_720_000, "seq": 4, "alarm": False}),
                ]
            )
            await wait_until(lambda: gateway.stats.alerts_resolved == 1, what="all clear")
    finally:
        publisher.close()


async def test_an_sos_queued_behind_a_telemetry_backlog_fires_before_the_backlog_is_in(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    backlog = 10_000
    config = gateway_config(tmp_path, mosquitto, namespace)
    async with running(config):
        pass  # both persistent sessions now exist, and queue while the gateway is down
    publisher = Publisher(mosquitto)
    try:
        publisher.publish_all(
            [
                (
                    f"community/{namespace}/bracelet/br-{i % 100}/telemetry",
                    {"ts": T0 + i, "seq": i, "heart_rate_bpm": 72, "worn": True},
                )
                for i in range(backlog)
            ]
        )
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-7/event", {"ts": T0, "seq": 1, "event": "sos"})]
        )
    finally:
        publisher.close()

    gateway = Gateway(config)
    taken_in_when_fired: list[int] = []

    def on_alerts(changes: list[AlertChange]) -> None:
        if any(change.rule == "sos" for change in changes):
            taken_in_when_fired.append(gateway.stats.messages_in)

    gateway.pipeline.alert_listeners.append(on_alerts)
    task = asyncio.create_task(gateway.run())
    try:
        await wait_until(
            lambda: gateway.stats.messages_in == backlog + 1, timeout_s=60, what="backlog in"
        )
    finally:
        gateway.stop()
        await asyncio.wait_for(task, timeout=15)
    assert len(taken_in_when_fired) == 1
    # The alarm connection delivers the SOS at once; the readings queued before it
    # are still coming in when it fires.
    assert taken_in_when_fired[0] < backlog / 2


class QuickTicks(SystemClock):
    """The system clock, but the rule timers' wait is short: the checks for silent
    devices run many times while a backlog drains."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(min(seconds, RULE_TICK_S / 1000))


# A message as Publisher.publish_all takes it: topic and payload.
Message = tuple[str, dict[str, Any] | bytes]


def bracelet_reading(namespace: str, device: int, ts_ms: int) -> Message:
    topic = f"community/{namespace}/bracelet/br-{device}/telemetry"
    return topic, {"ts": ts_ms, "seq": ts_ms // 1000, "heart_rate_bpm": 72, "worn": True}


async def hear_last(config: GatewayConfig, publisher: Publisher, readings: list[Message]) -> None:
    """A run of the gateway that takes in these readings, the last it hears before it
    stops."""
    async with running(config) as gateway:
        publisher.publish_all(readings)
        await wait_until(lambda: gateway.stats.messages_in == len(readings), what="last readings")


class OfflineWatch:
    """A gateway whose rule timers check often (QuickTicks), with the `device_offline`
    alerts it makes and how many records the rules had judged at each check."""

    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = gateway = Gateway(config, QuickTicks())
        self.offline: list[AlertChange] = []
        self.judged = 0
        self.judged_at_ticks: list[int] = []
        gateway.pipeline.alert_listeners.append(
            lambda changes: self.offline.extend(c for c in changes if c.rule == "device_offline")
        )
        gateway.pipeline.listeners.append(self._count)
        stage = gateway.pipeline.alerts
        assert stage is not None
        tick = stage.tick

        def counted_tick(now_ms: int, *, listening: bool) -> AlertDecision:
            self.judged_at_ticks.append(self.judged)
            return tick(now_ms, listening=listening)

        stage.tick = counted_tick  # type: ignore[method-assign]

    def _count(self, records: Sequence[Record]) -> None:
        self.judged += len(records)

    async def more_checks(self, checks: int) -> None:
        seen = len(self.judged_at_ticks)
        await wait_until(lambda: len(self.judged_at_ticks) > seen + checks, what="more checks")


async def test_devices_reporting_into_a_backlog_while_the_gateway_was_down_are_not_offline(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    """Two hours down: the broker kept what the devices sent. Their readings come in
    over several checks after the restart, and none of them is called offline on the
    clock while its newer readings are still queued."""
    devices, minutes = 80, 120
    now_ms = time.time_ns() // 1_000_000
    down_ms = now_ms - minutes * 60_000
    config = gateway_config(tmp_path, mosquitto, namespace)
    publisher = Publisher(mosquitto)
    try:
        await hear_last(
            config, publisher, [bracelet_reading(namespace, d, down_ms) for d in range(devices)]
        )
        # Every minute from every bracelet (period 60 s, offline after 150 s of silence).
        publisher.publish_all(
            [
                bracelet_reading(namespace, d, down_ms + m * 60_000)
                for m in range(1, minutes + 1)
                for d in range(devices)
            ]
        )
    finally:
        publisher.close()

    watch = OfflineWatch(config)
    gateway = watch.gateway
    backlog = devices * minutes
    task = asyncio.create_task(gateway.run())
    try:
        await wait_until(
            lambda: gateway.stats.messages_in == backlog, timeout_s=60, what="backlog in"
        )
        # And a few checks more once it is all in.
        await watch.more_checks(3)
    finally:
        gateway.stop()
        await asyncio.wait_for(task, timeout=15)
    # The checks ran while readings taken in still waited for the rules: the rules
    # judge one handed-over batch at a time, the checks go between them.
    assert watch.judged == backlog
    assert len([n for n in watch.judged_at_ticks if 0 < n < backlog]) >= 2
    assert watch.offline == []


async def test_a_session_from_before_the_alarm_connection_no_longer_takes_events(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    lanes = gateway_config(tmp_path, mosquitto, namespace)
    assert lanes.mqtt is not None
    single = lanes.model_copy(
        update={
            "mqtt": lanes.mqtt.model_copy(
                update={"topics": (f"community/{namespace}/+/+/+",), "alarm_topics": ()}
            )
        }
    )
    async with running(single):
        pass  # the main session now holds a filter that takes events too
    publisher = Publisher(mosquitto)
    try:
        async with running(lanes) as gateway:
            await wait_until(
                lambda: (
                    gateway.outbox.subscriptions(lanes.mqtt.client_id)  # type: ignore[union-attr]
                    == sorted(lanes.mqtt.topics)
                ),  # type: ignore[union-attr]
                what="the old filter dropped",
            )
            publisher.publish_all(
                [
                    (
                        f"community/{namespace}/bracelet/br-3/event",
                        {"ts": T0, "seq": 1, "event": "fall"},
                    )
                ]
            )
            await wait_until(lambda: gateway.stats.messages_in >= 1, what="the fall")
            await asyncio.sleep(0.5)
            assert gateway.stats.messages_in == 1
            assert gateway.stats.alerts_firing == 1
    finally:
        publisher.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_alarms_queued_for_the_alarm_connection_arrive_after_it_is_configured_away(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str, protocol: str
) -> None:
    # A fall sent while the gateway was down waits in the alarm connection's session; the
    # gateway then started with alarm_topics: [] still takes it in, and drops the old
    # session's filters so that no later start connects for it again.
    base = gateway_config(tmp_path, mosquitto, namespace)
    assert base.mqtt is not None
    lanes = base.mqtt.model_copy(update={"protocol": protocol})
    async with running(base.model_copy(update={"mqtt": lanes})):
        pass
    publisher = Publisher(mosquitto)
    try:
        publisher.publish_all(
            [(f"community/{namespace}/bracelet/br-3/event", {"ts": T0, "seq": 1, "event": "fall"})]
        )
    finally:
        publisher.close()
    single = lanes.model_copy(
        update={"topics": (f"community/{namespace}/+/+/+",), "alarm_topics": ()}
    )
    async with running(base.model_copy(update={"mqtt": single})) as gateway:
        await wait_until(
            lambda: [a.rule for a in gateway.alerts.open_alerts() if a.rule == "fall"] == ["fall"],
            what="the queued fall",
        )
        assert gateway.stats.messages_in == 1
    # Stopped with the fall stored: the next start has nothing to take from that session.
    again = Gateway(base.model_copy(update={"mqtt": single}))
    try:
        assert again.alarm_leftover is None
    finally:
        again.close()


async def test_a_filter_moved_to_the_alarm_connection_takes_frames_on_a_resumed_311_session(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    imei = "869876543210987"
    registry = tmp_path / "devices.csv"
    registry.write_text(
        "device_id,device_type,community,area,compound,building,imei\n"
        f"acme-9,smoke_detector,{namespace},东区,湖光新苑,5号楼,{imei}\n",
        encoding="utf-8",
    )
    base = gateway_config(tmp_path, mosquitto, namespace, registry_file=registry)
    assert base.mqtt is not None
    v311 = base.mqtt.model_copy(update={"protocol": "3.1.1"})
    async with running(base.model_copy(update={"mqtt": v311})):
        pass  # both connections' sessions now wait at the broker
    vendor = "vendor/acme-smoke/+/up"
    moved = v311.model_copy(
        update={
            "topics": tuple(t for t in v311.topics if t != vendor),
            "alarm_topics": (*v311.alarm_topics, vendor),
        }
    )
    frame = AcmeFrame(FrameType.ALARM, StatusBits.ALARM, 61, 57.5, 4.25).encode()
    publisher = Publisher(mosquitto)
    try:
        async with running(base.model_copy(update={"mqtt": moved})) as gateway:
            # A 3.1.1 broker says only that the session is there, not what it holds:
            # the alarm connection's resumed session must be given the filter it lacks.
            await wait_until(
                lambda: (
                    gateway.outbox.subscriptions(moved.alarm_client_id)
                    == sorted(moved.alarm_topics)
                ),
                what="the moved filter subscribed",
            )
            publisher.publish_all(
                [(f"vendor/acme-smoke/{imei}/up", {"imei": imei, "ts": T0, "payload": frame.hex()})]
            )
            await wait_until(lambda: gateway.stats.alerts_firing == 1, what="the fire alarm")
    finally:
        publisher.close()


async def test_reload_checks_the_rules_a_broken_file_leaves_the_running_ones_and_one_gateway_runs(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "alert_rules", rules_dir)
    config = gateway_config(tmp_path, mosquitto, namespace).model_copy(
        update={"rules_dir": rules_dir}
    )
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    log_file = tmp_path / "gateway.log"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args, "--config", str(config_file)],
            capture_output=True,
            text=True,
            check=False,
        )

    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config_file)],
            stderr=log,
        )
    try:
        await wait_until(lambda: "connected to" in log_file.read_text(), what="gateway up")
        (rules_dir / "extra.yaml").write_text(
            "rules:\n  - {name: hot_shed, title: Hot, device_types: [charging_shed],"
            " severity: info, when: 'ambient_temp_c > 45'}\n"
        )
        result = cli("reload")
        assert result.returncode == 0, result.stderr
        expected = len(shipped_rules()) + 1
        assert f"{expected} rules, 0 API tokens checked" in result.stdout
        # It waits for the gateway's answer: taken once the command ends.
        assert (
            f"gateway {process.pid} took them: 0 registered devices (unchanged), "
            f"{expected} rules, 0 API tokens" in result.stdout
        )
        assert f"reloaded {expected} alert rules" in log_file.read_text()
        # A second gateway on the same outbox stops at once, naming the running one.
        second = cli("run")
        assert second.returncode == 1
        assert f"another gateway (pid {process.pid}) runs on this outbox" in second.stderr
        assert process.poll() is None

        (rules_dir / "extra.yaml").write_text("rules:\n  - {name: broken, when: 'x >'}\n")
        refused = cli("reload")
        assert refused.returncode == 2
        assert "extra.yaml" in refused.stderr and "rule broken" in refused.stderr
        # Signalled anyway (say by a hand-sent SIGHUP), it keeps the running rules.
        process.send_signal(signal.SIGHUP)
        await wait_until(
            lambda: "nothing reloaded, the running rules, registry" in log_file.read_text(),
            what="refusal logged",
        )
        assert process.poll() is None

        # What the files on disk pass the running gateway may refuse (a device type whose
        # profile came after its start): the command shows its answer.
        (rules_dir / "extra.yaml").unlink()
        profiles = tmp_path / "profiles"
        shutil.copytree(PROJECT_ROOT / "device_profiles", profiles)
        cover = (profiles / "manhole_cover.yaml").read_text("utf-8")
        (profiles / "water_meter.yaml").write_text(cover.replace("manhole_cover", "water_meter"))
        registry = tmp_path / "devices.csv"
        registry.write_text(f"device_id,device_type,community\nwm-1,water_meter,{namespace}\n")
        moved = config.model_copy(update={"profiles_dir": profiles, "registry_file": registry})
        config_file.write_text(yaml.safe_dump(moved.model_dump(mode="json", exclude_none=True)))
        answered = cli("reload")
        assert answered.returncode == 1, answered.stdout
        assert answered.stderr.startswith(
            f"gateway {process.pid} refused them, the running ones stay: {registry}: line 2 "
            "(wm-1): device_type: no device profile is of type 'water_meter'"
        )
        assert answered.stderr.rstrip().endswith("restart it to take them")
    finally:
        process.terminate()
        process.wait(timeout=15)
    # A pid file left behind by a gateway that was killed may name any process by now;
    # reload signals only a gateway that holds it.
    bystander = subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE)
    try:
        pid_path(config.outbox.path).write_text(f"{bystander.pid}\n")
        stale = cli("reload")
        assert stale.returncode == 1 and "no running gateway" in stale.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.communicate(timeout=10)


async def test_default_rules_end_to_end_from_simulator_scenarios(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    import time

    from simulators.fleet import Fleet
    from simulators.scenario import Scenario, ScenarioKind

    fleet = Fleet.build(seed=11, devices=40, communities=1, community_names=[namespace])
    registry_file = tmp_path / "devices.csv"
    registry_file.write_text(fleet.registry_csv(), encoding="utf-8")
    start_ms = time.time_ns() // 1_000_000 - 2 * 3_600_000
    scenarios = [
        Scenario(ScenarioKind.FIRE, 60.0),
        Scenario(ScenarioKind.FALL, 120.0),
        Scenario(ScenarioKind.SOS, 180.0),
        Scenario(ScenarioKind.LID_OPENED, 240.0),
        Scenario(ScenarioKind.THERMAL_RUNAWAY, 300.0),
    ]
    messages = [
        (m.topic, m.payload)
        for m in fleet.messages(start_ms=start_ms, duration_s=3600, scenarios=scenarios)
    ]
    config = gateway_config(
        tmp_path, mosquitto, namespace, registry_file=registry_file, require_registered=True
    )
    publisher = Publisher(mosquitto)
    try:
        async with running(config) as gateway:
            publisher.publish_all(messages)  # type: ignore[arg-type]
            await wait_until(
                lambda: gateway.stats.messages_in >= len(messages), what="every message"
            )
            # Taken in is not yet judged: the telemetry process hands its records over
            # to the rules in the main process.
            expected = {"fire_alarm", "fall", "sos", "cover_open", "thermal_runaway_risk"}
            await wait_until(
                lambda: expected <= {a.rule for a in gateway.alerts.open_alerts()},
                what="an alert from every scenario",
            )
            assert gateway.stats.rejected == 0, gateway.stats.rejected_by_reason
    finally:
        publisher.close()


async def test_after_a_power_cut_devices_not_yet_reporting_again_are_not_offline(
    tmp_path: Path, mosquitto: MosquittoService, namespace: str
) -> None:
    """Two hours down with the broker, which kept nothing: what comes first after the
    restart is live. The bracelets not yet heard again are not called offline for the
    two hours in which nothing could be heard."""
    devices = 80
    now_ms = time.time_ns() // 1_000_000
    down_ms = now_ms - 120 * 60_000
    config = gateway_config(tmp_path, mosquitto, namespace)
    publisher = Publisher(mosquitto)
    try:
        await hear_last(
            config, publisher, [bracelet_reading(namespace, d, down_ms) for d in range(devices)]
        )
        watch = OfflineWatch(config)
        gateway = watch.gateway
        task = asyncio.create_task(gateway.run())
        try:
            assert gateway.subscriber is not None
            await wait_until(gateway.subscriber.connected.is_set, what="gateway connected")
            back_ms = time.time_ns() // 1_000_000
            publisher.publish_all(
                [bracelet_reading(namespace, d, back_ms) for d in range(devices // 2)]
            )
            await wait_until(
                lambda: gateway.stats.messages_in == devices // 2, what="the first back"
            )
            await watch.more_checks(5)
        finally:
            gateway.stop()
            await asyncio.wait_for(task, timeout=15)
    finally:
        publisher.close()
    assert watch.offline == []
