"""Driver for relays and sensors wired straight to a Linux GPIO chip (libgpiod v2 API).

Fail-secure by construction: an energised lock relay means unlocked, and the lines are held
only by this process's line request. They are requested as outputs already at their
inactive value (no unlock glitch at start-up), and when the process dies the kernel frees
the request, so the relay driver must be wired so that a freed line (high impedance, pulled
down) de-energises the relay. Nothing here exports lines or hands them to a helper process
that could outlive the daemon.

There is no peer to time pulses, so the driver's thread times them: the lock line drops
after `passages * unlock_pulse_ms`, the buzzer after its beep. Inputs use kernel edge events
(timestamped on the monotonic clock, like DeviceEvent.at), so a pulse shorter than our
reaction time is still seen.

The gpiod module is injected (`gpiod_module`) so tests can hand in a simulated chip that
follows the same API; the daemon uses the real `gpiod` package.
"""
from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from datetime import timedelta
from types import ModuleType

from devices.base import (
    DriverBase,
    lock_each,
    Buzzer,
    Colour,
    DeviceError,
    DeviceEvent,
    Direction,
    check_indicate_args,
    check_unlock_args,
)
from devices.config import GpioConfig
from devices.inputs import InputDecoder
from devices.link import LinkState

log = logging.getLogger(__name__)

CONSUMER = "edgegate"
MAX_WAIT_S = 0.1  # how long the thread sleeps in the kernel before checking its timers
BUZZER_PULSE_S = {Buzzer.SHORT: 0.2, Buzzer.LONG: 1.0}
LAMPS = {  # colour -> (green on, red on)
    Colour.GREEN: (True, False),
    Colour.RED: (False, True),
    Colour.AMBER: (True, True),
    Colour.OFF: (False, False),
}


