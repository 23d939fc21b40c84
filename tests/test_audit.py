"""The audit log on real SQLite files: chain, durability, failures, permissions, threads."""
from __future__ import annotations

import gc
import itertools
import json
import os
import random
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from gate.audit import AUDIT_DB_NAME, AuditLog, AuditWriteError
from gate.sqlite_store import InsecureFileError
from sync.audit_chain import GENESIS_HASH, record_hash, verify_chain

REPO = Path(__file__).resolve().parents[1]
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def decision(i: int, **extra) -> dict:
    return {"event": "decision", "decision": "allow" if i % 2 else "refer", "top_score": 0.5 + i / 1000,
            "margin": 0.1, "subject": f"p{i:05d}", "timings_ms": {"detect": 4.2, "embed": 7.9}, **extra}


def raw(directory: Path) -> sqlite3.Connection:
    """A connection that bypasses AuditLog, as a tool or an attacker with the file would."""
    return sqlite3.connect(directory / AUDIT_DB_NAME, isolation_level=None)


def tamperer(directory: Path) -> sqlite3.Connection:
    conn = raw(directory)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_prune_only_behind_anchor")
    return conn


@pytest.fixture
def log(tmp_path):
    with AuditLog(tmp_path) as audit:
        yield audit


def test_append_chains_records_and_central_can_verify_them(tmp_path, log):
    rows = [log.append(decision(i)) for i in range(5)]
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS_HASH
    for prev, row in itertools.pairwise(rows):
        assert row.prev_hash == prev.hash
    for row in rows:
        assert TS_FORMAT.match(row.ts), row.ts
        assert row.hash == record_hash(row.seq, row.ts, row.prev_hash, row.body)
    # What the sync agent ships is what central verifies with the shared rule.
    shipped = log.read_unsent(100)
    assert shipped == rows
    assert verify_chain(shipped).ok
    assert log.verify().ok and log.verify().records == 5


def test_record_is_committed_when_append_returns(tmp_path, log):
    other = raw(tmp_path)
    for i in range(3):
        row = log.append(decision(i))
        # A separate connection (another process would be the same) sees it at once.
        assert other.execute("SELECT hash FROM audit WHERE seq = ?", [row.seq]).fetchone() == (row.hash,)
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()


def test_chain_continues_across_reopen(tmp_path):
    with AuditLog(tmp_path) as first:
        last = [first.append(decision(i)) for i in range(3)][-1]
    with AuditLog(tmp_path) as second:
        assert second.last_seq() == 3
        row = second.append(decision(3))
        assert (row.seq, row.prev_hash) == (4, last.hash)
        assert second.verify().ok


def test_bodies_are_normalised_and_bad_bodies_refused_without_writing(log):
    # What the lane hands over: a read-only mapping with numpy figures and tuples in it.
    body = MappingProxyType({"event": "decision", "score": np.float32(0.75), "box": (1, 2, 3, 4), "n": np.int64(3),
                             "pad": {"live": np.bool_(True)}})
    row = log.append(body)
    assert row.body == {"event": "decision", "score": 0.75, "box": [1, 2, 3, 4], "n": 3, "pad": {"live": True}}
    assert log.tail(1)[0] == row
    bad = [
        ({"decision": "allow"}, ValueError, "event"),
        ({"event": "decision", "score": float("nan")}, ValueError, "finite"),
        ({"event": "decision", "embedding": np.zeros(128, np.float32)}, TypeError, "never stores"),
        ({"event": "decision", "chip": b"\x89PNG"}, TypeError, "never stores"),
        ({"event": "decision", "notes": "x" * 10000}, ValueError, "limit"),
        ({"event": "decision", 3: "int key"}, TypeError, "non-string key"),
        (["event", "decision"], TypeError, "mapping"),
    ]
    for body, error, message in bad:
        with pytest.raises(error, match=message):
            log.append(body)
    assert log.last_seq() == 1 and log.verify().ok


# ---- tamper detection --------------------------------------------------------------------

def _edit_body(conn):
    conn.execute("""UPDATE audit SET body = json_set(body, '$.decision', 'allow') WHERE seq = 5""")


def _edit_ts(conn):
    conn.execute("UPDATE audit SET ts = '2020-01-01T00:00:00.000000Z' WHERE seq = 5")


def _delete(conn):
    conn.execute("DELETE FROM audit WHERE seq = 5")


