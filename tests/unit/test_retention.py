"""The gateway's own records let go once the config no longer keeps them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.notify.notice import Notice
from gateway.notify.policy import Receiver
from gateway.retention import FIRST_PASS_S, Pruned
from gateway.store.database import open_book
from tests.unit.api.conftest import (
    ADMIN,
    OPERATOR,
    T0,
    WORKER,
    Site,
    open_site,
    serve_site,
    site_config,
    ten_silent_minutes,
)
from tests.unit.api.test_registry_reload import (
    WITHOUT_BR_1,
    config_file,
    edit_registry,
    shipped_rules_in,
)

DAY_S = 24 * 3600
HOUR_S = 3600
SD1 = "community/hgy/smoke_detector/sd-1/telemetry"
KEPT_30_DAYS = {"alerts_days": 30, "audit_days": 30}


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """A gateway that keeps closed alerts and reads of personal data 30 days."""
    async with open_site(tmp_path, ManualClock(T0), retention=KEPT_30_DAYS) as opened:
        yield opened


async def _told(site: Site, alert_id: str) -> Notice:
    """The notice of the alert its receiver was sent, once the notifier has sent it."""
    assert site.gateway.notifier is not None
    await site.gateway.notifier.process()
    notification = site.gateway.notifications.get(f"{alert_id}/grid.0/wang-fang/firing")
    assert notification is not None and notification.state == "sent"
    return Notice.from_json(notification.notice)


async def _later(site: Site, seconds: float) -> None:
    """Time passes, and the rules' timers run, as they do every few seconds: a fall lets
    go of its alert's id once nothing more can join it."""
    site.clock.advance(seconds)
    stage = site.gateway.pipeline.alerts
    assert stage is not None
    await site.gateway.pipeline.commit_alerts(stage.tick(site.clock.now_ms()))


async def _close(site: Site, alert_id: str) -> None:
    closed = await site.post(f"/api/v1/alerts/{alert_id}/close", ADMIN, json={"note": "已处理"})
    assert closed.status_code == 200, closed.text


async def test_an_alert_closed_longer_ago_than_kept_goes_with_all_kept_of_it(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock, retention=KEPT_30_DAYS) as site:
        old = await site.fall("br-1")
        old_notice = await _told(site, old)
        assert old_notice.link_code is not None
        assert (await site.get(f"/s/{old_notice.link_code}")).status_code == 303
        await _close(site, old)
        # Fired as long ago, and nobody closed it: still to be handled.
        left_open = await site.fall("br-2")
        await _told(site, left_open)
        clock.advance(31 * DAY_S)
        recent = await site.fall("br-1")
        await _told(site, recent)
        await _close(site, recent)

        pruned = site.gateway.retention.prune()

        assert pruned == Pruned(alerts=1, notifications=1)
        assert (await site.get(f"/api/v1/alerts/{old}")).status_code == 404
        assert site.gateway.notifications.attempts(old) == []
        assert site.gateway.notifications.get(f"{old}/grid.0/wang-fang/firing") is None
        # Its SMS's short link is no more than a code never given.
        assert (await site.get(f"/s/{old_notice.link_code}")).status_code == 403
        for kept in (left_open, recent):
            detail = await site.get(f"/api/v1/alerts/{kept}")
            assert detail.status_code == 200
            assert detail.json()["history"] and detail.json()["notifications"]
        # A pass with nothing more to let go changes nothing.
        assert site.gateway.retention.prune() == Pruned()
    # After a restart, the alert left open is neither planned nor told again.
    async with open_site(tmp_path, clock, retention=KEPT_30_DAYS) as site:
        assert site.gateway.notifier is not None
        site.gateway.notifier.recover()
        await site.gateway.notifier.process()
        attempts = site.gateway.notifications.attempts(left_open)
        assert [a.result for a in attempts] == ["sent"]


async def test_a_closed_alert_whose_condition_still_holds_stays_until_it_clears(
    site: Site,
) -> None:
    topic = "community/hgy/smoke_detector/sd-1/telemetry"
    await site.send(topic, {"ts": site.clock.now_ms(), "alarm": True, "battery_pct": 90})
    (fire,) = [a.alert_id for a in site.gateway.alerts.open_alerts()]
    await _close(site, fire)
    site.clock.advance(31 * DAY_S)
    # The detector still alarms: its clearing is yet to be recorded on the alert.
    assert site.gateway.retention.prune().alerts == 0
    for _ in range(2):
        await site.send(topic, {"ts": site.clock.now_ms(), "alarm": False, "battery_pct": 90})
        site.clock.advance(601)
    detail = (await site.get(f"/api/v1/alerts/{fire}")).json()
    assert detail["alert"]["resolved_ms"] is not None
    site.clock.advance(31 * DAY_S)
    assert site.gateway.retention.prune().alerts == 1
    assert (await site.get(f"/api/v1/alerts/{fire}")).status_code == 404


