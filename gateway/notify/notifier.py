"""The notification stage: turns alert changes into escalation steps, steps into
notifications, and delivers each notification until it is sent or every channel of
its receiver failed.

    alert change -> routes -> escalation steps (planned at firing time)
                 -> due step: stopped if a person took the alert, else one
                    notification per receiver (keyed: never made twice)
                 -> delivery: channel after channel; retries with backoff; over a
                    limit, critical (or any, over one lasting hours) goes to the next
                    channel, the rest into a digest

Each round plans, runs due steps and starts the sends that are due, each a task of its
own: a provider that hangs (up to its channel's `timeout_s`) holds up neither the next
alarm nor the other sends, and a notification is never sent twice at once.

Everything is kept in the notification log beside the outbox, so a restart carries on
where it stopped and sends nothing twice. Alerts that fired while the gateway was
down before planning them are found in the alert book at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from gateway.clock import Clock, WallSteps, seconds_since, sleep_unless_set
from gateway.decode.record import DeviceRef
from gateway.errors import DamagedStoreError, NotifyError, StoreError
from gateway.notify.channel import Channel
from gateway.notify.cloud import AliyunSms, AliyunVoice, TencentSms, TencentVoice
from gateway.notify.hooks import Console, MqttPublisher, Publish, Webhook
from gateway.notify.link import LinkSigner
from gateway.notify.log import (
    IN_DIGEST,
    QUIET_HOLD,
    AttemptResult,
    DeliveryAttempt,
    Notification,
    NotificationLog,
    PlannedStep,
)
from gateway.notify.notice import CLEARED_KINDS, Notice, make_notice
from gateway.notify.policy import (
    AliyunSmsChannel,
    AliyunVoiceChannel,
    ChannelConfig,
    ConsoleChannel,
    DingtalkChannel,
    FeishuChannel,
    MqttChannel,
    NotifyPolicy,
    Step,
    TencentSmsChannel,
    TencentVoiceChannel,
    WebhookChannel,
    WecomChannel,
)
from gateway.notify.robots import DingtalkRobot, FeishuBot, WecomRobot
from gateway.notify.router import Router, Target
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.book import AlertBook, AlertEntry, AlertError, was_muted
from gateway.rules.rule import Severity
from gateway.rules.schedule import DailyWindow
from gateway.rules.silence import SilenceBook
from gateway.stats import Stats
from gateway.store.database import damaged_error, is_damaged
from gateway.store.line_protocol import encode_fields, encode_series

log = logging.getLogger(__name__)

NOTIFICATION_MEASUREMENT = "notification"
ESCALATION_MEASUREMENT = "escalation"
# Sends under way at once by one channel, critical ones apart: a provider that hangs
# holds up neither another's sends nor its own critical ones.
MAX_CONCURRENT_SENDS = 16
# Bounds the rounds of `process` (each tries the next channel of those that failed).
MAX_CHANNELS_PER_PASS = 8
# How often the loop looks again when nothing is due sooner.
IDLE_WAKE_S = 1.0
# After a round that failed (the log's file locked past its timeout, say): the next.
FAILED_ROUND_PAUSE_S = 1.0
# A stop waits this long for the sends under way, whose results are then recorded; one
# still going after it is cut off, and goes again at the next start with the same key.
STOP_GRACE_S = 5.0
# How long a channel whose provider said it was over its limit, without saying for how
# long, is left alone.
DEFAULT_RETRY_AFTER_S = 60.0
# A limit that holds a channel longer than this (a number's limit per day) passes any
# notice on to its next channel, as a critical one always is: a grid worker is not left
# waiting until the next day for an SMS while a call or a robot can reach them now.
LONG_LIMIT_S = 3600.0
# How often an alert a silence mutes is looked at again: a silence ended early lets it
# be told within this, not at the end the silence had.
MUTED_RECHECK_MS = 60_000
# The detail of a send by a channel that cannot confirm that the receiver got it.
UNCONFIRMED = "unconfirmed: goes on by the next channel too"
NO_LINK = "without the link to take the alert: goes on by a channel that carries it"

CommitLines = Callable[[Sequence[str], None], Awaitable[None]]


def make_channels(
    policy: NotifyPolicy,
    http: httpx.AsyncClient,
    publish: Publish | None,
    clock: Clock,
    running: tuple[NotifyPolicy, Mapping[str, Channel]] | None = None,
) -> dict[str, Channel]:
    """The policy's channels. `running`: the policy and channels in use before a reload;
    a channel whose settings it did not change is kept, with the counts its limits go by
    and the provider's token it holds."""
    before, kept = running if running is not None else (None, {})
    channels: dict[str, Channel] = {}
    for name, config in policy.channels.items():
        if before is not None and before.channels.get(name) == config and name in kept:
            channels[name] = kept[name]
        else:
            channels[name] = _channel(name, config, http, publish, clock)
    return channels


def _channel(
    name: str,
    config: ChannelConfig,
    http: httpx.AsyncClient,
    publish: Publish | None,
    clock: Clock,
) -> Channel:
    if isinstance(config, WecomChannel):
        return WecomRobot(name, config, http)
    if isinstance(config, DingtalkChannel):
        return DingtalkRobot(name, config, http, clock)
    if isinstance(config, FeishuChannel):
        return FeishuBot(name, config, http, clock)
    if isinstance(config, AliyunSmsChannel):
        return AliyunSms(name, config, http, clock)
    if isinstance(config, AliyunVoiceChannel):
        return AliyunVoice(name, config, http, clock)
    if isinstance(config, TencentSmsChannel):
        return TencentSms(name, config, http, clock)
    if isinstance(config, TencentVoiceChannel):
        return TencentVoice(name, config, http, clock)
    if isinstance(config, WebhookChannel):
        return Webhook(name, config, http)
    if isinstance(config, MqttChannel):
        return MqttPublisher(name, config, publish)
    assert isinstance(config, ConsoleChannel)  # the union is closed
    return Console(name)


