"""Audit batches, health reports and station enrolments: the request-reply messages between a
gate or an enrolment station and the central's service socket (base port + 3). One msgpack
map per frame, checked field by field on arrival: a malformed request gets an error reply
and is never stored in part.

Audit bodies travel as the JSON text the gate hashed, so the central stores exactly what the
chain commits to instead of a re-serialisation of it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from sync.audit_chain import LEGACY_EPOCH, AuditRow, ChainEpoch
from sync.scopes import ScopeError, check_id, parse_scope
from sync.subject_record import MAX_DIM

MAX_BATCH_ROWS = 5000
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_TEXT = 256
_MAX_EXTRA_BYTES = 16 << 10
_EPOCH_RE = re.compile(r"^([0-9a-f]{32})?$")
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")


class MalformedRequest(ValueError):
    """A service message that breaks the format; the reason is sent back to the gate."""


@dataclass(frozen=True)
class AuditBatch:
    gate_id: str
    request_id: int
    rows: tuple[AuditRow, ...]
    epoch: str = LEGACY_EPOCH  # the chain these rows belong to (sync.audit_chain.ChainEpoch)

    @property
    def first_seq(self) -> int:
        return self.rows[0].seq

    @property
    def last_seq(self) -> int:
        return self.rows[-1].seq


@dataclass(frozen=True)
class HealthReport:
    gate_id: str
    request_id: int
    status: str
    software_version: str
    model_versions: dict[str, str]
    watchlist_seq: int
    queue_depth: int
    last_decision_at: str | None
    scopes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # The gate's own audit head, so the central notices a log that went backwards or forked.
    audit_epoch: str = LEGACY_EPOCH
    audit_last_seq: int | None = None
    audit_head_hash: str = ""


@dataclass(frozen=True)
class HeadRequest:
    """'What do you hold of my chain `epoch`?', sent by a gate's uploader on every connect."""

    gate_id: str
    request_id: int
    epoch: str = LEGACY_EPOCH


@dataclass(frozen=True)
class EpochRegistration:
    """A gate starts a new audit chain epoch (after finding its log does not continue the central's)."""

    gate_id: str
    request_id: int
    chain: ChainEpoch


MAX_ENROL_SCOPES = 8
MAX_ENROL_TEMPLATES = 16
MAX_DISPLAY_NAME = 128
_MAX_UNIX_SECONDS = 253_402_300_799


@dataclass(frozen=True, eq=False)
class EnrolRequest:
    """An enrolment station asks the central to enrol one traveller.

    Wire form, one msgpack map:
        {"t": "enrol", "station": str, "rid": int, "subject": str, "name": str | nil,
         "list": "allow", "scopes": [str, 1..8], "from": "SGN",
         "vf": int | nil, "vu": int, "model": str, "n": int, "dim": int, "tpl": bin}
    `scopes` are "flight:VN123-2026-12-02" / "checkpoint:SGN"; `from` is the departure airport
    of the boarding-pass leg; vf/vu are Unix seconds UTC (vu required: a station's enrolment
    always ends); `tpl` is n*dim float32 little-endian, n 1..16, rows L2-normalised (as the
    embedder makes them; checked, not rescaled, so a request re-encodes to the same bytes).
    The list type is carried so a deny request is refused by policy, visibly, rather than
    being unrepresentable.
    """

    station_id: str
    request_id: int
    subject_id: str
    display_name: str | None
    list_type: str
    scopes: tuple[str, ...]  # subtrees after decoding ("/flight/VN123-2026-12-02/")
    departure_airport: str
    valid_from: int | None
    valid_until: int
    model_id: str
    templates: np.ndarray  # (n, dim) float32, L2-normalised

    @property
    def gate_id(self) -> str:  # the sender, for log lines shared with gate requests
        return self.station_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnrolRequest):
            return NotImplemented
        fields = ("station_id", "request_id", "subject_id", "display_name", "list_type", "scopes",
                  "departure_airport", "valid_from", "valid_until", "model_id")
        return all(getattr(self, f) == getattr(other, f) for f in fields) and \
            self.templates.shape == other.templates.shape and bool(np.array_equal(self.templates, other.templates))