async def test_old_reads_of_personal_data_leave_the_audit(site: Site) -> None:
    await site.get("/api/v1/devices/hgy/br-1", ADMIN)
    site.clock.advance(29 * DAY_S)
    await site.get("/api/v1/devices/hgy/br-2", ADMIN)
    site.clock.advance(2 * DAY_S)
    assert site.gateway.retention.prune() == Pruned(audit_rows=1)
    audit = (await site.get("/api/v1/audit")).json()
    assert [(e["device_id"], e["at_ms"]) for e in audit] == [("br-2", T0 + 29 * DAY_S * 1000)]


async def test_silences_long_ended_go_and_ids_are_never_given_again(
    site: Site, tmp_path: Path
) -> None:
    ids = []
    for hours in (1, 2):
        made = await site.post("/api/v1/silences", OPERATOR, json={
            "community": "hgy", "building": "3", "ends_ms": T0 + hours * 3_600_000,
            "reason": "检修烟感",
        })  # fmt: skip
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    site.clock.advance(31 * DAY_S)
    assert site.gateway.retention.prune() == Pruned(silences=1)
    with closing(sqlite3.connect(tmp_path / "outbox.sqlite3")) as conn:
        assert [row[0] for row in conn.execute("SELECT id FROM silences")] == ids[1:]
    # The newest stays, though it ended as long ago: a new silence takes a new id.
    made = await site.post("/api/v1/silences", OPERATOR, json={
        "community": "hgy", "building": "3", "ends_ms": site.clock.now_ms() + 3_600_000,
        "reason": "检修烟感",
    })  # fmt: skip
    assert made.json()["id"] > ids[1]


