"""The one interface between the gate daemon and whatever moves the turnstile.

The daemon's lane state machine must not care whether the barrier is driven over OSDP, a
serial relay board, bare GPIO lines or a simulator, so every driver offers the same four
commands and delivers the same typed events on a queue.

Three rules every driver keeps, because the daemon's safety logic depends on them
(devices.driver.DriverBase holds the parts the drivers share):

* A command returns only after the peer confirmed it. If the peer does not confirm within
  the driver's timeout (after its retries), the command raises `DeviceError`; the daemon
  must then assume the barrier is in an unknown state and go to its safe state.
* Link loss and recovery are events too (`DeviceOffline` / `DeviceOnline`), so the daemon
  learns about a dead turnstile controller even when it is not sending commands. After
  `open()` the first link event on the queue tells whether the peer answered at start-up.
* Whenever the link comes (back) up, the driver locks the barrier before it announces
  `DeviceOnline`: a command that timed out may still have reached a stalled peer, so after
  any outage the daemon starts again from a known, locked barrier (and re-applies whatever
  its state requires, e.g. free passage during a fire alarm).

Drivers do not count passages: `unlock(direction, passages)` opens the barrier for at most
`passages * unlock_pulse_ms` (timed by the peer where the hardware can, so the barrier
relocks even if the daemon dies) and the lane calls `lock()` when it has seen as many
`PassageComplete` events as it allowed. `unlock(..., hold=True)` opens until `lock()` with
no time bound: for the fire-alarm release and staff openings, which must not relock on
their own.
"""
from __future__ import annotations

import enum
import queue
import time
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

# Longest passenger message any driver accepts; OSDP text displays take 32 characters per
# command, and a message that does not fit should fail in testing, not be cut in service.
MAX_TEXT_LEN = 32


class DeviceError(RuntimeError):
    """A command was not confirmed by the device (timeout, refusal, link down)."""


class Direction(enum.StrEnum):
    ENTRY = "entry"
    EXIT = "exit"
    BOTH = "both"  # free passage either way: emergency release, staff opening


class Colour(enum.StrEnum):
    GREEN = "green"
    RED = "red"
    AMBER = "amber"
    OFF = "off"


class Buzzer(enum.StrEnum):
    NONE = "none"
    SHORT = "short"
    LONG = "long"
    ALARM = "alarm"  # sounds until the next indicate() call


class TokenSource(enum.StrEnum):
    CARD = "card"
    BARCODE = "barcode"
    KEYPAD = "keypad"


@dataclass(frozen=True, kw_only=True)
class DeviceEvent:
    """Base of every event a driver puts on its queue.

    `at` is a time.monotonic() stamp taken when the driver saw the input, so the lane can
    measure passage times without trusting queue latency.
    """

    kind: ClassVar[str] = "device_event"
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, kw_only=True)
class PassageComplete(DeviceEvent):
    """Someone went through. `direction` is the unlock in force at the time, None if the
    barrier was locked (the lane treats that as an anomaly)."""

    kind: ClassVar[str] = "passage_complete"
    direction: Direction | None = None  # BOTH when the barrier was free both ways


@dataclass(frozen=True, kw_only=True)
class DoorForced(DeviceEvent):
    kind: ClassVar[str] = "door_forced"


@dataclass(frozen=True, kw_only=True)
class FireAlarm(DeviceEvent):
    """Fire alarm input changed; while active the lane must keep the barrier free."""

    kind: ClassVar[str] = "fire_alarm"
    active: bool


@dataclass(frozen=True, kw_only=True)
class Tamper(DeviceEvent):
    kind: ClassVar[str] = "tamper"


@dataclass(frozen=True, kw_only=True)
class TokenRead(DeviceEvent):
    """A credential presented at a reader: card number (hex), barcode text or keypad PIN.

    `bits` is the raw bit count for card formats (e.g. 26 for Wiegand-26), else None.
    """

    kind: ClassVar[str] = "token_read"
    source: TokenSource
    text: str
    reader: int = 0
    bits: int | None = None


@dataclass(frozen=True, kw_only=True)
class DeviceOffline(DeviceEvent):
    kind: ClassVar[str] = "device_offline"
    reason: str


@dataclass(frozen=True, kw_only=True)
class DeviceOnline(DeviceEvent):
    kind: ClassVar[str] = "device_online"


@runtime_checkable
class GateDriver(Protocol):
    """What the daemon may call. Methods are called from the daemon's main loop; device
    I/O that needs polling runs in the driver's own thread(s)."""

    events: queue.Queue[DeviceEvent]

    @property
    def online(self) -> bool:
        """Whether the peer answered recently (False until the first answer)."""

    def open(self) -> None:
        """Open the link and start I/O threads; returns once the peer's link state is known
        (or the driver's connect timeout passed) and that state is on the queue."""

    def close(self) -> None:
        """Lock if possible, stop threads, release the port. Safe to call twice."""

    def unlock(self, direction: Direction | str, passages: int = 1, *, hold: bool = False) -> None:
        """Release the barrier in `direction` for `passages` passages (bounded in time),
        or with `hold` until lock()."""

    def lock(self) -> None:
        """Lock the barrier in both directions."""

    def indicate(
        self, colour: Colour | str, buzzer: Buzzer | str = Buzzer.NONE, text: str | None = None
    ) -> None:
        """Set the lane lamp, sound the buzzer, show a short message (None clears it)."""


def check_unlock_args(direction: Direction | str, passages: int) -> Direction:
    """Shared argument check so every driver rejects the same bad calls the same way."""
    if isinstance(passages, bool) or not isinstance(passages, int) or passages < 1:
        raise ValueError(f"passages must be a positive integer, got {passages!r}")
    return Direction(direction)


def check_indicate_args(
    colour: Colour | str, buzzer: Buzzer | str, text: str | None
) -> tuple[Colour, Buzzer, str | None]:
    if text is not None:
        if not isinstance(text, str):
            raise ValueError(f"text must be a string or None, got {type(text).__name__}")
        if len(text) > MAX_TEXT_LEN:
            raise ValueError(
                f"text is {len(text)} characters, at most {MAX_TEXT_LEN} fit: {text!r}")
        if any(not ch.isprintable() for ch in text):
            raise ValueError(f"text contains control characters: {text!r}")
    return Colour(colour), Buzzer(buzzer), text
