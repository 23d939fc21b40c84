"""Turnstile and passenger I/O drivers behind one interface (see devices.base).

Drivers are imported lazily by type (devices/<type>.py, registered in devices.driver.DRIVERS)
so a gate with a relay board does not need libosdp or libgpiod importable, and the demo does
not need either.
"""
from __future__ import annotations

import importlib

from devices.base import (
    MAX_TEXT_LEN,
    Buzzer,
    Colour,
    DeviceError,
    DeviceEvent,
    DeviceOffline,
    DeviceOnline,
    Direction,
    DoorForced,
    FireAlarm,
    GateDriver,
    PassageComplete,
    Tamper,
    TokenRead,
    TokenSource,
)
from devices.config import (
    CONFIG_TYPES,
    DriverConfig,
    GpioConfig,
    InputMap,
    OsdpConfig,
    RelayConfig,
    SimConfig,
)

__all__ = [
    "MAX_TEXT_LEN", "Buzzer", "Colour", "DeviceError", "DeviceEvent", "DeviceOffline",
    "DeviceOnline", "Direction", "DoorForced", "FireAlarm", "GateDriver", "PassageComplete",
    "Tamper", "TokenRead", "TokenSource", "DriverConfig", "GpioConfig", "InputMap",
    "OsdpConfig", "RelayConfig", "SimConfig", "make_driver",
    "open_driver",
]


def make_driver(cfg: DriverConfig) -> GateDriver:
    """The driver for `cfg` (by its config's TYPE), not yet opened."""
    kind = getattr(type(cfg), "TYPE", None)
    if not isinstance(kind, str) or CONFIG_TYPES.get(kind) is not type(cfg):
        raise TypeError(f"not a device config: {cfg!r}")
    from devices.driver import DRIVERS

    importlib.import_module(f"devices.{kind}")
    return DRIVERS[kind](cfg)


def open_driver(cfg: DriverConfig) -> GateDriver:
    """Build the driver for `cfg` (by its type: osdp, relay, gpio, sim) and open it.

    Returns once the peer's link state is known; the first DeviceOnline/DeviceOffline event
    is already on `driver.events`.
    """
    driver = make_driver(cfg)
    driver.open()
    return driver