async def test_retention_set_to_null_keeps_everything(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    keep_all = {"alerts_days": None, "audit_days": None}
    async with open_site(tmp_path, clock, retention=keep_all) as site:
        alert_id = await site.fall("br-1")
        await _told(site, alert_id)
        await _close(site, alert_id)
        await site.get("/api/v1/devices/hgy/br-1", ADMIN)
        clock.advance(10 * 365 * DAY_S)
        assert site.gateway.retention.prune() == Pruned()
        assert (await site.get(f"/api/v1/alerts/{alert_id}")).status_code == 200


async def test_the_running_gateway_lets_go_of_old_records_a_minute_after_it_starts(
    site: Site,
) -> None:
    alert_id = await site.fall("br-1")
    await _close(site, alert_id)
    await _later(site, 31 * DAY_S)
    running = asyncio.create_task(site.gateway.retention.run())
    try:
        await asyncio.sleep(0)
        assert (await site.get(f"/api/v1/alerts/{alert_id}")).status_code == 200
        site.clock.advance(FIRST_PASS_S)
        # The pass runs on a worker thread.
        for _ in range(500):
            if (await site.get(f"/api/v1/alerts/{alert_id}")).status_code == 404:
                break
            await asyncio.sleep(0.01)
        assert (await site.get(f"/api/v1/alerts/{alert_id}")).status_code == 404
    finally:
        running.cancel()


async def test_a_grid_worker_s_closed_alert_goes_from_their_list_too(site: Site) -> None:
    alert_id = await site.fall("br-1")
    closed = await site.post(f"/api/v1/alerts/{alert_id}/close", WORKER, json={"note": "已送医"})
    assert closed.status_code == 200
    listed = (await site.get("/api/v1/alerts?state=closed", WORKER)).json()["alerts"]
    assert [a["alert_id"] for a in listed] == [alert_id]
    await _later(site, 31 * DAY_S)
    site.gateway.retention.prune()
    assert (await site.get("/api/v1/alerts?state=closed", WORKER)).json()["alerts"] == []


@asynccontextmanager
async def _quiet_site(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Site]:
    """As open_site, but wang-fang's non-critical notices wait out 22:00-07:00."""
    config = site_config(tmp_path, retention=KEPT_30_DAYS)
    assert config.notify is not None
    receivers = tuple(
        Receiver(name=r.name, channels=r.channels, quiet_hours="22:00-07:00")
        if r.name == "wang-fang"
        else r
        for r in config.notify.receivers
    )
    config = config.model_copy(
        update={"notify": config.notify.model_copy(update={"receivers": receivers})}
    )
    async with serve_site(Gateway(config, clock), clock) as site:
        yield site


async def test_the_all_clear_of_an_alert_closed_long_ago_still_reaches_those_told(
    tmp_path: Path,
) -> None:
    """A low battery told at 08:00 and closed by the desk ('replaced next month'); the
    cell is changed a month later at 23:00: wang-fang's all-clear waits for 07:00, and
    the hourly pass must not take it (nor the alert's clearing) away meanwhile."""
    clock = ManualClock(T0)  # 08:00 in Shanghai
    async with _quiet_site(tmp_path, clock) as site:
        await site.send(SD1, {"ts": clock.now_ms(), "alarm": False, "battery_pct": 10})
        (low,) = [a.alert_id for a in site.gateway.alerts.open_alerts()]
        assert site.gateway.notifier is not None
        await site.gateway.notifier.process()
        await _close(site, low)
        clock.advance(31 * DAY_S + 15 * HOUR_S)  # 23:00, a month later
        for _ in range(2):
            await site.send(SD1, {"ts": clock.now_ms(), "alarm": False, "battery_pct": 95})
            clock.advance(1801)
        assert site.gateway.alerts.get(low).resolved_ms is not None
        await site.gateway.notifier.process()
        all_clear = f"{low}/wang-fang/resolved"
        waiting = site.gateway.notifications.get(all_clear)
        assert waiting is not None and waiting.state == "pending"

        site.gateway.retention.prune()  # the hourly pass, at 23:30

        clock.advance(8 * HOUR_S)  # 07:30
        await site.gateway.notifier.process()
        told = site.gateway.notifications.get(all_clear)
        assert told is not None and told.state == "sent"


async def test_short_links_of_let_go_alerts_go_even_after_the_link_secret_changed(
    tmp_path: Path,
) -> None:
    """An emergency contact's short link carries their phone in its link's token: it must
    not outlive the retention because `api.link_secret` was set (or rotated) since."""
    clock = ManualClock(T0)
    tell = ("wang-fang", "emergency_contacts")
    async with open_site(tmp_path, clock, tell=tell, retention=KEPT_30_DAYS) as site:
        alert_id = await site.fall("br-1")
        await _told(site, alert_id)
        await _close(site, alert_id)
    with closing(sqlite3.connect(tmp_path / "outbox.notifications.sqlite3")) as conn:
        links = [link for (link,) in conn.execute("SELECT link FROM short_links")]
    assert len(links) == 2
    clock.advance(31 * DAY_S)
    rotated = "another-link-secret-0123456789abcdef"
    async with open_site(
        tmp_path, clock, tell=tell, retention=KEPT_30_DAYS, link_secret=rotated
    ) as site:
        await _later(site, 0)  # the rules' timers let go of the fall's id
        assert site.gateway.retention.prune().alerts == 1
        assert (await site.get(f"/api/v1/alerts/{alert_id}", ADMIN)).status_code == 404
    with closing(sqlite3.connect(tmp_path / "outbox.notifications.sqlite3")) as conn:
        left = [link for (link,) in conn.execute("SELECT link FROM short_links")]
    assert left == []


async def _a_fall_let_go(site: Site) -> tuple[int, str]:
    """A fall told and closed, then a month of readings, and retention's pass letting it
    go: when it fell, and its alert's id."""
    fall_ms = site.clock.now_ms()
    alert_id = await site.fall("br-1")
    await _told(site, alert_id)
    await _close(site, alert_id)
    await _later(site, 31 * DAY_S)
    for _ in range(40):  # a month of readings later
        site.clock.advance(60)
        await site.send(
            "community/hgy/bracelet/br-1/telemetry",
            {"ts": site.clock.now_ms(), "heart_rate_bpm": 70, "worn": True},
        )
    assert site.gateway.retention.prune().alerts == 1
    return fall_ms, alert_id


async def _sent_again_and_not_told(site: Site, fall_ms: int, alert_id: str) -> None:
    """The fall uploaded again by the bracelet: nobody is told, and no alert is made."""
    await site.send(
        "community/hgy/bracelet/br-1/event", {"ts": fall_ms, "event": "fall", "confidence": 0.9}
    )
    assert site.gateway.notifier is not None
    await site.gateway.notifier.process()
    assert site.gateway.notifications.attempts(alert_id) == []
    assert (await site.get(f"/api/v1/alerts/{alert_id}")).status_code == 404


async def test_a_fall_sent_again_after_its_alert_was_let_go_is_not_told_again(
    tmp_path: Path,
) -> None:
    """A bracelet re-uploads its stored events (its acknowledgement was lost): the fall
    of a month ago comes again, after more than the redelivery filter keeps. Before the
    retention, the alert book and the notification keys took it as the same alert; once
    they let it go, nobody must be called out for a fall a month old."""
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock, retention=KEPT_30_DAYS) as site:
        fall_ms, alert_id = await _a_fall_let_go(site)
        await _sent_again_and_not_told(site, fall_ms, alert_id)
        # A fall of today still is one.
        assert await site.fall("br-1") != alert_id


