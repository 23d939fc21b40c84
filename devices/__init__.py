"""Turnstile and passenger I/O drivers behind one interface (see devices.base).

Drivers are imported lazily by type so a gate with a relay board does not need libosdp or
libgpiod importable, and the demo does not need either.
"""
from __future__ import annotations

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
    """The driver for `cfg`, not yet opened."""
    if isinstance(cfg, OsdpConfig):
        from devices.osdp import OsdpDriver
        return OsdpDriver(cfg)
    if isinstance(cfg, RelayConfig):
        from devices.relay import RelayDriver
        return RelayDriver(cfg)
    if isinstance(cfg, GpioConfig):
        from devices.gpio import GpioDriver
        return GpioDriver(cfg)
    if isinstance(cfg, SimConfig):
        from devices.sim import SimDriver
        return SimDriver(cfg)
    raise TypeError(f"not a device config: {cfg!r}")


def open_driver(cfg: DriverConfig) -> GateDriver:
    """Build the driver for `cfg` (by its type: osdp, relay, gpio, sim) and open it.

    Returns once the peer's link state is known; the first DeviceOnline/DeviceOffline event
    is already on `driver.events`.
    """
    driver = make_driver(cfg)
    driver.open()
    return driver