def _reorder(conn):
    # Swap the contents of records 4 and 5 (seq is the row's identity, so swap all else).
    r4 = conn.execute("SELECT ts, prev_hash, hash, body FROM audit WHERE seq = 4").fetchone()
    r5 = conn.execute("SELECT ts, prev_hash, hash, body FROM audit WHERE seq = 5").fetchone()
    conn.execute("UPDATE audit SET ts=?, prev_hash=?, hash=?, body=? WHERE seq = 4", r5)
    conn.execute("UPDATE audit SET ts=?, prev_hash=?, hash=?, body=? WHERE seq = 5", r4)


def _insert(conn):
    # A forged record slipped in after 4, correctly hashed and linked to 4; later ones renumbered.
    conn.execute("UPDATE audit SET seq = -seq WHERE seq >= 5")
    conn.execute("UPDATE audit SET seq = -seq + 1 WHERE seq < 0")
    prev = conn.execute("SELECT hash FROM audit WHERE seq = 4").fetchone()[0]
    body = {"event": "manual_action", "action": "open", "operator_id": "x", "reason": "forged"}
    ts = "2026-01-01T00:00:00.000000Z"
    conn.execute("INSERT INTO audit VALUES (5, ?, ?, ?, ?)",
                 [ts, prev, record_hash(5, ts, prev, body), json.dumps(body)])


def _rewrite_with_fresh_hash(conn):
    # A careful forger recomputes the edited record's hash: the *next* record then breaks.
    seq, ts, prev, body = conn.execute("SELECT seq, ts, prev_hash, body FROM audit WHERE seq = 5").fetchone()
    body = json.loads(body)
    body["decision"] = "deny"
    conn.execute("UPDATE audit SET body = ?, hash = ? WHERE seq = 5",
                 [json.dumps(body), record_hash(seq, ts, prev, body)])


def _garble_body(conn):
    conn.execute("UPDATE audit SET body = '{not json' WHERE seq = 5")


@pytest.mark.parametrize("tamper, first_broken", [
    (_edit_body, 5), (_edit_ts, 5), (_delete, 6), (_reorder, 4), (_insert, 6),
    (_rewrite_with_fresh_hash, 6), (_garble_body, 5),
])
def test_verify_reports_first_broken_record(tmp_path, tamper, first_broken):
    with AuditLog(tmp_path) as log:
        for i in range(8):
            log.append(decision(i))
        assert log.verify().ok
    conn = tamperer(tmp_path)
    tamper(conn)
    conn.close()
    with AuditLog(tmp_path) as log:
        check = log.verify()
    assert not check.ok
    assert check.first_broken_seq == first_broken, check


def test_truncated_tail_behind_the_ack_is_reported(tmp_path):
    with AuditLog(tmp_path) as log:
        for i in range(6):
            log.append(decision(i))
        log.mark_acked(6)
    conn = tamperer(tmp_path)
    conn.execute("DELETE FROM audit WHERE seq >= 5")
    conn.close()
    with AuditLog(tmp_path) as log:
        check = log.verify()
    assert not check.ok and check.first_broken_seq == 5 and "acknowledged" in check.reason


