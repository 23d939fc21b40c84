"""Driver for a serial relay board (lock relays, lamp and buzzer relays, 8 inputs).

Speaks the framed protocol documented in devices.relay_protocol:
STX | LEN | SEQ | CMD | PAYLOAD | CRC-16 | ETX, with the reply echoing SEQ. Every command
waits `reply_timeout_s` for its reply and is retried `retries` times on silence or a
damaged reply; a NAK is an answer (not retried), because repeating a command the board
understood and refused would not change its mind.

The board only speaks when spoken to, so a poller thread asks for the inputs every
`poll_interval_s`; that poll doubles as the link check (a poll that fails all its retries
takes the link offline, the next one that succeeds brings it back). Commands and polls share
the half-duplex line under one lock.

The board has no display: indicate() text is accepted and ignored.
"""
from __future__ import annotations

import logging
import threading
import time

import serial

from devices.base import Buzzer, Colour, DeviceError, Direction
from devices.config import RelayConfig
from devices.driver import LAMPS, DriverBase
from devices.relay_protocol import (
    Cmd,
    Frame,
    FrameDecoder,
    InputReport,
    NakReason,
    encode,
    set_relay_payload,
)

log = logging.getLogger(__name__)

READ_SLICE_S = 0.005
BUZZER_PULSE_MS = {Buzzer.SHORT: 200, Buzzer.LONG: 1000}


def _nak_reason(payload: bytes) -> str:
    try:
        return NakReason(payload[0]).name
    except (IndexError, ValueError):
        return f"reason {payload.hex() or 'missing'}"


class RelayDriver(DriverBase):
    CONFIG = RelayConfig
    PEER = "relay board"

    def __init__(self, cfg: RelayConfig) -> None:
        super().__init__(cfg, f"relay:{cfg.port}", entry=cfg.entry_relay, exit_=cfg.exit_relay, inputs=cfg.inputs)
        self._port: serial.Serial | None = None
        self._bus = threading.Lock()  # one transaction at a time on the line
        self._seq = 0
        self._counters: tuple[int, ...] | None = None  # last READ_INPUTS counters
        self._alarm_sounding = False
        self._opened_at = 0.0

    def open(self) -> None:
        if self._opened:
            return
        try:
            self._port = serial.Serial(self.cfg.port, self.cfg.baudrate, timeout=READ_SLICE_S,
                                       write_timeout=self.cfg.reply_timeout_s)
        except serial.SerialException as exc:
            raise DeviceError(f"cannot open relay board port {self.cfg.port}: {exc}") from exc
        self._opened_at = time.monotonic()
        self._opened = True
        self._start_thread(self._run, "relay-poll")
        self._link.wait_announced(self.cfg.connect_timeout_s + 1.0)

    def _release(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None
        self._counters = None

    # --- commands --------------------------------------------------------------------

    def _unlock(self, direction: Direction, outputs: list[int], passages: int, hold: bool) -> None:
        pulse_ms = 0 if hold else min(passages * self.cfg.unlock_pulse_ms, 0xFFFF)
        for relay in outputs:
            self._set_relay(relay, True, pulse_ms)

    def _lock_output(self, relay: int) -> None:
        self._set_relay(relay, False)

    def _indicate(self, colour: Colour, buzzer: Buzzer, text: str | None) -> None:
        green, red = LAMPS[colour]
        if self.cfg.green_relay is not None:
            self._set_relay(self.cfg.green_relay, green)
        if self.cfg.red_relay is not None:
            self._set_relay(self.cfg.red_relay, red)
        if self.cfg.buzzer_relay is not None:
            if buzzer == Buzzer.ALARM:
                self._set_relay(self.cfg.buzzer_relay, True)
            elif buzzer in BUZZER_PULSE_MS:
                self._set_relay(self.cfg.buzzer_relay, True, BUZZER_PULSE_MS[buzzer])
            elif self._alarm_sounding:
                self._set_relay(self.cfg.buzzer_relay, False)
            self._alarm_sounding = buzzer == Buzzer.ALARM
        if text:
            log.debug("relay board has no display; message %r not shown", text)

    def _set_relay(self, relay: int, on: bool, pulse_ms: int = 0) -> None:
        self._transact(Cmd.SET_RELAY, set_relay_payload(relay, on, pulse_ms))

    # --- the line ----------------------------------------------------------------------

    def _transact(self, cmd: Cmd, payload: bytes = b"") -> bytes:
        """One command, retried on silence or a damaged reply; returns the ACK payload."""
        attempts = 1 + self.cfg.retries
        problem = ""
        with self._bus:
            for _ in range(attempts):
                self._seq = (self._seq + 1) & 0xFF
                reply = self._exchange(Frame(self._seq, cmd, payload))
                if reply is None:
                    problem = f"no valid reply within {self.cfg.reply_timeout_s} s"
                elif reply.cmd == Cmd.ACK:
                    return reply.payload
                elif reply.cmd == Cmd.NAK:
                    raise DeviceError(f"relay board refused {cmd.name} {payload.hex()}: "
                                      f"{_nak_reason(reply.payload)}")
                else:
                    problem = f"unexpected reply 0x{reply.cmd:02x}"
                log.debug("relay board %s: %s, retrying", cmd.name, problem)
        error = f"relay board {cmd.name}: {problem} ({attempts} attempts)"
        if self._link.known:  # before the first announcement, _run decides (connect timeout)
            self._link.set_offline(error)
        raise DeviceError(error)

    def _exchange(self, frame: Frame) -> Frame | None:
        port = self._port
        if port is None:  # closed under a late command
            return None
        try:
            port.reset_input_buffer()  # drop leftovers of an earlier, spoilt reply
            port.write(encode(frame))
        except serial.SerialException as exc:
            log.debug("relay board write failed: %s", exc)  # reported as the link going down
            return None
        decoder = FrameDecoder()
        deadline = time.monotonic() + self.cfg.reply_timeout_s
        while time.monotonic() < deadline:
            try:
                data = port.read(max(1, port.in_waiting))
            except serial.SerialException as exc:
                log.debug("relay board read failed: %s", exc)
                return None
            for reply in decoder.feed(data):
                if reply.seq == frame.seq:
                    return reply
        return None

    # --- poller ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.online:
                    self._poll_inputs()
                else:
                    self._connect()
            except DeviceError as exc:
                if not self._link.known and time.monotonic() - self._opened_at >= \
                        self.cfg.connect_timeout_s:
                    self._link.set_offline(str(exc))
            self._stop.wait(self.cfg.poll_interval_s)

    def _connect(self) -> None:
        """Lock before announcing the board online (see devices.base): whatever happened
        while the link was down, the daemon starts again from a locked barrier."""
        self._transact(Cmd.PING)
        self._lock_all()
        self._alarm_sounding = False
        report = InputReport.decode(self._transact(Cmd.READ_INPUTS))
        self._counters = report.counters
        self._link.set_online()
        # Edges while nobody watched are unknowable; only the fire alarm level carries over.
        for event in self._inputs.baseline({n: report.level(n) for n in self._inputs.inputs}):
            self.events.put(event)

    def _poll_inputs(self) -> None:
        try:
            report = InputReport.decode(self._transact(Cmd.READ_INPUTS))
        except ValueError as exc:
            log.warning("relay board sent a malformed input report: %s", exc)
            return
        before = self._counters or report.counters  # set by _connect before the first poll
        for n in self._inputs.inputs:
            rises = (report.counters[n] - before[n]) & 0xFF
            for event in self._inputs.rises(n, rises, report.level(n)):
                self.events.put(event)
        self._counters = report.counters
