"""The gate's tamper-evident audit log: an append-only, hash-chained SQLite table.

Why it is shaped this way:
- Audit first, then the open command. `append()` returns only once the record is committed
  with synchronous=FULL in WAL mode (the WAL is fsynced at every commit), so a door that
  opened always has its record on disk, even after a power cut right after the open.
- Each record carries the sha256 of its predecessor (rule in sync/audit_chain.py, shared with
  central), so editing, deleting, reordering or inserting records breaks the chain at a
  seq that `verify()` reports. The chain is read back from the database inside the write
  transaction on every append, never cached, so after any failed write the next successful
  append links to the last record that really committed.
- A failed write (disk full, read-only file, I/O error, lock held too long) raises
  `AuditWriteError` and leaves nothing half-written: the transaction rolls back whole. The
  daemon must not open the gate when append raises (fail closed). In the rare case where
  SQLite reports an I/O error during COMMIT after the record reached the disk, the record
  exists but the caller saw an error; the gate stays shut, which the record does not contradict
  (it records the decision, not the door movement).
- Triggers refuse UPDATE and DELETE of records, except pruning behind the anchor. They stop
  bugs and careless tools, not an attacker with the file: the hash chain and central's copy
  are what detect an attacker.

Retention: `prune()` deletes a prefix of records that central has acknowledged and that are
older than the retention period. The last deleted record's seq and hash become the *anchor*
(kept in `audit_state`), and `verify()` checks the remaining records starting from it, so the
rest of the chain stays verifiable locally. The anchor itself is vouched for by central,
which holds the pruned records (they were acked) and can compare the anchor hash with its
copy of that record.

Chain epoch: `audit_epoch` holds which chain (sync.audit_chain.ChainEpoch) the records after
its base belong to at the central; none means the first chain. The uploader moves the log to a
new epoch when the central holds different records under the same seqs (state dir restored or
wiped, tail truncated), and lowers the ack to the fork point so every differing record is sent
again under the new epoch. Records are never rewritten: the epoch is a label beside them.
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from gate.sqlite_store import PrivateSqliteFile, utc_iso, utc_now
from sync.audit_chain import GENESIS_HASH, AuditRow, ChainCheck, ChainEpoch, record_hash, verify_chain

log = logging.getLogger(__name__)

AUDIT_DB_NAME = "audit.db"
# A decision record (scores, timings, quality figures, ids) is well under 2 KiB. The cap keeps
# images and embedding vectors out of the audit log, where they must never be.
MAX_BODY_BYTES = 8192
_ITER_BATCH = 500

_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN
        SELECT RAISE(ABORT, 'audit records are append-only');
    END""",
    """CREATE TRIGGER IF NOT EXISTS audit_prune_only_behind_anchor BEFORE DELETE ON audit
    WHEN OLD.seq > (SELECT anchor_seq FROM audit_state WHERE id = 1)
    BEGIN
        SELECT RAISE(ABORT, 'audit records are append-only; only records behind the prune anchor may be deleted');
    END""",
)


class AuditWriteError(RuntimeError):
    """The record was not committed; the caller must not act as if it had been."""


@dataclass(frozen=True)
class PruneResult:
    removed: int
    anchor_seq: int  # seq of the last removed record (0 = nothing ever pruned)
    anchor_hash: str


