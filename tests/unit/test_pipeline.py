import asyncio
import json
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway import PROJECT_ROOT
from gateway.app import Gateway
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.decode.decoder import CODECS, Decoder
from gateway.decode.dedup import RedeliveryFilter
from gateway.decode.profile import load_profiles
from gateway.decode.record import (
    DeviceRef,
    Event,
    Reading,
    Record,
    StatusReport,
    TimeSource,
    dump_records,
    load_records,
)
from gateway.errors import DamagedStoreError, StoreError
from gateway.ingest.message import InboundMessage
from gateway.pipeline import COMMIT_RETRY_MAX_S, BatchCounts, IngestPipeline
from gateway.registry import Registry
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.book import AlertBook
from gateway.rules.engine import RuleEngine
from gateway.rules.silence import SilenceBook
from gateway.rules.stage import AlertStage
from gateway.stats import Stats
from gateway.store.outbox import Outbox
from gateway.store.series import SeriesMapper
from tests.catalogue import shipped_rules
from tests.integration.harness import wait_until
from tests.unit.disk import damage, fill_the_disk, make_room

NOW_MS = 1_767_225_600_000


class FakeSource:
    def __init__(self) -> None:
        self.acked: list[int] = []

    async def next_batch(self, max_messages: int, linger_s: float) -> list[InboundMessage]:
        return []

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        self.acked.extend(m.mid for m in messages)


def pipeline(
    path: Path,
    redelivery: RedeliveryFilter | None = None,
    *,
    handoff: bool = False,
    clock: ManualClock | None = None,
) -> IngestPipeline:
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    registry = Registry()
    outbox = Outbox(path)
    redelivery = redelivery or RedeliveryFilter()
    redelivery.restore(outbox.redelivery_keys())
    alarm_redelivery = RedeliveryFilter()
    alarm_redelivery.restore(outbox.redelivery_keys("alarm"))
    return IngestPipeline(
        Decoder(profiles, registry),
        redelivery,
        SeriesMapper(profiles, registry),
        outbox,
        Stats(),
        alarm_redelivery=alarm_redelivery,
        handoff=handoff,
        clock=clock,
    )


def msg(mid: int, payload: dict[str, object] | bytes, kind: str = "telemetry") -> InboundMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return InboundMessage(f"community/hgy/bracelet/br-1/{kind}", body, NOW_MS, mid, 1)


async def test_a_batch_is_committed_then_acknowledged_then_handed_on(tmp_path: Path) -> None:
    p = pipeline(tmp_path / "o.sqlite3")
    seen: list[Record] = []
    source = FakeSource()

    def listen(records: Sequence[Record]) -> None:
        # By the time listeners run, the batch is durable and acknowledged.
        assert p._outbox.depth() == 2
        assert source.acked == [1, 2, 3]
        seen.extend(records)

    p.listeners.append(listen)
    await p.handle(
        source,
        [
            msg(1, {"ts": NOW_MS, "seq": 1, "heart_rate_bpm": 70}),
            msg(2, b"garbage"),
            msg(3, {"ts": NOW_MS, "seq": 2, "event": "sos"}, "event"),
        ],
    )
    assert len(seen) == 2
    assert p._stats.rejected_by_reason == {"not_json": 1}
    assert [q.entry.reason for q in p._outbox.quarantine()] == ["not_json"]


async def test_the_telemetry_lane_tells_how_far_behind_the_devices_it_takes_messages_in(
    tmp_path: Path,
) -> None:
    telemetry = pipeline(tmp_path / "o.sqlite3", handoff=True)
    counts: list[BatchCounts] = []
    telemetry.counts_listeners.append(counts.append)
    # Queued at the broker for 90 s; one without the device's time tells nothing.
    await telemetry.handle(
        FakeSource(),
        [
            msg(1, {"ts": NOW_MS - 90_000, "seq": 1, "heart_rate_bpm": 70}),
            msg(2, {"ts": NOW_MS - 90_000, "seq": 2, "heart_rate_bpm": 71}),
            msg(3, {"seq": 3, "heart_rate_bpm": 72}),
        ],
    )
    assert [c.lag_s for c in counts] == [90.0]
    # An alarm is not telemetry, and its lane's batches leave the figure as it is.
    await telemetry.handle(
        FakeSource(), [msg(4, {"ts": NOW_MS, "seq": 9, "event": "sos"}, "event")], alarm=True
    )
    assert counts[-1].lag_s is None
    # The main process's counters take it from the telemetry process's counts.
    stats = Stats()
    for batch in counts:
        batch.add_to(stats)
    assert stats.ingest_lag_s == 90.0
    assert "lag=90.0s" in stats.summary()


