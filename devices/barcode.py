"""A boarding-pass / ID barcode scanner on a serial port (USB-CDC or RS-232).

Such scanners type one code per line. The reader thread turns each complete line into a
`TokenRead` on its own queue, which the daemon drains beside the turnstile driver's; a line
longer than `max_len` or holding control characters is dropped and logged (a scanner never
produces one, line noise does), and a port that disappears is reopened with back-off.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

import serial

from devices.base import DeviceEvent, TokenRead, TokenSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScannerConfig:
    port: str = field(metadata={"help": "serial port of the barcode scanner, e.g. /dev/ttyACM1"})
    baudrate: int = field(default=9600, metadata={"min": 1200})
    max_len: int = field(default=512, metadata={"help": "longest accepted code (characters)", "min": 8})
    reopen_max_s: float = field(default=10.0, metadata={"min": 0.1})


class BarcodeScanner:
    def __init__(self, cfg: ScannerConfig, events: "queue.Queue[DeviceEvent] | None" = None):
        self.cfg = cfg
        self.events: queue.Queue[DeviceEvent] = events if events is not None else queue.Queue()
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="barcode", daemon=True)

    def open(self) -> "BarcodeScanner":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _accept(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        if len(text) > self.cfg.max_len or not text.isprintable():
            self.dropped += 1
            log.warning("barcode scanner: dropped a malformed line (%d characters)", len(text))
            return
        self.events.put(TokenRead(source=TokenSource.BARCODE, text=text))

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                with serial.Serial(self.cfg.port, self.cfg.baudrate, timeout=0.2) as port:
                    backoff = 0.2
                    buf = b""
                    while not self._stop.is_set():
                        chunk = port.read(256)
                        if not chunk:
                            continue
                        buf += chunk.replace(b"\r", b"\n")
                        *lines, buf = buf.split(b"\n")
                        for line in lines:
                            self._accept(line)
                        if len(buf) > 4 * self.cfg.max_len:  # no line end in sight: noise
                            self.dropped += 1
                            buf = b""
            except (serial.SerialException, OSError) as e:
                log.warning("barcode scanner %s: %s; reopening in %.1f s", self.cfg.port, e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reopen_max_s)
