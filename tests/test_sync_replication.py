"""Watchlist replication over real CURVE sockets on loopback: snapshot, updates, deletions,
expiry, model filtering, outages, restarts and sequence gaps."""
from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sync.agent import GateAgent
from sync.central import Central, Enrolment
from sync.central_server import CentralServer
from tests.sync_helpers import MODEL, REPO, Deployment, MemoryWatchlist, SqliteAuditLog, unit, wait_until

HEALTH = {"status": "ok", "software_version": "test", "model_versions": {MODEL: "1"}, "last_decision_at": None}


@pytest.fixture
def running(tmp_path, central_database):
    """Start servers and agents through this; everything is stopped at teardown."""
    started = []

    class Runner:
        dep = Deployment(tmp_path, central_database)

        def central(self, **overrides) -> CentralServer:
            srv = CentralServer(self.dep.central_config(**overrides))
            srv.start()
            started.append(srv)
            return srv

        def agent(self, gate_id, secret, scopes, sink=None, audit=None, **overrides) -> GateAgent:
            agent = GateAgent(self.dep.agent_config(gate_id, secret, scopes, **overrides), sink or MemoryWatchlist(),
                              audit or SqliteAuditLog(tmp_path / f"audit-{gate_id}-{len(started)}.db"), lambda: HEALTH)
            agent.start()
            started.append(agent)
            return agent

    yield Runner()
    for thing in reversed(started):
        thing.stop()


def keys_of(sink: MemoryWatchlist) -> set[str]:
    return set(sink.snapshot())


def central_keys(central: Central, scopes) -> set[str]:
    out = set()
    for scope in scopes:
        with central.hashmap.snapshot(scope) as (_, msgs):
            out |= {m.key for m in msgs}
    return out


def test_gate_follows_snapshot_updates_deletions_and_expiry(running, caplog):
    caplog.set_level(logging.INFO)
    dep = running.dep
    rng = np.random.default_rng(0)
    central = Central(dep.database)
    central.enrol_subjects([Enrolment(f"p{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 2))
                             for i in range(20)])
    central.enrol_subject("vip", "allow", ["flight:BA1"], None, None, MODEL, unit(rng, 1))
    central.enrol_subject("elsewhere", "allow", ["lane:L3"], None, None, MODEL, unit(rng, 1))
    central.enrol_subject("old-model", "allow", ["lane:L2"], None, None, "arcface-r100", unit(rng, 1, dim=512))
    secret = dep.add_gate("G1", ["lane:L1", "lane:L2", "flight:BA1"])
    running.central()
    sink = MemoryWatchlist()
    agent = running.agent("G1", secret, ["lane:L1", "lane:L2", "flight:BA1"], sink=sink)

    assert wait_until(lambda: len(sink.snapshot()) == 21)
    assert "/lane/L3/elsewhere" not in sink.snapshot()  # other lanes never reach this gate
    assert "/lane/L2/old-model" not in sink.snapshot()
    assert "ignored 1 subject(s) enrolled with model 'arcface-r100'" in caplog.text
    assert np.allclose(sink.snapshot()["/lane/L1/p3"].templates, central.templates_of("p3"))

    probe = unit(rng, 1)[0]
    central.enrol_subject("newcomer", "deny", ["lane:L1"], None, None, MODEL, probe[None, :])
    assert wait_until(lambda: "/lane/L1/newcomer" in sink.snapshot())
    assert sink.search(probe) == "newcomer" and sink.snapshot()["/lane/L1/newcomer"].list_type == "deny"

    central.revoke("p0")
    central.enrol_subject("brief", "allow", ["lane:L1"], None,
                           dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1.5), MODEL, unit(rng, 1))
    assert wait_until(lambda: "/lane/L1/p0" not in sink.snapshot() and "/lane/L1/brief" in sink.snapshot())
    # The central expires "brief" on its own and publishes the deletion.
    assert wait_until(lambda: "/lane/L1/brief" not in sink.snapshot(), timeout=20)
    assert keys_of(sink) == central_keys(central, ["/lane/L1/", "/flight/BA1/"])
    status = agent.status().watchlist
    assert status.state == "live" and status.snapshots == 1 and status.gaps == 0
    assert sink.stored_seq() == central.hashmap.current_seq()  # the last change was brief's expiry