async def test_redelivery_makes_nothing_twice_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    first = pipeline(path)
    source = FakeSource()
    await first.handle(source, [msg(1, {"ts": NOW_MS, "seq": 9, "event": "fall"}, "event")])
    first._outbox.close()

    second = pipeline(path)
    seen: list[Record] = []
    second.listeners.append(seen.extend)
    await second.handle(
        source,
        [
            msg(1, {"ts": NOW_MS, "seq": 9, "event": "fall"}, "event"),
            msg(2, {"ts": NOW_MS + 1, "seq": 10, "event": "fall"}, "event"),
            msg(3, {"ts": NOW_MS + 1, "seq": 10, "event": "fall"}, "event"),
        ],
    )
    assert [r.seq for r in seen] == [10]
    assert second._stats.redeliveries == 2
    # Redeliveries are still acknowledged, or the broker would send them forever.
    assert source.acked == [1, 1, 2, 3]
    assert second._outbox.depth() == 2


def test_a_seq_too_large_for_a_redelivery_key_is_quarantined_and_the_batch_goes_on(
    tmp_path: Path,
) -> None:
    # Without `ts`, `seq` is the redelivery key, kept as a 64-bit integer. A larger one
    # used to stop the batch unacknowledged, so that the broker sent it again for ever.
    p = pipeline(tmp_path / "o.sqlite3")
    batch = p.prepare(
        [
            msg(1, {"seq": 2**64, "heart_rate_bpm": 70}),
            msg(2, {"seq": 2**63 - 1, "heart_rate_bpm": 71}),
        ]
    )
    assert [(q.reason, q.payload) for q in batch.quarantined] == [
        ("wrong_type", b'{"seq": 18446744073709551616, "heart_rate_bpm": 70}')
    ]
    assert batch.lines == [
        f"bracelet,community=hgy,device_id=br-1 heart_rate_bpm=71i,gateway_time=true {NOW_MS}"
    ]


def test_a_message_that_trips_a_fault_of_the_gateway_is_quarantined_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    p = pipeline(tmp_path / "o.sqlite3")
    decode = Decoder.decode

    def faulty(self: Decoder, message: InboundMessage) -> object:
        if message.mid == 2:
            raise KeyError("a fault")
        return decode(self, message)

    monkeypatch.setattr(Decoder, "decode", faulty)
    batch = p.prepare([msg(mid, {"seq": mid, "heart_rate_bpm": 70}) for mid in (1, 2, 3)])
    assert [(q.reason, q.detail, q.payload) for q in batch.quarantined] == [
        ("internal_error", "KeyError: 'a fault'", b'{"seq": 2, "heart_rate_bpm": 70}')
    ]
    assert [r.seq for r in batch.records] == [1, 3]
    assert "decoding a message on community/hgy/bracelet/br-1/telemetry failed" in caplog.text


