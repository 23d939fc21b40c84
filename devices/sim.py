"""A simulated turnstile for the demo and benchmarks.

It keeps the GateDriver contract (acks, DeviceError on silence, online/offline events, lock
before online) so the daemon cannot tell it from hardware, records every command with a
timestamp so a demo or benchmark can show what the gate did and when, and can be told to
produce the inputs a real lane would: a passage N ms after an unlock, a forced door, a fire
alarm, a card, or a controller that stops answering.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from devices.base import (
    Buzzer,
    Colour,
    DeviceError,
    Direction,
    DoorForced,
    FireAlarm,
    PassageComplete,
    Tamper,
    TokenRead,
    TokenSource,
)
from devices.config import SimConfig
from devices.driver import DriverBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimCommand:
    at: float  # time.monotonic() when the command was acknowledged
    name: str  # "unlock", "lock" or "indicate"
    args: dict[str, Any] = field(default_factory=dict)


class SimDriver(DriverBase):
    CONFIG = SimConfig
    PEER = "simulated controller"

    def __init__(self, cfg: SimConfig | None = None) -> None:
        super().__init__(cfg or SimConfig(), "sim", entry=0, exit_=None)  # one simulated lock
        self.commands: list[SimCommand] = []
        self._lock = threading.Lock()
        self._answering = True
        self._unlocked: Direction | None = None
        self._relock_at: float | None = None  # end of the current timed unlock
        self._timers: list[threading.Timer] = []

    # --- GateDriver ----------------------------------------------------------------------

    def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        if self._answering:
            self._reconnect()
        else:
            self._link.set_offline("simulated controller not answering")

    def _release(self) -> None:
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()

    def _unlock(self, direction: Direction, outputs: list[int], passages: int, hold: bool) -> None:
        self._acknowledge("unlock", direction=direction, passages=passages, hold=hold)
        with self._lock:
            self._unlocked = direction
            self._relock_at = None if hold else (
                time.monotonic() + passages * self.cfg.unlock_pulse_ms / 1000)
        if self.cfg.auto_passage_ms is not None:
            for i in range(passages):
                self.emit_passage(after_ms=self.cfg.auto_passage_ms * (i + 1))

    def _lock_output(self, output: int) -> None:
        self._acknowledge("lock")
        with self._lock:
            self._unlocked, self._relock_at = None, None

    def _indicate(self, colour: Colour, buzzer: Buzzer, text: str | None) -> None:
        self._acknowledge("indicate", colour=colour, buzzer=buzzer, text=text)

    # --- state, for the demo and tests ---------------------------------------------------

    @property
    def unlocked(self) -> Direction | None:
        """The direction currently free, None when locked (timed unlocks expire)."""
        with self._lock:
            if self._relock_at is not None and time.monotonic() >= self._relock_at:
                self._unlocked, self._relock_at = None, None
            return self._unlocked

    def last(self, name: str) -> SimCommand | None:
        with self._lock:
            return next((c for c in reversed(self.commands) if c.name == name), None)

    # --- scripted inputs ------------------------------------------------------------------

    def emit_passage(self, after_ms: float = 0) -> None:
        """Someone walks through `after_ms` from now (in whatever direction is open then)."""
        self._later(after_ms, lambda: PassageComplete(direction=self.unlocked))

    def emit_door_forced(self, after_ms: float = 0) -> None:
        self._later(after_ms, DoorForced)

    def emit_tamper(self, after_ms: float = 0) -> None:
        self._later(after_ms, Tamper)

    def set_fire_alarm(self, active: bool, after_ms: float = 0) -> None:
        self._later(after_ms, lambda: FireAlarm(active=active))

    def present_token(self, text: str, source: TokenSource | str = TokenSource.CARD,
                      after_ms: float = 0) -> None:
        source = TokenSource(source)
        self._later(after_ms, lambda: TokenRead(source=source, text=text))

    def stop_answering(self) -> None:
        """The controller goes silent: the link drops at once (a real driver notices within its
        poll or offline timeout), so later commands are refused as offline."""
        with self._lock:
            self._answering = False
        if self._opened:
            self._link.set_offline("simulated controller stopped answering")

    def resume_answering(self) -> None:
        with self._lock:
            self._answering = True
        if self._opened:
            self._reconnect()

    # --- internals ----------------------------------------------------------------------------

    def _reconnect(self) -> None:
        """Lock before announcing online, as every driver does (see devices.base)."""
        self._lock_all()
        self._link.set_online()

    def _acknowledge(self, name: str, **args: Any) -> None:
        """Record a command the simulated controller confirmed; the online check is the base's."""
        with self._lock:
            answering = self._answering
        if not answering:  # it went silent while this command was on its way
            time.sleep(self.cfg.command_timeout_s)  # what a real driver spends waiting
            raise DeviceError(f"{name}: no answer from simulated controller within "
                              f"{self.cfg.command_timeout_s} s")
        if self.cfg.ack_delay_ms:
            time.sleep(self.cfg.ack_delay_ms / 1000)
        with self._lock:
            self.commands.append(SimCommand(time.monotonic(), name, args))
        log.debug("sim: %s %s", name, args)

    def _later(self, after_ms: float, make_event) -> None:
        def fire() -> None:
            self.events.put(make_event())

        if after_ms <= 0:
            fire()
            return
        timer = threading.Timer(after_ms / 1000, fire)
        timer.daemon = True
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()
