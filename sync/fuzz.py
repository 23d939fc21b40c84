"""Fuzzing the sync decoders: every byte string a peer can send must end in a valid object or
the decoder's own documented error, never in any other exception.

Why it is built this way:
- Seeds come from the real encoders (KVMsg.frames, encode_record, encode_audit_batch,
  encode_health, encode_reply, icanhaz_frames), so mutations start from frames that pass every
  check and each mutation probes the check just behind it, not only the first length test.
- Each frame is derived from `random.Random(seed, index)` alone: any finding is reproduced
  with `fuzz_one(seed, index)`, no corpus file needed.
- A decoded object must survive a round trip through the encoder. A decoder that accepts what
  the encoder cannot produce (a NaN in an audit body, a NUL in a property name) lets a peer
  plant data the rest of the system cannot re-send or re-hash; that is recorded as a finding
  like an unexpected exception.
- Rejections are counted by reason class: the error message with numbers and quoted values
  blanked, and any library detail (msgpack, json) cut off, so the table shows which rule fired.
"""
from __future__ import annotations

import random
import re
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np

from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.kvmsg import (
    ICANHAZ,
    PREV_PROPERTY,
    TTL_PROPERTY,
    KVMsg,
    MalformedMessage,
    hugz,
    icanhaz_frames,
    kthxbai,
    new_uuid,
    parse_icanhaz,
)
from sync.service_messages import (
    AuditBatch,
    EnrolRequest,
    HealthReport,
    MalformedRequest,
    Reply,
    decode_reply,
    decode_request,
    encode_audit_batch,
    encode_enrol,
    encode_health,
    encode_reply,
)
from sync.subject_record import MalformedRecord, SubjectRecord, decode_record, encode_record
from sync.transport import MAX_CONTROL_FRAME, MAX_KV_FRAME, MAX_SERVICE_FRAME

Frames = list[bytes]

MUTATIONS = ("none", "bitflip", "truncate", "extend", "frame_count", "oversize", "random_bytes", "field")

# Values that break type, range or encoding rules, swapped into decoded msgpack maps.
_HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 2**63, 2**64 - 1, -(2**63), 1.5, float("nan"), float("inf"), "", "x" * 300,
    "\x00", "a/b", "NaN", '{"a":NaN}', '{"a":Infinity}', '{"a":1e999}', "[1,2]", '"text"', "{", "0" * 64, "g" * 64, b"",
    b"\xff" * 8, [], [1, 2, 3], {}, {"k": "v"}, {1: 2}, msgpack.ExtType(5, b"x"), [[]] * 3,
)
_HOSTILE_KV_FRAMES: tuple[bytes, ...] = (
    b"", b"\xff\xfe", b"/" * 256, b"\x00" * 8, b"\xff" * 8, b"\x80" + b"\x00" * 7, b"\x00" * 15, b"\x00" * 17,
    b"a\x00b=1\n", b"=x\n", b"novalue\n", b"\xc3\x28=1\n", b"prev=-5\n", b"ttl=abc\n", b"\n\n\n",
)
_HOSTILE_SUBTREES: tuple[bytes, ...] = (
    b"", b"/", b"//", b"/a", b"a/", b"/a/", b"/a//b/", b"/a\x01/", b"\xff/", b"/lane/L1/", b"/" + b"x" * 70000 + b"/",
)


@dataclass(frozen=True)
class Target:
    """One decoder as the receiving code calls it, with its documented error and its encoder."""
    name: str
    decode: Callable[[Frames], Any]
    error: type[Exception]
    seed: Callable[[random.Random], Frames]  # a valid message from the real encoder
    reencode: Callable[[Any], Frames] | None  # None: re-encode the decoded request
    max_frame: int  # the transport's limit on one frame for this socket
    multi_frame: bool