async def test_a_value_line_protocol_cannot_carry_is_quarantined(tmp_path: Path) -> None:
    profiles_dir = tmp_path / "profiles"
    profiles_dir.mkdir()
    (profiles_dir / "counter.yaml").write_text(
        "device_type: counter\ntopics: ['community/+/counter/+/+']\nperiod_s: 60\n"
        "telemetry: {measurement: counter, fields: {total: {type: int}}}\n"
    )
    profiles = load_profiles(profiles_dir, CODECS)
    p = IngestPipeline(
        Decoder(profiles, Registry()),
        RedeliveryFilter(),
        SeriesMapper(profiles, Registry()),
        Outbox(tmp_path / "o.sqlite3"),
        Stats(),
    )
    topic = "community/hgy/counter/c-1/telemetry"
    batch = p.prepare(
        [
            InboundMessage(topic, b'{"total": 99999999999999999999}', NOW_MS, 1, 1),
            InboundMessage(topic, b'{"total": 5}', NOW_MS, 2, 1),
        ]
    )
    assert [q.reason for q in batch.quarantined] == ["unencodable"]
    assert batch.lines == [
        f"counter,community=hgy,device_id=c-1 total=5i,gateway_time=true {NOW_MS}"
    ]


async def test_an_alarm_is_committed_while_a_large_telemetry_batch_is_still_decoding(
    tmp_path: Path,
) -> None:
    p = pipeline(tmp_path / "o.sqlite3")
    telemetry, alarms = FakeSource(), FakeSource()
    order: list[str] = []
    p.listeners.append(lambda records: order.append(type(records[0]).__name__))
    backlog = [
        msg(mid, {"ts": NOW_MS + mid, "seq": mid, "heart_rate_bpm": 70}) for mid in range(1, 2001)
    ]
    sos = msg(1, {"ts": NOW_MS, "seq": 9000, "event": "sos"}, "event")

    main_lane = asyncio.create_task(p.handle(telemetry, backlog))
    await asyncio.sleep(0)  # the telemetry batch has begun decoding
    await p.handle(alarms, [sos], alarm=True)
    assert alarms.acked == [1]
    assert telemetry.acked == []
    await main_lane
    assert order == ["Event", "Reading"]
    assert len(telemetry.acked) == 2000


async def test_each_lane_remembers_its_own_redeliveries_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    first = pipeline(path)
    source = FakeSource()
    await first.handle(
        source, [msg(1, {"ts": NOW_MS, "seq": 5, "event": "fall"}, "event")], alarm=True
    )
    await first.handle(source, [msg(2, {"ts": NOW_MS, "seq": 6, "heart_rate_bpm": 70})])
    first._outbox.close()

    second = pipeline(path)
    seen: list[Record] = []
    second.listeners.append(seen.extend)
    await second.handle(
        source, [msg(1, {"ts": NOW_MS, "seq": 5, "event": "fall"}, "event")], alarm=True
    )
    await second.handle(source, [msg(2, {"ts": NOW_MS, "seq": 6, "heart_rate_bpm": 70})])
    assert seen == []
    assert second._stats.redeliveries == 2


async def test_an_alarm_lane_alone_remembers_its_redeliveries_from_its_first_alarm(
    tmp_path: Path,
) -> None:
    # The main process, with the telemetry in a process of its own, takes in alarms
    # alone; a fresh installation's first alarm finds every filter empty.
    path = tmp_path / "o.sqlite3"
    first = pipeline(path)
    fall = msg(1, {"ts": NOW_MS, "seq": 5, "event": "fall"}, "event")
    await first.handle(FakeSource(), [fall], alarm=True)
    first._outbox.close()
    # The gateway is killed before the broker saw the acknowledgement: the fall comes again.
    second = pipeline(path)
    seen: list[Record] = []
    second.listeners.append(seen.extend)
    await second.handle(FakeSource(), [fall], alarm=True)
    assert seen == []
    assert second._stats.redeliveries == 1


def judging(path: Path, clock: ManualClock | None = None) -> IngestPipeline:
    """The main process's side: rules, no telemetry of its own."""
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    registry = Registry()
    clock = clock or ManualClock(NOW_MS)
    engine = RuleEngine(shipped_rules(), registry, profiles.periods_s())
    return IngestPipeline(
        Decoder(profiles, registry),
        RedeliveryFilter(),
        SeriesMapper(profiles, registry),
        Outbox(path),
        Stats(),
        alerts=AlertStage(engine, AlertBook(path), SilenceBook(path, registry), clock),
        clock=clock,
    )


