import sqlite3
from pathlib import Path

from gateway.notify.log import (
    AttemptResult,
    DeliveryAttempt,
    Notification,
    NotificationLog,
    PlannedStep,
)

T0 = 1_767_225_600_000


def test_a_log_kept_in_the_outbox_by_an_earlier_version_moves_to_its_own_file(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    earlier = NotificationLog(outbox)
    sent = Notification("a1/0.0/wang/firing", "a1", ("wecom",), 0, 1, T0, "sent", "{}")
    owed = Notification("a1/0.1/li/firing", "a1", ("sms",), 0, 0, T0 + 60_000, "pending", "{}")
    earlier.add(sent, T0)
    earlier.add(owed, T0)
    earlier.plan([PlannedStep("a1", 0, 1, T0 + 180_000)])
    earlier.record(
        DeliveryAttempt(sent.key, "a1", "wang", "wecom", T0, AttemptResult.SENT, "", 12.0)
    )
    earlier.close()

    log = NotificationLog(tmp_path / "outbox.notifications.sqlite3", moved_from=outbox)
    # What was sent stays sent (no second message), what was owed is still owed.
    assert log.get(sent.key) == sent
    assert log.due(T0 + 60_000) == [owed]
    assert log.due_steps(T0 + 180_000) == [PlannedStep("a1", 0, 1, T0 + 180_000)]
    assert [a.result for a in log.attempts("a1")] == [AttemptResult.SENT]
    log.close()
    with sqlite3.connect(outbox) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert not tables & {"notifications", "notification_attempts", "escalation_steps"}

    # Opened again, nothing is moved twice or lost.
    again = NotificationLog(tmp_path / "outbox.notifications.sqlite3", moved_from=outbox)
    assert again.get(sent.key) == sent
    assert len(again.attempts("a1")) == 1
    again.close()