def test_triggers_refuse_edits_and_deletes(tmp_path, log):
    for i in range(3):
        log.append(decision(i))
    conn = raw(tmp_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET body = '{}' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 1")
    conn.close()
    assert log.verify().ok and log.last_seq() == 3


# ---- write failures ----------------------------------------------------------------------

def test_disk_full_raises_and_recovers_after_the_limit_is_raised(tmp_path):
    with AuditLog(tmp_path, max_db_bytes=8 * 4096) as log:
        written = []
        with pytest.raises(AuditWriteError, match="full"):
            for i in range(2000):
                written.append(log.append(decision(i, note="n" * 1500)))
        assert len(written) > 3  # the cap was reached by real appends, not at open
        # Nothing half-written: the log ends at the last record append() returned.
        assert log.last_seq() == written[-1].seq
        assert log.verify().ok
        with pytest.raises(AuditWriteError):
            log.append(decision(-1, note="n" * 1500))  # still full
        log.set_size_limit(1 << 22)
        row = log.append(decision(9999))
        assert (row.seq, row.prev_hash) == (written[-1].seq + 1, written[-1].hash)
        assert log.verify().ok
    conn = raw(tmp_path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_read_only_database_raises_audit_write_error(tmp_path):
    with AuditLog(tmp_path) as log:
        last = log.append(decision(0))
    with AuditLog(tmp_path, read_only=True) as reader:
        with pytest.raises(AuditWriteError, match="readonly"):
            reader.append(decision(1))
        with pytest.raises(AuditWriteError):
            reader.mark_acked(1)
        assert reader.tail(5) == [last] and reader.verify().ok
    with pytest.raises(FileNotFoundError):
        AuditLog(tmp_path / "nowhere", read_only=True)


def test_lock_held_elsewhere_raises_then_appends_resume(tmp_path):
    with AuditLog(tmp_path, busy_timeout_s=0.1) as log:
        first = log.append(decision(0))
        blocker = raw(tmp_path)
        blocker.execute("BEGIN IMMEDIATE")  # e.g. a backup tool holding the write lock
        with pytest.raises(AuditWriteError, match="locked"):
            log.append(decision(1))
        blocker.execute("ROLLBACK")
        blocker.close()
        row = log.append(decision(2))
        assert (row.seq, row.prev_hash) == (2, first.hash)
        assert log.verify().ok


CHILD = """
import itertools, sys
from pathlib import Path
from gate.audit import AuditLog
log = AuditLog(Path(sys.argv[1]))
print("ready", flush=True)
for i in itertools.count():
    row = log.append({"event": "decision", "i": i, "pad": "live", "note": "k" * (i % 700)})
    print(row.seq, flush=True)
"""


def test_kill_9_while_appending_leaves_a_valid_chain(tmp_path):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    db_dir = tmp_path / "state"
    previous_last = 0
    for round_ in range(4):
        out = tmp_path / f"child{round_}.out"
        with open(out, "w") as stdout:
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(db_dir)], stdout=stdout, cwd=REPO)
            deadline = time.monotonic() + 30
            while "ready" not in out.read_text():
                assert child.poll() is None, f"child exited early (seed {seed})"
                assert time.monotonic() < deadline, "child never became ready"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.35))
            child.send_signal(9)
            child.wait()
        printed = [int(line) for line in out.read_text().split()[1:] if line.isdigit()]
        with AuditLog(db_dir) as log:
            check = log.verify()
            assert check.ok, (check, seed)
            # Every append that returned survived the kill; the chain only grew.
            assert printed, f"child appended nothing in round {round_} (seed {seed})"
            assert log.last_seq() >= printed[-1] > previous_last
            previous_last = log.last_seq()
        conn = raw(db_dir)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()


# ---- permissions -------------------------------------------------------------------------

def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_created_owner_only(tmp_path):
    with AuditLog(tmp_path / "state") as log:
        log.append(decision(0))
        for name in (AUDIT_DB_NAME, AUDIT_DB_NAME + "-wal", AUDIT_DB_NAME + "-shm"):
            assert mode(tmp_path / "state" / name) == 0o600, name


@pytest.mark.parametrize("suffix", ["", "-wal"])
def test_world_readable_files_are_refused(tmp_path, suffix):
    with AuditLog(tmp_path) as log:
        log.append(decision(0))
        keeper = raw(tmp_path)  # keeps the -wal file alive past close, as a running daemon would
        keeper.execute("SELECT 1 FROM audit").fetchall()
        target = tmp_path / (AUDIT_DB_NAME + suffix)
        os.chmod(target, 0o644)
    with pytest.raises(InsecureFileError, match="chmod 600"):
        AuditLog(tmp_path)
    assert mode(target) == 0o644  # refused, not silently "fixed"
    os.chmod(target, 0o600)
    keeper.close()
    with AuditLog(tmp_path) as log:
        assert log.verify().ok


# ---- the sync agent's interface ----------------------------------------------------------

def test_acks_are_idempotent_and_never_go_back(log):
    for i in range(10):
        log.append(decision(i))
    assert log.unsent_count() == 10 and log.acked_seq() == 0
    assert [r.seq for r in log.read_unsent(3)] == [1, 2, 3]
    log.mark_acked(3)
    log.mark_acked(3)
    log.mark_acked(1)  # a late, older reply
    assert log.acked_seq() == 3 and log.unsent_count() == 7
    assert [r.seq for r in log.read_unsent(100)] == list(range(4, 11))
    with pytest.raises(ValueError, match="ends at seq 10"):
        log.mark_acked(11)
    with pytest.raises(ValueError):
        log.read_unsent(0)
    log.mark_acked(10)
    assert log.unsent_count() == 0 and log.read_unsent(5) == []


