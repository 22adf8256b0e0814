"""Faults of the gateway's own that keep alarms from people, told to people directly.

An alarm reaches a person through the broker connection, a commit of the outbox and a
round of notifications, whose log lies on the outbox's disk. When one of them has
failed for `gateway_faults.after_s`, its receivers are told by their own channels, whether
the disk takes writes or not: a dead or read-only disk, which holds every alarm back
unacknowledged in the broker, is heard of as well as a broker that went away. They are
told again every `repeat_s` while it lasts, and as soon as a problem they were not told of
has lasted `after_s` (the gateway no longer starting, say); and once more when it has been
over for `after_s`. One put on duty for them (by a reload) while it lasts is told of it at
the next look, once, and hears its end as the others do. These intervals go by the
monotonic clock: the box often boots with a wrong wall clock that NTP later sets forward
or back, which must neither hold a notice back nor make a fault of a moment. The wall
clock is only for what people read, and for keys.

What was told, and what is owed, is kept in a small file of its own, written off the
event loop whenever it changes, before the notices go and once they went: a restart
during a fault, or a crash just after it was told, goes on with the same fault,
its end is told to those who heard of it, and a notice owed is still sent. On a disk that
takes no writes it is kept in memory, and the telling goes on. A restart has no monotonic
time to go on from: the file keeps wall times, and a start counts how long ago each was;
one the clock is now behind (NTP set it back) counts as now, so that nothing is due later
than its own interval from the start.

The file also says whether the gateway is running, and a stop that was asked for says it
is not: a start that finds it running follows a crash. A gateway that keeps crashing
(out of memory on a backlog, say) is never down for `after_s` in any one run, and its
alarms come late or not at all; RESTARTS_TO_TELL such starts within RESTART_WINDOW_S are a
fault of their own, which began at the first of them. So are starts refused in a row by
a broken file (`refused`), from the first of them: no alarm reaches anyone meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from gateway.clock import Clock, seconds_since
from gateway.errors import NotifyError
from gateway.notify.channel import Channel
from gateway.notify.notice import (
    CLEARED_KINDS,
    TEMPLATE_VALUE_MAX_CHARS,
    Notice,
    local_time_text,
)
from gateway.notify.policy import NotifyPolicy, Receiver
from gateway.statefile import write_durably
from gateway.stats import Stats

log = logging.getLogger(__name__)

# What keeps alarms from people, by name, each with what went wrong.
Problems = Callable[[], Mapping[str, str]]

PROBLEMS_ZH = {
    "broker": "与消息服务器的连接中断，收不到设备告警",
    "subscriptions": "消息服务器拒绝了订阅，部分设备的消息收不到",
    "outbox": "数据无法保存，告警积压在消息服务器",
    "notifications": "告警通知无法处理",
    "restarts": "网关反复意外退出并重启，告警处理可能中断",
    "start": "网关无法启动，收不到设备告警，也发不出通知",
}
FAULT_TITLE = "告警可能无法送达"
CLEARED_TITLE = "故障已排除，积压的告警正在处理"
# How often the problems are looked at.
TICK_S = 1.0
# A receiver none of whose channels took the news is tried again after this.
RETRY_S = 30.0
# An error's text in a message: SMS and robots are no place for a traceback.
DETAIL_MAX_CHARS = 120
# The communities a notice names at most: a district's gateway may serve a hundred and
# more, whose names would take the notice past a group robot's limit (WeCom's 2,048
# bytes); the others are counted.
PLACE_COMMUNITIES = 3
# Starts after a crash, within a window, that make a fault.
RESTARTS_TO_TELL = 2
RESTART_WINDOW_S = 600.0
# How long a stop waits to say in the file that it was asked for.
STOP_WRITE_S = 2.0
# How long a look waits for what it keeps to be written, before its notices go and once
# they went: a crash just after finds them in the file. A disk that hangs holds the
# telling no longer, and once only.
KEEP_WAIT_S = 2.0


class Reach(Protocol):
    """The policy and channels in use (the notifier's, as reloaded)."""

    @property
    def policy(self) -> NotifyPolicy: ...

    @property
    def channels(self) -> Mapping[str, Channel]: ...


@dataclass(frozen=True, slots=True)
class _Pending:
    receiver: Receiver
    notice: Notice
    # When it is due, on the monotonic clock; and on the wall clock, for the file.
    due_s: float
    due_ms: int


class _Owed(BaseModel):
    notice: Notice
    due_ms: int


class _Kept(BaseModel):
    """What the file keeps: the fault told of, and the notices owed. Its times are wall
    times: nothing else outlasts a restart."""

    since_ms: int | None = None
    told: tuple[str, ...] = ()
    told_ms: int = 0
    repeat: int = 0
    owed: tuple[_Owed, ...] = ()
    running: bool = False
    # The problems the fault was told with, one time or another.
    told_problems: tuple[str, ...] = ()
    # Starts that followed a crash, within RESTART_WINDOW_S.
    crash_restarts_ms: tuple[int, ...] = ()
    # The first of the starts refused in a row, up to the last start.
    refused_since_ms: int | None = None


def fault_state_path(outbox_path: Path) -> Path:
    """Beside the outbox: var/outbox.sqlite3 keeps it in var/outbox.faults.json."""
    return outbox_path.with_name(f"{outbox_path.stem}.faults.json")


def fault_place(communities: Sequence[str], instance: str) -> str:
    """Where the gateway is, in its notices: its first communities by name, how many it
    serves if there are more ("hgy lgy xyz 等150个社区"), and its own name. An SMS or a
    call takes TEMPLATE_VALUE_MAX_CHARS of it and cuts the rest, and communities have
    long names ("金水区花园路街道丰产路社区"): so only as many are named as leave the
    gateway's name whole, the others counted; whoever reads it must know which gateway
    failed."""
    count = len(communities)
    for named in range(min(count, PLACE_COMMUNITIES), -1, -1):
        counted = [] if named == count else [f"等{count}个社区" if named else f"{count}个社区"]
        place = " ".join([*communities[:named], *counted, instance])
        if len(place) <= TEMPLATE_VALUE_MAX_CHARS:
            return place
    # A name longer than a template takes keeps its beginning.
    return instance


class FaultWatch:
    def __init__(
        self,
        problems: Problems,
        reach: Reach,
        *,
        instance: str,
        communities: Sequence[str],
        clock: Clock,
        stats: Stats,
        zone: ZoneInfo,
        path: Path | None = None,
    ) -> None:
        self._problems = problems
        self._reach = reach
        self._instance = instance
        # Where the gateway is, in its notices: its communities (a reload may add one).
        self.communities = tuple(communities)
        self._clock = clock
        self._stats = stats
        self._zone = zone
        # When each problem there is was first seen, on the monotonic clock.
        self._first_seen_s: dict[str, float] = {}
        # The fault told of: when its first problem was seen (the wall time people read),
        # and when it was last told (monotonic; and the wall time, for the file).
        self.since_ms: int | None = None
        self._told_s = 0.0
        self._told_ms = 0
        self._repeat = 0
        self._clear_since_s: float | None = None
        # Receivers who heard of the fault, and so hear that it is over.
        self._told: set[str] = set()
        # The problems it was told with: one more is news (see `check`).
        self._told_problems: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        self._path = path
        self._kept: bytes | None = None
        self._keeping: asyncio.Task[None] | None = None
        self._keeping_fails = False
        # Whether a look waited KEEP_WAIT_S for the write under way in vain.
        self._keeping_held = False
        self._running = True
        # Starts after a crash: the wall time people read, and the monotonic time the
        # window goes by.
        self._crash_restarts: list[tuple[int, float]] = []
        # Why this start was refused (see `refused`).
        self._refused: str | None = None
        self._refused_since_ms: int | None = None
        if path is not None:
            self._restore(path)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                # Never the reason an alarm is not heard of: the next tick looks again.
                log.exception("looking at the gateway's faults failed")
            await self._clock.sleep(TICK_S)

    async def check(self) -> None:
        """Note the problems there are now; tell of a fault that began, goes on or ended;
        deliver what is due."""
        now_ms = self._clock.now_ms()
        now_s = self._clock.monotonic_s()
        problems = dict(self._problems())
        if self._refused is not None:
            problems["start"] = self._refused
        else:
            # This start runs: a refusal before it is over.
            self._refused_since_ms = None
        restarts = self._recent_crash_restarts(now_s)
        if len(restarts) >= RESTARTS_TO_TELL:
            problems["restarts"] = (
                f"started after a crash {len(restarts)} times since "
                f"{local_time_text(restarts[0][0], self._zone)}, the last at "
                f"{local_time_text(restarts[-1][0], self._zone)}"
            )
        self._first_seen_s = {name: self._first_seen_s.get(name, now_s) for name in problems}
        settings = self._reach.policy.gateway_faults
        after_s = settings.after_s
        since_ms = self.since_ms
        if since_ms is None:
            if any(now_s - seen >= after_s for seen in self._first_seen_s.values()):
                # Since when by the wall clock as it is now: one NTP set meanwhile is right.
                lasted_ms = round((now_s - min(self._first_seen_s.values())) * 1000)
                self.since_ms = now_ms - lasted_ms
                self._repeat = 0
                self._tell("fault", problems, self.since_ms, now_ms, now_s)
        elif problems:
            self._clear_since_s = None
            repeat_s = settings.repeat_s
            # One more problem that lasts is told at once, not at the repeat: those who
            # heard the broker is down must hear that the gateway no longer starts at
            # all. Each once a fault: one that comes and goes is not told each time.
            news = any(
                name not in self._told_problems and now_s - self._first_seen_s[name] >= after_s
                for name in problems
            )
            if news or (repeat_s is not None and now_s - self._told_s >= repeat_s):
                self._repeat += 1
                self._tell("fault", problems, since_ms, now_ms, now_s)
            elif newcomers := self._newcomers():
                # Put on duty for the gateway's faults (by a reload) since it was told:
                # told now, not at the repeat an hour on, or never with none. The others'
                # repeat keeps its time.
                log.error("the gateway's alarms may not get through since %s: %s; telling "
                          "%s, put on duty for it since", local_time_text(since_ms, self._zone),
                          _details(problems), ", ".join(r.name for r in newcomers))  # fmt: skip
                self._owe("fault", newcomers, problems, since_ms, now_ms, now_s)
        else:
            if self._clear_since_s is None:
                self._clear_since_s = now_s
            if now_s - self._clear_since_s >= after_s:
                self._tell("fault_cleared", problems, since_ms, now_ms, now_s)
                self.since_ms = None
                self._clear_since_s = None
        due = [p for p in self._pending.values() if p.due_s <= now_s]
        if due:
            # A crash during the sends leaves the fault, and the notices owed, in the file.
            await self._keep_now()
            await asyncio.gather(*(self._deliver(p) for p in due))
        await self._keep_now()

    async def settle(self) -> None:
        """Until what is being written to the file is written."""
        if self._keeping is not None:
            await self._keeping

    async def stopped(self) -> None:
        """Says in the file that the gateway stopped as asked: the next start follows no
        crash. A disk that hangs holds the stop STOP_WRITE_S at most."""
        self._running = False
        path = self._path
        if path is None:
            return

        async def write() -> None:
            await self.settle()
            # Once more, should the write under way have failed.
            self._keep()
            await self.settle()

        try:
            await asyncio.wait_for(write(), STOP_WRITE_S)
        except TimeoutError:
            log.warning("%s did not take the stop in time: the next start takes it for a "
                        "crash", path)  # fmt: skip

    async def refused(self, problem: str) -> None:
        """At a start refused (by its config, rules or registry), which never runs: a
        fault since the first start refused in a row, told as any other once it has
        lasted `after_s` (a service manager starts the gateway again meanwhile), and its
        end by the first start that runs."""
        now_ms = self._clock.now_ms()
        self._running = False
        self._refused = problem
        if self._refused_since_ms is None:
            self._refused_since_ms = now_ms
        # Each refused start runs for a moment: how long they have been refused can only
        # be told by the wall time kept in the file.
        self._first_seen_s["start"] = self._clock.monotonic_s() - seconds_since(
            self._refused_since_ms, now_ms
        )
        await self.check()
        await self.settle()

    def _recent_crash_restarts(self, now_s: float) -> list[tuple[int, float]]:
        self._crash_restarts = [
            (at_ms, at_s) for at_ms, at_s in self._crash_restarts if now_s - at_s < RESTART_WINDOW_S
        ]
        return self._crash_restarts

    def _state(self) -> bytes:
        owed = tuple(_Owed(notice=p.notice, due_ms=p.due_ms) for p in self._pending.values())
        kept = _Kept(
            since_ms=self.since_ms,
            told=tuple(sorted(self._told)),
            told_ms=self._told_ms,
            repeat=self._repeat,
            owed=owed,
            running=self._running,
            told_problems=tuple(sorted(self._told_problems)),
            crash_restarts_ms=tuple(at_ms for at_ms, _ in self._crash_restarts),
            refused_since_ms=self._refused_since_ms,
        )
        return kept.model_dump_json().encode()

    def _keep(self) -> None:
        """Writes the state if it changed, one write at a time, each of the state as it is
        by then: a disk that hangs holds one thread, never the watch."""
        if self._path is None or (self._keeping is not None and not self._keeping.done()):
            return
        if self._state() != self._kept:
            self._keeping = asyncio.create_task(self._write(self._path))

    async def _keep_now(self) -> None:
        """`_keep`, and wait for it KEEP_WAIT_S at most; not again for a write that was
        waited for in vain."""
        self._keep()
        keeping = self._keeping
        if keeping is None or keeping.done() or self._keeping_held:
            return
        try:
            await asyncio.wait_for(asyncio.shield(keeping), KEEP_WAIT_S)
        except TimeoutError:
            self._keeping_held = True
            log.warning("%s takes more than %.0f s to write; told on without waiting",
                        self._path, KEEP_WAIT_S)  # fmt: skip

    async def _write(self, path: Path) -> None:
        while (state := self._state()) != self._kept:
            try:
                await asyncio.to_thread(write_durably, path, state)
            except OSError as exc:
                # Tried again at the next look; said once.
                if not self._keeping_fails:
                    log.warning("cannot keep what was told of the gateway's faults in %s "
                                "(%s); kept in memory until it can", path, exc)  # fmt: skip
                self._keeping_fails = True
                return
            finally:
                self._keeping_held = False
            self._kept = state
            self._keeping_fails = False

    def _restore(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read what was told of the gateway's faults from %s (%s); "
                        "a fault under way is told as new", path, exc)  # fmt: skip
            return
        try:
            kept = _Kept.model_validate_json(data)
        except ValidationError as exc:
            log.warning("%s is damaged, and is begun anew; a fault under way is told as new: "
                        "%s", path, exc)  # fmt: skip
            return
        self._kept = data
        now_ms = self._clock.now_ms()
        now_s = self._clock.monotonic_s()
        # The wall times kept are counted from now. One the clock is now behind (NTP set
        # it back) counts as now, and is kept as now: a wall time ahead would otherwise
        # hold the window, the repeat or a notice owed for as long as the clock was off.
        self._crash_restarts = []
        for at_ms in kept.crash_restarts_ms:
            ago_s = seconds_since(at_ms, now_ms)
            if ago_s < RESTART_WINDOW_S:
                self._crash_restarts.append((min(at_ms, now_ms), now_s - ago_s))
        if kept.refused_since_ms is not None:
            self._refused_since_ms = min(kept.refused_since_ms, now_ms)
        if kept.running:
            log.warning("the gateway did not stop as asked at its last run: it crashed, was "
                        "killed or lost power")  # fmt: skip
            self._crash_restarts.append((now_ms, now_s))
        restarts = self._recent_crash_restarts(now_s)
        if len(restarts) >= RESTARTS_TO_TELL:
            # The fault began with the first crash, however short each run is.
            self._first_seen_s["restarts"] = restarts[0][1]
        self.since_ms = kept.since_ms
        self._told = set(kept.told)
        self._told_problems = set(kept.told_problems)
        self._told_ms = min(kept.told_ms, now_ms)
        self._told_s = now_s - seconds_since(kept.told_ms, now_ms)
        self._repeat = kept.repeat
        policy = self._reach.policy
        for owed in kept.owed:
            # A fault is owed to those who hear of the gateway's faults now, its end to
            # whoever heard of it (see `_tell`); one the policy no longer names is owed
            # nothing.
            names = (
                policy.receivers if owed.notice.kind in CLEARED_KINDS else policy.fault_receivers()
            )
            receiver = next((r for r in names if r.name == owed.notice.receiver), None)
            if receiver is not None:
                # Due no later than a retry from now.
                wait_s = min(max(0.0, (owed.due_ms - now_ms) / 1000), RETRY_S)
                self._pending[receiver.name] = _Pending(
                    receiver, owed.notice, now_s + wait_s, now_ms + round(wait_s * 1000)
                )
        if self.since_ms is not None:
            log.warning("the gateway's fault since %s was under way at the last stop",
                        local_time_text(self.since_ms, self._zone))  # fmt: skip

    def _tell(
        self, kind: str, problems: Mapping[str, str], since_ms: int, now_ms: int, now_s: float
    ) -> None:
        self._told_ms = now_ms
        self._told_s = now_s
        if kind == "fault":
            receivers = self._reach.policy.fault_receivers()
            self._told_problems.update(problems)
            log.error("the gateway's alarms may not get through since %s: %s; telling %s",
                      local_time_text(since_ms, self._zone), _details(problems),
                      ", ".join(r.name for r in receivers) or "nobody")  # fmt: skip
        else:
            # Only those who heard of it; one still waiting for the news hears neither.
            # Whether or not a reload took them off `gateway_faults.to` meanwhile: told
            # that alarms may not get through, they wait to hear that they do again. One
            # the policy no longer names has no channel to hear it by.
            receivers = tuple(r for r in self._reach.policy.receivers if r.name in self._told)
            for name in [n for n, p in self._pending.items() if p.notice.kind == "fault"]:
                del self._pending[name]
            log.warning("the gateway's fault since %s is over",
                        local_time_text(since_ms, self._zone))  # fmt: skip
            self._told.clear()
            self._told_problems.clear()
        self._owe(kind, receivers, problems, since_ms, now_ms, now_s)

    def _owe(
        self,
        kind: str,
        receivers: Sequence[Receiver],
        problems: Mapping[str, str],
        since_ms: int,
        now_ms: int,
        now_s: float,
    ) -> None:
        for receiver in receivers:
            notice = self._notice(kind, problems, receiver, since_ms)
            self._pending[receiver.name] = _Pending(receiver, notice, now_s, now_ms)

    def _newcomers(self) -> tuple[Receiver, ...]:
        """Those who hear of the gateway's faults, neither told of the one under way nor
        owed news of it: one whose channels failed is owed it, and tried again."""
        return tuple(
            r
            for r in self._reach.policy.fault_receivers()
            if r.name not in self._told
            and not (r.name in self._pending and self._pending[r.name].notice.kind == "fault")
        )

    def _notice(
        self, kind: str, problems: Mapping[str, str], receiver: Receiver, since_ms: int
    ) -> Notice:
        alert_id = f"gateway-fault/{self._instance}/{since_ms}"
        return Notice(
            key=f"{alert_id}/{self._repeat}/{receiver.name}/{kind}",
            kind=kind,
            alert_id=alert_id,
            rule="gateway_fault",
            title=FAULT_TITLE if kind == "fault" else CLEARED_TITLE,
            severity="critical",
            life_safety=False,
            community="",
            device_type="gateway",
            device_id=self._instance,
            port=None,
            place=fault_place(self.communities, self._instance),
            started_ms=since_ms,
            time_text=local_time_text(since_ms, self._zone),
            receiver=receiver.name,
            receiver_name=receiver.display_name or receiver.name,
            phone=receiver.phone,
            lines=tuple(
                f"{PROBLEMS_ZH.get(name, name)}: {detail[:DETAIL_MAX_CHARS]}"
                for name, detail in sorted(problems.items())
            ),
        )

    async def _deliver(self, pending: _Pending) -> None:
        """By the receiver's channels in order, until one takes it; one that cannot
        confirm the receiver has it (an app that may be offline) and the next one too."""
        notice = pending.notice
        taken = False
        carried = False
        for name in pending.receiver.channels:
            channel = self._reach.channels.get(name)
            if channel is None or (channel.needs_phone and not notice.phone):
                continue
            if notice.kind in CLEARED_KINDS and not channel.tells_clearing:
                continue
            carried = True
            now_s = self._clock.monotonic_s()
            if channel.limiter.wait_s(notice.phone, now_s) > 0:
                continue
            channel.limiter.note(notice.phone, now_s)
            try:
                await channel.deliver(_fitted(notice, channel))
            except NotifyError as exc:
                self._stats.notifications[(name, "failed")] += 1
                log.warning("telling %s of the gateway's fault by %s failed: %s",
                            notice.receiver, name, exc)  # fmt: skip
                continue
            self._stats.notifications[(name, "sent")] += 1
            log.info("told %s by %s: %s", notice.receiver, name, notice.headline())
            if not taken:
                taken = True
                if self._pending.get(notice.receiver) is pending:
                    del self._pending[notice.receiver]
                if notice.kind == "fault":
                    self._told.add(notice.receiver)
            if channel.confirms:
                return
        if taken:
            return
        if notice.kind in CLEARED_KINDS and not carried:
            # None of their channels can carry it: a call (their only one, say) reads out
            # an alarm and sends them out, at any hour, and a grid worker woken at three
            # for news that asks nothing of them would take it for the fault itself. So,
            # as the notifier does with an alert's all-clear, it is not owed to them:
            # kept owed, it would be tried every RETRY_S for ever.
            log.warning("%s is not told that the gateway's fault is over: none of their "
                        "channels carries news that it is over (a call reads out an alarm)",
                        notice.receiver)  # fmt: skip
            if self._pending.get(notice.receiver) is pending:
                del self._pending[notice.receiver]
            return
        log.error("could not tell %s of the gateway's fault by any channel; again in %.0f s",
                  notice.receiver, RETRY_S)  # fmt: skip
        if self._pending.get(notice.receiver) is pending:
            retry_s = self._clock.monotonic_s() + RETRY_S
            retry_ms = self._clock.now_ms() + round(RETRY_S * 1000)
            self._pending[notice.receiver] = _Pending(pending.receiver, notice, retry_s, retry_ms)


def _fitted(notice: Notice, channel: Channel) -> Notice:
    """The notice as the channel's provider takes it in one message: with the errors'
    words too long for it (paths and topics in Chinese, every problem at once), each
    problem by its name alone, the words being in the log."""
    max_bytes = channel.max_text_bytes
    if max_bytes is None or channel.size_bytes(notice) <= max_bytes:
        return notice
    return replace(notice, lines=tuple(line.split(": ", 1)[0] for line in notice.lines))


def _details(problems: Mapping[str, str]) -> str:
    return "; ".join(f"{name}: {detail}" for name, detail in sorted(problems.items()))
