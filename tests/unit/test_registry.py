"""The registry's indexes: devices by community in the order the API lists them, and the
places alerts about a building or compound are routed and found by; its phone numbers,
read as community staff type them and kept in one form."""

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import GridCell
from gateway.errors import ConfigError
from gateway.notify.policy import empty_cell
from gateway.registry import RegisteredDevice, Registry, load_registry


def device(community: str, device_id: str, compound: str, building: str) -> RegisteredDevice:
    return RegisteredDevice(
        device_id=device_id, device_type="smoke_detector", community=community,
        area="east" if compound == "lakeside" else "west", compound=compound, building=building,
    )  # fmt: skip


# Building 3 is in two compounds of hgy, and in lgy too; ids repeat across communities.
DEVICES = [
    device("lgy", "sd-1", "pine", "3"),
    device("hgy", "sd-2", "lakeside", "3"),
    device("hgy", "sd-10", "hillside", "3"),
    device("hgy", "sd-1", "lakeside", "3"),
    device("hgy", "sd-3", "hillside", "9"),
]


def keys(devices: object) -> list[str]:
    assert isinstance(devices, list | tuple)
    return [f"{d.community}/{d.device_id}" for d in devices]


def test_devices_are_ordered_by_community_and_id_once() -> None:
    registry = Registry(DEVICES)
    assert keys(registry.devices_in()) == [
        "hgy/sd-1", "hgy/sd-10", "hgy/sd-2", "hgy/sd-3", "lgy/sd-1",
    ]  # fmt: skip
    assert keys(registry.devices_in("lgy")) == ["lgy/sd-1"]
    assert keys(registry.devices_in("nowhere")) == []
    # Not sorted again at each request: the same sequence every time.
    assert registry.devices_in("hgy") is registry.devices_in("hgy")


def test_places_are_found_without_looking_at_every_device() -> None:
    registry = Registry(DEVICES)
    places = registry.places()
    assert places == {
        ("hgy", "east", "lakeside", "3"), ("hgy", "west", "hillside", "3"),
        ("hgy", "west", "hillside", "9"), ("lgy", "west", "pine", "3"),
    }  # fmt: skip
    # Worked out once: a registry does not change while it is loaded.
    assert registry.places() is places
    assert registry.places_within("hgy", "building", "3") == [
        ("hgy", "east", "lakeside", "3"), ("hgy", "west", "hillside", "3"),
    ]  # fmt: skip
    assert registry.places_within("hgy", "compound", "hillside") == [
        ("hgy", "west", "hillside", "3"), ("hgy", "west", "hillside", "9"),
    ]  # fmt: skip
    assert registry.places_within("hgy", "building", "4") == []
    # A building in two compounds shares only its community; one compound, its area too.
    assert registry.place("hgy", "building", "3") == ("hgy", None, None, "3")
    assert registry.place("hgy", "building", "9") == ("hgy", "west", "hillside", "9")
    assert registry.place("hgy", "compound", "lakeside") == ("hgy", "east", "lakeside", None)
    assert keys(registry.devices_at("hgy", "building", "3")) == [
        "hgy/sd-1", "hgy/sd-2", "hgy/sd-10",
    ]  # fmt: skip
    assert keys(registry.devices_at("lgy", "area", "west")) == ["lgy/sd-1"]
    assert registry.devices_at("lgy", "building", "9") == []


# One detector entered without its area must not make its compound's cell look empty:
# a desk's silence, a token or a roster naming east/lakeside would be refused.
def test_a_row_without_its_area_leaves_its_compound_found() -> None:
    registry = Registry(
        [
            *DEVICES,
            RegisteredDevice(
                device_id="sd-9", device_type="smoke_detector", community="hgy",
                compound="lakeside", building="3",
            ),
        ]
    )  # fmt: skip
    assert registry.holds(("hgy", "east", "lakeside", None))
    assert registry.holds(("hgy", "east", "lakeside", "3"))
    assert ("hgy", "east", "lakeside", "3") in registry.places_within("hgy", "compound", "lakeside")
    cell = GridCell(community="hgy", area="east", compound="lakeside")
    assert empty_cell(cell, registry, all_registered=False) is None


def test_an_empty_registry_has_no_places() -> None:
    registry = Registry()
    assert (len(registry), registry.places(), registry.devices_in()) == (0, frozenset(), ())
    assert registry.places_within("hgy", "building", "3") == []
    assert registry.place("hgy", "building", "3") == ("hgy", None, None, "3")


HEADER = "device_id,device_type,community,wearer_name,wearer_phone,emergency_contacts\n"


