"""The gateway's own faults told to people from memory: when, to whom, by which channel,
again while they last, and once more when they are over."""

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from gateway.clock import ManualClock
from gateway.errors import NotifyError
from gateway.notify.channel import Channel, Limit
from gateway.notify.fault import (
    PROBLEMS_ZH,
    RETRY_S,
    FaultWatch,
    fault_place,
    fault_state_path,
)
from gateway.notify.hooks import notice_document
from gateway.notify.notice import Notice
from gateway.notify.policy import NotifyPolicy
from gateway.notify.robots import WecomRobot
from gateway.stats import Stats
from tests.unit.notify.notices import FakeChannel, HangingChannel

T0 = 1_767_225_600_000
HOUR_S = 3600.0
DAY_S = 86_400.0
ZONE = ZoneInfo("Asia/Shanghai")


def policy(**faults: Any) -> NotifyPolicy:
    document: dict[str, Any] = {
        "channels": {"robot": {"type": "console"}, "sms": {"type": "console"},
                     "voice": {"type": "console"}},
        "receivers": [
            {"name": "office", "display_name": "社区办公室", "phone": "0371-66123456",
             "channels": ["robot", "sms"]},
            {"name": "secretary", "phone": "13800000006", "channels": ["sms"]},
            {"name": "wang-fang", "channels": ["robot"]},
            {"name": "night-duty", "phone": "13800000007", "channels": ["voice"]},
        ],
        "routes": [{"escalation": "all"}],
        "escalations": {"all": [{"after_s": 0, "to": ["on_duty"]}]},
        "fallback_receivers": ["office"],
    }  # fmt: skip
    if faults:
        document["gateway_faults"] = faults
    return NotifyPolicy.model_validate(document)


@dataclass
class Reach:
    policy: NotifyPolicy
    channels: dict[str, Channel] = field(
        default_factory=lambda: {
            "robot": FakeChannel("robot"),
            "sms": FakeChannel("sms", needs_phone=True),
            # A phone call, whose template reads out an alarm.
            "voice": FakeChannel("voice", needs_phone=True, tells_clearing=False),
        }
    )

    def sent(self, name: str) -> list[Notice]:
        channel = self.channels[name]
        assert isinstance(channel, FakeChannel)
        return channel.sent

    def fail(self, name: str, times: int = 1) -> None:
        channel = self.channels[name]
        assert isinstance(channel, FakeChannel)
        channel.errors.extend(NotifyError("provider down", retryable=True) for _ in range(times))


class Rig:
    def __init__(self, notify: NotifyPolicy, path: Path | None = None) -> None:
        self.clock = ManualClock(T0)
        self.reach = Reach(notify)
        self.problems: dict[str, str] = {}
        self.stats = Stats()
        self.path = path
        self.watch = self._watch()

    def _watch(self) -> FaultWatch:
        return FaultWatch(
            lambda: self.problems, self.reach, instance="gw-hgy", communities=("hgy",),
            clock=self.clock, stats=self.stats, zone=ZONE, path=self.path,
        )  # fmt: skip

    def restart(self) -> None:
        """A new watch on the same file, as a gateway started again makes."""
        self.watch = self._watch()

    async def stop_and_restart(self) -> None:
        """A stop that was asked for, and a start."""
        await self.watch.stopped()
        self.restart()

    def move_to(self, seconds: float) -> None:
        """To `seconds` of elapsed (monotonic) time after T0, however the wall clock was
        set meanwhile."""
        self.clock.advance(seconds - (self.clock.monotonic_s() - T0 / 1000))

    async def at(self, seconds: float) -> None:
        """Moves the clock to `seconds` of elapsed time after T0, looks once, and lets what
        it keeps be written."""
        self.move_to(seconds)
        await self.watch.check()
        await self.watch.settle()

    def told(self) -> list[tuple[str, str, str]]:
        """(channel, receiver, kind) of every notice sent."""
        return [(name, n.receiver, n.kind) for name in ("robot", "sms", "voice")
                for n in self.reach.sent(name)]  # fmt: skip


