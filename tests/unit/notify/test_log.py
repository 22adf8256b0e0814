import sqlite3
from contextlib import closing
from pathlib import Path

from gateway.notify.log import (
    ROUTE_STEPS,
    AttemptResult,
    DeliveryAttempt,
    Notification,
    NotificationLog,
    PlannedStep,
)

T0 = 1_767_225_600_000


def earlier_route_steps(path: Path, *rows: tuple[str, int, int, int]) -> None:
    """Steps planned as an earlier version did, by the place of the route."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("DROP TABLE IF EXISTS escalation_plan")
        conn.executescript(ROUTE_STEPS)
        conn.executemany("INSERT INTO escalation_steps VALUES (?, ?, ?, ?, 'waiting')", rows)


def test_a_log_kept_in_the_outbox_by_an_earlier_version_moves_to_its_own_file(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    earlier = NotificationLog(outbox)
    sent = Notification("a1/0.0/wang/firing", "a1", ("wecom",), 0, 1, T0, "sent", "{}")
    owed = Notification("a1/0.1/li/firing", "a1", ("sms",), 0, 0, T0 + 60_000, "pending", "{}")
    earlier.add(sent, T0)
    earlier.add(owed, T0)
    earlier.record(
        DeliveryAttempt(sent.key, "a1", "wang", "wecom", T0, AttemptResult.SENT, "", 12.0)
    )
    earlier.close()
    earlier_route_steps(outbox, ("a1", 0, 1, T0 + 180_000))

    path = tmp_path / "outbox.notifications.sqlite3"
    log = NotificationLog(path, moved_from=outbox, route_chains=["critical", "normal"])
    # What was sent stays sent (no second message), what was owed is still owed.
    assert log.get(sent.key) == sent
    assert log.due(T0 + 60_000) == [owed]
    assert log.due_steps(T0 + 180_000) == [PlannedStep("a1", "critical", 1, T0 + 180_000)]
    assert [a.result for a in log.attempts("a1")] == [AttemptResult.SENT]
    log.close()
    with sqlite3.connect(outbox) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert not tables & {"notifications", "notification_attempts", "escalation_steps"}

    # Opened again, nothing is moved twice or lost.
    again = NotificationLog(path, moved_from=outbox, route_chains=["normal"])
    assert again.get(sent.key) == sent
    assert len(again.attempts("a1")) == 1
    assert again.due_steps(T0 + 180_000) == [PlannedStep("a1", "critical", 1, T0 + 180_000)]
    again.close()


def test_steps_an_earlier_version_planned_by_route_take_the_name_of_its_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.notifications.sqlite3"
    NotificationLog(path).close()
    earlier_route_steps(
        path,
        ("a1", 0, 1, T0 + 180_000),
        ("a1", 1, 0, T0),
        # A route the policy in force no longer has.
        ("a2", 2, 3, T0 + 600_000),
    )
    log = NotificationLog(path, route_chains=["critical", "normal"])
    assert log.due_steps(T0 + 600_000) == [
        PlannedStep("a1", "normal", 0, T0),
        PlannedStep("a1", "critical", 1, T0 + 180_000),
        PlannedStep("a2", "", 3, T0 + 600_000),
    ]
    log.close()
    with closing(sqlite3.connect(path)) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "escalation_steps" not in tables


def test_the_sends_read_back_are_the_messages_that_went_out_in_the_window(
    tmp_path: Path,
) -> None:
    log = NotificationLog(tmp_path / "outbox.notifications.sqlite3")

    def attempt(key: str, channel: str, at_s: int, result: AttemptResult, detail: str = "") -> None:
        log.record(DeliveryAttempt(key, "a1", "wang", channel, T0 + at_s * 1000, result, detail,
                                   None))  # fmt: skip

    attempt("old", "wecom", 0, AttemptResult.SENT)
    attempt("one", "wecom", 10, AttemptResult.SENT)
    attempt("two", "sms", 11, AttemptResult.RETRY, "provider down")
    # Three notifications in one digest: one message.
    for key in ("d1", "d2", "d3"):
        attempt(key, "wecom", 12, AttemptResult.SENT, "in digest wecom/wang/digest/1")
    attempt("d4", "wecom", 13, AttemptResult.SENT, "in digest wecom/wang/digest/2")
    attempt("three", "sms", 14, AttemptResult.SENT)
    sends = log.sends_since(T0 + 10_000)
    assert [(s.channel, s.at_ms - T0, s.notification_key) for s in sends] == [
        ("wecom", 10_000, "one"),
        ("wecom", 12_000, "d3"),
        ("wecom", 13_000, "d4"),
        ("sms", 14_000, "three"),
    ]
    log.close()
