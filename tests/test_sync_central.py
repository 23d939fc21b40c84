"""The central's storage API on both stores (a real SQLite file, a real PostgreSQL server):
enrolment, change log, audit, health."""
from __future__ import annotations

import csv
import datetime as dt
import json
import stat

import numpy as np
import pytest

from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.audit_export import pull_audit
from sync.central import Central, Enrolment, EnrolmentError, ModelMixError, UnknownSubject
from sync.kvmsg import PREV_PROPERTY, KVMsg, new_uuid
from sync.service_messages import HealthReport
from sync.subject_record import SubjectRecord, decode_record, encode_record, normalise_templates
from tests.sync_helpers import MODEL, Clock, in_days, unit

UTC = dt.timezone.utc




def test_database_file_is_owner_only(tmp_path):
    c = Central(tmp_path / "central.db")
    assert stat.S_IMODE(c.db_path.stat().st_mode) == 0o600


def test_enrol_publishes_one_key_per_scope_with_the_record(central):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 16)) * 5
    result = central.enrol_subject("p1", "allow", ["lane:L1", "flight:BA1"], None, in_days(2), MODEL, vectors)
    assert result.keys == ("/flight/BA1/p1", "/lane/L1/p1")
    with central.hashmap.snapshot("/lane/L1/") as (seq, msgs):
        msgs = list(msgs)
    assert seq == 2 and [m.key for m in msgs] == ["/lane/L1/p1"]
    rec = decode_record(msgs[0].body)
    assert rec.model_id == MODEL and rec.list_type == "allow" and rec.templates.shape == (3, 16)
    assert np.allclose(np.linalg.norm(rec.templates, axis=1), 1.0)
    assert np.allclose(central.templates_of("p1"), rec.templates)
    [info] = central.list_subjects()
    assert (info.status, info.scopes, info.n_templates) == ("active", ("/flight/BA1/", "/lane/L1/"), 3)


