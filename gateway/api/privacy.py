"""Personal data of bracelet wearers, shown masked to those who do not need it.

admin sees it whole; an operator sees it masked; a grid worker sees it whole for
devices in their own cells (they call the wearer and the emergency contacts) and
masked elsewhere. Every whole read by a person goes to the audit.

Where a device worn by a person is (its profile's `personal_positions`) is where that
person is, and their home most nights: its `lat` and `lon` are shown by the same rule,
masked as a position about a kilometre wide.

An emergency contact told of an alert is named by their phone (`contact:13987654321`)
wherever the alert says who was told or who acted: that name is the same personal
data, shown and audited by the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard

from gateway.api.auth import Principal, Role
from gateway.decode.record import FieldValue, Position
from gateway.logs import COARSE_DECIMALS
from gateway.notify.router import CONTACT_PREFIX
from gateway.phone import dialled_in_mainland
from gateway.registry import Placed, RegisteredDevice


def mask_name(name: str) -> str:
    """张*明: first and last character kept; a two-character name keeps the first."""
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def mask_phone(phone: str) -> str:
    """138****5678: the first three and last four digits kept, of a mainland number as
    dialled there (the registry keeps +8613812345678), so that the carrier's prefix
    still shows."""
    phone = dialled_in_mainland(phone)
    if len(phone) >= 11:
        return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]
    if len(phone) <= 4:
        return "*" * len(phone)
    return "*" * (len(phone) - 4) + phone[-4:]


# What an audit row says was shown whole.
WEARER = "wearer name, phone, emergency contacts"
POSITION = "position"
_POSITION_FIELDS = ("lat", "lon")


def coarse_position(position: Position) -> Position:
    return Position(round(position.lat, COARSE_DECIMALS), round(position.lon, COARSE_DECIMALS))


def coarse_fields(fields: Mapping[str, FieldValue]) -> dict[str, FieldValue]:
    """The fields with `lat` and `lon` made coarse (each alone too: half a position
    still halves where to look); the rest as they are."""
    coarse = dict(fields)
    for name in _POSITION_FIELDS:
        value = coarse.get(name)
        if isinstance(value, float | int) and not isinstance(value, bool):
            coarse[name] = round(float(value), COARSE_DECIMALS)
    return coarse


def shows_position(fields: Mapping[str, FieldValue]) -> bool:
    return any(name in fields for name in _POSITION_FIELDS)


def names_a_contact(name: str | None) -> TypeGuard[str]:
    """Whether a receiver's or an actor's name is an emergency contact's phone."""
    return name is not None and name.startswith(CONTACT_PREFIX)


def mask_receiver(name: str) -> str:
    """contact:139****4321 for an emergency contact; any other name (a receiver in the
    notification policy, a token's name) is not personal data and stays as it is."""
    if not names_a_contact(name):
        return name
    return CONTACT_PREFIX + mask_phone(name.removeprefix(CONTACT_PREFIX))


def has_personal_data(device: RegisteredDevice) -> bool:
    return bool(device.wearer_name or device.wearer_phone or device.emergency_contacts)


def sees_whole(principal: Principal, device: Placed | None, community: str) -> bool:
    """Whether the caller sees the personal data of a device in `community` whole, the
    device where it is registered, or where its alert is (see AlertEntry.where); an
    unregistered device (one taken out of the registry since its alert) has no place but
    its community."""
    if principal.role is Role.ADMIN:
        return True
    if principal.role is Role.GRID_WORKER:
        return principal.covers_device(device, community)
    return False


def what_shown(wearer: bool, position: bool) -> str | None:
    """What an audit row says was shown whole; None: nothing personal."""
    return (
        ", ".join(what for what, shown in ((WEARER, wearer), (POSITION, position)) if shown) or None
    )
