"""Proving a subject id is gone, on a real central database and a real gate watchlist: the
checks fail while any trace is left (rows, change log, tombstone, raw bytes) and pass once
the subject has been withdrawn and purged after its validity window."""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import pytest

from gate.audit import AuditLog
from gate.forget import subject_presence as gate_presence
from gate.watchlist import Subject, WatchlistStore
from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.central import Central
from sync.forget import all_gone, count_bytes, forget_withdrawn
from sync.forget import subject_presence as central_presence
from sync.template_crypto import TemplateCipher
from tests.sync_helpers import MODEL, Clock, Deployment
from tools import gate_ops, gatectl
from vision.types import Template

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
WHO = "trav-7f3a9c"  # the subject to forget
OTHERS = [f"trav-{i:04d}" for i in range(40)]



def failing(checks) -> set[str]:
    return {c.place for c in checks if c.counts and not c.ok}


def unit_rows(rng, n: int, dim: int = 128) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---- byte scan ---------------------------------------------------------------------------

def test_byte_scan_counts_matches_across_chunk_borders(tmp_path):
    import sync.forget as forget

    data = b"x" * (forget._SCAN_CHUNK - 3) + b"needle" + b"y" * 10 + b"needle"
    (tmp_path / "f").write_bytes(data)
    assert count_bytes([tmp_path / "f", tmp_path / "missing"], b"needle") == 2
    assert count_bytes([tmp_path / "f"], b"absent") == 0


# ---- central -----------------------------------------------------------------------------

@pytest.fixture
def clock():
    return Clock(T0.timestamp())


@pytest.fixture
def central(central_database, clock):
    c = Central(central_database, clock=clock)
    rng = np.random.default_rng(0)
    for sid in OTHERS[:20]:
        c.enrol_subject(sid, "allow", ["lane:L1"], None, None, MODEL, unit_rows(rng, 2))
    c.enrol_subject(WHO, "allow", ["lane:L1", "flight:VN1"], None, T0 + dt.timedelta(days=1), MODEL,
                     unit_rows(rng, 3))
    for sid in OTHERS[20:]:
        c.enrol_subject(sid, "allow", ["lane:L1"], None, None, MODEL, unit_rows(rng, 2))
    yield c
    c.close()


def test_central_subject_is_gone_only_after_expiry_and_forgetting(central, clock):
    sqlite = central.db.dialect == "sqlite"
    raw = {"database bytes"} if sqlite else set()  # PostgreSQL's files are the server's (INFO only)
    if sqlite:
        assert central.conn.execute("PRAGMA secure_delete").fetchone() == (1,)
    before = central_presence(central, WHO)
    assert failing(before) == {"subjects", "templates", "hashmap keys", "change log"} | raw
    clock.t = (T0 + dt.timedelta(days=1, seconds=1)).timestamp()
    assert central.expire() == [WHO]
    expired = central_presence(central, WHO)
    # templates and keys go at once; the row and the published change log stay for a while
    assert failing(expired) == {"subjects", "change log"} | raw
    assert not all_gone(expired)
    published = central.hashmap.current_seq()
    # the deletion has not been published yet: nothing is forgotten
    assert forget_withdrawn(central, published - 1, clock.t + 1) == []
    # still inside the retention window: nothing is forgotten
    assert forget_withdrawn(central, published, clock.t - 60) == []
    assert forget_withdrawn(central, published, clock.t + 1) == [WHO]
    after = central_presence(central, WHO)
    assert all_gone(after), [c.line() for c in after]
    # nobody else was touched
    assert [s.subject_id for s in central.list_subjects()] == sorted(OTHERS)
    assert central.templates_of(OTHERS[0]).shape == (2, 128)
    if sqlite:
        assert count_bytes([central.db_path, central.db_path.with_name("central.db-wal")], WHO.encode()) == 0
        assert central.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_audit_mentions_are_reported_but_do_not_fail_the_proof(central, clock):
    body = {"event": "decision", "decision": {"outcome": "allow", "subject_id": WHO}}
    ts = "2026-11-23T12:00:01.000000Z"
    central.audit.store_batch("G1", [AuditRow(1, ts, GENESIS_HASH, record_hash(1, ts, GENESIS_HASH, body), body)],
                              clock.t)
    central.revoke(WHO)
    forget_withdrawn(central, central.hashmap.current_seq(), clock.t + 1)
    checks = central_presence(central, WHO)
    assert all_gone(checks), [c.line() for c in checks]
    info = next(c for c in checks if c.place == "received audit")
    assert not info.counts and info.line().startswith("INFO") and "1 mentions" in info.detail


