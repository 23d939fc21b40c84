"""What the lane asks the outside world to do: the only way the pure core has effects.

The daemon executes a step's actions in order. Audit records come first in every batch, so a
door never opens without its record: when an `Audit` fails, the daemon passes the rest of the
batch through `after_audit_failure` (which drops the openings the record was meant to cover),
runs what is left, then feeds `AuditFailed` back into the lane.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping, Sequence


class Direction(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"
    BOTH = "both"


class Colour(StrEnum):
    GREEN = "green"
    RED = "red"
    AMBER = "amber"
    OFF = "off"


class Buzzer(StrEnum):
    NONE = "none"
    SHORT = "short"  # accepted
    LONG = "long"  # refused / see staff
    ALARM = "alarm"  # until the indicator changes


@dataclass(frozen=True)
class Audit:
    """One audit body for `gate.audit.AuditLog.append` (JSON-safe, has an "event" key)."""

    record: Mapping[str, Any]


@dataclass(frozen=True)
class Unlock:
    direction: Direction
    # True only for the emergency release: fire-safety law requires it to happen even when the
    # audit log cannot be written, so it survives `after_audit_failure`.
    fail_safe: bool = False


@dataclass(frozen=True)
class Lock:
    pass


@dataclass(frozen=True)
class Indicate:
    colour: Colour
    buzzer: Buzzer
    text: str  # short, for the passenger's display


@dataclass(frozen=True)
class Alert:
    """For staff (gatectl, central): something needs a person's attention."""

    kind: str
    details: Mapping[str, Any] = field(default_factory=dict)


Action = Audit | Unlock | Lock | Indicate | Alert


def after_audit_failure(remaining: Sequence[Action]) -> tuple[Action, ...]:
    """The actions still to run after an audit write failed: everything but the openings that
    would have gone unrecorded. Locks, indications, alerts and later audit attempts still run;
    a fail-safe (emergency) unlock still runs."""
    return tuple(a for a in remaining if not (isinstance(a, Unlock) and not a.fail_safe))
