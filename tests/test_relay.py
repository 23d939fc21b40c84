"""Relay board: the frame codec, and the driver against the board emulator on a pty."""
from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices import (
    DeviceError,
    DeviceOffline,
    DeviceOnline,
    Direction,
    DoorForced,
    FireAlarm,
    InputMap,
    PassageComplete,
    RelayConfig,
    Tamper,
    open_driver,
)
from devices.relay_emulator import Fault, RelayBoardEmulator
from devices.relay_protocol import (
    ETX,
    MAX_PAYLOAD,
    STX,
    Cmd,
    Frame,
    FrameDecoder,
    crc16,
    encode,
)
from tests.driver_events import next_event

ENTRY, EXIT, GREEN, RED, BUZZER = 0, 1, 2, 3, 4
INPUTS = InputMap(passage=0, door_forced=1, fire_alarm=2, tamper=3)
REPLY_TIMEOUT = 0.05


# --- codec -------------------------------------------------------------------------------

def test_crc_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1  # the standard check value of CRC-16/CCITT-FALSE


def test_frame_layout():
    wire = encode(Frame(seq=7, cmd=Cmd.SET_RELAY, payload=b"\x01\x01\x03\xe8"))
    assert wire[0] == STX and wire[-1] == ETX
    assert wire[1:8] == bytes([4, 7, 0x53, 1, 1, 3, 0xE8])
    assert int.from_bytes(wire[8:10], "big") == crc16(wire[1:8])
    with pytest.raises(ValueError):
        encode(Frame(1, Cmd.PING, bytes(MAX_PAYLOAD + 1)))


frames = st.builds(Frame, seq=st.integers(0, 255), cmd=st.integers(0, 255),
                   payload=st.binary(max_size=MAX_PAYLOAD))


@given(frames=st.lists(frames, min_size=1, max_size=4), noise=st.binary(max_size=20),
       chunk=st.integers(1, 9))
def test_decoder_finds_every_frame_after_noise_in_any_chunking(frames, noise, chunk):
    wire = noise + b"".join(encode(f) for f in frames)
    decoder, found = FrameDecoder(), []
    for i in range(0, len(wire), chunk):
        found += decoder.feed(wire[i:i + chunk])
    # Noise can by chance contain a valid frame; ours must all follow, in order.
    assert found[len(found) - len(frames):] == frames


def test_decoder_drops_damaged_frames_and_resyncs():
    good = encode(Frame(1, Cmd.ACK, b"\x02\x03"))  # STX/ETX bytes inside the payload
    bad_crc = bytearray(good)
    bad_crc[-2] ^= 0xFF
    truncated = good[:5]
    oversize = bytes([STX, MAX_PAYLOAD + 1, 0, 0])
    decoder = FrameDecoder()
    assert decoder.feed(bytes(bad_crc) + truncated + oversize + good) == [
        Frame(1, Cmd.ACK, b"\x02\x03")]
    assert decoder.dropped_bytes > 0


# --- driver against the emulator ---------------------------------------------------------

def make_config(port: str, **overrides) -> RelayConfig:
    settings = dict(port=port, entry_relay=ENTRY, exit_relay=EXIT, green_relay=GREEN,
                    red_relay=RED, buzzer_relay=BUZZER, unlock_pulse_ms=2000, inputs=INPUTS,
                    reply_timeout_s=REPLY_TIMEOUT, retries=2, poll_interval_s=0.02,
                    connect_timeout_s=0.5)
    settings.update(overrides)
    return RelayConfig(**settings)


@pytest.fixture
def board():
    with RelayBoardEmulator(relays=8) as emulator:
        yield emulator


@pytest.fixture
def driver(board):
    drv = open_driver(make_config(board.port))
    assert isinstance(drv.events.get_nowait(), DeviceOnline)
    yield drv
    drv.close()


@pytest.fixture
def quiet_driver(board):
    """Polls rarely, so injected faults hit the command under test, not a poll."""
    drv = open_driver(make_config(board.port, poll_interval_s=30))
    assert isinstance(drv.events.get_nowait(), DeviceOnline)
    yield drv
    drv.close()