def test_gate_ops_subject_gone_cli(tmp_path, capsys):
    dep = Deployment(tmp_path)
    toml = dep.central_toml()
    c = Central(dep.db_path)
    c.enrol_subject(WHO, "deny", ["lane:L1"], None, None, MODEL, unit_rows(np.random.default_rng(1), 1))
    assert gate_ops.main(["--config", str(toml), "subject-gone", WHO]) == 1
    out = capsys.readouterr().out
    assert "FAIL hashmap keys: /lane/L1/" + WHO in out
    assert out.splitlines()[-1] == f"FAIL subject {WHO} is still present"
    c.revoke(WHO)
    forget_withdrawn(c, c.hashmap.current_seq(), time.time() + 1)
    c.close()
    assert gate_ops.main(["--config", str(toml), "subject-gone", WHO]) == 0
    out = capsys.readouterr().out
    assert "PASS database bytes: 0 occurrences" in out and out.splitlines()[-1] == f"PASS subject {WHO} is gone"


# ---- gate --------------------------------------------------------------------------------

def _gate_state(tmp_path: Path) -> tuple[Path, TemplateCipher]:
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True, mode=0o700)
    cipher = TemplateCipher.load_or_create(state / "keys" / "templates.key")
    rng = np.random.default_rng(2)
    with WatchlistStore(state, cipher=cipher) as store:
        seq = 0
        for sid in OTHERS[:20] + [WHO] + OTHERS[20:]:
            seq += 1
            until = T0 + dt.timedelta(hours=1) if sid == WHO else None
            store.upsert_subject(Subject(sid, "allow", valid_until=until, scopes=frozenset({"lane:L1"})),
                                 [Template(v, "m") for v in unit_rows(rng, 2)], seq=seq)
    with AuditLog(state) as audit:  # the lane's legal log names the subject
        audit.append({"event": "decision", "decision": {"outcome": "allow", "subject_id": WHO}})
    return state, cipher


def test_gate_subject_is_gone_after_revoke_and_purge_past_its_window(tmp_path):
    state, cipher = _gate_state(tmp_path)
    assert failing(gate_presence(state, WHO)) == {"watchlist subjects", "watchlist scopes", "watchlist templates",
                                                  "watchlist bytes"}
    with WatchlistStore(state, cipher=cipher) as store:
        assert store.revoke(WHO, seq=100)
        tombstoned = gate_presence(state, WHO)  # read while the store is open, like a running daemon
        assert failing(tombstoned) == {"watchlist subjects", "watchlist bytes"}
        assert "tombstone of the revocation at seq 100" in tombstoned[0].detail
        store.purge_expired(T0 + dt.timedelta(hours=2))
    checks = gate_presence(state, WHO)
    assert all_gone(checks), [c.line() for c in checks]
    audit = next(c for c in checks if c.place == "audit log")
    assert not audit.counts and "1 occurrences" in audit.detail
    with WatchlistStore(state, cipher=cipher) as store:  # nobody else was touched
        assert store.get(OTHERS[0]).templates and store.get(OTHERS[-1]).templates


