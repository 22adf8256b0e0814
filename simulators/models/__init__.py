"""One stateful model per device type, advanced in simulated time."""

from __future__ import annotations

import random

from simulators.device import Device, DeviceType
from simulators.models.bracelet import BraceletModel
from simulators.models.charging_shed import ChargingShedModel
from simulators.models.manhole_cover import ManholeCoverModel
from simulators.models.model import DeviceModel, Reaction
from simulators.models.smoke_detector import SmokeDetectorModel

MODEL_TYPES: dict[DeviceType, type[DeviceModel]] = {
    DeviceType.SMOKE_DETECTOR: SmokeDetectorModel,
    DeviceType.MANHOLE_COVER: ManholeCoverModel,
    DeviceType.BRACELET: BraceletModel,
    DeviceType.CHARGING_SHED: ChargingShedModel,
}


def make_model(device: Device, *, seed: int, start_ms: int) -> DeviceModel:
    # Seeding by (seed, device id) keeps a device's traffic the same whatever else is in
    # the fleet or in the same worker process.
    rng = random.Random(f"{seed}:{device.device_id}")
    return MODEL_TYPES[device.device_type](device, rng, start_ms)


__all__ = [
    "MODEL_TYPES",
    "BraceletModel",
    "ChargingShedModel",
    "DeviceModel",
    "ManholeCoverModel",
    "Reaction",
    "SmokeDetectorModel",
    "make_model",
]
