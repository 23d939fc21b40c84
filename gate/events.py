"""What happens to a lane: the inputs of `gate.lane.step`.

Every event carries its time `t` (seconds on the daemon's monotonic clock) because the lane
never reads a clock: timeouts are decided by the times of the events it is given, so a test
or a replay of the audit log sees exactly what the gate saw. Frames arrive as
`gate.observation.FrameObservation`; the daemon sends `Tick` regularly (e.g. every 100 ms)
so timeouts fire when nothing else happens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from gate.actions import Direction
from gate.observation import FrameObservation, ListType


@dataclass(frozen=True)
class _Timed:
    t: float

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.t)):
            raise ValueError(f"{type(self).__name__}.t is {self.t}; event times must be finite")


@dataclass(frozen=True)
class Tick(_Timed):
    pass


@dataclass(frozen=True)
class PassageComplete(_Timed):
    """The passage sensor saw a person all the way through."""

    direction: Direction | None = None  # the unlock in force, as the driver reports it

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction is not None:
            object.__setattr__(self, "direction", Direction(self.direction))


@dataclass(frozen=True)
class DoorForced(_Timed):
    detail: str = ""


@dataclass(frozen=True)
class Tamper(_Timed):
    detail: str = ""


@dataclass(frozen=True)
class FireAlarm(_Timed):
    """The fire-alarm input changed level (True = alarm active)."""

    active: bool


@dataclass(frozen=True)
class TokenRead(_Timed):
    """A boarding pass or ID document was read. The daemon resolves it against the watchlist:
    `subject_id`/`list_type` are None when it names nobody currently enrolled."""

    kind: str  # e.g. "boarding_pass", "id_number" (the raw token never enters the lane)
    subject_id: str | None = None
    list_type: ListType | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.subject_id is None) != (self.list_type is None):
            raise ValueError("a resolved token needs both subject_id and list_type (or neither)")
        if self.list_type is not None:
            object.__setattr__(self, "list_type", ListType(self.list_type))


@dataclass(frozen=True)
class DeviceFault(_Timed):
    device: str  # e.g. "barrier", "camera", "reader", as named by the driver
    detail: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.device:
            raise ValueError("a device fault must name the device")


@dataclass(frozen=True)
class DeviceRestored(_Timed):
    device: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.device:
            raise ValueError("a device restoration must name the device")


@dataclass(frozen=True)
class AuditFailed(_Timed):
    """An audit write raised (disk full, I/O error): nothing may open until writes work again."""

    detail: str = ""


@dataclass(frozen=True)
class AuditRestored(_Timed):
    """An audit write succeeded again after `AuditFailed`."""


# Checked before the command reaches the lane, so its audit record always fits (gate.audit
# MAX_BODY_BYTES is 8 KiB; a manual action's record holds both strings twice).
MAX_OPERATOR_LEN = 128
MAX_REASON_LEN = 500


class StaffAction(StrEnum):
    OPEN_ONCE = "open_once"  # one passage, then locked again
    UNLOCK = "unlock"  # held open until LOCK
    LOCK = "lock"
    OUT_OF_SERVICE = "out_of_service"
    IN_SERVICE = "in_service"
    RESET = "reset"  # clears a latched ALARM, and EMERGENCY once the fire input is off


@dataclass(frozen=True)
class StaffCommand(_Timed):
    """A manual command (gatectl). Who and why are mandatory: both go into the audit record."""

    action: StaffAction
    operator_id: str
    reason: str
    direction: Direction | None = None  # for OPEN_ONCE/UNLOCK; default: the lane's direction

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "action", StaffAction(self.action))
        if not self.operator_id.strip():
            raise ValueError(f"staff command {self.action.value!r} needs an operator id")
        if len(self.operator_id) > MAX_OPERATOR_LEN or len(self.reason) > MAX_REASON_LEN:
            raise ValueError(f"staff command {self.action.value!r}: operator id at most {MAX_OPERATOR_LEN} and reason "
                             f"at most {MAX_REASON_LEN} characters (they go into the audit record)")
        if not self.reason.strip():
            raise ValueError(f"staff command {self.action.value!r} by {self.operator_id!r} needs a reason")
        if self.direction is not None:
            object.__setattr__(self, "direction", Direction(self.direction))


Event = (FrameObservation | Tick | PassageComplete | DoorForced | Tamper | FireAlarm | TokenRead | DeviceFault
         | DeviceRestored | AuditFailed | AuditRestored | StaffCommand)