def test_gatectl_watchlist_gone_cli(tmp_path, capsys):
    state, cipher = _gate_state(tmp_path)
    assert gatectl.main(["watchlist", "gone", WHO, "--state-dir", str(state)]) == 1
    out = capsys.readouterr().out
    assert "FAIL watchlist templates: 2 rows" in out
    assert out.splitlines()[-1] == f"FAIL subject {WHO} is still on this gate"
    with WatchlistStore(state, cipher=cipher) as store:
        store.purge_expired(T0 + dt.timedelta(hours=2))  # expired without a revocation
    assert gatectl.main(["watchlist", "gone", WHO, "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "PASS watchlist bytes: 0 occurrences" in out and "INFO audit log" in out
    assert gatectl.main(["watchlist", "gone", WHO, "--state-dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gatectl_watchlist_erase_removes_a_withdrawn_subject_now_and_is_audited(tmp_path, capsys):
    state, cipher = _gate_state(tmp_path)
    before = [r.body for r in AuditLog(state, read_only=True).iter_since(0)]
    # an active subject is refused, and nothing is audited for it
    assert gatectl.main(["watchlist", "erase", OTHERS[0], "--operator", "dpo-1", "--reason", "req 42",
                         "--state-dir", str(state)]) == 2
    assert "revoke it at the central first" in capsys.readouterr().err
    with WatchlistStore(state, cipher=cipher) as store:
        assert store.revoke(WHO, seq=100)
    assert failing(gate_presence(state, WHO)) == {"watchlist subjects", "watchlist bytes"}  # the tombstone
    assert gatectl.main(["watchlist", "erase", WHO, "--operator", "dpo-1", "--reason", "withdrawal req 42",
                         "--state-dir", str(state)]) == 0
    checks = gate_presence(state, WHO)
    assert all_gone(checks), [c.line() for c in checks]  # now, not when its window closes (T0 + 1h)
    assert any(c.place == "rescoring file" and c.ok for c in checks)
    with AuditLog(state, read_only=True) as audit:
        after = [r.body for r in audit.iter_since(0)]
    assert after[:len(before)] == before
    assert [b for b in after[len(before):]] == [{"event": "watchlist_erase", "subject_id": WHO, "operator": "dpo-1",
                                                  "reason": "withdrawal req 42", "uid": os.getuid()}]
    with WatchlistStore(state, cipher=cipher) as store:  # nobody else was touched
        assert store.get(OTHERS[0]).templates
    assert gatectl.main(["watchlist", "erase", WHO, "--operator", "dpo-1", "--reason", "again",
                         "--state-dir", str(state)]) == 0
    assert "nothing on this gate to erase" in capsys.readouterr().out
    (state / "edgegate-templates-leftover").write_bytes(b"x")  # a rescoring file left visible is a failure
    assert "rescoring file" in failing(gate_presence(state, WHO))


def test_central_erase_now_removes_tombstone_and_change_log_templates_and_is_recorded(central, clock):
    import hashlib

    from sync.forget import EraseRefused, erase_subject

    with pytest.raises(EraseRefused, match="revoke it first"):
        erase_subject(central, WHO, "dpo-1", "withdrawal req 42", now=clock.t)
    with pytest.raises(EraseRefused, match="operator"):
        erase_subject(central, WHO, " ", "withdrawal req 42", now=clock.t)
    central.revoke(WHO, reason="withdrawn")
    r = erase_subject(central, WHO, "dpo-1", "withdrawal req 42", now=clock.t + 1)  # long before retention
    assert r.found and r.log_bodies >= 2 and r.log_kept >= 2  # the fresh deletions stay for the publisher
    left = central_presence(central, WHO)
    assert failing(left) <= {"change log", "database bytes"}
    assert "0 with an enrolment record" in next(c for c in left if c.place == "change log").detail
    r = erase_subject(central, WHO, "dpo-1", "withdrawal req 42", now=clock.t + 120)  # the deletions went out
    assert r.log_deletes >= 2 and r.log_kept == 0
    checks = central_presence(central, WHO)
    assert all_gone(checks), [c.line() for c in checks]
    digest = hashlib.sha256(WHO.encode()).hexdigest()
    rows = central.conn.execute("SELECT subject_sha256, operator, reason FROM erasures ORDER BY erased_at").fetchall()
    assert [tuple(x) for x in rows] == [(digest, "dpo-1", "withdrawal req 42")] * 2
    assert [s.subject_id for s in central.list_subjects()] == sorted(OTHERS)  # nobody else was touched
    assert central.templates_of(OTHERS[0]).shape == (2, 128)
    assert not erase_subject(central, WHO, "dpo-1", "again", now=clock.t + 200).found


def test_gate_ops_erase_cli(tmp_path, capsys):
    dep = Deployment(tmp_path)
    toml = dep.central_toml()
    c = Central(dep.db_path)
    c.enrol_subject(WHO, "deny", ["lane:L1"], None, None, MODEL, unit_rows(np.random.default_rng(1), 1))
    erase = ["--config", str(toml), "erase", WHO, "--operator", "dpo-1", "--reason", "req 42"]
    assert gate_ops.main(erase) == 1 and "revoke it first" in capsys.readouterr().err
    c.revoke(WHO)
    c.close()
    assert gate_ops.main(erase + ["--settle-s", "0"]) == 0
    assert "erased now (audited)" in capsys.readouterr().out
    assert gate_ops.main(["--config", str(toml), "subject-gone", WHO]) == 0