async def test_a_fault_that_lasts_is_told_to_the_fallback_receivers_with_what_is_wrong() -> None:
    rig = Rig(policy())
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    await rig.at(59)
    assert rig.told() == []
    await rig.at(60)
    assert rig.told() == [("robot", "office", "fault")]
    (notice,) = rig.reach.sent("robot")
    assert notice.headline() == "【网关故障】告警可能无法送达"
    assert notice.text().split("\n") == [
        "【网关故障】告警可能无法送达",
        "网关: hgy gw-hgy",
        "自: 2026-01-01 08:00",
        "数据无法保存，告警积压在消息服务器: main: disk I/O error",
    ]
    assert notice.key == f"gateway-fault/gw-hgy/{T0}/0/office/fault"
    assert notice.template_values()["title"] == "告警可能无法送达"
    document = notice_document(notice)
    assert (document["kind"], document["state"], document["receiver"]) == (
        "fault", "firing", "office",
    )  # fmt: skip
    assert rig.stats.notifications[("robot", "sent")] == 1
    # Not again while it lasts, before the repeat is due.
    await rig.at(600)
    assert len(rig.told()) == 1


async def test_a_fault_over_before_its_time_is_told_to_nobody() -> None:
    rig = Rig(policy())
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    await rig.at(30)
    rig.problems = {}
    await rig.at(31)
    # Back again: its time counts from now.
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(40)
    await rig.at(99)
    assert rig.told() == []
    await rig.at(100)
    assert rig.told() == [("robot", "office", "fault")]


async def test_the_receivers_named_are_told_each_by_the_first_channel_that_takes_it() -> None:
    rig = Rig(policy(after_s=0, to=["secretary", "office"]))
    rig.reach.fail("robot")
    rig.problems = {"notifications": "OperationalError: disk I/O error"}
    await rig.at(0)
    # The office's robot failed: its SMS took it, to the office's number.
    assert sorted(rig.told()) == [("sms", "office", "fault"), ("sms", "secretary", "fault")]
    assert {n.phone for n in rig.reach.sent("sms")} == {"+8637166123456", "+8613800000006"}
    assert rig.stats.notifications[("robot", "failed")] == 1


async def test_a_channel_that_cannot_confirm_it_was_read_is_followed_by_the_next() -> None:
    rig = Rig(policy(after_s=0, to=["office"]))
    # The office's first channel an app over MQTT: the broker takes a notice whether or
    # not the app is there to read it.
    rig.reach.channels["robot"].confirms = False
    rig.problems = {"notifications": "OperationalError: disk I/O error"}
    await rig.at(0)
    assert sorted(rig.told()) == [("robot", "office", "fault"), ("sms", "office", "fault")]
    # Told once: not again as a receiver no channel reached.
    await rig.at(RETRY_S)
    assert len(rig.told()) == 2


async def test_a_receiver_no_channel_reached_is_tried_again() -> None:
    rig = Rig(policy(after_s=0, to=["secretary"]))
    rig.reach.fail("sms", times=2)
    rig.problems = {"outbox": "main: database or disk is full"}
    await rig.at(0)
    await rig.at(RETRY_S - 1)
    assert rig.told() == []
    await rig.at(RETRY_S)
    assert rig.told() == []
    await rig.at(2 * RETRY_S)
    assert rig.told() == [("sms", "secretary", "fault")]
    await rig.at(3 * RETRY_S)
    assert len(rig.told()) == 1


async def test_a_channel_over_its_limit_is_passed_over() -> None:
    rig = Rig(policy(after_s=0))
    rig.reach.channels["robot"] = FakeChannel("robot", limits=(Limit(1, 60.0),))
    rig.reach.channels["robot"].limiter.note(None, T0 / 1000)
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    assert rig.told() == [("sms", "office", "fault")]


