"""The reference central's library API: one `Central` over one database connection, made of
parts that each do one job.

| part | module | owns |
|---|---|---|
| `subjects` | sync.central_subjects | enrolment, revocation, expiry; `subjects`, `templates`, `scope_models` |
| `registry` | sync.central_principals | who may connect (gates, stations, admins) and the flights assigned to gates |
| `health` | sync.central_health | gate health reports, silent gates, the fleet view |
| `hashmap` | sync.hashmap | the replicated key-value state and its change log |
| `audit` | sync.audit_store | the audit records gates upload, their chains and alarms |

Every part takes the same `CentralDatabase` (sync.central_db), so a change that spans parts (an
enrolment and the hashmap change that publishes it) is one transaction on one connection, on
SQLite and PostgreSQL alike, and a part is written once for both engines. `Central` builds the
parts and keeps the methods callers have always used as one-line delegations, so the server,
the tools, the kiosk and the tests need no change; new code may use a part directly.

`Central` only writes the database; the running server (sync.central_server) tails the change
log and publishes it. So `gate-central revoke` in another process, or an enrolment done while
the server is down, reaches the gates the same way as a change made in-process. Open one
`Central` per thread: each holds its own connection.
"""
from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sync.audit_store import AuditStore
from sync.central_db import CentralDatabase, open_central_db
from sync.central_health import GateHealth, GateStatus
from sync.central_principals import Principal, Principals
from sync.central_seal import open_central_cipher
from sync.central_subjects import (
    MAX_TTL_S,
    SUBJECT_STATUSES,
    Enrolment,
    EnrolmentError,
    EnrolResult,
    ModelMixError,
    SubjectInfo,
    Subjects,
    UnknownSubject,
)
from sync.hashmap import Hashmap
from sync.kvmsg import KVMsg
from sync.service_messages import HealthReport
from sync.template_crypto import TemplateCipher

__all__ = ["MAX_TTL_S", "SUBJECT_STATUSES", "Central", "EnrolResult", "Enrolment", "EnrolmentError",
           "GateStatus", "ModelMixError", "Principal", "SubjectInfo", "UnknownSubject"]


class Central:
    def __init__(self, database: str | Path, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] | None = None, node: str | None = None,
                 pool_size: int | None = None, template_key: TemplateCipher | str | Path | None = None):
        """`database`: a SQLite file path (the embedded default) or a PostgreSQL connection
        string (sync.central_db.open_central_db). `node` names this central node in the gate
        health it records (several nodes on one PostgreSQL database). `on_change` is called
        after each committed subject change. `template_key`: the key file (or cipher) templates
        are sealed with; None is the database's default file (sync.central_seal: beside a
        SQLite file, per database on this machine for PostgreSQL). A key other than the one
        the database was sealed with raises TemplateKeyError naming both key ids."""
        self.db: CentralDatabase = open_central_db(database, pool_size=pool_size)
        try:
            self.cipher = open_central_cipher(self.db, database, template_key)
        except BaseException:
            self.db.close()
            raise
        self.database = database
        self.db_path = getattr(self.db, "path", None)  # the SQLite file; None on PostgreSQL
        self.conn = self.db  # the one connection every part of the central shares
        self.node = node
        self.hashmap = Hashmap(self.db, self.cipher)
        self.audit = AuditStore(self.db)
        self.subjects = Subjects(self.db, self.hashmap, clock, on_change)
        self.registry = Principals(self.db, clock)
        self.health = GateHealth(self.db, self.audit, clock, node)

    def close(self) -> None:
        self.db.close()

    # ----- subjects (sync.central_subjects) ----------------------------------------------

    def enrol_subject(self, subject_id: str, list_type: str, scopes: Sequence[str],
                       valid_from: dt.datetime | None, valid_until: dt.datetime | None,
                       model_id: str, vectors: np.ndarray) -> EnrolResult:
        return self.subjects.enrol_subject(subject_id, list_type, scopes, valid_from, valid_until, model_id,
                                            vectors)

    def enrol_subjects(self, enrolments: Iterable[Enrolment]) -> list[EnrolResult]:
        return self.subjects.enrol_subjects(enrolments)

    def enrol_new_subjects(self, enrolments: Sequence[Enrolment]) -> int:
        return self.subjects.enrol_new_subjects(enrolments)

    def revoke(self, subject_id: str, scopes: Sequence[str] | None = None, reason: str = "") -> list[str]:
        return self.subjects.revoke(subject_id, scopes, reason)

    def expire(self, now: float | None = None) -> list[str]:
        return self.subjects.expire(now)

    def list_subjects(self, scope: str | None = None, status: str | None = None) -> list[SubjectInfo]:
        return self.subjects.list_subjects(scope, status)

    def subject_standing(self, subject_id: str) -> tuple[str, tuple[str, ...], str | None] | None:
        return self.subjects.standing(subject_id)

    def templates_of(self, subject_id: str) -> np.ndarray:
        return self.subjects.templates_of(subject_id)

    def apply_kvset(self, msg: KVMsg) -> list[str]:
        return self.subjects.apply_kvset(msg)

    # ----- who may connect (sync.central_principals) -------------------------------------

    def register_gate(self, gate_id: str, public_key: bytes | str, scopes: Sequence[str]) -> Principal:
        return self.registry.register_gate(gate_id, public_key, scopes)

    def register_station(self, station_id: str, public_key: bytes | str, airport: str) -> Principal:
        return self.registry.register_station(station_id, public_key, airport)

    def register_admin(self, name: str, public_key: bytes | str) -> Principal:
        return self.registry.register_admin(name, public_key)

    def remove_principal(self, kind: str, ident: str) -> bool:
        return self.registry.remove(kind, ident)

    def assign_flights(self, gate_id: str, flights: Sequence[str]) -> tuple[str, ...]:
        return self.registry.assign_flights(gate_id, flights)

    def assigned_flights(self, gate_id: str) -> tuple[str, ...]:
        return self.registry.assigned_flights(gate_id)

    def all_assigned_flights(self) -> dict[str, tuple[str, ...]]:
        return self.registry.all_assigned_flights()

    def principal_for_key(self, public_key: bytes | str) -> Principal | None:
        return self.registry.for_key(public_key)

    def principal(self, name: str) -> Principal | None:
        return self.registry.get(name)

    def principals(self) -> list[Principal]:
        return self.registry.all()

    # ----- gate health (sync.central_health) ---------------------------------------------

    def record_health(self, report: HealthReport) -> bool:
        return self.health.record(report)

    def flag_silent_gates(self, silent_after_s: float) -> list[str]:
        return self.health.flag_silent(silent_after_s)

    def gate_statuses(self, silent_after_s: float, gate_id: str | None = None) -> list[GateStatus]:
        return self.health.statuses(silent_after_s, gate_id)
