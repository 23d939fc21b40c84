"""The simulated turnstile, plus the device package's front door (config parsing, factory)."""
from __future__ import annotations

import queue
import time

import pytest

from devices import (
    DeviceError,
    DeviceOffline,
    DeviceOnline,
    Direction,
    DoorForced,
    FireAlarm,
    GateDriver,
    GpioConfig,
    InputMap,
    OsdpConfig,
    PassageComplete,
    RelayConfig,
    SimConfig,
    Tamper,
    TokenRead,
    TokenSource,
    make_driver,
    open_driver,
)
from devices.gpio import GpioDriver
from devices.osdp import OsdpDriver
from devices.relay import RelayDriver
from devices.sim import SimDriver


def get(drv, timeout: float = 1.0):
    try:
        return drv.events.get(timeout=timeout)
    except queue.Empty:
        pytest.fail("no event")


@pytest.fixture
def sim():
    drv = open_driver(SimConfig(unlock_pulse_ms=100, command_timeout_s=0.05))
    assert isinstance(drv.events.get_nowait(), DeviceOnline)
    yield drv
    drv.close()


def test_open_locks_first_and_records_commands_in_order(sim):
    sim.unlock("entry")
    sim.indicate("green", "short", "Please pass")
    sim.lock()
    assert [c.name for c in sim.commands] == ["lock", "unlock", "indicate", "lock"]
    assert sim.commands[1].args == {"direction": Direction.ENTRY, "passages": 1, "hold": False}
    assert sim.commands[2].args["text"] == "Please pass"
    stamps = [c.at for c in sim.commands]
    assert stamps == sorted(stamps)


def test_timed_unlock_expires_and_hold_does_not(sim):
    sim.unlock("exit", passages=2)
    assert sim.unlocked == Direction.EXIT
    time.sleep(0.25)
    assert sim.unlocked is None
    sim.unlock("both", hold=True)
    time.sleep(0.15)
    assert sim.unlocked == Direction.BOTH
    sim.lock()
    assert sim.unlocked is None


def test_auto_passages_follow_each_unlock():
    drv = open_driver(SimConfig(auto_passage_ms=40))
    try:
        drv.events.get_nowait()
        unlocked_at = time.monotonic()
        drv.unlock("entry", passages=2)
        first, second = get(drv), get(drv)
        assert isinstance(first, PassageComplete) and isinstance(second, PassageComplete)
        assert first.direction == second.direction == Direction.ENTRY
        assert first.at - unlocked_at >= 0.04 and second.at - first.at >= 0.03
    finally:
        drv.close()


def test_scripted_inputs(sim):
    sim.emit_passage()  # while locked: no direction
    passage = get(sim)
    assert isinstance(passage, PassageComplete) and passage.direction is None
    sim.set_fire_alarm(True)
    assert get(sim).active is True
    sim.emit_door_forced(after_ms=20)
    sim.emit_tamper(after_ms=40)
    assert isinstance(get(sim), DoorForced)
    assert isinstance(get(sim), Tamper)
    sim.present_token("M1DOE/JOHN", source="barcode")
    token = get(sim)
    assert isinstance(token, TokenRead)
    assert (token.source, token.text) == (TokenSource.BARCODE, "M1DOE/JOHN")
    sim.set_fire_alarm(False)
    fire = get(sim)
    assert isinstance(fire, FireAlarm) and not fire.active


def test_silent_controller_goes_offline_and_commands_are_refused(sim):
    sim.stop_answering()
    assert isinstance(get(sim), DeviceOffline)
    started = time.monotonic()
    with pytest.raises(DeviceError, match="offline"):  # at once, as every driver does (tests/test_driver_rules.py)
        sim.unlock("entry")
    assert sim.last("unlock") is None
    sim.resume_answering()
    assert isinstance(get(sim), DeviceOnline)
    assert sim.last("lock").at > started  # relocked on reconnect


def test_bad_calls_are_rejected(sim):
    with pytest.raises(ValueError):
        sim.unlock("up")
    with pytest.raises(ValueError):
        sim.unlock("entry", passages=True)
    with pytest.raises(ValueError):
        sim.indicate("blue")
    with pytest.raises(ValueError):
        sim.indicate("red", "siren")
    with pytest.raises(ValueError, match="at most"):
        sim.indicate("red", text="This message is far too long for a gate display")
    with pytest.raises(ValueError, match="control"):
        sim.indicate("red", text="two\nlines")
    assert [c.name for c in sim.commands] == ["lock"]


def test_commands_after_close_fail():
    drv = open_driver(SimConfig())
    drv.close()
    with pytest.raises(DeviceError, match="not open"):
        drv.lock()


def test_every_driver_satisfies_the_protocol(tmp_path):
    drivers = [
        make_driver(SimConfig()),
        make_driver(RelayConfig(port="/dev/null")),
        make_driver(OsdpConfig(port="/dev/null", scbk_file=str(tmp_path / "k"))),
        make_driver(GpioConfig()),
    ]
    assert [type(d) for d in drivers] == [SimDriver, RelayDriver, OsdpDriver, GpioDriver]
    assert all(isinstance(d, GateDriver) for d in drivers)


def test_driver_configs_check_themselves():
    # Parsing [device] from a file is the gate config's job (tests/test_config.py).
    with pytest.raises(ValueError, match="share one input"):
        InputMap(passage=1, tamper=1)
    with pytest.raises(ValueError, match="address"):
        OsdpConfig(port="x", scbk_file="k", address=127)
