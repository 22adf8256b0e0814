"""The device profiles and alert rules the gateway ships, loaded once for the tests."""

from __future__ import annotations

from gateway import PROJECT_ROOT
from gateway.decode.decoder import CODECS
from gateway.decode.profile import load_profiles
from gateway.rules.rule import Rule, load_rules

SHIPPED_PROFILES = load_profiles(PROJECT_ROOT / "device_profiles", CODECS)


def shipped_rules() -> list[Rule]:
    return load_rules(PROJECT_ROOT / "alert_rules", SHIPPED_PROFILES)
