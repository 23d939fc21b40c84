"""Running a lane step's actions: the one place where the pure core's decisions touch the world.

The daemon, the tests and the benchmarks all run actions through `ActionExecutor`, so the rule
"no opening without its record" is proved on the code that runs the gate, not on a copy.

The rules, in the order of a step's actions:
- `Audit`: the record goes to the audit log with the lane's stamp (gate id, PAD status); the
  written row is returned to the caller, so nothing has to re-read the log's tail to find it.
- When an audit write fails, the rest of the batch goes through `after_audit_failure` (the
  openings the record was meant to cover are dropped); later records are still attempted,
  since a failure may be transient. `AuditFailed` is handed back as a follow-up, fed to the
  lane after the batch so a batch is never interleaved with another step's actions.
- A device command that fails gives a `DeviceFault` follow-up for the barrier.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import devices
from gate.actions import Action, Alert, Audit, Indicate, Lock, RecordPassage, Unlock, after_audit_failure
from gate.audit import AuditRow, AuditWriteError
from gate.events import AuditFailed, AuditRestored, DeviceFault, Event

log = logging.getLogger(__name__)

BARRIER = "barrier"  # the fault name of the turnstile driver


@dataclass
class Executed:
    """What running one batch did: the rows written (in order), the unlocks commanded, the
    alerts raised, and the events the lane must be told about next."""

    rows: list[AuditRow] = field(default_factory=list)
    unlocks: list[Unlock] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    followups: list[Event] = field(default_factory=list)

    def row_for(self, event: str) -> AuditRow | None:
        """The last written record of `event` (e.g. "decision") in this batch."""
        return next((r for r in reversed(self.rows) if r.body.get("event") == event), None)


class ActionExecutor:
    """Runs actions against an audit log (`append(body) -> AuditRow`) and a GateDriver.

    `stamp` fields are added to every record that does not set them (gate id, PAD status).
    `on_written` is called after each durable record (the sync agent's upload nudge),
    `on_unlock` after each acknowledged unlock (metrics), `on_passage` for each `RecordPassage`
    (the anti-passback store; a failure there is logged, the passage has already happened).
    """

    def __init__(self, audit, driver, *, clock: Callable[[], float], stamp: Mapping[str, Any] | None = None,
                 on_written: Callable[[AuditRow], None] | None = None,
                 on_unlock: Callable[[float, Unlock], None] | None = None,
                 on_passage: Callable[[str], None] | None = None) -> None:
        self.audit = audit
        self.driver = driver
        self.clock = clock
        self.stamp = dict(stamp or {})
        self.on_written = on_written
        self.on_unlock = on_unlock
        self.on_passage = on_passage

    def run(self, actions: Iterable[Action], *, audit_failing: bool = False) -> Executed:
        """Run `actions` in order. `audit_failing`: the lane currently holds the audit-log
        fault, so the first record that is written again yields `AuditRestored`."""
        acts = list(actions)
        out = Executed()
        i = 0
        while i < len(acts):
            a = acts[i]
            t = self.clock()
            if isinstance(a, Audit):
                body = {**self.stamp, **a.record} if self.stamp else dict(a.record)
                try:
                    row = self.audit.append(body)
                except (ValueError, TypeError) as e:  # a record the log refuses: a bug, never a crash
                    log.error("audit record refused, no opening without its record: %s", e)
                    acts = acts[: i + 1] + list(after_audit_failure(acts[i + 1:]))
                    self._note_refused(body, e, t, out)
                except AuditWriteError as e:
                    log.error("audit write failed, no opening without its record: %s", e)
                    acts = acts[: i + 1] + list(after_audit_failure(acts[i + 1:]))
                    if not any(isinstance(f, AuditFailed) for f in out.followups):
                        out.followups.append(AuditFailed(t, str(e)))
                else:
                    out.rows.append(row)
                    if audit_failing:
                        out.followups.append(AuditRestored(t))
                        audit_failing = False
                    if self.on_written is not None:
                        self.on_written(row)
            elif isinstance(a, Alert):
                log.warning("ALERT %s %s", a.kind, dict(a.details))
                out.alerts.append(a)
            elif isinstance(a, RecordPassage):
                if self.on_passage is not None:
                    try:
                        self.on_passage(a.subject_id)
                    except Exception as e:  # the lane itself still remembers it until a restart
                        log.error("could not store the passage of %s for anti-passback: %s", a.subject_id, e)
            else:
                self._device(a, t, out)
            i += 1
        return out

    def _note_refused(self, body: dict, error: Exception, t: float, out: Executed) -> None:
        """Record that a record was refused (its event and why, nothing of its content), so the
        trail shows the gap; if even that fails, it is an audit failure like a full disk."""
        note = {**self.stamp, "event": "record_refused", "refused_event": str(body.get("event"))[:64],
                "why": str(error)[:300]}
        try:
            out.rows.append(self.audit.append(note))
        except (AuditWriteError, ValueError, TypeError) as e:
            out.followups.append(AuditFailed(t, str(e)))

    def _device(self, a: Action, t: float, out: Executed) -> None:
        try:
            if isinstance(a, Unlock):
                self.driver.unlock(a.direction, 1, hold=a.hold)
                out.unlocks.append(a)
                if self.on_unlock is not None:
                    self.on_unlock(t, a)
            elif isinstance(a, Lock):
                self.driver.lock()
            elif isinstance(a, Indicate):
                self.driver.indicate(a.colour, a.buzzer, a.text)
            else:
                raise TypeError(f"no executor rule for action {type(a).__name__}")
        except devices.DeviceError as e:
            out.followups.append(DeviceFault(t, BARRIER, str(e)))
