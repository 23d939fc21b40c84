"""Templates sealed at rest on the central (sync.central_seal), on SQLite and PostgreSQL: no
template vector in clear in the database, a row moved to another subject or key is refused on
every read path and never reaches a gate, a wrong or loose key is refused at start-up, and
`gate-central migrate` seals a central an earlier release wrote in clear (again: no change)."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import zmq

from sync.central import Central, Enrolment
from sync.central_seal import KEY_META, SealedRowRefused, default_template_key_file, seal_existing
from sync.central_server import CentralServer
from sync.config import CentralConfig, load_central_config
from sync.keys import InsecureFileError, load_keypair, load_public_key
from sync.kvmsg import DELTA_PROPERTY, KTHXBAI, KVMsg, icanhaz_frames
from sync.subject_record import decode_record, encode_record
from sync.template_crypto import TemplateCipher, TemplateKeyError
from sync.transport import MAX_KV_FRAME, SNAPSHOT_OFFSET, Security, connect_socket, recv_frames
from tests.sync_helpers import MODEL, Deployment, unit
from tools import gate_central

DIM = 32


def _enrol(central: Central, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Subjects written by each write path: one by one, in one transaction, and the bulk
    import (COPY on PostgreSQL); returns every subject's vectors as stored (normalised)."""
    vectors: dict[str, np.ndarray] = {}
    for i in range(3):
        v = unit(rng, 2, DIM)
        central.enrol_subject(f"one-{i}", "allow", ["lane:L1", "lane:L2"], None, None, MODEL, v)
        vectors[f"one-{i}"] = v
    batch = [Enrolment(f"txn-{i}", "deny", ["lane:L1"], None, None, MODEL, unit(rng, 1, DIM)) for i in range(3)]
    central.enrol_subjects(batch)
    bulk = [Enrolment(f"bulk-{i}", "allow", ["lane:L1", "flight:VN1-2026-12-02"], None, None, MODEL,
                       unit(rng, 2, DIM)) for i in range(20)]
    central.enrol_new_subjects(bulk)
    # as stored (normalised on the way in): the bytes a leak would show
    vectors = {s: central.templates_of(s) for s in list(vectors) + [e.subject_id for e in batch + bulk]}
    central.revoke("txn-0", ["lane:L1"])  # a deletion in the log too (its enrolment stays in the log)
    return vectors


def _stored_bytes(central: Central) -> bytes:
    """Everything the database holds that could carry a template: on SQLite the raw file and
    its WAL, byte for byte; on PostgreSQL every row of the three tables as the server returns it."""
    if central.db.dialect == "sqlite":
        return b"".join(p.read_bytes() for p in central.db.files() if p.exists())
    rows = []
    for sql in ("SELECT vector FROM templates", "SELECT body FROM kv", "SELECT body FROM kv_log"):
        rows += [bytes(r[0]) for r in central.db.execute(sql)]
    return b"\n".join(rows)


def _clear_runs(vectors: dict[str, np.ndarray], haystack: bytes) -> int:
    """How many 16-byte runs (four floats) of any stored vector appear in `haystack`."""
    found = 0
    for v in vectors.values():
        raw = np.asarray(v, dtype="<f4").tobytes()
        found += sum(raw[i:i + 16] in haystack for i in range(0, len(raw), 16))
    return found


def _unseal(central: Central) -> None:
    """Write the central back the way an earlier release stored it (templates and bodies in
    clear, no key recorded): what `gate-central migrate` has to seal."""
    c = central.cipher
    db = central.db
    with db.write_transaction():
        for sid, idx, model, blob in db.execute("SELECT subject_id, idx, model_id, vector FROM templates").fetchall():
            db.execute("UPDATE templates SET vector = ? WHERE subject_id = ? AND idx = ?",
                       (c.open(bytes(blob), sid, model), sid, idx))
        for key, seq, body in db.execute("SELECT key, seq, body FROM kv").fetchall():
            db.execute("UPDATE kv SET body = ? WHERE key = ?", (c.open_record(bytes(body), key, seq), key))
        for seq, key, body in db.execute("SELECT seq, key, body FROM kv_log WHERE length(body) > 0").fetchall():
            db.execute("UPDATE kv_log SET body = ? WHERE seq = ?", (c.open_record(bytes(body), key, seq), seq))
        db.execute("DELETE FROM meta WHERE name = ?", (KEY_META,))


# ---- at rest -----------------------------------------------------------------------------