async def test_a_fault_that_goes_on_is_told_again_and_its_end_to_those_who_heard() -> None:
    rig = Rig(policy(after_s=10, repeat_s=3600, to=["office", "secretary"]))
    rig.reach.fail("sms", times=100)
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    await rig.at(10)
    # Only the office heard of it: the secretary's only channel fails.
    assert rig.told() == [("robot", "office", "fault")]
    rig.problems["broker"] = "not connected to 127.0.0.1:1883"
    await rig.at(3610)
    assert rig.told() == [("robot", "office", "fault")] * 2
    again = rig.reach.sent("robot")[1]
    assert again.key == f"gateway-fault/gw-hgy/{T0}/1/office/fault"
    assert len(again.lines) == 2 and again.lines[0].startswith("与消息服务器的连接中断")
    rig.problems = {}
    await rig.at(3615)
    await rig.at(3624)
    assert len(rig.told()) == 2
    await rig.at(3625)
    over = rig.reach.sent("robot")[2]
    assert (over.receiver, over.kind, over.title) == (
        "office", "fault_cleared", "故障已排除，积压的告警正在处理",
    )  # fmt: skip
    assert over.headline() == "【网关恢复】故障已排除，积压的告警正在处理"
    assert notice_document(over)["state"] == "resolved"
    # The secretary, never told of the fault, is not told of its end, nor tried again.
    rig.reach.channels["sms"] = FakeChannel("sms", needs_phone=True)
    await rig.at(3625 + 2 * RETRY_S)
    assert rig.told() == [("robot", "office", "fault")] * 2 + [("robot", "office", "fault_cleared")]
    # A fault after that is a new one, with a key of its own.
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(4000)
    await rig.at(4010)
    newest = rig.reach.sent("robot")[-1]
    assert newest.key == f"gateway-fault/gw-hgy/{T0 + 4_000_000}/0/office/fault"


async def test_with_no_repeat_a_fault_is_told_once() -> None:
    rig = Rig(policy(after_s=0, repeat_s=None))
    rig.problems = {"outbox": "main: disk I/O error"}
    for second in (0, 3600, 7200, 86400):
        await rig.at(second)
    assert rig.told() == [("robot", "office", "fault")]


async def test_a_reloaded_policy_is_followed() -> None:
    rig = Rig(policy(after_s=0))
    rig.reach.policy = policy(after_s=0, to=["wang-fang"])
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    assert rig.told() == [("robot", "wang-fang", "fault")]


def test_a_fault_receiver_the_policy_does_not_have_is_named() -> None:
    with pytest.raises(ValidationError, match=r"gateway_faults.to: no receiver 'ofice'"):
        policy(to=["ofice"])
    with pytest.raises(ValidationError, match=r"gateway_faults.after_s"):
        policy(after_s=-1)


async def test_after_a_restart_those_told_of_a_fault_hear_of_its_end(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=10, to=["office", "secretary"]), tmp_path / "outbox.faults.json")
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    await rig.at(10)
    assert sorted(rig.told()) == [("robot", "office", "fault"), ("sms", "secretary", "fault")]
    await rig.stop_and_restart()
    rig.problems = {}
    await rig.at(300)
    await rig.at(309)
    assert len(rig.told()) == 2
    await rig.at(310)
    assert sorted(rig.told()) == [
        ("robot", "office", "fault"), ("robot", "office", "fault_cleared"),
        ("sms", "secretary", "fault"), ("sms", "secretary", "fault_cleared"),
    ]  # fmt: skip
    assert rig.reach.sent("robot")[-1].key == f"gateway-fault/gw-hgy/{T0}/0/office/fault_cleared"
    # And once only, across a restart too.
    await rig.stop_and_restart()
    await rig.at(400)
    await rig.at(4000)
    assert len(rig.told()) == 4


async def test_a_fault_that_goes_on_across_a_restart_is_the_same_fault(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=10, repeat_s=3600), tmp_path / "outbox.faults.json")
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    await rig.at(10)
    rig.restart()
    # Not told as new, at the new start's `after_s` nor later, until the repeat is due.
    for second in (60, 70, 3609):
        await rig.at(second)
    assert rig.told() == [("robot", "office", "fault")]
    await rig.at(3610)
    assert rig.told() == [("robot", "office", "fault")] * 2
    assert rig.reach.sent("robot")[-1].key == f"gateway-fault/gw-hgy/{T0}/1/office/fault"
    assert rig.watch.since_ms == T0


