"""Wires the stages together; nothing else does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from gateway.api.server import ApiServer
from gateway.clock import Clock, SystemClock, sleep_unless_set
from gateway.config import ApiConfig, ApiToken, GatewayConfig, load_config
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.dedup import RedeliveryFilter, SavedKeys
from gateway.decode.profile import ProfileSet, load_profiles
from gateway.errors import ConfigError, GatewayError, StoreError
from gateway.health import HealthReport
from gateway.ingest.mqtt import Subscriber, subscriber_for
from gateway.ingest.process import STOP_TIMEOUT_S, TelemetryProcess
from gateway.notify.channel import Channel
from gateway.notify.desk import AlertDesk
from gateway.notify.fault import FaultWatch, fault_state_path
from gateway.notify.hooks import Publish
from gateway.notify.link import AlertLink, LinkSigner, link_secret
from gateway.notify.log import NotificationLog
from gateway.notify.notifier import Notifier, make_channels
from gateway.notify.policy import NotifyPolicy, empty_cell, unreachable
from gateway.notify.router import Router
from gateway.pipeline import BatchCounts, IngestPipeline
from gateway.registry import (
    Registry,
    RegistryChanges,
    check_thresholds,
    registry_for,
    reread,
)
from gateway.retention import Retention
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.book import AlertBook, AlertError
from gateway.rules.engine import RuleEngine
from gateway.rules.fault import RuleFaults
from gateway.rules.rule import Rule, attributes_read, load_rules
from gateway.rules.silence import SilenceBook
from gateway.rules.stage import AlertStage
from gateway.statefile import ReloadAnswer, reload_answer_path, write_durably
from gateway.stats import Stats
from gateway.store.backoff import Backoff
from gateway.store.database import damaged_files
from gateway.store.drain import OutboxDrain
from gateway.store.influx import InfluxWriter
from gateway.store.lock import PidLock, pid_path, telemetry_pid_path, wait_until_free
from gateway.store.outbox import Outbox
from gateway.store.series import SeriesMapper, device_info, registered_in

log = logging.getLogger(__name__)

# The main connection's filters before alarms had a connection of their own.
LEGACY_TOPICS = ("community/+/+/+/+", "vendor/acme-smoke/+/up")


def _log_alerts(changes: Sequence[AlertChange]) -> None:
    for change in changes:
        level = logging.WARNING if change.state is AlertState.FIRING else logging.INFO
        if not change.fired:
            level = logging.DEBUG
        log.log(level, "alert %s (%s)", change.summary(), change.alert_id)


SUMMARY_INTERVAL_S = 60.0
# How often silent devices are looked for.
RULE_TICK_S = 5.0
# Rate windows are saved every this many ticks and at a stop: a crash loses at most
# that much of a window, a stop or an upgrade nothing.
RATES_SAVE_TICKS = 6
# How often the disk set aside for the outbox, if given back, is set aside again.
RESERVE_CHECK_S = 60.0
# How often the registry's points are written again. The dashboards read the last point
# with no time range, so a retention policy shorter than the gateway's uptime (7 or 30
# days on many edge boxes) would empty their map and place lists; a day stays well
# inside any such policy, for one line a device a day.
DEVICE_INFO_INTERVAL_S = 24 * 3600.0


def _told(error: BaseException) -> BaseException:
    """What a stage failed with, as the command that ran the gateway tells it: the
    gateway's own error from among the failures of a stage's tasks, if there is one."""
    if isinstance(error, BaseExceptionGroup):
        ours = error.subgroup(GatewayError)
        if ours is not None:
            return _told(ours.exceptions[0])
    return error


def notification_log_path(outbox_path: Path) -> Path:
    """Beside the outbox: var/outbox.sqlite3 keeps its log in var/outbox.notifications.sqlite3."""
    return outbox_path.with_name(f"{outbox_path.stem}.notifications{outbox_path.suffix}")


def instance_name(config: GatewayConfig) -> str:
    """The gateway's name among others: its MQTT client id."""
    return config.mqtt.client_id if config.mqtt else "gateway"


@dataclass(frozen=True, slots=True)
class _Reach:
    policy: NotifyPolicy
    channels: Mapping[str, Channel]


