"""A time-series point, as the writer sends it."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.decode.record import FieldValue


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ms: int
