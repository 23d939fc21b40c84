"""`gate-central migrate`: a SQLite central moved into PostgreSQL keeps every sequence number,
key and audit hash, so chains verify and gates continue from their stored sequence."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash, verify_chain
from sync.audit_export import pull_audit
from sync.central import Central
from sync.central_db import StorageError
from sync.central_migrate import TABLES, copy_sqlite_central
from sync.service_messages import HealthReport
from tests.sync_helpers import MODEL, Deployment, in_days, unit
from tools import gate_central

UTC = dt.timezone.utc


def _chain(n: int, start: dt.datetime) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        ts = (start + dt.timedelta(days=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # spans several months
        body = {"event": "decision", "outcome": "allow" if seq % 3 else "deny", "name": "Nguyễn Văn An"}
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return rows


def _opened(central: Central, table: str, row: tuple) -> tuple:
    """A row with its sealed column opened: each central seals with its own key and a fresh
    nonce, so what must survive a copy is the clear content (and that it opens at all: bound to
    the same subject, model, key and sequence)."""
    if table == "templates":
        sid, idx, model, blob = row
        return sid, idx, model, central.cipher.open(blob, sid, model)
    if table == "kv":
        key, scope, sid, seq, uuid, body, expires = row
        return key, scope, sid, seq, uuid, central.cipher.open_record(body, key, seq), expires
    if table == "kv_log":
        seq, key, scope, uuid, props, body, logged = row
        return seq, key, scope, uuid, props, central.cipher.open_record(body, key, seq) if body else b"", logged
    return row


def _dump(central: Central) -> dict[str, list]:
    out = {}
    for table, cols in TABLES.items():
        rows = central.conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {cols[0]}, {cols[1]}").fetchall()
        out[table] = [_opened(central, table, tuple(bytes(v) if isinstance(v, memoryview) else v for v in r))
                      for r in rows]
    return out


def test_sqlite_central_moves_into_postgresql_unchanged(tmp_path, pg_database, capsys):
    old = Central(tmp_path / "old.db", node="old-node")
    rng = np.random.default_rng(0)
    for i in range(30):
        old.enrol_subject(f"p{i}", "allow" if i % 5 else "deny", ["lane:L1", "flight:VN123-2026-12-02"],
                           None, in_days(3) if i % 2 else None, MODEL, unit(rng, 2))
    old.revoke("p4", reason="left the programme")
    old.revoke("p6", ["lane:L1"])
    old.register_gate("G1", "g" * 40, ["lane:L1"])
    old.register_admin("ops", "a" * 40)
    old.record_health(HealthReport("G1", 1, "ok", "0.1.0", {MODEL: "1"}, 61, 0, None, ("/lane/L1/",)))
    rows = _chain(120, dt.datetime(2026, 6, 1, tzinfo=UTC))
    old.audit.store_batch("G1", rows, 1.0)
    before = _dump(old)
    seq = old.hashmap.current_seq()
    old.close()

    dep = Deployment(tmp_path / "pg", pg_database)
    toml = dep.central_toml()
    assert gate_central.main(["--config", str(toml), "migrate", "--from", str(tmp_path / "old.db")]) == 0
    assert "copied" in capsys.readouterr().out

    new = Central(pg_database)
    assert new.hashmap.current_seq() == seq
    assert _dump(new) == before  # every row: sequences, UUIDs, bodies (opened), keys, hashes
    assert new.cipher.key_id != old.cipher.key_id  # resealed on the way in with the target's own key
    held = list(new.audit.rows("G1"))
    assert [r.hash for r in held] == [r.hash for r in rows] and verify_chain(held).ok
    report = pull_audit(new, "G1", dt.datetime(2026, 7, 1, tzinfo=UTC), None, "jsonl", tmp_path / "g1.jsonl")
    assert report.check.ok and report.anchored
    assert json.loads((tmp_path / "g1.jsonl").read_text().splitlines()[0])["body"]["name"] == "Nguyễn Văn An"
    # history landed in monthly partitions, not in the default one
    assert new.conn.execute("SELECT COUNT(*) FROM audit_default").fetchone()[0] == 0
    assert new.conn.execute("SELECT COUNT(*) FROM audit_2026_07").fetchone()[0] == 31
    # the next change continues the same global sequence
    r = new.enrol_subject("late", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    assert r.seq == seq + 1
    assert new.principal_for_key("g" * 40).name == "gate:G1"
    # a second copy into a non-empty central is refused, changing nothing
    with pytest.raises(StorageError, match="empty central"):
        copy_sqlite_central(tmp_path / "old.db", pg_database)
    assert new.hashmap.current_seq() == seq + 1
    new.close()


def test_migrate_without_from_creates_and_reports_the_schema(tmp_path, pg_admin_dsn, capsys):
    from tools.pg_cluster import create_database, drop_database

    dsn = create_database(pg_admin_dsn, "edgegate_fresh_schema")
    try:
        dep = Deployment(tmp_path, dsn)
        toml = dep.central_toml()
        # a node refuses to run on a database without the schema, with the command to run
        assert gate_central.main(["--config", str(toml), "list"]) == 2
        assert "run `gate-central migrate`" in capsys.readouterr().err
        assert gate_central.main(["--config", str(toml), "migrate"]) == 0
        from sync.central_pg import SCHEMA_VERSION

        assert f"schema 0 -> {SCHEMA_VERSION}" in capsys.readouterr().out
        assert gate_central.main(["--config", str(toml), "migrate"]) == 0
        assert f"{SCHEMA_VERSION}, current" in capsys.readouterr().out
    finally:
        from sync.central_pg import close_pool

        close_pool(dsn)
        drop_database(pg_admin_dsn, "edgegate_fresh_schema")


def test_audit_retention_drops_whole_months(pg_database):
    from sync.central_pg import audit_partitions, drop_audit_partitions_before, ensure_audit_partitions

    c = Central(pg_database)
    c.audit.store_batch("G1", _chain(90, dt.datetime(2026, 1, 1, tzinfo=UTC)), 1.0)
    ensure_audit_partitions(c.db, dt.datetime(2026, 4, 15, tzinfo=UTC))
    parts = audit_partitions(c.db)
    assert {"audit_2026_01", "audit_2026_02", "audit_2026_03", "audit_2026_04", "audit_2026_06"} <= set(parts)
    dropped = drop_audit_partitions_before(c.db, dt.datetime(2026, 3, 1, tzinfo=UTC))
    assert dropped == ["audit_2026_01", "audit_2026_02"]
    left = list(c.audit.rows("G1"))
    assert left[0].ts.startswith("2026-03-01") and len(left) == 90 - 58  # Jan and Feb held 58 days
    # what is left still verifies from its first record on
    assert verify_chain(left, prev_hash=left[0].prev_hash, prev_seq=left[0].seq - 1).ok
    c.close()


def test_audit_pull_streams_with_flat_memory(pg_database, tmp_path):
    """gate-ops audit pull reads through a server-side cursor: ten times the records must not
    cost ten times the memory (tracemalloc peak of the export itself)."""
    import tracemalloc

    c = Central(pg_database)
    since = dt.datetime(2026, 1, 1, tzinfo=UTC)

    def rows_for(n: int, gate: str) -> list[AuditRow]:
        rows, prev = [], GENESIS_HASH
        for seq in range(1, n + 1):
            ts = (since + dt.timedelta(seconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = {"event": "decision", "outcome": "allow", "pad": "x" * 200}
            digest = record_hash(seq, ts, prev, body)
            rows.append(AuditRow(seq, ts, prev, digest, body))
            prev = digest
        return rows

    peaks = {}
    for n, gate in ((2_000, "SMALL"), (20_000, "BIG")):
        rows = rows_for(n, gate)
        for lo in range(0, n, 1000):
            c.audit.store_batch(gate, rows[lo:lo + 1000], 1.0)
        del rows
        tracemalloc.start()
        report = pull_audit(c, gate, since, None, "jsonl", tmp_path / f"{gate}.jsonl")
        peaks[gate] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert report.check.ok and report.records == n
    assert peaks["BIG"] < 3 * peaks["SMALL"], peaks
    c.close()


def test_an_unreachable_database_is_one_line_naming_the_cause_and_no_password(tmp_path):
    """psycopg_pool logged each failed attempt (about 40 lines in 4 s before the error) and the
    error itself said only "couldn't get a connection after 0.25 sec"."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    toml = tmp_path / "central.toml"
    toml.write_text(f'[central]\ndatabase = "postgresql://ops:s3cret@127.0.0.1:{port}/edgegate"\n')
    for command in (["list"], ["migrate"]):
        r = subprocess.run([sys.executable, "-m", "tools.gate_central", "--config", str(toml), *command],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Connection refused" in lines[0], r.stderr
        assert "s3cret" not in r.stderr + r.stdout and "ops:***@" in lines[0], r.stderr
