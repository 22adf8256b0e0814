"""Realistic, seeded MQTT traffic for every device type in the device contract."""

from gateway.registry import COLUMNS as REGISTRY_COLUMNS
from simulators.device import Contact, Device, DeviceType, Wearer
from simulators.fleet import Fleet
from simulators.message import MessageKind, SimMessage
from simulators.scenario import Scenario, ScenarioKind

__all__ = [
    "REGISTRY_COLUMNS",
    "Contact",
    "Device",
    "DeviceType",
    "Fleet",
    "MessageKind",
    "Scenario",
    "ScenarioKind",
    "SimMessage",
    "Wearer",
]
