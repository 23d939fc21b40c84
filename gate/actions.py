"""What the lane asks the outside world to do: the only way the pure core has effects.

The daemon executes a step's actions in order. Audit records come first in every batch, so a
door never opens without its record: when an `Audit` fails, the daemon passes the rest of the
batch through `after_audit_failure` (which drops the openings the record was meant to cover),
runs what is left, then feeds `AuditFailed` back into the lane.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

# The driver interface's own vocabulary, so an action maps onto a GateDriver call unchanged.
from devices.base import Buzzer, Colour, Direction

__all__ = ["Action", "Alert", "Audit", "Buzzer", "Colour", "Direction", "Indicate", "Lock", "RecordPassage",
           "Unlock", "after_audit_failure"]


@dataclass(frozen=True)
class Audit:
    """One audit body for `gate.audit.AuditLog.append` (JSON-safe, has an "event" key)."""

    record: Mapping[str, Any]


@dataclass(frozen=True)
class Unlock:
    """`GateDriver.unlock(direction, passages=1, hold=hold)`."""

    direction: Direction
    hold: bool = False  # open until Lock (staff hold-open, emergency), not bounded by the peer
    # True only for the emergency release: fire-safety law requires it to happen even when the
    # audit log cannot be written, so it survives `after_audit_failure`.
    fail_safe: bool = False


@dataclass(frozen=True)
class Lock:
    pass


@dataclass(frozen=True)
class Indicate:
    """`GateDriver.indicate(colour, buzzer, text)`."""

    colour: Colour
    buzzer: Buzzer
    text: str  # for the passenger's display, at most devices.base.MAX_TEXT_LEN characters


@dataclass(frozen=True)
class Alert:
    """For staff (gatectl, central): something needs a person's attention."""

    kind: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordPassage:
    """Remember that `subject_id` passed (anti-passback, `gate.passback`); survives a restart."""

    subject_id: str


Action = Audit | Unlock | Lock | Indicate | Alert | RecordPassage


def after_audit_failure(remaining: Sequence[Action]) -> tuple[Action, ...]:
    """The actions still to run after an audit write failed: everything but the openings that
    would have gone unrecorded. Locks, indications, alerts and later audit attempts still run;
    a fail-safe (emergency) unlock still runs."""
    return tuple(a for a in remaining if not (isinstance(a, Unlock) and not a.fail_safe))