def canonical_body(body: Mapping[str, Any]) -> str:
    """The body as stored: canonical JSON (the same settings the chain hash uses), refusing
    what cannot round-trip or must not be in the log."""
    if not isinstance(body, Mapping):
        raise TypeError(f"an audit body must be a mapping, not {type(body).__name__}")
    event = body.get("event")
    if not isinstance(event, str) or not event:
        raise ValueError("an audit body needs a non-empty string 'event' (e.g. 'decision', 'manual_action')")
    text = json.dumps(_json_safe(body, "body"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    size = len(text.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise ValueError(f"audit body for event {event!r} is {size} bytes (limit {MAX_BODY_BYTES}): "
                         "the audit log holds figures and ids, never images or templates")
    return text


def _json_safe(value: Any, where: str) -> Any:
    """Turn numpy scalars and tuples into plain JSON values; refuse arrays and bytes outright
    (an array in an audit body is almost always a template or an image by mistake)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}; audit figures must be finite")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            out[key] = _json_safe(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{where} is raw bytes; the audit log never stores images or templates")
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalar
        return _json_safe(value.item(), where)
    if hasattr(value, "shape"):
        raise TypeError(f"{where} is an array {value.shape}; the audit log never stores "
                        "images or templates (log figures such as scores, not vectors)")
    raise TypeError(f"{where} has type {type(value).__name__}, which is not JSON")


class AuditLog:
    """The audit log in `<directory>/audit.db`.

    The sync agent is handed this object and uses only `read_unsent`, `mark_acked`,
    `unsent_count` and `last_seq`; gatectl uses `tail`, `iter_since`, `verify`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        read_only: bool = False,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout_s: float = 5.0,
        max_db_bytes: int | None = None,
    ) -> None:
        self._file = PrivateSqliteFile(Path(directory) / AUDIT_DB_NAME, synchronous="FULL", secure_delete=True,
                                       read_only=read_only, busy_timeout_s=busy_timeout_s)
        self._clock = clock
        try:
            if not read_only:
                self._create_schema()
                if max_db_bytes is not None:
                    self.set_size_limit(max_db_bytes)
            elif not self._file.writer["audit"].exists():
                raise ValueError(f"{self.path} is not an edgegate audit log (no audit table)")
        except BaseException:
            self._file.close()
            raise

    @property
    def path(self) -> Path:
        return self._file.path

    def _create_schema(self) -> None:
        with self._file.write() as db:
            db.table("audit").create({"seq": int, "ts": str, "prev_hash": str, "hash": str, "body": str},
                               pk="seq", not_null={"ts", "prev_hash", "hash", "body"}, strict=True,
                               if_not_exists=True)
            db.table("audit_state").create({"id": int, "acked_upto": int, "anchor_seq": int, "anchor_hash": str},
                                     pk="id", not_null={"acked_upto", "anchor_seq", "anchor_hash"}, strict=True,
                                     if_not_exists=True)
            db.execute("INSERT OR IGNORE INTO audit_state (id, acked_upto, anchor_seq, anchor_hash) "
                       "VALUES (1, 0, 0, ?)", [GENESIS_HASH])
            db.table("audit_epoch").create(
                {"id": int, "epoch": str, "parent": str, "base_seq": int, "base_hash": str, "created": str,
                 "nonce": str, "public_key": str},
                pk="id", not_null={"epoch", "parent", "base_seq", "base_hash", "created", "nonce", "public_key"},
                strict=True, if_not_exists=True)
            for trigger in _TRIGGERS:
                db.execute(trigger)

    def set_size_limit(self, max_db_bytes: int) -> None:
        """Cap the database size (SQLite max_page_count). At the cap appends fail with
        AuditWriteError (the gate fails closed) instead of the log filling a shared disk;
        raising the cap or pruning acked records lets appends resume."""
        page_size = self._file.writer.execute("PRAGMA page_size").fetchone()[0]
        self._file.set_writer_pragma(f"max_page_count={max(1, max_db_bytes // page_size)}")

    # ---- writing ---------------------------------------------------------------------------

    def append(self, body: Mapping[str, Any]) -> AuditRow:
        """Write one record and return it once it is durable on disk.

        Raises ValueError/TypeError for a body that cannot be logged (nothing written) and
        AuditWriteError when the database refuses the write (nothing written either).
        """
        body_text = canonical_body(body)
        stored_body = json.loads(body_text)
        try:
            with self._file.write() as db:
                prev_seq, prev_hash = self._last_link(db)
                seq = prev_seq + 1
                ts = utc_iso(self._clock())
                row = AuditRow(seq=seq, ts=ts, prev_hash=prev_hash,
                               hash=record_hash(seq, ts, prev_hash, stored_body), body=stored_body)
                db.execute("INSERT INTO audit (seq, ts, prev_hash, hash, body) VALUES (?, ?, ?, ?, ?)",
                           [row.seq, row.ts, row.prev_hash, row.hash, body_text])
        except sqlite3.Error as exc:
            log.error("audit append failed (%s): %s", type(exc).__name__, exc)
            raise AuditWriteError(f"audit record for event {body['event']!r} was not written to {self.path}: "
                                  f"{exc}") from exc
        return row

    @staticmethod
    def _last_link(db) -> tuple[int, str]:
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if last is not None:
            return last[0], last[1]
        anchor = db.execute("SELECT anchor_seq, anchor_hash FROM audit_state WHERE id = 1").fetchone()
        return anchor[0], anchor[1]

    def mark_acked(self, upto_seq: int) -> None:
        """Central has stored every record up to `upto_seq`. Idempotent; never moves back
        (a late, smaller ack is ignored); an ack past the end of the log is refused."""
        if upto_seq < 0:
            raise ValueError(f"ack seq must be >= 0, got {upto_seq}")
        try:
            with self._file.write() as db:
                last, _ = self._last_link(db)
                if upto_seq > last:
                    raise ValueError(f"central acknowledged seq {upto_seq} but this log ends at seq {last}")
                db.execute("UPDATE audit_state SET acked_upto = MAX(acked_upto, ?) WHERE id = 1", [upto_seq])
        except sqlite3.Error as exc:
            raise AuditWriteError(f"could not record the ack up to seq {upto_seq} in {self.path}: {exc}") from exc

    def start_epoch(self, chain: ChainEpoch) -> None:
        """Records after `chain.base_seq` now belong to `chain`: persisted before the central
        is told (a restart re-registers the same epoch), and the ack drops to the fork point so
        every record after it is uploaded again under the new chain."""
        try:
            with self._file.write() as db:
                last, _ = self._last_link(db)
                if not 0 <= chain.base_seq <= last:
                    raise ValueError(f"an epoch cannot fork at seq {chain.base_seq}: this log ends at {last}")
                db.execute("INSERT INTO audit_epoch "
                           "(id, epoch, parent, base_seq, base_hash, created, nonce, public_key) "
                           "VALUES (1, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET epoch = excluded.epoch, "
                           "parent = excluded.parent, base_seq = excluded.base_seq, base_hash = excluded.base_hash, "
                           "created = excluded.created, nonce = excluded.nonce, public_key = excluded.public_key",
                           [chain.epoch, chain.parent, chain.base_seq, chain.base_hash, chain.created, chain.nonce,
                            chain.public_key])
                db.execute("UPDATE audit_state SET acked_upto = MIN(acked_upto, ?) WHERE id = 1", [chain.base_seq])
        except sqlite3.Error as exc:
            raise AuditWriteError(f"could not start audit chain epoch {chain.epoch} in {self.path}: {exc}") from exc
        log.warning("audit log moved to chain epoch %s (forked from %s at seq %d)", chain.epoch,
                    chain.parent or "the first chain", chain.base_seq)

    def prune(self, older_than: timedelta, now: datetime | None = None) -> PruneResult:
        """Delete the longest prefix of records that are acked and older than `older_than`.

        Only a prefix goes, so the remainder still links to the anchor (see module docstring);
        an unacked or recent record stops the pruning there even if later ones are older.
        """
        cutoff = utc_iso((now or self._clock()) - older_than)
        try:
            with self._file.write() as db:
                acked, anchor_seq, anchor_hash = db.execute(
                    "SELECT acked_upto, anchor_seq, anchor_hash FROM audit_state WHERE id = 1").fetchone()
                first_kept = db.execute("SELECT MIN(seq) FROM audit WHERE seq <= ? AND ts >= ?",
                                        [acked, cutoff]).fetchone()[0]
                upto = acked if first_kept is None else first_kept - 1
                last_removed = db.execute("SELECT seq, hash FROM audit WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                                          [upto]).fetchone()
                if last_removed is None:
                    return PruneResult(0, anchor_seq, anchor_hash)
                db.execute("UPDATE audit_state SET anchor_seq = ?, anchor_hash = ? WHERE id = 1", list(last_removed))
                removed = db.execute("DELETE FROM audit WHERE seq <= ?", [upto]).rowcount
        except sqlite3.Error as exc:
            raise AuditWriteError(f"pruning {self.path} failed: {exc}") from exc
        log.info("pruned %d acked audit records up to seq %d", removed, last_removed[0])
        return PruneResult(removed, last_removed[0], last_removed[1])

    # ---- reading (any thread) -------------------------------------------------------------

    def last_seq(self) -> int:
        seq, _ = self._last_link(self._file.reader())
        return seq

    def chain_epoch(self) -> ChainEpoch:
        row = self._file.reader().execute(
            "SELECT epoch, parent, base_seq, base_hash, created, nonce, public_key FROM audit_epoch WHERE id = 1"
        ).fetchone()
        return ChainEpoch(*row) if row else ChainEpoch()

    def link_at(self, seq: int) -> str | None:
        """The hash of record `seq` (the anchor's for a pruned-to seq, genesis for 0), or None
        when this log does not hold it (pruned away, or past its end)."""
        db = self._file.reader()
        anchor_seq, anchor_hash = db.execute("SELECT anchor_seq, anchor_hash FROM audit_state WHERE id = 1").fetchone()
        if seq == anchor_seq:
            return anchor_hash
        row = db.execute("SELECT hash FROM audit WHERE seq = ?", [seq]).fetchone()
        return row[0] if row else None

    def acked_seq(self) -> int:
        return self._file.reader().execute("SELECT acked_upto FROM audit_state WHERE id = 1").fetchone()[0]

    def unsent_count(self) -> int:
        db = self._file.reader()
        return db.execute("SELECT COUNT(*) FROM audit WHERE seq > (SELECT acked_upto FROM audit_state WHERE id = 1)"
                          ).fetchone()[0]

    def read_unsent(self, limit: int) -> list[AuditRow]:
        """The oldest `limit` records central has not acknowledged, in seq order."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return self._rows("WHERE seq > (SELECT acked_upto FROM audit_state WHERE id = 1) ORDER BY seq LIMIT ?", [limit])

    def tail(self, n: int) -> list[AuditRow]:
        """The last `n` records, oldest first."""
        if n < 1:
            return []
        return list(reversed(self._rows("ORDER BY seq DESC LIMIT ?", [n])))

    def iter_since(self, seq: int) -> Iterator[AuditRow]:
        """Records with seq > `seq`, in order, read in batches (no long-held read snapshot)."""
        after = seq
        while True:
            batch = self._rows("WHERE seq > ? ORDER BY seq LIMIT ?", [after, _ITER_BATCH])
            yield from batch
            if len(batch) < _ITER_BATCH:
                return
            after = batch[-1].seq

    def verify(self) -> ChainCheck:
        """Check the whole stored chain from the anchor (genesis if never pruned).

        Also reports a log that ends before the last acknowledged record: tail records were
        removed after central stored them.
        """
        with self._file.snapshot() as db:
            acked, anchor_seq, anchor_hash = db.execute(
                "SELECT acked_upto, anchor_seq, anchor_hash FROM audit_state WHERE id = 1").fetchone()
            cursor = db.execute("SELECT seq, ts, prev_hash, hash, body FROM audit ORDER BY seq")
            check = verify_chain((_row_for_check(r) for r in cursor), prev_hash=anchor_hash, prev_seq=anchor_seq)
            if check.ok:
                last, _ = self._last_link(db)
                if last < acked:
                    return ChainCheck(False, check.records, last + 1,
                                      f"log ends at seq {last} but central acknowledged up to {acked} "
                                      "(records removed)")
            return check

    def _rows(self, where_order_limit: str, params: list) -> list[AuditRow]:
        cursor = self._file.reader().execute(
            f"SELECT seq, ts, prev_hash, hash, body FROM audit {where_order_limit}", params)
        return [_row(r) for r in cursor]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row(record: tuple) -> AuditRow:
    seq, ts, prev_hash, hash_, body = record
    return AuditRow(seq=seq, ts=ts, prev_hash=prev_hash, hash=hash_, body=json.loads(body))


def _row_for_check(record: tuple) -> AuditRow:
    """Like _row, but a body that is no longer valid JSON becomes a placeholder whose hash
    cannot match, so verify() reports that record as altered instead of crashing."""
    try:
        return _row(record)
    except ValueError:
        seq, ts, prev_hash, hash_, body = record
        return AuditRow(seq=seq, ts=ts, prev_hash=prev_hash, hash=hash_, body={"unparseable_body": str(body)})
