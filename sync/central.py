"""The reference central's library API: enrollment storage and publishing, the registry of
gates and admin tools allowed to connect, gate health and received audit.

`Central` only writes the database; the running server (sync.central_server) tails the change
log and publishes it. So `gate-central revoke` in another process, or an enrollment done
while the server is down, reaches the gates the same way as a change made in-process.
Open one `Central` per thread: each holds its own SQLite connection.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sync.audit_store import AuditStore
from sync.central_db import CentralDatabase, open_central_db
from sync.hashmap import Hashmap
from sync.kvmsg import PREV_PROPERTY, TTL_PROPERTY, KVMsg, encode_properties, new_uuid
from sync.scopes import ScopeError, check_id, checkpoint_scope, flight_scope_date, parse_scope, scope_label, split_key
from sync.service_messages import HealthReport
from sync.subject_record import LIST_TYPES, SubjectRecord, decode_record, encode_record, normalise_templates

log = logging.getLogger(__name__)

SUBJECT_STATUSES = ("active", "revoked", "expired")
MAX_TTL_S = 10 * 366 * 86400.0  # the longest validity a KVSET may ask for


class EnrollmentError(ValueError):
    """An enrollment, revocation or registration the central refuses; nothing was written."""


class ModelMixError(EnrollmentError):
    """Templates of two different models would share a scope, where no matcher could use both."""


class UnknownSubject(EnrollmentError):
    pass


@dataclass(frozen=True)
class Enrollment:
    subject_id: str
    list_type: str
    scopes: Sequence[str]  # "lane:ID" / "flight:NO" / "/lane/ID/"
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    model_id: str
    vectors: np.ndarray  # (n, dim) or (dim,); normalised on the way in
    # As the person writes it ("Nguyễn Văn An"), for staff at the central; never published to gates.
    display_name: str | None = None


@dataclass(frozen=True)
class EnrollResult:
    subject_id: str
    keys: tuple[str, ...]  # every key the subject now has (new and republished)
    seq: int  # sequence of the last change written


@dataclass(frozen=True)
class SubjectInfo:
    subject_id: str
    list_type: str
    model_id: str
    status: str
    scopes: tuple[str, ...]
    n_templates: int
    dim: int
    valid_from: dt.datetime | None
    valid_until: dt.datetime | None
    updated_at: dt.datetime
    reason: str | None


@dataclass(frozen=True)
class Principal:
    """Someone allowed to connect: a gate (which may snapshot only its scopes and upload only
    under its own id), an admin tool (which may read every subtree and send KVSET) or an
    enrolment station (which may only send enrolments, judged by sync.station_policy; its
    `scopes` hold its one airport code)."""

    kind: str  # "gate" | "admin" | "station"
    ident: str
    public_key: str  # Z85
    scopes: tuple[str, ...] = ()
    # A boarding gate's flights as the central assigned them (Central.assign_flights): served on
    # top of `scopes` and told to the gate in each health reply, so a gate change needs no restart.
    assigned: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.ident}"

    def may_snapshot(self, subtree: str) -> bool:
        return self.kind == "admin" or (self.kind == "gate" and (subtree in self.scopes or subtree in self.assigned))


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


def _epoch(value: dt.datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise EnrollmentError(f"{name} must be a timezone-aware datetime (UTC), got {value!r}")
    return int(math.floor(value.timestamp()))


def _from_epoch(value: float | None) -> dt.datetime | None:
    return None if value is None else _utc(value)


def _utc(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.timezone.utc)


def _check_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not 0 < len(model_id) <= 128 or any(c in model_id for c in "\n\r\x00"):
        raise EnrollmentError(f"model id {model_id!r} must be 1-128 printable characters")
    return model_id


def _key_text(public_key: bytes | str) -> str:
    text = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
    if len(text) != 40:
        raise EnrollmentError("a CURVE public key is 40 Z85 characters")
    return text


class Central:
    def __init__(self, database: str | Path, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] | None = None, node: str | None = None,
                 pool_size: int | None = None):
        """`database`: a SQLite file path (the embedded default) or a PostgreSQL connection
        string (sync.central_db.open_central_db). `node` names this central node in the gate
        health it records (several nodes on one PostgreSQL database)."""
        self.db: CentralDatabase = open_central_db(database, pool_size=pool_size)
        self.database = database
        self.db_path = getattr(self.db, "path", None)  # the SQLite file; None on PostgreSQL
        self.conn = self.db  # the one connection every part of the central shares
        self.node = node
        self.hashmap = Hashmap(self.db)
        self.audit = AuditStore(self.db)
        self._clock = clock
        self._on_change = on_change

    def close(self) -> None:
        self.db.close()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # ----- enrollment -------------------------------------------------------------------

    def enroll_subject(self, subject_id: str, list_type: str, scopes: Sequence[str],
                       valid_from: dt.datetime | None, valid_until: dt.datetime | None,
                       model_id: str, vectors: np.ndarray) -> EnrollResult:
        """Store a subject's templates and publish it in `scopes` (added to any it already has).

        Re-enrolling replaces the templates, list type and validity everywhere the subject is
        published. Refuses, writing nothing, if the result would put two model ids in one scope.
        """
        return self.enroll_subjects([Enrollment(subject_id, list_type, scopes, valid_from, valid_until,
                                                model_id, vectors)])[0]

    def enroll_subjects(self, enrollments: Iterable[Enrollment]) -> list[EnrollResult]:
        """Several enrollments in one transaction: all are written or none is."""
        now = self._clock()
        enrollments = list(enrollments)
        prepared = [self._prepare(e, now) for e in enrollments]
        results = []
        with self.db.write_transaction():
            for (rec, scopes), e in zip(prepared, enrollments, strict=True):
                results.append(self._write_subject(rec, scopes, new_uuid(), now, e.display_name))
        if results:
            self._changed()
        return results

    def enroll_new_subjects(self, enrollments: Sequence[Enrollment]) -> int:
        """Bulk import of subjects new to this central (a national enrolment import, a
        benchmark's million): the same validation and the same change log as enroll_subjects,
        written table by table in one transaction (COPY on PostgreSQL) instead of statement by
        statement. Refuses, writing nothing, if any subject already exists or if a scope would
        mix models. Returns the sequence of the last change. Measured on the 2-core CI machine
        (`gate-bench central`): see the README."""
        now = self._clock()
        prepared = [self._prepare(e, now) for e in enrollments]
        if not prepared:
            return self.hashmap.current_seq()
        ids = [rec.subject_id for rec, _ in prepared]
        if len(set(ids)) != len(ids):
            raise EnrollmentError("a bulk import names the same subject twice")
        models_by_scope: dict[str, str] = {}
        for rec, scopes in prepared:
            for scope in scopes:
                if models_by_scope.setdefault(scope, rec.model_id) != rec.model_id:
                    raise ModelMixError(f"scope {scope} would hold models {models_by_scope[scope]!r} and "
                                        f"{rec.model_id!r}")
        with self.db.write_transaction():
            for lo in range(0, len(ids), 500):
                chunk = ids[lo:lo + 500]
                marks = ",".join("?" * len(chunk))
                clash = self.conn.execute(f"SELECT subject_id FROM subjects WHERE subject_id IN ({marks}) LIMIT 1",
                                          chunk).fetchone()
                if clash:
                    raise EnrollmentError(f"subject {clash[0]} already exists; a bulk import takes new subjects only")
            for scope, model in models_by_scope.items():
                row = self.conn.execute("SELECT model_id FROM scope_models WHERE scope = ?", (scope,)).fetchone()
                if row is not None and row[0] != model:
                    raise ModelMixError(f"scope {scope} holds templates of model {row[0]!r}, refusing {model!r}")
            heads = self.hashmap.scope_heads(models_by_scope)
            seq = self.hashmap.current_seq()
            uuid = new_uuid()
            subjects: list[tuple] = []
            templates: list[tuple] = []
            kv: list[tuple] = []
            kv_log: list[tuple] = []
            for rec, scopes in prepared:
                subjects.append((rec.subject_id, rec.list_type, rec.model_id, rec.templates.shape[1],
                                 rec.templates.shape[0], rec.valid_from, rec.valid_until, "active", None, now, now))
                templates.extend((rec.subject_id, i, rec.model_id, v.astype("<f4").tobytes())
                                 for i, v in enumerate(rec.templates))
                body = encode_record(rec)
                for scope in scopes:
                    seq += 1
                    props = {} if rec.valid_until is None else {TTL_PROPERTY: str(max(1, int(rec.valid_until - now)))}
                    props[PREV_PROPERTY] = str(heads[scope])
                    heads[scope] = seq
                    key = scope + rec.subject_id
                    kv.append((key, scope, rec.subject_id, seq, uuid, body, rec.valid_until))
                    kv_log.append((seq, key, scope, uuid, encode_properties(props).decode("utf-8"), body, now))
            self.db.bulk_insert("subjects", ("subject_id", "list_type", "model_id", "dim", "n_templates", "valid_from",
                                             "valid_until", "status", "reason", "created_at", "updated_at"), subjects)
            self.db.bulk_insert("templates", ("subject_id", "idx", "model_id", "vector"), templates)
            self.db.bulk_insert("kv", ("key", "scope", "subject_id", "seq", "uuid", "body", "expires_at"), kv)
            self.db.bulk_insert("kv_log", ("seq", "key", "scope", "uuid", "props", "body", "logged_at"), kv_log)
            self.db.executemany("INSERT INTO scope_heads(scope, seq) VALUES (?, ?) ON CONFLICT(scope) DO UPDATE "
                                "SET seq = excluded.seq", list(heads.items()))
            self.db.executemany("INSERT INTO scope_models(scope, model_id) VALUES (?, ?) ON CONFLICT(scope) DO UPDATE "
                                "SET model_id = excluded.model_id", list(models_by_scope.items()))
            self.conn.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (seq,))
            self.db.notify_change(seq)
        self._changed()
        return seq

    def _prepare(self, e: Enrollment, now: float) -> tuple[SubjectRecord, list[str]]:
        try:
            check_id(e.subject_id, "subject id")
            scopes = sorted({parse_scope(s) for s in e.scopes})
        except ScopeError as exc:
            raise EnrollmentError(str(exc)) from exc
        if not scopes:
            raise EnrollmentError(f"subject {e.subject_id}: at least one scope (lane:ID or flight:NO) is required")
        if e.list_type not in LIST_TYPES:
            raise EnrollmentError(f"list type {e.list_type!r} is not one of {', '.join(LIST_TYPES)}")
        vf, vu = _epoch(e.valid_from, "valid_from"), _epoch(e.valid_until, "valid_until")
        if vu is not None and vu <= now:
            raise EnrollmentError(f"subject {e.subject_id}: valid_until {e.valid_until} is already past")
        if vf is not None and vu is not None and vu <= vf:
            raise EnrollmentError(f"subject {e.subject_id}: valid_until must be after valid_from")
        try:
            templates = normalise_templates(e.vectors)
        except ValueError as exc:
            raise EnrollmentError(f"subject {e.subject_id}: {exc}") from exc
        rec = SubjectRecord(subject_id=e.subject_id, list_type=e.list_type, model_id=_check_model_id(e.model_id),
                            templates=templates, valid_from=vf, valid_until=vu)
        return rec, scopes

    def _check_model_mix(self, rec: SubjectRecord, scopes: list[str]) -> None:
        for scope in scopes:
            row = self.conn.execute("SELECT model_id FROM scope_models WHERE scope = ?", (scope,)).fetchone()
            if row is None or row[0] == rec.model_id:
                continue
            others = self.conn.execute("SELECT 1 FROM kv WHERE scope = ? AND subject_id != ? LIMIT 1",
                                       (scope, rec.subject_id)).fetchone()
            if others:
                raise ModelMixError(f"subject {rec.subject_id}: scope {scope} holds templates of model {row[0]!r}, "
                                    f"refusing to add model {rec.model_id!r} (re-enroll the scope with one model)")
        row = self.conn.execute("SELECT dim FROM subjects WHERE model_id = ? AND status = 'active' AND subject_id != ? "
                                "LIMIT 1", (rec.model_id, rec.subject_id)).fetchone()
        if row and row[0] != rec.templates.shape[1]:
            raise EnrollmentError(f"subject {rec.subject_id}: model {rec.model_id!r} templates have {row[0]} "
                                  f"dimensions at this central, got {rec.templates.shape[1]}")

    def _write_subject(self, rec: SubjectRecord, scopes: list[str], uuid: bytes, now: float,
                       display_name: str | None = None) -> EnrollResult:
        """Caller holds the write transaction. A display name given replaces the stored one;
        none given keeps it."""
        existing = {split_key(k)[0] for k in self.hashmap.keys_of_subject(rec.subject_id)}
        all_scopes = sorted(existing | set(scopes))
        self._check_model_mix(rec, all_scopes)
        self.conn.execute(
            "INSERT INTO subjects(subject_id, list_type, model_id, dim, n_templates, valid_from, valid_until, status, "
            "reason, created_at, updated_at, display_name) VALUES (?,?,?,?,?,?,?,'active',NULL,?,?,?) "
            "ON CONFLICT(subject_id) DO UPDATE "
            "SET list_type=excluded.list_type, model_id=excluded.model_id, dim=excluded.dim, "
            "n_templates=excluded.n_templates, valid_from=excluded.valid_from, valid_until=excluded.valid_until, "
            "status='active', reason=NULL, updated_at=excluded.updated_at, "
            "display_name=COALESCE(excluded.display_name, subjects.display_name)",
            (rec.subject_id, rec.list_type, rec.model_id, rec.templates.shape[1], rec.templates.shape[0],
             rec.valid_from, rec.valid_until, now, now, display_name))
        self.conn.execute("DELETE FROM templates WHERE subject_id = ?", (rec.subject_id,))
        self.db.executemany("INSERT INTO templates(subject_id, idx, model_id, vector) VALUES (?,?,?,?)",
                              [(rec.subject_id, i, rec.model_id, v.astype("<f4").tobytes())
                               for i, v in enumerate(rec.templates)])
        body = encode_record(rec)
        props = {} if rec.valid_until is None else {TTL_PROPERTY: str(max(1, int(rec.valid_until - now)))}
        seq = 0
        keys = []
        for scope in all_scopes:
            key = scope + rec.subject_id
            seq = self.hashmap.put(key, body, uuid, props, rec.valid_until, now)
            keys.append(key)
            self.conn.execute("INSERT INTO scope_models(scope, model_id) VALUES (?, ?) "
                              "ON CONFLICT(scope) DO UPDATE SET model_id = excluded.model_id", (scope, rec.model_id))
        return EnrollResult(subject_id=rec.subject_id, keys=tuple(keys), seq=seq)

    def revoke(self, subject_id: str, scopes: Sequence[str] | None = None, reason: str = "") -> list[str]:
        """Withdraw a subject from some scopes, or from all (deleting its templates).
        Returns the keys deleted; gates drop them on the next update."""
        with self.db.write_transaction():
            deleted = self._revoke(subject_id, scopes, "revoked", reason, new_uuid(), self._clock())
        self._changed()
        return deleted

    def _revoke(self, subject_id: str, scopes: Sequence[str] | None, status: str, reason: str,
                uuid: bytes, now: float) -> list[str]:
        if self.conn.execute("SELECT 1 FROM subjects WHERE subject_id = ?", (subject_id,)).fetchone() is None:
            raise UnknownSubject(f"no subject {subject_id!r} at this central")
        keys = self.hashmap.keys_of_subject(subject_id)
        if scopes is not None:
            try:
                wanted = {parse_scope(s) for s in scopes}
            except ScopeError as exc:
                raise EnrollmentError(str(exc)) from exc
            keys = [k for k in keys if split_key(k)[0] in wanted]
        for key in keys:
            self.hashmap.delete(key, uuid, now)
            scope = split_key(key)[0]
            if self.conn.execute("SELECT 1 FROM kv WHERE scope = ? LIMIT 1", (scope,)).fetchone() is None:
                self.conn.execute("DELETE FROM scope_models WHERE scope = ?", (scope,))
        if not self.hashmap.keys_of_subject(subject_id):
            # Nowhere published any more: biometric data has no reason to stay.
            self.conn.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
            self.conn.execute("UPDATE subjects SET status = ?, reason = ?, updated_at = ? "
                              "WHERE subject_id = ? AND status = 'active'", (status, reason or None, now, subject_id))
        return keys

    def expire(self, now: float | None = None) -> list[str]:
        """Withdraw every active subject whose validity has ended; returns their ids."""
        now = self._clock() if now is None else now
        with self.db.write_transaction():
            due = [r[0] for r in self.conn.execute(
                "SELECT subject_id FROM subjects WHERE status = 'active' AND valid_until IS NOT NULL "
                "AND valid_until <= ? ORDER BY subject_id", (now,))]
            for subject_id in due:
                self._revoke(subject_id, None, "expired", "validity ended", new_uuid(), now)
        if due:
            log.info("expired %d subject(s): %s", len(due), ", ".join(due[:10]) + (" ..." if len(due) > 10 else ""))
            self._changed()
        return due

    def list_subjects(self, scope: str | None = None, status: str | None = None) -> list[SubjectInfo]:
        if status is not None and status not in SUBJECT_STATUSES:
            raise EnrollmentError(f"status {status!r} is not one of {', '.join(SUBJECT_STATUSES)}")
        sql = ("SELECT s.subject_id, s.list_type, s.model_id, s.status, s.n_templates, s.dim, s.valid_from, "
               f"s.valid_until, s.updated_at, s.reason, {self.db.group_concat('kv.scope')} FROM subjects s "
               "LEFT JOIN kv ON kv.subject_id = s.subject_id")
        where, args = [], []
        if scope is not None:
            where.append("s.subject_id IN (SELECT subject_id FROM kv WHERE scope = ?)")
            args.append(parse_scope(scope))
        if status is not None:
            where.append("s.status = ?")
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (" GROUP BY s.subject_id, s.list_type, s.model_id, s.status, s.n_templates, s.dim, s.valid_from, "
                "s.valid_until, s.updated_at, s.reason ORDER BY s.subject_id")
        return [SubjectInfo(subject_id=r[0], list_type=r[1], model_id=r[2], status=r[3], n_templates=r[4], dim=r[5],
                            valid_from=_from_epoch(r[6]), valid_until=_from_epoch(r[7]),
                            updated_at=_utc(r[8]), reason=r[9],
                            scopes=tuple(sorted(r[10].split())) if r[10] else ())
                for r in self.conn.execute(sql, args)]

    def subject_standing(self, subject_id: str) -> tuple[str, tuple[str, ...], str | None] | None:
        """(list type, scopes published in now, display name) of a known subject, else None."""
        row = self.conn.execute("SELECT list_type, display_name FROM subjects WHERE subject_id = ?",
                                (subject_id,)).fetchone()
        if row is None:
            return None
        return row[0], tuple(sorted(split_key(k)[0] for k in self.hashmap.keys_of_subject(subject_id))), row[1]

    def templates_of(self, subject_id: str) -> np.ndarray:
        rows = self.conn.execute("SELECT vector FROM templates WHERE subject_id = ? ORDER BY idx",
                                 (subject_id,)).fetchall()
        if not rows:
            raise UnknownSubject(f"no templates stored for {subject_id!r}")
        return np.stack([np.frombuffer(r[0], dtype="<f4") for r in rows]).astype(np.float32)

    def apply_kvset(self, msg: KVMsg) -> list[str]:
        """A KVSET from an admin tool on the collector socket, applied through the same rules
        as the API. Its UUID makes a retried KVSET harmless. Returns the keys changed."""
        if msg.uuid and self.hashmap.uuid_seen(msg.uuid):
            log.info("collector: KVSET %s for %s already applied; ignoring the repeat", msg.uuid.hex(), msg.key)
            return []
        scope, subject_id = split_key(msg.key)
        now = self._clock()
        uuid = msg.uuid or new_uuid()
        if msg.is_delete:
            with self.db.write_transaction():
                keys = self._revoke(subject_id, [scope], "revoked", "deleted by KVSET", uuid, now)
            self._changed()
            return keys
        rec = decode_record(msg.body)
        if rec.subject_id != subject_id:
            raise EnrollmentError(f"KVSET key {msg.key} names subject {subject_id} but its body names {rec.subject_id}")
        ttl = msg.props.get(TTL_PROPERTY)
        if ttl is not None:
            try:
                seconds = float(ttl)
            except ValueError as exc:
                raise EnrollmentError(f"KVSET ttl {ttl!r} is not a number of seconds") from exc
            if not 0 < seconds <= MAX_TTL_S:  # also refuses nan and inf
                raise EnrollmentError(f"KVSET ttl {ttl!r} is outside 0..{MAX_TTL_S:.0f} seconds (ten years)")
            limit = int(now + seconds)
            until = limit if rec.valid_until is None else min(rec.valid_until, limit)
            rec = SubjectRecord(rec.subject_id, rec.list_type, rec.model_id, rec.templates, rec.valid_from, until)
        enrollment = Enrollment(rec.subject_id, rec.list_type, [scope], _from_epoch(rec.valid_from),
                                _from_epoch(rec.valid_until), rec.model_id, rec.templates)
        rec, scopes = self._prepare(enrollment, now)
        with self.db.write_transaction():
            result = self._write_subject(rec, scopes, uuid, now)
        self._changed()
        return list(result.keys)

    # ----- who may connect ---------------------------------------------------------------

    def register_gate(self, gate_id: str, public_key: bytes | str, scopes: Sequence[str]) -> Principal:
        """Allow a gate's CURVE key and name the scopes it may snapshot. Re-registering a gate
        replaces its key (rotation) and scopes."""
        try:
            check_id(gate_id, "gate id")
            parsed = tuple(sorted({parse_scope(s) for s in scopes}))
        except ScopeError as exc:
            raise EnrollmentError(str(exc)) from exc
        if self.principal(f"station:{gate_id}") is not None:  # they share the audit store's ids
            raise EnrollmentError(f"{gate_id} is an enrolment station's id; a gate needs another")
        return self._register(Principal("gate", gate_id, _key_text(public_key), parsed))

    def register_station(self, station_id: str, public_key: bytes | str, airport: str) -> Principal:
        """Allow an enrolment station's CURVE key, bound to the one airport it serves."""
        try:
            check_id(station_id, "station id")
            checkpoint_scope(airport)
        except ScopeError as exc:
            raise EnrollmentError(str(exc)) from exc
        if self.principal(f"gate:{station_id}") is not None:  # they share the audit store's ids
            raise EnrollmentError(f"{station_id} is a gate's id; a station needs another")
        return self._register(Principal("station", station_id, _key_text(public_key), (airport,)))

    def register_admin(self, name: str, public_key: bytes | str) -> Principal:
        try:
            check_id(name, "admin name")
        except ScopeError as exc:
            raise EnrollmentError(str(exc)) from exc
        return self._register(Principal("admin", name, _key_text(public_key)))

    def _register(self, p: Principal) -> Principal:
        with self.db.write_transaction():
            clash = self.conn.execute("SELECT name FROM principals WHERE public_key = ? AND name != ?",
                                      (p.public_key, p.name)).fetchone()
            if clash:
                raise EnrollmentError(f"that public key already belongs to {clash[0]}; "
                                      "every gate needs its own keypair")
            self.conn.execute(
                "INSERT INTO principals(name, kind, ident, public_key, scopes, created_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET public_key=excluded.public_key, scopes=excluded.scopes",
                (p.name, p.kind, p.ident, p.public_key, json.dumps(list(p.scopes)), self._clock()))
        log.info("registered %s (key %s..., scopes %s)", p.name, p.public_key[:8], ", ".join(p.scopes) or "-")
        return p

    def remove_principal(self, kind: str, ident: str) -> bool:
        with self.db.write_transaction():
            cur = self.conn.execute("DELETE FROM principals WHERE name = ?", (f"{kind}:{ident}",))
            if kind == "gate":
                self.conn.execute("DELETE FROM gate_assignments WHERE gate_id = ?", (ident,))
        return cur.rowcount > 0

    # ----- boarding gates follow the flights assigned to them ----------------------------

    def assign_flights(self, gate_id: str, flights: Sequence[str]) -> tuple[str, ...]:
        """Make `flights` (flight:VN123-2026-12-02; none: the gate boards nothing now) the
        flights a boarding gate follows, replacing what it followed before. The gate learns it
        from its next health reply and snapshots the new flight, dropping the old one's
        templates, without a restart. Refused: an unregistered gate, a security or metro lane
        (its registered scopes are a checkpoint or a line: it never boards a flight), anything
        but a dated flight, and a flight whose day has passed."""
        p = self.principal(f"gate:{gate_id}")
        if p is None or p.kind != "gate":
            raise EnrollmentError(f"gate {gate_id!r} is not registered at this central")
        lanes = [scope_label(s) for s in p.scopes if not s.startswith("/flight/")]
        if lanes:
            raise EnrollmentError(f"gate {gate_id} is registered for {', '.join(lanes)}: a security or metro lane "
                                  "is not assigned flights")
        today = dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc).date()
        scopes = []
        for f in flights:
            try:
                subtree = parse_scope(f if f.startswith(("flight:", "/")) else f"flight:{f}")
                day = flight_scope_date(subtree)
            except ScopeError as exc:
                raise EnrollmentError(str(exc)) from exc
            if day < today - dt.timedelta(days=1):
                raise EnrollmentError(f"flight {scope_label(subtree)} departed on {day}; its passengers are purged")
            scopes.append(subtree)
        with self.db.write_transaction():
            self.conn.execute("DELETE FROM gate_assignments WHERE gate_id = ?", (gate_id,))
            for subtree in sorted(set(scopes)):
                self.conn.execute("INSERT INTO gate_assignments(gate_id, scope, assigned_at) VALUES (?,?,?)",
                                  (gate_id, subtree, self._clock()))
        log.info("gate %s now boards %s", gate_id, ", ".join(scope_label(s) for s in sorted(set(scopes))) or "nothing")
        return tuple(sorted(set(scopes)))

    def assigned_flights(self, gate_id: str) -> tuple[str, ...]:
        return tuple(r[0] for r in self.conn.execute(
            "SELECT scope FROM gate_assignments WHERE gate_id = ? ORDER BY scope", (gate_id,)).fetchall())

    def _load_principal(self, row) -> Principal:
        assigned = self.assigned_flights(row[1]) if row[0] == "gate" else ()
        return Principal(row[0], row[1], row[2], tuple(json.loads(row[3])), assigned)

    def _principal(self, where: str, arg: str) -> Principal | None:
        row = self.conn.execute(f"SELECT kind, ident, public_key, scopes FROM principals WHERE {where} = ?",
                                (arg,)).fetchone()
        return None if row is None else self._load_principal(row)

    def principal_for_key(self, public_key: bytes | str) -> Principal | None:
        text = public_key.decode("ascii") if isinstance(public_key, bytes) else public_key
        return self._principal("public_key", text)

    def principal(self, name: str) -> Principal | None:
        return self._principal("name", name)

    def principals(self) -> list[Principal]:
        rows = self.conn.execute("SELECT kind, ident, public_key, scopes FROM principals ORDER BY name").fetchall()
        return [self._load_principal(r) for r in rows]

    # ----- health ------------------------------------------------------------------------

    def record_health(self, report: HealthReport) -> bool:
        """Store a gate's report; returns True if the gate had been flagged silent."""
        now = self._clock()
        # Per-gate, not the change-log lock: health from 200 gates must not queue behind enrolments.
        with self.db.audit_transaction(report.gate_id):
            row = self.conn.execute("SELECT silent FROM gate_health WHERE gate_id = ?", (report.gate_id,)).fetchone()
            self.conn.execute(
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

    def flag_silent_gates(self, silent_after_s: float) -> list[str]:
        """Mark registered gates not heard from for `silent_after_s`; returns those newly marked."""
        now = self._clock()
        newly = []
        with self.db.write_transaction():
            for gate_id, last_seen, silent, created in self.conn.execute(
                    "SELECT p.ident, h.last_seen, h.silent, p.created_at FROM principals p "
                    "LEFT JOIN gate_health h ON h.gate_id = p.ident WHERE p.kind = 'gate'").fetchall():
                seen = last_seen if last_seen is not None else created
                if now - seen >= silent_after_s and not silent:
                    newly.append(gate_id)
                    self.conn.execute(
                        "INSERT INTO gate_health(gate_id, last_seen, silent) VALUES (?, ?, 1) "
                        "ON CONFLICT(gate_id) DO UPDATE SET silent = 1", (gate_id, seen))
        return newly

    def gate_statuses(self, silent_after_s: float) -> list[GateStatus]:
        now = self._clock()
        out = []
        for ident, scopes, last_seen, status, sw, models, wl_seq, queue, last_dec, node in self.conn.execute(
                "SELECT p.ident, p.scopes, h.last_seen, h.status, h.software_version, h.model_versions, "
                "h.watchlist_seq, h.queue_depth, h.last_decision_at, h.node FROM principals p "
                "LEFT JOIN gate_health h ON h.gate_id = p.ident WHERE p.kind = 'gate' ORDER BY p.ident").fetchall():
            reported = status is not None
            out.append(GateStatus(
                gate_id=ident, scopes=tuple(json.loads(scopes)),
                last_seen=_from_epoch(last_seen) if reported else None,
                silent=not reported or now - last_seen >= silent_after_s,
                status=status, software_version=sw, model_versions=json.loads(models) if models else {},
                watchlist_seq=wl_seq, queue_depth=queue, last_decision_at=last_dec,
                audit_max_seq=self.audit.latest_seq(ident), node=node, audit_alarm=self.audit.alarm_summary(ident)))
        return out
