"""Gates that list several central nodes ride through the loss of one (real processes killed
with SIGKILL, real CURVE sockets, a real PostgreSQL database shared by the nodes): updates keep
arriving through the other node with no new snapshot, no update applied twice or skipped,
audit keeps being acknowledged, and the parts move back when the preferred node returns."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np

from sync.agent import GateAgent
from sync.audit_chain import verify_chain
from sync.central import Central
from sync.subject_record import SubjectRecord
from tests.sync_helpers import (
    MODEL,
    REPO,
    Deployment,
    MemoryWatchlist,
    SqliteAuditLog,
    free_base_port,
    unit,
    wait_until,
)

HEALTH = {"status": "ok", "software_version": "test", "model_versions": {MODEL: "1"}, "last_decision_at": None}


class RecordingWatchlist(MemoryWatchlist):
    """Also keeps the sequence of every change applied, to prove none is applied twice or skipped."""

    def __init__(self):
        super().__init__()
        self.applied: list[tuple[int, str]] = []
        self._rec_lock = threading.Lock()

    def apply_upsert(self, key: str, record: SubjectRecord, seq: int) -> None:
        with self._rec_lock:
            self.applied.append((seq, key))
        super().apply_upsert(key, record, seq)

    def apply_delete(self, key: str, seq: int) -> None:
        with self._rec_lock:
            self.applied.append((seq, key))
        super().apply_delete(key, seq)


def _node(dep: Deployment, name: str, port: int, log_path) -> subprocess.Popen:
    cfg = dep.central_config(base_port=port, node_name=name)
    lines = ["[central]"]
    for key, value in cfg.__dict__.items():
        if value is not None:
            lines.append(f"{key} = {json.dumps(str(value) if not isinstance(value, (int, float, bool)) else value)}")
    toml = dep.root / f"{name}.toml"
    toml.write_text("\n".join(lines) + "\n")
    return subprocess.Popen([sys.executable, "-m", "tools.gate_central", "--config", str(toml)], cwd=REPO,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def test_a_gate_rides_through_the_loss_of_a_central_node(tmp_path, pg_database, caplog):
    dep = Deployment(tmp_path, pg_database)
    ports = {"node-a": dep.base_port, "node-b": free_base_port()}
    procs = {n: _node(dep, n, p, tmp_path / f"{n}.log") for n, p in ports.items()}
    for n in ports:
        log_file = tmp_path / f"{n}.log"
        assert wait_until(lambda log_file=log_file: "central serving" in log_file.read_text(), timeout=60), n
    central = Central(dep.database)
    rng = np.random.default_rng(0)
    for i in range(20):
        central.enrol_subject(f"p{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    secret = dep.add_gate("G1", ["lane:L1"])
    endpoints = [f"tcp://127.0.0.1:{ports['node-a']}", f"tcp://127.0.0.1:{ports['node-b']}"]
    sink = RecordingWatchlist()
    audit = SqliteAuditLog(tmp_path / "audit.db")
    cfg = dep.agent_config("G1", secret, ["lane:L1"], central=tuple(endpoints), heartbeat_timeout_s=1.0,
                           failback_after_s=1.0, health_interval_s=0.2)
    agent = GateAgent(cfg, sink, audit, lambda: HEALTH)
    agent.start()
    try:
        assert wait_until(lambda: agent.status().watchlist.state == "live", timeout=30)
        assert wait_until(lambda: agent.status().watchlist.central == endpoints[0].removeprefix("tcp://"))
        audit.append_many([{"event": "decision", "n": i} for i in range(50)])
        agent.notify_audit()
        assert wait_until(lambda: audit.unsent_count() == 0, timeout=20)

        # The preferred node dies mid-traffic; enrolments keep coming (an enrolment station on
        # node B, or any process writing the database), and the lane keeps deciding.
        procs["node-a"].kill()
        procs["node-a"].wait()
        killed = time.monotonic()
        for i in range(20, 30):
            central.enrol_subject(f"p{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
        central.revoke("p3")
        audit.append_many([{"event": "decision", "n": i} for i in range(50, 120)])
        agent.notify_audit()
        assert wait_until(lambda: "/lane/L1/p29" in sink.snapshot() and "/lane/L1/p3" not in sink.snapshot(),
                          timeout=30)
        resumed_after = time.monotonic() - killed
        status = agent.status()
        assert status.watchlist.central == endpoints[1].removeprefix("tcp://")
        assert status.watchlist.snapshots == 1 and status.watchlist.resumes >= 1  # moved without a snapshot
        assert wait_until(lambda: audit.unsent_count() == 0, timeout=30)
        assert agent.status().audit.central == endpoints[1].removeprefix("tcp://")
        assert wait_until(lambda: any(g.node == "node-b" for g in central.gate_statuses(60.0)), timeout=20)

        # Node A returns: every part moves back to it, still without a snapshot.
        (tmp_path / "node-a.log").write_text("")
        procs["node-a"] = _node(dep, "node-a", ports["node-a"], tmp_path / "node-a.log")
        assert wait_until(lambda: "central serving" in (tmp_path / "node-a.log").read_text(), timeout=60)
        assert wait_until(lambda: agent.status().watchlist.central == endpoints[0].removeprefix("tcp://"), timeout=30)
        central.enrol_subject("late", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
        assert wait_until(lambda: "/lane/L1/late" in sink.snapshot(), timeout=20)
        audit.append_many([{"event": "decision", "n": i} for i in range(120, 130)])
        agent.notify_audit()
        assert wait_until(lambda: audit.unsent_count() == 0 and agent.status().audit.central
                          == endpoints[0].removeprefix("tcp://"), timeout=30)
        assert agent.status().watchlist.snapshots == 1

        # Nothing applied twice, nothing skipped: the applied changes after the snapshot are
        # exactly the central's changes in that scope, in order.
        applied = [s for s, _ in sink.applied]
        log_seqs = [m.seq for m in central.hashmap.changes_after(0, 10_000) if m.key.startswith("/lane/L1/")]
        assert applied == sorted(set(applied)) == [s for s in log_seqs if s > 20]
        with central.hashmap.snapshot("/lane/L1/") as (_, msgs):
            assert set(sink.snapshot()) == {m.key for m in msgs}
        rows = list(central.audit.rows("G1"))
        assert [r.seq for r in rows] == list(range(1, 131)) and verify_chain(rows).ok
        print(f"updates resumed {resumed_after:.2f}s after the node was killed")
    finally:
        agent.stop()
        for p in procs.values():
            p.kill()
            p.wait()
        central.close()
