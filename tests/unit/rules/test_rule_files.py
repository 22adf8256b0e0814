"""Rule files an operator writes: what is wrong in one is named with its file, rule and
field when it loads, never left to go unnoticed while the gateway runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway import PROJECT_ROOT
from gateway.errors import ConfigError
from gateway.rules.rule import load_rules
from tests.catalogue import SHIPPED_PROFILES


def _rule_folder(
    tmp_path: Path, text: str, name: str = "extra.yaml", *, shipped: bool = False
) -> Path:
    """A rule folder holding `text` as `name` (and the shipped rule files, if asked)."""
    folder = tmp_path / "rules"
    folder.mkdir()
    if shipped:
        for path in (PROJECT_ROOT / "alert_rules").iterdir():
            shutil.copy(path, folder / path.name)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def _refused(tmp_path: Path, text: str, *, shipped: bool = False) -> ConfigError:
    """The error loading a rule folder of `text` (beside the shipped rule files, if
    asked) raises, which names its file."""
    folder = _rule_folder(tmp_path, text, shipped=shipped)
    with pytest.raises(ConfigError) as info:
        load_rules(folder, SHIPPED_PROFILES)
    assert info.value.file == str(folder / "extra.yaml")
    return info.value


@pytest.mark.parametrize("window_s", [0, -60])
def test_a_rate_window_that_is_not_positive_is_refused(tmp_path: Path, window_s: int) -> None:
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - {name: current_rising, title: t, device_types: [charging_shed], severity: info,\n"
        f"     per_port: true, when: 'current_a_per_min > 5', rates: {{current_a: {window_s}}}}}\n",
    )
    assert "rule current_rising" in error.field and "rates" in error.field


def test_a_rule_file_with_rules_twice_is_refused_not_half_loaded(tmp_path: Path) -> None:
    # Two `rules:` sections (a block pasted from another file): YAML's last key wins
    # and the fire rule of the first section is dropped without a word.
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - {name: fire_again, title: t, device_types: [smoke_detector], severity: critical,\n"
        "     life_safety: true, kind: event, when: \"event == 'alarm'\"}\n"
        "rules:\n"
        "  - {name: battery_again, title: t, device_types: [smoke_detector], severity: info,\n"
        "     when: battery_pct < 5}\n",
    )
    assert error.field == "rules"
    assert "lines 1 and 4" in error.problem


def test_a_key_given_twice_in_a_rule_is_refused(tmp_path: Path) -> None:
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - name: smoke_high\n"
        "    title: t\n"
        "    device_types: [smoke_detector]\n"
        "    severity: critical\n"
        "    when: obscuration_pct_per_m > 10\n"
        "    when: battery_pct < 0\n",
    )
    assert "when" in str(error)


def test_correlation_settings_on_a_condition_rule_are_refused(tmp_path: Path) -> None:
    # `kind: correlation` left out: the rule fires for every single detector, and its
    # min_devices, place and window_s are ignored, as merge_s on a non-event rule is not.
    error = _refused(
        tmp_path,
        "rules:\n"
        "  - {name: two_alarms, title: t, device_types: [smoke_detector], severity: major,\n"
        "     when: alarm == true, min_devices: 3, place: compound, window_s: 120}\n",
    )
    assert "min_devices" in str(error)


def test_a_rule_file_named_yml_is_not_skipped_without_a_word(tmp_path: Path) -> None:
    folder = _rule_folder(
        tmp_path,
        "rules:\n"
        "  - {name: gas_in_well, title: t, device_types: [manhole_cover], severity: critical,\n"
        "     life_safety: true, when: ch4_ppm > 5000}\n",
        name="gas.yml",
    )
    assert [r.name for r in load_rules(folder, SHIPPED_PROFILES)] == ["gas_in_well"]


def _bracelet_rule(when: str) -> str:
    return (
        "rules:\n"
        "  - name: extra\n"
        "    title: t\n"
        "    device_types: [bracelet]\n"
        "    severity: major\n"
        f'    when: "{when}"\n'
    )


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        # A number left out: every reading would raise, and the rule never fire.
        ("distance_m(lat, lon, device.home_lat) > device.safe_radius_m",
         "distance_m takes 4 argument(s), not 3"),
        ("abs(heart_rate_bpm, 100) > 50", "abs takes 1 argument(s), not 2"),
        # int < str raises for every reading.
        ("battery_pct < '15'", "orders by the text '15': write a number without quotes"),
    ],
)  # fmt: skip
def test_a_condition_that_would_fail_at_every_reading_is_refused_when_the_rule_loads(
    tmp_path: Path, when: str, problem: str
) -> None:
    error = _refused(tmp_path, _bracelet_rule(when))
    assert error.field == "rule extra: condition"
    assert problem in error.problem


def test_a_rule_file_ending_in_upper_case_yaml_is_read(tmp_path: Path) -> None:
    # Saved on a Windows desktop as `EXTRA.YAML`: passed over without a word, its rules
    # would never fire.
    folder = _rule_folder(tmp_path, _bracelet_rule("battery_pct < 15"), "EXTRA.YAML")
    assert [rule.name for rule in load_rules(folder, SHIPPED_PROFILES)] == ["extra"]
