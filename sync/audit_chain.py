"""The audit hash chain, as a wire contract shared by the gate that writes it and the
central that verifies it.

Each audit record commits to its predecessor: hash = sha256(canonical JSON of
{seq, ts, prev, body}). Deleting, editing, reordering or inserting a record breaks every
later link, so a stolen or tampered gate cannot quietly rewrite its history. The rule lives
in sync/ because both ends need it and gate/ may import sync/, never the other way round.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditRow:
    seq: int  # per-gate, strictly increasing by 1 from 1
    ts: str  # ISO-8601 UTC with microseconds, e.g. 2026-11-23T13:16:48.123456Z
    prev_hash: str
    hash: str
    body: dict[str, Any]  # JSON-serialisable: event type, decision, scores, operator, ...


def canonical_bytes(seq: int, ts: str, prev_hash: str, body: dict[str, Any]) -> bytes:
    return json.dumps(
        {"seq": seq, "ts": ts, "prev": prev_hash, "body": body},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    ).encode("utf-8")


def record_hash(seq: int, ts: str, prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(seq, ts, prev_hash, body)).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    records: int
    first_broken_seq: int | None = None
    reason: str = ""


def verify_chain(rows: Iterable[AuditRow], prev_hash: str = GENESIS_HASH, prev_seq: int = 0) -> ChainCheck:
    """Check links and hashes; stop at and report the first broken link.

    `prev_hash`/`prev_seq` let a caller verify a slice (e.g. records since the last pull)
    anchored on the last record it already trusted.
    """
    n = 0
    for row in rows:
        n += 1
        if row.seq != prev_seq + 1:
            return ChainCheck(False, n, row.seq,
                              f"sequence jumps from {prev_seq} to {row.seq} (records missing or reordered)")
        if row.prev_hash != prev_hash:
            return ChainCheck(False, n, row.seq, "prev_hash does not match the previous record's hash "
                                                 "(record removed or altered before it)")
        want = record_hash(row.seq, row.ts, row.prev_hash, row.body)
        if row.hash != want:
            return ChainCheck(False, n, row.seq, "record content does not match its hash (record altered)")
        prev_hash, prev_seq = row.hash, row.seq
    return ChainCheck(True, n)


# ---- chain epochs -------------------------------------------------------------------------
# A gate's audit history is one or more chains. The first is epoch "" (every log starts in it).
# When a gate finds that its log does not continue the central's copy (state dir wiped or
# restored from an old backup, tail truncated), it does not overwrite anything: it starts a new
# epoch that forks from the last record both sides hold identically (`base_seq`, `base_hash`)
# and uploads the rest of its log under it. The central keys chains by (gate, epoch, seq), so
# both chains stay whole and each verifies on its own from its base. See docs/protocol.md.

LEGACY_EPOCH = ""
_EPOCH_TAG = "edgegate-audit-epoch-v1"


def epoch_id(gate_id: str, public_key: str, created: str, nonce: str) -> str:
    """The epoch's name, a commitment to the gate, the CURVE key that registers it and when:
    the central recomputes it from the key that authenticated the registration, so an epoch
    cannot be claimed by another key, and a new epoch never collides with an old one."""
    text = "\n".join((_EPOCH_TAG, gate_id, public_key, created, nonce))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class ChainEpoch:
    """Which chain a gate's records from `base_seq + 1` on belong to."""

    epoch: str = LEGACY_EPOCH  # "" or 32 hex digits from epoch_id()
    parent: str = LEGACY_EPOCH  # the epoch this one forks from
    base_seq: int = 0  # last record shared with the parent (0 = genesis)
    base_hash: str = GENESIS_HASH
    created: str = ""  # ISO-8601 UTC, part of the id
    nonce: str = ""  # 32 hex digits, part of the id
    public_key: str = ""  # Z85 CURVE key of the gate that made it ("" in development mode)

    @classmethod
    def fork(cls, gate_id: str, public_key: str, parent: str, base_seq: int, base_hash: str,
             created: str, nonce: str) -> "ChainEpoch":
        return cls(epoch=epoch_id(gate_id, public_key, created, nonce), parent=parent, base_seq=base_seq,
                   base_hash=base_hash, created=created, nonce=nonce, public_key=public_key)