def shed(mid: int, seq: int, temperature_c: float) -> InboundMessage:
    body = {
        "ts": NOW_MS + seq * 1000,
        "seq": seq,
        "ambient_temp_c": 18.0,
        "smoke": False,
        "ports": [{"port": 2, "charging": True, "current_a": 2.0, "temperature_c": temperature_c}],
    }
    topic = "community/hgy/charging_shed/cs-1/telemetry"
    return InboundMessage(topic, json.dumps(body).encode(), NOW_MS, mid, 1)


async def test_records_handed_over_are_judged_once_even_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    telemetry = pipeline(path, handoff=True)
    source = FakeSource()
    counts: list[BatchCounts] = []
    telemetry.counts_listeners.append(counts.append)
    await telemetry.handle(source, [shed(1, 1, 30.0), shed(2, 2, 70.0), msg(3, b"garbage")])
    # Stored and acknowledged with the records handed over, nothing judged yet.
    assert source.acked == [1, 2, 3]
    assert telemetry._outbox.depth() == 4
    assert len(telemetry._outbox.handoffs(10)) == 1
    # Each shed message is a reading of the shed and one of its port.
    assert [(c.messages, c.records, c.rejected) for c in counts] == [(3, 4, {"not_json": 1})]

    # The main process stops before it could judge them: they wait for the next start.
    judge = judging(path)
    fired: list[AlertChange] = []
    judge.alert_listeners.append(fired.extend)
    seen: list[Record] = []
    judge.listeners.append(seen.extend)
    assert await judge.judge_handoffs() == 1
    assert [(c.rule, c.state) for c in fired] == [("port_overheating", AlertState.PENDING)]
    assert [r.time_ms for r in seen] == [NOW_MS + 1000] * 2 + [NOW_MS + 2000] * 2
    assert judge._outbox.handoffs(10) == []
    assert await judge.judge_handoffs() == 0
    assert judge.alerts is not None
    judge.alerts.book.close()

    # After a restart nothing is judged twice, and the pending alert carries on: still
    # hot 30 s later, it fires.
    again = judging(path)
    fired.clear()
    again.alert_listeners.append(fired.extend)
    assert await again.judge_handoffs() == 0
    await telemetry.handle(source, [shed(4, 32, 71.0)])
    assert await again.judge_handoffs() == 1
    assert [(c.rule, c.state) for c in fired] == [("port_overheating", AlertState.FIRING)]


async def test_a_handoff_this_version_cannot_read_is_reported_and_passed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite3"
    outbox = Outbox(path)
    outbox.commit(["m f=1i 1"], [], None, handoff=b"not the records format")
    outbox.close()
    judge = judging(path)
    telemetry = pipeline(path, handoff=True)
    await telemetry.handle(FakeSource(), [shed(1, 1, 70.0)])
    fired: list[AlertChange] = []
    judge.alert_listeners.append(fired.extend)
    # The unreadable batch is logged and removed; the next one is judged as usual.
    assert await judge.judge_handoffs() == 1
    assert "not judged" in caplog.text
    assert await judge.judge_handoffs() == 1
    assert [c.rule for c in fired] == ["port_overheating"]
    assert judge._outbox.handoffs(10) == []


