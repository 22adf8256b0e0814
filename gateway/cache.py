"""Caches bounded by emptying them: a full cache starts again, so that a storm of new
keys (device ids, topics, field sets) keeps memory bounded, while the steady set of keys
fills it again within moments."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(cache: dict[K, V], key: K, value: V, max_entries: int) -> V:
    """`value`, kept in `cache` under `key`; a cache holding `max_entries` is emptied
    first."""
    if len(cache) >= max_entries:
        cache.clear()
    cache[key] = value
    return value
