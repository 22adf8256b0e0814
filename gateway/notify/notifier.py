"""The notification stage: turns alert changes into escalation steps, steps into
notifications, and delivers each notification until it is sent or every channel of
its receiver failed.

    alert change -> routes -> escalation steps (planned at firing time)
                 -> due step: stopped if a person took the alert, else one
                    notification per receiver (keyed: never made twice)
                 -> delivery: channel after channel; retries with backoff; over a
                    limit, critical goes to the next channel, the rest into a digest

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from zoneinfo import ZoneInfo

import httpx

from gateway.clock import Clock, sleep_unless_set
from gateway.errors import DamagedStoreError, NotifyError
from gateway.notify.channel import Channel
from gateway.notify.cloud import AliyunSms, AliyunVoice, TencentSms, TencentVoice
from gateway.notify.hooks import Console, MqttPublisher, Publish, Webhook
from gateway.notify.link import LinkSigner
from gateway.notify.log import (
    IN_DIGEST,
    AttemptResult,
    DeliveryAttempt,
    Notification,
    NotificationLog,
    PlannedStep,
)
from gateway.notify.notice import Notice, make_notice
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
from gateway.stats import Stats
from gateway.store.database import damaged_error, is_damaged
from gateway.store.line_protocol import encode_fields, encode_series

log = logging.getLogger(__name__)

NOTIFICATION_MEASUREMENT = "notification"
ESCALATION_MEASUREMENT = "escalation"
# Sends under way at once, so that one slow provider does not hold up the others.
MAX_CONCURRENT_SENDS = 16
# Bounds the passes of one round of delivery (each pass tries the next channel).
MAX_CHANNELS_PER_PASS = 8
# How often the loop looks again when nothing is due sooner.
IDLE_WAKE_S = 1.0
# After a round that failed (the log's file locked past its timeout, say): the next.
FAILED_ROUND_PAUSE_S = 1.0

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
    ) -> None:
        self.policy = policy
        self.channels = channels
        self.router = router
        self.book = book
        self.log = notifications
        self._links = links
        self._commit = commit
        self._clock = clock
        self._stats = stats
        self._zone = zone
        self._incoming: deque[AlertChange] = deque()
        self._lines: list[str] = []
        self._wakeup = asyncio.Event()
        self._sends = asyncio.Semaphore(MAX_CONCURRENT_SENDS)
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
        self._wakeup.set()

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
                await self.process()
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
            self._wakeup.clear()
            next_due = self.log.next_due_ms()
            wait_s = IDLE_WAKE_S
            if next_due is not None:
                wait_s = min(wait_s, max(0.0, (next_due - self._clock.now_ms()) / 1000))
            if self._incoming:
                continue
            await sleep_unless_set(self._clock, wait_s, self._wakeup)

    def _damaged(self, exc: sqlite3.Error) -> DamagedStoreError:
        """Which of the two files a round reads is damaged: the notification log, or else
        the alert book's, the outbox."""
        path = self.log.path if self.log.damaged() else self.book.path
        return damaged_error(path, "a round of notifications failed", exc)

    def recall_sends(self) -> None:
        """Counts against the channels' limits what they sent in their windows before the
        start: a burst of alarms just after a restart would otherwise go over a robot's
        or a number's limit, and the provider refuse it."""
        now_ms = self._clock.now_ms()
        window_s = max((c.limiter.window_s for c in self.channels.values()), default=0.0)
        if window_s <= 0:
            return
        for send in self.log.sends_since(now_ms - round(window_s * 1000)):
            channel = self.channels.get(send.channel)
            if channel is None:
                continue
            notification = self.log.get(send.notification_key)
            phone = Notice.from_json(notification.notice).phone if notification else None
            channel.limiter.note(phone, send.at_ms / 1000)

    def recover(self) -> None:
        """Plan alerts that fired, and all-clears of alerts that resolved, but were never
        planned: the gateway stopped between committing them and planning them."""
        now_ms = self._clock.now_ms()
        for entry in self.book.open_alerts():
            if entry.fired_ms is None:
                continue
            unplanned = entry.acknowledged_by is None and not self.log.planned(entry.alert_id)
            untold = entry.resolved_ms is not None and not self.log.told_resolved(entry.alert_id)
            if not unplanned and not untold:
                continue
            history = self.book.history(entry.alert_id)
            if was_muted(history):
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
        """Everything due now: plan new alerts, run due steps, deliver, send digests."""
        now_ms = self._clock.now_ms()
        with self.log.transaction():
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
        # A notification a channel failed or refused is due again at once on the next
        # channel: deliver until nothing more is due now, each channel once at most.
        for _ in range(MAX_CHANNELS_PER_PASS):
            due = self.log.due(self._clock.now_ms())
            if not due:
                break
            # Critical first: they never wait behind the others.
            pairs = sorted(
                ((n, Notice.from_json(n.notice)) for n in due), key=lambda p: not p[1].critical
            )
            await asyncio.gather(*(self._deliver(n, notice) for n, notice in pairs))
        await self._send_digests()
        if self._lines:
            lines, self._lines = self._lines, []
            await self._commit(lines, None)

    # --- planning --------------------------------------------------------------------------

    def _take(self, change: AlertChange, now_ms: int) -> None:
        if change.silenced_by is not None:
            self._record(change.alert_id, "-", "-", AttemptResult.SILENCED,
                         f"muted by silence {change.silenced_by}", None, change)  # fmt: skip
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

    def _run_step(self, planned: PlannedStep, now_ms: int) -> None:
        entry = self.book.get(planned.alert_id)
        if self._taken(entry):
            self.log.stop_steps(entry.alert_id)
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

    def _announce_resolved(self, entry: AlertEntry, now_ms: int) -> None:
        """Each one told of the alert by a chain whose route sends the all-clear hears
        it: at any step, and whoever is on duty now."""
        chains = {r.escalation for r in self.router.routes(entry) if r.send_resolved}
        targets: dict[str, Target] = {}
        for sent in self.log.sent(entry.alert_id):
            notice = Notice.from_json(sent.notice)
            if notice.kind == "firing" and _chain_of(sent.key, notice) in chains:
                # Keyed by receiver alone: one told by two steps or routes hears it once.
                targets.setdefault(notice.receiver, self.router.told(notice, sent.channels))
        for target in targets.values():
            self._add(entry, target, entry.alert_id, "resolved", now_ms)

    def _add(self, entry: AlertEntry, target: Target, prefix: str, kind: str, now_ms: int) -> None:
        key = f"{prefix}/{target.receiver}/{kind}"
        link = None
        if kind == "firing":
            link = self._links.url(entry.alert_id, target.receiver, now_ms)
        notice = make_notice(
            key=key, kind=kind, entry=entry, device=self.router.device(entry),
            receiver=target.receiver, receiver_name=target.display_name, phone=target.phone,
            link=link, zone=self._zone, place=self.router.place(entry),
        )  # fmt: skip
        due_ms = now_ms
        quiet = target.quiet_hours
        if quiet is not None and not notice.critical and quiet.contains(now_ms, self._zone):
            due_ms = quiet.end_after(now_ms, self._zone)
        notification = Notification(key, entry.alert_id, target.channels, 0, 0, due_ms,
                                    "pending", notice.to_json().decode())  # fmt: skip
        if self.log.add(notification, now_ms) and due_ms > now_ms:
            self._record_notice(notice, "-", AttemptResult.QUIET_HOURS,
                                f"held until {due_ms}", None)  # fmt: skip

    # --- delivery --------------------------------------------------------------------------

    async def _deliver(self, notification: Notification, notice: Notice) -> None:
        async with self._sends:
            with self.log.transaction():
                channel = self._ready(notification, notice)
            if channel is None:
                return
            started_s = time.perf_counter()
            try:
                await channel.deliver(notice)
            except NotifyError as exc:
                latency_ms = (time.perf_counter() - started_s) * 1000
                with self.log.transaction():
                    self._failed(notification, notice, channel, exc, latency_ms)
                return
            latency_ms = (time.perf_counter() - started_s) * 1000
            with self.log.transaction():
                self.log.update(notification.key, state="sent",
                                channel_index=notification.channel_index,
                                tries=notification.tries + 1, due_ms=self._clock.now_ms())  # fmt: skip
                self._record_notice(notice, channel.name, AttemptResult.SENT, "", latency_ms)

    def _ready(self, notification: Notification, notice: Notice) -> Channel | None:
        """The channel to try now, or None when the notification goes another way."""
        if self._withdrawn(notification, notice):
            return None
        index = notification.channel_index
        now_ms = self._clock.now_ms()
        if index >= len(notification.channels):
            self._undelivered(notification, notice)
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
        wait_s = channel.limiter.wait_s(notice.phone, now_ms / 1000)
        if wait_s > 0:
            self._over_limit(notification, notice, channel, wait_s, "over the channel's limit")
            return None
        channel.limiter.note(notice.phone, now_ms / 1000)
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
            if channel.blocked_s:
                channel.limiter.block(now_ms / 1000 + channel.blocked_s)
            self._over_limit(notification, notice, channel, exc.retry_after_s or 60.0, str(exc))
            return
        delivery = self.policy.delivery
        if exc.retryable and tries + 1 < delivery.max_tries:
            # Jittered, so that many notifications failing together do not retry together,
            # and never at once, so that a retry is not another pass of the same round.
            ceiling_s = min(delivery.backoff_max_s, delivery.backoff_initial_s * 2**tries)
            due_ms = now_ms + round(self._random.uniform(ceiling_s / 2, ceiling_s) * 1000)
            self.log.update(notification.key, state="pending",
                            channel_index=notification.channel_index, tries=tries + 1,
                            due_ms=due_ms)  # fmt: skip
            self._record_notice(notice, channel.name, AttemptResult.RETRY, str(exc), latency_ms)
            return
        self._record_notice(notice, channel.name, AttemptResult.FAILED, str(exc), latency_ms)
        self._next_channel(notification, notice, now_ms)

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
        last = notification.channel_index + 1 >= len(notification.channels)
        if notice.critical and not last:
            # A critical alert is never held behind a limit: the next channel takes it.
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
        """A notice of an alert that is no longer firing is not sent, unless it is critical:
        held for quiet hours or a limit, it would wake a worker at 07:00 for a lid closed
        at 23:10, and no all-clear would follow. Critical ones go out whatever happened
        since: a fire alarm that cleared was still a fire alarm."""
        if notice.kind != "firing" or notice.critical:
            return False
        try:
            state = self.book.get(notice.alert_id).state
        except AlertError:
            return False
        if state is AlertState.FIRING:
            return False
        self.log.update(notification.key, state="withdrawn",
                        channel_index=notification.channel_index, tries=notification.tries,
                        due_ms=notification.due_ms)  # fmt: skip
        self._record_notice(notice, "-", AttemptResult.WITHDRAWN,
                            f"the alert was {state} before this could go out", None)  # fmt: skip
        return True

    def _next_channel(self, notification: Notification, notice: Notice, now_ms: int) -> None:
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
        self.log.update(notification.key, state="undelivered",
                        channel_index=notification.channel_index, tries=notification.tries,
                        due_ms=notification.due_ms)  # fmt: skip
        self._record_notice(notice, "-", AttemptResult.UNDELIVERED,
                            f"every channel failed: {', '.join(notification.channels)}", None)  # fmt: skip
        log.error("could not notify %s of alert %s by any of its channels", notice.receiver,
                  notice.alert_id)  # fmt: skip

    async def _send_digests(self) -> None:
        """Notifications held over a channel's limit go out as one message per channel
        and receiver as soon as the limit allows."""
        groups: dict[tuple[str, str], list[tuple[Notification, Notice]]] = {}
        for notification in self.log.waiting_for_digest():
            name = notification.channels[notification.channel_index]
            notice = Notice.from_json(notification.notice)
            channel = self.channels.get(name)
            if channel is None:
                self._channel_gone(notification, notice, self._clock.now_ms())
                continue
            if self._withdrawn(notification, notice):
                continue
            group = "" if not channel.needs_phone else notice.receiver
            groups.setdefault((name, group), []).append((notification, notice))
        for (name, _), members in groups.items():
            # A reload while an earlier digest was sent may have taken it away: the next
            # round moves its notifications on.
            channel = self.channels.get(name)
            if channel is None:
                continue
            first = members[0][1]
            now_ms = self._clock.now_ms()
            if channel.limiter.wait_s(first.phone, now_ms / 1000) > 0:
                continue
            digest = _digest(first, [notice for _, notice in members])
            channel.limiter.note(first.phone, now_ms / 1000)
            try:
                await channel.deliver(digest)
            except NotifyError as exc:
                if exc.rate_limited and channel.blocked_s:
                    channel.limiter.block(now_ms / 1000 + channel.blocked_s)
                if not exc.rate_limited:
                    for notification, notice in members:
                        self._record_notice(notice, name, AttemptResult.FAILED, str(exc), None)
                        self._next_channel(notification, notice, now_ms)
                continue
            for notification, notice in members:
                self.log.update(notification.key, state="sent",
                                channel_index=notification.channel_index,
                                tries=notification.tries + 1, due_ms=now_ms)  # fmt: skip
                self._record_notice(notice, name, AttemptResult.SENT, f"{IN_DIGEST}{digest.key}",
                                    None)  # fmt: skip

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


def _digest(first: Notice, notices: list[Notice]) -> Notice:
    keys = sorted(n.key for n in notices)
    digest_id = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    # A group robot's digest may be for several receivers (the grid workers of several
    # communities in one district group): each line says whose it is, and each is
    # @-mentioned.
    several = len({n.receiver for n in notices}) > 1
    # Each alert with its own link, to take it from the message as from a single notice.
    lines = tuple(
        f"- {n.title} · {n.place} · {n.device_id} · {n.time_text}"
        + (f" · {n.receiver_name}" if several else "")
        + (f" {n.link}" if n.link else "")
        for n in notices
    )
    return replace(
        first,
        key=f"digest/{digest_id}",
        kind="digest",
        title=f"{len(notices)} 条告警",
        link=None,
        map_url=None,
        lines=lines,
        mentions=tuple(n.phone for n in notices[1:] if n.phone),
    )


def _chain_of(key: str, notice: Notice) -> str:
    """The escalation chain of a firing notification's key,
    `{alert_id}/{chain}.{step}/{receiver}/firing`."""
    step = key.removeprefix(f"{notice.alert_id}/").removesuffix(f"/{notice.receiver}/firing")
    return step.rpartition(".")[0]