async def test_records_handed_over_that_cannot_be_read_are_read_again_and_judged_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    telemetry = pipeline(path, handoff=True)
    await telemetry.handle(FakeSource(), [shed(1, 1, 70.0)])
    clock = ManualClock(NOW_MS)
    judge = judging(path, clock)
    told: list[str | None] = []
    judge.commit_listeners.append(told.append)
    fired: list[AlertChange] = []
    judge.alert_listeners.append(fired.extend)
    handed_over, stopping = asyncio.Event(), asyncio.Event()
    # The table out of reach, as a failing disk would leave it: every read fails.
    telemetry._outbox._ingest.execute("ALTER TABLE handoffs RENAME TO handoffs_away")
    running = asyncio.create_task(judge.run(None, stopping, handoffs=handed_over))
    await wait_until(lambda: len(told) == 1, timeout_s=5, what="failed read")
    assert told[0] is not None and "could not be read" in told[0]
    clock.advance(COMMIT_RETRY_MAX_S)
    await wait_until(lambda: len(told) == 2, timeout_s=5, what="second try")
    # Still judging, nothing judged, nothing lost.
    assert not running.done() and fired == []

    telemetry._outbox._ingest.execute("ALTER TABLE handoffs_away RENAME TO handoffs")
    clock.advance(COMMIT_RETRY_MAX_S)
    await wait_until(lambda: bool(fired), timeout_s=5, what="records judged")
    assert [c.rule for c in fired] == ["port_overheating"] and told[2:] == [None]
    await wait_until(lambda: judge._outbox.handoffs(10) == [], timeout_s=5, what="handoff removed")
    stopping.set()
    await asyncio.wait_for(running, timeout=5)
    assert [c.rule for c in fired] == ["port_overheating"]


def test_records_survive_the_handoff_format_unchanged() -> None:
    device = DeviceRef("hgy", "charging_shed", "cs-1")
    records: list[Record] = [
        Reading(device, NOW_MS, TimeSource.DEVICE, {"temperature_c": 70.5, "charging": True}, 7, 2),
        Reading(device, NOW_MS, TimeSource.GATEWAY, {"note": "雨 \n"}),
        Event(device, NOW_MS, TimeSource.DEVICE, "overcurrent", {"current_a": 12}, 8, 1),
        StatusReport(device, NOW_MS, TimeSource.GATEWAY, False),
        StatusReport(device, NOW_MS, TimeSource.RETAINED, True, 3),
    ]
    assert load_records(dump_records(records)) == records


async def test_a_failing_record_listener_holds_up_no_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = judging(tmp_path / "o.sqlite3")
    fired: list[AlertChange] = []
    p.alert_listeners.append(fired.extend)

    def fails(records: Sequence[Record]) -> None:
        raise RuntimeError("a fault of the listener's")

    seen: list[Record] = []
    p.listeners += [fails, seen.extend]
    source = FakeSource()
    sos = InboundMessage(
        "community/hgy/bracelet/br-1/event",
        json.dumps({"ts": NOW_MS, "seq": 1, "event": "sos"}).encode(),
        NOW_MS,
        1,
        1,
    )
    with caplog.at_level("ERROR"):
        await p.handle(source, [sos], alarm=True)
    # Announced, acknowledged, and the other listeners told; the fault logged.
    assert [(c.rule, c.state) for c in fired] == [("sos", AlertState.FIRING)]
    assert source.acked == [1]
    assert len(seen) == 1
    assert "a record listener failed" in caplog.text
    assert "a fault of the listener's" in caplog.text


def sos_from(devices: int) -> list[InboundMessage]:
    return [
        InboundMessage(
            f"community/hgy/bracelet/br-{i}/event",
            json.dumps({"ts": NOW_MS, "seq": 1, "event": "sos"}).encode(),
            NOW_MS,
            i + 1,
            1,
        )
        for i in range(devices)
    ]


async def test_alarms_whose_commit_fails_are_tried_again_and_announced_once_stored(
    tmp_path: Path,
) -> None:
    clock = ManualClock(NOW_MS)
    p = judging(tmp_path / "o.sqlite3", clock)
    told: list[str | None] = []
    p.commit_listeners.append(told.append)
    fired: list[AlertChange] = []
    p.alert_listeners.append(fired.extend)
    fill_the_disk(p._outbox)
    source = FakeSource()
    handling = asyncio.create_task(p.handle(source, sos_from(50), alarm=True))
    await wait_until(lambda: len(told) == 1, timeout_s=5, what="failed commit")
    assert told[0] is not None and "database or disk is full" in told[0]
    # Nothing acknowledged, nothing announced: the broker still has them.
    assert source.acked == [] and fired == []
    # A request that waits on a commit (an acknowledgement from a phone) is told at once.
    with pytest.raises(StoreError, match="the outbox cannot commit"):
        await p.commit([], None)
    clock.advance(COMMIT_RETRY_MAX_S)
    await wait_until(lambda: len(told) == 2, timeout_s=5, what="second try")
    assert not handling.done() and source.acked == []

    make_room(p._outbox)
    clock.advance(COMMIT_RETRY_MAX_S)
    await asyncio.wait_for(handling, timeout=5)
    assert source.acked == list(range(1, 51))
    assert len(fired) == 50 and {c.state for c in fired} == {AlertState.FIRING}
    assert told[2:] == [None] and p.commit_error is None
    assert p._outbox.depth() >= 50