def test_concurrent_writers_and_readers(log):
    """Two threads append while a sync-agent thread ships and acks and another verifies."""
    per_writer = 150
    done = threading.Event()
    errors: list[BaseException] = []
    shipped: list[int] = []

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # surfaced by the main thread's assert
                errors.append(exc)
        return run

    def writer(tag):
        for i in range(per_writer):
            log.append(decision(i, writer=tag))

    def sync_agent():
        acked, prev_hash = 0, GENESIS_HASH
        while not (done.is_set() and log.unsent_count() == 0):
            batch = log.read_unsent(40)
            if not batch:
                time.sleep(0.001)
                continue
            check = verify_chain(batch, prev_hash=prev_hash, prev_seq=acked)
            assert check.ok, check
            log.mark_acked(batch[-1].seq)
            acked, prev_hash = batch[-1].seq, batch[-1].hash
            shipped.extend(r.seq for r in batch)

    def auditor():
        while not done.is_set():
            assert log.verify().ok
            tail = log.tail(5)
            assert [r.seq for r in tail] == sorted(r.seq for r in tail)

    threads = [threading.Thread(target=guarded(f))
               for f in (lambda: writer("a"), lambda: writer("b"), sync_agent, auditor)]
    for t in threads:
        t.start()
    threads[0].join()
    threads[1].join()
    done.set()
    for t in threads[2:]:
        t.join(timeout=30)
    assert not errors, errors
    total = 2 * per_writer
    assert shipped == list(range(1, total + 1))
    assert log.last_seq() == total and log.acked_seq() == total and log.verify().ok
    assert sorted(r.body["writer"] for r in log.iter_since(0)).count("a") == per_writer


def open_fds_on(path: Path) -> int:
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            pass
    return count


def test_short_lived_reader_threads_do_not_leak_connections(tmp_path, log):
    """Each reading thread gets its own connection; it must go when the thread does.
    (SQLite parks closed descriptors of a locked file for reuse, so the count levels off
    rather than returning to one: it must not keep growing.)"""
    log.append(decision(0))

    def reader_threads(n: int) -> int:
        for _ in range(n):
            t = threading.Thread(target=log.unsent_count)
            t.start()
            t.join()
        gc.collect()
        return open_fds_on(log.path)

    after_first = reader_threads(20)
    assert reader_threads(20) <= after_first


def test_tail_and_iter_since(log, monkeypatch):
    monkeypatch.setattr("gate.audit._ITER_BATCH", 4)  # so a few records cross several read batches
    for i in range(11):
        log.append(decision(i))
    assert [r.seq for r in log.tail(3)] == [9, 10, 11]
    assert log.tail(0) == []
    assert [r.seq for r in log.iter_since(6)] == [7, 8, 9, 10, 11]
    assert [r.seq for r in log.iter_since(0)] == list(range(1, 12))
    assert list(log.iter_since(8))[0].seq == 9 and list(log.iter_since(11)) == []


# ---- retention ---------------------------------------------------------------------------

class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


T0 = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)


def test_prune_removes_acked_old_prefix_and_keeps_chain_verifiable(tmp_path):
    clock = Clock(T0)
    with AuditLog(tmp_path, clock=clock) as log:
        rows = []
        for day in range(10):  # record seq k written on day k-1
            clock.now = T0 + timedelta(days=day)
            rows.append(log.append(decision(day)))
        log.mark_acked(6)
        # Cut-off is day 8: records 1..8 are old enough, but only 1..6 are acked.
        result = log.prune(timedelta(days=30), now=T0 + timedelta(days=38))
        assert (result.removed, result.anchor_seq, result.anchor_hash) == (6, 6, rows[5].hash)
        check = log.verify()
        assert check.ok and check.records == 4
        assert [r.seq for r in log.iter_since(0)] == [7, 8, 9, 10]
        assert log.unsent_count() == 4
        # Pruning again with nothing eligible is a no-op.
        assert log.prune(timedelta(days=30), now=T0 + timedelta(days=38)).removed == 0
        # Acked but recent records stay: cut-off day 7 keeps record 8 and everything after it.
        log.mark_acked(10)
        assert log.prune(timedelta(days=30), now=T0 + timedelta(days=37)).removed == 1
        assert log.verify().ok
        # Everything pruned: the next record still links to the anchor.
        final = log.prune(timedelta(days=1), now=T0 + timedelta(days=60))
        assert final.removed == 3 and final.anchor_seq == 10 and log.last_seq() == 10
        row = log.append(decision(99))
        assert (row.seq, row.prev_hash) == (11, rows[9].hash)
        assert log.verify().ok


def test_tampering_after_prune_is_still_detected(tmp_path):
    clock = Clock(T0)
    with AuditLog(tmp_path, clock=clock) as log:
        for day in range(6):
            clock.now = T0 + timedelta(days=day)
            log.append(decision(day))
        log.mark_acked(3)
        assert log.prune(timedelta(days=1), now=T0 + timedelta(days=30)).removed == 3
    conn = tamperer(tmp_path)
    conn.execute("DELETE FROM audit WHERE seq = 4")  # drop the first record after the anchor
    conn.close()
    with AuditLog(tmp_path) as log:
        check = log.verify()
    assert not check.ok and check.first_broken_seq == 5