class GpioDriver(DriverBase):
    def __init__(self, cfg: GpioConfig, gpiod_module: ModuleType | None = None) -> None:
        self.cfg = cfg
        self._gpiod = gpiod_module or importlib.import_module("gpiod")
        self.events: queue.Queue[DeviceEvent] = queue.Queue()
        self._link = LinkState(self.events, f"gpio:{cfg.chip}")
        self._inputs = InputDecoder(cfg.inputs)
        self._request = None
        # What a lost chip or request raises: kernel errors, or use after release.
        self._gpio_errors = (OSError, self._gpiod.RequestReleasedError)
        self._lock = threading.Lock()  # guards the request and the timers
        self._drop_at: dict[int, float] = {}  # output line -> when to de-energise it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _outputs(self) -> list[int]:
        c = self.cfg
        return [n for n in (c.entry_line, c.exit_line, c.green_line, c.red_line, c.buzzer_line)
                if n is not None]

    def open(self) -> None:
        if self._thread is not None:
            return
        line = self._gpiod.line
        config = {tuple(self._outputs()): self._gpiod.LineSettings(
            direction=line.Direction.OUTPUT, output_value=line.Value.INACTIVE,
            drive=line.Drive.PUSH_PULL, active_low=self.cfg.outputs_active_low)}
        if self._inputs.inputs:
            config[tuple(self._inputs.inputs)] = self._gpiod.LineSettings(
                direction=line.Direction.INPUT, edge_detection=line.Edge.BOTH,
                active_low=self.cfg.inputs_active_low,
                debounce_period=timedelta(milliseconds=self.cfg.input_debounce_ms),
                event_clock=line.Clock.MONOTONIC)
        try:
            self._request = self._gpiod.request_lines(self.cfg.chip, config=config,
                                                      consumer=CONSUMER)
            levels = {n: self._request.get_value(n) == line.Value.ACTIVE
                      for n in self._inputs.inputs}
        except OSError as exc:
            raise DeviceError(f"cannot request GPIO lines on {self.cfg.chip}: {exc}") from exc
        # Outputs came up inactive: the barrier is locked before we announce anything.
        self._link.set_online()
        for event in self._inputs.baseline(levels):
            self.events.put(event)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpio-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self._lock:
            try:
                for n in self._outputs():
                    self._request.set_value(n, self._gpiod.line.Value.INACTIVE)
            except self._gpio_errors as exc:
                log.error("GPIO: could not de-energise outputs while closing: %s", exc)
            self._request.release()
            self._request = None
            self._drop_at.clear()
        self._link.reset()

    # --- commands --------------------------------------------------------------------

    def unlock(self, direction: Direction | str, passages: int = 1, *, hold: bool = False) -> None:
        direction = check_unlock_args(direction, passages)
        hold_s = None if hold else passages * self.cfg.unlock_pulse_ms / 1000
        for n in self._lines_for(direction):
            self._set(n, True, hold_s=hold_s)
        self._inputs.set_direction(direction)

    def lock(self) -> None:
        try:
            lock_each(self._lines_for(Direction.BOTH), lambda n: self._set(n, False))
        finally:
            self._inputs.set_direction(None)

    def indicate(self, colour: Colour | str, buzzer: Buzzer | str = Buzzer.NONE,
                 text: str | None = None) -> None:
        colour, buzzer, text = check_indicate_args(colour, buzzer, text)
        green, red = LAMPS[colour]
        if self.cfg.green_line is not None:
            self._set(self.cfg.green_line, green)
        if self.cfg.red_line is not None:
            self._set(self.cfg.red_line, red)
        if self.cfg.buzzer_line is not None:
            self._set(self.cfg.buzzer_line, buzzer != Buzzer.NONE,
                      hold_s=BUZZER_PULSE_S.get(buzzer))
        if text:
            log.debug("GPIO gate has no display; message %r not shown", text)

    def _lines_for(self, direction: Direction) -> list[int]:
        entry = self.cfg.entry_line
        exit_ = entry if self.cfg.exit_line is None else self.cfg.exit_line
        return sorted({Direction.ENTRY: {entry}, Direction.EXIT: {exit_},
                       Direction.BOTH: {entry, exit_}}[direction])

    def _set(self, n: int, active: bool, hold_s: float | None = None) -> None:
        """Drive one output; with `hold_s`, the driver's thread drops it again after that
        (without, an active output stays active until set otherwise)."""
        value = self._gpiod.line.Value
        with self._lock:
            if not self.online or self._request is None:
                raise DeviceError(f"GPIO line {n}: chip {self.cfg.chip} not available")
            try:
                self._request.set_value(n, value.ACTIVE if active else value.INACTIVE)
            except self._gpio_errors as exc:
                self._link.set_offline(f"GPIO line {n}: {exc}")
                raise DeviceError(f"GPIO line {n}: {exc}") from exc
            if active and hold_s is not None:
                self._drop_at[n] = time.monotonic() + hold_s
            else:
                self._drop_at.pop(n, None)

    # --- event thread ------------------------------------------------------------------

    def _run(self) -> None:
        rising = self._gpiod.EdgeEvent.Type.RISING_EDGE
        while not self._stop.is_set():
            try:
                if self._inputs.inputs:
                    if self._request.wait_edge_events(self._wait_s()):
                        for edge in self._request.read_edge_events():
                            for event in self._inputs.level(edge.line_offset,
                                                            edge.event_type == rising,
                                                            at=edge.timestamp_ns / 1e9):
                                self.events.put(event)
                else:
                    self._stop.wait(self._wait_s())
                self._drop_expired()
            except self._gpio_errors as exc:
                self._link.set_offline(f"GPIO chip {self.cfg.chip} failed: {exc}")
                return

    def _wait_s(self) -> float:
        with self._lock:
            next_drop = min(self._drop_at.values(), default=None)
        if next_drop is None:
            return MAX_WAIT_S
        return min(MAX_WAIT_S, max(0.0, next_drop - time.monotonic()))

    def _drop_expired(self) -> None:
        now = time.monotonic()
        inactive = self._gpiod.line.Value.INACTIVE
        with self._lock:
            for n, when in list(self._drop_at.items()):
                if now >= when:
                    self._request.set_value(n, inactive)
                    del self._drop_at[n]