async def test_a_notice_owed_at_a_restart_is_still_sent(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=0, to=["secretary"]), tmp_path / "outbox.faults.json")
    rig.reach.fail("sms")
    rig.problems = {"outbox": "main: database or disk is full"}
    await rig.at(0)
    assert rig.told() == []
    rig.restart()
    await rig.at(RETRY_S - 1)
    assert rig.told() == []
    await rig.at(RETRY_S)
    assert rig.told() == [("sms", "secretary", "fault")]
    (notice,) = rig.reach.sent("sms")
    assert notice.lines == ("数据无法保存，告警积压在消息服务器: main: database or disk is full",)
    assert notice.key == f"gateway-fault/gw-hgy/{T0}/0/secretary/fault"


async def test_a_receiver_the_policy_no_longer_names_is_owed_nothing(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=0, to=["secretary"]), tmp_path / "outbox.faults.json")
    rig.reach.fail("sms")
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    rig.reach.policy = policy(after_s=0, to=["wang-fang"])
    rig.restart()
    await rig.at(RETRY_S)
    await rig.at(3 * RETRY_S)
    assert [told for told in rig.told() if told[1] == "secretary"] == []


async def test_a_disk_that_takes_no_writes_keeps_nothing_but_stops_no_news(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "var"
    rig = Rig(policy(after_s=0), fault_state_path(folder / "outbox.sqlite3"))
    rig.problems = {"outbox": "main: disk I/O error"}
    with caplog.at_level(logging.WARNING, logger="gateway.notify.fault"):
        await rig.at(0)
        await rig.at(1)
    assert rig.told() == [("robot", "office", "fault")]
    (said,) = [r.message for r in caplog.records if "cannot keep" in r.message]
    assert said.startswith(
        f"cannot keep what was told of the gateway's faults in {folder / 'outbox.faults.json'} "
        "([Errno 2] No such file or directory: "
    )
    assert said.endswith("kept in memory until it can")
    # Once the disk takes writes again, it is kept.
    folder.mkdir()
    await rig.at(2)
    rig.restart()
    assert rig.watch.since_ms == T0


async def test_a_damaged_file_is_named_and_begun_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.faults.json"
    path.write_bytes(b'{"since_ms": "yesterday"')
    with caplog.at_level(logging.WARNING, logger="gateway.notify.fault"):
        rig = Rig(policy(after_s=0), path)
    assert f"{path} is damaged, and is begun anew" in caplog.text
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    assert rig.told() == [("robot", "office", "fault")]
    rig.restart()
    assert rig.watch.since_ms == T0


async def test_a_gateway_that_keeps_crashing_is_told_of_from_its_first_crash(
    tmp_path: Path,
) -> None:
    rig = Rig(policy(after_s=60), tmp_path / "outbox.faults.json")
    await rig.at(0)
    # Each run lasts less than `after_s`.
    for second in (20, 40, 79):
        rig.move_to(second)
        rig.restart()
        await rig.at(second)
    assert rig.told() == []
    rig.move_to(80)
    rig.restart()
    await rig.at(80)
    assert rig.told() == [("robot", "office", "fault")]
    (notice,) = rig.reach.sent("robot")
    assert notice.lines == (
        "网关反复意外退出并重启，告警处理可能中断: started after a crash 4 times since "
        "2026-01-01 08:00, the last at 2026-01-01 08:01",
    )
    assert notice.started_ms == T0 + 20_000
    # It runs on: once the window holds fewer than two crashes, the fault is over, and
    # `after_s` later its end is told.
    await rig.at(678)
    await rig.at(679)
    await rig.at(679 + 59)
    assert len(rig.told()) == 1
    await rig.at(679 + 60)
    assert rig.told() == [("robot", "office", "fault"), ("robot", "office", "fault_cleared")]


async def test_stops_that_were_asked_for_are_no_fault(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=0), tmp_path / "outbox.faults.json")
    for second in range(0, 50, 10):
        await rig.at(second)
        await rig.stop_and_restart()
    # One crash among them is not a loop.
    rig.move_to(50)
    rig.restart()
    await rig.at(60)
    await rig.at(600)
    assert rig.told() == []


async def test_a_stop_on_a_disk_that_takes_no_writes_ends_all_the_same(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=0), fault_state_path(tmp_path / "gone" / "outbox.sqlite3"))
    await rig.at(0)
    await rig.watch.stopped()
    rig.restart()
    assert rig.watch.since_ms is None