async def test_a_device_silent_for_longer_than_alerts_are_kept_is_still_offline(
    site: Site,
) -> None:
    await site.send(SD1, {"ts": site.clock.now_ms(), "alarm": False, "battery_pct": 90})
    # Nothing heard for a month: the gateway was away, or the broker kept nothing.
    await _later(site, 31 * DAY_S)
    await _later(site, 60)
    offline = {(a.rule, a.device_id, a.started_ms) for a in site.gateway.alerts.open_alerts()}
    assert offline == {("device_offline", d, T0) for d in ("br-1", "br-2", "sd-1", "sd-2")}


async def test_an_old_record_not_made_an_alert_leaves_no_timer_to_hide_the_live_condition(
    site: Site,
) -> None:
    # A detector whose clock runs 40 days behind reports a low battery: older than the
    # alerts kept, it is not made an alert, and the same low battery at the right time
    # a minute later is.
    await site.send(SD1, {"ts": T0 - 40 * DAY_S * 1000, "alarm": False, "battery_pct": 10})
    site.clock.advance(60)
    await site.send(SD1, {"ts": site.clock.now_ms(), "alarm": False, "battery_pct": 10})
    assert [a.rule for a in site.gateway.alerts.open_alerts()] == ["smoke_low_battery"]


async def _a_fire_closed_a_month_ago(site: Site) -> None:
    """A detector's fire alarm at T0, closed and cleared, then a month and 40 hours of
    its hourly reports, past what the redelivery filter keeps."""
    await site.send(SD1, {"ts": T0, "alarm": True, "battery_pct": 90})
    (fire,) = [a.alert_id for a in site.gateway.alerts.open_alerts()]
    await _close(site, fire)
    for _ in range(2):  # the detector's all-clear, ten minutes apart
        site.clock.advance(601)
        await site.send(SD1, {"ts": site.clock.now_ms(), "alarm": False, "battery_pct": 90})
    assert site.gateway.alerts.get(fire).resolved_ms is not None
    site.clock.advance(31 * DAY_S)
    for _ in range(40):  # hourly reports, past what the redelivery filter keeps
        site.clock.advance(HOUR_S)
        await site.send(SD1, {"ts": site.clock.now_ms(), "alarm": False, "battery_pct": 90})


async def test_a_fire_alarm_sent_again_after_it_was_let_go_does_not_hide_a_new_fire(
    site: Site,
) -> None:
    await _a_fire_closed_a_month_ago(site)
    assert site.gateway.retention.prune().alerts == 1
    # The month-old alarm, uploaded again: not told again.
    await site.send(SD1, {"ts": T0, "alarm": True, "battery_pct": 90})
    assert site.gateway.alerts.open_alerts() == []
    # A fire now.
    site.clock.advance(60)
    await site.send(SD1, {"ts": site.clock.now_ms(), "alarm": True, "battery_pct": 90})
    assert [a.rule for a in site.gateway.alerts.open_alerts()] == ["fire_alarm"]


KEPT_A_YEAR: dict[str, int | None] = {"alerts_days": 365, "audit_days": 365}
KEEP_ALL: dict[str, int | None] = {"alerts_days": None, "audit_days": None}