@dataclass(frozen=True)
class Finding:
    """An unexpected exception or a failed round trip, with what is needed to reproduce it."""
    target: str
    mutation: str
    index: int
    kind: str  # "exception" or "roundtrip"
    error: str
    where: str
    frames_hex: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"target": self.target, "mutation": self.mutation, "index": self.index, "kind": self.kind,
                "error": self.error, "where": self.where, "frames_hex": list(self.frames_hex)}


@dataclass
class FuzzReport:
    seed: int
    frames: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: list[Finding] = field(default_factory=list)
    roundtrip_failures: list[Finding] = field(default_factory=list)
    rejected_by_reason: Counter = field(default_factory=Counter)
    by_target: dict[str, Counter] = field(default_factory=dict)
    by_mutation: dict[str, Counter] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self, max_findings: int = 20) -> dict:
        return {
            "seed": self.seed, "frames": self.frames, "accepted": self.accepted, "rejected": self.rejected,
            "crashes": len(self.crashes), "roundtrip_failures": len(self.roundtrip_failures),
            "rejected_by_reason": dict(self.rejected_by_reason.most_common()),
            "by_target": {k: dict(v) for k, v in self.by_target.items()},
            "by_mutation": {k: dict(v) for k, v in self.by_mutation.items()},
            "findings": [f.as_dict() for f in (self.crashes + self.roundtrip_failures)[:max_findings]],
            "frames_per_s": round(self.frames / self.seconds, 1) if self.seconds else None,
            "seconds": round(self.seconds, 2),
        }


# ----- seeds from the real encoders ---------------------------------------------------------

def _ident(rng: random.Random, prefix: str) -> str:
    return f"{prefix}{rng.randrange(10**6)}"


def _record(rng: random.Random) -> SubjectRecord:
    n, dim = rng.randint(1, 3), rng.choice((4, 8, 16, 32))
    np_rng = np.random.default_rng(rng.randrange(2**32))
    v = np_rng.standard_normal((n, dim)).astype(np.float32)
    vf = rng.choice((None, 1_700_000_000))
    return SubjectRecord(subject_id=_ident(rng, "p-"), list_type=rng.choice(("allow", "deny")),
                         model_id=rng.choice(("dlib-resnet", "mobilefacenet")),
                         templates=v / np.linalg.norm(v, axis=1, keepdims=True), valid_from=vf,
                         valid_until=rng.choice((None, 1_900_000_000)))


def _kvmsg(rng: random.Random) -> KVMsg:
    roll = rng.random()
    seq = rng.randrange(1, 10**9)
    if roll < 0.1:
        return hugz(seq)
    if roll < 0.2:
        return kthxbai(seq, f"/lane/{_ident(rng, 'L')}/")
    rec = _record(rng)
    key = f"/{rng.choice(('lane', 'flight'))}/{_ident(rng, 'S')}/{rec.subject_id}"
    props = {PREV_PROPERTY: str(rng.randrange(seq))}
    if rng.random() < 0.5:
        props[TTL_PROPERTY] = str(rng.randrange(86400))
    body = b"" if roll < 0.3 else encode_record(rec)
    return KVMsg(key=key, seq=seq, uuid=rng.choice((b"", new_uuid())), props=props, body=body)


def _audit_batch(rng: random.Random) -> AuditBatch:
    first = rng.randrange(1, 10**6)
    prev = GENESIS_HASH if first == 1 else f"{rng.getrandbits(256):064x}"
    rows = []
    for seq in range(first, first + rng.randint(1, 5)):
        ts = f"2026-11-23T13:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(10**6):06d}Z"
        body = {"event": rng.choice(("decision", "alarm", "staff")), "outcome": rng.choice(("allow", "deny")),
                "score": round(rng.random(), 4), "n": seq}
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return AuditBatch(gate_id=_ident(rng, "G"), request_id=rng.randrange(10**6), rows=tuple(rows))


