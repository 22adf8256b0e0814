"""When devices were last heard, as the alert book keeps it across a restart."""

import sqlite3
from pathlib import Path

import pytest

from gateway.decode.record import DeviceRef
from gateway.errors import StoreError
from gateway.rules.book import HEARD_FOLD_BATCHES, AlertBook
from gateway.store.outbox import Outbox

SMOKE = DeviceRef("hgy", "smoke_detector", "sd-1")
WRIST = DeviceRef("hgy", "bracelet", "br-1")
OTHER = DeviceRef("qhy", "bracelet", "br-1")


def heard(path: Path) -> dict[DeviceRef, int]:
    book = AlertBook(path)
    try:
        return dict(book.load_last_seen())
    finally:
        book.close()


def test_every_batch_heard_is_kept_before_and_after_it_is_folded(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path)
    AlertBook(path).close()

    def commit(seen: list[tuple[tuple[str, str], dict[str, int]]]) -> None:
        outbox.commit([], [], None, lambda conn: AlertBook.write(conn, [], [], [], seen))

    commit([(("hgy", "smoke_detector"), {"sd-1": 100}), (("hgy", "bracelet"), {"br-1": 200})])
    commit([(("qhy", "bracelet"), {"br-1": 300})])
    assert heard(path) == {SMOKE: 100, WRIST: 200, OTHER: 300}
    # Enough batches for the log to be folded, the last one mid-way through the next.
    for batch in range(HEARD_FOLD_BATCHES + 3):
        commit([(("hgy", "bracelet"), {"br-1": 1000 + batch})])
    logged = sqlite3.connect(path).execute("SELECT count(*) FROM heard_log").fetchone()[0]
    assert 0 < logged < HEARD_FOLD_BATCHES
    # The latest batch decides, as it did in memory; the others were kept through the fold.
    assert heard(path) == {SMOKE: 100, WRIST: 1000 + HEARD_FOLD_BATCHES + 2, OTHER: 300}
    # What a batch heard is written with the batch or not at all.
    with pytest.raises(StoreError, match="no_such_table"):
        outbox.commit(
            [],
            [],
            None,
            lambda conn: (
                AlertBook.write(conn, [], [], [], [(("hgy", "smoke_detector"), {"sd-1": 9})]),
                conn.execute("SELECT * FROM no_such_table"),
            ),
        )
    assert heard(path)[SMOKE] == 100
    outbox.close()


def test_an_earlier_books_rows_of_last_heard_are_moved(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE last_seen (community TEXT NOT NULL, device_type TEXT NOT NULL,"
        " device_id TEXT NOT NULL, seen_ms INTEGER NOT NULL,"
        " PRIMARY KEY (community, device_type, device_id)) WITHOUT ROWID"
    )
    old.executemany(
        "INSERT INTO last_seen VALUES (?, ?, ?, ?)",
        [("hgy", "smoke_detector", "sd-1", 100), ("qhy", "bracelet", "br-1", 300)],
    )
    old.commit()
    old.close()
    assert heard(path) == {SMOKE: 100, OTHER: 300}
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "last_seen" not in tables
    assert heard(path) == {SMOKE: 100, OTHER: 300}