async def test_starts_refused_in_a_row_are_a_fault_and_the_start_that_runs_ends_it(
    tmp_path: Path,
) -> None:
    rig = Rig(policy(after_s=60), tmp_path / "outbox.faults.json")
    problem = "alert_rules/fire.yaml: rules[0].when: expected a condition"
    # Refused, and started again by the service manager every 20 s.
    for second in (0, 20, 40):
        rig.move_to(second)
        rig.restart()
        await rig.watch.refused(problem)
    assert rig.told() == []
    rig.move_to(60)
    rig.restart()
    await rig.watch.refused(problem)
    assert rig.told() == [("robot", "office", "fault")]
    (notice,) = rig.reach.sent("robot")
    assert notice.lines == (f"网关无法启动，收不到设备告警，也发不出通知: {problem}",)
    assert notice.started_ms == T0
    rig.move_to(80)
    rig.restart()
    await rig.watch.refused(problem)
    assert len(rig.told()) == 1
    # Mended: the start that runs ends it, and no refused start counts as a crash.
    rig.move_to(100)
    rig.restart()
    await rig.at(100)
    await rig.at(159)
    assert len(rig.told()) == 1
    await rig.at(160)
    assert rig.told() == [("robot", "office", "fault"), ("robot", "office", "fault_cleared")]
    # A refusal after that is a new one, from its own first start.
    await rig.watch.stopped()
    rig.move_to(1000)
    rig.restart()
    await rig.watch.refused(problem)
    assert len(rig.told()) == 2


async def test_a_clock_set_back_does_not_hold_a_fault_notice() -> None:
    rig = Rig(policy())
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    # NTP sets the wall clock back two hours: no alarm can arrive meanwhile all the same.
    rig.clock.step(-2 * HOUR_S)
    await rig.at(59)
    assert rig.told() == []
    await rig.at(60)
    assert rig.told() == [("robot", "office", "fault")]
    # Since when, by the clock as NTP set it.
    (notice,) = rig.reach.sent("robot")
    assert notice.started_ms == T0 - 2 * 3_600_000
    # The repeat and the end go by elapsed time too.
    rig.problems = {}
    await rig.at(70)
    await rig.at(129)
    assert len(rig.told()) == 1
    await rig.at(130)
    assert rig.told() == [("robot", "office", "fault"), ("robot", "office", "fault_cleared")]


async def test_a_clock_set_forward_does_not_make_a_moment_at_boot_a_fault() -> None:
    rig = Rig(policy())
    # At boot the broker connection is still being made when NTP sets the clock forward.
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    rig.clock.step(3 * HOUR_S)
    await rig.at(1)
    rig.problems = {}  # connected: the problem lasted a second
    await rig.at(2)
    assert rig.told() == []
    # A fault that does last is still told after `after_s`, not before.
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(10)
    rig.clock.step(HOUR_S)
    await rig.at(69)
    assert rig.told() == []
    await rig.at(70)
    assert rig.told() == [("robot", "office", "fault")]


async def test_a_clock_set_back_across_a_restart_holds_no_repeat_nor_notice_owed(
    tmp_path: Path,
) -> None:
    rig = Rig(
        policy(after_s=10, repeat_s=3600, to=["office", "secretary"]),
        tmp_path / "outbox.faults.json",
    )
    rig.reach.fail("sms")
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    await rig.at(10)
    # The secretary's only channel failed: a notice is owed, RETRY_S on.
    assert rig.told() == [("robot", "office", "fault")]
    # Set back two hours while the gateway was down: the file's times are now ahead.
    await rig.watch.stopped()
    rig.clock.step(-2 * HOUR_S)
    rig.restart()
    await rig.at(10 + RETRY_S - 1)
    assert len(rig.told()) == 1
    await rig.at(10 + RETRY_S)
    assert sorted(rig.told()) == [("robot", "office", "fault"), ("sms", "secretary", "fault")]
    # The repeat is due `repeat_s` after the last telling at the latest.
    await rig.at(3609)
    assert len(rig.told()) == 2
    await rig.at(3610)
    assert len(rig.told()) == 4
    assert rig.watch.since_ms == T0