def test_no_template_vector_is_stored_in_clear(tmp_path, central_database):
    central = Central(central_database)
    vectors = _enrol(central, np.random.default_rng(0))
    if central.db.dialect == "sqlite":
        central.db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # both the file and the WAL are scanned
    assert _clear_runs(vectors, _stored_bytes(central)) == 0
    # ... and the search would have found them: the opened rows hold every vector
    opened = b"".join(np.asarray(central.templates_of(s), dtype="<f4").tobytes() for s in vectors if s != "txn-0")
    with central.hashmap.snapshot("") as (_, msgs):
        opened += b"".join(m.body for m in msgs)
    assert _clear_runs({s: v for s, v in vectors.items() if s != "txn-0"}, opened) == sum(
        len(v) * DIM * 4 // 16 for s, v in vectors.items() if s != "txn-0")
    assert np.allclose(central.templates_of("bulk-3"), vectors["bulk-3"], atol=1e-6)
    central.close()


def test_a_row_moved_to_another_subject_or_key_is_refused_on_every_read_path(central_database, caplog):
    central = Central(central_database)
    _enrol(central, np.random.default_rng(1))
    db = central.db
    with db.write_transaction():
        # another subject's template into one-1's row; another key's body into /lane/L1/one-1
        other = db.execute("SELECT vector FROM templates WHERE subject_id = 'one-2' AND idx = 0").fetchone()[0]
        db.execute("UPDATE templates SET vector = ? WHERE subject_id = 'one-1' AND idx = 0", (other,))
        body = db.execute("SELECT body FROM kv WHERE key = '/lane/L1/one-2'").fetchone()[0]
        db.execute("UPDATE kv SET body = ? WHERE key = '/lane/L1/one-1'", (body,))
        # the same subject's body of another scope: same record, another key
        body_l2 = db.execute("SELECT body, seq FROM kv WHERE key = '/lane/L2/one-0'").fetchone()
        db.execute("UPDATE kv SET body = ? WHERE key = '/lane/L1/one-0'", (body_l2[0],))
    with pytest.raises(SealedRowRefused, match="subject 'one-1'"):
        central.templates_of("one-1")
    with pytest.raises(SealedRowRefused, match="/lane/L1/one-0"):
        with central.hashmap.snapshot("/lane/L1/") as (_, msgs):
            list(msgs)
    # the untouched scope still serves, all of it
    with central.hashmap.snapshot("/lane/L2/") as (_, msgs):
        assert len([decode_record(m.body) for m in msgs]) == 3

    # the change log: a body moved to another sequence of the same key (an older enrolment put
    # back in place of a newer one) fails as well
    seqs = [r[0] for r in db.execute("SELECT seq FROM kv_log WHERE key = '/lane/L1/one-1' ORDER BY seq")]
    older = db.execute("SELECT body FROM kv_log WHERE key = '/lane/L2/one-1'").fetchone()[0]
    with db.write_transaction():
        db.execute("UPDATE kv_log SET body = ? WHERE seq = ?", (older, seqs[-1]))
    with pytest.raises(SealedRowRefused, match=f"seq {seqs[-1]}"):
        central.hashmap.changes_since("/lane/L1/", 0)
    caplog.set_level(logging.ERROR, logger="sync.hashmap")
    batch = central.hashmap.changes_after(0, 10_000)
    assert seqs[-1] not in [m.seq for m in batch]  # left out, never sent ...
    assert batch.read_to == central.hashmap.current_seq() and batch.rows == len(batch) + 1  # ... but passed
    refusals = [r for r in caplog.records if r.name == "sync.hashmap"]
    assert len(refusals) == 1 and f"change {seqs[-1]} not published" in refusals[0].getMessage()
    assert "\n" not in refusals[0].getMessage()
    central.close()


def test_the_server_never_sends_a_tampered_body_and_keeps_serving(tmp_path, central_database, caplog):
    dep = Deployment(tmp_path, central_database)
    central = Central(dep.database)
    rng = np.random.default_rng(2)
    for i in range(4):
        central.enrol_subject(f"p{i}", "deny", ["lane:L1", "lane:L2"], None, None, MODEL, unit(rng, 1, DIM))
    gate_secret = dep.add_gate("G1", ["lane:L1", "lane:L2"])
    with central.db.write_transaction():
        body = central.db.execute("SELECT body FROM kv WHERE key = '/lane/L1/p3'").fetchone()[0]
        central.db.execute("UPDATE kv SET body = ? WHERE key = '/lane/L1/p1'", (body,))
        log_body = central.db.execute("SELECT body FROM kv_log WHERE key = '/lane/L1/p3'").fetchone()[0]
        central.db.execute("UPDATE kv_log SET body = ? WHERE key = '/lane/L1/p2'", (log_body,))
    caplog.set_level(logging.INFO, logger="sync.central_server")
    srv = CentralServer(dep.central_config())
    srv.start()
    ctx = zmq.Context()
    security = Security(keypair=load_keypair(gate_secret), server_public=load_public_key(dep.central_public))
    dealer = connect_socket(ctx, zmq.DEALER, security, "127.0.0.1", dep.base_port + SNAPSHOT_OFFSET, MAX_KV_FRAME)

    def answer(frames: list[bytes], quiet_s: float = 1.5) -> list[KVMsg]:
        dealer.send_multipart(frames)
        got: list[KVMsg] = []
        while dealer.poll(int(quiet_s * 1000)):
            got.append(KVMsg.from_frames(recv_frames(dealer)))
            if got[-1].key == KTHXBAI:
                break
        return got

    try:
        # the snapshot stops at the moved body and sends no end: the gate keeps its cache
        got = answer(icanhaz_frames("/lane/L1/"))
        assert [m.key for m in got] == ["/lane/L1/p0"]
        assert any("snapshot of '/lane/L1/' to gate:G1 stopped after 1 key(s), no end sent" in r.getMessage()
                   and r.levelno == logging.ERROR for r in caplog.records)
        # a catch-up over the moved log body is answered: refused, take a snapshot
        got = answer(icanhaz_frames("/lane/L1/", 0))
        assert [m.key for m in got] == [KTHXBAI] and got[0].props[DELTA_PROPERTY] == "refused"
        assert any("catch-up of '/lane/L1/' for gate:G1 refused" in r.getMessage() for r in caplog.records)
        # the same thread serves the next request: the other scope, in full
        got = answer(icanhaz_frames("/lane/L2/"))
        assert [m.key for m in got] == [f"/lane/L2/p{i}" for i in range(4)] + [KTHXBAI]
        assert all(decode_record(m.body).subject_id == m.key.rsplit("/", 1)[1] for m in got[:-1])
        refused = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(refused) == 2 and all("\n" not in r.getMessage() and not r.exc_info for r in refused)
    finally:
        dealer.close(0)
        ctx.term()
        srv.stop()
    central.close()


# ---- the key -----------------------------------------------------------------------------

def test_the_configured_default_key_sits_beside_the_curve_key_and_is_made_0600(tmp_path, central_database):
    dep = Deployment(tmp_path, central_database)
    cfg = dep.central_config(template_key_file=None)  # the production default
    assert cfg.template_key_path == dep.central_secret.parent / "templates.key"
    assert not cfg.template_key_path.exists()
    srv = CentralServer(cfg)
    srv.start()
    srv.stop()
    assert stat.S_IMODE(cfg.template_key_path.stat().st_mode) == 0o600
    assert len(cfg.template_key_path.read_bytes()) == 32
    # the same key from every process that reads the config
    central = Central(cfg.store, template_key=cfg.template_key_path)
    assert central.cipher.key_id == TemplateCipher.from_key_file(cfg.template_key_path).key_id
    central.close()
    # a SQLite central without a CURVE key (development): beside the database file
    plain = CentralConfig(database=str(tmp_path / "dev.db"), dev_plain_loopback=True)
    assert plain.template_key_path == tmp_path / "dev.db.templates.key"
    # relative paths follow the config file
    (tmp_path / "c.toml").write_text('[central]\ndatabase = "x.db"\ntemplate_key_file = "k/t.key"\n')
    assert load_central_config(tmp_path / "c.toml").template_key_path == (tmp_path / "k/t.key").resolve()


def test_a_wrong_loose_or_missing_key_is_refused_at_start_up(tmp_path, central_database, capsys):
    dep = Deployment(tmp_path, central_database)
    central = Central(dep.database)
    central.enrol_subject("p0", "allow", ["lane:L1"], None, None, MODEL, unit(np.random.default_rng(3), 1, DIM))
    sealed_with = central.cipher.key_id
    central.close()

    other = tmp_path / "other.key"
    wrong = TemplateCipher.create_key_file(other)
    toml = dep.central_toml(template_key_file=other)
    assert gate_central.main(["--config", str(toml)]) == 2  # serve
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"key id {wrong.key_id}" in err and f"(key id {sealed_with})" in err
    with pytest.raises(TemplateKeyError, match=sealed_with):
        Central(dep.database, template_key=other)

    os.chmod(other, 0o644)
    with pytest.raises(InsecureFileError, match="chmod 600"):
        Central(dep.database, template_key=other)

    missing = tmp_path / "gone.key"
    with pytest.raises(TemplateKeyError, match=f"{missing} does not exist.*sealed with key id {sealed_with}"):
        Central(dep.database, template_key=missing)
    assert not missing.exists()  # never replaced by a new key
    assert gate_central.main(["--config", str(dep.central_toml(template_key_file=missing)), "list"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_two_processes_starting_at_once_share_one_new_key(tmp_path):
    """The key file is linked into place complete, and the loser of the race loads it."""
    import multiprocessing as mp

    path = tmp_path / "k" / "templates.key"
    path.parent.mkdir()
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        ids = pool.map(_load_or_create_id, [str(path)] * 8)
    assert len(set(ids)) == 1 and ids[0] == TemplateCipher.from_key_file(path).key_id
    assert sorted(p.name for p in path.parent.iterdir()) == ["templates.key"]  # no temporary left


def _load_or_create_id(path: str) -> str:
    return TemplateCipher.load_or_create(Path(path)).key_id


def test_the_postgresql_default_key_is_per_database_and_off_the_database(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    a = default_template_key_file("postgresql://edgegate@db1:5432,db2:5432/fleet?target_session_attrs=read-write")
    b = default_template_key_file("host=db1 dbname=fleet user=edgegate")
    assert a == b == tmp_path / "state" / "edgegate" / "central-keys" / "fleet.templates.key"
    assert default_template_key_file("postgresql://x@h/other") != a


# ---- gate-central migrate ----------------------------------------------------------------

def test_migrate_seals_a_clear_central_and_a_second_run_changes_nothing(tmp_path, central_database, capsys):
    dep = Deployment(tmp_path, central_database)
    central = Central(dep.database)
    vectors = _enrol(central, np.random.default_rng(4))
    with central.hashmap.snapshot("") as (_, msgs):
        before = {m.key: (m.seq, m.body) for m in msgs}
    log_before = [(m.seq, m.key, m.body) for m in central.hashmap.changes_after(0, 10_000)]
    _unseal(central)
    if central.db.dialect == "sqlite":
        central.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    assert _clear_runs(vectors, _stored_bytes(central)) > 0  # the earlier release's clear rows are found
    central.close()

    # a central of an earlier release is refused until it is sealed, with the command to run
    toml = dep.central_toml()
    assert gate_central.main(["--config", str(toml), "list"]) == 2
    assert "run `gate-central migrate` to seal them" in capsys.readouterr().err

    assert gate_central.main(["--config", str(toml), "migrate"]) == 0
    n_templates = sum(len(v) for s, v in vectors.items() if s != "txn-0")  # txn-0's went with its revocation
    n_bodies = len([b for _, _, b in log_before if b])
    assert f"{n_templates} templates, {len(before)} kv, {n_bodies} kv_log sealed now, 0 row(s) already sealed" \
        in capsys.readouterr().out
    again = seal_existing(dep.database, dep.central_config().template_key_path)
    assert sum(again.sealed.values()) == 0 and again.already == {"templates": n_templates, "kv": len(before),
                                                                 "kv_log": n_bodies}  # idempotent
    assert gate_central.main(["--config", str(toml), "migrate"]) == 0
    assert "0 templates, 0 kv, 0 kv_log sealed now" in capsys.readouterr().out

    central = Central(dep.database)
    assert _clear_runs(vectors, _stored_bytes(central)) == 0
    with central.hashmap.snapshot("") as (_, msgs):
        assert {m.key: (m.seq, m.body) for m in msgs} == before
    assert [(m.seq, m.key, m.body) for m in central.hashmap.changes_after(0, 10_000)] == log_before
    assert np.allclose(central.templates_of("bulk-0"), vectors["bulk-0"], atol=1e-6)
    central.close()


def test_migrate_from_a_clear_sqlite_central_seals_on_the_way_into_postgresql(tmp_path, pg_database, capsys):
    old = Central(tmp_path / "old.db")
    vectors = _enrol(old, np.random.default_rng(5))
    with old.hashmap.snapshot("") as (_, msgs):
        before = {m.key: m.body for m in msgs}
    _unseal(old)  # written by an earlier release: in clear, no key
    old.close()
    dep = Deployment(tmp_path / "pg", pg_database)
    toml = dep.central_toml()
    assert gate_central.main(["--config", str(toml), "migrate", "--from", str(tmp_path / "old.db")]) == 0
    key_id = TemplateCipher.from_key_file(dep.central_config().template_key_path).key_id
    assert f"templates sealed with key id {key_id}" in capsys.readouterr().out
    new = Central(pg_database)
    assert _clear_runs(vectors, _stored_bytes(new)) == 0
    with new.hashmap.snapshot("") as (_, msgs):
        assert {m.key: m.body for m in msgs} == before
    new.close()


def test_a_kvset_body_is_sealed_like_an_enrolment(central_database):
    """The collector path (an admin tool's KVSET) writes through the same sealing."""
    from sync.kvmsg import new_uuid
    from sync.subject_record import SubjectRecord

    central = Central(central_database)
    v = unit(np.random.default_rng(6), 1, DIM)
    central.apply_kvset(KVMsg(key="/lane/L1/k1", seq=0, uuid=new_uuid(), props={"ttl": "600"},
                              body=encode_record(SubjectRecord("k1", "allow", MODEL, v))))
    assert _clear_runs({"k1": v}, _stored_bytes(central)) == 0
    assert np.allclose(central.templates_of("k1"), v, atol=1e-6)
    central.close()
