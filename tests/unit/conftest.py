from __future__ import annotations

import pytest

from gateway import PROJECT_ROOT


@pytest.fixture
def example_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable deploy/env.example names, set: what the shipped configs and the
    example notification policy take from the environment."""
    for line in (PROJECT_ROOT / "deploy" / "env.example").read_text().splitlines():
        name, equals, _ = line.partition("=")
        if equals and not line.startswith("#"):
            # An address is read as one when the config is checked.
            address = name.endswith("_URL")
            monkeypatch.setenv(
                name, "http://192.168.1.10:8080" if address else f"example-{name.lower()}"
            )