@dataclass(frozen=True)
class Reply:
    """The central's answer to any request.

    Audit: `durable_seq` is the highest seq up to which every row of the batch is held by the
    central *identically* (first_seq - 1 when none is); `conflicts` lists the batch's seqs the
    central holds with different content (or whose link to the held predecessor breaks); they
    are never acknowledged. Head: `head_seq`/`head_hash` are the central's last record of the
    asked epoch (its base when it holds none), `epoch_known` False for an epoch never registered.
    Enrolment: `change_seq` is the sequence of the last change it wrote (a gate holding that
    sequence has it).
    Health: `scope_heads` maps each scope the gate follows to the sequence of its latest change;
    `assigned_scopes` are the flights the central assigned to the gate (subtrees), which it
    follows on top of its configured scopes."""

    request_id: int
    ok: bool
    error: str = ""
    durable_seq: int = 0
    scope_heads: dict[str, int] = field(default_factory=dict)
    conflicts: tuple[int, ...] = ()
    head_seq: int = 0
    head_hash: str = ""
    epoch_known: bool = True
    change_seq: int = 0
    assigned_scopes: tuple[str, ...] = ()


MAX_ASSIGNED_SCOPES = 16  # a boarding gate boards one flight, two while one closes and the next opens


def _pack(obj: dict) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(frame: bytes) -> dict:
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise MalformedRequest(f"not a msgpack message: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedRequest("message must be a msgpack map")
    return obj


def _int(obj: dict, name: str, minimum: int = 0) -> int:
    v = obj.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum or v > 2**63 - 1:
        raise MalformedRequest(f"{name} must be an integer >= {minimum}")
    return v


def _text(obj: dict, name: str) -> str:
    v = obj.get(name)
    if not isinstance(v, str) or len(v) > _MAX_TEXT:
        raise MalformedRequest(f"{name} must be a string of at most {_MAX_TEXT} characters")
    return v


def _optional_text(obj: dict, name: str) -> str | None:
    return None if obj.get(name) is None else _text(obj, name)


def _unix_time(obj: dict, name: str, note: str = "") -> int:
    v = obj.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_UNIX_SECONDS:
        raise MalformedRequest(f"{name} must be a Unix time between 1970 and 9999{note}")
    return v


def _gate_id(obj: dict) -> str:
    try:
        return check_id(obj.get("gate"), "gate id")
    except ScopeError as exc:
        raise MalformedRequest(str(exc)) from exc


def _epoch(obj: dict, name: str = "epoch") -> str:
    v = obj.get(name, LEGACY_EPOCH)
    if not isinstance(v, str) or not _EPOCH_RE.match(v):
        raise MalformedRequest(f"{name} must be empty or 32 lowercase hex digits")
    return v


def _hash_field(obj: dict, name: str) -> str:
    v = obj.get(name)
    if not isinstance(v, str) or not _HASH_RE.match(v):
        raise MalformedRequest(f"{name} must be 64 lowercase hex digits")
    return v


def encode_head_request(req: HeadRequest) -> bytes:
    return _pack({"t": "head", "gate": req.gate_id, "rid": req.request_id, "epoch": req.epoch})


def encode_epoch_registration(req: EpochRegistration) -> bytes:
    c = req.chain
    return _pack({"t": "epoch", "gate": req.gate_id, "rid": req.request_id, "epoch": c.epoch, "parent": c.parent,
                  "base_seq": c.base_seq, "base_hash": c.base_hash, "created": c.created, "nonce": c.nonce,
                  "key": c.public_key})


def _decode_epoch_registration(obj: dict) -> EpochRegistration:
    epoch = _epoch(obj)
    if not epoch:
        raise MalformedRequest("a registered epoch needs a 32-hex-digit id")
    nonce = obj.get("nonce")
    if not isinstance(nonce, str) or not _NONCE_RE.match(nonce):
        raise MalformedRequest("nonce must be 32 lowercase hex digits")
    key = obj.get("key")
    if not isinstance(key, str) or len(key) not in (0, 40):
        raise MalformedRequest("key must be a 40-character Z85 CURVE public key (or empty in development mode)")
    chain = ChainEpoch(epoch=epoch, parent=_epoch(obj, "parent"), base_seq=_int(obj, "base_seq"),
                       base_hash=_hash_field(obj, "base_hash"), created=_text(obj, "created"), nonce=nonce,
                       public_key=key)
    return EpochRegistration(gate_id=_gate_id(obj), request_id=_int(obj, "rid"), chain=chain)


def encode_audit_batch(batch: AuditBatch) -> bytes:
    return _pack({
        "t": "audit", "gate": batch.gate_id, "rid": batch.request_id, "epoch": batch.epoch,
        "first": batch.first_seq, "last": batch.last_seq,
        "rows": [[r.seq, r.ts, r.prev_hash, r.hash,
                  json.dumps(r.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)]
                 for r in batch.rows],
    })


def _refuse_constant(name: str) -> None:
    # NaN and Infinity are not JSON; the chain's canonical form (allow_nan=False) could not
    # hash a body holding them, so the central could neither verify nor re-export it.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _decode_row(raw: Any) -> AuditRow:
    if not isinstance(raw, list) or len(raw) != 5:
        raise MalformedRequest("each audit row is [seq, ts, prev_hash, hash, body_json]")
    seq, ts, prev, digest, body_text = raw
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise MalformedRequest("audit seq must be a positive integer")
    if not isinstance(ts, str) or not 0 < len(ts) <= 64:
        raise MalformedRequest(f"audit row {seq}: ts must be a short string")
    for name, value in (("prev_hash", prev), ("hash", digest)):
        if not isinstance(value, str) or not _HASH_RE.match(value):
            raise MalformedRequest(f"audit row {seq}: {name} must be 64 lowercase hex digits")
    if not isinstance(body_text, str):
        raise MalformedRequest(f"audit row {seq}: body must be JSON text")
    try:
        body = json.loads(body_text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise MalformedRequest(f"audit row {seq}: body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedRequest(f"audit row {seq}: body must be a JSON object")
    return AuditRow(seq=seq, ts=ts, prev_hash=prev, hash=digest, body=body)


def encode_health(report: HealthReport) -> bytes:
    return _pack({
        "t": "health", "gate": report.gate_id, "rid": report.request_id, "status": report.status,
        "sw": report.software_version, "models": report.model_versions, "wl_seq": report.watchlist_seq,
        "queue": report.queue_depth, "last_decision": report.last_decision_at, "scopes": list(report.scopes),
        "extra": report.extra, "a_epoch": report.audit_epoch, "a_seq": report.audit_last_seq,
        "a_head": report.audit_head_hash,
    })


def encode_enrol(req: EnrolRequest) -> bytes:
    tpl = np.ascontiguousarray(req.templates, dtype="<f4")
    return _pack({
        "t": "enrol", "station": req.station_id, "rid": req.request_id, "subject": req.subject_id,
        "name": req.display_name, "list": req.list_type, "scopes": list(req.scopes), "from": req.departure_airport,
        "vf": req.valid_from, "vu": req.valid_until, "model": req.model_id, "n": int(tpl.shape[0]),
        "dim": int(tpl.shape[1]), "tpl": tpl.tobytes()})


def _decode_enrol(obj: dict) -> EnrolRequest:
    try:
        station = check_id(obj.get("station"), "station id")
        subject = check_id(obj.get("subject"), "subject id")
    except ScopeError as exc:
        raise MalformedRequest(str(exc)) from exc
    name = obj.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_DISPLAY_NAME
                             or not name.isprintable()):
        raise MalformedRequest(f"name must be nil or 1-{MAX_DISPLAY_NAME} printable characters")
    list_type = _text(obj, "list")
    scopes_raw = obj.get("scopes")
    if not isinstance(scopes_raw, list) or not 1 <= len(scopes_raw) <= MAX_ENROL_SCOPES or \
            not all(isinstance(s, str) for s in scopes_raw):
        raise MalformedRequest(f"scopes must be a list of 1..{MAX_ENROL_SCOPES} scope names")
    try:
        scopes = tuple(sorted({parse_scope(s) for s in scopes_raw}))
    except ScopeError as exc:
        raise MalformedRequest(str(exc)) from exc
    airport = obj.get("from")
    if not isinstance(airport, str) or len(airport) != 3 or not airport.isascii() or not airport.isupper():
        raise MalformedRequest("from must be the 3-letter IATA code of the departure airport")
    vf = None if obj.get("vf") is None else _unix_time(obj, "vf")
    vu = _unix_time(obj, "vu", " (required)")
    if vf is not None and vu <= vf:
        raise MalformedRequest("vu must be after vf")
    model = _text(obj, "model")
    if not model:
        raise MalformedRequest("model must name the template model")
    n, dim, tpl = obj.get("n"), obj.get("dim"), obj.get("tpl")
    if type(n) is not int or type(dim) is not int or not (1 <= n <= MAX_ENROL_TEMPLATES and 1 <= dim <= MAX_DIM):
        raise MalformedRequest(f"templates: n must be 1..{MAX_ENROL_TEMPLATES} and dim 1..{MAX_DIM}, "
                               f"got n={n!r} dim={dim!r}")
    if not isinstance(tpl, bytes) or len(tpl) != n * dim * 4:
        raise MalformedRequest(f"tpl must be n*dim*4 = {n * dim * 4} bytes of float32")
    templates = np.frombuffer(tpl, dtype="<f4").reshape(n, dim)
    if not np.isfinite(templates).all():
        raise MalformedRequest("templates contain NaN or infinite values")
    if not (np.abs(np.einsum("ij,ij->i", templates, templates) - 1.0) <= 2e-3).all():
        raise MalformedRequest("templates are not L2-normalised")
    return EnrolRequest(station_id=station, request_id=_int(obj, "rid"), subject_id=subject, display_name=name,
                        list_type=list_type, scopes=scopes, departure_airport=airport, valid_from=vf, valid_until=vu,
                        model_id=model, templates=templates)


def decode_request(frame: bytes) -> AuditBatch | HealthReport | HeadRequest | EpochRegistration | EnrolRequest:
    obj = _unpack(frame)
    kind = obj.get("t")
    if kind == "enrol":
        return _decode_enrol(obj)
    if kind == "audit":
        rows_raw = obj.get("rows")
        if not isinstance(rows_raw, list) or not 1 <= len(rows_raw) <= MAX_BATCH_ROWS:
            raise MalformedRequest(f"an audit batch carries 1..{MAX_BATCH_ROWS} rows")
        rows = tuple(_decode_row(r) for r in rows_raw)
        for a, b in zip(rows, rows[1:], strict=False):  # consecutive pairs
            if b.seq <= a.seq:
                raise MalformedRequest(f"audit rows must be in increasing seq order ({a.seq} then {b.seq})")
        first, last = _int(obj, "first", 1), _int(obj, "last", 1)
        if first != rows[0].seq or last != rows[-1].seq:
            raise MalformedRequest(f"batch header says {first}..{last} but rows hold {rows[0].seq}..{rows[-1].seq}")
        return AuditBatch(gate_id=_gate_id(obj), request_id=_int(obj, "rid"), rows=rows, epoch=_epoch(obj))
    if kind == "head":
        return HeadRequest(gate_id=_gate_id(obj), request_id=_int(obj, "rid"), epoch=_epoch(obj))
    if kind == "epoch":
        return _decode_epoch_registration(obj)
    if kind == "health":
        models = obj.get("models")
        if not isinstance(models, dict) or len(models) > 32 or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= _MAX_TEXT and len(v) <= _MAX_TEXT
                for k, v in models.items()):
            raise MalformedRequest("models must map up to 32 model names to version strings")
        scopes = obj.get("scopes")
        if (not isinstance(scopes, list) or len(scopes) > 64
                or not all(isinstance(s, str) and len(s) <= _MAX_TEXT for s in scopes)):
            raise MalformedRequest("scopes must be a list of up to 64 subtrees")
        extra = obj.get("extra")
        if not isinstance(extra, dict) or len(_pack(extra)) > _MAX_EXTRA_BYTES:
            raise MalformedRequest(f"extra must be a map of at most {_MAX_EXTRA_BYTES} bytes")
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise MalformedRequest(f"extra must be JSON-compatible: {exc}") from exc
        return HealthReport(
            gate_id=_gate_id(obj), request_id=_int(obj, "rid"), status=_text(obj, "status"),
            software_version=_text(obj, "sw"), model_versions=dict(models), watchlist_seq=_int(obj, "wl_seq"),
            queue_depth=_int(obj, "queue"), last_decision_at=_optional_text(obj, "last_decision"),
            scopes=tuple(scopes), extra=extra, audit_epoch=_epoch(obj, "a_epoch"),
            audit_last_seq=None if obj.get("a_seq") is None else _int(obj, "a_seq"),
            audit_head_hash="" if obj.get("a_head") in (None, "") else _hash_field(obj, "a_head"))
    raise MalformedRequest(f"unknown request type {kind!r}")


def encode_reply(reply: Reply) -> bytes:
    return _pack({"rid": reply.request_id, "ok": reply.ok, "error": reply.error,
                  "durable": reply.durable_seq, "heads": reply.scope_heads, "conflicts": list(reply.conflicts),
                  "head_seq": reply.head_seq, "head": reply.head_hash, "known": reply.epoch_known,
                  "seq": reply.change_seq, "assigned": list(reply.assigned_scopes)})


def decode_reply(frame: bytes) -> Reply:
    obj = _unpack(frame)
    heads = obj.get("heads")
    if not isinstance(obj.get("ok"), bool) or not isinstance(obj.get("error"), str) or not isinstance(heads, dict):
        raise MalformedRequest("reply must carry ok, error and heads")
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in heads.items()):
        raise MalformedRequest("reply heads must map subtrees to sequence numbers")
    conflicts = obj.get("conflicts", [])
    if not isinstance(conflicts, list) or len(conflicts) > MAX_BATCH_ROWS or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 < c <= 2**63 - 1 for c in conflicts):
        raise MalformedRequest("reply conflicts must be a list of sequence numbers")
    head = obj.get("head", "")
    if not isinstance(head, str) or (head and not _HASH_RE.match(head)):
        raise MalformedRequest("reply head must be 64 lowercase hex digits")
    known = obj.get("known", True)
    if not isinstance(known, bool):
        raise MalformedRequest("reply known must be true or false")
    assigned = obj.get("assigned", [])
    if not isinstance(assigned, list) or len(assigned) > MAX_ASSIGNED_SCOPES or not all(
            isinstance(a, str) and a.startswith("/flight/") and _is_subtree(a) for a in assigned):
        raise MalformedRequest(f"reply assigned must list at most {MAX_ASSIGNED_SCOPES} flight subtrees")
    return Reply(request_id=_int(obj, "rid"), ok=obj["ok"], error=obj["error"], assigned_scopes=tuple(assigned),
                 durable_seq=_int(obj, "durable"), scope_heads=dict(heads), conflicts=tuple(sorted(conflicts)),
                 head_seq=_int(obj, "head_seq") if "head_seq" in obj else 0, head_hash=head, epoch_known=known,
                 change_seq=_int(obj, "seq") if "seq" in obj else 0)


def _is_subtree(text: str) -> bool:
    try:
        return parse_scope(text) == text
    except ScopeError:
        return False
