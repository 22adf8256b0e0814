"""A notice: what one receiver is told about one alert, rendered for each kind of channel.

It is made once, stored with its notification, and sent as stored: a retry or a
restart sends the same words with the same idempotency key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import orjson

from gateway.decode.record import Position
from gateway.registry import RegisteredDevice, Site
from gateway.rules.book import AlertEntry
from gateway.rules.rule import Severity

_SEVERITY_ZH = {
    Severity.CRITICAL: "紧急",
    Severity.MAJOR: "重要",
    Severity.WARNING: "警告",
    Severity.INFO: "提示",
}
_KIND_ZH = {
    "firing": "告警",
    "resolved": "已恢复",
    "digest": "告警汇总",
    "fault": "网关故障",
    "fault_cleared": "网关恢复",
}
# Of the gateway itself rather than of an alert (gateway.notify.fault).
FAULT_KINDS = ("fault", "fault_cleared")
# News that something is over, which asks nobody to go anywhere.
CLEARED_KINDS = ("resolved", "fault_cleared")
# SMS and voice templates take short variables; longer ones are refused by providers.
TEMPLATE_VALUE_MAX_CHARS = 35


@dataclass(frozen=True, slots=True)
class Notice:
    key: str
    # firing, resolved, digest (several alerts in one message), or one of FAULT_KINDS.
    kind: str
    alert_id: str
    rule: str
    title: str
    severity: str
    life_safety: bool
    community: str
    device_type: str
    device_id: str
    port: int | None
    place: str
    started_ms: int
    time_text: str
    receiver: str
    receiver_name: str
    phone: str | None
    link: str | None = None
    # The link's short code, for an SMS template (see LinkSigner.code).
    link_code: str | None = None
    map_url: str | None = None
    # A digest's alerts, or a fault's problems, one line each.
    lines: tuple[str, ...] = ()
    # The phones of the other receivers a group robot's digest is for, @-mentioned
    # with `phone`: one district group may carry several communities' workers.
    mentions: tuple[str, ...] = ()

    def phones(self) -> list[str]:
        """Whom a group message @-mentions, each once."""
        return list(dict.fromkeys(p for p in (self.phone, *self.mentions) if p))

    @property
    def critical(self) -> bool:
        """Never held back by quiet hours or a provider's limit; news of a cleared
        condition is not."""
        if self.kind != "firing":
            return False
        return self.severity == Severity.CRITICAL or self.life_safety

    def headline(self) -> str:
        if self.kind in FAULT_KINDS:
            return f"【{_KIND_ZH[self.kind]}】{self.title}"
        severity = _SEVERITY_ZH.get(Severity(self.severity), self.severity)
        return f"【{severity}{_KIND_ZH[self.kind]}】{self.title}"

    def text(self) -> str:
        if self.kind == "digest":
            return "\n".join([self.headline(), *self.lines])
        if self.kind in FAULT_KINDS:
            return "\n".join([self.headline(), f"网关: {self.place}", f"自: {self.time_text}",
                              *self.lines])  # fmt: skip
        device = self.device_id if self.port is None else f"{self.device_id} 端口 {self.port}"
        parts = [
            self.headline(),
            f"地点: {self.place}",
            f"设备: {device}",
            f"时间: {self.time_text}",
        ]
        if self.map_url:
            parts.append(f"地图: {self.map_url}")
        if self.link:
            parts.append(f"处理: {self.link}")
        return "\n".join(parts)

    def markdown(self) -> str:
        lines = self.text().split("\n")
        return "\n\n".join([f"### {lines[0]}", *lines[1:]])

    def digest_line(self, *, whose: bool) -> str:
        """The notice as a line of a digest, with its link; `whose`: naming its receiver,
        in a group's digest for several."""
        state = "" if self.kind == "firing" else f"【{_KIND_ZH[self.kind]}】"
        return (
            f"- {state}{self.title} · {self.place} · {self.device_id} · {self.time_text}"
            + (f" · {self.receiver_name}" if whose else "")
            + (f" {self.link}" if self.link else "")
        )

    def template_values(self) -> dict[str, str]:
        # A template's words are an alarm's, approved once with the provider: the title
        # says when the news is that it is over.
        title = (
            f"【{_KIND_ZH[self.kind]}】{self.title}" if self.kind in CLEARED_KINDS else self.title
        )
        values = {
            "title": title,
            "severity": _SEVERITY_ZH.get(Severity(self.severity), self.severity),
            "place": self.place,
            "device": self.device_id,
            "time": self.time_text,
            "state": _KIND_ZH[self.kind],
            "link": self.link or "",
            "link_code": self.link_code or "",
            "alert_id": self.alert_id,
        }
        return {k: v[:TEMPLATE_VALUE_MAX_CHARS] for k, v in values.items()}

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> Notice:
        raw: dict[str, Any] = orjson.loads(data)
        raw["lines"] = tuple(raw.get("lines", ()))
        raw["mentions"] = tuple(raw.get("mentions", ()))
        return cls(**raw)


def describe_place(community: str, site: Site | None) -> str:
    if site is None:
        return community
    parts = [community, site.area, site.compound, site.building, site.unit]
    return " ".join(part for part in parts if part)


def scene_position(
    entry: AlertEntry, site: Site | None, device: RegisteredDevice | None
) -> Position | None:
    """Where to send a person: where the alert fired, as the record that fired it said
    (kept in the alert book, so a link opened after a restart still finds it); else
    where the device was registered when the alert began (see AlertEntry.where); else
    the wearer's home."""
    if entry.position is not None:
        return entry.position
    if site is not None and site.lat is not None and site.lon is not None:
        return Position(site.lat, site.lon)
    if device is not None and device.home_lat is not None and device.home_lon is not None:
        return Position(device.home_lat, device.home_lon)
    return None


def map_url(position: Position | None, title: str, *, open_app: bool = False) -> str | None:
    """An AMap (高德) marker at a WGS-84 position; `open_app`: opened in the AMap app on a
    phone that has it."""
    if position is None:
        return None
    return (
        f"https://uri.amap.com/marker?position={position.lon},{position.lat}"
        f"&name={quote(title)}&coordinate=wgs84" + ("&callnative=1" if open_app else "")
    )


def local_time_text(time_ms: int, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(time_ms / 1000, zone).strftime("%Y-%m-%d %H:%M")


def make_notice(
    *,
    key: str,
    kind: str,
    entry: AlertEntry,
    device: RegisteredDevice | None,
    receiver: str,
    receiver_name: str,
    phone: str | None,
    link: str | None,
    zone: ZoneInfo,
    site: Site | None = None,
    link_code: str | None = None,
) -> Notice:
    """`site`: where the alert is (see AlertEntry.where); `device`: its device as
    registered now, for the wearer's home."""
    return Notice(
        key=key,
        kind=kind,
        alert_id=entry.alert_id,
        rule=entry.rule,
        title=entry.title,
        severity=entry.severity,
        life_safety=entry.life_safety,
        community=entry.community,
        device_type=entry.device_type,
        device_id=entry.device_id,
        port=entry.port,
        place=describe_place(entry.community, site),
        started_ms=entry.started_ms,
        time_text=local_time_text(entry.fired_ms or entry.started_ms, zone),
        receiver=receiver,
        receiver_name=receiver_name,
        phone=phone,
        link=link,
        link_code=link_code,
        map_url=map_url(scene_position(entry, site, device), entry.title),
    )
