"""Personal data of bracelet wearers, shown masked to those who do not need it.

admin sees it whole; an operator sees it masked; a grid worker sees it whole for
devices in their own cells (they call the wearer and the emergency contacts) and
masked elsewhere. Every whole read by a person goes to the audit.
"""

from __future__ import annotations

from gateway.api.auth import Principal, Role
from gateway.registry import RegisteredDevice


def mask_name(name: str) -> str:
    """张*明: first and last character kept; a two-character name keeps the first."""
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def mask_phone(phone: str) -> str:
    """138****5678: the first three and last four digits kept."""
    if len(phone) >= 11:
        return phone[:3] + "*" * (len(phone) - 7) + phone[-4:]
    if len(phone) <= 4:
        return "*" * len(phone)
    return "*" * (len(phone) - 4) + phone[-4:]


def has_personal_data(device: RegisteredDevice) -> bool:
    return bool(device.wearer_name or device.wearer_phone or device.emergency_contacts)


def sees_whole(principal: Principal, device: RegisteredDevice) -> bool:
    if principal.role is Role.ADMIN:
        return True
    if principal.role is Role.GRID_WORKER:
        return principal.covers_device(device, device.community)
    return False
