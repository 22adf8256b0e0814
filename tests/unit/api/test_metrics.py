from collections import Counter
from pathlib import Path

import pytest

from gateway.api.metrics import render
from gateway.clock import ManualClock
from gateway.decode.record import DeviceRef, Reading, TimeSource
from gateway.rules.alert import AlertState
from gateway.stats import Stats
from tests.unit.api.conftest import (
    DESK_HGY,
    T0,
    TWO_COMMUNITIES,
    Site,
    count_alerts_read,
    district,
    open_site,
)


async def test_metrics_count_traffic_rejects_and_alerts(site: Site) -> None:
    await site.send("community/hgy/bracelet/br-1/telemetry", {"ts": T0, "heart_rate_bpm": 70})
    await site.send("community/hgy/bracelet/br-1/telemetry", b"nope")
    alert_id = await site.fall()
    await site.post(f"/api/v1/alerts/{alert_id}/acknowledge")
    response = await site.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(response.text.splitlines())
    assert 'gateway_messages_total{device_type="bracelet"} 2' in lines
    assert 'gateway_rejected_messages_total{reason="not_json"} 1' in lines
    assert 'gateway_alerts{state="acknowledged"} 1' in lines
    assert 'gateway_alerts{state="firing"} 0' in lines
    assert "gateway_alerts_fired_total 1" in lines
    assert "# TYPE gateway_outbox_depth_lines gauge" in lines


async def test_a_scrape_counts_the_open_alerts_without_reading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prometheus scrapes every 15 s: an entry made of each open alert to count it held
    # the loop the alarms are committed on for over half a second at 60,000 open.
    async with district(tmp_path) as site:
        alert_id = await site.fall()
        await site.post(f"/api/v1/alerts/{alert_id}/acknowledge")
        firing = [a for a in site.gateway.alerts.open_alerts() if a.state is AlertState.FIRING]
        read = count_alerts_read(monkeypatch)
        lines = set((await site.client.get("/metrics")).text.splitlines())
        assert f'gateway_alerts{{state="firing"}} {len(firing)}' in lines
        assert 'gateway_alerts{state="acknowledged"} 1' in lines
        assert 'gateway_alerts{state="arrived"} 0' in lines
        assert read[0] == 0, f"{read[0]} alerts read to count them"


async def test_metrics_and_health_are_of_the_installation_and_name_no_community(
    tmp_path: Path,
) -> None:
    async with open_site(tmp_path, ManualClock(T0), registry_text=TWO_COMMUNITIES) as site:
        for community in ("hgy", "lgy"):
            await site.send(f"community/{community}/bracelet/br-1/telemetry", b"nope")
            await site.send(
                f"community/{community}/bracelet/br-1/event",
                {"ts": T0, "event": "fall", "confidence": 0.9},
            )
        # Anyone reads them, a desk of one community too: totals, by no community.
        for path in ("/metrics", "/health/live", "/health/ready"):
            response = await site.get(path, DESK_HGY)
            assert response.status_code == 200, path
            assert "hgy" not in response.text and "lgy" not in response.text
        lines = set((await site.client.get("/metrics")).text.splitlines())
        assert 'gateway_rejected_messages_total{reason="not_json"} 2' in lines
        assert "gateway_alerts_fired_total 2" in lines


async def test_metrics_tell_while_the_disk_set_aside_is_given_back(site: Site) -> None:
    reserve = site.gateway.outbox.reserve
    assert reserve.restore()
    response = await site.client.get("/metrics")
    assert "gateway_disk_reserve_given_back 0" in response.text.splitlines()
    assert reserve.release()
    response = await site.client.get("/metrics")
    assert "gateway_disk_reserve_given_back 1" in response.text.splitlines()
    assert reserve.restore()
    response = await site.client.get("/metrics")
    assert "gateway_disk_reserve_given_back 0" in response.text.splitlines()


async def test_metrics_count_the_damaged_files_moved_aside(site: Site) -> None:
    response = await site.client.get("/metrics")
    assert "gateway_damaged_files 0" in response.text.splitlines()
    outbox = site.gateway.outbox.path
    outbox.with_name(outbox.name + ".damaged").write_bytes(b"")
    outbox.with_name(outbox.name + ".damaged-wal").write_bytes(b"")
    response = await site.client.get("/metrics")
    assert "gateway_damaged_files 1" in response.text.splitlines()


async def test_metrics_tell_how_far_behind_the_devices_messages_are_taken_in(site: Site) -> None:
    response = await site.client.get("/metrics")
    # Before any message with the device's time, there is nothing to tell.
    assert "# TYPE gateway_ingest_lag_seconds gauge" in response.text.splitlines()
    assert not any(
        line.startswith("gateway_ingest_lag_seconds ") for line in response.text.splitlines()
    )
    await site.send(
        "community/hgy/bracelet/br-1/telemetry", {"ts": T0 - 42_500, "heart_rate_bpm": 70}
    )
    response = await site.client.get("/metrics")
    assert "gateway_ingest_lag_seconds 42.5" in response.text.splitlines()


async def test_metrics_name_the_rule_that_failed_at_run_time(site: Site) -> None:
    record = Reading(DeviceRef("hgy", "bracelet", "br-1"), T0, TimeSource.DEVICE, {})
    site.gateway.rules.faults.condition("left_safe_area", record, ZeroDivisionError())
    response = await site.client.get("/metrics")
    assert 'gateway_rule_faults_total{rule="left_safe_area"} 1' in response.text.splitlines()


def test_notifications_and_escalations_with_escaped_labels() -> None:
    stats = Stats()
    stats.notifications[("wecom", "sent")] += 3
    stats.notifications[('sm"s', "failed")] += 1
    stats.escalations = 2
    stats.write_latency_s = 0.25
    for seconds in (0.003, 0.25, 0.3, 60.0):
        stats.write_latency.observe(seconds)
    text = render(stats, Counter(), 0)
    assert 'gateway_notifications_total{channel="wecom",result="sent"} 3' in text
    assert 'gateway_notifications_total{channel="sm\\"s",result="failed"} 1' in text
    assert "gateway_escalations_total 2" in text
    assert "gateway_write_latency_last_seconds 0.25" in text
    lines = text.splitlines()
    assert 'gateway_write_latency_seconds_bucket{le="0.005"} 1' in lines
    assert 'gateway_write_latency_seconds_bucket{le="0.25"} 2' in lines
    assert 'gateway_write_latency_seconds_bucket{le="0.5"} 3' in lines
    assert 'gateway_write_latency_seconds_bucket{le="10"} 3' in lines
    assert 'gateway_write_latency_seconds_bucket{le="+Inf"} 4' in lines
    assert "gateway_write_latency_seconds_count 4" in lines
    assert "gateway_write_latency_seconds_sum 60.553" in lines


def test_metrics_counters_above_a_million_are_exposed_exactly() -> None:
    # Prometheus takes rates from a counter's exact value: past a million lines, six
    # significant digits would move it in steps of ten.
    stats = Stats(lines_stored=1_234_567, outbox_depth=2_345_678)
    stats.rejected_by_reason["not_json"] = 1_000_001
    text = render(stats, Counter(), 0)
    assert exposed(text, "gateway_lines_stored_total") == 1_234_567
    assert exposed(text, "gateway_outbox_depth_lines") == 2_345_678
    assert 'gateway_rejected_messages_total{reason="not_json"} 1000001' in text.splitlines()


def exposed(text: str, name: str) -> float:
    """The value of the unlabelled sample `name` in a Prometheus exposition."""
    (value,) = [line.split(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)
