"""The text of the files an installation is set up by: its configuration and policy,
device profiles, alert rules and device registry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError

# Both endings are YAML: a file named `.yml` in a folder of rules or profiles is read,
# not passed over without a word.
YAML_SUFFIXES = (".yaml", ".yml")


def read_text(path: Path, *, encoding: str = "utf-8") -> str:
    """Raises ConfigError naming the file if it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding=encoding)
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        # A registry exported from a spreadsheet on a Chinese desktop is often GBK.
        how = " (from a spreadsheet: as 'CSV UTF-8')" if path.suffix.lower() == ".csv" else ""
        raise ConfigError(
            str(path),
            "",
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02X} at offset {exc.start}): "
            f"save it as UTF-8{how}",
        ) from exc


def yaml_files(folder: Path) -> list[Path]:
    """The YAML files of a folder, by name; `.YAML` as well, as a Windows desktop may
    save it."""
    return sorted(path for path in folder.iterdir() if path.suffix.lower() in YAML_SUFFIXES)


def parse_yaml(path: Path, text: str) -> Any:
    """`text`, read from `path`, as YAML. Raises ConfigError naming the file if it is not
    valid YAML, or names a key twice in one mapping: YAML would keep the last, and a
    second `rules:` pasted into a rule file would drop every rule of the first."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(str(path), exc.key, exc.problem) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(str(path), "", "nested too deeply to read") from exc


class _DuplicateKey(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            # A merge (`<<: *defaults`) may be overridden by the mapping's own keys.
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:
                continue  # not a key at all: the mapping's own construction says so
            if first is not None:
                where = f"on line {line}" if first == line else f"at lines {first} and {line}"
                raise _DuplicateKey(str(key), f"given twice {where}: only one can be meant")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


# A number written with a leading 0 (a landline, 0371…) is text: YAML 1.1 reads it as
# octal, and an unquoted landline whose digits are all 0-7 would become another number,
# a stranger's, that alarms would call. A field that wants a number takes the text too.
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "0+-":
    _UniqueKeyLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:str", _LEADING_ZERO)
    )
