"""Wire format of the edgegate serial relay board (host = master, board = slave).

Frame (both directions)::

    STX  LEN  SEQ  CMD  PAYLOAD[LEN]  CRC_HI  CRC_LO  ETX
    0x02 1 B  1 B  1 B  0..32 bytes   CRC-16/CCITT-FALSE over LEN..PAYLOAD   0x03

* LEN counts payload bytes only, so a receiver knows where the frame must end and can
  check ETX there; STX/ETX bytes inside payload or CRC need no escaping. A receiver that
  finds a bad length, CRC or ETX drops one byte and hunts for the next STX (resync after
  noise or a truncated frame).
* SEQ is chosen by the host and echoed in the reply, so a late reply to an earlier attempt
  is never taken for the answer to the current one.

Host commands and the board's replies:

=========== ==== ============================== ============================================
command     CMD  payload                        reply payload (CMD = ACK 0x06)
=========== ==== ============================== ============================================
PING        0x50 -                              version, relay count, input count
SET_RELAY   0x53 relay, on (0/1), pulse_ms u16  -
                 (big-endian; on with pulse>0:
                 board switches off by itself)
READ_INPUTS 0x49 -                              levels bitmask (bit n = input n), then one
                                                rising-edge counter per input (mod 256)
=========== ==== ============================== ============================================

A board that cannot carry out a well-formed command answers NAK (CMD 0x15) with one reason
byte (see NakReason). A frame with a bad CRC gets no answer at all: its SEQ cannot be
trusted, so the host times out and retries.

Why counters and not "changed since last read" flags: reading must be idempotent. If a
READ_INPUTS reply is lost and the host asks again, counters give the same answer and no
passage is lost or counted twice; a short pulse between two polls is still seen. Why the
board times pulses: the barrier relocks on time even if the host dies mid-passage.
"""
from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass

STX, ETX = 0x02, 0x03
MAX_PAYLOAD = 32
OVERHEAD = 7  # STX LEN SEQ CMD CRC CRC ETX
INPUT_COUNT = 8


class Cmd(enum.IntEnum):
    PING = 0x50
    SET_RELAY = 0x53
    READ_INPUTS = 0x49
    ACK = 0x06
    NAK = 0x15


class NakReason(enum.IntEnum):
    BAD_PAYLOAD = 1
    UNKNOWN_COMMAND = 2
    NO_SUCH_RELAY = 3


@dataclass(frozen=True)
class Frame:
    seq: int
    cmd: int
    payload: bytes = b""


def crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def encode(frame: Frame) -> bytes:
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([len(frame.payload), frame.seq & 0xFF, frame.cmd & 0xFF]) + frame.payload
    return bytes([STX]) + body + struct.pack(">H", crc16(body)) + bytes([ETX])


class FrameDecoder:
    """Incremental decoder: feed it whatever the port returned, get whole valid frames."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.dropped_bytes = 0  # bytes discarded while resynchronising (noise counter)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            start = self._buf.find(STX)
            if start < 0:
                self.dropped_bytes += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.dropped_bytes += start
                del self._buf[:start]
            if len(self._buf) < 2:
                return frames
            length = self._buf[1]
            if length > MAX_PAYLOAD:
                self._drop_one()
                continue
            total = OVERHEAD + length
            if len(self._buf) < total:
                return frames
            body = bytes(self._buf[1:4 + length])
            crc = struct.unpack(">H", self._buf[4 + length:6 + length])[0]
            if self._buf[total - 1] != ETX or crc != crc16(body):
                self._drop_one()
                continue
            frames.append(Frame(seq=body[1], cmd=body[2], payload=body[3:]))
            del self._buf[:total]

    def _drop_one(self) -> None:
        self.dropped_bytes += 1
        del self._buf[:1]


def set_relay_payload(relay: int, on: bool, pulse_ms: int = 0) -> bytes:
    return struct.pack(">BBH", relay, int(on), pulse_ms)


@dataclass(frozen=True)
class InputReport:
    levels: int  # bitmask
    counters: tuple[int, ...]  # rising edges per input, mod 256

    def encode(self) -> bytes:
        return bytes([self.levels & 0xFF, *self.counters])

    @classmethod
    def decode(cls, payload: bytes) -> InputReport:
        if len(payload) != 1 + INPUT_COUNT:
            raise ValueError(f"input report must be {1 + INPUT_COUNT} bytes, got {len(payload)}")
        return cls(levels=payload[0], counters=tuple(payload[1:]))

    def level(self, input_no: int) -> bool:
        return bool(self.levels >> input_no & 1)
