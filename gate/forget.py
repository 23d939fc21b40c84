"""Proof that a subject id is gone from a gate's disk (`gatectl watchlist gone ID`).

After a revocation the watchlist keeps a tombstone row (the id and the sequence of the
revocation, no templates, no scopes) so a late re-delivery of the enrolment cannot bring the
subject back; `WatchlistStore.purge_expired` removes that row too once the subject's
validity window has closed. So "gone" means: no row in any watchlist table, and — because a
deleted row can survive in a free page or an old WAL frame — no occurrence of the id's bytes
in watchlist.db or its WAL. Audit records naming the id are the lane's legal log, kept for
`audit.retention_days` by design; they are counted and reported, not judged.

Reads the files read-only, so it can run beside the daemon; a running daemon's WAL may still
hold the id until its next checkpoint, which is why the daemon can be stopped for a proof.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from gate.audit import AUDIT_DB_NAME
from gate.watchlist import WATCHLIST_DB_NAME
from sync.forget import PlaceCheck, count_bytes, db_files
from vision.match.exact import EXACT_FILE_PREFIX


def _read_only(db_path: Path) -> sqlite3.Connection:
    if not db_path.exists():
        raise FileNotFoundError(f"{db_path} does not exist: is this the gate's state directory?")
    return sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)


def subject_presence(state_dir: Path, subject_id: str) -> list[PlaceCheck]:
    """Every place on the gate's disk that could still hold `subject_id`."""
    state_dir = Path(state_dir)
    watchlist = state_dir / WATCHLIST_DB_NAME
    conn = _read_only(watchlist)
    try:
        row = conn.execute("SELECT revoked, valid_until, updated_seq FROM subjects WHERE subject_id = ?",
                           (subject_id,)).fetchone()
        scopes = conn.execute("SELECT COUNT(*) FROM scopes WHERE subject_id = ?", (subject_id,)).fetchone()[0]
        templates = conn.execute("SELECT COUNT(*) FROM templates WHERE subject_id = ?", (subject_id,)).fetchone()[0]
    finally:
        conn.close()
    if row is None:
        detail = "no row"
    elif row[0]:
        detail = (f"tombstone of the revocation at seq {row[2]}; removed when its validity window closes "
                  f"({row[1]})" if row[1] else f"tombstone of the revocation at seq {row[2]} (no validity window)")
    else:
        detail = f"active row (valid until {row[1] or 'no end'})"
    checks = [PlaceCheck("watchlist subjects", row is None, detail),
              PlaceCheck("watchlist scopes", scopes == 0, f"{scopes} rows"),
              PlaceCheck("watchlist templates", templates == 0, f"{templates} rows")]
    needle = subject_id.encode("utf-8")
    raw = count_bytes(db_files(watchlist), needle)
    checks.append(PlaceCheck("watchlist bytes", raw == 0, f"{raw} occurrences in {WATCHLIST_DB_NAME} and its WAL"))
    # watchlist.exact_on_disk: the rescoring file is unlinked at creation and its rows are
    # encrypted under a key that exists only in the daemon's memory (vision/match/exact.py), so
    # what can remain is a file left visible by a filesystem without O_TMPFILE, or by a bug.
    leftovers = sorted(p.name for p in state_dir.glob(f"{EXACT_FILE_PREFIX}*"))
    checks.append(PlaceCheck("rescoring file", not leftovers,
                             f"left in the state dir: {', '.join(leftovers)}" if leftovers else
                             "none visible; rows on disk are encrypted under a key held only in the daemon's memory"))
    audit = count_bytes(db_files(state_dir / AUDIT_DB_NAME), needle)
    checks.append(PlaceCheck("audit log", True, f"{audit} occurrences in {AUDIT_DB_NAME} and its WAL "
                                                "(the legal log, kept for audit.retention_days by design)",
                             counts=False))
    return checks
