"""A simulated GPIO chip behind the gpiod v2 API, for the machine that has none.

Only the hardware is fake: LineSettings, the line enums and EdgeEvent are the real gpiod
classes, and Chip / request_lines / LineRequest follow the real signatures and kernel rules
the driver relies on (exclusive line requests, EPERM when driving an input, active-low
mapping of values and edges, edge detection per line, freed outputs fall to the board's
pull-down level). Tests drive inputs and read outputs through `SimulatedChip`.
"""
from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

import gpiod as _real_gpiod
from gpiod import EdgeEvent, LineSettings, RequestReleasedError, line
from gpiod.line import Direction, Edge, Value

__all__ = ["Chip", "EdgeEvent", "LineRequest", "LineSettings", "RequestReleasedError",
           "line", "request_lines", "SimulatedChip", "install_chip", "remove_chip"]

_CHIPS: dict[str, SimulatedChip] = {}


class SimulatedChip:
    """The electrical side: physical levels of lines and who holds them."""

    def __init__(self, path: str, num_lines: int) -> None:
        self.path = path
        self.num_lines = num_lines
        self._lock = threading.Condition()
        self._external: dict[int, bool] = {}  # levels driven from outside (sensors)
        self._driven: dict[int, bool] = {}  # levels driven by a requested output
        self._held: dict[int, LineRequest] = {}
        self._seqno = 0

    def drive_input(self, offset: int, high: bool) -> None:
        """Change the physical level a sensor puts on `offset`."""
        with self._lock:
            was = self._external.get(offset, False)
            self._external[offset] = high
            holder = self._held.get(offset)
            if holder is not None and was != high:
                holder._edge(offset, physical_high=high)
            self._lock.notify_all()

    def pulse_input(self, offset: int) -> None:
        self.drive_input(offset, True)
        self.drive_input(offset, False)

    def output_high(self, offset: int) -> bool:
        """Physical level of an output; a line nobody drives sits at the pull-down (low)."""
        with self._lock:
            return self._driven.get(offset, False)

    def holder(self, offset: int) -> LineRequest | None:
        with self._lock:
            return self._held.get(offset)

    def _next_seqno(self) -> int:
        self._seqno += 1
        return self._seqno


def install_chip(path: str, num_lines: int = 32) -> SimulatedChip:
    chip = _CHIPS[path] = SimulatedChip(path, num_lines)
    return chip


def remove_chip(path: str) -> None:
    _CHIPS.pop(path, None)


class LineRequest:
    def __init__(self, chip: SimulatedChip, settings: dict[int, LineSettings],
                 output_values: dict[int, Value]) -> None:
        self._chip = chip
        self._settings = settings
        self._events: list[EdgeEvent] = []
        self._line_seqno = {n: 0 for n in settings}
        self._released = False
        for n, s in settings.items():
            if s.direction == Direction.OUTPUT:
                value = output_values.get(n, s.output_value)
                chip._driven[n] = self._physical(n, value == Value.ACTIVE)

    @property
    def offsets(self) -> list[int]:
        return list(self._settings)

    def _physical(self, n: int, active: bool) -> bool:
        return active != self._settings[n].active_low

    def _check(self, n: int) -> LineSettings:
        if self._released:
            raise RequestReleasedError()
        if n not in self._settings:
            raise ValueError(f"unknown line offset: {n}")
        return self._settings[n]

    def set_value(self, n: int, value: Value) -> None:
        with self._chip._lock:
            if self._check(n).direction != Direction.OUTPUT:
                raise OSError(errno.EPERM, "line is not an output")
            self._chip._driven[n] = self._physical(n, value == Value.ACTIVE)

    def get_value(self, n: int) -> Value:
        with self._chip._lock:
            s = self._check(n)
            if s.direction == Direction.OUTPUT:
                high = self._chip._driven[n]
            else:
                high = self._chip._external.get(n, False)
            return Value.ACTIVE if high != s.active_low else Value.INACTIVE

    def get_values(self, lines: Iterable[int] | None = None) -> list[Value]:
        return [self.get_value(n) for n in (self.offsets if lines is None else lines)]

    def _edge(self, n: int, physical_high: bool) -> None:
        """Called with the chip lock held when a sensor changes the line's level."""
        s = self._settings[n]
        active = physical_high != s.active_low  # the kernel reports edges in logical terms
        wanted = {Edge.BOTH: True, Edge.RISING: active, Edge.FALLING: not active}.get(
            s.edge_detection, False)
        if s.direction != Direction.INPUT or not wanted:
            return
        self._line_seqno[n] += 1
        kind = EdgeEvent.Type.RISING_EDGE if active else EdgeEvent.Type.FALLING_EDGE
        self._events.append(EdgeEvent(kind.value, time.monotonic_ns(), n,
                                      self._chip._next_seqno(), self._line_seqno[n]))

    def wait_edge_events(self, timeout: timedelta | float | None = None) -> bool:
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        with self._chip._lock:
            if self._released:
                raise RequestReleasedError()
            return self._chip._lock.wait_for(lambda: bool(self._events), timeout)

    def read_edge_events(self, max_events: int | None = None) -> list[EdgeEvent]:
        with self._chip._lock:
            if self._released:
                raise RequestReleasedError()
            count = len(self._events) if max_events is None else max_events
            taken, self._events = self._events[:count], self._events[count:]
            return taken

    def release(self) -> None:
        """Like closing the request fd (also what happens when the process dies)."""
        with self._chip._lock:
            if self._released:
                return
            self._released = True
            for n in self._settings:
                self._chip._held.pop(n, None)
                self._chip._driven.pop(n, None)

    def __enter__(self) -> LineRequest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Chip:
    def __init__(self, path: str) -> None:
        if path not in _CHIPS:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        self._chip: SimulatedChip | None = _CHIPS[path]

    def request_lines(self, config: dict, consumer: str | None = None,
                      event_buffer_size: int | None = None,
                      output_values: dict[int, Value] | None = None) -> LineRequest:
        chip = self._chip
        if chip is None:
            raise _real_gpiod.ChipClosedError()
        settings: dict[int, LineSettings] = {}
        for lines, s in config.items():
            for n in (lines if isinstance(lines, tuple) else (lines,)):
                if not isinstance(n, int) or not 0 <= n < chip.num_lines:
                    raise ValueError(f"invalid line offset {n!r}")
                settings[n] = s if s is not None else LineSettings()
        with chip._lock:
            busy = [n for n in settings if n in chip._held]
            if busy:
                raise OSError(errno.EBUSY, f"lines {busy} already requested")
            request = LineRequest(chip, settings, dict(output_values or {}))
            for n in settings:
                chip._held[n] = request
        return request

    def close(self) -> None:
        self._chip = None

    def __enter__(self) -> Chip:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def request_lines(path: str, config: dict, consumer: str | None = None,
                  event_buffer_size: int | None = None,
                  output_values: dict[int, Value] | None = None) -> LineRequest:
    with Chip(path) as chip:
        return chip.request_lines(config=config, consumer=consumer,
                                  event_buffer_size=event_buffer_size,
                                  output_values=output_values)