async def test_a_clock_set_back_does_not_hold_a_crash_loop_over(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=60), tmp_path / "outbox.faults.json")
    await rig.at(0)
    for second in (20, 40):
        rig.move_to(second)
        rig.restart()
        await rig.at(second)
    await rig.at(80)
    assert rig.told() == [("robot", "office", "fault")]
    # NTP sets the clock back a day; the gateway then runs on: 10 minutes after the
    # first crash of the two, the window holds one, and `after_s` later its end is told.
    rig.clock.step(-DAY_S)
    await rig.at(619)
    await rig.at(620)
    await rig.at(679)
    assert len(rig.told()) == 1
    await rig.at(680)
    assert rig.told() == [("robot", "office", "fault"), ("robot", "office", "fault_cleared")]


# A district's gateway serves 150 communities: its fault notice still goes through the
# district's WeCom group robot (2,048 bytes a text), naming a few and how many in all.
async def test_a_district_gateway_is_named_within_what_a_group_robot_takes() -> None:
    rig = Rig(policy(after_s=0))
    robot = rig.reach.channels["robot"]
    robot.max_text_bytes = WecomRobot.max_text_bytes
    rig.watch.communities = tuple(f"community-{n:03}" for n in range(150))
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    (notice,) = rig.reach.sent("robot")
    assert robot.size_bytes(notice) <= WecomRobot.max_text_bytes
    assert notice.place == "community-000 等150个社区 gw-hgy"
    assert notice.lines == ("数据无法保存，告警积压在消息服务器: main: disk I/O error",)


# Whatever words the errors bring (paths and topics in Chinese, every problem at once),
# the notice goes through a group robot: each problem named, the words left to the log.
async def test_a_notice_of_many_long_problems_still_fits_a_group_robot() -> None:
    rig = Rig(policy(after_s=0))
    robot = rig.reach.channels["robot"]
    robot.max_text_bytes = WecomRobot.max_text_bytes
    words = "发件箱所在的数据盘无法写入" * 10
    names = ("broker", "notifications", "outbox", "restarts", "subscriptions")
    rig.problems = dict.fromkeys(names, words)
    await rig.at(0)
    (notice,) = rig.reach.sent("robot")
    assert robot.size_bytes(notice) <= WecomRobot.max_text_bytes
    assert notice.lines == tuple(PROBLEMS_ZH[name] for name in names)
    assert notice.place == "hgy gw-hgy"
    # A channel that takes it whole has it whole.
    rig.reach.fail("robot")
    await rig.at(3600)
    (whole,) = rig.reach.sent("sms")
    assert whole.lines[0] == f"与消息服务器的连接中断，收不到设备告警: {words[:120]}"
    assert len(whole.lines) == 5


# A night-duty phone hears of the fault by a call; a call cannot say it is over (its
# template reads out an alarm and sends them out), so the end is owed to nobody else
# than those a channel reaches with it: never retried every 30 s for ever, nor kept.
async def test_an_all_clear_none_of_the_receivers_channels_carries_is_not_owed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.faults.json"
    rig = Rig(policy(after_s=10, to=["office", "night-duty"]), path)
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    await rig.at(10)
    assert sorted(rig.told()) == [("robot", "office", "fault"), ("voice", "night-duty", "fault")]
    rig.problems = {}
    await rig.at(20)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gateway.notify.fault"):
        await rig.at(30)
        for second in (30 + RETRY_S, 30 + 2 * RETRY_S):
            await rig.at(second)
    assert sorted(rig.told()) == [
        ("robot", "office", "fault"), ("robot", "office", "fault_cleared"),
        ("voice", "night-duty", "fault"),
    ]  # fmt: skip
    assert [r.message for r in caplog.records if "night-duty" in r.message] == [
        "night-duty is not told that the gateway's fault is over: none of their channels "
        "carries news that it is over (a call reads out an alarm)"
    ]
    assert json.loads(path.read_bytes())["owed"] == []


