"""gate-bench crash on a few cycles: real central and gate-side processes killed with SIGKILL
during traffic, then no acknowledged audit record lost or doubled, chains and SQLite files
intact, watchlist converged. Plus the regression it found in the central's database opening."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sync.central import Central
from sync.keys import generate_keypair_files, load_public_key
from tools.bench_crash import crash_bench

_COUNT_PRINCIPALS = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                     "print(c.execute('SELECT COUNT(*) FROM principals').fetchone()[0]); c.close()")


def _principals_seen_by_another_process(db: Path) -> int:
    out = subprocess.run([sys.executable, "-c", _COUNT_PRINCIPALS, str(db)], check=True, capture_output=True,
                         text=True, timeout=30)
    return int(out.stdout)


def test_kill9_cycles_lose_and_duplicate_nothing(tmp_path):
    r = crash_bench(cycles=4, seed=3, workdir=tmp_path, min_traffic_s=0.1, max_traffic_s=0.3, settle_timeout_s=20)
    assert r["kills_gate"] + r["kills_central"] == 4
    assert r["acked"] > 0 and r["acked"] == r["appended"], r
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["mismatched"] == 0, r
    assert r["central_records"] == r["appended"], r
    assert r["chain_ok"] and r["integrity_ok"], r
    assert r["watchlist_converged"] and r["watchlist_seq"] == r["central_scope_seq"] > 0, r
    assert r["clean_exit"], r


def test_a_second_central_connection_keeps_the_database_locked_for_other_processes(tmp_path):
    """Opening the central's database again in a process that already has it open used to
    close a descriptor of the file, which drops all of the process's POSIX locks on it: the
    next process to close the database then deleted the WAL under the first connection, and
    that connection's later commits (acknowledged audit records) were visible to nobody."""
    db = tmp_path / "central.db"
    first = Central(db)
    second = Central(db)  # each central thread opens its own connection like this
    assert _principals_seen_by_another_process(db) == 0
    keys = generate_keypair_files(tmp_path / "keys", "gate-G1")
    first.register_gate("G1", load_public_key(keys.public), ["lane:L1"])
    assert _principals_seen_by_another_process(db) == 1
    second.close()
    first.close()