def _health(rng: random.Random) -> HealthReport:
    return HealthReport(gate_id=_ident(rng, "G"), request_id=rng.randrange(10**6),
                        status=rng.choice(("ok", "degraded")),
                        software_version="0.1.0", model_versions={"dlib-resnet": "1"},
                        watchlist_seq=rng.randrange(10**6), queue_depth=rng.randrange(1000),
                        last_decision_at=rng.choice((None, "2026-11-23T13:16:48.123456Z")),
                        scopes=("/lane/L1/",), extra={"fps": rng.randrange(30), "temp_c": 41.5})


def _enrol(rng: random.Random) -> EnrolRequest:
    rec = _record(rng)
    return EnrolRequest(station_id=_ident(rng, "K"), request_id=rng.randrange(10**6), subject_id=rec.subject_id,
                        display_name=rng.choice((None, "Nguyễn Văn An")), list_type="allow",
                        scopes=("/checkpoint/SGN/", f"/flight/VN{rng.randrange(1, 9999)}-2026-12-02/"),
                        departure_airport="SGN", valid_from=None, valid_until=1_900_000_000, model_id=rec.model_id,
                        templates=rec.templates)


def _reply(rng: random.Random) -> Reply:
    return Reply(request_id=rng.randrange(10**6), ok=rng.random() < 0.8, error=rng.choice(("", "busy")),
                 durable_seq=rng.randrange(10**6), scope_heads={"/lane/L1/": rng.randrange(10**6)})


def _subtree(rng: random.Random) -> str:
    return rng.choice(("", f"/lane/{_ident(rng, 'L')}/", f"/flight/{_ident(rng, 'VN')}/"))


TARGETS: tuple[Target, ...] = (
    Target("kvmsg", lambda f: KVMsg.from_frames(f), MalformedMessage, lambda r: _kvmsg(r).frames(),
           lambda m: m.frames(), MAX_KV_FRAME, True),
    Target("icanhaz", parse_icanhaz, MalformedMessage, lambda r: icanhaz_frames(_subtree(r)),
           icanhaz_frames, MAX_CONTROL_FRAME, True),
    Target("subject_record", lambda f: decode_record(f[0]), MalformedRecord, lambda r: [encode_record(_record(r))],
           lambda rec: [encode_record(rec)], MAX_KV_FRAME, False),
    Target("audit_batch", lambda f: decode_request(f[0]), MalformedRequest,
           lambda r: [encode_audit_batch(_audit_batch(r))], None, MAX_SERVICE_FRAME, False),
    Target("health_report", lambda f: decode_request(f[0]), MalformedRequest, lambda r: [encode_health(_health(r))],
           None, MAX_SERVICE_FRAME, False),
    Target("enrol_request", lambda f: decode_request(f[0]), MalformedRequest, lambda r: [encode_enrol(_enrol(r))],
           None, MAX_SERVICE_FRAME, False),
    Target("service_reply", lambda f: decode_reply(f[0]), MalformedRequest, lambda r: [encode_reply(_reply(r))],
           lambda rep: [encode_reply(rep)], MAX_CONTROL_FRAME, False),
)


def _reencode_request(obj: Any) -> Frames:
    """audit_batch, health_report and enrol_request share one decoder, so a mutation may turn one
    into another."""
    if isinstance(obj, EnrolRequest):
        return [encode_enrol(obj)]
    return [encode_audit_batch(obj) if isinstance(obj, AuditBatch) else encode_health(obj)]


# ----- mutations -----------------------------------------------------------------------------

