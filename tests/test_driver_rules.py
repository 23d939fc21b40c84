"""The rules devices.driver.DriverBase holds for every turnstile driver, checked on all four:
each against its real peer or the fake this machine needs (relay emulator on a pty, libosdp's
PD on a pty, the gpiod v2 fake, the simulator)."""
from __future__ import annotations

import time
from contextlib import contextmanager

import pytest

from devices import CONFIG_TYPES, DeviceError, DeviceOffline, DeviceOnline, SimConfig, make_driver, open_driver
from devices.driver import DRIVERS
from devices.gpio import GpioDriver
from devices.keyfile import write_scbk
from devices.relay_emulator import Fault, RelayBoardEmulator
from devices.relay_protocol import Cmd
from tests import fake_gpiod
from tests import test_gpio as gpio_case
from tests import test_osdp as osdp_case
from tests import test_relay as relay_case
from tests.driver_events import next_event

KINDS = ("sim", "relay", "gpio", "osdp")


@contextmanager
def offline_driver(kind: str, tmp_path):
    """An opened driver whose peer is not answering, and a function counting what reached the peer."""
    if kind == "sim":
        drv = open_driver(SimConfig())
        drv.stop_answering()
        try:
            yield drv, lambda: len(drv.commands)
        finally:
            drv.close()
    elif kind == "relay":
        with RelayBoardEmulator(relays=8) as board:
            board.set_fault(Fault.SILENT)
            drv = open_driver(relay_case.make_config(board.port, connect_timeout_s=0.3))
            try:
                yield drv, lambda: len(board.commands(Cmd.SET_RELAY))  # the poller keeps pinging
            finally:
                drv.close()
    elif kind == "gpio":
        chip = fake_gpiod.install_chip(gpio_case.CHIP, num_lines=32)
        drv = GpioDriver(gpio_case.make_config(), gpiod_module=fake_gpiod)
        try:
            drv.open()
            chip.holder(gpio_case.ENTRY).release()  # the lines are gone, as on a lost chip
            yield drv, lambda: 0  # nothing can reach a released request
        finally:
            drv.close()
            fake_gpiod.remove_chip(gpio_case.CHIP)
    else:
        peer = osdp_case.Turnstile(bytes(16))  # a PD with another key: never a secure channel
        key = tmp_path / "cp.scbk"
        write_scbk(key, osdp_case.KEY)
        drv = open_driver(osdp_case.make_config(peer.port, key, connect_timeout_s=1.0))
        try:
            yield drv, lambda: len(peer.commands_within(0.05))
        finally:
            drv.close()
            peer.teardown()


@pytest.mark.parametrize("kind", KINDS)
def test_every_driver_refuses_commands_at_once_while_offline(kind, tmp_path):
    with offline_driver(kind, tmp_path) as (drv, sent):
        next_event(drv, DeviceOffline, timeout=3.0)
        assert not drv.online
        before = sent()
        peer = type(drv).PEER
        for what, command in (("unlock entry", lambda: drv.unlock("entry")), ("lock", drv.lock),
                              ("indicate", lambda: drv.indicate("red"))):
            started = time.monotonic()
            with pytest.raises(DeviceError, match=f"^{what}: {peer} offline$"):
                command()
            assert time.monotonic() - started < 0.05, f"{kind}: {what} waited before refusing"
        assert sent() == before, f"{kind}: a refused command reached the peer"


@pytest.mark.parametrize("kind", KINDS)
def test_every_driver_refuses_commands_after_close_the_same_way(kind, tmp_path):
    with offline_driver(kind, tmp_path) as (drv, _):
        pass
    for what, command in (("unlock entry", lambda: drv.unlock("entry")), ("lock", drv.lock),
                          ("indicate", lambda: drv.indicate("off"))):
        with pytest.raises(DeviceError, match=f"^{what}: {type(drv).PEER} driver is not open$"):
            command()
    drv.close()  # twice is fine


@pytest.mark.parametrize("kind", KINDS)
def test_bad_arguments_are_refused_before_the_link_is_looked_at(kind, tmp_path):
    with offline_driver(kind, tmp_path) as (drv, _):
        with pytest.raises(ValueError):
            drv.unlock("sideways")
        with pytest.raises(ValueError):
            drv.unlock("entry", passages=0)
        with pytest.raises(ValueError):
            drv.indicate("red", text="x" * 33)


def test_one_registry_routes_every_config_type_to_its_driver(tmp_path):
    configs = {"sim": SimConfig(), "relay": relay_case.make_config("/dev/null"),
               "gpio": gpio_case.make_config(), "osdp": osdp_case.make_config("/dev/null", tmp_path / "k")}
    assert set(configs) == set(CONFIG_TYPES)
    for kind, cfg in configs.items():
        drv = make_driver(cfg)
        assert type(drv) is DRIVERS[kind] and type(drv).CONFIG is CONFIG_TYPES[kind]
    with pytest.raises(TypeError, match="not a device config"):
        make_driver(object())


def test_relay_close_locks_while_its_poller_still_runs():
    """close() locks first and stops the I/O thread after, as OSDP must (its thread carries the ACK)."""
    with RelayBoardEmulator(relays=8) as board:
        drv = open_driver(relay_case.make_config(board.port))
        next_event(drv, DeviceOnline)
        drv.unlock("both", hold=True)
        thread = drv._thread
        drv.close()
        assert not thread.is_alive()
        assert not board.relay_on(relay_case.ENTRY) and not board.relay_on(relay_case.EXIT)
