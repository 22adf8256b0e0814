"""The registry's indexes: devices by community in the order the API lists them, and the
places alerts about a building or compound are routed and found by."""

from gateway.registry import RegisteredDevice, Registry


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


def test_an_empty_registry_has_no_places() -> None:
    registry = Registry()
    assert (len(registry), registry.places(), registry.devices_in()) == (0, frozenset(), ())
    assert registry.places_within("hgy", "building", "3") == []
    assert registry.place("hgy", "building", "3") == ("hgy", None, None, "3")