def _bitflip(rng: random.Random, frame: bytes) -> bytes:
    if not frame:
        return bytes([1 << rng.randrange(8)])
    b = bytearray(frame)
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def _hostile_msgpack(rng: random.Random, frame: bytes) -> bytes:
    """Decode a valid msgpack map, break one field (or one row element), encode it again."""
    obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    holder: Any = obj
    rows = obj.get("rows") if isinstance(obj, dict) else None
    if isinstance(rows, list) and rows and rng.random() < 0.5:
        holder = rows[rng.randrange(len(rows))]
    if isinstance(holder, list):
        i = rng.randrange(len(holder))
        holder[i] = rng.choice(_HOSTILE_VALUES)
    else:
        action = rng.random()
        name = rng.choice(sorted(holder, key=str))
        if action < 0.1:
            del holder[name]
        elif action < 0.2:
            holder[rng.choice(("extra_key", "zz", 7))] = rng.choice(_HOSTILE_VALUES)
        else:
            holder[name] = rng.choice(_HOSTILE_VALUES)
    return msgpack.packb(obj, use_bin_type=rng.random() < 0.8)


def _oversize(rng: random.Random, target: Target, frames: Frames) -> Frames:
    """Push a frame, or a field inside it, just past its limit; or fill a frame to the most
    the transport lets through."""
    i = rng.randrange(len(frames))
    roll = rng.random()
    if roll < 0.2:
        frames[i] = frames[i] + b"\x00" * max(0, target.max_frame - len(frames[i]))
    elif target.multi_frame:
        frames[i] = rng.choice((b"k" * 256, b"\x01" * 9, b"u" * 4096, b"p=" + b"v" * 70000 + b"\n"))
    else:
        obj = msgpack.unpackb(frames[i], raw=False, strict_map_key=False)
        name = rng.choice(sorted(obj))
        big = rng.choice(("s" * 257, ["/lane/L1/"] * 65, {f"m{k}": "1" for k in range(33)},
                          {"blob": "x" * (17 << 10)}, [[1, "t", "0" * 64, "0" * 64, "{}"]] * 5001, 2**63, 2**64 - 1))
        obj[name] = big
        frames[i] = msgpack.packb(obj, use_bin_type=True)
    return frames


def mutate(rng: random.Random, target: Target, frames: Frames, mutation: str) -> Frames:
    frames = list(frames)
    i = rng.randrange(len(frames))
    if mutation == "bitflip":
        frames[i] = _bitflip(rng, frames[i])
    elif mutation == "truncate":
        frames[i] = frames[i][:rng.randrange(len(frames[i]) + 1)]
    elif mutation == "extend":
        frames[i] = frames[i] + rng.randbytes(rng.randint(1, 64))
    elif mutation == "frame_count":
        roll = rng.random()
        if roll < 0.3:
            del frames[i]
        elif roll < 0.6:
            frames.insert(i, frames[i])
        elif roll < 0.9:
            frames.append(rng.choice((b"", rng.randbytes(rng.randint(1, 16)))))
        else:
            frames = []
    elif mutation == "oversize":
        frames = _oversize(rng, target, frames)
    elif mutation == "random_bytes":
        count = rng.randint(0, 7) if target.multi_frame else 1
        frames = [rng.randbytes(rng.randint(0, 256)) for _ in range(count)]
    elif mutation == "field":
        if target.name == "icanhaz":
            frames[1 if len(frames) > 1 else 0] = rng.choice(_HOSTILE_SUBTREES)
            if rng.random() < 0.2:
                frames[0] = rng.choice((b"ICANHAZ", ICANHAZ + b"?", b"icanhaz?", b""))
        elif target.multi_frame:
            frames[i] = rng.choice(_HOSTILE_KV_FRAMES)
            if i == 4 and frames[4] and rng.random() < 0.5:  # a body: break the record inside it
                frames[4] = _hostile_msgpack(rng, encode_record(_record(rng)))
        else:
            frames[0] = _hostile_msgpack(rng, frames[0])
    elif mutation != "none":
        raise ValueError(f"unknown mutation {mutation!r}")
    return frames


# ----- running -------------------------------------------------------------------------------

_QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")
_BRACKETED = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|\([^()]*\)")
_NUMBER = re.compile(r"(?<![\w-])-?\d+(?:\.\d+)?")
_VALUE_WORD = re.compile(r"\b(?:None|True|False|nan|inf|ExtType)\b|…+(?:\.\.…)?")