def wait_until(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.005)


def set_relay_commands(board) -> list[tuple[int, int, int]]:
    return [(c.payload[0], c.payload[1], int.from_bytes(c.payload[2:], "big"))
            for c in board.commands(Cmd.SET_RELAY)]


def test_connect_pings_and_locks_before_announcing_online(board, driver):
    assert board.commands(Cmd.PING)
    assert sorted(set_relay_commands(board)) == [(ENTRY, 0, 0), (EXIT, 0, 0)]
    assert driver.online


def test_unlock_is_a_board_timed_pulse(board):
    drv = open_driver(make_config(board.port, unlock_pulse_ms=150))
    try:
        drv.unlock("entry")
        assert board.relay_on(ENTRY)
        assert not board.relay_on(EXIT)
        wait_until(lambda: not board.relay_on(ENTRY), timeout=1)  # the board relocked
        on_at, off_at = [t for t, relay, _ in board.relay_log if relay == ENTRY][-2:]
        assert 0.14 <= off_at - on_at <= 0.16
        drv.unlock(Direction.EXIT, passages=3)
        assert set_relay_commands(board)[-1] == (EXIT, 1, 450)
        drv.lock()
        assert not board.relay_on(EXIT)
        drv.unlock("both", hold=True)
        time.sleep(0.2)
        assert board.relay_on(ENTRY) and board.relay_on(EXIT)  # held past the pulse time
        drv.lock()
        assert not board.relay_on(ENTRY) and not board.relay_on(EXIT)
    finally:
        drv.close()


def test_indicators_drive_lamp_and_buzzer_relays(board, driver):
    driver.indicate("amber", "short", "no display here")
    assert board.relay_on(GREEN) and board.relay_on(RED)
    assert set_relay_commands(board)[-1] == (BUZZER, 1, 200)
    driver.indicate("red", "alarm")
    assert board.relay_on(RED) and not board.relay_on(GREEN) and board.relay_on(BUZZER)
    time.sleep(0.25)
    assert board.relay_on(BUZZER)  # the alarm holds
    driver.indicate("green")
    assert board.relay_on(GREEN) and not board.relay_on(RED) and not board.relay_on(BUZZER)
    sent = len(set_relay_commands(board))
    driver.indicate("green")  # buzzer already silent: only the lamps are (re)set
    assert len(set_relay_commands(board)) == sent + 2


def test_inputs_become_events_even_between_polls(board, driver):
    driver.unlock("entry")
    board.pulse_input(0)
    board.pulse_input(0)  # two passages faster than one poll: both counted
    assert next_event(driver, PassageComplete, timeout=2.0).direction == Direction.ENTRY
    assert next_event(driver, PassageComplete, timeout=2.0).direction == Direction.ENTRY
    board.set_input(2, True)
    assert next_event(driver, FireAlarm, timeout=2.0).active is True
    board.pulse_input(1)
    assert isinstance(next_event(driver, DoorForced, timeout=2.0), DoorForced)
    board.pulse_input(3)
    assert isinstance(next_event(driver, Tamper, timeout=2.0), Tamper)
    board.set_input(2, False)
    assert next_event(driver, FireAlarm, timeout=2.0).active is False
    time.sleep(0.1)
    assert driver.events.empty()


def test_lost_poll_reply_neither_loses_nor_doubles_a_passage(board, driver):
    board.set_fault(Fault.BAD_CRC, replies=1)
    board.pulse_input(0)
    next_event(driver, PassageComplete, timeout=2.0)
    time.sleep(0.15)
    assert not any(isinstance(e, PassageComplete) for e in list(driver.events.queue))
    assert driver.online


def test_fire_alarm_active_at_connect_is_reported_after_online(board):
    board.set_input(2, True)
    board.set_input(0, True)  # a passage sensor that happens to be active: not a passage
    drv = open_driver(make_config(board.port))
    try:
        assert isinstance(drv.events.get_nowait(), DeviceOnline)
        fire = drv.events.get(timeout=1)
        assert isinstance(fire, FireAlarm) and fire.active
        time.sleep(0.1)
        assert drv.events.empty()
    finally:
        drv.close()


