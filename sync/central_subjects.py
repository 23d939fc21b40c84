"""The central's subjects: enrolment, revocation, expiry, and what is stored of each.

One of the parts `sync.central.Central` is made of (with `sync.central_principals`,
`sync.central_health`, `sync.hashmap` and `sync.audit_store`), each over the one
`CentralDatabase` connection the `Central` opens. This part owns the `subjects`, `templates`
and `scope_models` tables and writes every subject change through the `Hashmap` in the same
write transaction, so a template and the change that publishes it commit together (or not at
all) on both engines.

It only writes the database; the running server (sync.central_server) tails the change log
and publishes it, so a revocation done by `gate-central revoke` in another process reaches the
gates the same way as one made in-process.

Templates are stored sealed (sync.central_seal): each `templates.vector` bound to its subject and
model id, each record body (in the hashmap) to its key and sequence, with the hashmap's cipher.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from sync.central_db import CentralDatabase
from sync.central_seal import SealedRowRefused
from sync.hashmap import Hashmap
from sync.kvmsg import PREV_PROPERTY, TTL_PROPERTY, KVMsg, encode_properties, new_uuid
from sync.scopes import ScopeError, check_id, parse_scope, split_key
from sync.subject_record import LIST_TYPES, SubjectRecord, decode_record, encode_record, normalise_templates
from sync.template_crypto import TemplateIntegrityError

log = logging.getLogger("sync.central")  # the name these lines had before the split

SUBJECT_STATUSES = ("active", "revoked", "expired")
MAX_TTL_S = 10 * 366 * 86400.0  # the longest validity a KVSET may ask for


class EnrolmentError(ValueError):
    """An enrolment, revocation or registration the central refuses; nothing was written."""


class ModelMixError(EnrolmentError):
    """Templates of two different models would share a scope, where no matcher could use both."""


class UnknownSubject(EnrolmentError):
    pass


@dataclass(frozen=True)
class Enrolment:
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
class EnrolResult:
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


def _epoch(value: dt.datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise EnrolmentError(f"{name} must be a timezone-aware datetime (UTC), got {value!r}")
    return int(math.floor(value.timestamp()))


def _from_epoch(value: float | None) -> dt.datetime | None:
    return None if value is None else _utc(value)


def _utc(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.timezone.utc)


def _check_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not 0 < len(model_id) <= 128 or any(c in model_id for c in "\n\r\x00"):
        raise EnrolmentError(f"model id {model_id!r} must be 1-128 printable characters")
    return model_id


class Subjects:
    """Enrolment and withdrawal of subjects, and the queries staff and tools make of them."""

    def __init__(self, db: CentralDatabase, hashmap: Hashmap, clock: Callable[[], float],
                 on_change: Callable[[], None] | None = None):
        """`on_change` is called after every committed change (the server wakes its publisher
        with it instead of waiting for its next poll)."""
        self.db = db
        self.hashmap = hashmap
        self._clock = clock
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def enrol_subject(self, subject_id: str, list_type: str, scopes: Sequence[str],
                       valid_from: dt.datetime | None, valid_until: dt.datetime | None,
                       model_id: str, vectors: np.ndarray) -> EnrolResult:
        """Store a subject's templates and publish it in `scopes` (added to any it already has).

        Re-enrolling replaces the templates, list type and validity everywhere the subject is
        published. Refuses, writing nothing, if the result would put two model ids in one scope.
        """
        return self.enrol_subjects([Enrolment(subject_id, list_type, scopes, valid_from, valid_until,
                                                model_id, vectors)])[0]

    def enrol_subjects(self, enrolments: Iterable[Enrolment]) -> list[EnrolResult]:
        """Several enrolments in one transaction: all are written or none is."""
        now = self._clock()
        enrolments = list(enrolments)
        prepared = [self._prepare(e, now) for e in enrolments]
        results = []
        with self.db.write_transaction():
            for (rec, scopes), e in zip(prepared, enrolments, strict=True):
                results.append(self._write_subject(rec, scopes, new_uuid(), now, e.display_name))
        if results:
            self._changed()
        return results

    def enrol_new_subjects(self, enrolments: Sequence[Enrolment]) -> int:
        """Bulk import of subjects new to this central (a national enrolment import, a
        benchmark's million): the same validation and the same change log as enrol_subjects,
        written table by table in one transaction (COPY on PostgreSQL) instead of statement by
        statement. Refuses, writing nothing, if any subject already exists or if a scope would
        mix models. Returns the sequence of the last change. Measured on the 2-core CI machine
        (`gate-bench central`): see the README."""
        now = self._clock()
        prepared = [self._prepare(e, now) for e in enrolments]
        if not prepared:
            return self.hashmap.current_seq()
        ids = [rec.subject_id for rec, _ in prepared]
        if len(set(ids)) != len(ids):
            raise EnrolmentError("a bulk import names the same subject twice")
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
                clash = self.db.execute(f"SELECT subject_id FROM subjects WHERE subject_id IN ({marks}) LIMIT 1",
                                          chunk).fetchone()
                if clash:
                    raise EnrolmentError(f"subject {clash[0]} already exists; a bulk import takes new subjects only")
            for scope, model in models_by_scope.items():
                row = self.db.execute("SELECT model_id FROM scope_models WHERE scope = ?", (scope,)).fetchone()
                if row is not None and row[0] != model:
                    raise ModelMixError(f"scope {scope} holds templates of model {row[0]!r}, refusing {model!r}")
            heads = self.hashmap.scope_heads(models_by_scope)
            seq = self.hashmap.current_seq()
            uuid = new_uuid()
            seal, seal_record = self.hashmap.cipher.seal, self.hashmap.cipher.seal_record
            subjects: list[tuple] = []
            templates: list[tuple] = []
            kv: list[tuple] = []
            kv_log: list[tuple] = []
            for rec, scopes in prepared:
                subjects.append((rec.subject_id, rec.list_type, rec.model_id, rec.templates.shape[1],
                                 rec.templates.shape[0], rec.valid_from, rec.valid_until, "active", None, now, now))
                templates.extend((rec.subject_id, i, rec.model_id, seal(v.astype("<f4").tobytes(), rec.subject_id,
                                                                        rec.model_id))
                                 for i, v in enumerate(rec.templates))
                body = encode_record(rec)
                for scope in scopes:
                    seq += 1
                    props = {} if rec.valid_until is None else {TTL_PROPERTY: str(max(1, int(rec.valid_until - now)))}
                    props[PREV_PROPERTY] = str(heads[scope])
                    heads[scope] = seq
                    key = scope + rec.subject_id
                    sealed = seal_record(body, key, seq)  # one blob for both rows: same key and sequence
                    kv.append((key, scope, rec.subject_id, seq, uuid, sealed, rec.valid_until))
                    kv_log.append((seq, key, scope, uuid, encode_properties(props).decode("utf-8"), sealed, now))
            self.db.bulk_insert("subjects", ("subject_id", "list_type", "model_id", "dim", "n_templates", "valid_from",
                                             "valid_until", "status", "reason", "created_at", "updated_at"), subjects)
            self.db.bulk_insert("templates", ("subject_id", "idx", "model_id", "vector"), templates)
            self.db.bulk_insert("kv", ("key", "scope", "subject_id", "seq", "uuid", "body", "expires_at"), kv)
            self.db.bulk_insert("kv_log", ("seq", "key", "scope", "uuid", "props", "body", "logged_at"), kv_log)
            self.db.executemany("INSERT INTO scope_heads(scope, seq) VALUES (?, ?) ON CONFLICT(scope) DO UPDATE "
                                "SET seq = excluded.seq", list(heads.items()))
            self.db.executemany("INSERT INTO scope_models(scope, model_id) VALUES (?, ?) ON CONFLICT(scope) DO UPDATE "
                                "SET model_id = excluded.model_id", list(models_by_scope.items()))
            self.db.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (seq,))
            self.db.notify_change(seq)
        self._changed()
        self.db.after_bulk_load({"subjects": len(subjects), "templates": len(templates), "kv": len(kv),
                                 "kv_log": len(kv_log)})
        return seq

    def _prepare(self, e: Enrolment, now: float) -> tuple[SubjectRecord, list[str]]:
        try:
            check_id(e.subject_id, "subject id")
            scopes = sorted({parse_scope(s) for s in e.scopes})
        except ScopeError as exc:
            raise EnrolmentError(str(exc)) from exc
        if not scopes:
            raise EnrolmentError(f"subject {e.subject_id}: at least one scope (lane:ID or flight:NO) is required")
        if e.list_type not in LIST_TYPES:
            raise EnrolmentError(f"list type {e.list_type!r} is not one of {', '.join(LIST_TYPES)}")
        vf, vu = _epoch(e.valid_from, "valid_from"), _epoch(e.valid_until, "valid_until")
        if vu is not None and vu <= now:
            raise EnrolmentError(f"subject {e.subject_id}: valid_until {e.valid_until} is already past")
        if vf is not None and vu is not None and vu <= vf:
            raise EnrolmentError(f"subject {e.subject_id}: valid_until must be after valid_from")
        try:
            templates = normalise_templates(e.vectors)
        except ValueError as exc:
            raise EnrolmentError(f"subject {e.subject_id}: {exc}") from exc
        rec = SubjectRecord(subject_id=e.subject_id, list_type=e.list_type, model_id=_check_model_id(e.model_id),
                            templates=templates, valid_from=vf, valid_until=vu)
        return rec, scopes

    def _check_model_mix(self, rec: SubjectRecord, scopes: list[str]) -> None:
        for scope in scopes:
            row = self.db.execute("SELECT model_id FROM scope_models WHERE scope = ?", (scope,)).fetchone()
            if row is None or row[0] == rec.model_id:
                continue
            others = self.db.execute("SELECT 1 FROM kv WHERE scope = ? AND subject_id != ? LIMIT 1",
                                       (scope, rec.subject_id)).fetchone()
            if others:
                raise ModelMixError(f"subject {rec.subject_id}: scope {scope} holds templates of model {row[0]!r}, "
                                    f"refusing to add model {rec.model_id!r} (re-enrol the scope with one model)")
        row = self.db.execute("SELECT dim FROM subjects WHERE model_id = ? AND status = 'active' AND subject_id != ? "
                                "LIMIT 1", (rec.model_id, rec.subject_id)).fetchone()
        if row and row[0] != rec.templates.shape[1]:
            raise EnrolmentError(f"subject {rec.subject_id}: model {rec.model_id!r} templates have {row[0]} "
                                  f"dimensions at this central, got {rec.templates.shape[1]}")

    def _write_subject(self, rec: SubjectRecord, scopes: list[str], uuid: bytes, now: float,
                       display_name: str | None = None) -> EnrolResult:
        """Caller holds the write transaction. A display name given replaces the stored one;
        none given keeps it."""
        existing = {split_key(k)[0] for k in self.hashmap.keys_of_subject(rec.subject_id)}
        all_scopes = sorted(existing | set(scopes))
        self._check_model_mix(rec, all_scopes)
        self.db.execute(
            "INSERT INTO subjects(subject_id, list_type, model_id, dim, n_templates, valid_from, valid_until, status, "
            "reason, created_at, updated_at, display_name) VALUES (?,?,?,?,?,?,?,'active',NULL,?,?,?) "
            "ON CONFLICT(subject_id) DO UPDATE "
            "SET list_type=excluded.list_type, model_id=excluded.model_id, dim=excluded.dim, "
            "n_templates=excluded.n_templates, valid_from=excluded.valid_from, valid_until=excluded.valid_until, "
            "status='active', reason=NULL, updated_at=excluded.updated_at, "
            "display_name=COALESCE(excluded.display_name, subjects.display_name)",
            (rec.subject_id, rec.list_type, rec.model_id, rec.templates.shape[1], rec.templates.shape[0],
             rec.valid_from, rec.valid_until, now, now, display_name))
        self.db.execute("DELETE FROM templates WHERE subject_id = ?", (rec.subject_id,))
        seal = self.hashmap.cipher.seal
        self.db.executemany("INSERT INTO templates(subject_id, idx, model_id, vector) VALUES (?,?,?,?)",
                              [(rec.subject_id, i, rec.model_id, seal(v.astype("<f4").tobytes(), rec.subject_id,
                                                                      rec.model_id))
                               for i, v in enumerate(rec.templates)])
        body = encode_record(rec)
        props = {} if rec.valid_until is None else {TTL_PROPERTY: str(max(1, int(rec.valid_until - now)))}
        seq = 0
        keys = []
        for scope in all_scopes:
            key = scope + rec.subject_id
            seq = self.hashmap.put(key, body, uuid, props, rec.valid_until, now)
            keys.append(key)
            self.db.execute("INSERT INTO scope_models(scope, model_id) VALUES (?, ?) "
                              "ON CONFLICT(scope) DO UPDATE SET model_id = excluded.model_id", (scope, rec.model_id))
        return EnrolResult(subject_id=rec.subject_id, keys=tuple(keys), seq=seq)

    def revoke(self, subject_id: str, scopes: Sequence[str] | None = None, reason: str = "") -> list[str]:
        """Withdraw a subject from some scopes, or from all (deleting its templates).
        Returns the keys deleted; gates drop them on the next update."""
        with self.db.write_transaction():
            deleted = self._revoke(subject_id, scopes, "revoked", reason, new_uuid(), self._clock())
        self._changed()
        return deleted

    def _revoke(self, subject_id: str, scopes: Sequence[str] | None, status: str, reason: str,
                uuid: bytes, now: float) -> list[str]:
        if self.db.execute("SELECT 1 FROM subjects WHERE subject_id = ?", (subject_id,)).fetchone() is None:
            raise UnknownSubject(f"no subject {subject_id!r} at this central")
        keys = self.hashmap.keys_of_subject(subject_id)
        if scopes is not None:
            try:
                wanted = {parse_scope(s) for s in scopes}
            except ScopeError as exc:
                raise EnrolmentError(str(exc)) from exc
            keys = [k for k in keys if split_key(k)[0] in wanted]
        for key in keys:
            self.hashmap.delete(key, uuid, now)
            scope = split_key(key)[0]
            if self.db.execute("SELECT 1 FROM kv WHERE scope = ? LIMIT 1", (scope,)).fetchone() is None:
                self.db.execute("DELETE FROM scope_models WHERE scope = ?", (scope,))
        if not self.hashmap.keys_of_subject(subject_id):
            # Nowhere published any more: biometric data has no reason to stay.
            self.db.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
            self.db.execute("UPDATE subjects SET status = ?, reason = ?, updated_at = ? "
                              "WHERE subject_id = ? AND status = 'active'", (status, reason or None, now, subject_id))
        return keys

    def expire(self, now: float | None = None) -> list[str]:
        """Withdraw every active subject whose validity has ended; returns their ids."""
        now = self._clock() if now is None else now
        with self.db.write_transaction():
            due = [r[0] for r in self.db.execute(
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
            raise EnrolmentError(f"status {status!r} is not one of {', '.join(SUBJECT_STATUSES)}")
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
                for r in self.db.execute(sql, args)]

    def standing(self, subject_id: str) -> tuple[str, tuple[str, ...], str | None] | None:
        """(list type, scopes published in now, display name) of a known subject, else None."""
        row = self.db.execute("SELECT list_type, display_name FROM subjects WHERE subject_id = ?",
                                (subject_id,)).fetchone()
        if row is None:
            return None
        return row[0], tuple(sorted(split_key(k)[0] for k in self.hashmap.keys_of_subject(subject_id))), row[1]

    def templates_of(self, subject_id: str) -> np.ndarray:
        """The subject's stored templates, opened; SealedRowRefused if one does not open (in
        clear, altered, or moved from another subject's row)."""
        rows = self.db.execute("SELECT vector, model_id FROM templates WHERE subject_id = ? ORDER BY idx",
                                 (subject_id,)).fetchall()
        if not rows:
            raise UnknownSubject(f"no templates stored for {subject_id!r}")
        opened = []
        for blob, model_id in rows:
            try:
                opened.append(np.frombuffer(self.hashmap.cipher.open(bytes(blob), subject_id, model_id), dtype="<f4"))
            except TemplateIntegrityError as exc:
                raise SealedRowRefused(str(exc)) from None
        return np.stack(opened).astype(np.float32)

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
            raise EnrolmentError(f"KVSET key {msg.key} names subject {subject_id} but its body names {rec.subject_id}")
        ttl = msg.props.get(TTL_PROPERTY)
        if ttl is not None:
            try:
                seconds = float(ttl)
            except ValueError as exc:
                raise EnrolmentError(f"KVSET ttl {ttl!r} is not a number of seconds") from exc
            if not 0 < seconds <= MAX_TTL_S:  # also refuses nan and inf
                raise EnrolmentError(f"KVSET ttl {ttl!r} is outside 0..{MAX_TTL_S:.0f} seconds (ten years)")
            limit = int(now + seconds)
            until = limit if rec.valid_until is None else min(rec.valid_until, limit)
            rec = SubjectRecord(rec.subject_id, rec.list_type, rec.model_id, rec.templates, rec.valid_from, until)
        enrolment = Enrolment(rec.subject_id, rec.list_type, [scope], _from_epoch(rec.valid_from),
                                _from_epoch(rec.valid_until), rec.model_id, rec.templates)
        rec, scopes = self._prepare(enrolment, now)
        with self.db.write_transaction():
            result = self._write_subject(rec, scopes, uuid, now)
        self._changed()
        return list(result.keys)