def test_change_log_is_strictly_increasing_and_chains_each_scope(central):
    rng = np.random.default_rng(1)
    central.enrol_subject("a", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    central.enrol_subject("b", "allow", ["lane:L2"], None, None, MODEL, unit(rng, 1))
    central.enrol_subject("c", "deny", ["lane:L1"], None, in_days(1), MODEL, unit(rng, 1))
    central.revoke("a")
    changes = central.hashmap.changes_after(0, 100)
    assert [m.seq for m in changes] == [1, 2, 3, 4]
    assert [(m.key, m.props[PREV_PROPERTY]) for m in changes] == [
        ("/lane/L1/a", "0"), ("/lane/L2/b", "0"), ("/lane/L1/c", "1"), ("/lane/L1/a", "3")]
    assert changes[3].is_delete and "ttl" in changes[2].props
    assert central.hashmap.scope_heads(["/lane/L1/", "/lane/L2/", "/lane/L9/"]) == {
        "/lane/L1/": 4, "/lane/L2/": 2, "/lane/L9/": 0}
    assert [m.seq for m in central.hashmap.changes_after(2, 100)] == [3, 4]


def test_reenrol_adds_scopes_and_republishes_everywhere(central):
    rng = np.random.default_rng(2)
    central.enrol_subject("p", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    new = unit(rng, 2)
    result = central.enrol_subject("p", "deny", ["flight:X1"], None, None, MODEL, new)
    assert result.keys == ("/flight/X1/p", "/lane/L1/p")
    with central.hashmap.snapshot("") as (_, msgs):
        bodies = {m.key: decode_record(m.body) for m in msgs}
    assert all(r.list_type == "deny" and np.allclose(r.templates, new) for r in bodies.values())


def test_enrolment_refuses_bad_input_and_writes_nothing(central):
    rng = np.random.default_rng(3)
    v = unit(rng, 1)
    cases = [
        dict(subject_id="bad id"), dict(list_type="vip"), dict(scopes=[]), dict(scopes=["gate:7"]),
        dict(valid_until=dt.datetime.now(UTC) - dt.timedelta(seconds=5)),
        dict(valid_until=dt.datetime(2030, 1, 1)),  # naive: which timezone?
        dict(valid_from=in_days(3), valid_until=in_days(2)), dict(vectors=np.zeros((1, 16))),
        dict(vectors=np.full((1, 16), np.nan)), dict(model_id=""),
    ]
    for change in cases:
        args = dict(subject_id="p", list_type="allow", scopes=["lane:L1"], valid_from=None, valid_until=None,
                    model_id=MODEL, vectors=v)
        args.update(change)
        with pytest.raises(EnrolmentError):
            central.enrol_subject(**args)
    assert central.list_subjects() == [] and central.hashmap.current_seq() == 0


def test_enrolment_refuses_to_mix_model_ids_in_a_scope(central):
    rng = np.random.default_rng(4)
    central.enrol_subject("a", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    with pytest.raises(ModelMixError, match="refusing"):
        central.enrol_subject("b", "allow", ["lane:L1"], None, None, "arcface-r100", unit(rng, 1))
    with pytest.raises(EnrolmentError, match="dimensions"):
        central.enrol_subject("c", "allow", ["lane:L2"], None, None, MODEL, unit(rng, 1, dim=32))
    central.enrol_subject("d", "allow", ["lane:L2"], None, None, "arcface-r100", unit(rng, 1, dim=512))
    # Moving 'a' into lane L2 would mix models there, even though 'a' enrols fine alone.
    with pytest.raises(ModelMixError):
        central.enrol_subject("a", "allow", ["lane:L2"], None, None, MODEL, unit(rng, 1))
    assert [s.subject_id for s in central.list_subjects()] == ["a", "d"]


def test_batch_enrolment_is_all_or_nothing(central):
    from sync.central import Enrolment

    rng = np.random.default_rng(5)
    good = Enrolment("a", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    mixed = Enrolment("b", "allow", ["lane:L1"], None, None, "other-model", unit(rng, 1))
    with pytest.raises(ModelMixError):
        central.enrol_subjects([good, mixed])
    assert central.list_subjects() == []


def test_revoke_partial_and_full_deletes_templates(central):
    rng = np.random.default_rng(6)
    central.enrol_subject("p", "allow", ["lane:L1", "lane:L2"], None, None, MODEL, unit(rng, 1))
    assert central.revoke("p", ["lane:L1"]) == ["/lane/L1/p"]
    assert central.list_subjects()[0].status == "active"
    assert central.revoke("p", reason="left the company") == ["/lane/L2/p"]
    [info] = central.list_subjects(status="revoked")
    assert info.reason == "left the company" and info.scopes == ()
    with pytest.raises(UnknownSubject):
        central.templates_of("p")
    with pytest.raises(UnknownSubject):
        central.revoke("nobody")


def test_expire_withdraws_subjects_whose_window_closed(central_database):
    clock = Clock(1_000_000.0)
    c = Central(central_database, clock=clock)
    rng = np.random.default_rng(7)
    until = dt.datetime.fromtimestamp(clock.t + 60, UTC)
    c.enrol_subject("short", "allow", ["lane:L1"], None, until, MODEL, unit(rng, 1))
    c.enrol_subject("long", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    assert c.expire() == []
    clock.t += 61
    assert c.expire() == ["short"]
    assert [(s.subject_id, s.status) for s in c.list_subjects()] == [("long", "active"), ("short", "expired")]
    assert c.hashmap.changes_after(2, 10)[0].is_delete
    assert [s.subject_id for s in c.list_subjects(scope="lane:L1")] == ["long"]


def test_kvset_goes_through_enrolment_rules_and_is_deduplicated_by_uuid(central):
    rng = np.random.default_rng(8)
    rec = SubjectRecord("p9", "allow", MODEL, normalise_templates(unit(rng, 1)))
    uuid = new_uuid()
    msg = KVMsg("/lane/L1/p9", 0, uuid, {"ttl": "3600"}, encode_record(rec))
    assert central.apply_kvset(msg) == ["/lane/L1/p9"]
    assert central.apply_kvset(msg) == []  # a retried KVSET
    [info] = central.list_subjects()
    assert info.valid_until is not None
    wrong_subject = KVMsg("/lane/L1/someone-else", 0, new_uuid(), {}, encode_record(rec))
    with pytest.raises(EnrolmentError, match="names subject"):
        central.apply_kvset(wrong_subject)
    assert central.apply_kvset(KVMsg("/lane/L1/p9", 0, new_uuid(), {}, b"")) == ["/lane/L1/p9"]
    assert central.list_subjects()[0].status == "revoked"


def chain(n: int, start_ts: dt.datetime = dt.datetime(2026, 3, 1, tzinfo=UTC)) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        ts = (start_ts + dt.timedelta(minutes=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"event": "decision", "outcome": "allow" if seq % 3 else "deny", "seq_note": seq}
        h = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, h, body))
        prev = h
    return rows


def test_audit_store_is_idempotent_and_keeps_the_first_copy(central):
    rows = chain(10)
    first = central.audit.store_batch("G1", rows[:6], 1.0)
    assert (first.durable_seq, first.inserted, first.duplicates) == (6, 6, 0)
    again = central.audit.store_batch("G1", rows[3:], 2.0)  # overlapping retry
    assert (again.durable_seq, again.inserted, again.duplicates, again.conflicts) == (10, 4, 3, ())
    forged = AuditRow(5, rows[4].ts, rows[4].prev_hash, "f" * 64, {"event": "nothing happened"})
    res = central.audit.store_batch("G1", [forged], 3.0)
    assert res.conflicts == (5,) and res.inserted == 0
    assert central.audit.count("G1") == 10 and central.audit.get("G1", 5) == rows[4]
    assert central.audit.count("G2") == 0


def test_audit_pull_verifies_the_chain_and_names_the_break(central, tmp_path):
    rows = chain(20)
    central.audit.store_batch("G1", rows, 1.0)
    since = dt.datetime(2026, 3, 1, 0, 5, tzinfo=UTC)
    report = pull_audit(central, "G1", since, None, "jsonl", tmp_path / "a.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert report.check.ok and report.anchored and (report.first_seq, report.last_seq, report.records) == (5, 20, 16)
    assert [x["seq"] for x in lines] == list(range(5, 21)) and lines[0]["body"] == rows[4].body
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) == 0o600

    # Tamper with record 12 at the central: the export says exactly where the chain breaks.
    central.conn.execute("UPDATE audit SET body = ? WHERE gate_id = 'G1' AND seq = 12",
                         (json.dumps({"event": "decision", "outcome": "allow", "seq_note": 12}),))
    report = pull_audit(central, "G1", since, dt.datetime(2026, 3, 1, 0, 18, tzinfo=UTC), "csv", tmp_path / "a.csv")
    assert not report.check.ok and report.check.first_broken_seq == 12
    assert "CHAIN BROKEN at seq 12" in report.summary()
    with open(tmp_path / "a.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [int(r["seq"]) for r in got] == list(range(5, 18))  # written in full despite the break

    # A missing record is a break too.
    central.conn.execute("DELETE FROM audit WHERE gate_id = 'G1' AND seq = 12")
    report = pull_audit(central, "G1", since, None, "jsonl", tmp_path / "b.jsonl")
    assert report.check.first_broken_seq == 13 and "jumps from 11 to 13" in report.check.reason
    # A range whose predecessor is missing cannot be anchored, and says so.
    report = pull_audit(central, "G1", dt.datetime(2026, 3, 1, 0, 13, tzinfo=UTC), None, "jsonl", tmp_path / "c.jsonl")
    assert report.check.ok and not report.anchored and "cannot be anchored" in report.summary()


def test_health_and_silent_gates(central_database):
    clock = Clock(5_000.0)
    c = Central(central_database, clock=clock, node="node-a")
    c.register_gate("G1", "a" * 40, ["lane:L1"])
    c.register_gate("G2", "b" * 40, ["lane:L2"])
    with pytest.raises(EnrolmentError, match="already belongs"):
        c.register_gate("G3", "a" * 40, ["lane:L3"])
    c.record_health(HealthReport("G1", 1, "ok", "0.1.0", {"m": "1"}, 7, 3, None, ("/lane/L1/",)))
    clock.t += 30
    assert c.flag_silent_gates(20.0) == ["G1", "G2"]
    assert c.flag_silent_gates(20.0) == []  # flagged once, not every check
    assert c.record_health(HealthReport("G1", 2, "ok", "0.1.1", {"m": "1"}, 8, 0, None, ("/lane/L1/",)))
    statuses = {g.gate_id: g for g in c.gate_statuses(20.0)}
    assert not statuses["G1"].silent and statuses["G1"].software_version == "0.1.1"
    assert statuses["G1"].watchlist_seq == 8 and statuses["G1"].queue_depth == 0
    assert statuses["G1"].node == "node-a"
    assert statuses["G2"].silent and statuses["G2"].last_seen is None
    assert c.principal_for_key("a" * 40).name == "gate:G1"
    assert c.remove_principal("gate", "G1") and c.principal_for_key("a" * 40) is None


def test_bulk_import_writes_the_same_change_log_as_one_by_one(central):
    from sync.central import Enrolment

    rng = np.random.default_rng(11)
    central.enrol_subject("first", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    batch = [Enrolment(f"b{i:04d}", "allow" if i % 7 else "deny", ["lane:L1", "lane:L2"] if i % 2 else ["lane:L2"],
                        None, in_days(1) if i % 3 == 0 else None, MODEL, unit(rng, 1 + i % 3)) for i in range(300)]
    last = central.enrol_new_subjects(batch)
    assert last == 1 + sum(2 if i % 2 else 1 for i in range(300)) == central.hashmap.current_seq()
    changes = central.hashmap.changes_after(0, 10_000)
    assert [c.seq for c in changes] == list(range(1, last + 1))
    # each scope's `prev` chains its own changes, across the single and the bulk writes
    for scope in ("/lane/L1/", "/lane/L2/"):
        mine = [c for c in changes if c.key.startswith(scope)]
        assert [int(c.props[PREV_PROPERTY]) for c in mine] == [0] + [c.seq for c in mine[:-1]]
    assert central.hashmap.scope_heads(["/lane/L1/", "/lane/L2/"]) == {
        "/lane/L1/": [c.seq for c in changes if c.key.startswith("/lane/L1/")][-1], "/lane/L2/": last}
    rec = decode_record(next(c for c in changes if c.key == "/lane/L1/b0003").body)
    assert rec.list_type == "allow" and rec.templates.shape == (1, 16) and rec.valid_until is not None
    assert central.templates_of("b0005").shape == (3, 16)
    with central.hashmap.snapshot("/lane/L2/") as (seq, msgs):
        assert seq == last and len(list(msgs)) == 300
    # refusals write nothing
    with pytest.raises(EnrolmentError, match="already exists"):
        central.enrol_new_subjects([Enrolment("b0001", "allow", ["lane:L3"], None, None, MODEL, unit(rng, 1))])
    with pytest.raises(ModelMixError):
        central.enrol_new_subjects([Enrolment("n1", "allow", ["lane:L1"], None, None, "other-model", unit(rng, 1))])
    assert central.hashmap.current_seq() == last


def _plan_nodes(plan: dict) -> list[dict]:
    return [plan, *(n for child in plan.get("Plans", ()) for n in _plan_nodes(child))]


def test_after_a_bulk_import_the_enrolment_check_reads_one_row_not_the_table(pg_database):
    """A never-analysed table made PostgreSQL plan the enrolment's model check as a bitmap of
    every row (68 ms at 1M subjects, which was the update latency `gate-bench central`
    measured); the bulk import refreshes the statistics, so the check stops at its first row."""
    central = Central(pg_database)
    try:
        rng = np.random.default_rng(3)
        for lo in range(0, 6000, 3000):
            central.enrol_new_subjects([Enrolment(f"s{i:05d}", "allow", ["lane:L1"], None, None, MODEL,
                                                  unit(rng, 1)) for i in range(lo, lo + 3000)])
        (plan,), = central.conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT dim FROM subjects WHERE model_id = ? AND status = 'active' "
            "AND subject_id != ? LIMIT 1", (MODEL, "new-subject")).fetchone()
        nodes = _plan_nodes(plan["Plan"])
        assert max(n["Actual Rows"] for n in nodes) <= 1, [(n["Node Type"], n["Actual Rows"]) for n in nodes]
        analysed = dict(central.conn.execute(
            "SELECT relname, last_analyze IS NOT NULL FROM pg_stat_user_tables "
            "WHERE relname IN ('subjects', 'templates', 'kv', 'kv_log')").fetchall())
        assert analysed == {"subjects": True, "templates": True, "kv": True, "kv_log": True}
    finally:
        central.close()


def test_a_gate_s_catch_up_reads_its_own_scope_not_the_whole_log(central):
    """A gate that moves between nodes asks for its scope's changes since its sequence. Without
    a (scope, seq) index both engines walked every later change of every scope (PostgreSQL: a
    parallel seq scan, 184 ms on a 1M-row log of 1,000 scopes; SQLite 101 ms); with it, the
    scope's own rows (3.1 / 2.3 ms)."""
    rng = np.random.default_rng(4)
    central.enrol_new_subjects([Enrolment(f"s{i:05d}", "allow", [f"lane:L{i % 100:02d}"], None, None, MODEL,
                                          unit(rng, 1)) for i in range(6000)])
    query = "SELECT seq, key, uuid, props, body FROM kv_log WHERE scope = ? AND seq > ? ORDER BY seq LIMIT ?"
    args = ("/lane/L07/", 600, 5001)
    assert len(central.conn.execute(query, args).fetchall()) == 54  # the sql changes_since sends
    assert len(central.hashmap.changes_since("/lane/L07/", 600)[1]) == 54
    if central.db.dialect == "sqlite":
        plan = " ".join(str(r[-1]) for r in central.conn.execute(f"EXPLAIN QUERY PLAN {query}", args))
        assert "kv_log_scope_seq" in plan, plan
    else:
        (plan,), = central.conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", args).fetchone()
        nodes = _plan_nodes(plan["Plan"])
        read = sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) + n.get("Rows Removed by Filter", 0)
                   for n in nodes if n["Node Type"] in ("Seq Scan", "Index Scan", "Bitmap Heap Scan"))
        assert read <= 54, [(n["Node Type"], n.get("Actual Rows"), n.get("Rows Removed by Filter")) for n in nodes]


def test_catch_up_returns_every_change_since_or_refuses(central):
    rng = np.random.default_rng(12)
    for i in range(5):
        central.enrol_subject(f"c{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
        central.enrol_subject(f"o{i}", "allow", ["lane:L9"], None, None, MODEL, unit(rng, 1))
    central.revoke("c1")
    seq, changes = central.hashmap.changes_since("/lane/L1/", 3)
    assert seq == 11 and [c.seq for c in changes] == [5, 7, 9, 11] and changes[-1].is_delete
    assert int(changes[0].props[PREV_PROPERTY]) == 3  # chained to what the gate holds
    assert central.hashmap.changes_since("/lane/L1/", 11) == (11, [])  # up to date
    assert central.hashmap.changes_since("/lane/L1/", 0)[1] is not None  # the whole history is still there
    # once the log is pruned, a gate that is behind must take a snapshot
    central.hashmap.prune_log(6, logged_before=float("inf"))
    assert central.hashmap.changes_since("/lane/L1/", 3)[1] is None
    assert [c.seq for c in central.hashmap.changes_since("/lane/L1/", 7)[1]] == [9, 11]
    # a scope with no change since and its head behind `since` is complete; a head past it
    # with nothing in the log is not
    assert central.hashmap.changes_since("/lane/L2/", 5) == (11, [])
    assert central.hashmap.changes_since("/lane/L9/", 2)[1] is None