async def test_a_fire_closed_minutes_ago_is_kept_though_its_detector_s_clock_is_behind(
    site: Site,
) -> None:
    """A detector whose clock a flat battery set 40 days back alarms: never seen, the
    life-safety alarm is made. The desk closes it, and the detector's all-clear comes
    (stamped by its clock). The fire was handled minutes ago: its record stays the days
    retention keeps it, not gone at the next hourly pass."""
    behind_ms = 40 * DAY_S * 1000
    device_ms = site.clock.now_ms() - behind_ms
    await site.send(SD1, {"ts": device_ms, "alarm": True, "battery_pct": 90})
    (fire,) = [a.alert_id for a in site.gateway.alerts.open_alerts()]
    assert site.gateway.notifier is not None
    await site.gateway.notifier.process()
    await _close(site, fire)
    for _ in range(2):  # the detector's all-clear, ten minutes apart
        site.clock.advance(601)
        device_ms += 601_000
        await site.send(SD1, {"ts": device_ms, "alarm": False, "battery_pct": 90})
    assert site.gateway.alerts.get(fire).resolved_ms is not None
    await site.gateway.notifier.process()

    site.gateway.retention.prune()  # the hourly pass

    detail = await site.get(f"/api/v1/alerts/{fire}")
    assert detail.status_code == 200
    assert detail.json()["alert"]["closed_by"] is not None


@pytest.mark.parametrize("kept_after", [KEPT_A_YEAR, KEEP_ALL], ids=["a-year", "for-ever"])
async def test_a_fall_let_go_is_not_told_again_after_retention_was_made_longer(
    tmp_path: Path, kept_after: dict[str, int | None]
) -> None:
    """Closed falls were let go after 30 days; the district then keeps alerts a year (or
    for ever). A bracelet re-uploads the month-old fall: retention let it go, and the
    ids of the life-safety alerts it let go are kept to tell so. Nobody is called out."""
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock, retention=KEPT_30_DAYS) as site:
        fall_ms, alert_id = await _a_fall_let_go(site)
    async with open_site(tmp_path, clock, retention=kept_after) as site:
        await _sent_again_and_not_told(site, fall_ms, alert_id)


async def test_a_tamper_let_go_is_not_made_again_after_retention_was_made_longer(
    tmp_path: Path,
) -> None:
    # Not a life-safety alert, but its detector's stored events come again all the same:
    # a district that keeps alerts longer from now on must not see a month-old tamper
    # opened again, for somebody to go and look at a detector handled weeks ago.
    clock = ManualClock(T0)
    tamper = "community/hgy/smoke_detector/sd-1/event"
    async with open_site(tmp_path, clock, retention=KEPT_30_DAYS) as site:
        await site.send(tamper, {"ts": T0, "event": "tamper"})
        (alert_id,) = [a.alert_id for a in site.gateway.alerts.open_alerts()]
        await _close(site, alert_id)
        await _later(site, 31 * DAY_S)
        for _ in range(40):  # hourly reports, past what the redelivery filter keeps
            site.clock.advance(HOUR_S)
            await site.send(SD1, {"ts": site.clock.now_ms(), "alarm": False, "battery_pct": 90})
        assert site.gateway.retention.prune().alerts == 1
    async with open_site(tmp_path, clock, retention=KEPT_A_YEAR) as site:
        await site.send(tamper, {"ts": T0, "event": "tamper"})
        assert site.gateway.alerts.open_alerts() == []
        # A tamper of today still is one.
        await site.send(tamper, {"ts": site.clock.now_ms(), "event": "tamper"})
        assert [a.rule for a in site.gateway.alerts.open_alerts()] == ["smoke_tampering"]


async def test_a_fire_alarm_sent_again_while_its_closed_alert_is_still_kept_does_not_hide_a_new_fire(
    site: Site,
) -> None:
    """As after the alert was let go (test_retention), but before the hourly pass came
    to it: the month-old alarm, uploaded again, must not leave a timer that takes a fire
    of now into the closed alert nobody watches."""
    await _a_fire_closed_a_month_ago(site)
    # The month-old alarm, uploaded again, before the pass let its alert go.
    await site.send(SD1, {"ts": T0, "alarm": True, "battery_pct": 90})
    site.gateway.retention.prune()
    # A fire now.
    site.clock.advance(60)
    await site.send(SD1, {"ts": site.clock.now_ms(), "alarm": True, "battery_pct": 90})
    assert [a.rule for a in site.gateway.alerts.open_alerts()] == ["fire_alarm"]