async def test_a_stop_while_commits_fail_leaves_the_batch_to_the_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = pipeline(tmp_path / "o.sqlite3", clock=ManualClock(NOW_MS))
    fill_the_disk(p._outbox)
    batch = [msg(i, {"ts": NOW_MS + i, "seq": i, "heart_rate_bpm": 70}) for i in range(1, 301)]

    class OneBatch(FakeSource):
        async def next_batch(self, max_messages: int, linger_s: float) -> list[InboundMessage]:
            if batch:
                taken = batch[:]
                batch.clear()
                return taken
            await asyncio.sleep(0.01)
            return []

    source = OneBatch()
    stopping = asyncio.Event()
    running = asyncio.create_task(p.run(source, stopping))
    await wait_until(lambda: p.commit_error is not None, timeout_s=5, what="failed commit")
    stopping.set()
    with caplog.at_level("WARNING"):
        # A stop, not a failure of the gateway's: it ends as any stop does.
        await asyncio.wait_for(running, timeout=5)
    assert source.acked == [] and p._outbox.depth() == 0
    assert "stopped with a batch of 300 messages not committed" in caplog.text


async def test_a_damaged_outbox_stops_the_lane_at_once_and_leaves_the_batch_to_the_broker(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    p = pipeline(path, clock=ManualClock(NOW_MS))
    first = [msg(i, {"ts": NOW_MS + i, "heart_rate_bpm": 70}) for i in range(1, 3000)]
    await p.handle(FakeSource(), first)
    p._outbox.close()
    p = pipeline(path, clock=ManualClock(NOW_MS))
    # While it runs.
    damage(path)
    source = FakeSource()
    batch = [msg(i, {"ts": NOW_MS + 5000 + i, "heart_rate_bpm": 70}) for i in range(1, 11)]
    # Not tried again with backoff: on a clock that never moves that would never end.
    with pytest.raises(DamagedStoreError, match="database disk image is malformed"):
        await asyncio.wait_for(p.handle(source, batch), timeout=5)
    assert source.acked == [] and p.commit_error is None


async def test_an_alarm_lane_sos_makes_no_device_queued_behind_it_look_silent(
    tmp_path: Path,
) -> None:
    clock = ManualClock(NOW_MS)
    p = judging(tmp_path / "o.sqlite3", clock)
    assert p.alerts is not None

    def bracelet(mid: int, device_id: str, kind: str, body: dict[str, object]) -> InboundMessage:
        topic = f"community/hgy/bracelet/{device_id}/{kind}"
        return InboundMessage(topic, json.dumps(body).encode(), NOW_MS, mid, 1)

    # The telemetry lane is ten minutes behind: a backlog at the broker.
    backlog_ms = NOW_MS - 600_000
    await p.handle(FakeSource(), [
        bracelet(1, "br-1", "telemetry", {"ts": backlog_ms, "seq": 1, "heart_rate_bpm": 70}),
        bracelet(2, "br-2", "telemetry", {"ts": backlog_ms, "seq": 1, "heart_rate_bpm": 70}),
    ])  # fmt: skip
    # br-1's SOS comes at once on the alarm lane, ahead of the readings queued before it.
    await p.handle(
        FakeSource(), [bracelet(3, "br-1", "event", {"ts": NOW_MS, "seq": 2, "event": "sos"})],
        alarm=True,
    )  # fmt: skip
    clock.advance(5)
    decision = p.alerts.tick(clock.now_ms())
    # br-2's later readings still wait in the backlog: it is not offline.
    assert [c.rule for c in decision.changes] == []
    assert [a.rule for a in p.alerts.book.open_alerts()] == ["sos"]


def bracelet_reading(seq: int) -> InboundMessage:
    return msg(seq, {"ts": NOW_MS + seq * 1000, "seq": seq, "heart_rate_bpm": 70})


async def test_a_restart_keeps_every_key_of_the_last_eight_batches_as_long_as_before(
    tmp_path: Path,
) -> None:
    # A bracelet's backlog comes 8 messages a batch for 4 batches (32 keys: its list is
    # written whole, the log of them goes). The gateway restarts; the broker sends the 4
    # unacknowledged batches again, with 8 new messages of the same backlog, in one batch
    # whose acknowledgement is lost in turn, so that all 40 come once more. Without the
    # restart every one of them is known (the burst keeps all keys of the last eight
    # batches); after it, the 8 oldest were dropped and are stored and judged twice.
    path = tmp_path / "o.sqlite3"
    first = pipeline(path)
    source = FakeSource()
    batches = [[bracelet_reading(b * 8 + i) for i in range(8)] for b in range(4)]
    for batch in batches:
        await first.handle(source, batch)
    first._outbox.close()

    second = pipeline(path)
    resent = [m for batch in batches for m in batch] + [bracelet_reading(100 + i) for i in range(8)]
    await second.handle(source, resent)
    assert second._stats.redeliveries == 32
    await second.handle(source, resent)
    assert second._stats.redeliveries == 32 + 40


async def test_lines_dropped_for_the_gateway_s_own_commits_are_counted_too(
    tmp_path: Path,
) -> None:
    # An outbox at its bound while InfluxDB is down: the alert points the rules commit
    # make room as a batch does, and the lines dropped for them are counted as theirs
    # are (gateway_lines_evicted_total), never silent.
    stats = Stats()
    profiles = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)
    outbox = Outbox(tmp_path / "o.sqlite3", max_bytes=1 << 20)
    p = IngestPipeline(
        Decoder(profiles, Registry()),
        RedeliveryFilter(),
        SeriesMapper(profiles, Registry()),
        outbox,
        stats,
    )
    pad = "x" * 900
    for batch in range(20):
        await p.commit([f'm,batch={batch} pad="{pad}" {i}' for i in range(100)], None)
    for batch in range(20, 40):
        await p.commit_until_stored([f'm,batch={batch} pad="{pad}" {i}' for i in range(100)], None)
    counted = outbox.counters()["outbox_evicted_lines"]
    assert counted > 0 and stats.lines_evicted == counted


