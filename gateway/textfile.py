"""The text of the files an installation is set up by: its configuration and policy,
device profiles, alert rules and device registry."""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError


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
