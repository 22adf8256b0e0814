"""The gateway's own records let go once the config no longer keeps them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.notify.notice import Notice
from gateway.retention import FIRST_PASS_S, Pruned
from tests.unit.api.conftest import ADMIN, OPERATOR, T0, WORKER, Site, open_site

DAY_S = 24 * 3600
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
