"""A relay board on a pseudo-terminal, speaking devices.relay_protocol.

Used by the tests and the demo in place of the real board: the driver opens `emulator.port`
exactly as it would open /dev/ttyUSB0. Faults can be injected on the board's replies
(silence, corrupted CRC, line noise, truncated frames) to exercise the driver's recovery.

Run `python -m devices.relay_emulator` to get a board for a demo; it prints the port and
takes commands on stdin: `in N 0|1`, `pulse N`, `fault KIND [COUNT]`, `relays`, `quit`.
"""
from __future__ import annotations

import argparse
import enum
import logging
import os
import select
import struct
import sys
import threading
import time
import tty
from dataclasses import dataclass

from devices.relay_protocol import (
    INPUT_COUNT,
    Cmd,
    Frame,
    FrameDecoder,
    InputReport,
    NakReason,
    encode,
)

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
NOISE = bytes([0x02, 0x05, 0x17, 0xFF, 0x02, 0x00, 0x99])  # includes false frame starts


class Fault(enum.StrEnum):
    NONE = "none"
    SILENT = "silent"  # no reply at all
    BAD_CRC = "bad_crc"  # reply with one CRC byte flipped
    NOISE = "noise"  # garbage on the line before an intact reply
    TRUNCATED = "truncated"  # the first half of the reply only
    WRONG_SEQ = "wrong_seq"  # an intact reply carrying another request's SEQ (a late reply)


@dataclass(frozen=True)
class ReceivedCommand:
    at: float
    cmd: int
    payload: bytes


class RelayBoardEmulator:
    def __init__(self, relays: int = 8) -> None:
        self.relay_count = relays
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._lock = threading.Lock()
        self._relays = [False] * relays
        self._pulse_ends: dict[int, float] = {}
        self._levels = 0
        self._counters = [0] * INPUT_COUNT
        self._fault = Fault.NONE
        self._fault_left: int | None = None
        self.received: list[ReceivedCommand] = []
        self.relay_log: list[tuple[float, int, bool]] = []  # (time, relay, on) transitions
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- test / demo controls ----------------------------------------------------------

    def start(self) -> RelayBoardEmulator:
        self._thread = threading.Thread(target=self._run, name="relay-board", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        os.close(self._master)
        os.close(self._slave)

    def __enter__(self) -> RelayBoardEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_fault(self, fault: Fault | str, replies: int | None = None) -> None:
        """Spoil the next `replies` replies (all of them if None) in the given way."""
        with self._lock:
            self._fault, self._fault_left = Fault(fault), replies

    def set_input(self, input_no: int, active: bool) -> None:
        with self._lock:
            was = bool(self._levels >> input_no & 1)
            if active and not was:
                self._counters[input_no] = (self._counters[input_no] + 1) & 0xFF
            if active:
                self._levels |= 1 << input_no
            else:
                self._levels &= ~(1 << input_no)

    def pulse_input(self, input_no: int) -> None:
        """A short pulse, over before the host can poll: only the counter remembers it."""
        self.set_input(input_no, True)
        self.set_input(input_no, False)

    def relay_on(self, relay: int) -> bool:
        with self._lock:
            self._expire_pulses(time.monotonic())
            return self._relays[relay]

    def commands(self, cmd: Cmd) -> list[ReceivedCommand]:
        with self._lock:
            return [c for c in self.received if c.cmd == cmd]

    # --- board ---------------------------------------------------------------------------

    def _run(self) -> None:
        decoder = FrameDecoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.005)
            with self._lock:
                self._expire_pulses(time.monotonic())
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except (BlockingIOError, OSError):
                continue
            for frame in decoder.feed(data):
                self._send(self._handle(frame))

    def _handle(self, frame: Frame) -> Frame:
        now = time.monotonic()
        with self._lock:
            self.received.append(ReceivedCommand(now, frame.cmd, frame.payload))
            if frame.cmd == Cmd.PING and not frame.payload:
                return Frame(frame.seq, Cmd.ACK, bytes([PROTOCOL_VERSION, self.relay_count,
                                                        INPUT_COUNT]))
            if frame.cmd == Cmd.READ_INPUTS and not frame.payload:
                report = InputReport(self._levels, tuple(self._counters))
                return Frame(frame.seq, Cmd.ACK, report.encode())
            if frame.cmd == Cmd.SET_RELAY:
                if len(frame.payload) != 4 or frame.payload[1] > 1:
                    return Frame(frame.seq, Cmd.NAK, bytes([NakReason.BAD_PAYLOAD]))
                relay, on, pulse_ms = struct.unpack(">BBH", frame.payload)
                if relay >= self.relay_count:
                    return Frame(frame.seq, Cmd.NAK, bytes([NakReason.NO_SUCH_RELAY]))
                self._switch(now, relay, bool(on))
                self._pulse_ends.pop(relay, None)
                if on and pulse_ms:
                    self._pulse_ends[relay] = now + pulse_ms / 1000
                return Frame(frame.seq, Cmd.ACK)
            if frame.cmd in (Cmd.PING, Cmd.READ_INPUTS):
                return Frame(frame.seq, Cmd.NAK, bytes([NakReason.BAD_PAYLOAD]))
            return Frame(frame.seq, Cmd.NAK, bytes([NakReason.UNKNOWN_COMMAND]))

    def _switch(self, now: float, relay: int, on: bool) -> None:
        if self._relays[relay] != on:
            self._relays[relay] = on
            self.relay_log.append((now, relay, on))

    def _expire_pulses(self, now: float) -> None:
        for relay, ends in list(self._pulse_ends.items()):
            if now >= ends:
                del self._pulse_ends[relay]
                self._switch(ends, relay, False)

    def _send(self, reply: Frame) -> None:
        with self._lock:
            fault = self._fault
            if self._fault_left is not None:
                self._fault_left -= 1
                if self._fault_left <= 0:
                    self._fault, self._fault_left = Fault.NONE, None
        if fault == Fault.SILENT:
            return
        if fault == Fault.WRONG_SEQ:
            reply = Frame((reply.seq - 1) & 0xFF, reply.cmd, reply.payload)
        wire = encode(reply)
        if fault == Fault.BAD_CRC:
            wire = wire[:-3] + bytes([wire[-3] ^ 0x5A]) + wire[-2:]
        elif fault == Fault.NOISE:
            wire = NOISE + wire
        elif fault == Fault.TRUNCATED:
            wire = wire[: len(wire) // 2]
        try:
            os.write(self._master, wire)
        except BlockingIOError:
            log.warning("relay emulator: host not reading, reply dropped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relays", type=int, default=8)
    args = parser.parse_args(argv)
    with RelayBoardEmulator(relays=args.relays) as board:
        print(board.port, flush=True)
        for line in sys.stdin:
            words = line.split()
            try:
                if not words:
                    continue
                if words[0] == "quit":
                    break
                if words[0] == "in":
                    board.set_input(int(words[1]), words[2] == "1")
                elif words[0] == "pulse":
                    board.pulse_input(int(words[1]))
                elif words[0] == "fault":
                    board.set_fault(words[1], int(words[2]) if len(words) > 2 else None)
                elif words[0] == "relays":
                    print(" ".join(str(int(board.relay_on(r))) for r in range(board.relay_count)),
                          flush=True)
                else:
                    print(f"unknown command: {words[0]}", file=sys.stderr)
            except (IndexError, ValueError) as exc:
                print(f"bad command {line.strip()!r}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