def _counting_audit_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many thousands of SQLite's steps the audit connections opened from now on
    take: those of retention's pass over the audit, in which each statement holds the
    outbox file's write lock (an alarm's commit waits for it)."""
    steps = [0]

    def counting(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = open_book(*args, **kw)

        def step() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(step, 1000)
        return conn

    monkeypatch.setattr("gateway.api.audit.open_book", counting)
    return steps


def _reads_kept(tmp_path: Path, count: int, at_ms: int) -> None:
    with closing(sqlite3.connect(tmp_path / "outbox.sqlite3")) as conn, conn:
        conn.executemany(
            "INSERT INTO audit (at_ms, actor, role, community, device_id, what, via)"
            " VALUES (?, 'desk', 'operator', 'hgy', 'br-1', 'person', 'GET /api/v1/alerts')",
            ((at_ms,) for _ in range(count)),
        )


async def test_an_hourly_pass_over_the_audit_holds_the_outbox_s_lock_no_longer_for_years_of_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of personal data kept within `audit_days` (a district's desks read
    thousands a day): an hourly pass with nothing, or little, to let go must not go
    through all of them under the outbox's write lock, for which alarms' commits wait
    (1,000,000 reads kept: about 90 ms of the lock at every pass; 5,000,000: 300 ms)."""
    steps = _counting_audit_steps(monkeypatch)
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock, retention=KEPT_30_DAYS) as site:
        _reads_kept(tmp_path, 1_000, clock.now_ms())
        site.gateway.retention.prune()
        few = steps[0]
        _reads_kept(tmp_path, 100_000, clock.now_ms())
        steps[0] = 0
        site.gateway.retention.prune()
        many = steps[0]
    assert many <= 2 * few + 20, (few, many)


def _take_out_rule(rules_dir: Path, name: str) -> None:
    path = rules_dir / "smoke_detector.yaml"
    data = yaml.safe_load(path.read_text("utf-8"))
    data["rules"] = [rule for rule in data["rules"] if rule["name"] != name]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")


@pytest.mark.parametrize("when", ["at a reload", "while stopped"])
async def test_a_closed_alert_of_a_rule_taken_out_is_let_go_in_its_time(
    tmp_path: Path, when: str
) -> None:
    # The detector still alarmed when its alert was closed; then the rule was taken out
    # (renamed, replaced): nothing will ever clear its timer, which held the alert, and
    # the sheet of closed alerts kept it, for ever.
    rules_dir = shipped_rules_in(tmp_path)
    clock = ManualClock(T0)
    config = site_config(tmp_path, retention=KEPT_30_DAYS).model_copy(
        update={"rules_dir": rules_dir}
    )
    async with serve_site(Gateway(config, clock), clock) as site:
        await site.send(SD1, {"ts": clock.now_ms(), "alarm": True, "battery_pct": 90})
        (fire,) = [a.alert_id for a in site.gateway.alerts.open_alerts() if a.rule == "fire_alarm"]
        await _close(site, fire)
        _take_out_rule(rules_dir, "fire_alarm")
        if when == "at a reload":
            site.gateway.reload_rules()
            await _later(site, 31 * DAY_S)
            assert site.gateway.retention.prune().alerts == 1
            assert (await site.get(f"/api/v1/alerts/{fire}")).status_code == 404
    if when == "while stopped":
        async with serve_site(Gateway(config, clock), clock) as site:
            await _later(site, 31 * DAY_S)
            assert site.gateway.retention.prune().alerts == 1
            assert (await site.get(f"/api/v1/alerts/{fire}")).status_code == 404


async def test_a_closed_offline_alert_of_a_device_taken_out_is_let_go_in_its_time(
    tmp_path: Path,
) -> None:
    # A resident moves away: the bracelet's offline alert is closed and the bracelet taken
    # out of the sheet. Its timer goes with it, and the closed alert is let go in its time.
    clock = ManualClock(T0)
    async with open_site(tmp_path, clock, retention=KEPT_30_DAYS) as site:
        await ten_silent_minutes(site)
        offline = {
            a.device_id: a.alert_id
            for a in site.gateway.alerts.open_alerts()
            if a.rule == "device_offline"
        }
        alert_id = offline["br-1"]
        await _close(site, alert_id)
        path = config_file(site, tmp_path)
        edit_registry(tmp_path, WITHOUT_BR_1)
        assert (await site.gateway.reload(path)).taken
        await _later(site, 31 * DAY_S)
        await _later(site, 60)
        site.gateway.retention.prune()
        assert (await site.get(f"/api/v1/alerts/{alert_id}")).status_code == 404
