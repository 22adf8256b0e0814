"""Disk space set aside for the outbox's own use once the disk is full.

On a disk full to its last byte SQLite cannot even drop the outbox's oldest lines:
removing rows writes pages to the write-ahead log too, and an alarm's commit fails with
the rest. A file kept beside the outbox holds some space back; the first commit that
finds the disk full gives it back, so that the oldest lines can be dropped and alarms
committed, and it is set aside again once the disk has room for it twice over.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

# Written in steps of this size where the filesystem cannot allocate a file's blocks
# without writing them.
_ZEROS = bytes(1 << 20)


class DiskReserve:
    def __init__(self, path: Path, size_bytes: int) -> None:
        """`size_bytes` 0: nothing is set aside."""
        self.path = path
        self.size_bytes = size_bytes
        # Why it could not be set aside the last time: the same failure is logged once,
        # not at every check.
        self._failure: str | None = None

    @property
    def held(self) -> bool:
        return _size_of(self.path) == self.size_bytes > 0

    @property
    def given_back(self) -> bool:
        """Whether it was given back and is not set aside again yet: emptied, not removed,
        so that this outlives the process that gave it back."""
        return self.size_bytes > 0 and _size_of(self.path) == 0

    def release(self) -> bool:
        """Give the space back to the disk; whether there was any to give."""
        if self.size_bytes == 0 or not _size_of(self.path):
            return False
        try:
            os.truncate(self.path, 0)
        except OSError as exc:
            # Gone already, given back by the other process; or out of reach.
            if not isinstance(exc, FileNotFoundError):
                log.error("could not give back the disk set aside at %s: %s", self.path, exc)
            return False
        log.error(
            "the disk is full: gave back the %d bytes set aside at %s, to make room in "
            "the outbox; they are set aside again once the disk has room",
            self.size_bytes,
            self.path,
        )
        return True

    def restore(self) -> bool:
        """Set the space aside, unless it is or the disk has less than twice that free;
        whether it is held now."""
        if self.size_bytes == 0:
            return False
        if self.held:
            return True
        # Written whole under another name first: a crash never leaves a reserve that
        # holds less than it says.
        partial = self.path.with_name(self.path.name + ".part")
        try:
            free = shutil.disk_usage(self.path.parent).free + (_size_of(self.path) or 0)
            if free < 2 * self.size_bytes:
                return False
            with partial.open("wb") as file:
                _allocate(file.fileno(), self.size_bytes)
                os.fsync(file.fileno())
            partial.replace(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            if str(exc) != self._failure:
                self._failure = str(exc)
                log.warning(
                    "could not set aside %d bytes at %s (tried again every check, logged "
                    "again if the reason changes): %s",
                    self.size_bytes,
                    self.path,
                    exc,
                )
            return False
        self._failure = None
        log.info("set aside %d bytes of disk for the outbox at %s", self.size_bytes, self.path)
        return True


def _allocate(fd: int, size_bytes: int) -> None:
    """The file's blocks taken from the disk, not a sparse file that takes none."""
    try:
        os.posix_fallocate(fd, 0, size_bytes)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    written = 0
    while written < size_bytes:
        written += os.write(fd, _ZEROS[: size_bytes - written])


def _size_of(path: Path) -> int | None:
    """None: no such file."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
