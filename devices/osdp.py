"""OSDP driver: the gate is the control panel (CP), the turnstile controller a PD.

Built on libosdp's Python binding (`osdp` / `osdp_sys`) over a pyserial port, always with
the secure channel enforced (SCBK from a 0600 key file). The driver owns one I/O thread
that pumps libosdp, turns PD reports into events and watches the link.

Three things libosdp does on its own that a gate cannot live with, and what we do instead:

* It notices a dead PD only after 8 retries (~8 s) and then waits 300 s before trying
  again. We watch the serial line ourselves: the CP polls every 50 ms and a live PD answers
  every poll, so `offline_after_s` of silence means the PD is gone. While offline we start
  a fresh libosdp session every `reconnect_interval_s` until the PD answers again.
* A NAK takes the PD offline for 300 s, and a PD NAKs commands for hardware it does not
  have. We check the capabilities the PD reported before sending LED, buzzer, text or
  output commands, and treat a refused command as a lost session (reconnect).
* `submit_command` only queues. We wait for libosdp's completion callback (the PD's ACK).
  A command without ACK in time ends the session: the CP context goes, with its queue, so
  the command cannot go out late, and the link is reported offline. A frame already on the
  wire cannot be recalled, though: a stalled PD may still run a timed-out unlock when it
  wakes up, which is why every (re)connect locks all outputs before DeviceOnline.

Output commands use OSDP timed pulses (control code 5), so the PD relocks on its own after
`passages * unlock_pulse_ms` even if the gate dies; `hold=True` sets the output permanently
on (code 2) until lock(). libosdp's binding passes the pulse as
one byte of 100 ms units, so pulses are capped at 25.5 s.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import osdp
import osdp_sys
import serial

from devices.base import Buzzer, Colour, DeviceError, DeviceEvent, Direction, TokenRead, TokenSource
from devices.config import OsdpConfig
from devices.driver import DriverBase
from devices.keyfile import load_scbk

log = logging.getLogger(__name__)

PD_INDEX = 0  # one PD per CP context: the lane's turnstile controller
MAX_TIMER_UNITS = 255  # the binding truncates timer_count to one byte (100 ms units)
IO_PERIOD_S = 0.01

# OSDP output control codes (osdp_OUT)
OUT_PERMANENT_OFF_ABORT_TIMED = 1
OUT_PERMANENT_ON_ABORT_TIMED = 2
OUT_TEMPORARY_ON = 5
# OSDP reader LED / buzzer control codes
LED_SET_PERMANENT = 1
BUZZER_OFF = 1
BUZZER_DEFAULT_TONE = 2
TEXT_PERMANENT_NO_WRAP = 1

LED_COLOURS = {
    Colour.GREEN: osdp.CommandLEDColor.Green,
    Colour.RED: osdp.CommandLEDColor.Red,
    Colour.AMBER: osdp.CommandLEDColor.Amber,
    Colour.OFF: osdp.CommandLEDColor.Black,
}
# on time, off time (100 ms units), repetitions (0 = until told otherwise)
BUZZER_PATTERNS = {
    Buzzer.SHORT: (2, 0, 1),
    Buzzer.LONG: (10, 0, 1),
    Buzzer.ALARM: (5, 5, 0),
}
KEY_ENTER, KEY_CLEAR = 0x0D, 0x7F  # '#' and '*' on OSDP keypads


class SerialChannel(osdp.Channel):
    """The byte pipe libosdp talks through; also the line-silence watchdog's clock."""

    def __init__(self, port: serial.Serial) -> None:
        super().__init__()
        self._port = port
        self.last_rx = 0.0
        self._failing = False  # log a broken port once, not on every 10 ms refresh

    def read(self, max_bytes: int) -> bytes:
        try:
            data = self._port.read(max_bytes)
        except serial.SerialException as exc:  # an exception must not escape into libosdp
            self._failed("read", exc)
            return b""
        self._failing = False
        if data:
            self.last_rx = time.monotonic()
        return data

    def write(self, buf: bytes) -> int:
        try:
            return self._port.write(buf)
        except serial.SerialException as exc:
            self._failed("write", exc)
            return 0

    def flush(self) -> None:
        try:
            self._port.reset_input_buffer()
        except serial.SerialException as exc:
            self._failed("flush", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        log.log(logging.DEBUG if self._failing else logging.ERROR,
                "OSDP serial %s failed: %s", what, exc)
        self._failing = True


@dataclass
class _PendingCommand:
    command: dict
    done: threading.Event = field(default_factory=threading.Event)
    status: int | None = None


class OsdpDriver(DriverBase):
    CONFIG = OsdpConfig
    PEER = "PD"

    def __init__(self, cfg: OsdpConfig) -> None:
        super().__init__(cfg, f"osdp:{cfg.port}", entry=cfg.entry_output, exit_=cfg.exit_output, inputs=cfg.inputs)
        self._port: serial.Serial | None = None
        self._channel: SerialChannel | None = None
        self._scbk = b""
        self._cp: Any = None  # osdp_sys.ControlPanel of the current session (libosdp is untyped)
        self._cp_lock = threading.Lock()  # libosdp is not thread-safe
        self._command_lock = threading.Lock()  # one command in flight, so completions match
        self._pending: _PendingCommand | None = None
        self._inbox: list[dict] = []  # PD events collected by the libosdp callback
        self._shown: dict[str, object] = {}  # indicator state the PD confirmed this session
        self._keys = ""
        self._last_key_at = 0.0
        self._opened_at = 0.0
        self._session_started = 0.0
        self._next_connect_at = 0.0

    # --- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        if self._opened:
            return
        self._scbk = load_scbk(self.cfg.scbk_file)
        try:
            self._port = serial.Serial(self.cfg.port, self.cfg.baudrate, timeout=0,
                                       write_timeout=0.2)
        except serial.SerialException as exc:
            raise DeviceError(f"cannot open OSDP port {self.cfg.port}: {exc}") from exc
        self._channel = SerialChannel(self._port)
        osdp_sys.set_loglevel(osdp.LogLevel.Warning)
        self._opened_at = time.monotonic()
        try:
            with self._cp_lock:
                self._start_session()
        except Exception:
            self._port.close()
            self._port = None
            raise
        self._opened = True
        self._start_thread(self._run, "osdp-cp")
        self._link.wait_announced(self.cfg.connect_timeout_s + 1.0)

    def _release(self) -> None:
        with self._cp_lock:
            self._cp = None
        if self._port is not None:
            self._port.close()
            self._port = None

    # --- commands --------------------------------------------------------------------

    def _unlock(self, direction: Direction, outputs: list[int], passages: int, hold: bool) -> None:
        self._require_outputs(max(outputs))
        if hold:
            code, units = OUT_PERMANENT_ON_ABORT_TIMED, 0
        else:
            code, units = OUT_TEMPORARY_ON, math.ceil(passages * self.cfg.unlock_pulse_ms / 100)
            if units > MAX_TIMER_UNITS:
                log.warning("OSDP: unlock pulse %d ms capped at %d ms", units * 100,
                            MAX_TIMER_UNITS * 100)
                units = MAX_TIMER_UNITS
        for output in outputs:
            self._command({"command": osdp.Command.Output, "output_no": output,
                           "control_code": code, "timer_count": units}, f"unlock {direction}")

    def _lock_all(self) -> None:
        """Every lock output permanently off, cancelling running pulses (all tried even if one
        fails), once the PD has said it has them."""
        self._require_outputs(max(self._outputs_for(Direction.BOTH)))
        super()._lock_all()

    def _lock_output(self, output: int) -> None:
        self._command({"command": osdp.Command.Output, "output_no": output,
                       "control_code": OUT_PERMANENT_OFF_ABORT_TIMED, "timer_count": 0}, f"lock output {output}")

    def _indicate(self, colour: Colour, buzzer: Buzzer, text: str | None) -> None:
        if self._has(osdp.Capability.LEDControl, self.cfg.led_number + 1):
            self._indicate_led(colour)
        if self._has(osdp.Capability.AudibleControl):
            self._indicate_buzzer(buzzer)
        if self._has(osdp.Capability.TextOutput):
            self._indicate_text(text)

    def _indicate_led(self, colour: Colour) -> None:
        if self._shown.get("led") == colour:
            return
        self._command({"command": osdp.Command.LED, "reader": self.cfg.reader,
                       "led_number": self.cfg.led_number, "control_code": LED_SET_PERMANENT,
                       "on_color": LED_COLOURS[colour], "off_color": osdp.CommandLEDColor.Black,
                       "on_count": 1, "off_count": 0, "temporary": False}, f"LED {colour}")
        self._shown["led"] = colour

    def _indicate_buzzer(self, buzzer: Buzzer) -> None:
        if buzzer == Buzzer.NONE:
            if self._shown.get("buzzer", Buzzer.NONE) == Buzzer.NONE:
                return
            on, off, reps, code = 0, 0, 0, BUZZER_OFF
        else:
            (on, off, reps), code = BUZZER_PATTERNS[buzzer], BUZZER_DEFAULT_TONE
        self._command({"command": osdp.Command.Buzzer, "reader": self.cfg.reader,
                       "control_code": code, "on_count": on, "off_count": off,
                       "rep_count": reps}, f"buzzer {buzzer}")
        # Only the alarm keeps sounding; short and long beeps end by themselves.
        self._shown["buzzer"] = buzzer if buzzer == Buzzer.ALARM else Buzzer.NONE

    def _indicate_text(self, text: str | None) -> None:
        # OSDP displays are ASCII: fold accents ("à" -> "a") rather than show garbage.
        shown = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode()
        if self._shown.get("text") == shown:
            return
        self._command({"command": osdp.Command.Text, "reader": self.cfg.reader,
                       "control_code": TEXT_PERMANENT_NO_WRAP, "temp_time": 0,
                       "offset_row": 1, "offset_col": 1, "data": shown}, "text")
        self._shown["text"] = shown

    def _require_outputs(self, output: int) -> None:
        if not self._has(osdp.Capability.OutputControl, output + 1):
            raise DeviceError(f"PD does not report output {output}; check entry/exit_output")

    def _has(self, capability: int, items: int = 1) -> bool:
        with self._cp_lock:
            if self._cp is None:
                return False
            compliance, num_items = self._cp.check_capability(PD_INDEX, capability)
        return compliance > 0 and num_items >= items

    def _command(self, command: dict, what: str) -> None:
        """Send one command and wait for the PD's ACK (see module docstring)."""
        with self._command_lock:
            pending = _PendingCommand(command)
            with self._cp_lock:
                self._pending = pending
                submitted = self._cp is not None and self._cp.submit_command(PD_INDEX, command)
            if not submitted:
                self._pending = None
                raise DeviceError(f"{what}: libosdp did not accept the command (PD not online)")
            if not self._wait_for(pending):
                # Drop the whole session: its queue (so the command cannot go out late) and
                # whatever state the PD is in. The reconnect relocks before DeviceOnline.
                error = f"{what}: no ACK from PD within {self.cfg.command_timeout_s} s"
                with self._cp_lock:
                    self._pending = None
                    self._start_session()
                self._link.set_offline(error)
                raise DeviceError(error)
            if pending.status != osdp.CompletionStatus.Ok:
                raise DeviceError(f"{what}: PD did not complete the command "
                                  f"(libosdp completion status {pending.status})")

    def _wait_for(self, pending: _PendingCommand) -> bool:
        if threading.current_thread() is not self._thread:
            return pending.done.wait(self.cfg.command_timeout_s)
        # The I/O thread itself is sending (relock on connect): nobody else pumps libosdp.
        deadline = time.monotonic() + self.cfg.command_timeout_s
        while not pending.done.is_set() and time.monotonic() < deadline:
            with self._cp_lock:
                self._cp.refresh()
            time.sleep(IO_PERIOD_S)
        return pending.done.is_set()

    # --- libosdp callbacks (run inside refresh(), with _cp_lock held: no libosdp calls) -

    def _on_event(self, pd_index: int, event: dict) -> int:
        self._inbox.append(event)
        return 0

    def _on_completion(self, pd_index: int, command: dict, status: int) -> None:
        pending = self._pending
        if pending is not None and command.get("command") == pending.command["command"]:
            self._pending = None
            pending.status = status
            pending.done.set()

    # --- I/O thread ------------------------------------------------------------------

    def _start_session(self) -> None:
        """A fresh CP context: handshake, capabilities and secure channel from scratch.
        Caller holds _cp_lock."""
        self._cp = None  # tear the old context down first; it aborts its queued command
        assert self._channel is not None, "a session needs the open port"
        self._channel.flush()
        info = osdp.PDInfo(self.cfg.address, self._channel, scbk=self._scbk,
                           flags=[osdp.LibFlag.EnforceSecure], name="turnstile").get()
        self._cp = osdp_sys.ControlPanel([info])
        self._cp.set_event_callback(self._on_event)
        self._cp.set_command_completion_callback(self._on_completion)
        self._shown.clear()
        self._session_started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cp_lock:
                self._cp.refresh()
                inbox, self._inbox = self._inbox, []
            for event in inbox:
                for device_event in self._translate(event):
                    self.events.put(device_event)
            self._watch_link()
            self._expire_keys()
            self._stop.wait(IO_PERIOD_S)

    def _watch_link(self) -> None:
        now = time.monotonic()
        with self._cp_lock:
            session_up = bool(self._cp.status() & 1 and self._cp.sc_status() & 1)
        silent_for = now - (self._channel.last_rx if self._channel is not None else 0.0)
        if session_up and silent_for < self.cfg.offline_after_s:
            if not self._link.online and now >= self._next_connect_at:
                self._connect(now)
            return
        if self._link.online:
            self._link.set_offline(
                f"PD silent for {silent_for:.1f} s" if session_up else
                "OSDP session lost (PD refused a command or secure channel failed)")
        elif not self._link.known and now - self._opened_at >= self.cfg.connect_timeout_s:
            self._link.set_offline(f"PD at address {self.cfg.address} did not establish a secure "
                                   f"channel within {self.cfg.connect_timeout_s} s "
                                   "(check wiring, address and SCBK)")
        if now - self._session_started >= self.cfg.reconnect_interval_s:
            with self._cp_lock:
                self._start_session()

    def _connect(self, now: float) -> None:
        """Lock before announcing the PD online. A command that timed out may still have
        reached a stalled PD and run late; whatever happened while the link was down, the
        daemon starts again from a locked barrier."""
        try:
            self._lock_all()
        except DeviceError as exc:
            self._link.set_offline(f"PD connected but the barrier could not be locked: {exc}")
            self._next_connect_at = now + self.cfg.reconnect_interval_s
            return
        self._link.set_online()

    def _translate(self, event: dict) -> list[DeviceEvent]:
        kind = event.get("event")
        if kind == osdp.Event.Status and event.get("type") == osdp.StatusReportType.Input:
            report = event["report"]
            return self._inputs.levels({n: bool(report[n]) for n in self._inputs.inputs
                                        if n < len(report)})
        if kind == osdp.Event.CardRead:
            return [self._card_token(event)]
        if kind == osdp.Event.KeyPress:
            return self._keypad_tokens(event)
        return []

    @staticmethod
    def _card_token(event: dict) -> TokenRead:
        data: bytes = event["data"]
        bits = event.get("length")
        if event["format"] != osdp.CardFormat.ASCII and bits:
            # Raw card bits arrive left-aligned in whole bytes; the number is the top `bits`.
            value = int.from_bytes(data, "big") >> (len(data) * 8 - bits)
            text = f"{value:0{(bits + 3) // 4}X}"
        else:
            text, bits = data.decode("ascii", "replace"), None
        return TokenRead(source=TokenSource.CARD, text=text, reader=event["reader_no"], bits=bits)

    def _keypad_tokens(self, event: dict) -> list[DeviceEvent]:
        """Keys accumulate into one PIN ended by '#'; '*' starts over."""
        tokens: list[DeviceEvent] = []
        self._last_key_at = time.monotonic()
        for key in event["data"]:
            if key == KEY_ENTER:
                if self._keys:
                    tokens.append(TokenRead(source=TokenSource.KEYPAD, text=self._keys,
                                            reader=event["reader_no"]))
                self._keys = ""
            elif key == KEY_CLEAR:
                self._keys = ""
            elif 0x30 <= key <= 0x39:
                self._keys += chr(key)
        return tokens

    def _expire_keys(self) -> None:
        if self._keys and time.monotonic() - self._last_key_at > self.cfg.keypad_timeout_s:
            log.info("OSDP: dropping unfinished keypad entry after %s s", self.cfg.keypad_timeout_s)
            self._keys = ""
