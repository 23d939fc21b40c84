"""What every turnstile driver shares, so the safety rules of devices.base hold the same way
for OSDP, the relay board, GPIO and the simulator.

DriverBase owns the preamble (config, event queue, link state, input decoder), the
direction -> lock outputs map, the argument and online checks of the three commands, and the
order of close(): lock while the driver's I/O thread still runs (OSDP needs it to carry the
command and its ACK; for the others it only watches the link), then stop the thread, then
release the port or lines. A driver fills in how one output is locked or unlocked and how the
lamp is shown. Every driver refuses a command the same way when it is not open or its peer is
offline: DeviceError "<command>: <peer> offline" (or "... driver is not open"), before anything
is sent.

Drivers register by their config's TYPE (subclassing registers), and `devices.make_driver`
imports the module of that name (devices/<type>.py) on first use, so a gate without GPIO never
imports gpiod and adding a driver type is one module, not another branch.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from devices.base import (
    Buzzer,
    Colour,
    DeviceError,
    DeviceEvent,
    Direction,
    check_indicate_args,
    check_unlock_args,
)
from devices.config import InputMap
from devices.inputs import InputDecoder
from devices.link import LinkState

log = logging.getLogger(__name__)

# colour -> (green lamp on, red lamp on), for drivers with two lamp outputs (relay board, GPIO)
LAMPS = {
    Colour.GREEN: (True, False),
    Colour.RED: (False, True),
    Colour.AMBER: (True, True),
    Colour.OFF: (False, False),
}

DRIVERS: dict[str, Callable[..., DriverBase]] = {}  # config TYPE -> driver class (built from the config)


def lock_each(outputs, lock_one) -> None:
    """Lock every output even if one fails, so a partial failure still locks what it can;
    then report all failures together as one DeviceError."""
    errors = []
    for output in outputs:
        try:
            lock_one(output)
        except DeviceError as exc:
            errors.append(str(exc))
    if errors:
        raise DeviceError("; ".join(errors))


class DriverBase:
    """`with driver:` opens the link and always closes it (which locks the barrier when the peer
    still answers); see the module docstring for what subclasses provide."""

    CONFIG: ClassVar[Any]  # the config dataclass this driver runs; its TYPE keys the registry
    PEER: ClassVar[str]  # how messages name the other end ("PD", "relay board", ...)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        DRIVERS[cls.CONFIG.TYPE] = cls

    def __init__(self, cfg: Any, link_name: str, *, entry: int, exit_: int | None,
                 inputs: InputMap | None = None) -> None:
        self.cfg = cfg
        self.events: queue.Queue[DeviceEvent] = queue.Queue()
        self._link = LinkState(self.events, link_name)
        self._inputs = InputDecoder(inputs if inputs is not None else InputMap())
        exit_ = entry if exit_ is None else exit_  # None: one lock output for both directions
        self._outputs_by_direction = {Direction.ENTRY: [entry], Direction.EXIT: [exit_],
                              Direction.BOTH: sorted({entry, exit_})}
        self._opened = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def online(self) -> bool:
        return self._link.online

    # --- the three commands -------------------------------------------------------------

    def unlock(self, direction: Direction | str, passages: int = 1, *, hold: bool = False) -> None:
        direction = check_unlock_args(direction, passages)
        self._ensure_online(f"unlock {direction}")
        self._unlock(direction, self._outputs_for(direction), passages, hold)
        self._inputs.set_direction(direction)

    def lock(self) -> None:
        self._ensure_online("lock")
        self._lock_all()

    def indicate(self, colour: Colour | str, buzzer: Buzzer | str = Buzzer.NONE,
                 text: str | None = None) -> None:
        colour, buzzer, text = check_indicate_args(colour, buzzer, text)
        self._ensure_online("indicate")
        self._indicate(colour, buzzer, text)

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Lock if the peer still answers, stop the I/O thread, release. Safe to call twice."""
        if not self._opened:
            return
        if self.online:
            try:
                self._lock_all()
            except DeviceError as exc:
                log.error("%s: could not lock while closing: %s", self.PEER, exc)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._release()
        self._opened = False
        self._link.reset()

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- for subclasses ------------------------------------------------------------------

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def _outputs_for(self, direction: Direction) -> list[int]:
        return list(self._outputs_by_direction[direction])

    def _ensure_online(self, what: str) -> None:
        if not self._opened:
            raise DeviceError(f"{what}: {self.PEER} driver is not open")
        if not self.online:
            raise DeviceError(f"{what}: {self.PEER} offline")

    def _lock_all(self) -> None:
        """Every lock output locked (all tried even if one fails); no online check, so the
        (re)connect can lock before it announces the peer online."""
        try:
            lock_each(self._outputs_for(Direction.BOTH), self._lock_output)
        finally:
            self._inputs.set_direction(None)

    def _unlock(self, direction: Direction, outputs: list[int], passages: int, hold: bool) -> None:
        raise NotImplementedError

    def _lock_output(self, output: int) -> None:
        raise NotImplementedError

    def _indicate(self, colour: Colour, buzzer: Buzzer, text: str | None) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Give back the port or lines (the thread has stopped)."""
