"""No audit record is acknowledged unless the central holds it identically, and a gate whose log
no longer continues the central's copy (state dir wiped, restored from an old backup, tail
truncated with the ack lowered, agent killed mid-fork) keeps every record under a new chain
epoch. Real central server on both stores (SQLite, PostgreSQL), real gate audit log
(gate.audit.AuditLog), real CURVE on loopback."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import pytest

from gate.audit import AuditLog
from sync.agent import GateAgent
from sync.audit_chain import GENESIS_HASH, LEGACY_EPOCH, AuditRow, ChainEpoch, record_hash
from sync.audit_store import EpochRefused
from sync.central import Central
from sync.central_server import CentralServer
from sync.ops import gates_table
from sync.service_messages import HeadRequest, Reply
from tests.sync_helpers import REPO, Deployment, FakeService, MemoryWatchlist, wait_until

HEALTH = {"status": "ok", "software_version": "t", "model_versions": {}, "last_decision_at": None}


def _chain(n: int, start: int = 1, prev: str = GENESIS_HASH, tag: str = "a") -> list[AuditRow]:
    rows = []
    for seq in range(start, start + n):
        ts = f"2026-11-23T10:00:{seq % 60:02d}.{seq:06d}Z"
        body = {"event": "decision", "n": seq, "tag": tag}
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return rows


class Site:
    """One central server and one gate G1 whose state dir the tests wipe, restore and truncate."""

    def __init__(self, tmp_path, database: str):
        self.dep = Deployment(tmp_path, database)
        self.secret = self.dep.add_gate("G1", ["lane:L1"])
        self.state = tmp_path / "state"
        self.state.mkdir()
        self.server = CentralServer(self.dep.central_config())
        self.server.start()
        self.central = Central(self.dep.database)
        self.seen: dict[str, AuditRow] = {}  # every record any incarnation of the gate's log ever held
        self.alarms: list[tuple[str, dict]] = []
        self.log: AuditLog | None = None
        self.agent: GateAgent | None = None

    def open_log(self) -> AuditLog:
        self.log = AuditLog(self.state)
        return self.log

    def write(self, n: int, tag: str) -> None:
        for i in range(n):
            self.log.append({"event": "decision", "tag": tag, "n": i})
        self.remember()

    def remember(self) -> None:
        for row in self.log.iter_since(0):
            self.seen[row.hash] = row

    def start_agent(self) -> GateAgent:
        log = self.log

        def on_alarm(kind, details):
            self.alarms.append((kind, details))
            log.append({"event": "audit_chain_alarm", "kind": kind})

        self.agent = GateAgent(self.dep.agent_config("G1", self.secret, ["lane:L1"]), MemoryWatchlist(), log,
                               lambda: HEALTH, on_audit_alarm=on_alarm)
        self.agent.start()
        return self.agent

    def drain(self, timeout: float = 20.0) -> None:
        assert wait_until(lambda: self.log.unsent_count() == 0, timeout=timeout), self.agent.status().audit
        self.remember()

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    def close_log(self) -> None:
        self.remember()
        self.log.close()
        self.log = None

    def central_rows(self) -> dict[str, tuple[str, AuditRow]]:
        held = {}
        for chain in self.central.audit.epochs("G1"):
            for row in self.central.audit.rows("G1", epoch=chain.epoch):
                held[row.hash] = (chain.epoch, row)
        return held

    def check_nothing_lost(self) -> None:
        held = self.central_rows()
        missing = [r.seq for h, r in self.seen.items() if h not in held]
        assert not missing, f"records that happened but the central does not hold: {missing}"
        for chain in self.central.audit.epochs("G1"):
            check = self.central.audit.verify("G1", chain.epoch)
            assert check.ok, (chain.epoch, check)
        # nothing the gate counts as acknowledged is held differently (or not at all) at the central
        if self.log is not None:
            acked = self.log.acked_seq()
            epoch = self.log.chain_epoch()
            for row in self.log.iter_since(0):
                if row.seq > acked:
                    break
                assert row.hash in held, f"record {row.seq} acked but not held identically"
                if row.seq > epoch.base_seq:
                    assert held[row.hash][0] == epoch.epoch

    def close(self) -> None:
        self.stop_agent()
        if self.log is not None:
            self.log.close()
        self.central.close()
        self.server.stop()


@pytest.fixture
def site(tmp_path, central_database):
    s = Site(tmp_path, central_database)
    yield s
    s.close()


def test_wiped_state_dir_starts_a_new_epoch_and_nothing_is_lost(site):
    site.open_log()
    site.write(30, "first life")
    site.start_agent()
    site.drain()
    site.stop_agent()
    site.close_log()
    shutil.rmtree(site.state)  # disk swap / reinstall: a new audit.db, seq 1 again, same gate id
    site.state.mkdir()
    site.open_log()
    site.write(20, "second life")
    site.start_agent()
    site.drain()
    site.check_nothing_lost()
    chain = site.log.chain_epoch()
    assert chain.epoch and chain.parent == LEGACY_EPOCH and chain.base_seq == 0
    assert site.central.audit.count("G1", LEGACY_EPOCH) == 30  # the first life untouched
    assert {k for k, _ in site.alarms} >= {"audit_chain_conflict"}
    assert any(r.body["event"] == "audit_chain_alarm" for r in site.log.iter_since(0))
    table = gates_table(site.central.gate_statuses(60))
    assert "forked: conflict at seq 1" in table and chain.epoch[:8] in table
    assert site.agent.status().audit.forks == 1


def test_restored_old_backup_keeps_both_histories(site, tmp_path):
    site.open_log()
    site.write(10, "before backup")
    site.start_agent()
    site.drain()
    site.stop_agent()
    site.close_log()
    backup = tmp_path / "backup"
    shutil.copytree(site.state, backup)
    site.open_log()
    site.write(20, "after backup")
    site.start_agent()
    site.drain()
    site.stop_agent()
    site.close_log()
    shutil.rmtree(site.state)
    shutil.copytree(backup, site.state)  # the old backup comes back: acked 10, central holds 30
    site.open_log()
    site.write(15, "after restore")
    site.start_agent()
    site.drain()
    site.check_nothing_lost()
    chain = site.log.chain_epoch()
    assert (chain.parent, chain.base_seq) == (LEGACY_EPOCH, 10)
    assert site.central.audit.count("G1", LEGACY_EPOCH) == 30
    assert site.central.audit.count("G1", chain.epoch) >= 15


def test_truncated_tail_with_lowered_ack_is_noticed_and_kept(site):
    site.open_log()
    site.write(40, "kept")
    site.start_agent()
    site.drain()
    site.stop_agent()
    site.close_log()
    db = sqlite3.connect(site.state / "audit.db")  # root on the gate: drop the guard, cut the tail, lower the ack
    db.execute("DROP TRIGGER audit_prune_only_behind_anchor")
    db.execute("DELETE FROM audit WHERE seq > 20")
    db.execute("UPDATE audit_state SET acked_upto = 15")
    db.commit()
    db.close()
    site.open_log()
    site.start_agent()
    # before any new record: the gate sees it is behind the central, the central sees the log went back
    assert wait_until(lambda: any(a.kind == "went_backwards" for a in site.central.audit.alarms("G1")), timeout=10)
    assert wait_until(lambda: "behind" in site.agent.status().audit.chain_alarm or
                      site.agent.status().audit.forks > 0, timeout=10)
    site.write(10, "after truncation")
    site.drain()
    site.check_nothing_lost()
    chain = site.log.chain_epoch()
    assert chain.base_seq == 20 and site.central.audit.count("G1", LEGACY_EPOCH) == 40
    assert wait_until(lambda: "forked:" in gates_table(site.central.gate_statuses(60)), timeout=5)  # resolved
    assert all(a.resolved_by == chain.epoch for a in site.central.audit.alarms("G1"))


def _gate_process(site: Site, log_path) -> subprocess.Popen:
    spec = site.dep.root / "gate-spec.json"
    spec.write_text(json.dumps({"gate_id": "G1", "base_port": site.dep.base_port, "scopes": ["/lane/L1/"],
                                "secret": str(site.secret), "central_public": str(site.dep.central_public),
                                "state_dir": str(site.state), "batch": 40}))
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "sync_helpers.py"), str(spec)], cwd=REPO,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def test_agent_killed_mid_upload_of_a_forked_log_loses_nothing(site, tmp_path):
    site.open_log()
    site.write(500, "first life")
    site.start_agent()
    site.drain()
    site.stop_agent()
    site.close_log()
    shutil.rmtree(site.state)
    site.state.mkdir()
    site.open_log()
    site.write(3000, "second life")
    proc = _gate_process(site, tmp_path / "gate.log")
    try:
        assert wait_until(lambda: site.central.audit.count("G1", None) >= 500 + 200, timeout=30, interval=0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert site.log.unsent_count() > 0
        proc = _gate_process(site, tmp_path / "gate.log")
        assert wait_until(lambda: site.log.unsent_count() == 0, timeout=60), (tmp_path / "gate.log").read_text()
    finally:
        proc.kill()
        proc.wait()
    site.remember()
    site.check_nothing_lost()
    assert len(site.central.audit.epochs("G1")) == 2  # the restart re-registered the same epoch, no third
    assert site.central.audit.count("G1", LEGACY_EPOCH) == 500


def test_central_acknowledges_only_what_it_holds_identically(site):
    audit = site.central.audit
    mine = _chain(10)
    assert audit.store_batch("G1", mine, 1.0).durable_seq == 10
    theirs = _chain(8, start=6, prev=mine[4].hash, tag="b")  # forks after 5, runs past the held end
    res = audit.store_batch("G1", theirs, 2.0)
    assert (res.durable_seq, res.inserted, res.conflicts) == (5, 0, (6, 7, 8, 9, 10))
    assert audit.max_seq("G1") == 10 and audit.get("G1", 11) is None  # 11..13 link to their 10, not ours
    assert audit.verify("G1").ok
    assert "ALARM conflict at seq 6" in gates_table(site.central.gate_statuses(60))
    # a fresh row whose prev does not link to the held predecessor is a conflict too
    stray = _chain(1, start=11, prev="e" * 64, tag="c")
    assert audit.store_batch("G1", stray, 3.0).conflicts == (11,)
    # a new epoch must be derived from the gate's registered key
    key = site.central.principal("gate:G1").public_key
    good = ChainEpoch.fork("G1", key, LEGACY_EPOCH, 5, mine[4].hash, "2026-12-02T06:00:00.000000Z", "ab" * 16)
    with pytest.raises(EpochRefused):
        audit.register_epoch("G1", ChainEpoch.fork("G1", "x" * 40, "", 5, mine[4].hash, good.created, good.nonce),
                             key, 4.0)
    with pytest.raises(EpochRefused):
        audit.register_epoch("G1", ChainEpoch(**{**good.__dict__, "epoch": "0" * 32}), key, 4.0)
    assert audit.register_epoch("G1", good, key, 4.0) is True  # base held identically: vouched
    assert audit.store_batch("G1", theirs, 5.0, epoch=good.epoch).durable_seq == 13
    assert audit.verify("G1", good.epoch).ok and audit.verify("G1").ok
    assert "forked: conflict at seq 11" in gates_table(site.central.gate_statuses(60))


class _LyingService(FakeService):
    """A central that claims durability for a whole batch while naming a conflict in it."""

    def __init__(self, dep: Deployment):
        self.registrations = 0
        self.known = {""}
        super().__init__(dep, self._reply)

    def _reply(self, req) -> Reply | None:
        if isinstance(req, HeadRequest):
            return Reply(req.request_id, True, head_seq=0, head_hash=GENESIS_HASH, epoch_known=req.epoch in self.known)
        if hasattr(req, "rows"):
            return Reply(req.request_id, True, durable_seq=req.last_seq, conflicts=(req.first_seq,))
        if hasattr(req, "chain"):
            self.registrations += 1
            self.known.add(req.chain.epoch)
            return Reply(req.request_id, True)
        return None


def test_a_reply_naming_a_conflict_never_acknowledges_it_and_the_gate_backs_off(tmp_path):
    dep = Deployment(tmp_path)
    secret = dep.add_gate("G1", ["lane:L1"])
    log = AuditLog(tmp_path / "state")
    for i in range(12):
        log.append({"event": "decision", "n": i})
    service = _LyingService(dep)
    agent = GateAgent(dep.agent_config("G1", secret, ["lane:L1"], retry_backoff_max_s=0.4), MemoryWatchlist(), log,
                      lambda: HEALTH)
    agent.start()
    try:
        assert wait_until(lambda: agent.status().audit.forks >= 2, timeout=10)
        import time

        time.sleep(1.0)
        forks = agent.status().audit.forks
        assert log.acked_seq() == 0 and log.unsent_count() == 12  # claimed durable, but named a conflict
        assert forks <= 8, f"{forks} forks in about 2s: the uploader hammers instead of backing off"
        assert service.registrations >= 2 and "move to new chain epoch" in agent.status().audit.chain_alarm
    finally:
        agent.stop()
        service.close()
        log.close()


def test_a_central_file_from_before_epochs_keeps_its_audit_as_the_first_chain(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE audit (gate_id TEXT, seq INTEGER, ts TEXT NOT NULL, prev_hash TEXT NOT NULL, "
               "hash TEXT NOT NULL, body TEXT NOT NULL, received_at FLOAT NOT NULL, PRIMARY KEY (gate_id, seq))")
    rows = _chain(3)
    db.executemany("INSERT INTO audit VALUES ('G1', ?, ?, ?, ?, ?, 1.0)",
                   [(r.seq, r.ts, r.prev_hash, r.hash, json.dumps(r.body)) for r in rows])
    db.commit()
    db.close()
    central = Central(str(path))
    try:
        assert list(central.audit.rows("G1")) == rows and central.audit.verify("G1").ok
        assert central.audit.store_batch("G1", _chain(2, start=1, tag="other"), 2.0).conflicts == (1, 2)
    finally:
        central.close()


def test_a_report_overtaken_by_an_upload_is_no_alarm_but_a_log_gone_back_is(tmp_path):
    """The demo's false alarm: the gate built its health report at seq 0 and its upload of
    record 1 arrived first. Only a report below what the central held at the previous report
    (written at the gate before this report was built) proves the log went backwards."""
    central = Central(tmp_path / "central.db")
    rows = _chain(12)
    central.audit.store_batch("G1", rows[:1], now=1.0)
    assert central.audit.note_reported_head("G1", LEGACY_EPOCH, 0, GENESIS_HASH, now=1.0) is None
    central.audit.store_batch("G1", rows[1:5], now=2.0)  # steady traffic: each report trails a batch
    for seq, now in ((1, 2.0), (5, 3.0)):
        assert central.audit.note_reported_head("G1", LEGACY_EPOCH, seq, rows[seq - 1].hash, now=now) is None
    central.audit.store_batch("G1", rows[5:10], now=4.0)
    assert central.audit.note_reported_head("G1", LEGACY_EPOCH, 10, rows[9].hash, now=5.0) is None
    assert central.audit.alarms("G1") == []
    # the gate's log cut back to seq 4: below the 10 held when the previous report arrived
    detail = central.audit.note_reported_head("G1", LEGACY_EPOCH, 4, rows[3].hash, now=6.0)
    assert detail and "ends at seq 4" in detail
    assert [a.kind for a in central.audit.alarms("G1")] == ["went_backwards"]
    central.close()
