"""What the central knows of each gate's health: its last report, and whether it went silent.

One of the parts of `sync.central.Central` (see sync.central_subjects), over the same
connection. It owns the `gate_health` table; the fleet view (`gate_statuses`) joins it with
the registered gates and with what the audit store holds of each gate's chain.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Callable

from sync.audit_store import AuditAlarm, AuditStore, alarm_summary_of
from sync.central_db import CentralDatabase
from sync.service_messages import HealthReport


@dataclass(frozen=True)
class GateStatus:
    gate_id: str
    scopes: tuple[str, ...]
    last_seen: dt.datetime | None
    silent: bool
    status: str | None
    software_version: str | None
    model_versions: dict[str, str]
    watchlist_seq: int | None
    queue_depth: int | None
    last_decision_at: str | None
    audit_max_seq: int  # of the gate's newest chain epoch
    node: str | None = None  # the central node the gate last reported through
    audit_alarm: str = ""  # a conflicting or backwards audit log (sync.audit_store.alarm_summary)
    audit_alarms: tuple[AuditAlarm, ...] = ()  # all of them, resolved ones too, in detection order


class GateHealth:
    """Gate reports in, silent gates flagged, the fleet view out."""

    def __init__(self, db: CentralDatabase, audit: AuditStore, clock: Callable[[], float], node: str | None = None):
        """`node` names this central node in the reports it records (several nodes on one
        PostgreSQL database), so `gate-ops gates` shows which node a gate talks to."""
        self.db = db
        self.audit = audit
        self.node = node
        self._clock = clock

    def record(self, report: HealthReport) -> bool:
        """Store a gate's report; returns True if the gate had been flagged silent."""
        now = self._clock()
        # Per-gate, not the change-log lock: health from 200 gates must not queue behind enrolments.
        with self.db.audit_transaction(report.gate_id):
            row = self.db.execute("SELECT silent FROM gate_health WHERE gate_id = ?", (report.gate_id,)).fetchone()
            self.db.execute(
                "INSERT INTO gate_health(gate_id, last_seen, status, software_version, model_versions, watchlist_seq, "
                "queue_depth, last_decision_at, report, silent, node) VALUES (?,?,?,?,?,?,?,?,?,0,?) "
                "ON CONFLICT(gate_id) DO "
                "UPDATE SET last_seen=excluded.last_seen, status=excluded.status, "
                "software_version=excluded.software_version, model_versions=excluded.model_versions, "
                "watchlist_seq=excluded.watchlist_seq, queue_depth=excluded.queue_depth, "
                "last_decision_at=excluded.last_decision_at, report=excluded.report, silent=0, node=excluded.node",
                (report.gate_id, now, report.status, report.software_version, json.dumps(report.model_versions),
                 report.watchlist_seq, report.queue_depth, report.last_decision_at,
                 json.dumps({"scopes": list(report.scopes), "extra": report.extra}), self.node))
        return bool(row and row[0])

    def flag_silent(self, silent_after_s: float) -> list[str]:
        """Mark registered gates not heard from for `silent_after_s`; returns those newly marked."""
        now = self._clock()
        newly = []
        with self.db.write_transaction():
            for gate_id, last_seen, silent, created in self.db.execute(
                    "SELECT p.ident, h.last_seen, h.silent, p.created_at FROM principals p "
                    "LEFT JOIN gate_health h ON h.gate_id = p.ident WHERE p.kind = 'gate'").fetchall():
                seen = last_seen if last_seen is not None else created
                if now - seen >= silent_after_s and not silent:
                    newly.append(gate_id)
                    self.db.execute(
                        "INSERT INTO gate_health(gate_id, last_seen, silent) VALUES (?, ?, 1) "
                        "ON CONFLICT(gate_id) DO UPDATE SET silent = 1", (gate_id, seen))
        return newly

    def statuses(self, silent_after_s: float, gate_id: str | None = None) -> list[GateStatus]:
        """Every registered gate, in gate id order, or only `gate_id` (empty if it is not
        registered): three queries whatever the fleet's size (the gates with their last report,
        the audit store's newest heads, its alarms), in one read snapshot. A gate's own page asks
        for one, so it costs the same at 3,000 gates as at 3."""
        now = self._clock()
        out = []
        only, args = (" AND p.ident = ?", (gate_id,)) if gate_id is not None else ("", ())
        with self.db.read_snapshot():
            gates = self.db.execute(
                "SELECT p.ident, p.scopes, h.last_seen, h.status, h.software_version, h.model_versions, "
                "h.watchlist_seq, h.queue_depth, h.last_decision_at, h.node FROM principals p "
                f"LEFT JOIN gate_health h ON h.gate_id = p.ident WHERE p.kind = 'gate'{only} ORDER BY p.ident",
                args).fetchall()
            latest = self.audit.latest_seqs(gate_id)
            alarms = self.audit.alarms_by_gate(gate_id)
        for ident, scopes, last_seen, status, sw, models, wl_seq, queue, last_dec, node in gates:
            reported = status is not None
            gate_alarms = alarms.get(ident, [])
            out.append(GateStatus(
                gate_id=ident, scopes=tuple(json.loads(scopes)),
                last_seen=dt.datetime.fromtimestamp(last_seen, dt.timezone.utc) if reported else None,
                silent=not reported or now - last_seen >= silent_after_s,
                status=status, software_version=sw, model_versions=json.loads(models) if models else {},
                watchlist_seq=wl_seq, queue_depth=queue, last_decision_at=last_dec,
                audit_max_seq=latest.get(ident, 0), node=node, audit_alarm=alarm_summary_of(gate_alarms),
                audit_alarms=tuple(gate_alarms)))
        return out
