"""Turning raw input changes into the daemon's events, the same way for every driver.

Passage, forced-door and tamper signals matter on their rising edge (one event per pulse);
the fire alarm matters as a level (on and off). Drivers feed edges or levels in whatever
form their peer reports them and get typed events back.
"""
from __future__ import annotations

import dataclasses
import threading

from devices.base import DeviceEvent, Direction, DoorForced, FireAlarm, PassageComplete, Tamper
from devices.config import InputMap


class InputDecoder:
    def __init__(self, inputs: InputMap) -> None:
        self._signal_of = inputs.named()  # input number -> signal name
        self._levels: dict[int, bool] = {n: False for n in self._signal_of}
        self._lock = threading.Lock()
        self._direction: Direction | None = None

    @property
    def inputs(self) -> list[int]:
        return sorted(self._signal_of)

    def set_direction(self, direction: Direction | None) -> None:
        """Record the unlock in force, stamped onto the passages seen while it lasts."""
        with self._lock:
            self._direction = direction

    def level(self, input_no: int, active: bool, at: float | None = None) -> list[DeviceEvent]:
        """A new level for one input; events only for actual changes. `at` is when the
        peer saw the change (time.monotonic() clock), if it says."""
        with self._lock:
            if input_no not in self._signal_of or self._levels[input_no] == active:
                return []
            self._levels[input_no] = active
            events = self._events_for(self._signal_of[input_no], active, 1)
        return [dataclasses.replace(e, at=at) for e in events] if at is not None else events

    def levels(self, report: dict[int, bool]) -> list[DeviceEvent]:
        events: list[DeviceEvent] = []
        for input_no, active in sorted(report.items()):
            events += self.level(input_no, active)
        return events

    def baseline(self, report: dict[int, bool]) -> list[DeviceEvent]:
        """Levels found on (re)connect. Edge signals are recorded silently, because their
        edges were not watched; the fire alarm reports a change, because it matters now."""
        events: list[DeviceEvent] = []
        with self._lock:
            for input_no, active in sorted(report.items()):
                signal = self._signal_of.get(input_no)
                if signal == "fire_alarm" and self._levels[input_no] != active:
                    events.append(FireAlarm(active=active))
                if signal is not None:
                    self._levels[input_no] = active
        return events

    def rises(self, input_no: int, count: int, active_now: bool) -> list[DeviceEvent]:
        """`count` rising edges happened since the last report (a peer that counts pulses
        between polls), and the input is now at `active_now`."""
        with self._lock:
            signal = self._signal_of.get(input_no)
            if signal is None:
                return []
            was = self._levels[input_no]
            self._levels[input_no] = active_now
            if signal == "fire_alarm":
                # A level signal: report where it ended up, plus a blip if it pulsed.
                if count and not was and not active_now:
                    return [FireAlarm(active=True), FireAlarm(active=False)]
                return [] if was == active_now else [FireAlarm(active=active_now)]
            return self._events_for(signal, True, count)

    def _events_for(self, signal: str, active: bool, count: int) -> list[DeviceEvent]:
        if signal == "fire_alarm":
            return [FireAlarm(active=active)]
        if not active:
            return []
        if signal == "passage":
            return [PassageComplete(direction=self._direction) for _ in range(count)]
        if signal == "door_forced":
            return [DoorForced() for _ in range(count)]
        return [Tamper() for _ in range(count)]