def test_central_down_at_gate_start_then_converges(running, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    dep = running.dep
    rng = np.random.default_rng(1)
    central = Central(dep.database)
    central.enrol_subject("current", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    secret = dep.add_gate("G1", ["lane:L1"])
    # The gate's cache from an earlier life: one subject since revoked at the central.
    from sync.subject_record import SubjectRecord

    stale = SubjectRecord("gone", "allow", MODEL, unit(rng, 1))
    sink = MemoryWatchlist(seq=1, entries={"/lane/L1/gone": stale})
    audit = SqliteAuditLog(tmp_path / "audit.db")
    agent = running.agent("G1", secret, ["lane:L1"], sink=sink, audit=audit)

    audit.append_many([{"event": "decision", "n": i} for i in range(50)])
    agent.notify_audit()
    assert wait_until(lambda: "central unreachable (nothing heard" in caplog.text, timeout=20)
    assert wait_until(lambda: "central unreachable: no reply to audit" in caplog.text, timeout=20)
    assert set(sink.snapshot()) == {"/lane/L1/gone"}  # still deciding from the cache
    assert audit.unsent_count() == 50

    running.central()
    assert wait_until(lambda: set(sink.snapshot()) == {"/lane/L1/current"}, timeout=10)
    assert wait_until(lambda: audit.unsent_count() == 0, timeout=10)
    assert Central(dep.database).audit.count("G1") == 50
    assert "central reachable again" in caplog.text


def test_gate_restart_keeps_cache_and_takes_a_fresh_snapshot(running, tmp_path):
    dep = running.dep
    rng = np.random.default_rng(2)
    central = Central(dep.database)
    central.enrol_subject("a", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    secret = dep.add_gate("G1", ["lane:L1"])
    running.central()
    sink = MemoryWatchlist()
    first = running.agent("G1", secret, ["lane:L1"], sink=sink)
    assert wait_until(lambda: "/lane/L1/a" in sink.snapshot())
    first.stop()
    seq_before = sink.stored_seq()

    central.enrol_subject("b", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    central.revoke("a")
    assert sink.stored_seq() == seq_before and set(sink.snapshot()) == {"/lane/L1/a"}  # cache survived
    second = running.agent("G1", secret, ["lane:L1"], sink=sink)
    assert wait_until(lambda: set(sink.snapshot()) == {"/lane/L1/b"})
    assert sink.stored_seq() == central.hashmap.current_seq() and sink.replacements == 2
    assert wait_until(lambda: second.status().watchlist.snapshots == 1)


def _publish_nothing_for_one_change(running, central: Central, srv: CentralServer, change) -> CentralServer:
    """Make a change the gates never hear about: the central restarts around it (a new
    publisher starts from the current sequence), faster than the gate's heartbeat timeout."""
    srv.stop()
    change()
    return running.central()


def test_a_sequence_gap_is_caught_up_from_the_change_log_without_a_snapshot(running, caplog):
    caplog.set_level(logging.INFO)
    dep = running.dep
    rng = np.random.default_rng(3)
    central = Central(dep.database)
    central.enrol_subject("a", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    secret = dep.add_gate("G1", ["lane:L1"])
    srv = running.central()
    sink = MemoryWatchlist()
    # Long heartbeat timeout and health interval: only the sequence numbers can reveal the loss.
    agent = running.agent("G1", secret, ["lane:L1"], sink=sink, heartbeat_timeout_s=5.0, health_interval_s=30.0)
    assert wait_until(lambda: "/lane/L1/a" in sink.snapshot())

    restarted = time.time()
    _publish_nothing_for_one_change(running, central, srv, lambda: central.enrol_subject(
        "missed", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1)))
    # Wait until the gate hears the new server, so the next update cannot be lost in transit.
    assert wait_until(lambda: (agent.status().watchlist.last_heard or 0) > restarted + 0.05)
    assert "/lane/L1/missed" not in sink.snapshot()
    central.enrol_subject("after", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    assert wait_until(lambda: {"/lane/L1/missed", "/lane/L1/after"} <= set(sink.snapshot()))
    assert "sequence gap in /lane/L1/" in caplog.text
    assert wait_until(lambda: agent.status().watchlist.resumes == 1)
    assert agent.status().watchlist.gaps == 1 and agent.status().watchlist.snapshots == 1


def test_a_missed_last_update_is_caught_by_the_health_heads(running, caplog):
    caplog.set_level(logging.INFO)
    dep = running.dep
    rng = np.random.default_rng(4)
    central = Central(dep.database)
    central.enrol_subject("a", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    secret = dep.add_gate("G1", ["lane:L1"])
    srv = running.central()
    sink = MemoryWatchlist()
    running.agent("G1", secret, ["lane:L1"], sink=sink, heartbeat_timeout_s=5.0)
    assert wait_until(lambda: "/lane/L1/a" in sink.snapshot())
    _publish_nothing_for_one_change(running, central, srv, lambda: central.revoke("a"))
    # No later update will follow; the central's per-scope head in the health reply tells.
    assert wait_until(lambda: "/lane/L1/a" not in sink.snapshot(), timeout=20)
    assert "missed update(s) in /lane/L1/" in caplog.text


def _central_process(dep: Deployment, log_path) -> subprocess.Popen:
    toml = dep.central_toml()
    return subprocess.Popen([sys.executable, "-m", "tools.gate_central", "--config", str(toml)], cwd=REPO,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def test_central_killed_mid_snapshot(running, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    dep = running.dep
    rng = np.random.default_rng(5)
    central = Central(dep.database)
    central.enrol_subjects([Enrolment(f"p{i:05d}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1, dim=128))
                             for i in range(6_000)])
    secret = dep.add_gate("G1", ["lane:L1"])
    from sync.subject_record import SubjectRecord

    old = {"/lane/L1/cached": SubjectRecord("cached", "allow", MODEL, unit(rng, 1, dim=128))}
    sink = MemoryWatchlist(seq=3, entries=old)
    proc = _central_process(dep, tmp_path / "central.log")
    try:
        agent = running.agent("G1", secret, ["lane:L1"], sink=sink)
        assert wait_until(lambda: agent.status().watchlist.snapshot_progress > 0, timeout=15, interval=0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = agent.status().watchlist.snapshot_progress
        assert wait_until(lambda: "snapshot of /lane/L1/ aborted" in caplog.text, timeout=20)
        assert killed_at < 6_000 and set(sink.snapshot()) == {"/lane/L1/cached"}  # no partial swap
        assert sink.stored_seq() == 3

        proc = _central_process(dep, tmp_path / "central.log")
        assert wait_until(lambda: len(sink.snapshot()) == 6_000, timeout=30)
        assert sink.stored_seq() == central.hashmap.current_seq()
        assert "/lane/L1/cached" not in sink.snapshot()
    finally:
        proc.kill()
        proc.wait()


def test_a_frozen_central_is_treated_as_gone_until_it_answers_again(running, caplog, tmp_path):
    """SIGSTOP keeps the central's TCP connections open but silent: only heartbeats can tell."""
    caplog.set_level(logging.INFO)
    dep = running.dep
    central = Central(dep.database)
    central.enrol_subject("a", "allow", ["lane:L1"], None, None, MODEL, unit(np.random.default_rng(6), 1))
    secret = dep.add_gate("G1", ["lane:L1"])
    proc = _central_process(dep, tmp_path / "central.log")
    try:
        sink = MemoryWatchlist()
        agent = running.agent("G1", secret, ["lane:L1"], sink=sink)
        assert wait_until(lambda: agent.status().watchlist.state == "live", timeout=15)
        os.kill(proc.pid, signal.SIGSTOP)
        assert wait_until(lambda: "no heartbeat from the central" in caplog.text, timeout=20)
        # whether the follower then also logs "central unreachable" depends on where in its
        # loop the freeze caught it; what matters is that it stops claiming to be live
        assert wait_until(lambda: agent.status().watchlist.state != "live", timeout=20)
        assert set(sink.snapshot()) == {"/lane/L1/a"}
        os.kill(proc.pid, signal.SIGCONT)
        # back: the cache is brought up to date from the change log, no snapshot needed
        assert wait_until(lambda: agent.status().watchlist.resumes == 1, timeout=10)
        assert agent.status().watchlist.snapshots == 1
        assert "central is back; refreshing the watchlist" in caplog.text
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
