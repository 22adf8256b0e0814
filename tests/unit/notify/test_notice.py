"""What a notice tells of where to go."""

from dataclasses import replace
from zoneinfo import ZoneInfo

from gateway.decode.record import Position
from gateway.notify.notice import Notice, make_notice
from gateway.registry import RegisteredDevice, Registry, Site
from gateway.rules.alert import AlertState
from gateway.rules.book import AlertEntry

# A wearer with a home and no registered place, as bracelets are registered.
WEARER = RegisteredDevice(
    device_id="br-1", device_type="bracelet", community="hgy", home_lat=34.75, home_lon=113.62
)
# One registered at a place of its own as well: the place comes before the home.
PLACED = replace(WEARER, lat=34.7, lon=113.6)


def fall(position: Position | None) -> AlertEntry:
    return AlertEntry(
        alert_id="a", rule="fall", title="跌倒 Fall", severity="critical", life_safety=True,
        community="hgy", device_type="bracelet", device_id="br-1", port=None,
        state=AlertState.FIRING, started_ms=0, updated_ms=0, fired_ms=0, acknowledged_by=None,
        acknowledged_ms=None, arrived_by=None, arrived_ms=None, assigned_to=None,
        resolved_ms=None, closed_by=None, closed_ms=None, note=None, position=position,
    )  # fmt: skip


def notice_of(entry: AlertEntry, device: RegisteredDevice | None) -> Notice:
    """`entry`'s notice, its device registered as `device` when it began and now."""
    site = entry.where(Registry([device] if device else []))
    return make_notice(
        key="a/grid.0/wang-fang/firing", kind="firing", entry=entry, device=device,
        receiver="wang-fang", receiver_name="王芳", phone=None, link=None,
        zone=ZoneInfo("Asia/Shanghai"), site=site,
    )  # fmt: skip


def test_the_map_is_where_the_alert_fired_else_the_registered_place_else_home() -> None:
    fallen = notice_of(fall(Position(34.8, 113.7)), WEARER)
    assert fallen.map_url is not None and "marker?position=113.7,34.8&" in fallen.map_url
    # The text the channels send carries it.
    assert f"地图: {fallen.map_url}" in fallen.text()
    registered = notice_of(fall(None), PLACED).map_url
    assert registered is not None and "marker?position=113.6,34.7&" in registered
    home = notice_of(fall(None), WEARER).map_url
    assert home is not None and "marker?position=113.62,34.75&" in home
    assert notice_of(fall(None), None).map_url is None


def test_a_notice_tells_where_the_alert_began_though_its_device_was_taken_out_since() -> None:
    # An escalation's notice after the wearer's bracelet left the registry: the place and
    # the map the grid worker needs, as the registry gave them when the fall began.
    began = Site("hgy", "east", "lakeside", "3", "2-301", 34.7, 113.6)
    notice = make_notice(
        key="a/grid.1/zhao-lei/firing", kind="firing", entry=fall(None),
        device=None, receiver="zhao-lei", receiver_name="赵磊", phone=None, link=None,
        zone=ZoneInfo("Asia/Shanghai"), site=began,
    )  # fmt: skip
    assert notice.place == "hgy east lakeside 3 2-301"
    assert notice.map_url is not None and "marker?position=113.6,34.7&" in notice.map_url
