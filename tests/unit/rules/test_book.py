"""When devices were last heard, as the alert book keeps it across a restart."""

import sqlite3
from array import array
from pathlib import Path

import pytest

from gateway.decode.record import DeviceRef, FieldValue, Position, Reading, TimeSource
from gateway.errors import StoreError
from gateway.registry import RegisteredDevice, Registry, Site
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.book import HEARD_FOLD_BATCHES, AlertBook, AlertEntry, AlertError
from gateway.rules.rate import ROW_DOUBLES, RateWindows
from gateway.rules.rule import Severity
from gateway.store.outbox import Outbox

SMOKE = DeviceRef("hgy", "smoke_detector", "sd-1")
WRIST = DeviceRef("hgy", "bracelet", "br-1")
OTHER = DeviceRef("qhy", "bracelet", "br-1")


def change(alert_id: str, state: AlertState, at_ms: int, **values: FieldValue) -> AlertChange:
    return AlertChange(
        alert_id=alert_id, rule=alert_id, title=alert_id, severity=Severity.CRITICAL,
        life_safety=True, device=WRIST, port=None, state=state, started_ms=100, at_ms=at_ms,
        values=values,
    )  # fmt: skip


def numbered(
    n: int,
    started_ms: int,
    *,
    rule: str = "fall",
    severity: Severity = Severity.CRITICAL,
    state: AlertState = AlertState.FIRING,
) -> AlertChange:
    """Alert a{n:02d}, of WRIST, OTHER and SMOKE in turn, started and changed at
    `started_ms`."""
    return AlertChange(
        alert_id=f"a{n:02d}", rule=rule, title="t", severity=severity, life_safety=True,
        device=(WRIST, OTHER, SMOKE)[n % 3], port=None, state=state, started_ms=started_ms,
        at_ms=started_ms, values={},
    )  # fmt: skip


def write(path: Path, *changes: AlertChange, sites: dict[str, Site] | None = None) -> None:
    outbox = Outbox(path)
    try:
        outbox.commit(
            [], [], None, lambda conn: AlertBook.write(conn, changes, [], [], sites=sites)
        )
    finally:
        outbox.close()


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


def test_a_device_no_longer_watched_is_let_go_before_and_after_the_fold(tmp_path: Path) -> None:
    # A device taken out of the registry (None), and one heard again after that.
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path)
    AlertBook(path).close()

    def commit(seen: list[tuple[tuple[str, str], dict[str, int | None]]]) -> None:
        outbox.commit([], [], None, lambda conn: AlertBook.write(conn, [], [], [], seen))

    commit([(("hgy", "smoke_detector"), {"sd-1": 100}), (("hgy", "bracelet"), {"br-1": 200})])
    for batch in range(HEARD_FOLD_BATCHES):
        commit([(("qhy", "bracelet"), {"br-1": 300 + batch})])
    commit([(("hgy", "smoke_detector"), {"sd-1": None}), (("hgy", "bracelet"), {"br-1": None})])
    commit([(("hgy", "bracelet"), {"br-1": 5000})])
    latest = {WRIST: 5000, OTHER: 300 + HEARD_FOLD_BATCHES - 1}
    assert heard(path) == latest
    for batch in range(HEARD_FOLD_BATCHES):
        commit([(("qhy", "bracelet"), {"br-1": 300 + batch})])
    assert heard(path) == latest
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


def test_an_earlier_books_rate_windows_of_each_port_are_moved_and_still_give_rates(
    tmp_path: Path,
) -> None:
    # A charging shed's ports 3 and 5 and a field of the device's own (port -1), kept a
    # row a port by the version before: after the upgrade, the windows are whole, and a
    # thermal runaway under way across the restart is still seen at once.
    path = tmp_path / "outbox.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE rate_windows (community TEXT NOT NULL, device_id TEXT NOT NULL,"
        " field TEXT NOT NULL, port INTEGER NOT NULL, samples BLOB NOT NULL,"
        " PRIMARY KEY (community, device_id, field, port)) WITHOUT ROWID"
    )
    rows = [
        ("hgy", "cs-1", "temperature_c", 3, array("d", [0.0, 40.0, 20_000.0, 43.0])),
        ("hgy", "cs-1", "temperature_c", 5, array("d", [0.0, 30.0])),
        ("hgy", "cs-1", "ambient_temp_c", -1, array("d", [0.0, 20.0])),
    ]
    old.executemany(
        "INSERT INTO rate_windows VALUES (?, ?, ?, ?, ?)",
        [(c, d, f, p, samples.tobytes()) for c, d, f, p, samples in rows],
    )
    old.commit()
    old.close()
    book = AlertBook(path)
    windows = RateWindows()
    windows.restore(book.load_rates())
    book.close()
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "rate_windows" not in tables
    shed = DeviceRef("hgy", "charging_shed", "cs-1")

    def rate(field: str, port: int | None, value: float) -> float | None:
        """The field's change per minute over the 40 s since each window's first sample."""
        reading = Reading(shed, 40_000, TimeSource.DEVICE, {field: value}, port=port)
        return windows.add(reading, field, 60_000, value)

    # 7 °C in 40 s on port 3, a runaway; 4 °C on port 5; the shed's own air 2 °C.
    assert (rate("temperature_c", 3, 47.0), rate("temperature_c", 5, 34.0)) == (10.5, 6.0)
    assert rate("ambient_temp_c", None, 22.0) == 3.0


