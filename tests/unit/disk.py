"""A full disk as SQLite sees it, on an outbox's own connection."""

from gateway.store.outbox import Outbox

# SQLite's largest page count: no bound but the disk's.
_UNBOUNDED_PAGES = 1_073_741_823


def fill_the_disk(outbox: Outbox) -> None:
    """The outbox's database may not grow past the pages it has now."""
    conn = outbox._ingest
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")


def make_room(outbox: Outbox) -> None:
    outbox._ingest.execute(f"PRAGMA max_page_count={_UNBOUNDED_PAGES}")