# The start after a crash that came just after a fault was told goes on with that fault:
# it is not told again as new, nor is the same notice sent twice.
async def test_a_fault_told_just_before_a_crash_is_not_told_again(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=10, repeat_s=3600), tmp_path / "outbox.faults.json")
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    rig.move_to(10)
    await rig.watch.check()
    assert rig.told() == [("robot", "office", "fault")]
    # Killed as soon as the look that told it ended.
    rig.restart()
    for second in (11, 21, 80, 3609):
        await rig.at(second)
    assert rig.told() == [("robot", "office", "fault")]
    await rig.at(3610)
    assert rig.reach.sent("robot")[-1].key == f"gateway-fault/gw-hgy/{T0}/1/office/fault"


# A crash while the notices go (a provider slow to answer) leaves the fault in the file:
# the start after it goes on with it, and sends the notice owed, as it was made.
async def test_a_crash_while_a_fault_is_told_leaves_it_told_as_the_same(tmp_path: Path) -> None:
    rig = Rig(policy(after_s=10), tmp_path / "outbox.faults.json")
    slow = rig.reach.channels["robot"] = HangingChannel("robot")
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    rig.move_to(10)
    telling = asyncio.create_task(rig.watch.check())
    await slow.asked.wait()
    # Killed with the send under way.
    telling.cancel()
    rig.restart()
    slow.release.set()
    await rig.at(11)
    assert rig.told() == [("robot", "office", "fault")]
    assert rig.reach.sent("robot")[0].key == f"gateway-fault/gw-hgy/{T0}/0/office/fault"
    await rig.at(80)
    assert len(rig.told()) == 1


# Those who heard of a fault hear that it is over, though a reload (or a restart with
# the policy changed) named others to hear of the gateway's faults meanwhile.
async def test_those_told_hear_the_end_though_the_policy_names_others_since(
    tmp_path: Path,
) -> None:
    rig = Rig(policy(after_s=10, to=["office"]), tmp_path / "outbox.faults.json")
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    await rig.at(10)
    assert rig.told() == [("robot", "office", "fault")]
    rig.reach.policy = policy(after_s=10, to=["wang-fang"])
    rig.problems = {}
    await rig.at(20)
    # Neither of the office's channels takes its end at first, nor before the restart.
    rig.reach.fail("robot")
    rig.reach.fail("sms")
    await rig.at(30)
    assert rig.told() == [("robot", "office", "fault")]
    await rig.stop_and_restart()
    await rig.at(30 + RETRY_S)
    assert rig.told() == [("robot", "office", "fault"), ("robot", "office", "fault_cleared")]
    assert rig.reach.sent("robot")[-1].key == f"gateway-fault/gw-hgy/{T0}/0/office/fault_cleared"


# People told the broker is down learn, once it has lasted `after_s`, that the gateway
# does not even start any more (its config broken while mending it), rather than at the
# next repeat an hour later, or never with no repeat.
@pytest.mark.parametrize("repeat_s", [3600, None])
async def test_a_refused_start_within_a_fault_told_is_told_when_it_lasts(
    tmp_path: Path, repeat_s: float | None
) -> None:
    rig = Rig(policy(after_s=60, repeat_s=repeat_s), tmp_path / "outbox.faults.json")
    rig.problems = {"broker": "not connected to 127.0.0.1:1883"}
    await rig.at(0)
    await rig.at(60)
    assert rig.told() == [("robot", "office", "fault")]
    await rig.stop_and_restart()
    problem = "config.yaml: mqtt.port: expected an integer"
    # A start refused knows no problem but its refusal.
    rig.problems = {}
    # Refused, and started again by the service manager every 20 s.
    for second in (100, 120, 140):
        rig.move_to(second)
        rig.restart()
        await rig.watch.refused(problem)
    assert len(rig.told()) == 1
    rig.move_to(160)
    rig.restart()
    await rig.watch.refused(problem)
    assert rig.told() == [("robot", "office", "fault")] * 2
    told = rig.reach.sent("robot")[-1]
    assert told.lines == (f"网关无法启动，收不到设备告警，也发不出通知: {problem}",)
    # The same fault, told again.
    assert told.key == f"gateway-fault/gw-hgy/{T0}/1/office/fault"
    # Once: not again at each refused start after.
    rig.move_to(180)
    rig.restart()
    await rig.watch.refused(problem)
    assert len(rig.told()) == 2


