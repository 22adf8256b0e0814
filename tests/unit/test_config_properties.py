"""Whatever is wrong in the files `check` reads, it says so as a ConfigError naming a file.

The shipped example configuration, notification policy, device registry, device
profiles and alert rules are copied, one of them is changed at one place (a key
removed, a value replaced by one of another type or size, an unknown key added, a cell
of the registry rewritten) or as a whole (bytes of any kind, or its text saved as GBK),
and the result is checked as `community-gateway check` checks it. Whether the change is accepted is not the point: a traceback is never the
answer.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import PROJECT_ROOT
from gateway.app import load_catalogue
from gateway.config import load_config
from gateway.errors import ConfigError

DEPLOY = PROJECT_ROOT / "deploy"
RULE_FILES = sorted(p.name for p in (PROJECT_ROOT / "alert_rules").glob("*.yaml"))
PROFILE_FILES = sorted(p.name for p in (PROJECT_ROOT / "device_profiles").glob("*.yaml"))
YAML_FILES = [
    "gateway.yaml",
    "notify.yaml",
    *(f"rules/{name}" for name in RULE_FILES),
    *(f"profiles/{name}" for name in PROFILE_FILES),
]

Path_ = tuple[str | int, ...]


def _lay_out(folder: Path) -> Path:
    """The shipped examples, copied into `folder` as one installation; its config."""
    shutil.copytree(PROJECT_ROOT / "alert_rules", folder / "rules")
    shutil.copytree(PROJECT_ROOT / "device_profiles", folder / "profiles")
    shutil.copy(DEPLOY / "devices.example.csv", folder / "devices.csv")
    shutil.copy(DEPLOY / "notify.example.yaml", folder / "notify.yaml")
    config = yaml.safe_load((DEPLOY / "gateway.example.yaml").read_text())
    config.update(
        profiles_dir="profiles",
        rules_dir="rules",
        registry_file="devices.csv",
        notify="notify.yaml",
    )
    config["outbox"]["path"] = str(folder / "outbox.sqlite3")
    (folder / "gateway.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return folder / "gateway.yaml"


def _places(node: Any, at: Path_ = ()) -> Iterator[Path_]:
    yield at
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _places(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _places(value, (*at, index))


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "-1", "0", "${NO_SUCH_VARIABLE}", "../nowhere", "*", "#", "a/+/#"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=4,
)


@st.composite
def yaml_changes(draw: st.DrawFn, document: Any) -> Any:
    """`document` with one place changed."""
    places = list(_places(document))
    at = draw(st.sampled_from(places))
    if not at:
        return draw(values)
    parent = document
    for step in at[:-1]:
        parent = parent[step]
    how = draw(st.sampled_from(["remove", "replace", "replace", "add"]))
    if how == "remove":
        del parent[at[-1]]
    elif how == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
    else:
        parent[at[-1]] = draw(values)
    return document


@st.composite
def csv_changes(draw: st.DrawFn, text: str) -> str:
    """The registry with one cell, or a header, rewritten."""
    rows = list(csv.reader(io.StringIO(text)))
    row = draw(st.integers(0, len(rows) - 1))
    column = draw(st.integers(0, len(rows[row]) - 1))
    rows[row][column] = draw(
        st.text(max_size=12) | st.sampled_from(["", "-1", "0", "1e999", "nan", "a=b;c", "x:"])
    )
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


@pytest.mark.usefixtures("example_secrets")
@settings(
    max_examples=200,
    deadline=None,
    # The secrets the examples take from the environment are the same for every example.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data(), target=st.sampled_from([*YAML_FILES, "devices.csv"]))
def test_a_file_changed_anywhere_is_accepted_or_refused_by_name(
    data: st.DataObject, target: str
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config_path = _lay_out(folder)
        changed = folder / target
        garble = data.draw(st.integers(0, 9))
        if garble == 0:
            changed.write_bytes(data.draw(st.binary(max_size=64)))
        elif garble == 1:
            # As a spreadsheet or editor on a Chinese desktop may save it.
            changed.write_bytes(changed.read_text(encoding="utf-8").encode("gbk", "replace"))
        elif target == "devices.csv":
            changed.write_text(data.draw(csv_changes(changed.read_text())))
        else:
            document = yaml.safe_load(changed.read_text())
            changed.write_text(
                yaml.safe_dump(data.draw(yaml_changes(document)), allow_unicode=True)
            )
        try:
            config = load_config(config_path)
            load_catalogue(config)
        except ConfigError as exc:
            assert scratch in str(exc), f"{exc} names no file"