def test_corrupted_replies_are_retried(board, quiet_driver):
    before = len(board.commands(Cmd.SET_RELAY))
    board.set_fault(Fault.BAD_CRC, replies=2)
    quiet_driver.unlock("entry")  # third attempt gets through
    assert len(board.commands(Cmd.SET_RELAY)) - before == 3
    assert board.relay_on(ENTRY)
    board.set_fault(Fault.TRUNCATED, replies=1)
    quiet_driver.lock()
    assert not board.relay_on(ENTRY)
    assert quiet_driver.online


def test_noise_before_a_reply_needs_no_retry(board, quiet_driver):
    before = len(board.commands(Cmd.SET_RELAY))
    board.set_fault(Fault.NOISE)
    quiet_driver.unlock("exit")
    quiet_driver.indicate("green")
    assert len(board.commands(Cmd.SET_RELAY)) - before == 3  # unlock + two lamps, once each
    assert board.relay_on(EXIT) and board.relay_on(GREEN)


@pytest.mark.parametrize("fault", [Fault.BAD_CRC, Fault.TRUNCATED, Fault.SILENT,
                                   Fault.WRONG_SEQ])
def test_persistent_fault_fails_within_the_retry_budget(board, quiet_driver, fault):
    board.set_fault(fault)
    started = time.monotonic()
    with pytest.raises(DeviceError, match="3 attempts"):
        quiet_driver.unlock("entry")
    elapsed = time.monotonic() - started
    assert 3 * REPLY_TIMEOUT <= elapsed < 3 * REPLY_TIMEOUT + 0.3
    assert isinstance(next_event(quiet_driver, DeviceOffline, timeout=2.0), DeviceOffline)
    assert not quiet_driver.online
    with pytest.raises(DeviceError, match="offline"):
        quiet_driver.lock()


def test_silent_board_goes_offline_and_comes_back_locked(board, driver):
    driver.unlock("entry")
    board.set_fault(Fault.SILENT)
    offline = next_event(driver, DeviceOffline, timeout=2.0)
    assert "no valid reply" in offline.reason
    assert board.relay_on(ENTRY)  # the board's own pulse timer still holds it
    board.set_fault(Fault.NONE)
    next_event(driver, DeviceOnline, timeout=2.0)
    assert not board.relay_on(ENTRY)  # relocked before DeviceOnline


def test_refused_command_is_not_retried_and_keeps_link(board):
    drv = open_driver(make_config(board.port, green_relay=12, poll_interval_s=30))
    try:
        before = len(board.commands(Cmd.SET_RELAY))
        with pytest.raises(DeviceError, match="NO_SUCH_RELAY"):
            drv.indicate("green")
        assert len(board.commands(Cmd.SET_RELAY)) - before == 1
        assert drv.online
    finally:
        drv.close()


def test_board_that_never_answers_is_announced_offline(board):
    board.set_fault(Fault.SILENT)
    started = time.monotonic()
    drv = open_driver(make_config(board.port, connect_timeout_s=0.3))
    try:
        assert time.monotonic() - started < 1.5
        assert isinstance(drv.events.get_nowait(), DeviceOffline)
        with pytest.raises(DeviceError):
            drv.unlock("entry")
        board.set_fault(Fault.NONE)
        next_event(drv, DeviceOnline, timeout=2.0)
        drv.unlock("entry")
        assert board.relay_on(ENTRY)
    finally:
        drv.close()
    assert not board.relay_on(ENTRY)  # close() locks


def test_config_rejects_inconsistent_wiring(board):
    with pytest.raises(ValueError, match="one purpose"):
        make_config(board.port, green_relay=ENTRY)
    with pytest.raises(ValueError, match="0..7"):
        make_config(board.port, inputs=InputMap(passage=8))
    with pytest.raises(DeviceError, match="cannot open"):
        open_driver(make_config("/dev/does-not-exist"))
