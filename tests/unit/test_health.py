from gateway.health import HealthReport
from gateway.stats import Stats


def test_each_report_carries_the_counts_since_the_previous_one() -> None:
    stats = Stats(messages_in=100, lines_stored=180, lines_written=150, outbox_depth=30)
    stats.rejected_by_reason.update({"not_json": 2, "bad_crc": 1})
    report = HealthReport("gw-1")
    first = report.lines(stats, 1_000)
    assert first[0] == (
        "gateway,instance=gw-1 messages_in=100i,lines_stored=180i,lines_written=150i,"
        "redeliveries=0i,write_failures=0i,commit_failures=0i,rule_faults=0i,rejected=3i,"
        "outbox_depth=30i,"
        "write_latency_ms=0.0,alerts_open=0i,disk_reserve_given_back=false,damaged_files=0i 1000"
    )
    assert first[1:] == [
        "gateway_rejects,instance=gw-1,reason=bad_crc rejected=1i 1000",
        "gateway_rejects,instance=gw-1,reason=not_json rejected=2i 1000",
    ]
    stats.messages_in += 10
    stats.rejected_by_reason["not_json"] += 1
    stats.write_latency_s = 0.0125
    stats.rule_faults["overflow_ratio"] += 2
    stats.note_commit("main", "database or disk is full")
    stats.note_commit("main", "database or disk is full")
    stats.note_commit("main", None)
    second = report.lines(stats, 2_000, reserve_given_back=True, damaged_files=2)
    assert "commit_failures=2i," in second[0]
    assert "rule_faults=2i," in second[0]
    assert "messages_in=10i," in second[0]
    assert "lines_stored=0i," in second[0]
    assert "rejected=1i," in second[0]
    assert "write_latency_ms=12.5," in second[0]
    assert "disk_reserve_given_back=true,damaged_files=2i " in second[0]
    assert "ingest_lag_s" not in second[0]
    stats.ingest_lag_s = 7.25
    assert "damaged_files=0i,ingest_lag_s=7.2 3000" in report.lines(stats, 3_000)[0]
    # A reason with nothing new since the last report makes no line.
    assert second[1:] == ["gateway_rejects,instance=gw-1,reason=not_json rejected=1i 2000"]