async def test_records_handed_over_are_judged_after_a_start_with_the_telemetry_in_process(
    tmp_path: Path,
) -> None:
    # The telemetry process's last batch before a stop, handed over and not judged yet;
    # the gateway started again with `ingest.telemetry_process: false`: judged first, a
    # charging port at 70 °C raising its alert.
    telemetry = pipeline(tmp_path / "outbox.sqlite3", handoff=True)
    await telemetry.handle(FakeSource(), [shed(1, 1, 70.0)])
    telemetry._outbox.close()
    with socket.socket() as nobody:
        # A broker that is not there, bound so that nothing else takes its port.
        nobody.bind(("127.0.0.1", 0))
        config = GatewayConfig.model_validate(
            {
                "mqtt": {"host": "127.0.0.1", "port": nobody.getsockname()[1]},
                "outbox": {"path": tmp_path / "outbox.sqlite3", "synchronous": "normal"},
                "ingest": {"telemetry_process": False},
                "health_interval_s": None,
            }
        )
        gateway = Gateway(config, ManualClock(NOW_MS))
        running = asyncio.create_task(gateway.run())
        try:
            await wait_until(lambda: not gateway.outbox.handoffs_waiting(), what="judged")
            assert [a.rule for a in gateway.alerts.open_alerts()] == ["port_overheating"]
        finally:
            gateway.stop()
            await asyncio.wait_for(running, timeout=10)
