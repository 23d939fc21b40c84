"""Forgetting withdrawn subjects at the central, and proving a subject id is gone.

Revoking or expiring a subject deletes its templates and hashmap keys at once, but two traces
stay on purpose for a while: the change log (kv_log) keeps the enrolment bodies, templates
included, until the server prunes it (`log_retention_s`, the KVSET de-duplication window),
and the `subjects` row keeps the status ("revoked", "expired") for `gate-central list`.
`forget_withdrawn` removes the rows once that window has passed, so a subject whose validity
ended leaves no trace of its id in the tables; the database runs with secure_delete, and a
WAL checkpoint afterwards leaves the zeroed pages in the main file only.

`subject_presence` is the proof an operator (or a data-protection auditor) can run:
`gate-ops subject-gone ID`. It checks each table and then scans the raw bytes of the
database and its WAL for the id, so a copy in a free page or an index the table checks do
not know about still shows up. Received audit records naming the id are the gate's legal
log, kept by design; the byte scan counts them separately and reports them, not as a failure.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True)
class PlaceCheck:
    """One place a subject id could be: gone (ok) or not, with what was found."""

    place: str
    ok: bool
    detail: str
    counts: bool = True  # False: reported for information, not part of the verdict

    def line(self) -> str:
        verdict = ("PASS" if self.ok else "FAIL") if self.counts else "INFO"
        return f"{verdict} {self.place}: {self.detail}"


def all_gone(checks: Sequence[PlaceCheck]) -> bool:
    return all(c.ok for c in checks if c.counts)


def count_bytes(paths: Iterable[Path], needle: bytes) -> int:
    """Occurrences of `needle` in the raw bytes of `paths` (missing files count 0), read in
    chunks so a large database is never loaded whole."""
    if not needle:
        raise ValueError("an empty needle matches everywhere")
    found = 0
    for path in paths:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue
        with f:
            tail = b""
            while chunk := f.read(_SCAN_CHUNK):
                window = tail + chunk
                found += window.count(needle)
                # keep len-1 bytes so a match across the chunk border is seen once, never twice
                tail = window[-(len(needle) - 1):] if len(needle) > 1 else b""
    return found


def db_files(db_path: Path) -> list[Path]:
    """A SQLite database file and its WAL, where deleted bytes can linger."""
    return [db_path, db_path.with_name(db_path.name + "-wal")]


def _subject_keys_clause() -> str:
    # kv_log has no subject column: a key is <scope><subject id>, and scope is stored beside it
    return "substr(key, length(scope) + 1) = ?"


def subject_presence(central, subject_id: str) -> list[PlaceCheck]:
    """Every place at the central that could still hold `subject_id`."""
    conn = central.conn
    checks = []
    row = conn.execute("SELECT status, reason FROM subjects WHERE subject_id = ?", (subject_id,)).fetchone()
    checks.append(PlaceCheck("subjects", row is None, "no row" if row is None else
                             f"row with status {row[0]!r}" + (f" ({row[1]})" if row[1] else "")))
    n = conn.execute("SELECT COUNT(*) FROM templates WHERE subject_id = ?", (subject_id,)).fetchone()[0]
    checks.append(PlaceCheck("templates", n == 0, f"{n} template rows"))
    keys = [r[0] for r in conn.execute("SELECT key FROM kv WHERE subject_id = ? ORDER BY key", (subject_id,))]
    checks.append(PlaceCheck("hashmap keys", not keys, ", ".join(keys) if keys else "no keys"))
    entries, bodies = conn.execute(
        f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN length(body) > 0 THEN 1 ELSE 0 END), 0) FROM kv_log "
        f"WHERE {_subject_keys_clause()}",
        (subject_id,)).fetchone()
    checks.append(PlaceCheck("change log", entries == 0,
                             f"{entries} entries, {bodies} with an enrolment record (templates)"))
    needle = subject_id.encode("utf-8")
    in_audit = sum(body.count(subject_id) for (body,) in conn.execute(
        f"SELECT body FROM audit WHERE {central.db.contains('body')}", (subject_id,)))
    files = central.db.files()
    if files:
        raw = count_bytes(files, needle)
        stray = raw - in_audit
        checks.append(PlaceCheck("database bytes", stray <= 0,
                                 f"{max(stray, 0)} occurrences outside received audit records "
                                 f"({files[0].name} and its WAL)"))
    else:
        checks.append(PlaceCheck("database bytes", True, "not scanned: PostgreSQL's data files belong to the "
                                 "database server; deleted rows leave them when VACUUM reclaims the pages "
                                 "(docs/security.md)", counts=False))
    checks.append(PlaceCheck("received audit", True, f"{in_audit} mentions in gates' audit records "
                                                     "(the legal log, kept by design)", counts=False))
    return checks


def forget_withdrawn(central, published_seq: int, before: float) -> list[str]:
    """Delete every trace of subjects revoked or expired before `before` (epoch seconds):
    their `subjects` row and their change-log entries already published (seq <= published_seq,
    so gates that are behind still receive the deletion). Returns the ids forgotten."""
    conn = central.conn
    with central.db.write_transaction():
        due = [r[0] for r in conn.execute(
            "SELECT subject_id FROM subjects WHERE status != 'active' AND updated_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM kv WHERE kv.subject_id = subjects.subject_id) ORDER BY subject_id",
            (before,))]
        forgotten = []
        for subject_id in due:
            waiting = conn.execute(f"SELECT 1 FROM kv_log WHERE {_subject_keys_clause()} AND seq > ? LIMIT 1",
                                   (subject_id, published_seq)).fetchone()
            if waiting:  # its deletion has not gone out yet: keep the trail until it has
                continue
            conn.execute(f"DELETE FROM kv_log WHERE {_subject_keys_clause()}", (subject_id,))
            conn.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
            conn.execute("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))
            forgotten.append(subject_id)
    if forgotten:
        central.db.after_forget()
        log.info("forgot %d withdrawn subject(s)", len(forgotten))
    return forgotten


class EraseRefused(ValueError):
    """An erase the central will not do (an active subject, a missing operator); nothing changed."""


@dataclass(frozen=True)
class EraseResult:
    subject_id: str
    found: bool
    templates: int  # template rows removed
    log_bodies: int  # change-log entries carrying an enrolment record (templates) removed
    log_deletes: int  # change-log deletion entries removed
    log_kept: int  # deletion entries younger than settle_s, kept for the publisher (no templates)


def erase_subject(central, subject_id: str, operator: str, reason: str, now: float | None = None,
                  settle_s: float = 60.0) -> EraseResult:
    """Erase now a withdrawn subject (`gate-ops erase`): its `subjects` row (the tombstone), any
    template rows and every change-log entry carrying its enrolment record go at once, instead
    of at `log_retention_s`. Deletion entries (key only, no templates) younger than `settle_s`
    stay so a publisher that has not sent them yet still does; a gate that missed them learns
    the deletion from its next snapshot. The erasure is recorded in `erasures` under the id's
    sha256 (not the id), with who and why, and logged. An active subject is refused: revoke it
    first (its keys would be published again otherwise)."""
    for name, value in (("operator", operator), ("reason", reason)):
        if not isinstance(value, str) or not value.strip() or len(value) > 256:
            raise EraseRefused(f"an erase needs a {name} (1-256 characters)")
    now = time.time() if now is None else now
    conn = central.conn
    clause = _subject_keys_clause()
    with central.db.write_transaction():
        row = conn.execute("SELECT status FROM subjects WHERE subject_id = ?", (subject_id,)).fetchone()
        if (row is not None and row[0] == "active") or conn.execute(
                "SELECT 1 FROM kv WHERE subject_id = ? LIMIT 1", (subject_id,)).fetchone():
            raise EraseRefused(f"subject {subject_id} is active: revoke it first (gate-central revoke), then erase")
        templates = conn.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,)).rowcount
        bodies = conn.execute(f"DELETE FROM kv_log WHERE {clause} AND length(body) > 0", (subject_id,)).rowcount
        deletes = conn.execute(f"DELETE FROM kv_log WHERE {clause} AND logged_at < ?",
                               (subject_id, now - settle_s)).rowcount
        kept = conn.execute(f"SELECT COUNT(*) FROM kv_log WHERE {clause}", (subject_id,)).fetchone()[0]
        subjects = conn.execute("DELETE FROM subjects WHERE subject_id = ?", (subject_id,)).rowcount
        found = bool(subjects or templates or bodies or deletes or kept)
        if found:
            conn.execute("INSERT INTO erasures(subject_sha256, operator, reason, erased_at, templates, log_entries) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (hashlib.sha256(subject_id.encode("utf-8")).hexdigest(), operator, reason, now, templates,
                          bodies + deletes))
    if found:
        central.db.after_forget()
        log.warning("erased withdrawn subject %s now (by %s: %s): %d template row(s), %d change-log record(s) "
                    "removed, %d recent deletion entr(ies) kept", subject_id, operator, reason, templates,
                    bodies + deletes, kept)
    return EraseResult(subject_id, found, templates, bodies, deletes, kept)
