"""Every dashboard, and their JSON files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.dashboards import (
    alerts,
    bracelet,
    charging,
    gateway_health,
    manhole,
    overview,
    smoke,
)
from gateway.dashboards.board import Board

BUILDERS: tuple[Callable[[], Board], ...] = (
    overview.build,
    smoke.build,
    manhole.build,
    bracelet.build,
    charging.build,
    alerts.build,
    gateway_health.build,
)


def dashboards() -> dict[str, dict[str, Any]]:
    """Each dashboard's JSON model, by file name (its uid)."""
    built = {}
    for build in BUILDERS:
        board = build()
        built[f"{board.uid}.json"] = board.to_json()
    return built


def render(board: dict[str, Any]) -> str:
    # Sorted keys and a final newline: generating twice gives the same bytes, and a
    # diff of a change shows only what changed.
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboards(folder: Path) -> list[Path]:
    """Write every dashboard into `folder`, replacing dashboards from an earlier run."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, board in dashboards().items():
        path = folder / name
        path.write_text(render(board), encoding="utf-8")
        written.append(path)
    return written
