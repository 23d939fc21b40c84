"""gate-central and gate-ops command lines over a real central database."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.central import Central
from sync.config import ConfigError, load_central_config
from sync.keys import generate_keypair_files, load_public_key
from sync.service_messages import HealthReport
from tests.sync_helpers import MODEL, Deployment, in_days, unit
from tools import gate_central, gate_ops


@pytest.fixture
def dep(tmp_path, central_database):
    d = Deployment(tmp_path, central_database)
    d.toml = d.central_toml()
    return d


def run(main, argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_config_file_round_trip_and_errors(dep, tmp_path):
    cfg = load_central_config(dep.toml)
    assert cfg.db_path == dep.db_path and cfg.base_port == dep.base_port and cfg.heartbeat_s == 0.1
    bad = tmp_path / "bad.toml"
    bad.write_text('[central]\ndb_path = "c.db"\nheartbeat_s = "often"\n')
    with pytest.raises(ConfigError, match="central.heartbeat_s = 'often' must be a number"):
        load_central_config(bad)
    bad.write_text('[central]\ndb_path = "c.db"\nsurprise = 1\n')
    with pytest.raises(ConfigError, match="unknown key central.surprise"):
        load_central_config(bad)
    bad.write_text('[central]\ndb_path = "rel/c.db"\n')  # the older name: a SQLite file
    cfg = load_central_config(bad)
    assert cfg.db_path == tmp_path / "rel" / "c.db" and cfg.database == str(tmp_path / "rel" / "c.db")
    bad.write_text('[central]\ndatabase = "rel/c.db"\npool_size = 2\n')
    cfg = load_central_config(bad)
    assert cfg.db_path == tmp_path / "rel" / "c.db" and cfg.database == str(cfg.db_path) and cfg.pool_size == 2
    url = "postgresql://central@db1:5432,db2:5432/edgegate?target_session_attrs=read-write"
    bad.write_text(f'[central]\ndatabase = "{url}"\nnode_name = "c1"\n')
    cfg = load_central_config(bad)
    assert cfg.database == url and cfg.db_path is None and cfg.node_name == "c1"
    bad.write_text('[central]\nbase_port = 5556\n')
    with pytest.raises(ConfigError, match="missing required key central.database"):
        load_central_config(bad)
    bad.write_text('[central]\ndatabase = "a.db"\ndb_path = "b.db"\n')
    with pytest.raises(ConfigError, match="disagree"):
        load_central_config(bad)
    bad.write_text('[central]\ndatabase = "a.db"\npool_size = 0\n')
    with pytest.raises(ConfigError, match="central.pool_size = 0 is below the minimum 1"):
        load_central_config(bad)


def test_gate_admin_revoke_expire_and_list_commands(dep, capsys, tmp_path):
    pub = generate_keypair_files(tmp_path / "k", "gate-L1").public
    code, out, _ = run(gate_central.main, ["gate", "add", "L1-gate", "--public-key", pub, "--scope", "lane:L1",
                                           "--config", dep.toml], capsys)
    assert code == 0 and "/lane/L1/" in out
    code, _, err = run(gate_central.main, ["--config", dep.toml, "gate", "add", "L2", "--public-key", pub,
                                           "--scope", "lane:L2"], capsys)
    assert code == 2 and "already belongs to gate:L1-gate" in err
    admin_pub = generate_keypair_files(tmp_path / "k", "admin").public
    add_admin = ["--config", dep.toml, "admin", "add", "ops", "--public-key", admin_pub]
    assert run(gate_central.main, add_admin, capsys)[0] == 0
    code, out, _ = run(gate_central.main, ["--config", dep.toml, "gate", "list"], capsys)
    assert "gate:L1-gate" in out and "admin:ops" in out

    central = Central(dep.database)
    rng = np.random.default_rng(0)
    central.enrol_subject("alice", "allow", ["lane:L1", "flight:BA1"], None, in_days(30), MODEL, unit(rng, 2))
    central.enrol_subject("bob", "deny", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    code, out, _ = run(gate_central.main, ["--config", dep.toml, "list", "--scope", "lane:L1"], capsys)
    assert code == 0 and "alice" in out and "bob" in out and "flight:BA1 lane:L1" in out and "2x16" in out
    code, out, _ = run(gate_central.main, ["--config", dep.toml, "revoke", "alice", "--scope", "flight:BA1"], capsys)
    assert code == 0 and "1 key(s) deleted (/flight/BA1/alice)" in out
    code, out, _ = run(gate_central.main, ["--config", dep.toml, "revoke", "bob", "--reason", "lost badge"], capsys)
    assert code == 0
    code, out, _ = run(gate_central.main, ["--config", dep.toml, "list", "--status", "revoked"], capsys)
    assert "bob" in out and "alice" not in out
    code, _, err = run(gate_central.main, ["--config", dep.toml, "revoke", "nobody"], capsys)
    assert code == 2 and "no subject 'nobody'" in err
    code, out, _ = run(gate_central.main, ["--config", dep.toml, "expire"], capsys)
    assert code == 0 and "expired 0 subject(s)" in out
    code, out, _ = run(gate_central.main, ["--config", dep.toml, "gate", "remove", "L1-gate"], capsys)
    assert code == 0 and Central(dep.database).principal("gate:L1-gate") is None
    code, _, err = run(gate_central.main, ["revoke", "alice"], capsys)
    assert code == 2 and "--config" in err


def _chain(n: int) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        ts = f"2026-05-01T10:{seq:02d}:00.000000Z"
        body = {"event": "decision", "outcome": "allow", "n": seq}
        h = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, h, body))
        prev = h
    return rows


def test_gate_ops_gates_and_audit_pull(dep, capsys, tmp_path):
    central = Central(dep.database)
    central.register_gate("G1", load_public_key(generate_keypair_files(tmp_path / "k", "g1").public), ["lane:L1"])
    central.register_gate("G2", load_public_key(generate_keypair_files(tmp_path / "k", "g2").public), ["lane:L2"])
    central.record_health(HealthReport("G1", 1, "ok", "0.3.1", {"mobilefacenet": "2"}, 42, 7,
                                       "2026-05-01T10:00:00Z", ("/lane/L1/",)))
    code, out, _ = run(gate_ops.main, ["--config", dep.toml, "gates"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["gate", "status", "last"]
    g1 = next(x for x in lines if x.startswith("G1"))
    assert "0.3.1" in g1 and "mobilefacenet 2" in g1 and " 42 " in g1 and " 7 " in g1 and "lane:L1" in g1
    assert "SILENT" in next(x for x in lines if x.startswith("G2")) and "never" in out

    central.audit.store_batch("G1", _chain(30), 1.0)
    out_file = tmp_path / "g1.jsonl"
    code, out, _ = run(gate_ops.main, ["--config", dep.toml, "audit", "pull", "--gate", "G1", "--since",
                                       "2026-05-01T10:10:00Z", "--until", "2026-05-01T10:20:00", "--format", "jsonl",
                                       "--out", out_file], capsys)
    assert code == 0 and "chain intact" in out and "seq 10..19" in out
    assert [json.loads(x)["seq"] for x in out_file.read_text().splitlines()] == list(range(10, 20))

    central.conn.execute("UPDATE audit SET ts = '2026-05-01T10:15:30.000000Z' WHERE gate_id = 'G1' AND seq = 15")
    code, out, _ = run(gate_ops.main, ["--config", dep.toml, "audit", "pull", "--gate", "G1", "--since", "2026-05-01",
                                       "--format", "csv", "--out", tmp_path / "g1.csv"], capsys)
    assert code == gate_ops.EXIT_CHAIN_BROKEN and "CHAIN BROKEN at seq 15" in out
    assert len((tmp_path / "g1.csv").read_text().splitlines()) == 31  # header + every record
    code, _, err = run(gate_ops.main, ["--config", dep.toml, "audit", "pull", "--gate", "G1", "--since", "yesterday",
                                       "--out", tmp_path / "x"], capsys)
    assert code == 2 and "ISO-8601" in err
