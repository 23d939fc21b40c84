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
import threading
import time
from datetime import timedelta
from types import ModuleType
from typing import Any

from devices.base import Buzzer, Colour, DeviceError, Direction
from devices.config import GpioConfig
from devices.driver import LAMPS, DriverBase

log = logging.getLogger(__name__)

CONSUMER = "edgegate"
MAX_WAIT_S = 0.1  # how long the thread sleeps in the kernel before checking its timers
BUZZER_PULSE_S = {Buzzer.SHORT: 0.2, Buzzer.LONG: 1.0}


class GpioDriver(DriverBase):
    CONFIG = GpioConfig
    PEER = "GPIO chip"

    def __init__(self, cfg: GpioConfig, gpiod_module: ModuleType | None = None) -> None:
        super().__init__(cfg, f"gpio:{cfg.chip}", entry=cfg.entry_line, exit_=cfg.exit_line, inputs=cfg.inputs)
        self._gpiod = gpiod_module or importlib.import_module("gpiod")
        self._request: Any = None  # gpiod.LineRequest while open (gpiod is untyped)
        # What a lost chip or request raises: kernel errors, or use after release.
        self._gpio_errors = (OSError, self._gpiod.RequestReleasedError)
        self._lock = threading.Lock()  # guards the request and the timers
        self._drop_at: dict[int, float] = {}  # output line -> when to de-energise it

    def _outputs(self) -> list[int]:
        c = self.cfg
        return [n for n in (c.entry_line, c.exit_line, c.green_line, c.red_line, c.buzzer_line)
                if n is not None]

    def open(self) -> None:
        if self._opened:
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
        self._opened = True
        self._link.set_online()
        for event in self._inputs.baseline(levels):
            self.events.put(event)
        self._start_thread(self._run, "gpio-events")

    def _release(self) -> None:
        """Every output (lamps and buzzer too) de-energised, then the request given back."""
        with self._lock:
            try:
                for n in self._outputs():
                    self._request.set_value(n, self._gpiod.line.Value.INACTIVE)
            except self._gpio_errors as exc:
                log.error("GPIO: could not de-energise outputs while closing: %s", exc)
            self._request.release()
            self._request = None
            self._drop_at.clear()

    # --- commands --------------------------------------------------------------------

    def _unlock(self, direction: Direction, outputs: list[int], passages: int, hold: bool) -> None:
        hold_s = None if hold else passages * self.cfg.unlock_pulse_ms / 1000
        for n in outputs:
            self._set(n, True, hold_s=hold_s)

    def _lock_output(self, n: int) -> None:
        self._set(n, False)

    def _indicate(self, colour: Colour, buzzer: Buzzer, text: str | None) -> None:
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