async def tell_refused_start(config: GatewayConfig, problem: str, clock: Clock) -> None:
    """A start refused by its config, rules or registry: the people who hear of the
    gateway's faults are told, if the refusal lasts (gateway.notify.fault). Nothing else
    would tell them that no alarm reaches anyone."""
    policy = config.notify
    if policy is None:
        return
    name = instance_name(config)
    async with httpx.AsyncClient() as http:
        # With no broker connection: an MQTT channel fails, and the next one is tried.
        reach = _Reach(policy, make_channels(policy, http, None, clock))
        # Its only problem is the refusal.
        watch = FaultWatch(lambda: {}, reach, instance=name, communities=(), clock=clock,
                           stats=Stats(), zone=ZoneInfo(config.timezone),
                           path=fault_state_path(config.outbox.path))  # fmt: skip
        await watch.refused(problem)


def load_catalogue(config: GatewayConfig) -> tuple[ProfileSet, Registry, list[Rule]]:
    """Profiles, registry and rules, checked; raises ConfigError naming the file and field."""
    profiles = load_profiles(config.profiles_dir, CODECS)
    rules = load_rules(config.rules_dir, profiles)
    types = profiles.device_types()
    registry = registry_for(config.registry_file, types, attributes_read(rules, types))
    if config.ingest.require_registered and not len(registry):
        raise config.error(
            "ingest.require_registered",
            "no device is registered (registry_file names no sheet, or an empty one): "
            "every message would be refused, fire alarms and SOS among them",
        )
    check_policy(config, registry, rules, profiles)
    return profiles, registry, rules


def check_policy(
    config: GatewayConfig, registry: Registry, rules: Sequence[Rule], profiles: ProfileSet
) -> None:
    """Raises ConfigError if the config's notification policy names a place, rule or
    device type the gateway does not have (notify.policy.unreachable), or a grid
    worker's token a cell no registered device is in."""
    all_registered = config.ingest.require_registered
    communities = {place[0] for place in registry.places()}
    for i, token in enumerate(config.api.tokens if config.api is not None else ()):
        for j, community in enumerate(token.communities or ()):
            # Only registered devices are taken in: a desk of a misspelt community
            # would see nothing, for good.
            if all_registered and communities and community not in communities:
                raise config.error(
                    f"api.tokens[{i}].communities[{j}]",
                    f"no registered device is in {community!r}; known: {sorted(communities)}",
                )
        for j, cell in enumerate(token.cells):
            empty = empty_cell(cell, registry, all_registered=all_registered)
            if empty is not None:
                raise config.error(f"api.tokens[{i}].cells[{j}]", empty)
    if config.notify is None:
        return
    problem = unreachable(
        config.notify,
        registry,
        {r.name for r in rules},
        profiles.device_types(),
        all_registered=all_registered,
    )
    if problem is not None:
        raise config.notify_error(*problem)