def reason_class(exc: BaseException) -> str:
    """The rule that fired, without the values that made it fire: quoted, bracketed and
    numeric values become '…', and a library's own detail after the message is cut off."""
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and str(cause) and text.endswith(str(cause)) and len(text) > len(str(cause)):
        text = text[: -len(str(cause))].rstrip(": ")
    text = _QUOTED.sub("…", text)
    while True:
        shorter = _BRACKETED.sub("…", text)
        if shorter == text:
            break
        text = shorter
    text = _VALUE_WORD.sub("…", _NUMBER.sub("…", text))
    return re.sub("…+", "…", text).rstrip(": ")[:120]


def _hexes(frames: Frames) -> tuple[str, ...]:
    return tuple(f[:2048].hex() + ("…" if len(f) > 2048 else "") for f in frames)


@dataclass(frozen=True)
class Outcome:
    target: str
    mutation: str
    frames: Frames
    result: str  # "accepted" | "rejected" | "exception" | "roundtrip"
    reason: str = ""
    where: str = ""


def _frame_plan(seed: int, index: int) -> tuple[random.Random, Target, str]:
    rng = random.Random(seed * 1_000_003 + index)
    target = TARGETS[rng.randrange(len(TARGETS))]
    # A single-frame decoder is handed exactly one frame by the receiving code.
    usable = [m for m in MUTATIONS[1:] if target.multi_frame or m != "frame_count"]
    mutation = "none" if rng.random() < 0.04 else usable[rng.randrange(len(usable))]
    return rng, target, mutation


def fuzz_one(seed: int, index: int) -> Outcome:
    """Build frame `index` of run `seed`, decode it and classify what happened."""
    rng, target, mutation = _frame_plan(seed, index)
    frames = mutate(rng, target, target.seed(rng), mutation)
    return check_frames(target, frames, mutation)


def check_frames(target: Target, frames: Frames, mutation: str = "given") -> Outcome:
    if not target.multi_frame and len(frames) != 1:
        raise ValueError(f"{target.name} decodes exactly one frame")
    try:
        obj = target.decode(frames)
    except target.error as exc:
        return Outcome(target.name, mutation, frames, "rejected", reason_class(exc))
    except Exception as exc:  # noqa: BLE001 - any other exception is what the fuzzer looks for
        return Outcome(target.name, mutation, frames, "exception", f"{type(exc).__name__}: {exc}"[:300],
                       "".join(traceback.format_exception(exc)[-3:])[-600:])
    reencode = target.reencode or _reencode_request
    try:
        again = target.decode(reencode(obj))
        same = again == obj
        problem = "" if same else "decoded again to a different object"
    except Exception as exc:  # noqa: BLE001
        same, problem = False, f"{type(exc).__name__}: {exc}"[:300]
    if not same:
        return Outcome(target.name, mutation, frames, "roundtrip", f"accepted but not re-encodable: {problem}")
    return Outcome(target.name, mutation, frames, "accepted")


def run_fuzz(frames: int = 100_000, seed: int = 0) -> FuzzReport:
    report = FuzzReport(seed=seed)
    started = time.perf_counter()
    for index in range(frames):
        out = fuzz_one(seed, index)
        report.frames += 1
        report.by_target.setdefault(out.target, Counter())[out.result] += 1
        report.by_mutation.setdefault(out.mutation, Counter())[out.result] += 1
        if out.result == "accepted":
            report.accepted += 1
        elif out.result == "rejected":
            report.rejected += 1
            report.rejected_by_reason[f"{out.target}: {out.reason}"] += 1
        else:
            kind = "exception" if out.result == "exception" else "roundtrip"
            finding = Finding(out.target, out.mutation, index, kind,
                              out.reason, out.where, _hexes(out.frames))
            (report.crashes if out.result == "exception" else report.roundtrip_failures).append(finding)
    report.seconds = time.perf_counter() - started
    return report
