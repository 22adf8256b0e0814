"""Keeps one gateway, and one telemetry process, on an outbox at a time.

Two gateways on the same outbox would each judge what arrives and each notify: every
alarm twice, and a broker session taken back and forth between their connections. The
gateway holds a lock on its pid file beside the outbox while it runs, and a second one
started on the same outbox stops at once, saying which process holds it. The telemetry
process holds a lock of its own: one left running by a main process that was killed
(outside systemd or Docker, which stop every process of the gateway together) finishes
its batch into the outbox before a new gateway may open it, move it aside or start
another.

The kernel lets go of a lock when its holder ends, however it ends: a pid file left by
a killed gateway holds no lock, and neither stops a start nor gets a signal meant for a
running gateway.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

from gateway.errors import StoreError

log = logging.getLogger(__name__)

# How often a start looks again whether a lock it waits for was let go.
_WAIT_POLL_S = 0.1


def pid_path(outbox_path: Path) -> Path:
    """The running gateway's pid file: var/outbox.sqlite3 has var/outbox.pid."""
    return outbox_path.with_suffix(".pid")


def telemetry_pid_path(outbox_path: Path) -> Path:
    """The telemetry process's: var/outbox.telemetry.pid."""
    return outbox_path.with_name(f"{outbox_path.stem}.telemetry.pid")


class PidLock:
    """An exclusive lock on a file that holds the holder's pid."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path, holder: str) -> PidLock:
        """Raises StoreError naming the file and the process that holds it.

        `holder`: what the process holding it would be, as the error names it."""
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StoreError(f"{path}: cannot be opened: {exc}", retryable=False) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise StoreError(
                    f"{path}: {holder} (pid {pid or 'unknown'}) runs on this outbox; "
                    "stop it first, or give this one an outbox of its own",
                    retryable=False,
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A holder letting go removes the file: a lock on the file this one opened
            # just before is on a name no one else sees any more.
            if _names(fd, path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Removed while still held, so that the next holder makes a new one.
        with contextlib.suppress(FileNotFoundError):
            if _names(fd, self.path):
                self.path.unlink()
        os.close(fd)


def holder_pid(path: Path) -> int | None:
    """The pid of the process holding the lock on `path`; None if none holds it (the
    file missing, or left by a process that ended), or if its pid cannot be read."""
    return _holder(path)[1]


def wait_until_free(path: Path, timeout_s: float, holder: str) -> None:
    """Until no process holds the lock on `path`; raises StoreError naming the one that
    still does after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        held, pid = _holder(path)
        if not held:
            return
        if not told:
            log.warning("waiting for %s (pid %s) to stop", holder, pid)
            told = True
        if time.monotonic() >= deadline:
            raise StoreError(
                f"{path}: {holder} (pid {pid}) still runs on this outbox after {timeout_s:.0f} s",
                retryable=True,
            )
        time.sleep(_WAIT_POLL_S)


def _holder(path: Path) -> tuple[bool, int | None]:
    """Whether a process holds the lock on `path`, and its pid if it can be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_pid(fd)
        return False, None
    finally:
        os.close(fd)


def _names(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _read_pid(fd: int) -> int | None:
    """None while the holder has yet to write it, or for anything but a pid: what is
    read here may be signalled, and 0 or -1 would signal whole groups of processes."""
    try:
        pid = int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return pid if pid > 0 else None
