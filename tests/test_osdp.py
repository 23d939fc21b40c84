"""OSDP driver against a real libosdp PeripheralDevice on the other end of a pty pair,
secure channel enforced on both sides."""
from __future__ import annotations

import os
import stat
import time
import tty

import osdp
import pytest

from devices import (
    DeviceError,
    DeviceOffline,
    DeviceOnline,
    Direction,
    DoorForced,
    FireAlarm,
    InputMap,
    OsdpConfig,
    PassageComplete,
    Tamper,
    TokenRead,
    TokenSource,
    open_driver,
)
from devices.keyfile import KeyFileError, load_scbk, write_scbk
from tests.driver_events import next_event

KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
FULL_CAPS = [
    (osdp.Capability.OutputControl, 1, 2),
    (osdp.Capability.ContactStatusMonitoring, 1, 4),
    (osdp.Capability.LEDControl, 1, 1),
    (osdp.Capability.AudibleControl, 1, 1),
    (osdp.Capability.TextOutput, 1, 1),
]
INPUTS = InputMap(passage=0, door_forced=1, fire_alarm=2, tamper=3)


class MasterChannel(osdp.Channel):
    """The PD's end of the pty: raw, non-blocking reads and writes on the master fd."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def read(self, max_bytes: int) -> bytes:
        try:
            return os.read(self.fd, max_bytes)
        except (BlockingIOError, OSError):
            return b""

    def write(self, buf: bytes) -> int:
        try:
            return os.write(self.fd, buf)
        except BlockingIOError:
            return 0

    def flush(self) -> None:
        while self.read(4096):
            pass


class Turnstile:
    """A PD on a pty; its commands are recorded, its replies can be refused."""

    def __init__(self, key: bytes, caps=FULL_CAPS, address: int = 5) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # kept open so the pty never sees a hang-up between sessions
        os.set_blocking(self.master, False)
        self.refuse: set[int] = set()  # command ids the PD NAKs
        self.stall_next_s = 0.0  # the PD sits on the next command this long before its ACK
        self.pd = osdp.PeripheralDevice(
            osdp.PDInfo(address, MasterChannel(self.master), scbk=key,
                        flags=[osdp.LibFlag.EnforceSecure]),
            osdp.PDCapabilities(caps), log_level=osdp.LogLevel.Error,
            command_handler=self._handle)
        self.pd.start()
        self.running = True

    def _handle(self, command: dict):
        if self.stall_next_s:
            stall, self.stall_next_s = self.stall_next_s, 0.0
            time.sleep(stall)  # blocks the PD's own thread, as a busy controller would
        return (-1, None) if command["command"] in self.refuse else (0, None)

    def next_command(self, timeout: float = 2.0) -> dict:
        command = self.pd.get_command(timeout=timeout)
        assert command is not None, "PD received no command"
        return command

    def commands_within(self, seconds: float) -> list[dict]:
        found, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            command = self.pd.get_command(timeout=left)
            if command is not None:
                found.append(command)
        return found

    def report_inputs(self, *levels: int) -> None:
        assert self.pd.submit_event({"event": osdp.Event.Status,
                                     "type": osdp.StatusReportType.Input,
                                     "report": bytes(levels)})

    def stop(self) -> None:
        self.pd.stop()
        self.running = False

    def start(self) -> None:
        self.pd.start()
        self.running = True

    def teardown(self) -> None:
        if self.running:
            self.pd.stop()
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "pd.scbk"
    write_scbk(path, KEY)
    return path


def make_config(port: str, key_file, **overrides) -> OsdpConfig:
    settings = dict(port=port, scbk_file=str(key_file), address=5, entry_output=0,
                    exit_output=1, unlock_pulse_ms=3000, inputs=INPUTS,
                    command_timeout_s=1.0, offline_after_s=0.4, reconnect_interval_s=0.5,
                    connect_timeout_s=3.0)
    settings.update(overrides)
    return OsdpConfig(**settings)


@pytest.fixture
def turnstile():
    peer = Turnstile(KEY)
    yield peer
    peer.teardown()


def assert_locks_all(commands: list[dict]) -> None:
    """The last Output command for each of the two lock outputs is a permanent lock."""
    final = {c["output_no"]: c["control_code"] for c in commands
             if c["command"] == osdp.Command.Output}
    assert final == {0: 1, 1: 1}, commands


@pytest.fixture
def driver(turnstile, key_file):
    drv = open_driver(make_config(turnstile.port, key_file))
    assert_locks_all([turnstile.next_command(), turnstile.next_command()])
    yield drv
    drv.close()


def test_open_locks_then_announces_online_over_secure_channel(turnstile, key_file):
    drv = open_driver(make_config(turnstile.port, key_file))
    try:
        # open() returned with the link state known, and the barrier was locked first
        assert isinstance(drv.events.get_nowait(), DeviceOnline)
        assert drv.online
        assert turnstile.pd.is_sc_active()
        assert_locks_all(turnstile.commands_within(0.3))
        assert drv.events.empty()
    finally:
        drv.close()
    assert_locks_all(turnstile.commands_within(0.3))  # close() locks as well


def test_unlock_and_lock_reach_pd_as_output_commands(driver, turnstile):
    driver.unlock("entry")
    assert turnstile.next_command() == {"command": osdp.Command.Output, "output_no": 0,
                                        "control_code": 5, "timer_count": 30}
    driver.unlock(Direction.EXIT, passages=2)
    assert turnstile.next_command() == {"command": osdp.Command.Output, "output_no": 1,
                                        "control_code": 5, "timer_count": 60}
    driver.lock()
    locked = [turnstile.next_command(), turnstile.next_command()]
    assert sorted((c["output_no"], c["control_code"], c["timer_count"]) for c in locked) == [
        (0, 1, 0), (1, 1, 0)]
    driver.unlock("both", hold=True)  # fire release: permanently on until lock()
    held = [turnstile.next_command(), turnstile.next_command()]
    assert sorted((c["output_no"], c["control_code"], c["timer_count"]) for c in held) == [
        (0, 2, 0), (1, 2, 0)]


def test_unlock_rejects_bad_arguments_without_sending(driver, turnstile):
    with pytest.raises(ValueError):
        driver.unlock("sideways")
    with pytest.raises(ValueError):
        driver.unlock("entry", passages=0)
    assert turnstile.commands_within(0.3) == []


def test_indicators_reach_pd(driver, turnstile):
    driver.indicate("green", "short", "Bienvenue à bord")
    led, buzzer, text = (turnstile.next_command() for _ in range(3))
    assert (led["command"], led["on_color"], led["off_count"]) == (
        osdp.Command.LED, osdp.CommandLEDColor.Green, 0)
    assert (buzzer["command"], buzzer["control_code"], buzzer["on_count"], buzzer["rep_count"]) == (
        osdp.Command.Buzzer, 2, 2, 1)
    assert (text["command"], text["data"]) == (osdp.Command.Text, "Bienvenue a bord")

    driver.indicate("red", "alarm", "Bienvenue à bord")  # text unchanged: not re-sent
    led, buzzer = turnstile.next_command(), turnstile.next_command()
    assert led["on_color"] == osdp.CommandLEDColor.Red
    assert (buzzer["on_count"], buzzer["off_count"], buzzer["rep_count"]) == (5, 5, 0)

    driver.indicate("off")
    led, buzzer, text = (turnstile.next_command() for _ in range(3))
    assert led["on_color"] == osdp.CommandLEDColor.Black
    assert (buzzer["command"], buzzer["control_code"]) == (osdp.Command.Buzzer, 1)
    assert text["data"] == ""
    assert turnstile.commands_within(0.2) == []

    with pytest.raises(ValueError):
        driver.indicate("green", text="x" * 33)
    with pytest.raises(ValueError):
        driver.indicate("purple")


def test_pd_without_display_or_buzzer_only_gets_led(key_file):
    bare = Turnstile(KEY, caps=[(osdp.Capability.OutputControl, 1, 1),
                                (osdp.Capability.LEDControl, 1, 1)])
    drv = open_driver(make_config(bare.port, key_file, exit_output=None))
    try:
        assert isinstance(drv.events.get(timeout=1), DeviceOnline)
        assert bare.next_command()["control_code"] == 1  # the lock on connect
        drv.indicate("amber", "long", "Look at the camera")
        commands = bare.commands_within(0.5)
        assert [c["command"] for c in commands] == [osdp.Command.LED]
        assert commands[0]["on_color"] == osdp.CommandLEDColor.Amber
        drv.unlock("exit")  # no exit output configured: the one lock relay serves both ways
        assert bare.next_command()["output_no"] == 0
        assert drv.online
    finally:
        drv.close()
        bare.teardown()


def test_pd_input_changes_become_events(driver, turnstile):
    next_event(driver, DeviceOnline)
    turnstile.report_inputs(0, 0, 0, 0)
    driver.unlock("exit")
    turnstile.report_inputs(1, 0, 0, 0)
    assert next_event(driver, PassageComplete).direction == Direction.EXIT
    turnstile.report_inputs(0, 0, 1, 0)
    assert next_event(driver, FireAlarm).active is True
    turnstile.report_inputs(0, 1, 1, 1)
    events = [driver.events.get(timeout=2) for _ in range(2)]
    assert {type(e) for e in events} == {DoorForced, Tamper}
    turnstile.report_inputs(0, 0, 0, 0)
    assert next_event(driver, FireAlarm).active is False
    driver.lock()
    turnstile.report_inputs(1, 0, 0, 0)
    assert next_event(driver, PassageComplete).direction is None
    assert driver.events.empty()


def test_card_and_keypad_become_tokens(driver, turnstile):
    next_event(driver, DeviceOnline)
    # 26-bit Wiegand 0b01_0000_0001_0000_0010_0000_0011 sent left-aligned in 4 bytes
    value = 0x1010203
    turnstile.pd.submit_event({"event": osdp.Event.CardRead, "reader_no": 0, "direction": 0,
                               "format": osdp.CardFormat.Wiegand, "length": 26,
                               "data": (value << 6).to_bytes(4, "big")})
    card = next_event(driver, TokenRead)
    assert (card.source, card.text, card.bits) == (TokenSource.CARD, "1010203", 26)

    # OSDP keypad encoding: digits as ASCII, '*' (clear) as 0x7F, '#' (enter) as 0x0D
    for keys in (b"12", b"\x7f98", b"76\r"):
        turnstile.pd.submit_event({"event": osdp.Event.KeyPress, "reader_no": 0, "data": keys})
    pin = next_event(driver, TokenRead)
    assert (pin.source, pin.text) == (TokenSource.KEYPAD, "9876")


def test_stopped_pd_goes_offline_then_back_online(driver, turnstile):
    next_event(driver, DeviceOnline)
    turnstile.stop()
    started = time.monotonic()
    offline = next_event(driver, DeviceOffline, timeout=3)
    assert "silent" in offline.reason
    assert time.monotonic() - started < 2.0
    with pytest.raises(DeviceError):
        driver.unlock("entry")
    turnstile.start()
    next_event(driver, DeviceOnline, timeout=5)
    assert_locks_all(turnstile.commands_within(0.2))
    driver.unlock("entry")
    assert turnstile.next_command()["control_code"] == 5


def test_unacknowledged_unlock_fails_and_ends_locked(driver, turnstile):
    next_event(driver, DeviceOnline)
    turnstile.stop()
    started = time.monotonic()
    with pytest.raises(DeviceError):
        driver.unlock("entry")
    assert time.monotonic() - started <= driver.cfg.command_timeout_s + 0.5
    # The stalled PD still holds the unlock frame in its receive buffer and runs it on
    # waking; the reconnect must leave the barrier locked anyway.
    turnstile.start()
    next_event(driver, DeviceOnline, timeout=5)
    assert_locks_all(turnstile.commands_within(0.5))


def test_late_ack_resets_the_session_and_undoes_the_unlock(turnstile, key_file):
    # The PD carries out the unlock but acknowledges after the driver gave up. The PD is
    # silent for less than offline_after_s, so only the command timeout can notice.
    drv = open_driver(make_config(turnstile.port, key_file, command_timeout_s=0.15,
                                  offline_after_s=1.0))
    try:
        assert_locks_all([turnstile.next_command(), turnstile.next_command()])
        turnstile.stall_next_s = 0.4
        with pytest.raises(DeviceError, match="no ACK"):
            drv.unlock("entry")
        assert "no ACK" in next_event(drv, DeviceOffline).reason
        next_event(drv, DeviceOnline, timeout=5)
        seen = turnstile.commands_within(0.5)
        assert seen[0]["control_code"] == 5  # the PD did run the unlock...
        assert_locks_all(seen)  # ...and the reconnect locked again
    finally:
        drv.close()


def test_refused_command_raises_and_session_recovers(driver, turnstile):
    next_event(driver, DeviceOnline)
    turnstile.refuse.add(osdp.Command.Output)
    with pytest.raises(DeviceError):
        driver.unlock("entry")
    next_event(driver, DeviceOffline)
    with pytest.raises(DeviceError, match="offline"):
        driver.indicate("red")
    turnstile.refuse.clear()
    next_event(driver, DeviceOnline, timeout=5)
    driver.lock()


def test_wrong_key_never_comes_online(tmp_path):
    peer = Turnstile(bytes(16))
    key_file = tmp_path / "cp.scbk"
    write_scbk(key_file, KEY)
    drv = open_driver(make_config(peer.port, key_file, connect_timeout_s=1.0))
    try:
        first = drv.events.get(timeout=1)
        assert isinstance(first, DeviceOffline)
        assert "secure channel" in first.reason
        assert not drv.online
        with pytest.raises(DeviceError):
            drv.unlock("entry")
        assert peer.commands_within(0.3) == []
    finally:
        drv.close()
        peer.teardown()


def test_key_file_must_be_private_and_well_formed(tmp_path):
    path = tmp_path / "k"
    key = write_scbk(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_scbk(path) == key
    with pytest.raises(FileExistsError):
        write_scbk(path)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_scbk(path)
    bad = tmp_path / "bad"
    bad.write_text("not hex")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="hex"):
        load_scbk(bad)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_scbk(tmp_path / "missing")


def test_world_readable_key_file_stops_open(turnstile, key_file):
    key_file.chmod(0o644)
    with pytest.raises(KeyFileError):
        open_driver(make_config(turnstile.port, key_file))


def test_missing_port_is_a_device_error(key_file, tmp_path):
    with pytest.raises(DeviceError, match="cannot open"):
        open_driver(make_config(str(tmp_path / "no-such-tty"), key_file))
