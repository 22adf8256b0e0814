"""The small files the gateway keeps beside its outbox (the link secret, what was told
of its faults, the answer to a reload): each written whole or not at all."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


def write_durably(path: Path, data: bytes) -> None:
    """Whole or not at all, even across a power cut: a temporary file, synced, renamed
    into place, and the folder synced so that the rename is kept too. Readable by the
    gateway's user alone: the link secret is one of these files."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def reload_answer_path(outbox_path: Path) -> Path:
    """Where the running gateway says how its last reload went: var/outbox.reload.json."""
    return outbox_path.with_name(f"{outbox_path.stem}.reload.json")


class ReloadAnswer(BaseModel):
    """How a reload went, for `community-gateway reload` to show: a signal carries no
    answer, and what the gateway runs with (its device profiles, read at start) may
    refuse what the files on disk pass."""

    model_config = ConfigDict(frozen=True)

    pid: int
    # Counts the gateway's reloads, so that an answer is told from the one before.
    number: int
    taken: bool
    # What it did, as said after "gateway 812 ": "took them: ...", "refused them, ...".
    said: str

    @classmethod
    def read(cls, path: Path) -> ReloadAnswer | None:
        """The answer kept, or None: none yet, or unreadable."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None