class Notifier:
    def __init__(
        self,
        policy: NotifyPolicy,
        channels: dict[str, Channel],
        router: Router,
        book: AlertBook,
        notifications: NotificationLog,
        links: LinkSigner,
        commit: CommitLines,
        clock: Clock,
        stats: Stats,
        zone: ZoneInfo,
        silences: SilenceBook | None = None,
        lasts: Callable[[str], bool] = lambda rule: True,
    ) -> None:
        """`silences`: those the alert stage mutes alerts by; with them, an alert a
        silence muted is told once the silence is over, if it still holds. `lasts`:
        whether a rule's alerts last while their condition holds; an event's (a detector
        opened by the maintenance crew) is over once it came, and stays untold."""
        self.policy = policy
        self.channels = channels
        self.router = router
        self.book = book
        self.log = notifications
        self._links = links
        self._commit = commit
        self._clock = clock
        self._steps = WallSteps(clock)
        # A step of the wall clock not yet moved into what waits: a round rolled back
        # moves nothing, and the next round must.
        self._unshifted_ms = 0
        self._stats = stats
        self._zone = zone
        self._incoming: deque[AlertChange] = deque()
        self._lines: list[str] = []
        self._wakeup = asyncio.Event()
        self._send_slots: dict[tuple[str, bool], asyncio.Semaphore] = {}
        # The sends under way, by the key of each notification they carry (a digest
        # carries several): one under way is not started again.
        self._sending: dict[str, asyncio.Task[None]] = {}
        # What a send's bookkeeping raised, for the next round to raise as its own.
        self._send_error: Exception | None = None
        # The results of sends made that the log did not take, by the key of what was
        # sent (see `_record_result`).
        self._unrecorded: list[tuple[str, Callable[[], None]]] = []
        self._silences = silences
        self._lasts = lasts
        self.stop_grace_s = STOP_GRACE_S
        # Alerts a silence muted, still to be told if they hold once it is over: by id,
        # when to look again.
        self._muted: dict[str, int] = {}
        self._random = random.Random()
        # The error of the last round while rounds fail (gateway.notify.fault).
        self.round_error: str | None = None

    # --- what the other stages call --------------------------------------------------------

    def use_policy(
        self, policy: NotifyPolicy, router: Router, channels: dict[str, Channel]
    ) -> None:
        """A reloaded policy, from the next round on. Escalation steps already planned
        keep their times and go on by their chain's name and their number in it, to whom
        the new policy names there; a notification waiting for a channel the policy no
        longer has goes on to its next channel."""
        self.policy = policy
        self.router = router
        self.channels = channels
        self._retime_quiet_holds()
        self._wakeup.set()

    def _retime_quiet_holds(self) -> None:
        """Notices held for quiet hours the policy has now shortened or taken away go at
        their new end, or now: held to the old end, a receiver would hear of a low
        battery an hour late. Those lengthened are held again at the old end."""
        now_ms = self._clock.now_ms()
        for held in self.log.held_for_quiet_hours():
            notice = Notice.from_json(held.notice)
            if not self.router.names(notice.receiver):
                continue  # taken out: left to its hold's end, not sent at night
            quiet = self.router.quiet_hours(notice.receiver)
            until_ms = self._quiet_until_ms(quiet, notice, now_ms)
            if until_ms is not None and until_ms >= held.due_ms:
                continue
            self.log.update(held.key, state=held.state, channel_index=held.channel_index,
                            tries=held.tries, due_ms=now_ms if until_ms is None else until_ms)  # fmt: skip
            if until_ms is not None:
                self._record_notice(notice, "-", AttemptResult.QUIET_HOURS,
                                    f"{QUIET_HOLD}{until_ms}", None)  # fmt: skip

    def on_alerts(self, changes: Sequence[AlertChange]) -> None:
        """Alert listener of the pipeline: called after the changes committed."""
        for change in changes:
            if change.fired and change.state in (AlertState.FIRING, AlertState.RESOLVED):
                self._incoming.append(change)
        self._wakeup.set()

    def on_desk_step(self, entry: AlertEntry, step: AlertState) -> None:
        """A person acknowledged or closed an alert: its escalation stops now."""
        if step in (AlertState.ACKNOWLEDGED, AlertState.CLOSED):
            self.log.stop_steps(entry.alert_id)

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            await self._stop_sends()

    async def _loop(self) -> None:
        recover = True
        recalled = False
        while True:
            try:
                if not recalled:
                    self.recall_sends()
                    recalled = True
                if recover:
                    self.recover()
                    recover = False
                # Cleared before the round: a send that ends during it wakes the next.
                self._wakeup.clear()
                await self._round()
                self.round_error = None
            except Exception as exc:
                if isinstance(exc, sqlite3.Error) and is_damaged(exc):
                    # Never mends: the gateway stops, and its next start moves the file
                    # aside, so that notifications go out again.
                    raise self._damaged(exc) from exc
                # What is owed is in the log and is taken up again by the next round, and
                # alerts whose planning was rolled back are found in the alert book as at
                # a start; the gateway, and the alarms it takes in, go on meanwhile.
                log.exception("a round of notifications failed; the next in %.0f s",
                              FAILED_ROUND_PAUSE_S)  # fmt: skip
                self.round_error = f"{type(exc).__name__}: {exc}"
                recover = True
                await self._clock.sleep(FAILED_ROUND_PAUSE_S)
                continue
            # A notification being sent is due until its send ends, which wakes the loop.
            next_due = self.log.next_due_ms(busy=self._sending.keys())
            muted_ms = min(self._muted.values(), default=None)
            if muted_ms is not None:
                next_due = muted_ms if next_due is None else min(next_due, muted_ms)
            wait_s = IDLE_WAKE_S
            if next_due is not None:
                wait_s = min(wait_s, max(0.0, (next_due - self._clock.now_ms()) / 1000))
            if self._incoming:
                continue
            await sleep_unless_set(self._clock, wait_s, self._wakeup)

    async def _stop_sends(self) -> None:
        """At a stop: the sends under way end (or, after `stop_grace_s`, are cut off), the
        results the log did not take are recorded once more, and what was recorded goes
        to the time series."""
        tasks = set(self._sending.values())
        if tasks:
            _, going = await asyncio.wait(tasks, timeout=self.stop_grace_s)
            for task in going:
                task.cancel()
            if going:
                await asyncio.wait(going)
                log.warning("stopped with %d notification send(s) under way; they go again "
                            "at the next start", len(going))  # fmt: skip
        self._record_unrecorded()
        if self._lines:
            lines, self._lines = self._lines, []
            try:
                await self._commit(lines, None)
            except Exception:
                log.exception("the last notification points were not written")

    def _record_unrecorded(self) -> None:
        """At a stop, the results of sends the log did not take, which no round records
        any more: unrecorded, each is sent again at the next start, to someone who has it
        already. Those it still does not take are named."""
        if not self._unrecorded:
            return
        try:
            with self._transaction():
                for _, record in self._unrecorded:
                    record()
        except Exception as exc:
            log.error("stopped with the results of sending %s not recorded (%r): they are "
                      "sent again at the next start",
                      ", ".join(key for key, _ in self._unrecorded), exc)  # fmt: skip
        self._unrecorded.clear()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """The log's transaction. Rolled back, the points and counts of what it recorded
        go with it: what it recorded is recorded again, by the next round or start."""
        lines = len(self._lines)
        counts = self._stats.notifications.copy()
        escalations = self._stats.escalations
        try:
            with self.log.transaction():
                yield
        except BaseException:
            del self._lines[lines:]
            self._stats.notifications.clear()
            self._stats.notifications.update(counts)
            self._stats.escalations = escalations
            raise

    def _damaged(self, exc: sqlite3.Error) -> DamagedStoreError:
        """Which of the two files a round reads is damaged: the notification log, or else
        the alert book's, the outbox."""
        path = self.log.path if self.log.damaged() else self.book.path
        return damaged_error(path, "a round of notifications failed", exc)

    def recall_sends(self) -> None:
        """Counts against the channels' limits what they sent in their windows before the
        start: a burst of alarms just after a restart would otherwise go over a robot's
        or a number's limit, and the provider refuse it."""
        now_ms, now_s = self._clock.now_ms(), self._clock.monotonic_s()
        window_s = max((c.limiter.window_s for c in self.channels.values()), default=0.0)
        if window_s <= 0:
            return
        for send in self.log.sends_since(now_ms - round(window_s * 1000)):
            channel = self.channels.get(send.channel)
            if channel is None:
                continue
            notification = self.log.get(send.notification_key)
            phone = Notice.from_json(notification.notice).phone if notification else None
            # The limits count in monotonic time.
            channel.limiter.note(phone, now_s - seconds_since(send.at_ms, now_ms))

    def recover(self) -> None:
        """Plan alerts that fired, and all-clears of alerts that resolved, but were never
        planned: the gateway stopped between committing them and planning them."""
        now_ms = self._clock.now_ms()
        for entry in [*self.book.open_alerts(), *self.book.closed_then_resolved()]:
            if entry.fired_ms is None:
                continue
            # Taken before it was planned, a critical alert still owes its first step; one
            # closed owes nothing but its all-clear.
            owed = entry.state is not AlertState.CLOSED and (
                entry.acknowledged_by is None or _owes_first_step(entry)
            )
            unplanned = owed and not self.log.planned(entry.alert_id)
            untold = entry.resolved_ms is not None and not self.log.told_resolved(entry.alert_id)
            if not unplanned and not untold:
                continue
            history = self.book.history(entry.alert_id)
            if was_muted(history) and not self.log.planned(entry.alert_id):
                # Nobody was told of it: nobody hears its all-clear. One still firing is
                # told once its silence is over (or now, if it is already).
                if unplanned and entry.state is AlertState.FIRING:
                    self._watch_muted(entry.alert_id, entry.rule, now_ms)
                continue
            try:
                if unplanned:
                    log.info("planning notifications of %s, which fired before a restart",
                             entry.alert_id)  # fmt: skip
                    self._plan(entry)
                if untold:
                    self._announce_resolved(entry, now_ms)
            except sqlite3.Error:
                raise
            except Exception:
                log.exception("alert %s: its notifications could not be planned", entry.alert_id)
        self._wakeup.set()

    async def process(self) -> None:
        """A round, then, as long as sends it started end and make more due now (the next
        channel of one that failed), another, each channel once at most: for a caller
        that wants what is due now done before it goes on. The loop does not wait so."""
        for _ in range(MAX_CHANNELS_PER_PASS):
            await self._round()
            if self._sending:
                await asyncio.wait(set(self._sending.values()))
                continue
            next_due = self.log.next_due_ms()
            if next_due is None or next_due > self._clock.now_ms():
                break
        await self._commit_lines()

    async def _round(self) -> None:
        """Everything due now: plan new alerts, run due steps, start the sends and the
        digests that are due. Waits for no send."""
        if self._send_error is not None:
            error, self._send_error = self._send_error, None
            raise error
        now_ms = self._clock.now_ms()
        with self._transaction():
            for _, record in self._unrecorded:
                record()
            self._keep_delays()
            while self._incoming:
                change = self._incoming.popleft()
                try:
                    self._take(change, now_ms)
                except sqlite3.Error:
                    # The log's file, not the alert: the round is rolled back and the
                    # alert planned again from the alert book.
                    raise
                except Exception as exc:
                    # One alert's fault stops neither the others nor the stage; one left
                    # unplanned is tried again at the next start.
                    log.exception("alert %s: its notifications could not be planned",
                                  change.alert_id)  # fmt: skip
                    self._record(change.alert_id, "-", "-", AttemptResult.UNDELIVERED,
                                 f"planning failed: {exc!r}", None, change)  # fmt: skip
            self._unmute(now_ms)
            for step in self.log.due_steps(now_ms):
                try:
                    self._run_step(step, now_ms)
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    log.exception("alert %s: escalation %r step %d failed", step.alert_id,
                                  step.chain, step.step)  # fmt: skip
                    self.log.finish_step(step)
                    with contextlib.suppress(AlertError):
                        self._record(step.alert_id, "-", "-", AttemptResult.UNDELIVERED,
                                     f"step {step.chain}.{step.step} failed: {exc!r}", None,
                                     self.book.get(step.alert_id))  # fmt: skip
            sends = self._due_sends()
            digests = self._due_digests()
        self._unrecorded.clear()
        self._unshifted_ms = 0
        # Started once their round committed: a round rolled back starts none.
        for notification, notice, channel in sends:
            self._start((notification.key,), self._deliver(notification, notice, channel))
        for channel, digest, members in digests:
            keys = tuple(notification.key for notification, _ in members)
            self._start(keys, self._deliver_digest(channel, digest, members))
        await self._commit_lines()

    async def _commit_lines(self) -> None:
        """Commit the points of the sends made; kept for the next round if the outbox
        refuses them."""
        if self._lines:
            lines, self._lines = self._lines, []
            try:
                await self._commit(lines, None)
            except StoreError:
                self._lines = lines + self._lines
                raise

    def _keep_delays(self) -> None:
        """After the wall clock was set (NTP, on a box that booted with a wrong clock),
        what waits keeps its delay: set back two hours, the clock would otherwise hold
        a fall's voice call for two hours; set forward, run every step at once."""
        self._unshifted_ms += self._steps.taken_ms()
        step_ms = self._unshifted_ms
        if step_ms:
            moved = self.log.shift_due(step_ms)
            log.warning("the clock was set %s by %.0f s; %d waiting step(s) and "
                        "notification(s) keep their delays",
                        "forward" if step_ms > 0 else "back", abs(step_ms) / 1000, moved)  # fmt: skip

    # --- planning --------------------------------------------------------------------------

    def _take(self, change: AlertChange, now_ms: int) -> None:
        if change.silenced_by is not None:
            self._record(change.alert_id, "-", "-", AttemptResult.SILENCED,
                         f"muted by silence {change.silenced_by}", None, change)  # fmt: skip
            if change.state is AlertState.FIRING:
                # Looked at again in this round, and then until its silence ends.
                self._watch_muted(change.alert_id, change.rule, now_ms)
            return
        try:
            entry = self.book.get(change.alert_id)
        except AlertError:
            log.error("alert %s is not in the alert book; not notified", change.alert_id)
            return
        if change.state is AlertState.FIRING:
            self._plan(entry)
        else:
            self._announce_resolved(entry, now_ms)

    def _plan(self, entry: AlertEntry) -> None:
        # Delays count from now, not from the device's time of the event: an alarm that
        # reaches the gateway late (a backlog after an outage) still gives a person the
        # chain's time to take it before the next step.
        now_ms = self._clock.now_ms()
        steps = [
            PlannedStep(entry.alert_id, route.escalation, number,
                        now_ms + round(step.after_s * 1000))
            for route in self.router.routes(entry)
            for number, step in enumerate(self.policy.escalations[route.escalation])
        ]  # fmt: skip
        if not steps:
            log.warning("no route for alert %s (%s); nobody is notified", entry.alert_id,
                        entry.rule)  # fmt: skip
        self.log.plan(steps)

    def _watch_muted(self, alert_id: str, rule: str, at_ms: int) -> None:
        if self._silences is not None and self._lasts(rule):
            self._muted[alert_id] = at_ms

    def _unmute(self, now_ms: int) -> None:
        """Plans the alerts a silence muted whose silence is over while they still hold
        (a battery still low after the maintenance window), once: nobody else would
        hear of them until they cleared and came back."""
        if self._silences is None:
            return
        for alert_id, check_ms in list(self._muted.items()):
            if check_ms > now_ms:
                continue
            del self._muted[alert_id]
            try:
                entry = self.book.get(alert_id)
                if (
                    entry.state is not AlertState.FIRING
                    or entry.acknowledged_by is not None
                    or self.log.planned(alert_id)
                ):
                    continue
                change = _change_of(entry, now_ms)
                silence = self._silences.matching(change, now_ms, self.router.site(entry))
                if silence is not None:
                    self._muted[alert_id] = max(
                        min(silence.ends_ms, now_ms + MUTED_RECHECK_MS), now_ms + 1
                    )
                    continue
                log.info("alert %s still holds after the silence that muted it: planning "
                         "its notifications", alert_id)  # fmt: skip
                self._plan(entry)
            except sqlite3.Error:
                raise
            except Exception as exc:
                log.exception("alert %s: its notifications could not be planned", alert_id)
                with contextlib.suppress(AlertError):
                    self._record(alert_id, "-", "-", AttemptResult.UNDELIVERED,
                                 f"planning failed: {exc!r}", None, self.book.get(alert_id))  # fmt: skip

    def _run_step(self, planned: PlannedStep, now_ms: int) -> None:
        entry = self.book.get(planned.alert_id)
        if self._taken(entry):
            self.log.stop_steps(entry.alert_id)
            if planned.step > 0 or not _owes_first_step(entry):
                return
        chains = [planned.chain]
        if planned.chain not in self.policy.escalations:
            # The chain was taken out of the policy (or renamed) after the alert was
            # planned: the step goes by the chains the alert follows now, so that an
            # alert nobody took still reaches someone; those planned for it already
            # take their own steps.
            planned_chains = self.log.chains(entry.alert_id)
            chains = list(
                dict.fromkeys(
                    r.escalation
                    for r in self.router.routes(entry)
                    if r.escalation not in planned_chains
                )
            )
            log.warning("alert %s: escalation %r is no longer in the policy; step %d goes "
                        "by %s", entry.alert_id, planned.chain, planned.step,
                        ", ".join(map(repr, chains)) or "no route")  # fmt: skip
        for chain in chains:
            steps = self.policy.escalations[chain]
            if planned.step < len(steps):
                self._notify_step(entry, chain, planned.step, steps[planned.step], now_ms)
            else:
                log.info("alert %s: escalation %r has no step %d any more", entry.alert_id,
                         chain, planned.step)  # fmt: skip
        self.log.finish_step(planned)

    def _notify_step(self, entry: AlertEntry, chain: str, number: int, step: Step,
                     now_ms: int) -> None:  # fmt: skip
        targets = self.router.targets(step, entry, now_ms)
        for target in targets:
            linked = any(map(self._carries_link, target.channels))
            if not linked and not self._has_link(entry.alert_id, target.receiver):
                # Reached for the first time by channels that carry no link (a voice call
                # to the grid worker whose shift began after the alert fired): their own
                # channels follow, so that they can take the alert and see where it is.
                target = target.with_own_channels()
            self._add(entry, target, f"{entry.alert_id}/{chain}.{number}", "firing", now_ms)
        if not targets:
            self._record(entry.alert_id, "-", "-", AttemptResult.UNDELIVERED,
                         "nobody to notify at this step", None, entry)  # fmt: skip
        if number > 0:
            self._stats.escalations += 1
            log.warning("alert %s not acknowledged: escalation step %d to %s", entry.alert_id,
                        number, ", ".join(t.receiver for t in targets))  # fmt: skip
            tags = [("community", entry.community), ("rule", entry.rule),
                    ("severity", entry.severity), ("step", str(number))]  # fmt: skip
            fields = (("alert_id", entry.alert_id), ("step_index", number))
            self._lines.append(
                f"{encode_series(ESCALATION_MEASUREMENT, tags)} {encode_fields(fields)} {now_ms}"
            )

    def _taken(self, entry: AlertEntry) -> bool:
        """A person has it, or it cleared by itself and does not concern life or safety."""
        if entry.acknowledged_by is not None or entry.state is AlertState.CLOSED:
            return True
        return entry.resolved_ms is not None and not entry.life_safety

    def _sends_resolved(self, entry: AlertEntry) -> Callable[[str], bool]:
        """Whether those a chain told of the alert hear its all-clear: by the route that
        gives the alert the chain now; by default (`send_resolved`), for a chain none
        gives it any more (renamed or taken out at a reload after it told them)."""
        routes = self.router.routes(entry)
        given = {r.escalation for r in routes}
        sending = {r.escalation for r in routes if r.send_resolved}
        return lambda chain: chain in sending or chain not in given

    def _announce_resolved(self, entry: AlertEntry, now_ms: int) -> None:
        """Each one told of the alert by a chain whose route sends the all-clear hears
        it: at any step, and whoever is on duty now."""
        sends = self._sends_resolved(entry)
        targets: dict[str, Target] = {}
        for sent in self.log.sent(entry.alert_id):
            notice = Notice.from_json(sent.notice)
            if notice.kind == "firing" and sends(_chain_of(sent.key, notice)):
                # Keyed by receiver alone: one told by two steps or routes hears it once.
                targets.setdefault(notice.receiver, self.router.told(notice, sent.channels))
        for target in targets.values():
            self._add(entry, target, entry.alert_id, "resolved", now_ms)

    def _add(self, entry: AlertEntry, target: Target, prefix: str, kind: str, now_ms: int) -> None:
        key = f"{prefix}/{target.receiver}/{kind}"
        notice = make_notice(
            key=key, kind=kind, entry=entry, device=self.router.device(entry),
            receiver=target.receiver, receiver_name=target.display_name, phone=target.phone,
            link=None, zone=self._zone, site=self.router.site(entry), link_code=None,
        )  # fmt: skip
        quiet_until_ms = self._quiet_until_ms(target.quiet_hours, notice, now_ms)
        due_ms = now_ms if quiet_until_ms is None else quiet_until_ms
        if kind == "firing":
            # Its time to open runs from when it goes out: held for the night, from the
            # morning.
            link = self._links.url(entry.alert_id, target.receiver, due_ms)
            code = self._links.code(key)
            self.log.add_short_link(code, link)
            notice = replace(notice, link=link, link_code=code)
        notification = Notification(key, entry.alert_id, target.channels, 0, 0, due_ms,
                                    "pending", notice.to_json().decode())  # fmt: skip
        if self.log.add(notification, now_ms) and quiet_until_ms is not None:
            self._record_notice(notice, "-", AttemptResult.QUIET_HOURS,
                                f"{QUIET_HOLD}{quiet_until_ms}", None)  # fmt: skip

    def _quiet_until_ms(self, quiet: DailyWindow | None, notice: Notice, now_ms: int) -> int | None:
        """When the quiet hours a non-critical notice is due in end, or None if it may
        go now."""
        if quiet is None or notice.critical or not quiet.contains(now_ms, self._zone):
            return None
        return quiet.end_after(now_ms, self._zone)

    def _held_for_quiet_hours(self, notification: Notification, notice: Notice) -> bool:
        """Whether a notice whose time came inside its receiver's quiet hours, after it
        was made outside them (a retry, the end of a limit's wait, a digest), waits for
        their end, as one made inside them does; if so, recorded. The receiver's hours
        are the policy's now: a reload that gave them new ones holds by those."""
        now_ms = self._clock.now_ms()
        quiet = self.router.quiet_hours(notice.receiver)
        until_ms = self._quiet_until_ms(quiet, notice, now_ms)
        if until_ms is None:
            return False
        # A digest's member stays one: those held together go out together at the end.
        self.log.update(notification.key, state=notification.state,
                        channel_index=notification.channel_index, tries=notification.tries,
                        due_ms=until_ms)  # fmt: skip
        # The same record as a hold at planning: the withdrawal at their end, and a step
        # of the wall clock leaving the time of day it waits for, go by it.
        self._record_notice(notice, "-", AttemptResult.QUIET_HOURS, f"{QUIET_HOLD}{until_ms}",
                            None)  # fmt: skip
        return True

    # --- delivery --------------------------------------------------------------------------

    def _due_sends(self) -> list[tuple[Notification, Notice, Channel]]:
        """The notifications due now, not being sent already, with the channel each goes
        by now; critical first, so that they never wait behind the others for a limit."""
        due = [n for n in self.log.due(self._clock.now_ms()) if n.key not in self._sending]
        pairs = sorted(
            ((n, Notice.from_json(n.notice)) for n in due), key=lambda p: not p[1].critical
        )
        sends = []
        for notification, notice in pairs:
            channel = self._ready(notification, notice)
            if channel is not None:
                sends.append((notification, notice, channel))
        return sends

    def _start(self, keys: tuple[str, ...], send: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(send, name=f"notify {keys[0]}")
        for key in keys:
            self._sending[key] = task
        task.add_done_callback(partial(self._ended, keys))

    def _ended(self, keys: tuple[str, ...], task: asyncio.Task[None]) -> None:
        for key in keys:
            if self._sending.get(key) is task:
                del self._sending[key]
        # Its points to commit, or the notification's next channel due now.
        self._wakeup.set()

    def _slots(self, channel: Channel, notice: Notice) -> asyncio.Semaphore:
        key = (channel.name, notice.critical)
        slots = self._send_slots.get(key)
        if slots is None:
            slots = self._send_slots[key] = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
        return slots

    async def _deliver(self, notification: Notification, notice: Notice, channel: Channel) -> None:
        try:
            async with self._slots(channel, notice):
                started_s = time.perf_counter()
                try:
                    await channel.deliver(notice)
                except NotifyError as exc:
                    latency_ms = (time.perf_counter() - started_s) * 1000
                    failed = partial(self._failed, notification, notice, channel, exc, latency_ms)
                    self._record_result(notice.key, failed)
                    return
                latency_ms = (time.perf_counter() - started_s) * 1000
                delivered = partial(self._delivered, notification, notice, channel, latency_ms)
                self._record_result(notice.key, delivered)
        except Exception as exc:
            self._send_failed(exc, notice.key)

    def _record_result(self, key: str, record: Callable[[], None]) -> None:
        """Records a send's result. One the log does not take (its file locked, its disk
        refusing writes) is recorded again first thing in each round, which fails until
        it is: the send is not made again meanwhile, to the same people time after
        time, and the rounds fail without a break, a fault told to people
        (gateway.notify.fault). A stop records it once more (see `_record_unrecorded`)."""
        try:
            with self._transaction():
                record()
        except sqlite3.Error as exc:
            log.error("the result of sending %s was not recorded: %r", key, exc)
            self._unrecorded.append((key, record))
            self._wakeup.set()

    def _send_failed(self, exc: Exception, key: str) -> None:
        """A send whose result could not be recorded for a fault of the notifier's own
        (not the log's file: see `_record_result`): the next round fails with it, as if
        it had been the round's own."""
        log.error("the result of sending %s was not recorded: %r", key, exc)
        if self._send_error is None:
            self._send_error = exc
        self._wakeup.set()

    def _delivered(
        self, notification: Notification, notice: Notice, channel: Channel, latency_ms: float
    ) -> None:
        now_ms = self._clock.now_ms()
        more = notification.channel_index + 1 < len(notification.channels)
        if notice.critical and not channel.confirms and more:
            # The channel took it, but cannot say the receiver has it (an app offline):
            # the next channel takes it too, so that a fall is never missed.
            self._record_notice(notice, channel.name, AttemptResult.SENT, UNCONFIRMED, latency_ms)
            self._next_channel(notification, notice, now_ms)
            return
        if not channel.links and notice.kind == "firing":
            later = self._link_channel_after(notification)
            if later is not None and not self._has_link(notice.alert_id, notice.receiver):
                # They heard of it, but have no link to take it by: the first of their
                # channels that carries one brings it.
                self._record_notice(notice, channel.name, AttemptResult.SENT, NO_LINK,
                                    latency_ms)  # fmt: skip
                self._next_channel(notification, notice, now_ms, later)
                return
        self._sent(notification, notice, channel.name, "", latency_ms, now_ms)

    def _sent(self, notification: Notification, notice: Notice, channel: str, detail: str,
              latency_ms: float | None, now_ms: int) -> None:  # fmt: skip
        """A notification a channel took: never sent again, and its receiver counted as
        told, of the all-clear too."""
        self.log.update(notification.key, state="sent",
                        channel_index=notification.channel_index,
                        tries=notification.tries + 1, due_ms=now_ms)  # fmt: skip
        self._record_notice(notice, channel, AttemptResult.SENT, detail, latency_ms)
        self._told_after_clear(notification, notice, now_ms)

    def _told_after_clear(self, notification: Notification, notice: Notice, now_ms: int) -> None:
        """One told of an alert that had cleared before they were (a backlog's alarm
        and its all-clear in one batch, a life-safety step after the all-clear) hears
        that it is over too: the all-clear went to those told before it."""
        if notice.kind != "firing":
            return
        try:
            entry = self.book.get(notice.alert_id)
        except AlertError:
            return
        if entry.resolved_ms is None:
            return
        if self._sends_resolved(entry)(_chain_of(notification.key, notice)):
            target = self.router.told(notice, notification.channels)
            # Keyed by receiver: made once, whoever told them first.
            self._add(entry, target, entry.alert_id, "resolved", now_ms)

    def _ready(self, notification: Notification, notice: Notice) -> Channel | None:
        """The channel to try now, or None when the notification goes another way."""
        if self._withdrawn(notification, notice):
            return None
        index = notification.channel_index
        now_ms = self._clock.now_ms()
        if index >= len(notification.channels):
            self._undelivered(notification, notice)
            return None
        if self._held_for_quiet_hours(notification, notice):
            return None
        channel = self.channels.get(notification.channels[index])
        if channel is None:
            self._channel_gone(notification, notice, now_ms)
            return None
        if channel.needs_phone and not notice.phone:
            self._record_notice(notice, channel.name, AttemptResult.FAILED,
                                "the receiver has no phone number", None)  # fmt: skip
            self._next_channel(notification, notice, now_ms)
            return None
        if notice.kind in CLEARED_KINDS and not channel.tells_clearing:
            self._record_notice(notice, channel.name, AttemptResult.FAILED,
                                "a call reads out an alarm, not news that one is over", None)  # fmt: skip
            self._next_channel(notification, notice, now_ms)
            return None
        now_s = self._clock.monotonic_s()
        wait_s = channel.limiter.wait_s(notice.phone, now_s)
        if wait_s > 0:
            self._over_limit(notification, notice, channel, wait_s, "over the channel's limit")
            return None
        channel.limiter.note(notice.phone, now_s)
        return channel

    def _failed(
        self,
        notification: Notification,
        notice: Notice,
        channel: Channel,
        exc: NotifyError,
        latency_ms: float,
    ) -> None:
        now_ms = self._clock.now_ms()
        tries = notification.tries
        if exc.rate_limited:
            wait_s = self._block(channel, notice, exc, now_ms)
            self._over_limit(notification, notice, channel, wait_s, str(exc))
            return
        if exc.retryable and tries + 1 < self.policy.delivery.max_tries:
            due_ms = now_ms + self._backoff_ms(tries)
            self.log.update(notification.key, state="pending",
                            channel_index=notification.channel_index, tries=tries + 1,
                            due_ms=due_ms)  # fmt: skip
            self._record_notice(notice, channel.name, AttemptResult.RETRY, str(exc), latency_ms)
            return
        self._record_notice(notice, channel.name, AttemptResult.FAILED, str(exc), latency_ms)
        self._next_channel(notification, notice, now_ms)

    def _backoff_ms(self, tries: int) -> int:
        """How long to wait before the next try, after `tries` retries. Jittered, so that
        many notifications failing together do not retry together, and never at once, so
        that a retry is not another pass of the same round."""
        delivery = self.policy.delivery
        ceiling_s = min(delivery.backoff_max_s, delivery.backoff_initial_s * 2**tries)
        return round(self._random.uniform(ceiling_s / 2, ceiling_s) * 1000)

    def _block(self, channel: Channel, notice: Notice, exc: NotifyError, now_ms: int) -> float:
        """A provider's limit answer holds the channel's sends (to that number, for SMS
        and voice, whose limits are per number, unless the account's was reached) for as
        long as it said: tried again at once, a robot over its limit is blocked the
        longer. How long, in seconds."""
        wait_s = exc.retry_after_s if exc.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
        number = notice.phone if channel.needs_phone and not exc.account_wide else None
        channel.limiter.block(self._clock.monotonic_s() + wait_s, number)
        return wait_s

    def _over_limit(
        self,
        notification: Notification,
        notice: Notice,
        channel: Channel,
        wait_s: float,
        detail: str,
    ) -> None:
        now_ms = self._clock.now_ms()
        self._record_notice(notice, channel.name, AttemptResult.RATE_LIMITED, detail, None)
        if _past_limit_moves_on(notification, notice, wait_s):
            self._next_channel(notification, notice, now_ms)
        elif channel.digests and not notice.critical:
            self.log.update(notification.key, state="digest",
                            channel_index=notification.channel_index, tries=notification.tries,
                            due_ms=now_ms)  # fmt: skip
            self._record_notice(notice, channel.name, AttemptResult.DIGESTED,
                                "waits to go out in a digest", None)  # fmt: skip
        else:
            # Its own message as soon as the limit allows: for a critical alert, its last
            # channel (an escalation's voice call, say) rather than none.
            self.log.update(notification.key, state="pending",
                            channel_index=notification.channel_index, tries=notification.tries,
                            due_ms=now_ms + round(wait_s * 1000))  # fmt: skip

    def _withdrawn(self, notification: Notification, notice: Notice) -> bool:
        """Whether a firing notice is not sent after all (see `_why_withdrawn`); if so,
        recorded."""
        if notice.kind != "firing":
            return False
        try:
            entry = self.book.get(notice.alert_id)
        except AlertError:
            return False
        reason = _why_withdrawn(entry, notification.key, notice)
        if reason is None:
            return False
        # Told already by a channel that cannot confirm (the app): told, and so told when
        # it clears, whatever becomes of the copy by the next channel.
        told = self._sent_unconfirmed(notification)
        self.log.update(notification.key, state="sent" if told else "withdrawn",
                        channel_index=notification.channel_index, tries=notification.tries,
                        due_ms=notification.due_ms)  # fmt: skip
        self._record_notice(notice, "-", AttemptResult.WITHDRAWN, reason, None)
        if told:
            # The all-clear went to those told when it came, this one still pending.
            self._told_after_clear(notification, notice, self._clock.now_ms())
        return True

    def _carries_link(self, name: str) -> bool:
        """Whether the channel of that name carries a notice's link."""
        channel = self.channels.get(name)
        return channel is not None and channel.links

    def _link_channel_after(self, notification: Notification) -> int | None:
        """The index of the notification's first channel after the current one that
        carries the link, if any."""
        for index in range(notification.channel_index + 1, len(notification.channels)):
            if self._carries_link(notification.channels[index]):
                return index
        return None

    def _has_link(self, alert_id: str, receiver: str) -> bool:
        """Whether a channel that carries the link took a notice of the alert firing for
        `receiver`."""
        return any(
            a.receiver == receiver and a.result is AttemptResult.SENT
            and a.notification_key.endswith("/firing") and self._carries_link(a.channel)
            for a in self.log.attempts(alert_id)
        )  # fmt: skip

    def _sent_unconfirmed(self, notification: Notification) -> bool:
        """Whether a channel that cannot confirm, or carries no link, took the notification
        before the one it waits for now."""
        return any(
            a.notification_key == notification.key and a.result is AttemptResult.SENT
            for a in self.log.attempts(notification.alert_id)
        )

    def _next_channel(self, notification: Notification, notice: Notice, now_ms: int,
                      index: int | None = None) -> None:  # fmt: skip
        """On to the channel at `index`, by default the next."""
        if index is None:
            index = notification.channel_index + 1
        if index >= len(notification.channels):
            self._undelivered(notification, notice)
            return
        self.log.update(notification.key, state="pending", channel_index=index, tries=0,
                        due_ms=now_ms)  # fmt: skip
        self._wakeup.set()

    def _channel_gone(self, notification: Notification, notice: Notice, now_ms: int) -> None:
        name = notification.channels[notification.channel_index]
        self._record_notice(notice, name, AttemptResult.FAILED,
                            "the notification policy no longer has this channel", None)  # fmt: skip
        self._next_channel(notification, notice, now_ms)

    def _undelivered(self, notification: Notification, notice: Notice) -> None:
        if self._sent_unconfirmed(notification):
            # A channel that cannot confirm, or carries no link, took it, and none after
            # it did: it may have reached them, and it is never sent again.
            self.log.update(notification.key, state="sent",
                            channel_index=notification.channel_index, tries=notification.tries,
                            due_ms=notification.due_ms)  # fmt: skip
            log.error("%s was told of alert %s only by a channel that cannot confirm it or "
                      "carries no link; every channel after it failed", notice.receiver,
                      notice.alert_id)  # fmt: skip
            self._told_after_clear(notification, notice, self._clock.now_ms())
            return
        self.log.update(notification.key, state="undelivered",
                        channel_index=notification.channel_index, tries=notification.tries,
                        due_ms=notification.due_ms)  # fmt: skip
        self._record_notice(notice, "-", AttemptResult.UNDELIVERED,
                            f"every channel failed: {', '.join(notification.channels)}", None)  # fmt: skip
        log.error("could not notify %s of alert %s by any of its channels", notice.receiver,
                  notice.alert_id)  # fmt: skip

    def _due_digests(self) -> list[tuple[Channel, Notice, list[tuple[Notification, Notice]]]]:
        """Notifications held over a channel's limit go out as one message per channel
        and receiver as soon as the limit allows: each digest due now, with the channel
        it goes by and its notifications."""
        groups: dict[tuple[str, str], list[tuple[Notification, Notice]]] = {}
        now_ms = self._clock.now_ms()
        for notification in self.log.waiting_for_digest():
            if notification.key in self._sending or notification.due_ms > now_ms:
                # Being sent, or waiting to be tried again.
                continue
            name = notification.channels[notification.channel_index]
            notice = Notice.from_json(notification.notice)
            channel = self.channels.get(name)
            if channel is None:
                self._channel_gone(notification, notice, self._clock.now_ms())
                continue
            if self._withdrawn(notification, notice) or self._held_for_quiet_hours(
                notification, notice
            ):
                continue
            group = "" if not channel.needs_phone else notice.receiver
            groups.setdefault((name, group), []).append((notification, notice))
        digests = []
        for (name, _), members in groups.items():
            channel = self.channels[name]
            first = members[0][1]
            now_s = self._clock.monotonic_s()
            if channel.limiter.wait_s(first.phone, now_s) > 0:
                continue
            channel.limiter.note(first.phone, now_s)
            members = _fitting(members, channel)
            digests.append((channel, _digest(first, [n for _, n in members]), members))
        return digests

    async def _deliver_digest(
        self, channel: Channel, digest: Notice, members: list[tuple[Notification, Notice]]
    ) -> None:
        try:
            async with self._slots(channel, digest):
                try:
                    await channel.deliver(digest)
                except NotifyError as exc:
                    failed = partial(self._digest_failed, channel, digest, members, exc)
                    self._record_result(digest.key, failed)
                    return
                sent = partial(self._digest_sent, channel, digest, members)
                self._record_result(digest.key, sent)
        except Exception as exc:
            self._send_failed(exc, digest.key)

    def _digest_sent(
        self, channel: Channel, digest: Notice, members: list[tuple[Notification, Notice]]
    ) -> None:
        now_ms = self._clock.now_ms()
        for notification, notice in members:
            self._sent(notification, notice, channel.name, f"{IN_DIGEST}{digest.key}", None,
                       now_ms)  # fmt: skip

    def _digest_failed(
        self,
        channel: Channel,
        digest: Notice,
        members: list[tuple[Notification, Notice]],
        exc: NotifyError,
    ) -> None:
        now_ms = self._clock.now_ms()
        if exc.rate_limited:
            # Waits, as it did, for the limit to allow it: as long as the provider said;
            # a member with a channel after this one takes it now past a limit that lasts
            # hours, as a single notice does (see `_over_limit`).
            wait_s = self._block(channel, digest, exc, now_ms)
            for notification, notice in members:
                moves_on = _past_limit_moves_on(notification, notice, wait_s)
                detail = str(exc) if moves_on else f"{exc}; the digest waits {wait_s:g} s"
                self._record_notice(notice, channel.name, AttemptResult.RATE_LIMITED, detail, None)
                if moves_on:
                    self._next_channel(notification, notice, now_ms)
            return
        # Tried again as a single notice would be, the digest's members together.
        due_ms = now_ms + self._backoff_ms(max(n.tries for n, _ in members))
        for notification, notice in members:
            if exc.retryable and notification.tries + 1 < self.policy.delivery.max_tries:
                self.log.update(notification.key, state="digest",
                                channel_index=notification.channel_index,
                                tries=notification.tries + 1, due_ms=due_ms)  # fmt: skip
                self._record_notice(notice, channel.name, AttemptResult.RETRY, str(exc), None)
                continue
            self._record_notice(notice, channel.name, AttemptResult.FAILED, str(exc), None)
            self._next_channel(notification, notice, now_ms)

    # --- records ---------------------------------------------------------------------------

    def _record_notice(
        self,
        notice: Notice,
        channel: str,
        result: AttemptResult,
        detail: str,
        latency_ms: float | None,
    ) -> None:
        self._record(notice.alert_id, notice.receiver, channel, result, detail, latency_ms,
                     notice, key=notice.key)  # fmt: skip

    def _record(
        self,
        alert_id: str,
        receiver: str,
        channel: str,
        result: AttemptResult,
        detail: str,
        latency_ms: float | None,
        about: Notice | AlertEntry | AlertChange,
        key: str = "",
    ) -> None:
        now_ms = self._clock.now_ms()
        self.log.record(DeliveryAttempt(key or alert_id, alert_id, receiver, channel, now_ms,
                                        result, detail, latency_ms))  # fmt: skip
        self._stats.notifications[(channel, str(result))] += 1
        if isinstance(about, AlertChange):
            community, rule, severity = about.device.community, about.rule, str(about.severity)
        else:
            community, rule, severity = about.community, about.rule, about.severity
        tags = [("channel", channel), ("community", community), ("result", str(result)),
                ("rule", rule), ("severity", severity)]  # fmt: skip
        fields: list[tuple[str, bool | int | float | str]] = [("count", 1), ("alert_id", alert_id)]
        if latency_ms is not None:
            fields.append(("latency_ms", round(latency_ms, 3)))
        self._lines.append(
            f"{encode_series(NOTIFICATION_MEASUREMENT, tags)} {encode_fields(fields)} {now_ms}"
        )


def _severity_rank(severity: str) -> int:
    order = list(Severity)
    return order.index(Severity(severity)) if severity in order else len(order)


def _digest(first: Notice, notices: list[Notice]) -> Notice:
    keys = sorted(n.key for n in notices)
    digest_id = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    # A group robot's digest may be for several receivers (the grid workers of several
    # communities in one district group): each line says whose it is, and each is
    # @-mentioned.
    several = len({n.receiver for n in notices}) > 1
    # Each alert with its own link, to take it from the message as from a single notice.
    lines = tuple(n.digest_line(whose=several) for n in notices)
    firing = sum(n.kind == "firing" for n in notices)
    counts = [f"{firing} 条告警"] if firing else []
    if len(notices) > firing:
        counts.append(f"{len(notices) - firing} 条已恢复")
    # Headed by the most severe of its alerts still firing: the headline is what a group
    # reads first.
    ranked = [n for n in notices if n.kind == "firing"] or notices
    severity = min((n.severity for n in ranked), key=_severity_rank)
    return replace(
        first,
        key=f"digest/{digest_id}",
        kind="digest",
        severity=severity,
        title="，".join(counts),
        link=None,
        link_code=None,
        map_url=None,
        lines=lines,
        mentions=tuple(n.phone for n in notices[1:] if n.phone),
    )


def _fitting(
    members: list[tuple[Notification, Notice]], channel: Channel
) -> list[tuple[Notification, Notice]]:
    """The first members whose digest the channel's provider takes in one message, one
    at least; the others wait for the next."""
    max_bytes = channel.max_text_bytes
    if max_bytes is None:
        return members

    def fits(count: int) -> bool:
        notices = [n for _, n in members[:count]]
        return channel.size_bytes(_digest(notices[0], notices)) <= max_bytes

    low, high = 1, len(members)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return members[:low]


def _chain_of(key: str, notice: Notice) -> str:
    """The escalation chain of a firing notification's key,
    `{alert_id}/{chain}.{step}/{receiver}/firing`."""
    step = key.removeprefix(f"{notice.alert_id}/").removesuffix(f"/{notice.receiver}/firing")
    return step.rpartition(".")[0]


def _step_of(key: str, notice: Notice) -> int:
    """The escalation step's number in a firing notification's key."""
    step = key.removeprefix(f"{notice.alert_id}/").removesuffix(f"/{notice.receiver}/firing")
    number = step.rpartition(".")[2]
    return int(number) if number.isdigit() else 0


def _why_withdrawn(entry: AlertEntry, key: str, notice: Notice) -> str | None:
    """Why a firing notice not yet sent is not sent after all, or None.

    Once a person took the alert (acknowledged or closed it), its escalation stops at
    once: a later step's notice waiting for a limit or a retry (a voice call, say) is
    not sent, nor any notice to the one who took it. What the first step owes others
    goes out if critical (a wearer's family still hears of the fall). A non-critical
    notice of an alert no longer firing is not sent: held for quiet hours or a limit, it
    would wake a worker at 07:00 for a lid closed at 23:10, and no all-clear would
    follow. A critical one of an alert that merely cleared goes out: a fire alarm that
    cleared was still a fire alarm."""
    taken = entry.acknowledged_by is not None or entry.state is AlertState.CLOSED
    if taken and notice.critical:
        if notice.receiver in (entry.acknowledged_by, entry.closed_by):
            return f"{notice.receiver} took the alert ({entry.state}) before this could go out"
        if _step_of(key, notice) > 0:
            return f"the alert was {entry.state}, which stopped its escalation, before this could go out"
        return None
    if entry.state is AlertState.FIRING or notice.critical:
        return None
    return f"the alert was {entry.state} before this could go out"


def _owes_first_step(entry: AlertEntry) -> bool:
    """Whether what an alert's first step owes others still goes out once a person took
    it, or it cleared by itself, before the step ran (see _why_withdrawn): a critical
    alert's, as its notices are (a wearer's family still hears of the fall)."""
    return entry.severity == Severity.CRITICAL or entry.life_safety


def _past_limit_moves_on(notification: Notification, notice: Notice, wait_s: float) -> bool:
    """Whether a notice over a limit for `wait_s` takes its next channel now: a critical
    alert is never held behind a limit, nor any behind one that lasts hours."""
    last = notification.channel_index + 1 >= len(notification.channels)
    return (notice.critical or wait_s > LONG_LIMIT_S) and not last


def _change_of(entry: AlertEntry, now_ms: int) -> AlertChange:
    """An alert as a change, for the silences to match as the alert stage does."""
    return AlertChange(
        entry.alert_id, entry.rule, entry.title, Severity(entry.severity), entry.life_safety,
        DeviceRef(entry.community, entry.device_type, entry.device_id), entry.port,
        entry.state, entry.started_ms, now_ms, {},
    )  # fmt: skip
