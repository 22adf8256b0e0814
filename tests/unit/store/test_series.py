from gateway.decode.record import DeviceRef
from gateway.registry import RegisteredDevice, Registry
from gateway.rules.alert import AlertChange, AlertState
from gateway.rules.rule import Severity
from gateway.store.series import alert_line, device_info_lines

COVER = RegisteredDevice(
    device_id="mh-1",
    device_type="manhole_cover",
    community="hgy",
    area="东区",
    compound="湖光苑",
    lat=34.75,
    lon=113.6,
    well_depth_cm=180,
)
WEARER = RegisteredDevice(
    device_id="br-1",
    device_type="bracelet",
    community="hgy",
    wearer_name="张伟明",
    wearer_phone="13812345678",
    home_lat=34.7,
    home_lon=113.6,
    safe_radius_m=500,
)


def change(device_id: str, device_type: str) -> AlertChange:
    return AlertChange(
        alert_id="a1",
        rule="cover_open",
        title="Cover open",
        severity=Severity("major"),
        life_safety=False,
        device=DeviceRef("hgy", device_type, device_id),
        port=None,
        state=AlertState.FIRING,
        started_ms=1_000,
        at_ms=2_000,
        values={},
    )


def test_an_alert_carries_its_grid_cell_and_position_from_the_registry() -> None:
    line = alert_line(change("mh-1", "manhole_cover"), COVER)
    assert line.startswith(
        "alert,area=东区,community=hgy,compound=湖光苑,device_id=mh-1,"
        "device_type=manhole_cover,rule=cover_open,severity=major "
    )
    assert line.endswith(",lat=34.75,lon=113.6 2000")


def test_an_unregistered_device_alert_has_no_place() -> None:
    line = alert_line(change("mh-9", "manhole_cover"))
    assert "area=" not in line and "lat=" not in line


def test_device_info_has_place_and_position_but_nothing_about_the_wearer() -> None:
    lines = device_info_lines(Registry([COVER, WEARER]), 5_000)
    assert lines == [
        "device_info,area=东区,community=hgy,compound=湖光苑,device_id=mh-1,"
        "device_type=manhole_cover registered=true,lat=34.75,lon=113.6,well_depth_cm=180.0 5000",
        "device_info,community=hgy,device_id=br-1,device_type=bracelet registered=true 5000",
    ]
