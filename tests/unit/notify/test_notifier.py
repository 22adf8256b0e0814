"""The notification stage with an injected clock: routing, escalation, fallback, limits,
digests, quiet hours, silences and idempotency across a restart."""

import asyncio
import contextlib
import json
import logging
import sqlite3
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import httpx
import pytest

from gateway import PROJECT_ROOT
from gateway.clock import ManualClock
from gateway.config import load_config
from gateway.decode.record import DeviceRef, Event, FieldValue, Reading, TimeSource
from gateway.errors import DamagedStoreError, NotifyError, StoreError
from gateway.notify.channel import Limit
from gateway.notify.cloud import AliyunSms, TencentSms
from gateway.notify.desk import AlertDesk
from gateway.notify.link import LinkSigner
from gateway.notify.log import AttemptResult, NotificationLog, PlannedStep
from gateway.notify.notice import Notice
from gateway.notify.notifier import FAILED_ROUND_PAUSE_S, Notifier, make_channels
from gateway.notify.policy import (
    AliyunSmsChannel,
    NotifyPolicy,
    Route,
    Step,
    TencentSmsChannel,
    WecomChannel,
)
from gateway.notify.robots import WecomRobot
from gateway.notify.router import Router
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.book import AlertBook, AlertEntry
from gateway.rules.engine import RuleEngine
from gateway.rules.silence import SilenceBook
from gateway.rules.stage import AlertStage
from gateway.stats import Stats
from gateway.store.database import damage_noted
from gateway.store.outbox import Outbox
from tests.catalogue import shipped_rules
from tests.unit.disk import damage
from tests.unit.notify.notices import FakeChannel, HangingChannel

# 2026-01-01 08:00 in Shanghai.
T0 = 1_767_225_600_000
ZONE = ZoneInfo("Asia/Shanghai")
WRIST = DeviceRef("hgy", "bracelet", "br-1")
SMOKE = DeviceRef("hgy", "smoke_detector", "sd-1")
REGISTRY = Registry(
    [
        RegisteredDevice(
            device_id="br-1", device_type="bracelet", community="hgy", area="east",
            building="3", lat=34.75, lon=113.62, wearer_name="张三明",
            emergency_contacts="张小明:13900000009",
        ),
        RegisteredDevice(device_id="sd-1", device_type="smoke_detector", community="hgy",
                         area="east", building="3"),
    ]
)  # fmt: skip
POLICY = NotifyPolicy.model_validate(
    {
        "channels": {
            "wecom": {"type": "console"},
            "sms": {"type": "console"},
            "voice": {"type": "console"},
            "office-robot": {"type": "console"},
        },
        "receivers": [
            {"name": "wang-fang", "display_name": "王芳", "phone": "13800000001",
             "channels": ["wecom", "sms"], "quiet_hours": "22:00-07:00"},
            {"name": "li-na", "phone": "13800000002", "channels": ["wecom", "sms"]},
            {"name": "office", "channels": ["office-robot"]},
            {"name": "property", "channels": ["office-robot"]},
            {"name": "secretary", "phone": "13800000003", "channels": ["sms"]},
        ],
        "rosters": [
            {"cell": {"community": "hgy", "area": "east"},
             "shifts": [{"receiver": "wang-fang", "hours": "08:00-20:00"},
                        {"receiver": "li-na", "hours": "20:00-08:00"}]},
        ],
        "routes": [
            {"match": {"severities": ["critical"]}, "escalation": "critical"},
            {"escalation": "normal"},
        ],
        "escalations": {
            "critical": [
                {"after_s": 0, "to": ["on_duty", "emergency_contacts"]},
                {"after_s": 180, "to": ["office", "property"]},
                {"after_s": 180, "to": ["on_duty"], "channels": ["voice"]},
                {"after_s": 600, "to": ["secretary"]},
            ],
            "normal": [{"after_s": 0, "to": ["on_duty"]}],
        },
        "emergency_contact_channels": ["sms"],
        "delivery": {"max_tries": 3, "backoff_initial_s": 2, "backoff_max_s": 10},
    }
)  # fmt: skip


