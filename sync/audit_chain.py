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
