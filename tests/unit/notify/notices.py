"""Notices, receivers and a channel shared by the notification tests."""

import asyncio
from collections import deque

from gateway.errors import NotifyError
from gateway.notify.channel import Channel, Limit
from gateway.notify.notice import Notice

T0 = 1_767_225_600_000


def notice(
    *, severity: str = "critical", kind: str = "firing", key: str = "a1/critical.0/wang-fang/firing",
    phone: str | None = "13800000001", receiver: str = "wang-fang", life_safety: bool = True,
) -> Notice:  # fmt: skip
    return Notice(
        key=key,
        kind=kind,
        alert_id="a1",
        rule="fall",
        title="跌倒 Fall",
        severity=severity,
        life_safety=life_safety,
        community="hgy",
        device_type="bracelet",
        device_id="br-1",
        port=None,
        place="hgy 东区 湖光小区 3号楼",
        started_ms=T0,
        time_text="2026-01-01 08:00",
        receiver=receiver,
        receiver_name="王芳",
        phone=phone,
        link="https://gw.example.cn/a/token",
        map_url=None,
    )


class FakeChannel(Channel):
    kind = "fake"

    def __init__(self, name: str, *, needs_phone: bool = False, digests: bool = True,
                 limits: tuple[Limit, ...] = (), links: bool = True,
                 tells_clearing: bool = True) -> None:  # fmt: skip
        super().__init__(name, limits)
        self.needs_phone = needs_phone
        self.digests = digests
        self.links = links
        self.tells_clearing = tells_clearing
        self.sent: list[Notice] = []
        self.errors: deque[NotifyError] = deque()

    async def send(self, notice: Notice) -> None:
        if self.errors:
            raise self.errors.popleft()
        self.sent.append(notice)


class HangingChannel(FakeChannel):
    """A provider that takes the request (`asked`) and does not answer until released."""

    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        self.started = 0

    async def send(self, notice: Notice) -> None:
        self.started += 1
        self.asked.set()
        await self.release.wait()
        await super().send(notice)