class Rig:
    """A gateway's rules, alert book, desk and notifier on one outbox file, as app.py
    wires them; `restart()` makes them again from the same files."""

    def __init__(self, path: Path, clock: ManualClock | None = None,
                 limits: tuple[Limit, ...] = (), log_path: Path | None = None,
                 policy: NotifyPolicy = POLICY, registry: Registry = REGISTRY,
                 channels: dict[str, FakeChannel] | None = None) -> None:  # fmt: skip
        self.path = path
        self.log_path = log_path or path
        self.clock = clock or ManualClock(T0)
        self.limits = limits
        self.policy = policy
        self.registry = registry
        self.given_channels = channels
        self.start()

    def start(self) -> None:
        self.outbox = Outbox(self.path)
        self.book = AlertBook(self.path)
        self.stats = Stats()
        self.silences = SilenceBook(self.path, self.registry)
        rules = RuleEngine(shipped_rules(), self.registry)
        self.stage = AlertStage(rules, self.book, self.silences, self.clock)
        self.channels = self.given_channels or {
            "wecom": FakeChannel("wecom", limits=self.limits),
            "sms": FakeChannel("sms", needs_phone=True, links=False),
            "voice": FakeChannel("voice", needs_phone=True, digests=False, links=False),
            "office-robot": FakeChannel("office-robot"),
        }
        self.log = NotificationLog(self.log_path)
        self.notifier = Notifier(
            self.policy, dict(self.channels), Router(self.policy, self.registry, ZONE),
            self.book, self.log, LinkSigner("secret", "https://gw.example.cn", 3600),
            self.commit, self.clock, self.stats, ZONE, silences=self.silences,
            lasts=rules.lasts,
        )  # fmt: skip
        self.desk = AlertDesk(self.book, self.registry, self.commit, self.clock)
        self.desk.listeners.append(self.notifier.on_desk_step)

    def voice_limited_per_number(self) -> FakeChannel:
        """The voice channel, taking a call a minute per number as the providers do."""
        voice = FakeChannel("voice", needs_phone=True, digests=False, links=False,
                            limits=(Limit(1, 60.0, per_number=True),))  # fmt: skip
        self.channels["voice"] = self.notifier.channels["voice"] = voice
        return voice

    def restart(self) -> None:
        self.outbox.close()
        self.book.close()
        self.silences.close()
        self.log.close()
        self.start()

    async def commit(self, lines, write) -> None:  # type: ignore[no-untyped-def]
        self.outbox.commit(lines, [], None, write)

    def feed(self, *records: Reading | Event, announce: bool = True) -> None:
        decision = self.stage.evaluate(list(records))
        self.outbox.commit(decision.lines, [], None, decision.write)
        if announce:
            self.notifier.on_alerts(decision.changes)

    async def after(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.notifier.process()

    def sent(self) -> list[tuple[str, str, str]]:
        """(channel, receiver, kind) of everything sent, in order per channel."""
        return [(name, n.receiver, n.kind) for name, c in self.channels.items() for n in c.sent]  # type: ignore[attr-defined]

    def lines(self, measurement: str) -> list[str]:
        return [line for line in self.outbox.peek(1000).lines if line.startswith(measurement + ",")]


def fall(at_s: float = 0) -> Event:
    return Event(WRIST, T0 + int(at_s * 1000), TimeSource.DEVICE, "fall", {"confidence": 0.9})


def reading(device: DeviceRef, at_s: float, **fields: FieldValue) -> Reading:
    return Reading(device, T0 + int(at_s * 1000), TimeSource.DEVICE, fields)


async def test_a_critical_alert_escalates_step_by_step_until_acknowledged(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    await rig.after(0)
    # 08:00: the day shift of the east area, and the wearer's emergency contact.
    assert rig.sent() == [
        ("wecom", "wang-fang", "firing"),
        ("sms", "contact:+8613900000009", "firing"),
    ]
    notice = rig.channels["wecom"].sent[0]  # type: ignore[attr-defined]
    assert notice.link.startswith("https://gw.example.cn/a/")
    assert notice.place == "hgy east 3"
    assert "position=113.62,34.75" in notice.map_url
    await rig.after(179)
    assert len(rig.sent()) == 2
    await rig.after(1)
    # Not acknowledged in 3 minutes: the office and the property company, and a call.
    assert rig.sent()[2:] == [
        ("voice", "wang-fang", "firing"),
        ("office-robot", "office", "firing"),
        ("office-robot", "property", "firing"),
    ]
    assert rig.stats.escalations == 2
    assert len(rig.lines("escalation")) == 2
    alert_id = notice.alert_id
    await rig.desk.acknowledge(alert_id, "wang-fang")
    await rig.after(600)
    # Acknowledged: the secretary is never called.
    assert len(rig.sent()) == 5
    assert rig.stats.escalations == 2
    results = [(a.receiver, a.channel, a.result) for a in rig.log.attempts(alert_id)]
    assert ("wang-fang", "wecom", AttemptResult.SENT) in results
    assert len(rig.lines("notification")) == 5


async def test_without_acknowledgement_the_chain_runs_to_its_end(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    for step_s in (0, 180, 420):
        await rig.after(step_s)
    assert ("sms", "secretary", "firing") in rig.sent()
    assert len(rig.sent()) == 6
    assert rig.stats.escalations == 3


async def test_a_failing_channel_falls_back_to_the_next(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    wecom = rig.channels["wecom"]
    wecom.errors.append(NotifyError("WeCom refused: 93000 invalid webhook", retryable=False))  # type: ignore[attr-defined]
    rig.feed(fall())
    await rig.after(0)
    await rig.after(0)
    assert ("sms", "wang-fang", "firing") in rig.sent()
    alert_id = rig.channels["sms"].sent[0].alert_id  # type: ignore[attr-defined]
    mine = [(a.channel, a.result) for a in rig.log.attempts(alert_id) if a.receiver == "wang-fang"]
    assert mine == [("wecom", AttemptResult.FAILED), ("sms", AttemptResult.SENT)]


async def test_a_channel_that_breaks_fails_over_and_the_stage_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    # Not a NotifyError: a fault of the channel's own, or a name it cannot carry.
    rig.channels["wecom"].errors.append(ValueError("Invalid topic"))  # type: ignore[attr-defined]
    rig.feed(fall())
    await rig.after(0)
    await rig.after(0)
    assert ("sms", "wang-fang", "firing") in rig.sent()
    alert_id = rig.channels["sms"].sent[0].alert_id  # type: ignore[attr-defined]
    mine = [(a.channel, a.result, a.detail) for a in rig.log.attempts(alert_id)
            if a.receiver == "wang-fang"]  # fmt: skip
    assert mine == [
        ("wecom", AttemptResult.FAILED, "the channel failed: ValueError('Invalid topic')"),
        ("sms", AttemptResult.SENT, ""),
    ]
    assert "channel wecom failed on notification" in caplog.text
    # The next alert goes by WeCom as before.
    rig.feed(reading(SMOKE, 10, alarm=True))
    await rig.after(0)
    assert ("wecom", "wang-fang", "firing") in rig.sent()


async def test_a_retryable_error_is_tried_again_after_a_backoff(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.feed(reading(SMOKE, 0, battery_pct=10))  # low battery: info, not critical
    await rig.after(0)
    assert rig.sent() == []
    await rig.after(10)  # the backoff is at most 2 s for a first retry
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    alert_id = rig.channels["wecom"].sent[0].alert_id  # type: ignore[attr-defined]
    assert [a.result for a in rig.log.attempts(alert_id)] == [
        AttemptResult.RETRY,
        AttemptResult.SENT,
    ]


async def test_over_the_limit_critical_moves_on_and_the_rest_wait_for_one_digest(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3", limits=(Limit(1, 60.0),))
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    # Two more alerts within the minute: held for a digest, not sent one by one.
    rig.feed(Event(SMOKE, T0 + 1000, TimeSource.DEVICE, "tamper", {}))
    rig.feed(reading(WRIST, 2, battery_pct=10))
    await rig.after(2)
    assert len(rig.sent()) == 1
    # A fall now: critical is never held behind the limit; SMS takes it at once.
    rig.feed(fall(3))
    await rig.after(1)
    assert ("sms", "wang-fang", "firing") in rig.sent()
    assert rig.sent()[0] == ("wecom", "wang-fang", "firing")
    await rig.after(60)
    digests = [n for n in rig.channels["wecom"].sent if n.kind == "digest"]  # type: ignore[attr-defined]
    assert len(digests) == 1
    assert digests[0].title == "2 条告警"
    assert len(digests[0].lines) == 2
    # Each alert in it can be taken from the message, by its own link.
    links = [line.rsplit(" ", 1)[1] for line in digests[0].lines]
    assert all(link.startswith("https://gw.example.cn/a/") for link in links)
    assert len(set(links)) == 2
    await rig.after(60)
    assert len([n for n in rig.channels["wecom"].sent if n.kind == "digest"]) == 1  # type: ignore[attr-defined]


DISTRICT = Registry([
    RegisteredDevice(device_id="sd-1", device_type="smoke_detector", community="hgy",
                     area="east", building="3"),
    RegisteredDevice(device_id="br-1", device_type="bracelet", community="lgy",
                     area="north", building="7"),
])  # fmt: skip
LGY_WRIST = DeviceRef("lgy", "bracelet", "br-1")


def district_rig(path: Path, clock: ManualClock | None = None,
                 wang_fang_quiet_hours: str | None = None) -> Rig:  # fmt: skip
    """One district WeCom group robot, taking a message a minute, for the grid workers
    of two communities: wang-fang in hgy, zhao-min in lgy."""
    policy = NotifyPolicy.model_validate({
        "channels": {"district-wecom": {"type": "console"}},
        "receivers": [
            {"name": "wang-fang", "display_name": "王芳", "phone": "13800000001",
             "channels": ["district-wecom"], "quiet_hours": wang_fang_quiet_hours},
            {"name": "zhao-min", "display_name": "赵敏", "phone": "13800000003",
             "channels": ["district-wecom"]},
        ],
        "rosters": [
            {"cell": {"community": "hgy"}, "shifts": [{"receiver": "wang-fang"}]},
            {"cell": {"community": "lgy"}, "shifts": [{"receiver": "zhao-min"}]},
        ],
        "routes": [{"escalation": "grid"}],
        "escalations": {"grid": [{"after_s": 0, "to": ["on_duty"]}]},
    })  # fmt: skip
    robot = FakeChannel("district-wecom", limits=(Limit(1, 60.0),))
    return Rig(path, clock=clock, policy=policy, registry=DISTRICT,
               channels={"district-wecom": robot})  # fmt: skip


async def test_a_district_groups_digest_names_and_mentions_each_community_s_worker(
    tmp_path: Path,
) -> None:
    rig = district_rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    # Within the minute: hgy's tamper for wang-fang, lgy's low bracelet battery for
    # zhao-min, both held for one digest.
    rig.feed(Event(SMOKE, T0 + 1000, TimeSource.DEVICE, "tamper", {}))
    rig.feed(Reading(LGY_WRIST, T0 + 2000, TimeSource.DEVICE, {"battery_pct": 5}))
    await rig.after(2)
    await rig.after(60)
    (digest,) = [n for n in rig.channels["district-wecom"].sent if n.kind == "digest"]  # type: ignore[attr-defined]
    assert sorted(digest.phones()) == ["+8613800000001", "+8613800000003"]
    # Each line says whose it is: the tamper in hgy for 王芳, the battery in lgy for 赵敏.
    owners = {line.split(" · ")[1]: line.split(" · ")[4].split(" ")[0] for line in digest.lines}
    assert owners == {"hgy east 3": "王芳", "lgy north 7": "赵敏"}


async def test_a_critical_alert_over_its_last_channels_limit_goes_out_once_it_allows(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    voice = rig.voice_limited_per_number()
    # A fall, and the wearer presses SOS 5 s later: the third step calls the worker on
    # duty for each, by voice alone.
    rig.feed(fall(0))
    rig.feed(Event(WRIST, T0 + 5000, TimeSource.DEVICE, "sos", {}))
    await rig.after(0)
    await rig.after(180)
    await rig.after(5)
    assert [n.alert_id.split(":")[0] for n in voice.sent] == ["fall"]
    await rig.after(54)
    assert len(voice.sent) == 1
    await rig.after(1)
    assert [(n.alert_id.split(":")[0], n.receiver) for n in voice.sent] == [
        ("fall", "wang-fang"), ("sos", "wang-fang"),
    ]  # fmt: skip
    sos = voice.sent[1].alert_id
    assert [str(a.result) for a in rig.log.attempts(sos) if a.channel == "voice"] == [
        "rate_limited", "sent",
    ]  # fmt: skip


async def test_the_limits_count_what_went_out_before_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3", limits=(Limit(1, 60.0),))
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    rig.restart()
    # As a start does, before its first round.
    rig.notifier.recall_sends()
    rig.feed(Event(SMOKE, T0 + 10_000, TimeSource.DEVICE, "tamper", {}))
    await rig.after(10)
    # The robot took one message in the minute before the restart: held for a digest.
    assert rig.sent() == []
    await rig.after(49)
    assert rig.sent() == []
    await rig.after(1)
    assert rig.sent() == [("wecom", "wang-fang", "digest")]


def wang_fang_on_duty_around_the_clock(rig: Rig) -> None:
    """The east area's day shift all day: her quiet hours then apply."""
    policy = POLICY.model_copy(
        update={"rosters": (POLICY.rosters[0].model_copy(update={"shifts": (
            POLICY.rosters[0].shifts[0].model_copy(update={"hours": "00:00-00:00"}),)}),)}
    )  # fmt: skip
    rig.notifier.policy = policy
    rig.notifier.router = Router(policy, REGISTRY, ZONE)


async def test_quiet_hours_hold_non_critical_notices_but_never_critical_ones(
    tmp_path: Path,
) -> None:
    # 23:00 in Shanghai, inside wang-fang's quiet hours; li-na has the night shift.
    late = ManualClock(T0 + 15 * 3600 * 1000)
    rig = Rig(tmp_path / "outbox.sqlite3", clock=late)
    router = rig.notifier.router
    assert [r.name for r in router.on_duty(("hgy", "east", None, "3"), "hgy", late.now_ms())] == [
        "li-na"
    ]
    # Put wang-fang on duty around the clock, so that her quiet hours apply.
    wang_fang_on_duty_around_the_clock(rig)
    rig.feed(Reading(SMOKE, late.now_ms(), TimeSource.DEVICE, {"battery_pct": 10}))
    rig.feed(Event(WRIST, late.now_ms(), TimeSource.DEVICE, "sos", {}))
    await rig.after(0)
    assert ("wecom", "wang-fang", "firing") in rig.sent()
    assert [n.rule for n in rig.channels["wecom"].sent] == ["sos"]  # type: ignore[attr-defined]
    # 07:00 the next morning, the low battery notice goes out.
    await rig.after(8 * 3600 - 1)
    assert [n.rule for n in rig.channels["wecom"].sent] == ["sos"]  # type: ignore[attr-defined]
    await rig.after(1)
    assert [n.rule for n in rig.channels["wecom"].sent] == ["sos", "smoke_low_battery"]  # type: ignore[attr-defined]


async def test_a_held_notice_of_an_alert_handled_meanwhile_is_not_sent(tmp_path: Path) -> None:
    # 23:00, wang-fang on duty around the clock and in her quiet hours.
    late = ManualClock(T0 + 15 * 3600 * 1000)
    rig = Rig(tmp_path / "outbox.sqlite3", clock=late)
    wang_fang_on_duty_around_the_clock(rig)
    rig.feed(Reading(SMOKE, late.now_ms(), TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(0)
    (entry,) = rig.book.search()
    # The night's property staff change the battery and close the alert at 23:30.
    rig.clock.advance(1800)
    await rig.desk.close(entry.alert_id, "property", "battery replaced")
    # At 07:00 wang-fang is not woken for it, and the log says why.
    await rig.after(8 * 3600)
    assert rig.sent() == []
    assert [(a.receiver, str(a.result)) for a in rig.log.attempts(entry.alert_id)] == [
        ("wang-fang", "quiet_hours"), ("wang-fang", "withdrawn"),
    ]  # fmt: skip
    (withdrawn,) = [a for a in rig.log.attempts(entry.alert_id) if a.result == "withdrawn"]
    assert withdrawn.detail == "the alert was closed before this could go out"


def with_wang_fangs_quiet_hours(rig: Rig, hours: str | None) -> None:
    """A reload that gives wang-fang other quiet hours, or none."""
    policy = rig.notifier.policy
    receivers = tuple(
        r.model_copy(update={"quiet_hours": hours})
        if r.name == "wang-fang" else r
        for r in policy.receivers
    )  # fmt: skip
    policy = policy.model_copy(update={"receivers": receivers})
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))


async def a_low_battery_held_for_the_night(tmp_path: Path) -> Rig:
    """A low battery at 23:00, held for wang-fang's quiet hours (she is on duty around
    the clock) until 07:00."""
    rig = Rig(tmp_path / "outbox.sqlite3", clock=ManualClock(T0 + 15 * 3600 * 1000))
    wang_fang_on_duty_around_the_clock(rig)
    rig.feed(Reading(SMOKE, rig.clock.now_ms(), TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(0)
    return rig


@pytest.mark.parametrize(("hours", "goes_after_s"), [("22:00-06:00", 7 * 3600), (None, 0)])
async def test_a_notice_held_for_quiet_hours_a_reload_shortened_goes_at_their_new_end(
    tmp_path: Path, hours: str | None, goes_after_s: int
) -> None:
    # A low battery at 23:00, held for wang-fang's quiet hours until 07:00; her quiet
    # hours then end at 06:00, or are taken away: she hears of it then, not at 07:00.
    rig = await a_low_battery_held_for_the_night(tmp_path)
    assert rig.sent() == []
    with_wang_fangs_quiet_hours(rig, hours)
    await rig.after(goes_after_s)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]


async def test_a_notice_held_for_quiet_hours_a_reload_lengthened_waits_for_their_new_end(
    tmp_path: Path,
) -> None:
    rig = await a_low_battery_held_for_the_night(tmp_path)
    with_wang_fangs_quiet_hours(rig, "22:00-08:00")
    await rig.after(8 * 3600)
    assert rig.sent() == []
    await rig.after(3600)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]


async def test_a_notice_held_for_quiet_hours_of_a_receiver_taken_out_is_not_sent_at_night(
    tmp_path: Path,
) -> None:
    # wang-fang leaves the job at a reload: her held notice is not sent her at 23:01.
    rig = await a_low_battery_held_for_the_night(tmp_path)
    data = POLICY.model_dump(by_alias=True)
    data["receivers"] = [r for r in data["receivers"] if r["name"] != "wang-fang"]
    data["rosters"][0]["shifts"] = [{"receiver": "li-na", "hours": "00:00-00:00"}]
    policy = NotifyPolicy.model_validate(data)
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    await rig.after(60)
    assert rig.sent() == []


# 22:00 and 07:00 of the first night, wang-fang's quiet hours, in epoch ms.
QUIET_FROM_MS = T0 + 14 * 3600_000
QUIET_UNTIL_MS = T0 + 23 * 3600_000


def seconds_until(rig: Rig, at_ms: int) -> float:
    return (at_ms - rig.clock.now_ms()) / 1000


async def a_retry_due_in_quiet_hours(tmp_path: Path) -> tuple[Rig, AlertEntry]:
    """A low battery told to wang-fang a second before her quiet hours, by a WeCom that
    is busy then: tried again a second or two later, inside them."""
    rig = Rig(tmp_path / "outbox.sqlite3", clock=ManualClock(QUIET_FROM_MS - 1000))
    wang_fang_on_duty_around_the_clock(rig)
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.feed(Reading(SMOKE, rig.clock.now_ms(), TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(0)
    await rig.after(10)
    (entry,) = rig.book.search()
    return rig, entry


async def test_a_retry_whose_time_comes_in_quiet_hours_waits_for_their_end(
    tmp_path: Path,
) -> None:
    rig, entry = await a_retry_due_in_quiet_hours(tmp_path)
    assert rig.sent() == []
    assert [(str(a.result), a.detail) for a in rig.log.attempts(entry.alert_id)] == [
        ("retry", "busy"), ("quiet_hours", f"held until {QUIET_UNTIL_MS}"),
    ]  # fmt: skip
    # Kept across a restart, and neither made nor held again.
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    await rig.after(seconds_until(rig, QUIET_UNTIL_MS) - 1)
    assert rig.sent() == []
    await rig.after(1)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    assert [str(a.result) for a in rig.log.attempts(entry.alert_id)] == [
        "retry", "quiet_hours", "sent",
    ]  # fmt: skip


async def test_a_retry_held_for_quiet_hours_is_withdrawn_if_its_alert_is_taken(
    tmp_path: Path,
) -> None:
    rig, entry = await a_retry_due_in_quiet_hours(tmp_path)
    # The night's property staff change the battery and close the alert at 23:30.
    rig.clock.advance(seconds_until(rig, QUIET_FROM_MS + 5400_000))
    await rig.desk.close(entry.alert_id, "property", "battery replaced")
    await rig.after(seconds_until(rig, QUIET_UNTIL_MS))
    assert rig.sent() == []
    assert [str(a.result) for a in rig.log.attempts(entry.alert_id)] == [
        "retry", "quiet_hours", "withdrawn",
    ]  # fmt: skip


async def test_a_critical_retry_in_quiet_hours_is_not_held(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3", clock=ManualClock(QUIET_FROM_MS - 1000))
    wang_fang_on_duty_around_the_clock(rig)
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.feed(Event(WRIST, rig.clock.now_ms(), TimeSource.DEVICE, "sos", {}))
    await rig.after(0)
    await rig.after(10)
    assert ("wecom", "wang-fang", "firing") in rig.sent()


async def test_a_digest_s_members_whose_time_comes_in_quiet_hours_wait_for_their_end(
    tmp_path: Path,
) -> None:
    # 21:59 at the district's group robot, which takes one message a minute; wang-fang's
    # quiet hours begin at 22:00, zhao-min has none.
    rig = district_rig(tmp_path / "outbox.sqlite3", ManualClock(QUIET_FROM_MS - 60_000),
                       wang_fang_quiet_hours="22:00-07:00")  # fmt: skip
    robot = rig.channels["district-wecom"]
    now_ms = rig.clock.now_ms()
    rig.feed(Reading(SMOKE, now_ms, TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(0)
    assert rig.sent() == [("district-wecom", "wang-fang", "firing")]
    # Within the minute: hgy's tamper for wang-fang, lgy's low bracelet battery for
    # zhao-min, both waiting for a digest, which is due at 22:00.
    rig.feed(Event(SMOKE, now_ms + 1000, TimeSource.DEVICE, "tamper", {}))
    rig.feed(Reading(LGY_WRIST, now_ms + 1000, TimeSource.DEVICE, {"battery_pct": 5}))
    await rig.after(1)
    await rig.after(60)
    # zhao-min's goes; wang-fang's waits for 07:00.
    (digest,) = [n for n in robot.sent if n.kind == "digest"]  # type: ignore[attr-defined]
    assert [line.split(" · ")[1] for line in digest.lines] == ["lgy north 7"]
    tamper = next(e for e in rig.book.search() if e.rule == "smoke_tampering")
    assert [(str(a.result), a.detail) for a in rig.log.attempts(tamper.alert_id)][-1] == (
        "quiet_hours", f"held until {QUIET_UNTIL_MS}",
    )  # fmt: skip
    await rig.after(seconds_until(rig, QUIET_UNTIL_MS) - 1)
    assert len([n for n in robot.sent if n.kind == "digest"]) == 1  # type: ignore[attr-defined]
    await rig.after(1)
    (_, later) = [n for n in robot.sent if n.kind == "digest"]  # type: ignore[attr-defined]
    assert [line.split(" · ")[1] for line in later.lines] == ["hgy east 3"]
    assert [str(a.result) for a in rig.log.attempts(tamper.alert_id)][-1] == "sent"


async def test_an_escalation_step_whose_time_comes_in_quiet_hours_waits_for_their_end(
    tmp_path: Path,
) -> None:
    # Planned at 21:55: li-na at once, wang-fang ten minutes later, in her quiet hours.
    policy = POLICY.model_copy(update={"escalations": {**POLICY.escalations, "normal": (
        Step(after_s=0, to=("li-na",)), Step(after_s=600, to=("wang-fang",)))}})  # fmt: skip
    rig = Rig(tmp_path / "outbox.sqlite3", clock=ManualClock(QUIET_FROM_MS - 300_000))
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    rig.feed(Reading(SMOKE, rig.clock.now_ms(), TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(0)
    assert rig.sent() == [("wecom", "li-na", "firing")]
    await rig.after(600)
    assert rig.sent() == [("wecom", "li-na", "firing")]
    await rig.after(seconds_until(rig, QUIET_UNTIL_MS))
    assert rig.sent() == [("wecom", "li-na", "firing"), ("wecom", "wang-fang", "firing")]


async def test_neither_a_redelivery_nor_a_restart_sends_twice(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    await rig.after(0)
    assert len(rig.sent()) == 2
    # The same fall again (a redelivered event makes no new alert) and a restart.
    rig.feed(fall())
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == []
    # The escalation carries on after the restart, once.
    await rig.after(180)
    assert [s[1] for s in rig.sent()] == ["wang-fang", "office", "property"]


async def test_an_alert_committed_just_before_a_crash_is_notified_after_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall(), announce=False)  # committed; the process died before telling anyone
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == [
        ("wecom", "wang-fang", "firing"),
        ("sms", "contact:+8613900000009", "firing"),
    ]
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == []


async def test_a_silenced_alert_notifies_nobody_but_is_recorded(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.stage.silences.add(author="operator", reason="maintenance", starts_ms=T0, now_ms=T0,
                           ends_ms=T0 + 3600_000, community="hgy", rule="smoke_low_battery")  # fmt: skip
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert rig.sent() == []
    (alert,) = rig.book.open_alerts()
    assert [a.result for a in rig.log.attempts(alert.alert_id)] == [AttemptResult.SILENCED]


async def test_those_told_hear_when_the_condition_clears(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    # A new battery, and still so at the next hourly report: the all-clear.
    rig.feed(reading(SMOKE, 3600, battery_pct=100), reading(SMOKE, 7200, battery_pct=100))
    await rig.after(7200)
    assert rig.sent() == [("wecom", "wang-fang", "firing"), ("wecom", "wang-fang", "resolved")]
    resolved = rig.channels["wecom"].sent[1]  # type: ignore[attr-defined]
    assert resolved.text().startswith("【提示已恢复】")
    assert resolved.link is None


async def test_all_told_at_any_step_hear_the_all_clear_by_their_own_channels(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(SMOKE, 0, alarm=True))
    for step_s in (0, 180, 420):
        await rig.after(step_s)
    told = rig.sent()
    assert ("voice", "wang-fang", "firing") in told and ("sms", "secretary", "firing") in told
    rig.feed(reading(SMOKE, 700, alarm=False), reading(SMOKE, 700 + 3600, alarm=False))
    await rig.after(100)
    resolved = [s for s in rig.sent() if s[2] == "resolved"]
    # Each once, and by their own channels: no voice call for an all-clear.
    assert sorted(resolved) == [
        ("office-robot", "office", "resolved"),
        ("office-robot", "property", "resolved"),
        ("sms", "secretary", "resolved"),
        ("wecom", "wang-fang", "resolved"),
    ]


async def test_the_all_clear_reaches_the_one_told_after_their_shift_ended(
    tmp_path: Path,
) -> None:
    # 19:50: the day shift is told; at 20:10 the night shift has come, who heard nothing.
    rig = Rig(tmp_path / "outbox.sqlite3", ManualClock(T0 + 11 * 3600_000 + 50 * 60_000))
    rig.feed(reading(SMOKE, 11 * 3600 + 50 * 60, battery_pct=10))
    await rig.after(0)
    rig.feed(
        reading(SMOKE, 12 * 3600 + 10 * 60, battery_pct=100),
        reading(SMOKE, 13 * 3600 + 10 * 60, battery_pct=100),
    )
    await rig.after(20 * 60)
    assert rig.sent() == [("wecom", "wang-fang", "firing"), ("wecom", "wang-fang", "resolved")]


async def test_a_call_to_the_one_whose_shift_began_after_the_alert_brings_the_link(
    tmp_path: Path,
) -> None:
    # 19:58: the day shift is told; at 20:01 the voice step calls the night shift, who
    # heard nothing and needs the link to take the alert and see where it is.
    rig = Rig(tmp_path / "outbox.sqlite3", ManualClock(T0 + 11 * 3600_000 + 58 * 60_000))
    rig.feed(reading(SMOKE, 11 * 3600 + 58 * 60, alarm=True))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    await rig.after(180)
    assert ("voice", "li-na", "firing") in rig.sent()
    (brought,) = [n for n in rig.channels["wecom"].sent if n.receiver == "li-na"]  # type: ignore[attr-defined]
    assert brought.link and brought.link.startswith("https://gw.example.cn/a/")
    alert_id = brought.alert_id
    hers = [(a.channel, a.result, a.detail) for a in rig.log.attempts(alert_id)
            if a.receiver == "li-na"]  # fmt: skip
    assert hers == [
        ("voice", AttemptResult.SENT,
         "without the link to take the alert: goes on by a channel that carries it"),
        ("wecom", AttemptResult.SENT, ""),
    ]  # fmt: skip
    # She takes it by that link: the escalation stops before the secretary.
    await rig.desk.acknowledge(alert_id, "li-na")
    await rig.after(600)
    assert ("sms", "secretary", "firing") not in rig.sent()


async def test_a_call_to_one_who_has_the_link_is_a_call_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(SMOKE, 0, alarm=True))
    await rig.after(0)
    await rig.after(180)
    assert [s for s in rig.sent() if s[1] == "wang-fang"] == [
        ("wecom", "wang-fang", "firing"),
        ("voice", "wang-fang", "firing"),
    ]


def sms_first_for_the_secretary(rig: Rig, channels: tuple[str, ...]) -> None:
    policy = POLICY.model_copy(update={"receivers": tuple(
        r.model_copy(update={"channels": channels}) if r.name == "secretary" else r
        for r in POLICY.receivers)})  # fmt: skip
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))


async def test_one_told_by_sms_gets_the_link_by_their_first_channel_that_carries_it(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    sms_first_for_the_secretary(rig, ("sms", "voice", "wecom"))
    rig.feed(reading(SMOKE, 0, alarm=True))
    for step_s in (0, 180, 420):
        await rig.after(step_s)
    # No call in between: the call brings no link either.
    assert [s for s in rig.sent() if s[1] == "secretary"] == [
        ("wecom", "secretary", "firing"),
        ("sms", "secretary", "firing"),
    ]


async def test_one_whose_channels_carry_no_link_is_told_by_the_first_alone(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    sms_first_for_the_secretary(rig, ("sms", "voice"))
    rig.feed(reading(SMOKE, 0, alarm=True))
    for step_s in (0, 180, 420):
        await rig.after(step_s)
    assert [s for s in rig.sent() if s[1] == "secretary"] == [("sms", "secretary", "firing")]


async def test_a_clock_set_back_holds_neither_an_escalation_nor_a_retry(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.feed(fall())
    await rig.after(0)
    assert rig.sent() == [("sms", "contact:+8613900000009", "firing")]
    # NTP sets the box's clock back two hours (it booted with one ahead).
    rig.clock.step(-2 * 3600)
    await rig.after(15)
    assert ("wecom", "wang-fang", "firing") in rig.sent()
    await rig.after(164)
    assert ("office-robot", "office", "firing") not in rig.sent()
    await rig.after(1)
    # Three minutes after the fall, as without the step: the office, and a call to the
    # night shift, on duty at 06:00.
    assert ("office-robot", "office", "firing") in rig.sent()
    assert ("voice", "li-na", "firing") in rig.sent()


async def test_a_clock_set_forward_runs_no_step_before_its_time(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    await rig.after(0)
    rig.clock.step(3 * 3600)
    await rig.after(60)
    assert [s for s in rig.sent() if s[0] in ("voice", "office-robot")] == []
    await rig.after(120)
    assert ("voice", "wang-fang", "firing") in rig.sent()


async def test_a_clock_set_back_does_not_hold_a_number_s_next_call_for_as_long(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    voice = rig.voice_limited_per_number()
    rig.feed(fall(0))
    for step_s in (0, 180):
        await rig.after(step_s)
    assert [n.rule for n in voice.sent] == ["fall"]
    # Set back a day; an SOS 20 s later, which nobody takes.
    rig.clock.step(-86_400)
    rig.feed(Event(WRIST, rig.clock.now_ms() + 20_000, TimeSource.DEVICE, "sos", {}))
    for step_s in (20, 180, 60):
        await rig.after(step_s)
    # A call a minute per number: minutes after the last, the SOS's call went out.
    assert [n.rule for n in voice.sent] == ["fall", "sos"]


async def test_an_all_clear_committed_before_a_crash_is_told_after_the_restart(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    # Committed; the process died before telling anyone.
    rig.feed(
        reading(SMOKE, 3600, battery_pct=100),
        reading(SMOKE, 7200, battery_pct=100),
        announce=False,
    )
    rig.restart()
    rig.notifier.recover()
    await rig.after(7200)
    assert rig.sent() == [("wecom", "wang-fang", "resolved")]
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == []


async def test_no_all_clear_to_those_a_route_without_it_told(tmp_path: Path) -> None:
    policy = POLICY.model_copy(
        update={"routes": tuple(r.model_copy(update={"send_resolved": False})
                                for r in POLICY.routes)}
    )  # fmt: skip
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    rig.feed(reading(SMOKE, 3600, battery_pct=100))
    await rig.after(3600)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]


async def test_undeliverable_is_recorded_when_every_channel_fails(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    for name in ("wecom", "sms"):
        rig.channels[name].errors.append(NotifyError(f"{name} down", retryable=False))  # type: ignore[attr-defined]
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    for _ in range(3):
        await rig.after(0)
    (alert,) = rig.book.open_alerts()
    assert [a.result for a in rig.log.attempts(alert.alert_id)] == [
        AttemptResult.FAILED, AttemptResult.FAILED, AttemptResult.UNDELIVERED,
    ]  # fmt: skip
    assert rig.stats.notifications[("-", "undelivered")] == 1


def without_wecom_and_shifts_swapped() -> NotifyPolicy:
    """POLICY reloaded: the WeCom channel gone, and li-na now on the east area's day
    shift."""
    data = POLICY.model_dump(by_alias=True)
    del data["channels"]["wecom"]
    for receiver in data["receivers"]:
        receiver["channels"] = [c for c in receiver["channels"] if c != "wecom"]
    data["rosters"][0]["shifts"] = [
        {"receiver": "li-na", "hours": "08:00-20:00"},
        {"receiver": "wang-fang", "hours": "20:00-08:00"},
    ]
    return NotifyPolicy.model_validate(data)


async def test_a_reloaded_policy_holds_from_the_next_round(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.channels["wecom"].errors.append(NotifyError("WeCom timed out", retryable=True))  # type: ignore[attr-defined]
    rig.feed(fall())
    await rig.after(0)
    assert ("wecom", "wang-fang", "firing") not in rig.sent()
    policy = without_wecom_and_shifts_swapped()
    channels = {name: c for name, c in rig.channels.items() if name != "wecom"}
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), channels)
    # Her retry was to go by WeCom, which is gone: she is told by her next channel.
    await rig.after(10)
    assert ("sms", "wang-fang", "firing") in rig.sent()
    alert_id = rig.channels["sms"].sent[0].alert_id  # type: ignore[attr-defined]
    mine = [(a.channel, a.result, a.detail) for a in rig.log.attempts(alert_id)
            if a.receiver == "wang-fang"]  # fmt: skip
    assert mine[-2:] == [
        ("wecom", AttemptResult.FAILED, "the notification policy no longer has this channel"),
        ("sms", AttemptResult.SENT, ""),
    ]
    # A new alert goes to the new day shift.
    rig.feed(reading(SMOKE, 20, alarm=True))
    await rig.after(0)
    assert ("sms", "li-na", "firing") in rig.sent()
    assert rig.channels["wecom"].sent == []  # type: ignore[attr-defined]


async def test_a_reload_keeps_the_channels_it_did_not_change_with_their_limits() -> None:
    voice = {"type": "aliyun_voice", "access_key_id": "id", "access_key_secret": "secret",
             "tts_code": "TTS_1"}  # fmt: skip
    base = {"receivers": [{"name": "a", "phone": "13800000001", "channels": ["voice", "hook"]}],
            "routes": [{"escalation": "e"}], "escalations": {"e": [{"after_s": 0, "to": ["a"]}]}}  # fmt: skip
    before = NotifyPolicy.model_validate(
        {**base, "channels": {"voice": voice, "hook": {"type": "webhook", "url": "http://a/"}}}
    )
    after = NotifyPolicy.model_validate(
        {**base, "channels": {"voice": voice, "hook": {"type": "webhook", "url": "http://b/"}}}
    )
    clock = ManualClock(T0)
    async with httpx.AsyncClient() as http:
        running = make_channels(before, http, None, clock)
        reloaded = make_channels(after, http, None, clock, (before, running))
    # A call made before the reload: Aliyun takes one a minute to a number.
    running["voice"].limiter.note("13800000001", T0 / 1000)
    assert reloaded["voice"].limiter.wait_s("13800000001", T0 / 1000 + 1) > 0
    # The changed one is made again, with its new settings.
    assert reloaded["hook"] is not running["hook"]


def reloaded(routes: list[dict[str, object]], escalations: dict[str, object]) -> NotifyPolicy:
    data = POLICY.model_dump(by_alias=True)
    data["routes"] = routes
    data["escalations"] = escalations
    return NotifyPolicy.model_validate(data)


async def test_a_reload_that_reorders_the_routes_keeps_each_alert_on_its_chain(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    await rig.after(0)
    # The normal route first now: the fall's steps still go by the critical chain.
    escalations = POLICY.model_dump(by_alias=True)["escalations"]
    policy = reloaded(
        [{"match": {"severities": ["warning", "info"]}, "escalation": "normal"},
         {"escalation": "critical"}],
        escalations,
    )  # fmt: skip
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    await rig.after(180)
    assert rig.sent()[2:] == [
        ("voice", "wang-fang", "firing"),
        ("office-robot", "office", "firing"),
        ("office-robot", "property", "firing"),
    ]
    # Restarted with that policy, the last step is still to come, once.
    rig.restart()
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), rig.channels)
    await rig.after(420)
    assert [s for s in rig.sent() if s[1] == "secretary"] == [("sms", "secretary", "firing")]


async def test_the_steps_of_a_chain_taken_out_go_by_the_chain_the_alert_follows_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    await rig.after(0)
    assert len(rig.sent()) == 2
    # "critical" renamed to "life", with two steps where it had four.
    policy = reloaded(
        [{"match": {"severities": ["warning", "info"]}, "escalation": "normal"},
         {"escalation": "life"}],
        {"life": [{"after_s": 0, "to": ["on_duty"]}, {"after_s": 120, "to": ["secretary"]}],
         "normal": [{"after_s": 0, "to": ["on_duty"]}]},
    )  # fmt: skip
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    # The step planned for 180 s is the secretary's now; "life" has no third or fourth.
    await rig.after(179)
    assert len(rig.sent()) == 2
    await rig.after(1)
    assert rig.sent()[2:] == [("sms", "secretary", "firing")]
    await rig.after(600)
    assert len(rig.sent()) == 3
    assert "escalation 'critical' is no longer in the policy; step 1 goes by 'life'" in caplog.text


async def test_an_alert_that_cannot_be_planned_stops_neither_the_others_nor_the_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    routes = rig.notifier.router.routes

    def broken_for_falls(entry: AlertEntry) -> list[Route]:
        if entry.rule == "fall":
            raise KeyError("a registry entry it did not expect")
        return routes(entry)

    rig.notifier.router.routes = broken_for_falls  # type: ignore[method-assign]
    rig.feed(fall(), reading(SMOKE, 0, alarm=True))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    fall_alert = next(a for a in rig.book.open_alerts() if a.rule == "fall")
    (attempt,) = rig.log.attempts(fall_alert.alert_id)
    assert attempt.result is AttemptResult.UNDELIVERED
    assert attempt.detail.startswith("planning failed: KeyError")
    assert "its notifications could not be planned" in caplog.text
    # Started again (the fault mended), the fall is planned and told.
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert ("wecom", "wang-fang", "firing") in rig.sent()
    assert ("sms", "contact:+8613900000009", "firing") in rig.sent()


async def test_a_round_that_fails_is_tried_again_and_the_stage_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    plan = rig.log.plan
    failures = [sqlite3.OperationalError("database is locked")]

    def locked_once(steps: list[PlannedStep]) -> int:
        if failures:
            raise failures.pop()
        return plan(steps)

    async def settle() -> None:
        """Lets the notifier's loop run what is due, with the clock standing."""
        for _ in range(20):
            await asyncio.sleep(0)

    runner = asyncio.create_task(rig.notifier.run())
    try:
        await settle()
        rig.log.plan = locked_once  # type: ignore[method-assign]
        # The fall's planning is rolled back with its round.
        rig.feed(fall())
        await settle()
        assert rig.sent() == [] and not failures and not runner.done()
        # Said while rounds fail, for the gateway's fault notices.
        assert rig.notifier.round_error == "OperationalError: database is locked"
        # The next round finds it in the alert book.
        rig.clock.advance(FAILED_ROUND_PAUSE_S)
        await settle()
        assert ("wecom", "wang-fang", "firing") in rig.sent()
        assert rig.notifier.round_error is None
    finally:
        runner.cancel()


# A send whose result the log does not take (its disk refusing writes) is not made
# again and again, and the rounds are said to fail without a break while that lasts,
# so that the gateway's fault notices tell people (gateway.notify.fault); once the log
# takes writes again, the result is recorded and nothing was sent twice.
async def test_a_send_whose_result_is_not_recorded_is_not_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    wecom = HangingChannel("wecom")
    rig.channels["wecom"] = rig.notifier.channels["wecom"] = wecom
    runner = asyncio.create_task(rig.notifier.run())
    try:
        await settle()
        rig.feed(fall())
        await settle()
        refused = sqlite3.OperationalError("attempt to write a readonly database")

        def refuse(*args: object, **kwargs: object) -> None:
            raise refused

        monkeypatch.setattr(rig.log, "update", refuse)
        monkeypatch.setattr(rig.log, "record", refuse)
        wecom.release.set()
        await settle()
        assert [n.receiver for n in wecom.sent] == ["wang-fang"]
        # From now on WeCom is slow to answer: a send made again would be under way.
        wecom.release.clear()
        for _ in range(5):
            rig.clock.advance(FAILED_ROUND_PAUSE_S)
            await settle()
            assert rig.notifier.round_error == f"OperationalError: {refused}"
        wecom.release.set()
        await settle()
        assert wecom.started == 1
        monkeypatch.undo()
        rig.clock.advance(FAILED_ROUND_PAUSE_S)
        await settle()
        assert rig.notifier.round_error is None
        alert_id = next(a.alert_id for a in rig.book.open_alerts() if a.rule == "fall")
        sent = [(a.receiver, a.channel) for a in rig.log.attempts(alert_id)
                if a.result is AttemptResult.SENT]  # fmt: skip
        assert sent.count(("wang-fang", "wecom")) == 1
        assert len(wecom.sent) == 1
    finally:
        runner.cancel()


async def test_a_chain_taken_out_leaves_its_steps_to_no_chain_planned_already(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    escalations = POLICY.model_dump(by_alias=True)["escalations"]
    escalations["normal"] = [
        {"after_s": 0, "to": ["on_duty"]},
        {"after_s": 180, "to": ["secretary"]},
    ]
    both = reloaded([{"match": {"severities": ["critical"]}, "escalation": "critical",
                      "continue": True}, {"escalation": "normal"}], escalations)  # fmt: skip
    rig.notifier.use_policy(both, Router(both, REGISTRY, ZONE), dict(rig.channels))
    rig.feed(fall())
    await rig.after(0)
    del escalations["critical"]
    normal_only = reloaded([{"escalation": "normal"}], escalations)
    rig.notifier.use_policy(normal_only, Router(normal_only, REGISTRY, ZONE), dict(rig.channels))
    # The fall's own "normal" step 1 tells the secretary; the critical chain's steps add
    # no second escalation of it.
    await rig.after(180)
    assert [s for s in rig.sent() if s[1] == "secretary"] == [("sms", "secretary", "firing")]
    assert rig.stats.escalations == 1


async def test_a_notification_log_damaged_while_running_stops_the_gateway_for_its_next_start(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "outbox.notifications.sqlite3"
    rig = Rig(tmp_path / "outbox.sqlite3", log_path=log_path)
    rig.feed(fall())
    await rig.after(0)
    assert rig.sent()
    rig.restart()
    damaged = damage(log_path)
    # Not a round failed and tried again: that would never send anything again.
    with pytest.raises(DamagedStoreError, match="a round of notifications failed"):
        await asyncio.wait_for(rig.notifier.run(), timeout=5)
    # The log is the damaged file, not the outbox the alert book is in.
    assert damage_noted(log_path) is not None and damage_noted(rig.path) is None
    rig.log.close()
    NotificationLog(log_path, recover_damaged=True).close()
    assert log_path.with_name(log_path.name + ".damaged").read_bytes() == damaged


async def test_an_alert_book_damaged_while_running_is_told_from_the_notification_log(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "outbox.notifications.sqlite3"
    rig = Rig(tmp_path / "outbox.sqlite3", log_path=log_path)
    rig.feed(fall())
    await rig.after(0)
    rig.restart()
    # Its pages all in the file, none in the write-ahead log, where they would hide the damage.
    with contextlib.closing(sqlite3.connect(rig.path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage(rig.path)
    with pytest.raises(DamagedStoreError, match="a round of notifications failed"):
        await asyncio.wait_for(rig.notifier.run(), timeout=5)
    # The outbox, which the alert book is in, is the file its next start moves aside.
    assert damage_noted(rig.path) is not None and damage_noted(log_path) is None


BUILDING_POLICY = NotifyPolicy.model_validate(
    {
        "channels": {"app": {"type": "console"}, "office-robot": {"type": "console"}},
        "receivers": [
            {"name": "wang-fang", "channels": ["app"]},
            {"name": "zhao-min", "channels": ["app"]},
            {"name": "office", "channels": ["office-robot"]},
        ],
        "rosters": [
            {"cell": {"community": "hgy", "area": "东区"}, "shifts": [{"receiver": "wang-fang"}]},
            {"cell": {"community": "hgy", "area": "西区"}, "shifts": [{"receiver": "zhao-min"}]},
        ],
        "routes": [{"match": {"buildings": ["3号楼"]}, "escalation": "b3"},
                   {"escalation": "all"}],
        "escalations": {"b3": [{"after_s": 0, "to": ["on_duty", "office"]}],
                        "all": [{"after_s": 0, "to": ["on_duty"]}]},
        "fallback_receivers": ["office"],
    }
)  # fmt: skip


def building_on_fire(
    tmp_path: Path, detectors: dict[str, tuple[str, str]]
) -> tuple[Registry, AlertBook, Outbox, AlertEntry]:
    """Detectors of buildings named 3号楼, by id with their area and compound, the first
    two alarming 30 s apart: the registry, the book, the outbox and the building's alert."""
    registry = Registry(
        RegisteredDevice(device_id=device_id, device_type="smoke_detector", community="hgy",
                         area=area, compound=compound, building="3号楼")
        for device_id, (area, compound) in detectors.items()
    )  # fmt: skip
    path = tmp_path / "outbox.sqlite3"
    outbox, book = Outbox(path), AlertBook(path)
    stage = AlertStage(
        RuleEngine(shipped_rules(), registry), book, SilenceBook(path, registry), ManualClock(T0)
    )
    for device_id, at_s in zip(detectors, (0, 30), strict=False):
        alarm = Event(DeviceRef("hgy", "smoke_detector", device_id), T0 + at_s * 1000,
                      TimeSource.DEVICE, "alarm", {})  # fmt: skip
        decision = stage.evaluate([alarm])
        outbox.commit(decision.lines, [], None, decision.write)
    (fire,) = [e for e in book.search() if e.rule == "building_fire"]
    return registry, book, outbox, fire


async def test_an_alert_about_a_building_goes_where_its_detectors_are(tmp_path: Path) -> None:
    lakeside = ("东区", "湖光小区")
    registry, book, outbox, fire = building_on_fire(tmp_path, {"sd-1": lakeside, "sd-2": lakeside})
    router = Router(BUILDING_POLICY, registry, ZONE)
    # The building's route, and the grid worker of the area the building is in.
    (route,) = router.routes(fire)
    assert route.escalation == "b3"
    (step,) = BUILDING_POLICY.escalations["b3"]
    assert [t.receiver for t in router.targets(step, fire, T0)] == ["wang-fang", "office"]
    assert router.place(fire) == ("hgy", "东区", "湖光小区", "3号楼")
    # Its notice names the place, as a detector's would.
    notifier = Notifier(
        BUILDING_POLICY, {"app": FakeChannel("app"), "office-robot": FakeChannel("office-robot")},
        router, book, NotificationLog(tmp_path / "log.sqlite3"),
        LinkSigner("secret", "https://gw.example.cn", 3600), outbox_commit(outbox),
        ManualClock(T0), Stats(), ZONE,
    )  # fmt: skip
    notifier.recover()
    await notifier.process()
    told = notifier.channels["app"]
    assert isinstance(told, FakeChannel)
    assert {n.place for n in told.sent if n.rule == "building_fire"} == {"hgy 东区 湖光小区 3号楼"}


def test_a_building_whose_name_another_compound_shares_goes_where_it_is(
    tmp_path: Path,
) -> None:
    lakeside, jade = ("东区", "湖光小区"), ("西区", "翠苑")
    registry, _, _, fire = building_on_fire(
        tmp_path, {"sd-1": lakeside, "sd-2": lakeside, "sd-9": jade}
    )
    # Every compound has its 3号楼: the alert names the one on fire by its path, and
    # goes by the routes of a 3号楼 to lakeside's grid worker, not jade's.
    assert fire.device_id == "东区·湖光小区·3号楼"
    router = Router(BUILDING_POLICY, registry, ZONE)
    assert router.place(fire) == ("hgy", "东区", "湖光小区", "3号楼")
    (route,) = router.routes(fire)
    (step,) = BUILDING_POLICY.escalations[route.escalation]
    assert [t.receiver for t in router.targets(step, fire, T0)] == ["wang-fang", "office"]


# A fire's escalation steps go to the grid worker of its cell: a step taken after a
# reload that gives another compound a building of the same number does not send
# lakeside's fire to that compound's worker.
def test_a_fires_escalation_does_not_go_to_another_compounds_worker_after_a_reload(
    tmp_path: Path,
) -> None:
    lakeside = ("东区", "湖光小区")
    before, _, _, fire = building_on_fire(tmp_path, {"sd-1": lakeside, "sd-2": lakeside})
    assert fire.device_id == "3号楼"
    jade_3 = RegisteredDevice(device_id="sd-9", device_type="smoke_detector", community="hgy",
                              area="西区", compound="翠苑", building="3号楼")  # fmt: skip
    router = Router(BUILDING_POLICY, Registry([*before.devices(), jade_3]), ZONE)
    assert router.place(fire) == ("hgy", "东区", "湖光小区", "3号楼")
    (route,) = router.routes(fire)
    (step,) = BUILDING_POLICY.escalations[route.escalation]
    assert [t.receiver for t in router.targets(step, fire, T0 + 180_000)] == [
        "wang-fang", "office",
    ]  # fmt: skip


def outbox_commit(outbox: Outbox):  # type: ignore[no-untyped-def]
    async def commit(lines, write) -> None:  # type: ignore[no-untyped-def]
        outbox.commit(lines, [], None, write)

    return commit


async def settle() -> None:
    """Lets the notifier's loop and its sends run what is due, with the clock standing."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_provider_that_hangs_holds_up_no_other_alarm(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    # The SMS provider hangs on the wearer's family's notice of a fall.
    sms = HangingChannel("sms", needs_phone=True)
    rig.channels["sms"] = rig.notifier.channels["sms"] = sms
    runner = asyncio.create_task(rig.notifier.run())
    try:
        await settle()
        rig.feed(fall())
        await settle()
        assert sms.started == 1
        # A fire alarm meanwhile reaches the grid worker on duty by WeCom, at once.
        rig.feed(reading(SMOKE, 1, alarm=True))
        await settle()
        assert [n.rule for n in rig.channels["wecom"].sent] == ["fall", "fire_alarm"]  # type: ignore[attr-defined]
        # Rounds go on while it hangs; the notice under way is not sent a second time.
        for _ in range(3):
            rig.clock.advance(1)
            rig.notifier.on_alerts([])
            await settle()
        assert sms.started == 1
        sms.release.set()
        await settle()
        contact = [a for a in rig.log.attempts(sms.sent[0].alert_id)
                   if a.receiver == "contact:+8613900000009"]  # fmt: skip
        assert [a.result for a in contact] == [AttemptResult.SENT]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == []


async def test_a_stop_waits_for_a_send_under_way_and_records_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    wecom = HangingChannel("wecom")
    rig.channels["wecom"] = rig.notifier.channels["wecom"] = wecom
    runner = asyncio.create_task(rig.notifier.run())
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await settle()
    assert wecom.started == 1
    runner.cancel()
    await settle()
    # It answers while the gateway stops: recorded, and not sent again after the start.
    wecom.release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    (alert,) = rig.book.open_alerts()
    assert [a.result for a in rig.log.attempts(alert.alert_id)] == [AttemptResult.SENT]
    assert rig.lines("notification")
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == []


async def test_a_send_a_stop_cuts_off_goes_again_once_after_the_start(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    wecom = HangingChannel("wecom")
    rig.channels["wecom"] = rig.notifier.channels["wecom"] = wecom
    rig.notifier.stop_grace_s = 0
    runner = asyncio.create_task(rig.notifier.run())
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await settle()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    (alert,) = rig.book.open_alerts()
    # Nothing is recorded of a send whose end nobody saw.
    assert rig.log.attempts(alert.alert_id) == []
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    await rig.after(60)
    assert len(rig.sent()) == 1


async def a_result_the_log_did_not_take(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> tuple[HangingChannel, asyncio.Task[None]]:
    """The notifier running, a low battery sent by WeCom, and its result refused by the
    log (its file locked, its disk refusing writes)."""
    wecom = HangingChannel("wecom")
    rig.channels["wecom"] = rig.notifier.channels["wecom"] = wecom
    runner = asyncio.create_task(rig.notifier.run())
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await settle()
    assert wecom.started == 1

    def refuse(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(rig.log, "update", refuse)
    monkeypatch.setattr(rig.log, "record", refuse)
    wecom.release.set()
    await settle()
    assert [n.receiver for n in wecom.sent] == ["wang-fang"]
    return wecom, runner


# A send whose result the log did not take, with the gateway stopped before a round
# recorded it: the stop records it, and the start after it does not send the same
# notice to the same person again.
async def test_a_stop_records_a_send_s_result_the_log_did_not_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    _, runner = await a_result_the_log_did_not_take(rig, monkeypatch)
    # The log takes writes again (the lock let go of), and the gateway is stopped.
    monkeypatch.undo()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    (alert,) = rig.book.open_alerts()
    assert [a.result for a in rig.log.attempts(alert.alert_id)] == [AttemptResult.SENT]
    assert len(rig.lines("notification")) == 1
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    await rig.after(60)
    assert rig.sent() == []


# A round that recorded a send's result and then failed is rolled back; the next records
# it again: its point and its count are written once, not once a try.
async def test_a_round_rolled_back_leaves_no_point_of_what_it_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    _, runner = await a_result_the_log_did_not_take(rig, monkeypatch)
    monkeypatch.undo()
    due_steps = rig.log.due_steps
    tries = 0

    def locked_once(now_ms: int) -> list[PlannedStep]:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise sqlite3.OperationalError("database is locked")
        return due_steps(now_ms)

    monkeypatch.setattr(rig.log, "due_steps", locked_once)
    for _ in range(3):
        with contextlib.suppress(sqlite3.Error):
            await rig.after(1)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    assert tries >= 2
    (alert,) = rig.book.open_alerts()
    assert [a.result for a in rig.log.attempts(alert.alert_id)] == [AttemptResult.SENT]
    assert len(rig.lines("notification")) == 1
    assert rig.stats.notifications[("wecom", "sent")] == 1


# One the log still does not take at the stop is named, and so is what follows from it,
# for whoever wonders why a grid worker had the same notice twice.
async def test_a_stop_names_the_results_it_could_not_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    wecom, runner = await a_result_the_log_did_not_take(rig, monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="gateway.notify.notifier"):
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert [r.message for r in caplog.records] == [
        f"stopped with the results of sending {wecom.sent[0].key} not recorded "
        "(OperationalError('database is locked')): they are sent again at the next start"
    ]
    # No point of a result the log does not have.
    assert rig.lines("notification") == []


async def test_a_send_that_outlasts_its_channels_timeout_is_tried_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    wecom = HangingChannel("wecom")
    wecom.timeout_s = 0.01
    rig.channels["wecom"] = rig.notifier.channels["wecom"] = wecom
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    (alert,) = rig.book.open_alerts()
    (attempt,) = rig.log.attempts(alert.alert_id)
    assert (attempt.result, attempt.detail) == (
        AttemptResult.RETRY, "wecom did not answer within 0.01 s",
    )  # fmt: skip
    wecom.release.set()
    await rig.after(10)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]


class AppChannel(FakeChannel):
    """A grid-worker app over MQTT: the broker takes what nobody may receive."""

    confirms = False


def with_the_app_first(rig: Rig) -> AppChannel:
    policy = POLICY.model_copy(update={"channels": {**POLICY.channels, "app": POLICY.channels["wecom"]},
                                       "receivers": tuple(r.model_copy(update={"channels": ("app", *r.channels)})
                                                          if r.name == "wang-fang" else r
                                                          for r in POLICY.receivers)})  # fmt: skip
    app = AppChannel("app")
    rig.channels["app"] = app
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    return app


async def test_a_critical_notice_goes_on_after_a_channel_that_cannot_confirm(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    app = with_the_app_first(rig)
    rig.feed(fall())
    await rig.after(0)
    # Her app may be offline: WeCom tells her too.
    assert [n.receiver for n in app.sent] == ["wang-fang"]
    assert ("wecom", "wang-fang", "firing") in rig.sent()
    alert_id = app.sent[0].alert_id
    mine = [(a.channel, a.result, a.detail) for a in rig.log.attempts(alert_id)
            if a.receiver == "wang-fang"]  # fmt: skip
    assert mine == [
        ("app", AttemptResult.SENT, "unconfirmed: goes on by the next channel too"),
        ("wecom", AttemptResult.SENT, ""),
    ]
    # A low battery stops at the app, as the broker took it.
    rig.feed(reading(SMOKE, 10, battery_pct=10))
    await rig.after(10)
    assert [n.rule for n in app.sent] == ["fall", "smoke_low_battery"]
    assert [n.rule for n in rig.channels["wecom"].sent] == ["fall"]  # type: ignore[attr-defined]


async def test_a_critical_notice_only_the_app_took_is_not_sent_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    app = with_the_app_first(rig)
    for name in ("wecom", "sms"):
        rig.channels[name].errors.append(NotifyError(f"{name} down", retryable=False))  # type: ignore[attr-defined]
    rig.feed(fall())
    for _ in range(3):
        await rig.after(0)
    alert_id = app.sent[0].alert_id
    # Every channel after the app failed: it may have reached her, and is never sent
    # again, after a restart neither.
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    assert [n.receiver for n in app.sent] == ["wang-fang"]
    (notification,) = [n for n in rig.log.sent(alert_id) if "/wang-fang/" in n.key]
    assert notification.state == "sent"


async def test_one_told_by_the_app_alone_hears_the_all_clear(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    app = with_the_app_first(rig)
    # WeCom is busy: the copy after the app waits for a retry.
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.feed(reading(SMOKE, 0, alarm=True))
    await rig.after(0)
    assert [(n.receiver, n.kind) for n in app.sent] == [("wang-fang", "firing")]
    (alert,) = rig.book.open_alerts()
    # She has it in the app and takes it; the WeCom copy is withdrawn.
    await rig.desk.acknowledge(alert.alert_id, "wang-fang")
    await rig.after(10)
    # The detector goes quiet: the fire is over.
    rig.feed(reading(SMOKE, 20, alarm=False), reading(SMOKE, 700, alarm=False))
    await rig.after(1)
    await rig.after(1)
    told = [(n.receiver, n.kind) for c in rig.channels.values() for n in c.sent]  # type: ignore[attr-defined]
    assert ("wang-fang", "resolved") in told


async def test_taking_an_alert_withdraws_its_escalation_notices_still_held(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    voice = rig.voice_limited_per_number()
    # A fall, and an SOS 5 s later; at 3 minutes the worker on duty is called for the
    # fall; the SOS's call waits a minute for the provider's limit.
    rig.feed(fall(0))
    rig.feed(Event(WRIST, T0 + 5000, TimeSource.DEVICE, "sos", {}))
    await rig.after(0)
    await rig.after(185)
    assert [n.rule for n in voice.sent] == ["fall"]
    sos = next(e for e in rig.book.open_alerts() if e.rule == "sos")
    await rig.desk.acknowledge(sos.alert_id, "wang-fang")
    await rig.after(60)
    # The acknowledgement stopped the chain at once: no call for the SOS she took.
    assert [n.rule for n in voice.sent] == ["fall"]
    (withdrawn,) = [a for a in rig.log.attempts(sos.alert_id) if a.result == "withdrawn"]
    assert withdrawn.receiver == "wang-fang"
    assert withdrawn.detail == "wang-fang took the alert (acknowledged) before this could go out"


async def test_a_first_notice_held_in_a_retry_still_reaches_the_family(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.channels["sms"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.feed(fall())
    await rig.after(0)
    assert rig.sent() == []
    (entry,) = rig.book.open_alerts()
    # The grid worker heard of it another way and takes it; both notices are in backoff.
    await rig.desk.acknowledge(entry.alert_id, "wang-fang")
    await rig.after(10)
    # The wearer's family still hear of the fall; she is not told of what she took.
    assert rig.sent() == [("sms", "contact:+8613900000009", "firing")]
    # Nor is anyone at a later step.
    await rig.after(600)
    assert rig.sent() == [("sms", "contact:+8613900000009", "firing")]


async def test_those_told_of_an_alarm_from_a_backlog_hear_its_all_clear(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.clock.advance(5000)
    # After an outage the broker hands over the detector's queued reports in one batch:
    # in alarm, then off, and still off ten minutes later.
    rig.feed(
        reading(SMOKE, 0, alarm=True),
        reading(SMOKE, 3600, alarm=False),
        reading(SMOKE, 4300, alarm=False),
    )
    await rig.after(0)
    # A fire alarm that cleared is still told; and that it is over, once.
    assert rig.sent() == [("wecom", "wang-fang", "firing"), ("wecom", "wang-fang", "resolved")]
    rig.restart()
    rig.notifier.recover()
    await rig.after(60)
    assert rig.sent() == []


async def test_those_a_life_safety_step_tells_after_the_all_clear_hear_it_too(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(Event(SMOKE, T0, TimeSource.DEVICE, "alarm", {}))
    await rig.after(0)
    rig.feed(reading(SMOKE, 1, alarm=False), reading(SMOKE, 601, alarm=False))
    await rig.after(5)
    assert ("wecom", "wang-fang", "resolved") in rig.sent()
    # Life safety: the chain goes on until a person takes it; those it tells now hear
    # that it is over as well.
    await rig.after(180)
    told = rig.sent()
    for receiver in ("office", "property"):
        assert ("office-robot", receiver, "firing") in told
        assert ("office-robot", receiver, "resolved") in told
    assert [s for s in told if s[1] == "wang-fang" and s[2] == "resolved"] == [
        ("wecom", "wang-fang", "resolved")
    ]


class Limited(FakeChannel):
    """A robot over its limit, which asks for two minutes of quiet."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.tries = 0
        self.limited = True

    async def send(self, notice: Notice) -> None:
        self.tries += 1
        if self.limited:
            raise NotifyError("WeCom over its limit: 45009", retryable=True, rate_limited=True,
                              retry_after_s=120.0)  # fmt: skip
        await super().send(notice)


async def test_a_digest_waits_for_the_retry_after_the_provider_gave(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    robot = Limited("wecom")
    rig.channels["wecom"] = rig.notifier.channels["wecom"] = robot
    rig.feed(reading(SMOKE, 0, battery_pct=10))  # waits for a digest
    await rig.after(0)
    assert robot.tries == 1
    rig.feed(Event(SMOKE, T0 + 1000, TimeSource.DEVICE, "tamper", {}))
    for _ in range(119):
        await rig.after(1)
    # Not tried again while the robot asked for quiet, neither the digest nor the next.
    assert robot.tries == 1
    robot.limited = False
    await rig.after(1)
    assert robot.tries == 2
    (digest,) = robot.sent
    assert digest.title == "2 条告警"


async def test_a_provider_s_limit_on_one_number_leaves_the_others_reachable(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.channels["sms"].errors.append(NotifyError(  # type: ignore[attr-defined]
        "Aliyun SMS refused: isv.BUSINESS_LIMIT_CONTROL", retryable=True, rate_limited=True,
        retry_after_s=60.0))  # fmt: skip
    rig.channels["wecom"].errors.append(NotifyError("down", retryable=False))  # type: ignore[attr-defined]
    rig.feed(fall())
    await rig.after(0)
    # The family's number was over its limit (the SMS tried first), wang-fang's is not.
    told = rig.sent()
    assert ("sms", "wang-fang", "firing") in told
    assert ("sms", "contact:+8613900000009", "firing") not in told
    await rig.after(60)
    assert ("sms", "contact:+8613900000009", "firing") in rig.sent()


async def test_an_alert_muted_by_a_silence_is_told_once_the_silence_ends(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    # An hour of maintenance on the community's detectors.
    rig.silences.add(author="operator", reason="maintenance", starts_ms=T0, now_ms=T0,
                     ends_ms=T0 + 3_600_000, community="hgy")  # fmt: skip
    rig.feed(reading(SMOKE, 600, battery_pct=10))
    await rig.after(600)
    await rig.after(2999)
    assert rig.sent() == []
    # The battery was not changed: the silence ends and it is told, once.
    await rig.after(1)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    rig.restart()
    rig.notifier.recover()
    await rig.after(3600)
    assert rig.sent() == []


async def test_an_event_muted_during_maintenance_is_not_told_after_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    # An hour of maintenance on the community's detectors: the crew opens them.
    rig.silences.add(author="operator", reason="maintenance", starts_ms=T0, now_ms=T0,
                     ends_ms=T0 + 3_600_000, community="hgy")  # fmt: skip
    rig.feed(Event(SMOKE, T0 + 60_000, TimeSource.DEVICE, "tamper", {}))
    await rig.after(60)
    assert rig.sent() == []
    # The window ends: a detector the crew opened is not news, unlike a battery still low.
    await rig.after(3600)
    assert rig.sent() == []


async def test_a_silence_that_ended_during_a_stop_is_over_at_the_start(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.silences.add(author="operator", reason="maintenance", starts_ms=T0, now_ms=T0,
                     ends_ms=T0 + 3_600_000, community="hgy")  # fmt: skip
    rig.feed(reading(SMOKE, 600, battery_pct=10))
    await rig.after(600)
    rig.restart()
    rig.clock.advance(3600)
    rig.notifier.recover()
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]


async def test_an_alert_muted_that_cleared_or_was_taken_meanwhile_is_not_told(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.silences.add(author="operator", reason="maintenance", starts_ms=T0, now_ms=T0,
                     ends_ms=T0 + 3_600_000, community="hgy")  # fmt: skip
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    rig.feed(Event(SMOKE, T0 + 1000, TimeSource.DEVICE, "tamper", {}))
    await rig.after(1)
    tamper = next(e for e in rig.book.open_alerts() if e.rule != "smoke_low_battery")
    await rig.desk.acknowledge(tamper.alert_id, "property")
    rig.feed(reading(SMOKE, 1800, battery_pct=100), reading(SMOKE, 1800 + 3600, battery_pct=100))
    await rig.after(1800)
    await rig.after(3600)
    assert rig.sent() == []


async def test_an_alert_whose_silence_is_ended_early_is_told_within_a_minute(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    silence = rig.silences.add(author="operator", reason="maintenance", starts_ms=T0, now_ms=T0,
                               ends_ms=T0 + 8 * 3_600_000, community="hgy")  # fmt: skip
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    rig.silences.end(silence.id, rig.clock.now_ms())
    await rig.after(59)
    assert rig.sent() == []
    await rig.after(1)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]


async def test_those_told_hear_the_all_clear_even_if_it_comes_during_a_silence(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    # A detector's battery runs low: the grid worker on duty is told.
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    # The crew comes to change batteries; the operator silences the community meanwhile.
    rig.silences.add(author="operator", reason="battery round", starts_ms=T0 + 60_000, now_ms=T0,
                     ends_ms=T0 + 8 * 3_600_000, community="hgy")  # fmt: skip
    # New batteries: the next two hourly reports say so, and the alert resolves.
    rig.clock.advance(7200)
    rig.feed(reading(SMOKE, 3600, battery_pct=100),
             reading(SMOKE, 7200, battery_pct=100))  # fmt: skip
    await rig.after(0)
    # The worker who was told it was low hears that it is over, as after any restart.
    assert rig.sent() == [("wecom", "wang-fang", "firing"), ("wecom", "wang-fang", "resolved")]


# --- digests -------------------------------------------------------------------------------


def told_at_once(
    receiver: str, phone: str, channels: dict[str, dict[str, object]], **settings: object
) -> NotifyPolicy:
    """One receiver, told of every alert at once by `channels`, tried in their order."""
    return NotifyPolicy.model_validate(
        {
            "channels": channels,
            "receivers": [{"name": receiver, "phone": phone, "channels": list(channels)}],
            "routes": [{"escalation": "all"}],
            "escalations": {"all": [{"after_s": 0, "to": [receiver]}]},
            **settings,
        }
    )


def one_robot_policy() -> NotifyPolicy:
    """A receiver reached by one group robot alone (the community office's DingTalk)."""
    return told_at_once(
        "office", "13800000004", {"office-robot": {"type": "console"}},
        delivery={"max_tries": 3, "backoff_initial_s": 2, "backoff_max_s": 10},
    )  # fmt: skip


async def test_a_digest_that_meets_a_retryable_error_is_tried_again_not_given_up(
    tmp_path: Path,
) -> None:
    # A receiver reached by one group robot alone, which answers a digest "system busy":
    # the digest is tried again, as a single notice would be.
    robot = FakeChannel("office-robot", limits=(Limit(1, 60.0),))
    rig = Rig(tmp_path / "outbox.sqlite3", policy=one_robot_policy(),
              channels={"office-robot": robot})  # fmt: skip
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert [n.kind for n in robot.sent] == ["firing"]
    # Two more within the minute: held for a digest.
    rig.feed(reading(WRIST, 1, battery_pct=10))
    await rig.after(1)
    # The digest is due once the minute is over; the provider is busy for a moment.
    robot.errors.append(NotifyError("DingTalk refused: -1 system busy", retryable=True))
    await rig.after(60)
    assert [n.kind for n in robot.sent] == ["firing"]
    await rig.after(60)
    await rig.after(60)
    wrist_alert = next(a for a in rig.book.open_alerts() if a.device_id == "br-1")
    results = [a.result for a in rig.log.attempts(wrist_alert.alert_id)]
    assert AttemptResult.UNDELIVERED not in results, results
    assert [n.kind for n in robot.sent] == ["firing", "digest"]


async def test_an_all_clear_in_a_digest_does_not_read_as_a_new_alarm(tmp_path: Path) -> None:
    # Over the robot's limit, an all-clear waits for a digest, which says it is over.
    # A robot that has taken its message of these three hours.
    robot = FakeChannel("office-robot", limits=(Limit(1, 3 * 3600.0),))
    rig = Rig(tmp_path / "outbox.sqlite3", policy=one_robot_policy(),
              channels={"office-robot": robot})  # fmt: skip
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert [n.kind for n in robot.sent] == ["firing"]
    # A new battery, and still so at the next hourly report: the all-clear.
    rig.feed(reading(SMOKE, 3600, battery_pct=100), reading(SMOKE, 7200, battery_pct=100))
    await rig.after(7200)
    assert [n.kind for n in robot.sent] == ["firing"]
    await rig.after(3600)
    (digest,) = [n for n in robot.sent if n.kind == "digest"]
    assert digest.text().split("\n")[:2] == [
        "【提示告警汇总】1 条已恢复",
        "- 【已恢复】烟感电量低 Low battery · hgy east 3 · sd-1 · 2026-01-01 08:00",
    ]


# --- SMS -----------------------------------------------------------------------------------


class AliyunAnswers:
    """A local stand-in for Aliyun's SendSms: answers in turn, records what it was sent."""

    def __init__(self, *answers: tuple[int, dict[str, object]]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(dict(parse_qsl(request.content.decode())))
        status, body = self.answers.pop(0) if self.answers else (200, {"Code": "OK"})
        return httpx.Response(status, json=body)


def sms_policy(params: list[str]) -> NotifyPolicy:
    return told_at_once(
        "wang-fang", "13800000001",
        {"sms": {"type": "aliyun_sms", "access_key_id": "id", "access_key_secret": "secret",
                 "sign_name": "湖光苑社区", "template_code": "SMS_1", "params": params,
                 "url": "https://dysmsapi.example.cn/"}},
    )  # fmt: skip


def sms_rig(tmp_path: Path, policy: NotifyPolicy, aliyun: AliyunAnswers) -> Rig:
    """The notifier with a real Aliyun SMS channel, answered by `aliyun`."""
    clock = ManualClock(T0)
    http = httpx.AsyncClient(transport=httpx.MockTransport(aliyun))
    config = policy.channels["sms"]
    assert isinstance(config, AliyunSmsChannel)
    sms = AliyunSms("sms", config, http, clock)
    return Rig(tmp_path / "outbox.sqlite3", clock=clock, policy=policy,
               channels={"sms": sms})  # type: ignore[dict-item]  # fmt: skip


def sms_and_robot_rig(
    tmp_path: Path, policy: NotifyPolicy, aliyun: AliyunAnswers
) -> tuple[Rig, FakeChannel]:
    """The notifier with a real Aliyun SMS channel, answered by `aliyun`, and a group
    robot ("wecom") after it."""
    clock = ManualClock(T0)
    http = httpx.AsyncClient(transport=httpx.MockTransport(aliyun))
    config = policy.channels["sms"]
    assert isinstance(config, AliyunSmsChannel)
    robot = FakeChannel("wecom")
    rig = Rig(tmp_path / "outbox.sqlite3", clock=clock, policy=policy,
              channels={"sms": AliyunSms("sms", config, http, clock), "wecom": robot})  # type: ignore[dict-item]  # fmt: skip
    return rig, robot


async def test_sms_over_a_number_s_limit_go_one_by_one_each_with_its_link(tmp_path: Path) -> None:
    # An SMS template carries one alert and its one short link: over Aliyun's limit for
    # the number, each alert still goes in an SMS of its own, by which it can be taken.
    aliyun = AliyunAnswers(
        (200, {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发分钟级流控"})
    )
    rig = sms_rig(tmp_path, sms_policy(["title", "place", "time", "link_code"]), aliyun)
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    rig.feed(reading(WRIST, 1, battery_pct=10))
    await rig.after(1)
    await rig.after(60)
    sent = [json.loads(r["TemplateParam"]) for r in aliyun.requests[1:]]
    assert sorted(v["title"] for v in sent) == ["手环电量低 Low battery", "烟感电量低 Low battery"]
    for values in sent:
        link = rig.log.short_link(values["link_code"])
        assert link is not None and "/a/" in link


async def test_a_number_over_its_limit_per_day_is_reached_by_the_next_channel_meanwhile(
    tmp_path: Path,
) -> None:
    aliyun = AliyunAnswers(
        (200, {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发天级流控Permits:10"})
    )
    policy = told_at_once(
        "wang-fang", "13800000001",
        {"sms": {"type": "aliyun_sms", "access_key_id": "id", "access_key_secret": "secret",
                 "sign_name": "湖光苑社区", "template_code": "SMS_1",
                 "params": ["title", "link_code"],
                 "url": "https://dysmsapi.example.cn/"},
         "wecom": {"type": "console"}},
    )  # fmt: skip
    rig, robot = sms_and_robot_rig(tmp_path, policy, aliyun)
    # A low battery, not critical: not held until the next day behind the SMS limit.
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert [n.receiver for n in robot.sent] == ["wang-fang"]
    # Nor is the next alert, and Aliyun is not asked again for the number meanwhile.
    rig.feed(reading(WRIST, 600, battery_pct=10))
    await rig.after(600)
    assert len(robot.sent) == 2
    assert len(aliyun.requests) == 1
    # A day on, the number takes SMS again.
    rig.feed(Event(SMOKE, T0 + 86_401_000, TimeSource.DEVICE, "tamper", {}))
    await rig.after(86_401 - 600)
    assert len(aliyun.requests) == 2
    assert len(robot.sent) == 2


@pytest.mark.parametrize(
    ("answer", "asked"),
    [
        # The account's own rate limit: no number gets an SMS meanwhile.
        ((400, {"Code": "Throttling.User", "Message": "Request was denied due to user flow control."}), 1),
        # A number's: another number still does.
        ((200, {"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发分钟级流控"}), 2),
    ],
)  # fmt: skip
async def test_over_the_account_s_limit_the_next_receiver_s_sms_is_not_asked_for(
    tmp_path: Path, answer: tuple[int, dict[str, object]], asked: int
) -> None:
    # A fire, told to the grid worker at once and to the community office half a minute
    # later: with the account over its limit, the office's SMS is not tried and refused
    # first, a request and its answer before the next channel, but goes by it at once.
    aliyun = AliyunAnswers(answer)
    sms = {"type": "aliyun_sms", "access_key_id": "id", "access_key_secret": "secret",
           "sign_name": "湖光苑社区", "template_code": "SMS_1", "params": ["title"],
           "url": "https://dysmsapi.example.cn/"}  # fmt: skip
    policy = NotifyPolicy.model_validate(
        {
            "channels": {"sms": sms, "wecom": {"type": "console"}},
            "receivers": [
                {"name": "wang-fang", "phone": "13800000001", "channels": ["sms", "wecom"]},
                {"name": "office", "phone": "13800000004", "channels": ["sms", "wecom"]},
            ],
            "routes": [{"escalation": "fire"}],
            "escalations": {
                "fire": [{"after_s": 0, "to": ["wang-fang"]}, {"after_s": 30, "to": ["office"]}]
            },
        }
    )
    rig, robot = sms_and_robot_rig(tmp_path, policy, aliyun)
    rig.feed(reading(SMOKE, 0, alarm=True))
    await rig.after(0)
    await rig.after(30)
    assert [n.receiver for n in robot.sent] == ["wang-fang", "office"]
    assert len(aliyun.requests) == asked


@pytest.mark.usefixtures("example_secrets")
async def test_the_shipped_sms_template_tells_an_all_clear_as_an_all_clear(tmp_path: Path) -> None:
    # The shipped SMS template's words are an alarm's: the title says an all-clear is one.
    (tmp_path / "notify.yaml").write_text(
        (PROJECT_ROOT / "deploy" / "notify.example.yaml").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    (tmp_path / "gateway.yaml").write_text("mqtt: null\nnotify: notify.yaml\n", encoding="utf-8")
    shipped = load_config(tmp_path / "gateway.yaml").notify
    assert shipped is not None
    sms = shipped.channels["sms"]
    assert isinstance(sms, AliyunSmsChannel)
    aliyun = AliyunAnswers()
    rig = sms_rig(tmp_path, sms_policy(list(sms.params)), aliyun)
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    # A new battery, and still so at the next hourly report: the all-clear.
    rig.feed(reading(SMOKE, 3600, battery_pct=100), reading(SMOKE, 7200, battery_pct=100))
    await rig.after(7200)
    firing, resolved = (json.loads(r["TemplateParam"]) for r in aliyun.requests)
    assert resolved["title"] == "【已恢复】" + firing["title"]


# --- what a provider takes ------------------------------------------------------------------


async def test_a_wecom_digest_stays_within_what_a_wecom_text_message_takes(
    tmp_path: Path,
) -> None:
    # Thirty low batteries within a minute: the robot's 20 a minute go one by one, and
    # the other ten in digests that WeCom takes, 2048 bytes of text at most.
    sizes: list[int] = []

    def wecom(request: httpx.Request) -> httpx.Response:
        content = json.loads(request.content)["text"]["content"]
        sizes.append(len(content.encode()))
        if sizes[-1] > 2048:
            return httpx.Response(
                200, json={"errcode": 40058, "errmsg": "content exceed max length"}
            )
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})

    devices = [f"sd-{n}" for n in range(1, 31)]
    registry = Registry([
        RegisteredDevice(device_id=d, device_type="smoke_detector", community="hgy",
                         area="east", building="3") for d in devices
    ])  # fmt: skip
    policy = told_at_once(
        "wang-fang", "13800000001",
        {"wecom": {"type": "wecom", "key": "k", "url": "https://wecom.example.cn/"}},
    )  # fmt: skip
    config = policy.channels["wecom"]
    assert isinstance(config, WecomChannel)
    robot = WecomRobot("wecom", config, httpx.AsyncClient(transport=httpx.MockTransport(wecom)))
    rig = Rig(tmp_path / "outbox.sqlite3", policy=policy, registry=registry,
              channels={"wecom": robot})  # type: ignore[dict-item]  # fmt: skip
    for device in devices:
        rig.feed(reading(SMOKE._replace(device_id=device), 0, battery_pct=10))
    await rig.after(0)
    assert len(sizes) == 20
    await rig.after(60)
    assert len(sizes) > 20
    undelivered = [
        a.alert_id
        for alert in rig.book.open_alerts()
        for a in rig.log.attempts(alert.alert_id)
        if a.result is AttemptResult.UNDELIVERED
    ]
    assert undelivered == [], (sizes[20:], len(undelivered))
    assert max(sizes) <= 2048


async def test_an_all_clear_is_not_called_but_goes_by_the_next_channel(tmp_path: Path) -> None:
    # A call's template reads out an alarm and tells the receiver to go.
    policy = told_at_once(
        "office", "13800000004", {"voice": {"type": "console"}, "office-robot": {"type": "console"}}
    )
    voice = FakeChannel("voice", needs_phone=True, digests=False, links=False,
                        tells_clearing=False)  # fmt: skip
    robot = FakeChannel("office-robot")
    rig = Rig(tmp_path / "outbox.sqlite3", policy=policy,
              channels={"voice": voice, "office-robot": robot})  # fmt: skip
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    rig.feed(reading(SMOKE, 3600, battery_pct=100), reading(SMOKE, 7200, battery_pct=100))
    await rig.after(7200)
    assert [n.kind for n in voice.sent] == ["firing"]
    assert [n.kind for n in robot.sent] == ["firing", "resolved"]


class TencentAnswers:
    """A local stand-in for Tencent's SendSms: the first answers in turn (as the number's
    `SendStatusSet` entry), then Ok; records the numbers it was asked for."""

    def __init__(self, *codes: str) -> None:
        self.codes = list(codes)
        self.numbers: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.numbers.extend(body["PhoneNumberSet"])
        code = self.codes.pop(0) if self.codes else "Ok"
        status = {"Code": code, "Message": code, "PhoneNumber": body["PhoneNumberSet"][0]}
        return httpx.Response(200, json={"Response": {"SendStatusSet": [status], "RequestId": "r"}})


@pytest.mark.parametrize(
    "code",
    [
        "LimitExceeded.AppGlobalDailyLimit",  # international and Hong Kong numbers'
        "LimitExceeded.DailyLimit",  # the same, as Tencent's older code
        "LimitExceeded.AppCountryOrRegionDailyLimit",  # one region's
    ],
)
async def test_tencent_s_limit_for_hong_kong_numbers_does_not_hold_mainland_ones(
    tmp_path: Path, code: str
) -> None:
    # The property manager's Hong Kong number reaches the application's international
    # quota: the mainland grid worker, reached by SMS alone, still gets the fire.
    tencent = TencentAnswers(code)
    policy = NotifyPolicy.model_validate(
        {
            "channels": {
                "sms": {"type": "tencent_sms", "secret_id": "AKIDx", "secret_key": "tkey",
                        "sdk_app_id": "1400000000", "sign_name": "湖光苑",
                        "template_id": "100", "url": "https://sms.example.cn/"},
            },
            "receivers": [
                {"name": "hk-manager", "phone": "+852 9123 4567", "channels": ["sms"]},
                {"name": "wang-fang", "phone": "13800000001", "channels": ["sms"]},
            ],
            "routes": [{"escalation": "fire"}],
            "escalations": {
                "fire": [{"after_s": 0, "to": ["hk-manager"]},
                         {"after_s": 30, "to": ["wang-fang"]}],
            },
        }
    )  # fmt: skip
    clock = ManualClock(T0)
    config = policy.channels["sms"]
    assert isinstance(config, TencentSmsChannel)
    http = httpx.AsyncClient(transport=httpx.MockTransport(tencent))
    rig = Rig(tmp_path / "outbox.sqlite3", clock=clock, policy=policy,
              channels={"sms": TencentSms("sms", config, http, clock)})  # type: ignore[dict-item]  # fmt: skip
    rig.feed(reading(SMOKE, 0, alarm=True))
    await rig.after(0)
    assert tencent.numbers == ["+85291234567"]
    await rig.after(30)
    assert tencent.numbers == ["+85291234567", "+8613800000001"]


async def a_tamper_waiting_for_a_digest(tmp_path: Path) -> Rig:
    """A low battery told by a robot that takes one message a minute, and a tamper of
    the same detector within the minute, waiting to go out in a digest."""
    rig = Rig(tmp_path / "outbox.sqlite3", limits=(Limit(1, 60.0),))
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    rig.feed(Event(SMOKE, T0 + 1000, TimeSource.DEVICE, "tamper", {}))
    await rig.after(1)
    return rig


async def test_a_digest_in_a_retry_is_not_held_for_hours_by_a_clock_set_back(
    tmp_path: Path,
) -> None:
    rig = await a_tamper_waiting_for_a_digest(tmp_path)
    # The digest meets a busy provider: tried again after a backoff of a few seconds.
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    await rig.after(59)
    assert [s for s in rig.sent() if s[2] == "digest"] == []
    # NTP sets the clock back an hour meanwhile: 07:01, just after wang-fang's quiet
    # hours, which would hold the tamper until they end.
    rig.clock.step(-3600)
    # The robot takes one message a minute: a minute later the digest goes, not 1 h on.
    for _ in range(3):
        await rig.after(30)
    assert [s for s in rig.sent() if s[2] == "digest"] == [("wecom", "wang-fang", "digest")]


async def test_a_clock_set_back_while_a_round_fails_holds_no_escalation_for_hours(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    await rig.after(0)
    assert len(rig.sent()) == 2
    # NTP sets the clock back two hours, and the round that sees it fails (the log's
    # file locked): it is rolled back and tried again, as README says.
    rig.clock.step(-2 * 3600)
    due_steps = rig.log.due_steps
    failures = [sqlite3.OperationalError("database is locked")]

    def locked_once(now_ms: int):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return due_steps(now_ms)

    rig.log.due_steps = locked_once  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        await rig.after(1)
    await rig.after(0)
    # Three minutes after the fall, as without the step: the office and a call.
    await rig.after(179)
    assert ("office-robot", "office", "firing") in rig.sent()


async def test_a_notice_held_for_quiet_hours_goes_when_they_end_though_ntp_set_the_clock(
    tmp_path: Path,
) -> None:
    # The box booted with its clock two hours behind: it reads 23:00 at 01:00.
    rig = Rig(tmp_path / "outbox.sqlite3", clock=ManualClock(T0 + 15 * 3600_000))
    wang_fang_on_duty_around_the_clock(rig)
    rig.feed(Reading(SMOKE, rig.clock.now_ms(), TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(0)
    assert rig.sent() == []  # held until her quiet hours end at 07:00
    # NTP sets the clock right: 01:00.
    rig.clock.step(2 * 3600)
    await rig.after(1)
    # 07:00: her quiet hours are over, and the low battery is told then, not at 09:00.
    await rig.after(6 * 3600)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]


async def test_a_digest_refused_for_a_day_goes_by_the_next_channel_not_the_next_day(
    tmp_path: Path,
) -> None:
    rig = await a_tamper_waiting_for_a_digest(tmp_path)
    # The robot's digest is refused: over a limit that lasts until tomorrow.
    rig.channels["wecom"].errors.append(NotifyError(  # type: ignore[attr-defined]
        "over the daily limit", retryable=True, rate_limited=True, retry_after_s=86_400.0))  # fmt: skip
    await rig.after(59)
    # As any notice over a limit lasting more than an hour: the next channel, now.
    for _ in range(3):
        await rig.after(1)
    assert ("sms", "wang-fang", "firing") in rig.sent()


async def test_one_told_by_sms_whose_link_was_still_to_come_hears_the_all_clear(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    # wang-fang is reached by SMS first, whose template carries no link, then by WeCom.
    policy = POLICY.model_copy(update={"receivers": tuple(
        r.model_copy(update={"channels": ("sms", "wecom")}) if r.name == "wang-fang" else r
        for r in POLICY.receivers)})  # fmt: skip
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    rig.channels["wecom"].errors.append(NotifyError("busy", retryable=True))  # type: ignore[attr-defined]
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    # Told by SMS; the WeCom message with the link waits for a retry.
    assert rig.sent() == [("sms", "wang-fang", "firing")]
    # A new battery meanwhile: the alert is over.
    rig.feed(reading(SMOKE, 3600, battery_pct=100), reading(SMOKE, 7200, battery_pct=100))
    await rig.after(1)
    await rig.after(10)
    # She was told it was low: she hears that it is over.
    assert [s for s in rig.sent() if s[2] == "resolved"] != []


def routing_policy(rosters: list[dict[str, object]], routes: list[dict[str, object]] | None = None,
                ) -> NotifyPolicy:  # fmt: skip
    # Grid workers of the east area and of the lakeside compound, and the office as the
    # fallback.
    return NotifyPolicy.model_validate(
        {
            "channels": {"app": {"type": "console"}},
            "receivers": [
                {"name": "area-worker", "channels": ["app"]},
                {"name": "lake-worker", "channels": ["app"]},
                {"name": "wang-fang", "channels": ["app"]},
                {"name": "office", "channels": ["app"]},
            ],
            "rosters": rosters,
            "routes": routes or [{"escalation": "grid"}],
            "escalations": {
                "grid": [{"after_s": 0, "to": ["on_duty"]}],
                "fire": [{"after_s": 0, "to": ["on_duty", "office"]}],
            },
            "fallback_receivers": ["office"],
        }
    )


def test_a_compound_s_roster_outranks_its_area_s_though_it_names_no_area() -> None:
    # A compound's cell written without its area is more specific than the area's,
    # listed before it: the compound's own grid worker, on duty, is told.
    registry = Registry(
        [RegisteredDevice(device_id="sd-1", device_type="smoke_detector", community="hgy",
                          area="east", compound="lakeside", building="3")]
    )  # fmt: skip
    policy = routing_policy(
        [
            {"cell": {"community": "hgy", "area": "east"},
             "shifts": [{"receiver": "area-worker"}]},
            # Compound names do not repeat within a community: its area need not be named.
            {"cell": {"community": "hgy", "compound": "lakeside"},
             "shifts": [{"receiver": "lake-worker"}]},
        ]
    )  # fmt: skip
    router = Router(policy, registry, ZONE)
    on_duty = router.on_duty(("hgy", "east", "lakeside", "3"), "hgy", T0)
    # The most specific cell with someone on shift.
    assert [r.name for r in on_duty] == ["lake-worker"]


def test_a_building_fire_where_one_compound_of_its_name_has_nobody_on_duty_tells_the_fallback(
    tmp_path: Path,
) -> None:
    # 3号楼 stands in two compounds, and nobody is on duty for 西区's, which is on fire:
    # the fallback receivers are told, not 东区's grid worker.
    lakeside, jade = ("东区", "湖光小区"), ("西区", "翠苑")
    registry, _, _, fire = building_on_fire(
        tmp_path, {"sd-1": jade, "sd-2": jade, "sd-9": lakeside}
    )
    policy = routing_policy(
        [{"cell": {"community": "hgy", "area": "东区"}, "shifts": [{"receiver": "wang-fang"}]}]
    )
    router = Router(policy, registry, ZONE)
    (step,) = policy.escalations["grid"]
    assert [t.receiver for t in router.targets(step, fire, T0)] == ["office"]


def test_an_alert_about_a_whole_community_goes_by_its_rules_device_types_to_every_cell(
    tmp_path: Path,
) -> None:
    # Fires across the community (a rule with place: community): the smoke detectors'
    # route takes it, and those on duty in each of the community's cells hear of it.
    lakeside, jade = ("东区", "湖光小区"), ("西区", "翠苑")
    detectors = {"sd-1": lakeside, "sd-2": lakeside, "sd-9": jade}
    registry, _, _, fire = building_on_fire(tmp_path, detectors)
    everywhere = replace(fire, rule="community_fire", device_type="community", device_id="hgy")
    policy = routing_policy(
        [{"cell": {"community": "hgy", "area": "东区"}, "shifts": [{"receiver": "wang-fang"}]}],
        [{"match": {"device_types": ["smoke_detector"]}, "escalation": "fire"},
         {"escalation": "grid"}],
    )  # fmt: skip
    router = Router(policy, registry, ZONE, lambda rule: ("smoke_detector",))
    assert [r.escalation for r in router.routes(everywhere)] == ["fire"]
    (step,) = policy.escalations["fire"]
    # 西区 has nobody on duty: the fallback receivers stand in for it.
    assert [t.receiver for t in router.targets(step, everywhere, T0)] == ["wang-fang", "office"]


async def test_those_told_before_a_reload_renamed_their_chain_hear_the_all_clear(
    tmp_path: Path,
) -> None:
    # The grid worker told of a fire alarm before a reload renamed its escalation chain
    # hears that it is over, as the secretary told after the reload does.
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(SMOKE, 0, alarm=True))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    # "critical" renamed "life" at a reload: the alert's remaining steps go by "life".
    policy = reloaded(
        [{"match": {"severities": ["warning", "info"]}, "escalation": "normal"},
         {"escalation": "life"}],
        {"life": [{"after_s": 0, "to": ["on_duty"]}, {"after_s": 120, "to": ["secretary"]}],
         "normal": [{"after_s": 0, "to": ["on_duty"]}]},
    )  # fmt: skip
    rig.notifier.use_policy(policy, Router(policy, REGISTRY, ZONE), dict(rig.channels))
    await rig.after(180)
    assert ("sms", "secretary", "firing") in rig.sent()
    # The alarm clears, and stays clear.
    rig.feed(reading(SMOKE, 200, alarm=False), reading(SMOKE, 900, alarm=False))
    await rig.after(720)
    resolved = sorted(s for s in rig.sent() if s[2] == "resolved")
    # Those told of an alert, at any step, hear when it clears, once.
    assert resolved == [("sms", "secretary", "resolved"), ("wecom", "wang-fang", "resolved")]


async def test_a_fall_an_operator_took_before_it_was_planned_still_reaches_the_family(
    tmp_path: Path,
) -> None:
    # A fall committed just before a crash (or while rounds of notifications fail) and
    # acknowledged meanwhile from the dashboard: the wearer's family is still told.
    rig = Rig(tmp_path / "outbox.sqlite3")
    # Committed; the process died before planning its notifications.
    rig.feed(fall(), announce=False)
    (entry,) = rig.book.open_alerts()
    # The operator at the big screen takes it meanwhile.
    await rig.desk.acknowledge(entry.alert_id, "operator")
    rig.restart()
    rig.notifier.recover()
    await rig.after(0)
    # What the first step owes others still goes out when critical; an alert that
    # fired before a crash is found in the alert book at start-up.
    assert ("sms", "contact:+8613900000009", "firing") in rig.sent()
    # The escalation itself stays stopped.
    await rig.after(600)
    assert ("sms", "secretary", "firing") not in rig.sent()


def test_a_route_for_smoke_detectors_takes_the_building_fire_they_raise(
    tmp_path: Path,
) -> None:
    # A route for smoke detectors (a fire chain) takes all their alerts, the worst one
    # too: several detectors of a building alarming, an alert about the building, which
    # no route could name by its type.
    lakeside = ("东区", "湖光小区")
    registry, _, _, fire = building_on_fire(tmp_path, {"sd-1": lakeside, "sd-2": lakeside})
    policy = routing_policy(
        [{"cell": {"community": "hgy", "area": "东区"}, "shifts": [{"receiver": "wang-fang"}]}],
        [{"match": {"device_types": ["smoke_detector"]}, "escalation": "fire"},
         {"escalation": "grid"}],
    )  # fmt: skip
    shipped = {r.name: r.spec.device_types for r in shipped_rules()}
    router = Router(policy, registry, ZONE, lambda rule: shipped.get(rule, ()))
    # The rule says so: `building_fire` has `device_types: [smoke_detector]`.
    assert [r.escalation for r in router.routes(fire)] == ["fire"]


async def test_a_fall_s_sms_to_the_family_is_not_queued_behind_a_hung_group_robot(
    tmp_path: Path,
) -> None:
    # A fall's SMS to the family goes at once, though twenty low-battery notices hang on
    # a group robot that no longer answers: sends wait for a slot of their own channel, and
    # critical ones never behind the others.
    detectors = [
        RegisteredDevice(device_id=f"sd-{n}", device_type="smoke_detector", community="hgy",
                         area="east", building="3")
        for n in range(2, 22)
    ]  # fmt: skip
    rig = Rig(tmp_path / "outbox.sqlite3", registry=Registry([*REGISTRY.devices(), *detectors]))
    # WeCom takes 20 messages a minute; this one takes them and does not answer.
    wecom = HangingChannel("wecom", limits=(Limit(20, 60.0),))
    rig.channels["wecom"] = rig.notifier.channels["wecom"] = wecom
    rig.notifier.stop_grace_s = 0
    runner = asyncio.create_task(rig.notifier.run())
    try:
        await settle()
        for device in detectors:
            ref = DeviceRef("hgy", "smoke_detector", device.device_id)
            rig.feed(Reading(ref, T0, TimeSource.DEVICE, {"battery_pct": 10}))
        await settle()
        assert wecom.started == 16
        rig.feed(fall())
        await settle()
        assert ("sms", "contact:+8613900000009", "firing") in rig.sent()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_the_all_clear_of_an_alert_closed_while_it_held_is_told_after_a_crash(
    tmp_path: Path,
) -> None:
    # An alert a person closed while its condition held, which then cleared just before a
    # crash: those told of it hear its all-clear after the start.
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert rig.sent() == [("wecom", "wang-fang", "firing")]
    (alert,) = rig.book.open_alerts()
    await rig.desk.close(alert.alert_id, "wang-fang", "a new battery is ordered")
    # The new battery, still so at the next hourly report: committed, and the process
    # died before telling anyone.
    rig.feed(reading(SMOKE, 3600, battery_pct=100), reading(SMOKE, 7200, battery_pct=100),
             announce=False)  # fmt: skip
    assert rig.book.get(alert.alert_id).resolved_ms is not None
    rig.restart()
    rig.notifier.recover()
    await rig.after(7200)
    assert rig.sent() == [("wecom", "wang-fang", "resolved")]


async def test_a_digest_s_headline_does_not_understate_the_most_severe_alert_in_it(
    tmp_path: Path,
) -> None:
    # A digest is headed by the most severe of its alerts, not by the one that waited
    # longest: a racing heart behind a low battery is 重要, not 提示.
    # The community office's robot has taken its message of these three hours.
    robot = FakeChannel("office-robot", limits=(Limit(1, 3 * 3600.0),))
    rig = Rig(tmp_path / "outbox.sqlite3", policy=one_robot_policy(),
              channels={"office-robot": robot})  # fmt: skip
    rig.feed(reading(SMOKE, 0, battery_pct=10))
    await rig.after(0)
    assert [n.kind for n in robot.sent] == ["firing"]
    # Then the bracelet's battery runs low, and its wearer's heart races for a minute.
    rig.feed(Reading(WRIST, T0 + 1000, TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(1)
    for at_s in (2, 62):
        rig.feed(Reading(WRIST, T0 + at_s * 1000, TimeSource.DEVICE,
                         {"worn": True, "heart_rate_bpm": 190}))  # fmt: skip
        await rig.after(at_s - 1 if at_s == 2 else 60)
    assert {e.rule for e in rig.book.open_alerts()} >= {"bracelet_low_battery",
                                                       "abnormal_heart_rate"}  # fmt: skip
    await rig.after(3 * 3600)
    (digest,) = [n for n in robot.sent if n.kind == "digest"]
    assert len(digest.lines) == 2
    assert digest.headline() == "【重要告警汇总】2 条告警"


async def test_notification_points_are_not_dropped_when_the_outbox_refuses_one_commit(
    tmp_path: Path,
) -> None:
    # The points of a round whose commit the outbox refused are kept for the next: the
    # dashboard shows the fall was told.
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.feed(fall())
    commit = rig.outbox.commit
    refusals = [StoreError("the outbox cannot commit: disk I/O error", retryable=True)]

    def refused_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        if refusals:
            raise refusals.pop()
        return commit(*args, **kwargs)

    rig.outbox.commit = refused_once  # type: ignore[method-assign]
    # The fall is told; the round that would store its points meets the refusal.
    with contextlib.suppress(StoreError):
        await rig.after(0)
    assert not refusals
    assert len(rig.sent()) == 2
    # The outbox takes commits again; the next rounds store what they hold.
    for _ in range(3):
        await rig.after(1)
    assert len(rig.lines("notification")) == 2


async def test_a_notice_held_for_quiet_hours_arrives_with_a_link_that_still_opens(
    tmp_path: Path,
) -> None:
    # A notice held for the night carries a link whose time runs from the morning: with
    # links valid for an hour, it still opens at 07:00.
    rig = Rig(tmp_path / "outbox.sqlite3", clock=ManualClock(T0 + 15 * 3600_000))
    wang_fang_on_duty_around_the_clock(rig)
    rig.feed(Reading(SMOKE, (T0 + 15 * 3600_000), TimeSource.DEVICE, {"battery_pct": 10}))
    await rig.after(0)
    assert rig.sent() == []
    await rig.after(8 * 3600)  # 07:00
    (notice,) = rig.channels["wecom"].sent  # type: ignore[attr-defined]
    token = notice.link.rsplit("/a/", 1)[1]
    link = LinkSigner("secret", "https://gw.example.cn", 3600).verify(token, rig.clock.now_ms())
    assert link.receiver == "wang-fang"