def test_phones_are_kept_in_e164_however_they_were_typed(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(
        HEADER
        + "br-1,bracelet,hgy,张三,138 0013 8000,张丽:0086 139 8765 4321;社区值班:0371-66123456\n"
        + "br-2,bracelet,hgy,王五,138-0013-8001,李四:+86 137 0000 1111;赵六:037166123457\n",
        encoding="utf-8",
    )
    registry = load_registry(path)
    first, second = registry.get("hgy", "br-1"), registry.get("hgy", "br-2")
    assert first is not None and second is not None
    assert (first.wearer_phone, second.wearer_phone) == ("+8613800138000", "+8613800138001")
    # A landline's trunk 0 is no part of its international form.
    assert [c.phone for c in first.emergency_contacts + second.emergency_contacts] == [
        "+8613987654321", "+8637166123456", "+8613700001111", "+8637166123457",
    ]  # fmt: skip


def test_phones_written_in_yaml_as_numbers_or_mappings_are_kept_in_e164(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(
        "devices:\n"
        "  - {device_id: br-1, device_type: bracelet, community: hgy, wearer_phone: 13800138000,\n"
        "     emergency_contacts: [{name: 张丽, phone: 13987654321},\n"
        "                          {name: 社区值班, phone: '(0371) 6612-3456'}]}\n",
        encoding="utf-8",
    )
    (device,) = load_registry(path).devices()
    assert device.wearer_phone == "+8613800138000"
    assert [c.phone for c in device.emergency_contacts] == ["+8613987654321", "+8637166123456"]


@pytest.mark.parametrize(
    ("wearer_phone", "contacts", "field", "why"),
    [
        ("12345", "", "wearer_phone", "'12345': too short"),
        ("138001380001234", "", "wearer_phone", "'138001380001234': too long"),
        # Read on a keypad, the Os would make another, valid, number.
        ("138OO138OOO", "", "wearer_phone", "letters"),
        # A Zhengzhou landline has eight digits after its area code.
        ("13800138000", "张丽:03711234567", "emergency_contacts",
         "contact 张丽: expected a phone number"),
        ("13800138000", "张丽:139八七六五4321", "emergency_contacts", "contact 张丽"),
        ("13800138000", "社区值班:0371-66123456#12", "emergency_contacts", "an extension"),
    ],
)  # fmt: skip
def test_a_number_that_cannot_be_dialled_is_refused_naming_file_row_and_field(
    tmp_path: Path, wearer_phone: str, contacts: str, field: str, why: str
) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(f"{HEADER}br-1,bracelet,hgy,张三,{wearer_phone},{contacts}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert (info.value.file, info.value.field) == (str(path), f"line 2 (br-1): {field}")
    assert "expected a phone number such as 13800138000, 0371-66123456" in info.value.problem
    assert why in info.value.problem


@pytest.mark.parametrize(
    ("cells", "field"),
    [
        ("max_heart_rate_bpm=nan", "thresholds.max_heart_rate_bpm"),
        ("max_heart_rate_bpm=inf", "thresholds.max_heart_rate_bpm"),
        ("", "safe_radius_m"),
    ],
)
def test_a_limit_that_is_not_a_finite_number_is_refused_naming_its_line(
    tmp_path: Path, cells: str, field: str
) -> None:
    # A sheet exported from a database whose cell was empty may say nan: every comparison
    # with it is false, and the wearer's heart rate or whereabouts would never alarm.
    path = tmp_path / "devices.csv"
    radius = "inf" if field == "safe_radius_m" else ""
    path.write_text(
        "device_id,device_type,community,thresholds,safe_radius_m\n"
        f"br-1,bracelet,hgy,{cells},{radius}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert (info.value.file, info.value.field) == (str(path), f"line 2 (br-1): {field}")
    assert "finite number" in info.value.problem


def yaml_error(tmp_path: Path, device: str) -> ConfigError:
    """What reading a YAML registry of bracelet br-1 of hgy, with `device`'s keys too,
    raises."""
    path = tmp_path / "devices.yaml"
    path.write_text(
        f"devices:\n  - {{device_id: br-1, device_type: bracelet, community: hgy, {device}}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    return info.value


def test_a_yaml_contact_s_number_that_cannot_be_dialled_is_named(tmp_path: Path) -> None:
    error = yaml_error(tmp_path, "emergency_contacts: [{name: 张丽, phone: '1398765432'}]")
    assert error.field == "devices[0] (br-1): emergency_contacts"
    assert "contact 张丽: expected a phone number" in error.problem


def test_check_names_a_registry_number_that_cannot_be_dialled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "devices.csv"
    registry.write_text(
        f"{HEADER}br-1,bracelet,hgy,张三,13800138000,\nbr-2,bracelet,hgy,王五,1380013800,\n",
        encoding="utf-8",
    )
    config = tmp_path / "gw.yaml"
    config.write_text("mqtt: null\nregistry_file: devices.csv\n")
    assert main(["check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {registry}: line 3 (br-2): wearer_phone: ")
    assert "got '1380013800'" in err


def test_a_yaml_device_with_a_key_the_registry_does_not_have_is_named(tmp_path: Path) -> None:
    # A misspelt key would otherwise leave its attribute unset: a wearer's home, say,
    # and with it the geofence rule for that wearer.
    error = yaml_error(tmp_path, "home_latt: 34.75")
    assert error.field == "devices[0] (br-1): home_latt"
    assert error.problem.startswith("unknown key; known: device_id, device_type,")


def test_a_registered_device_cannot_be_changed_once_read() -> None:
    # The API, the rules and the router share each device: none may change it for the
    # others. A reload makes a new registry.
    with pytest.raises(AttributeError):
        DEVICES[0].building = "4"  # type: ignore[misc]


def test_a_contacts_landline_written_without_quotes_in_a_yaml_registry_is_the_landline(
    tmp_path: Path,
) -> None:
    # YAML 1.1 would read 037166123456 as an octal number, another valid number.
    path = tmp_path / "devices.yaml"
    path.write_text(
        "devices:\n"
        "  - {device_id: br-1, device_type: bracelet, community: hgy,\n"
        "     emergency_contacts: [{name: 社区值班, phone: 037166123456}]}\n",
        encoding="utf-8",
    )
    (device,) = load_registry(path).devices()
    assert device.emergency_contacts[0].phone == "+8637166123456"


def test_a_registry_sheet_with_a_column_twice_is_refused_naming_the_header(
    tmp_path: Path,
) -> None:
    # The sheet's `unit` column renamed `area` by a slip: the csv module keeps the last,
    # and every device would be placed in the area "2单元", routed to nobody's roster.
    path = tmp_path / "devices.csv"
    path.write_text(
        "device_id,device_type,community,area,compound,building,area\n"
        "sd-1,smoke_detector,hgy,东区,湖光苑,1号楼,2单元\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert (info.value.file, info.value.field) == (str(path), "header")
    assert "['area'] given twice" in info.value.problem
