"""A full disk: as SQLite sees it, on an outbox's own connection, or a real small one;
and a damaged database file."""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.outbox import Outbox

# SQLite's largest page count: no bound but the disk's.
_UNBOUNDED_PAGES = 1_073_741_823
# The page size of the gateway's SQLite files, SQLite's default.
PAGE_BYTES = 4096


def fill_the_disk(outbox: Outbox) -> None:
    """The outbox's database may not grow past the pages it has now."""
    conn = outbox._ingest
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")


def make_room(outbox: Outbox) -> None:
    outbox._ingest.execute(f"PRAGMA max_page_count={_UNBOUNDED_PAGES}")


@contextlib.contextmanager
def small_disk(where: Path, size_bytes: int) -> Iterator[Path]:
    """A real disk of `size_bytes`, a tmpfs mounted at `where` while in use."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small disk needs root")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", where], check=True)


def fill(disk: Path) -> Path:
    """Another program's file, written until the disk takes not one byte more."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for step in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(step))
    finally:
        os.close(fd)
    return filler


def damage(path: Path, where: str = "tables") -> bytes:
    """Overwrites a database file's header, the rest of its first page (the schema), or
    every page after it (the tables), as a failing card might; returns the bytes it left."""
    data = bytearray(path.read_bytes())
    start, end = {"header": (0, 100), "schema": (100, PAGE_BYTES)}.get(
        where, (PAGE_BYTES, len(data))
    )
    data[start:end] = b"\xde\xad" * ((end - start) // 2)
    path.write_bytes(bytes(data))
    return bytes(data)