def test_an_alert_keeps_where_the_record_that_fired_it_was(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    AlertBook(path).close()
    write(
        path,
        change("fall", AlertState.FIRING, 100, event="fall", lat=34.8, lon=113.7),
        # A reading's condition: pending where it began, firing where it held long enough.
        change("away", AlertState.PENDING, 100, lat=34.76, lon=113.63),
        change("heart", AlertState.PENDING, 100, heart_rate_bpm=30, lat=34.75, lon=113.62),
        # Half a position is none; a bool is no coordinate.
        change("sos", AlertState.FIRING, 100, event="sos", lat=34.8),
        change("removed", AlertState.FIRING, 100, event="removed", lat=True, lon=113.7),
    )
    write(
        path,
        change("away", AlertState.FIRING, 200, lat=34.77, lon=113.64),
        # The record that fired it said nowhere: where it began stands.
        change("heart", AlertState.FIRING, 200, heart_rate_bpm=30),
        # Where a condition cleared is not where the alert fired.
        change("fall", AlertState.RESOLVED, 300, lat=34.9, lon=113.9),
    )
    # A new book on the file, as after a restart.
    book = AlertBook(path)
    positions = {a: book.get(a).position for a in ("fall", "away", "heart", "sos", "removed")}
    book.close()
    assert positions == {
        "fall": Position(34.8, 113.7),
        "away": Position(34.77, 113.64),
        "heart": Position(34.75, 113.62),
        "sos": None,
        "removed": None,
    }


def test_nobody_takes_or_reaches_an_alert_before_it_fires(tmp_path: Path) -> None:
    # Taken while pending, an alert would fire untold: its notices stop once a person
    # took it.
    path = tmp_path / "outbox.sqlite3"
    AlertBook(path).close()
    write(
        path,
        change("heart", AlertState.PENDING, 100, heart_rate_bpm=170),
        change("away", AlertState.PENDING, 100),
    )
    # The wearer came back before it held for the rule's duration: nothing to handle.
    write(path, change("away", AlertState.RESOLVED, 150))
    book = AlertBook(path)
    try:
        for step in (book.acknowledge, book.arrive):
            with pytest.raises(AlertError, match=r"^alert heart is pending: it has not fired yet$"):
                step("heart", "desk", 120)
            with pytest.raises(AlertError, match=r"^alert away never fired"):
                step("away", "desk", 160)
        assert book.get("heart").acknowledged_by is None
        assert [s.state for s in book.history("heart")] == [AlertState.PENDING]
        write(path, change("heart", AlertState.FIRING, 200, heart_rate_bpm=170))
        arrived = book.arrive("heart", "wang-fang", 300)
        assert (arrived.state, arrived.acknowledged_by) == (AlertState.ARRIVED, "wang-fang")
    finally:
        book.close()


def test_an_alert_book_of_the_previous_version_gains_where_alerts_fired(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, rule TEXT NOT NULL, title TEXT NOT NULL,"
        " severity TEXT NOT NULL, life_safety INTEGER NOT NULL, community TEXT NOT NULL,"
        " device_type TEXT NOT NULL, device_id TEXT NOT NULL, port INTEGER, state TEXT NOT NULL,"
        " started_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, fired_ms INTEGER,"
        " acknowledged_by TEXT, acknowledged_ms INTEGER, arrived_by TEXT, arrived_ms INTEGER,"
        " assigned_to TEXT, resolved_ms INTEGER, closed_by TEXT, closed_ms INTEGER, note TEXT)"
        " WITHOUT ROWID"
    )
    old.execute(
        "INSERT INTO alerts (alert_id, rule, title, severity, life_safety, community,"
        " device_type, device_id, state, started_ms, updated_ms, fired_ms, acknowledged_by,"
        " acknowledged_ms) VALUES ('before', 'fall', 'Fall', 'critical', 1, 'hgy', 'bracelet',"
        " 'br-1', 'acknowledged', 1, 2, 1, 'wang-fang', 2)"
    )
    old.commit()
    old.close()
    book = AlertBook(path)
    book.close()
    where = Site("hgy", "east", "lakeside", "3", "2-301", 34.75, 113.62)
    write(
        path,
        change("after", AlertState.FIRING, 100, event="fall", lat=34.8, lon=113.7),
        sites={"after": where},
    )
    # Opened again: the columns are there once, and what they hold is kept.
    book = AlertBook(path)
    before, after = book.get("before"), book.get("after")
    book.close()
    assert (before.state, before.acknowledged_by, before.position, before.repeats) == (
        AlertState.ACKNOWLEDGED, "wang-fang", None, 0,
    )  # fmt: skip
    assert after.position == Position(34.8, 113.7)
    # Where each is: kept since it began; for the earlier version's, the registry's now.
    moved = Registry([RegisteredDevice("br-1", "bracelet", "hgy", "west", "hillside", "9")])
    assert after.where(moved) == where
    assert before.where(moved) == Site("hgy", "west", "hillside", "9")
    assert before.where(Registry()) is None


def test_a_search_filters_in_the_book_and_pages_by_start_then_id(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    AlertBook(path).close()
    write(
        path,
        *(
            # Pairs of alerts share a start.
            numbered(n, 100 + n // 2, rule="fall" if n % 2 else "sos",
                     severity=Severity.CRITICAL if n % 3 else Severity.INFO)
            for n in range(12)
        ),
    )  # fmt: skip
    book = AlertBook(path)
    try:
        newest_first = [e.alert_id for e in book.search()]
        assert newest_first == [f"a{n:02d}" for n in reversed(range(12))]
        paged: list[str] = []
        before: tuple[int, str] | None = None
        while page := book.search(before=before, limit=5):
            paged += [e.alert_id for e in page]
            before = (page[-1].started_ms, page[-1].alert_id)
        assert paged == newest_first
        assert [e.alert_id for e in book.search(before=(103, "a07"))] == [
            "a06", "a05", "a04", "a03", "a02", "a01", "a00",
        ]  # fmt: skip
        found = book.search(communities=["qhy"], rule="fall", since_ms=102)
        assert [e.alert_id for e in found] == ["a07"]
        found = book.search(community="hgy", device_id="br-1", severity="info", limit=1)
        assert [e.alert_id for e in found] == ["a09"]
        assert book.search(communities=[]) == []
    finally:
        book.close()


def test_the_open_alerts_of_some_devices_or_communities_are_theirs_alone(
    tmp_path: Path,
) -> None:
    # A device's page, a step of the desk, a desk's board read these alone; the same
    # device id in another community is another device.
    path = tmp_path / "outbox.sqlite3"
    AlertBook(path).close()
    write(
        path,
        *(
            # Pairs of alerts share a start.
            numbered(n, 100 - n // 2, state=AlertState.PENDING if n == 7 else AlertState.FIRING)
            for n in range(9)
        ),
    )
    # Ended while pending: never open to anyone.
    write(path, change("a07", AlertState.RESOLVED, 200))
    book = AlertBook(path)
    try:
        book.acknowledge("a03", "wang-fang", 200)
        book.close_alert("a06", "wang-fang", 200, "误报")

        def ids(entries: list[AlertEntry]) -> list[str]:
            return [e.alert_id for e in entries]

        # a03 (WRIST) acknowledged, a06 (WRIST) closed, a07 (OTHER) never fired.
        assert ids(book.open_alerts()) == ["a08", "a04", "a05", "a02", "a03", "a00", "a01"]
        assert ids(book.open_alerts(devices=[("hgy", "br-1")])) == ["a03", "a00"]
        both = book.open_alerts(devices=[("qhy", "br-1"), ("hgy", "sd-1")])
        assert ids(both) == ["a08", "a04", "a05", "a02", "a01"]
        assert ids(book.open_alerts(communities=["qhy"])) == ["a04", "a01"]
        assert book.open_alerts(devices=[]) == book.open_alerts(communities=[]) == []
        assert book.count_open() == {AlertState.FIRING: 6, AlertState.ACKNOWLEDGED: 1}
    finally:
        book.close()


def test_a_book_made_when_rates_were_a_row_a_community_saves_a_large_communitys_windows(
    tmp_path: Path,
) -> None:
    # 39d0b20 made `community_rates` with the community as its primary key; 8300c0a
    # writes several rows of one community, and CREATE TABLE IF NOT EXISTS leaves the
    # key in place. A community of 150 sheds (more than a row) then fails every save
    # of the windows: its rates are lost at the next restart, and the gateway's commits
    # wait behind the save tried again (pipeline._until_done).
    path = tmp_path / "outbox.sqlite3"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE community_rates (community TEXT PRIMARY KEY, series TEXT NOT NULL,"
        " windows BLOB NOT NULL)"
    )
    old.commit()
    old.close()
    AlertBook(path).close()
    windows = RateWindows()
    for at_ms in range(0, 60_000, 15_000):
        for n in range(150):
            device = DeviceRef("hgy", "charging_shed", f"cs-{n:03d}")
            for port in range(1, 9):
                reading_ = Reading(device, at_ms, TimeSource.DEVICE, {}, port=port)
                windows.add(reading_, "temperature_c", 60_000.0, 30.0)
    saved = windows.saved()
    assert len(saved) > 1 and sum(len(row[2]) for row in saved) > ROW_DOUBLES * 8
    outbox = Outbox(path)
    try:
        outbox.commit([], [], None, lambda conn: AlertBook.write_rates(conn, saved))
    finally:
        outbox.close()
    book = AlertBook(path)
    restored = RateWindows()
    restored.restore(book.load_rates())
    book.close()
    assert len(restored) == len(windows) == 150 * 8
