"""GPIO driver on a simulated chip that follows the gpiod v2 API (this machine has none)."""
from __future__ import annotations

import queue
import time
from datetime import timedelta

import gpiod
import pytest
from gpiod.line import Direction as LineDirection
from gpiod.line import Edge, Value

from devices import (
    DeviceError,
    DeviceOffline,
    DeviceOnline,
    Direction,
    DoorForced,
    FireAlarm,
    GpioConfig,
    InputMap,
    PassageComplete,
    Tamper,
    open_driver,
)
from devices.gpio import GpioDriver
from tests import fake_gpiod

CHIP = "/dev/gpiochip-sim"
ENTRY, EXIT, GREEN, RED, BUZZER = 17, 18, 22, 23, 24
PASSAGE, FORCED, FIRE, TAMPER = 5, 6, 13, 19


def make_config(**overrides) -> GpioConfig:
    settings = dict(chip=CHIP, entry_line=ENTRY, exit_line=EXIT, green_line=GREEN,
                    red_line=RED, buzzer_line=BUZZER, unlock_pulse_ms=150,
                    inputs=InputMap(passage=PASSAGE, door_forced=FORCED, fire_alarm=FIRE,
                                    tamper=TAMPER))
    settings.update(overrides)
    return GpioConfig(**settings)


@pytest.fixture
def chip():
    sim = fake_gpiod.install_chip(CHIP, num_lines=32)
    yield sim
    fake_gpiod.remove_chip(CHIP)


@pytest.fixture
def driver(chip):
    drv = GpioDriver(make_config(), gpiod_module=fake_gpiod)
    drv.open()
    assert isinstance(drv.events.get_nowait(), DeviceOnline)
    yield drv
    drv.close()


def next_event(drv, timeout: float = 1.0):
    try:
        return drv.events.get(timeout=timeout)
    except queue.Empty:
        pytest.fail("no event")


def wait_until(condition, timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.005)


def test_fake_follows_the_real_value_types():
    # The fake only replaces the chip: settings, enums and events are gpiod's own.
    assert fake_gpiod.LineSettings is gpiod.LineSettings
    assert fake_gpiod.EdgeEvent is gpiod.EdgeEvent
    assert fake_gpiod.line.Value is gpiod.line.Value


def test_lines_are_requested_locked_and_exclusive(chip, driver):
    request = chip.holder(ENTRY)
    settings = request._settings
    assert settings[ENTRY].direction == LineDirection.OUTPUT
    assert settings[ENTRY].output_value == Value.INACTIVE  # no unlock glitch at start-up
    assert settings[PASSAGE].direction == LineDirection.INPUT
    assert settings[PASSAGE].edge_detection == Edge.BOTH
    assert settings[PASSAGE].debounce_period == timedelta(milliseconds=10)
    assert not any(chip.output_high(n) for n in (ENTRY, EXIT, GREEN, RED, BUZZER))
    second = GpioDriver(make_config(), gpiod_module=fake_gpiod)
    with pytest.raises(DeviceError, match="cannot request"):
        second.open()  # a second daemon on the same lane cannot take the lines


def test_unlock_pulse_is_timed_by_the_driver(chip, driver):
    driver.unlock("entry")
    assert chip.output_high(ENTRY) and not chip.output_high(EXIT)
    started = time.monotonic()
    wait_until(lambda: not chip.output_high(ENTRY))
    assert time.monotonic() - started >= 0.14
    driver.unlock(Direction.BOTH, hold=True)
    time.sleep(0.25)
    assert chip.output_high(ENTRY) and chip.output_high(EXIT)  # held
    driver.lock()
    assert not chip.output_high(ENTRY) and not chip.output_high(EXIT)
    with pytest.raises(ValueError):
        driver.unlock("entry", passages=-1)


def test_indicators(chip, driver):
    driver.indicate("amber", "short", "no display")
    assert chip.output_high(GREEN) and chip.output_high(RED) and chip.output_high(BUZZER)
    wait_until(lambda: not chip.output_high(BUZZER))  # a short beep ends by itself
    driver.indicate("red", "alarm")
    time.sleep(0.3)
    assert chip.output_high(RED) and not chip.output_high(GREEN) and chip.output_high(BUZZER)
    driver.indicate("off")
    assert not any(chip.output_high(n) for n in (GREEN, RED, BUZZER))


def test_edges_become_events(chip, driver):
    driver.unlock("exit")
    before = time.monotonic()
    chip.pulse_input(PASSAGE)
    passage = next_event(driver)
    assert isinstance(passage, PassageComplete) and passage.direction == Direction.EXIT
    assert before <= passage.at <= time.monotonic()  # kernel timestamp, monotonic clock
    chip.drive_input(FIRE, True)
    fire = next_event(driver)
    assert isinstance(fire, FireAlarm) and fire.active
    chip.pulse_input(FORCED)
    assert isinstance(next_event(driver), DoorForced)
    chip.pulse_input(TAMPER)
    assert isinstance(next_event(driver), Tamper)
    chip.drive_input(FIRE, False)
    fire = next_event(driver)
    assert isinstance(fire, FireAlarm) and not fire.active
    chip.drive_input(7, True)  # an unconfigured line is not ours: no event
    time.sleep(0.1)
    assert driver.events.empty()


def test_active_low_wiring(chip):
    chip.drive_input(FIRE, True)  # active-low: high means no alarm
    drv = GpioDriver(make_config(inputs_active_low=True, outputs_active_low=True),
                     gpiod_module=fake_gpiod)
    drv.open()
    try:
        assert isinstance(drv.events.get_nowait(), DeviceOnline)
        assert drv.events.empty()
        assert chip.output_high(ENTRY)  # locked = inactive = physically high
        drv.unlock("entry")
        assert not chip.output_high(ENTRY)
        chip.drive_input(FIRE, False)
        fire = next_event(drv)
        assert isinstance(fire, FireAlarm) and fire.active
    finally:
        drv.close()


def test_fire_alarm_already_active_at_open(chip):
    chip.drive_input(FIRE, True)
    chip.drive_input(PASSAGE, True)  # stuck high: not a passage
    drv = GpioDriver(make_config(), gpiod_module=fake_gpiod)
    drv.open()
    try:
        assert isinstance(drv.events.get_nowait(), DeviceOnline)
        fire = drv.events.get_nowait()
        assert isinstance(fire, FireAlarm) and fire.active
        assert drv.events.empty()
    finally:
        drv.close()


def test_close_releases_lines_and_they_fall_locked(chip, driver):
    driver.unlock("both", hold=True)
    driver.indicate("green")
    driver.close()
    assert chip.holder(ENTRY) is None
    assert not any(chip.output_high(n) for n in (ENTRY, EXIT, GREEN))
    with pytest.raises(DeviceError):
        driver.unlock("entry")


def test_released_request_is_like_a_dead_process(chip, driver):
    """What the kernel does when the daemon dies: the request goes, the relay drops."""
    driver.unlock("entry", passages=100)
    chip.holder(ENTRY).release()
    assert not chip.output_high(ENTRY)
    offline = next_event(driver)
    assert isinstance(offline, DeviceOffline)
    with pytest.raises(DeviceError):
        driver.lock()


def test_missing_chip_with_the_real_gpiod_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="cannot request GPIO lines"):
        open_driver(make_config(chip=str(tmp_path / "gpiochip9")))