# Someone put on duty for the gateway's faults (a reload) while one is under way hears of
# it at the next look, rather than at the repeat an hour later, or never with no repeat;
# once; and hears that it is over, as those told before them do.
@pytest.mark.parametrize("repeat_s", [3600, None])
async def test_one_put_on_duty_during_a_fault_hears_of_it_at_once_and_of_its_end(
    repeat_s: float | None,
) -> None:
    rig = Rig(policy(after_s=10, repeat_s=repeat_s, to=["office"]))
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    await rig.at(10)
    assert rig.told() == [("robot", "office", "fault")]
    rig.reach.policy = policy(after_s=10, repeat_s=repeat_s, to=["office", "wang-fang"])
    await rig.at(11)
    assert rig.told() == [("robot", "office", "fault"), ("robot", "wang-fang", "fault")]
    joined = rig.reach.sent("robot")[-1]
    assert joined.key == f"gateway-fault/gw-hgy/{T0}/0/wang-fang/fault"
    assert joined.started_ms == T0
    assert joined.lines == ("数据无法保存，告警积压在消息服务器: main: disk I/O error",)
    for second in (12, 100, 1000):
        await rig.at(second)
    assert len(rig.told()) == 2
    rig.problems = {}
    await rig.at(1001)
    await rig.at(1011)
    assert rig.told() == [
        ("robot", "office", "fault"), ("robot", "wang-fang", "fault"),
        ("robot", "office", "fault_cleared"), ("robot", "wang-fang", "fault_cleared"),
    ]  # fmt: skip


# A newcomer whose channels fail is tried again as any receiver is, and told once.
async def test_one_put_on_duty_during_a_fault_whose_channel_fails_is_tried_again() -> None:
    rig = Rig(policy(after_s=0, to=["office"]))
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    rig.reach.policy = policy(after_s=0, to=["office", "secretary"])
    rig.reach.fail("sms")
    await rig.at(1)
    assert rig.told() == [("robot", "office", "fault")]
    await rig.at(1 + RETRY_S - 1)
    assert rig.told() == [("robot", "office", "fault")]
    await rig.at(1 + RETRY_S)
    assert rig.told() == [("robot", "office", "fault"), ("sms", "secretary", "fault")]
    await rig.at(1 + 3 * RETRY_S)
    assert len(rig.told()) == 2


# Communities go by long names ("金水区花园路街道丰产路社区"); an SMS or a call, whose
# template takes 35 characters of a place, must still say which gateway failed, and how
# many communities it serves.
async def test_an_sms_names_the_gateway_that_failed_whatever_its_communities_are_called() -> None:
    rig = Rig(policy(after_s=0, to=["secretary"]))
    rig.watch.communities = (
        "金水区花园路街道丰产路社区", "金水区花园路街道经八路社区",
        "金水区文化路街道农科路社区", "金水区丰庆路街道庆丰社区",
    )  # fmt: skip
    rig.problems = {"outbox": "main: disk I/O error"}
    await rig.at(0)
    (notice,) = rig.reach.sent("sms")
    assert notice.template_values()["place"] == "金水区花园路街道丰产路社区 等4个社区 gw-hgy"
    assert notice.text().split("\n")[1] == "网关: 金水区花园路街道丰产路社区 等4个社区 gw-hgy"


# However long the names, the gateway's own comes whole within a template's 35 characters;
# communities that fit are named, the others counted.
def test_a_gateway_s_place_keeps_its_name_within_what_a_template_takes() -> None:
    assert fault_place(("hgy", "lgy", "xyz", "abc"), "gw-hgy") == "hgy lgy xyz 等4个社区 gw-hgy"
    assert fault_place(("hgy",), "gw-hgy") == "hgy gw-hgy"
    assert fault_place((), "gw-hgy") == "gw-hgy"
    long_name = "郑州市金水区花园路街道丰产路社区居民委员会第一网格智慧社区网关"
    assert fault_place((long_name,), "gw-hgy") == "1个社区 gw-hgy"
    assert fault_place((long_name, "hgy"), "gw-jinshui-01") == "2个社区 gw-jinshui-01"
    # A gateway's own name longer than that keeps its beginning, the most a template shows.
    long_instance = "gw-jinshui-huayuanlu-fengchanlu-wangge-01"
    assert fault_place(("hgy",), long_instance) == long_instance