class Gateway:
    def __init__(self, config: GatewayConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stats = Stats()
        self.profiles, self.registry, rules = load_catalogue(config)
        self.registry_file = config.registry_file
        self.loaded_rules = rules
        # Two gateways on one outbox would each notify every alarm; and a damaged outbox
        # is moved aside only while no other process has it open.
        folder = config.outbox.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{folder}: the outbox folder cannot be made: {exc.strerror or exc}",
                retryable=False,
            ) from exc
        self.instance = PidLock.take(pid_path(config.outbox.path), "another gateway")
        try:
            wait_until_free(
                telemetry_pid_path(config.outbox.path),
                STOP_TIMEOUT_S,
                "the telemetry process of a gateway that ended",
            )
            self._open(config, rules)
        except BaseException:
            self.instance.release()
            raise

    def _open(self, config: GatewayConfig, rules: list[Rule]) -> None:
        periods_s = self.profiles.periods_s()
        self.rules = RuleEngine(
            rules,
            self.registry,
            periods_s,
            now_ms=self.clock.now_ms(),
            zone=ZoneInfo(config.timezone),
            faults=RuleFaults(self.stats.rule_faults),
        )
        # Opened here first, before the telemetry process: a damaged file is moved aside
        # only while no other process has it open.
        self.outbox = Outbox.configured(
            config.outbox, bulk_elsewhere=self._telemetry_apart(config), recover_damaged=True
        )
        self.alerts = AlertBook(config.outbox.path)
        self.silences = SilenceBook(
            config.outbox.path, self.registry, all_registered=config.ingest.require_registered
        )
        redelivery, alarm_redelivery = self._redelivery_filters(config)
        ingest = config.ingest
        decoder = Decoder.configured(self.profiles, self.registry, ingest)
        self.pipeline = IngestPipeline(
            decoder,
            redelivery,
            SeriesMapper(self.profiles, self.registry),
            self.outbox,
            self.stats,
            commit_max_messages=ingest.commit_max_messages,
            commit_interval_s=ingest.commit_interval_s,
            alerts=AlertStage(
                self.rules,
                self.alerts,
                self.silences,
                self.clock,
                kept_ms=config.retention.alerts_kept_ms,
            ),
            alarm_redelivery=alarm_redelivery,
            clock=self.clock,
        )
        # Devices the registry had when it was last written and has no longer (taken
        # out, or moved to another community, while the gateway was stopped) are not
        # watched as they were, as after a reload.
        self.rules.forget_taken_out(registered_in(self.outbox.registry_series()[0]))
        self.pipeline.alert_listeners += [_log_alerts, self._count_alerts]
        self.pipeline.commit_listeners.append(partial(self.stats.note_commit, "main"))
        self.desk = AlertDesk(self.alerts, self.registry, self.pipeline.commit, self.clock)
        self.notifications = NotificationLog(
            notification_log_path(config.outbox.path),
            moved_from=config.outbox.path,
            route_chains=[r.escalation for r in config.notify.routes] if config.notify else (),
            recover_damaged=True,
        )
        api = config.api or ApiConfig()
        secret = api.link_secret.get_secret_value() if api.link_secret else None
        self.links = LinkSigner(
            link_secret(secret, config.outbox.path.parent), api.public_url, api.link_ttl_s
        )
        self.retention = Retention(
            config.retention,
            config.outbox.path,
            notification_log_path(config.outbox.path),
            self.silences,
            self.clock,
        )
        self.subscriber: Subscriber | TelemetryProcess | None = None
        # Set when the telemetry process has handed over records for the rules.
        self.handed_over: asyncio.Event | None = None
        mqtt = config.mqtt
        if mqtt is not None:
            before_record = LEGACY_TOPICS if self.outbox.holds_redelivery_keys() else ()
            retired, added = self._session_filters(mqtt.client_id, mqtt.topics, before_record)
            if self._telemetry_apart(config):
                self.handed_over = asyncio.Event()
                self.subscriber = TelemetryProcess(
                    config, self.clock, self.stats, retired=retired, added=added,
                    on_counts=self._on_counts,
                )  # fmt: skip
            else:
                if self.outbox.handoffs_waiting():
                    # Left by a telemetry process before the config kept the telemetry in
                    # this one: judged first, as a crash's are, or their rules never run.
                    self.handed_over = asyncio.Event()
                # The gateway's status goes with the alarms: on their connection if any.
                self.subscriber = subscriber_for(
                    mqtt, self.clock, retired=retired, added=added, status=not mqtt.alarm_topics
                )
        alarm_retired, alarm_added = (
            self._session_filters(mqtt.alarm_client_id, mqtt.alarm_topics, ())
            if mqtt and mqtt.alarm_topics
            else ([], [])
        )
        self.alarm_subscriber = (
            subscriber_for(
                mqtt,
                self.clock,
                topics=mqtt.alarm_topics,
                client_id=mqtt.alarm_client_id,
                retired=alarm_retired,
                added=alarm_added,
                status=True,
            )
            if mqtt and mqtt.alarm_topics
            else None
        )
        # Alarms queued for the alarm connection before its topics were configured away
        # would wait at the broker for ever: its session is resumed, what it holds taken
        # in on the alarm lane, and its filters dropped, once.
        held = self.outbox.subscriptions(mqtt.alarm_client_id) if mqtt else None
        self.alarm_leftover = (
            subscriber_for(
                mqtt, self.clock, topics=(), client_id=mqtt.alarm_client_id, retired=held
            )
            if mqtt and not mqtt.alarm_topics and held
            else None
        )
        self.notifier: Notifier | None = None
        self.faults: FaultWatch | None = None
        self._http: httpx.AsyncClient | None = None
        # Notifications go out on the alarm connection, where no backlog is queued.
        publisher = self.alarm_subscriber or self.subscriber
        self._publish: Publish | None = (
            None if isinstance(publisher, TelemetryProcess | None) else publisher.publish
        )
        if config.notify is not None:
            self._http = httpx.AsyncClient()
            self.notifier = Notifier(
                config.notify,
                make_channels(config.notify, self._http, self._publish, self.clock),
                self._router(config.notify, self.registry),
                self.alerts,
                self.notifications,
                self.links,
                self.pipeline.commit,
                self.clock,
                self.stats,
                ZoneInfo(config.timezone),
                silences=self.silences,
                lasts=self.rules.lasts,
            )
            self.pipeline.alert_listeners.append(self.notifier.on_alerts)
            self.desk.listeners.append(self.notifier.on_desk_step)
            self.faults = FaultWatch(
                self._faults,
                self.notifier,
                instance=self.instance_name,
                communities=self._communities(),
                clock=self.clock,
                stats=self.stats,
                zone=ZoneInfo(config.timezone),
                path=fault_state_path(config.outbox.path),
            )
            if not config.notify.fault_receivers():
                log.warning("nobody hears of the gateway's own faults: notify.gateway_faults.to "
                            "and notify.fallback_receivers are empty")  # fmt: skip
        # The old alarm session's filters, once the broker dropped them: forgotten at an
        # orderly stop that stored all it held, so that a crash before has the next start
        # resume it again for what it still holds.
        self._leftover_retired: list[str] = []
        if self.alarm_leftover is not None:
            self.alarm_leftover.on_retired = self._leftover_retired.extend
        for connection in (self.subscriber, self.alarm_subscriber):
            if connection is not None and not isinstance(connection, TelemetryProcess):
                connection.on_retired = partial(
                    self.outbox.forget_subscriptions, connection.client_id
                )
                connection.on_subscribed = partial(
                    self.outbox.record_subscriptions, connection.client_id
                )
        self.stopping = asyncio.Event()
        # One reload at a time; and the registry's points written again after one.
        self._reloading = asyncio.Lock()
        self._reloads = 0
        self._registry_reloaded = asyncio.Event()
        self.api = ApiServer(self, config.api) if config.api is not None else None

    def _redelivery_filters(
        self, config: GatewayConfig
    ) -> tuple[RedeliveryFilter, RedeliveryFilter]:
        """The main lane's and the alarm lane's redelivery filters, with their saved keys."""
        redelivery = RedeliveryFilter.configured(config)
        main_keys: SavedKeys | None = None
        # With the telemetry apart the main lane is that process's, which restores its
        # keys itself: here they would only take memory and start-up time from the
        # alarms (137 MiB and 0.9 s for 200,000 devices).
        if not self._telemetry_apart(config):
            main_keys = self.outbox.redelivery_keys()
            redelivery.restore(main_keys)
        alarm_keys = self.outbox.redelivery_keys("alarm")
        if not alarm_keys:
            # Before the alarm lane existed its keys were kept with the rest: until it
            # saved keys of its own, a device sending one of those alarms again must find
            # it known.
            alarm_keys = self.outbox.redelivery_keys() if main_keys is None else main_keys
        alarm_redelivery = RedeliveryFilter.configured(config)
        alarm_redelivery.restore(alarm_keys)
        return redelivery, alarm_redelivery

    @staticmethod
    def _telemetry_apart(config: GatewayConfig) -> bool:
        """Whether the telemetry is taken in by a process of its own."""
        mqtt = config.mqtt
        return mqtt is not None and bool(mqtt.alarm_topics) and config.ingest.telemetry_process

    async def run(self) -> None:
        """Until stop(); then finishes the batch in hand and closes the outbox."""
        tasks: list[asyncio.Task[None]] = []
        writer: InfluxWriter | None = None
        # Only a stop that was asked for: a failed stage is a crash, and so counted.
        asked_to_stop = False
        try:
            if self.config.influx is not None:
                influx = self.config.influx
                writer = InfluxWriter(influx)
                await writer.__aenter__()
                drain = OutboxDrain(
                    self.outbox,
                    writer,
                    Backoff(influx.backoff_initial_s, influx.backoff_max_s),
                    self.clock,
                    self.stats,
                    batch_lines=influx.batch_lines,
                    linger_s=influx.linger_s,
                )
                self.pipeline.listeners.append(lambda _: drain.wakeup.set())
                tasks.append(asyncio.create_task(drain.run(), name="drain"))
            else:
                tasks.append(asyncio.create_task(self._watch_depth(), name="depth"))
            tasks.append(asyncio.create_task(self._keep_disk_reserve(), name="reserve"))
            tasks.append(asyncio.create_task(self._log_summary(), name="summary"))
            tasks.append(asyncio.create_task(self._write_device_info(), name="device-info"))
            tasks.append(asyncio.create_task(self._report_health(), name="health"))
            tasks.append(asyncio.create_task(self._tick_rules(), name="rule-timers"))
            tasks.append(asyncio.create_task(self.retention.run(), name="retention"))
            if self.notifier is not None:
                tasks.append(asyncio.create_task(self.notifier.run(), name="notify"))
            if self.faults is not None:
                tasks.append(asyncio.create_task(self.faults.run(), name="faults"))
            if self.api is not None:
                tasks.append(asyncio.create_task(self.api.serve(), name="api"))
            if self.subscriber is not None:
                alarms = self.alarm_subscriber or self.alarm_leftover
                if alarms is not None:
                    await alarms.start()
                source: Subscriber | None = None
                if isinstance(self.subscriber, TelemetryProcess):
                    tasks.append(
                        asyncio.create_task(self.subscriber.run(self.stopping), name="ingest")
                    )
                else:
                    await self.subscriber.start()
                    source = self.subscriber
                tasks.append(
                    asyncio.create_task(
                        self.pipeline.run(source, self.stopping, alarms, self.handed_over),
                        name="ingest",
                    )
                )
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in done:
                error = None if task is stop else task.exception()
                if error is not None:
                    log.error("the %s stage failed: %s", task.get_name(), error)
                    raise _told(error)
            asked_to_stop = True
        finally:
            try:
                await self._wind_down(tasks, writer, asked_to_stop=asked_to_stop)
            finally:
                self.close()

    async def _wind_down(
        self,
        tasks: Sequence[asyncio.Task[None]],
        writer: InfluxWriter | None,
        *,
        asked_to_stop: bool,
    ) -> None:
        """Stops the stages, finishing the batch in hand. A stage that failed raises its
        error here again."""
        self.stopping.set()
        if self.api is not None:
            # Ends by itself, after open requests and event streams finish.
            self.api.stop()
        for task in tasks:
            if task.get_name() not in ("ingest", "api"):
                task.cancel()
        try:
            # The batch in hand is committed and acknowledged before the connections
            # close: sent again, a message without seq or ts would be stored twice.
            ingest = [task for task in tasks if task.get_name() == "ingest"]
            if ingest:
                await asyncio.wait(ingest)
            leftover = self.alarm_leftover
            if (
                leftover is not None
                and self._leftover_retired
                and asked_to_stop
                and self.pipeline.commit_error is None
                and not leftover.holds_messages
            ):
                try:
                    self.outbox.forget_subscriptions(leftover.client_id, self._leftover_retired)
                except StoreError as exc:
                    log.warning("the old alarm session is resumed again at the next start: %s", exc)
        finally:
            for subscriber in (self.subscriber, self.alarm_subscriber, self.alarm_leftover):
                if subscriber is not None:
                    subscriber.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.faults is not None and asked_to_stop:
            await self.faults.stopped()
        if writer is not None:
            await writer.__aexit__(None, None, None)
        if self._http is not None:
            await self._http.aclose()
        if self.pipeline.alerts is not None:
            try:
                self.outbox.commit([], [], None, self.pipeline.alerts.rates_write())
            except StoreError as exc:
                # Saved now and then while running: the rates of a few minutes are lost.
                log.error("the rules' rates of change were not saved: %s", exc)

    def close(self) -> None:
        """Closes the stores and lets another gateway have the outbox: at the end of
        `run`, or for a gateway that never ran."""
        try:
            if self.api is not None:
                self.api.close()
            self.retention.close()
            self.outbox.close()
            self.alerts.close()
            self.silences.close()
            self.notifications.close()
        finally:
            self.instance.release()

    @property
    def instance_name(self) -> str:
        return instance_name(self.config)

    def _faults(self) -> dict[str, str]:
        """What keeps alarms from people now (gateway.notify.fault)."""
        problems: dict[str, str] = {}
        mqtt = self.config.mqtt
        # The connection the alarms come in on.
        connection = self.alarm_subscriber or self.subscriber
        if mqtt is not None and connection is not None and not connection.connected.is_set():
            problems["broker"] = f"not connected to {mqtt.host}:{mqtt.port}"
        refused = self.refused_subscriptions()
        if refused:
            problems["subscriptions"] = (
                f"the broker refused the subscriptions to {', '.join(refused)}: nothing "
                "sent on them arrives"
            )
        failing = self.stats.failing_commits()
        if failing is not None:
            problems["outbox"] = failing
        if self.notifier is not None and self.notifier.round_error is not None:
            problems["notifications"] = self.notifier.round_error
        return problems

    def refused_subscriptions(self) -> list[str]:
        """The topic filters the broker refused the gateway's connections."""
        return [
            topic
            for connection in (self.subscriber, self.alarm_subscriber)
            if connection is not None
            for topic in connection.refused
        ]

    def damaged_files(self) -> int:
        """Damaged files moved aside and still beside the outbox."""
        path = self.config.outbox.path
        return damaged_files(path, notification_log_path(path))

    async def _keep_disk_reserve(self) -> None:
        while True:
            await asyncio.to_thread(self.outbox.reserve.restore)
            await self.clock.sleep(RESERVE_CHECK_S)

    async def _watch_depth(self) -> None:
        # With no database configured the outbox only grows; keep its depth in view.
        while True:
            self.stats.outbox_depth = await asyncio.to_thread(self.outbox.depth)
            await self.clock.sleep(1.0)

    async def _write_device_info(self) -> None:
        # The registry's places and positions, for the dashboards' map and place lists,
        # through the outbox like every other point.
        while True:
            self._registry_reloaded.clear()
            written, ended = await self.pipeline.read_until_done(self.outbox.registry_series)
            # Off the loop: 2 s for a district's 200,000 devices.
            info = await asyncio.to_thread(
                device_info, self.registry, self.clock.now_ms(), written, ended
            )
            if info.lines:
                record = partial(Outbox.write_registry_series, series=info.series, ended=info.ended)
                await self.pipeline.commit_until_stored(info.lines, record)
            await sleep_unless_set(self.clock, DEVICE_INFO_INTERVAL_S, self._registry_reloaded)

    async def _report_health(self) -> None:
        # The gateway's own counters, through the outbox like every other point.
        interval_s = self.config.health_interval_s
        if interval_s is None:
            # A stage that ends stops the gateway; this one has nothing more to do.
            await self.stopping.wait()
            return
        report = HealthReport(self.instance_name)
        while True:
            await self.clock.sleep(interval_s)
            self._count_open_alerts()
            lines = report.lines(
                self.stats,
                self.clock.now_ms(),
                reserve_given_back=self.outbox.reserve.given_back,
                damaged_files=self.damaged_files(),
            )
            await self.pipeline.commit_until_stored(lines, None)

    async def _tick_rules(self) -> None:
        ticks = 0
        connection: tuple[bool, int] | None = None
        while True:
            await self.clock.sleep(RULE_TICK_S)
            stage = self.pipeline.alerts
            if stage is not None:
                listening, connection = await self._listening(connection)
                await self.pipeline.commit_alerts(
                    stage.tick(self.clock.now_ms(), listening=listening)
                )
                ticks += 1
                if ticks % RATES_SAVE_TICKS == 0:
                    # Through the ingest connection, off the event loop: the rules' own
                    # connection would wait there for the telemetry's commits to end.
                    await self.pipeline.commit_until_stored([], stage.rates_write())

    async def _listening(
        self, before: tuple[bool, int] | None
    ) -> tuple[bool, tuple[bool, int] | None]:
        """Whether the gateway has heard all the devices sent until now: connected since
        the last check (so that what the broker queued meanwhile has begun to arrive),
        with nothing taken in still to judge. Also the connection's state now."""
        subscriber = self.subscriber
        if subscriber is None:
            return True, None
        now = (subscriber.connected.is_set(), subscriber.connections)
        steady = now[0] and now == before
        if steady and self.handed_over is not None:
            steady = not await self.pipeline.handoffs_waiting()
        return steady, now

    def _on_counts(self, counts: BatchCounts) -> None:
        # The telemetry process handed over records; once judged, the record listeners
        # wake the drain for their lines.
        if self.handed_over is not None and counts.records:
            self.handed_over.set()

    def _count_alerts(self, changes: Sequence[AlertChange]) -> None:
        for change in changes:
            if not change.fired:
                continue
            if change.state is AlertState.FIRING:
                self.stats.alerts_firing += 1
            else:
                self.stats.alerts_resolved += 1
        self._count_open_alerts()

    def _count_open_alerts(self) -> None:
        # From the alert book, not counted along: alerts open before a restart, and
        # alerts a person closed, count as they are.
        self.stats.alerts_open = self.alerts.count_fired_open()

    async def _log_summary(self) -> None:
        while True:
            await self.clock.sleep(SUMMARY_INTERVAL_S)
            self._count_open_alerts()
            log.info("%s", self.stats.summary())

    def _session_filters(
        self, client_id: str, topics: tuple[str, ...], before_record: tuple[str, ...]
    ) -> tuple[list[str], list[str]]:
        """The filters this client id was configured with before but is not now, which
        its persistent session may hold still (forgotten once the broker dropped them);
        and those it is configured with now but was not, which a resumed session does
        not hold yet (recorded once the broker has them). `before_record` stands for an
        outbox that took in messages before the record was kept: the defaults of that
        time."""
        known = self.outbox.subscriptions(client_id)
        previous = before_record if known is None else known
        self.outbox.record_subscriptions(client_id, [t for t in topics if t in previous])
        retired = [topic for topic in previous if topic not in topics]
        return retired, [topic for topic in topics if topic not in previous]

    async def reload(self, config_path: Path) -> ReloadAnswer:
        """What SIGHUP does. The rules; the registry and, from the config file, the API
        tokens and the notification policy: a grid worker's new bracelet wearer is
        routed, a token taken out of the file stops working, a roster's new shifts hold,
        without a restart. They are checked together (the policy names the registry's
        places and devices and the rules, the registry's thresholds are read by the rules)
        and taken together or not at all. Other settings take effect at the next start;
        so do the device profiles, which every stage is built on. The answer is kept for
        `community-gateway reload` to show."""
        async with self._reloading:
            self._reloads += 1
            unseen = ""
            try:
                rules = load_rules(self.config.rules_dir, self.profiles)
                config = load_config(config_path)
                unseen = self._profiles_unseen(config.profiles_dir)
                types = self.profiles.device_types()
                # Off the loop: a district's registry takes seconds to read and compare.
                registry, changes = await asyncio.to_thread(
                    reread, config.registry_file, types, self.registry,
                    attributes_read(rules, types),
                )  # fmt: skip
                check_policy(config, registry, rules, self.profiles)
                if not len(registry) and len(self.registry):
                    # A sheet saved empty (a filter left on, the wrong tab exported) would
                    # leave every device unregistered: their places, wearers and routes gone.
                    raise ConfigError(
                        str(config.registry_file or config_path),
                        "" if config.registry_file else "registry_file",
                        f"names no device, where the running registry has {len(self.registry)}"
                        "; to run without a registry, restart the gateway",
                    )
            except ConfigError as exc:
                log.error("nothing reloaded, the running rules, registry, API tokens and "
                          "notification policy stay: %s%s", exc, unseen)  # fmt: skip
                return self._answer_reload(
                    False, f"refused them, the running ones stay: {exc}{unseen}"
                )
            self.use_rules(rules)
            self.registry_file = config.registry_file
            if changes:
                self.use_registry(registry, changes)
            self.reload_tokens(config.api.tokens if config.api is not None else ())
            self.reload_policy(config.notify)
            if unseen:
                log.warning("%s", unseen.removeprefix("; "))
            taken = (
                f"{len(registry)} registered devices ({changes or 'unchanged'}), "
                f"{len(rules)} rules, {len(config.api.tokens) if config.api else 0} API tokens"
                f"{', the notification policy' if config.notify else ''}{unseen}"
            )
            # Told even when nothing changed: its own reading of the sheet may have failed
            # before, and a restarted one must read the file the config names now. Waited
            # for: until it holds the registry, a vendor frame of a device just added is
            # refused as unregistered.
            if isinstance(self.subscriber, TelemetryProcess):
                refused = await self.subscriber.use_registry(config.registry_file)
                if refused is not None:
                    return self._answer_reload(False, f"took them ({taken}), but {refused}")
            return self._answer_reload(True, f"took them: {taken}")

    def _profiles_unseen(self, folder: Path) -> str:
        """What a reload says of device profiles changed since the start, which it does
        not take: a registry naming a new device type is refused for want of its profile
        until the gateway is restarted."""
        try:
            changed = load_profiles(folder, CODECS).by_name != self.profiles.by_name
        except ConfigError as exc:
            return f"; the device profiles on disk fail their check ({exc}): the running ones stay"
        if not changed:
            return ""
        return (f"; the device profiles in {folder} changed since the gateway started: they "
                "are read at start, restart it to take them")  # fmt: skip

    def _answer_reload(self, taken: bool, said: str) -> ReloadAnswer:
        answer = ReloadAnswer(pid=os.getpid(), number=self._reloads, taken=taken, said=said)
        try:
            write_durably(reload_answer_path(self.config.outbox.path),
                          answer.model_dump_json().encode())  # fmt: skip
        except OSError as exc:
            log.warning("cannot keep the answer to the reload for `reload` to show: %s", exc)
        return answer

    def use_registry(self, registry: Registry, changes: RegistryChanges) -> None:
        """Take a reloaded registry in every stage of this process at once, between two
        batches: a device is decoded, placed, judged, silenced and routed by one
        registry. (The telemetry process, apart, reads the sheet itself.)"""
        self.registry = registry
        self.pipeline.use_registry(registry)
        self.rules.use_registry(registry, changes, self.clock.now_ms())
        self.silences.use_registry(registry)
        self.desk.use_registry(registry)
        if self.notifier is not None:
            policy = self.notifier.policy
            self.notifier.use_policy(policy, self._router(policy, registry), self.notifier.channels)
        if self.faults is not None:
            self.faults.communities = self._communities()
        if self.api is not None:
            self.api.context.latest.use_registry(registry)
        self._registry_reloaded.set()
        log.info("reloaded the registry: %d devices (%s)", len(registry), changes)

    def _router(self, policy: NotifyPolicy, registry: Registry) -> Router:
        # The rules' place alerts go by the device types of their rules, as loaded now.
        return Router(policy, registry, ZoneInfo(self.config.timezone), self.rules.place_types)

    def _communities(self) -> tuple[str, ...]:
        """The communities the gateway serves, named in the notices of its own faults."""
        return tuple(sorted({place[0] for place in self.registry.places()}))

    def reload_rules(self) -> None:
        """Load the rule files again; a broken one raises ConfigError, naming its file and
        field, and leaves the running rules untouched. So do rules that no longer read a
        threshold the registry gives."""
        rules = load_rules(self.config.rules_dir, self.profiles)
        read = attributes_read(rules, self.profiles.device_types())
        check_thresholds(self.registry, read, self.registry_file)
        # A route matching a rule renamed would never match again.
        check_policy(self.config, self.registry, rules, self.profiles)
        self.use_rules(rules)

    def use_rules(self, rules: list[Rule]) -> None:
        self.rules.load(rules)
        self.loaded_rules = rules
        log.info("reloaded %d alert rules from %s", len(rules), self.config.rules_dir)

    def reload_policy(self, policy: NotifyPolicy | None) -> bool:
        """Take the notification policy as the config file now has it: receivers, rosters,
        routes, escalations and channels. Turning notifications on or off takes a
        restart."""
        notifier = self.notifier
        if notifier is None or policy is None or self._http is None:
            if (notifier is None) != (policy is None):
                log.warning("notifications turned %s in the config: takes effect at the "
                            "next start", "on" if policy is not None else "off")  # fmt: skip
            return False
        if policy == notifier.policy:
            return False
        channels = make_channels(
            policy, self._http, self._publish, self.clock, (notifier.policy, notifier.channels)
        )
        notifier.use_policy(policy, self._router(policy, self.registry), channels)
        log.info("reloaded the notification policy: %d receivers, %d routes, %d channels",
                 len(policy.receivers), len(policy.routes), len(channels))  # fmt: skip
        return True

    def still_notifies(self, link: AlertLink) -> bool:
        """Whether the receiver a link was sent to is still one the notification policy
        tells about its alert: someone taken out of the policy can no longer act through
        links sent before, from the moment the new policy is loaded, rather than until
        the links expire."""
        if self.notifier is None:
            return False
        try:
            entry = self.alerts.get(link.alert_id)
        except AlertError:
            return True  # no such alert: the page says so
        return self.notifier.router.reaches(link.receiver, entry)

    def reload_tokens(self, tokens: Sequence[ApiToken]) -> None:
        """Take the API tokens as the config file now has them."""
        if self.api is None:
            return
        if self.api.context.replace_tokens(tokens):
            log.info("reloaded %d API tokens", len(tokens))

    def stop(self) -> None:
        self.stopping.set()
