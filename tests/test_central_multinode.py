"""Several central nodes on one PostgreSQL database, on real sockets and a real server.

Nodes share nothing but the database: the CHP sequence comes from it, so a client that takes
its snapshot from node A and its updates from node B sees every change exactly once, in order;
audit sent to both nodes is stored once; validity expiry is published once.
"""
from __future__ import annotations

import datetime as dt
import threading
import time

import numpy as np
import pytest
import zmq

from sync.agent import GateAgent
from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash, verify_chain
from sync.central import Central
from sync.central_server import CentralServer
from sync.keys import load_keypair, load_public_key
from sync.service_messages import AuditBatch, decode_reply, encode_audit_batch
from sync.subject_record import SubjectRecord, encode_record, normalise_templates
from sync.transport import SERVICE_OFFSET, Security, connect_socket
from tests.chp_minimal_client import MinimalChpClient
from tests.sync_helpers import MODEL, Deployment, MemoryWatchlist, SqliteAuditLog, free_base_port, unit, wait_until

UTC = dt.timezone.utc


def _curve(dep: Deployment, secret) -> tuple[bytes, bytes, bytes]:
    pair = load_keypair(secret)
    return load_public_key(dep.central_public), pair.public, pair.secret


@pytest.fixture
def two_nodes(tmp_path, pg_database):
    dep = Deployment(tmp_path, pg_database)
    ports = {"node-a": dep.base_port, "node-b": free_base_port()}
    servers = {}
    for node, port in ports.items():
        srv = CentralServer(dep.central_config(base_port=port, node_name=node))
        srv.start()
        servers[node] = srv
    yield dep, ports
    for srv in servers.values():
        srv.stop()


def _central_map(central: Central) -> dict[str, bytes]:
    with central.hashmap.snapshot("") as (_, msgs):
        return {m.key: m.body for m in msgs}


def test_snapshot_from_one_node_updates_from_the_other_every_change_once_in_order(two_nodes):
    dep, ports = two_nodes
    admin = dep.add_admin("ops")
    central = Central(dep.database)
    rng = np.random.default_rng(0)
    for i in range(5):
        central.enrol_subject(f"p{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    # the independent RFC 12 client, with its update socket on the other node
    gate_view = MinimalChpClient("127.0.0.1", ports["node-a"], "", _curve(dep, admin), updates_port=ports["node-b"])
    watcher_a = MinimalChpClient("127.0.0.1", ports["node-a"], "", _curve(dep, admin))
    writers_a = MinimalChpClient("127.0.0.1", ports["node-a"], "", _curve(dep, admin))
    writers_b = MinimalChpClient("127.0.0.1", ports["node-b"], "", _curve(dep, admin))
    for w in (writers_a, writers_b):  # connect the KVSET sockets now: a PUB drops what it sends before
        w.publisher = w._socket(zmq.PUB, 2)
    try:
        # the updates socket is connected (a heartbeat arrived) before the snapshot is taken
        assert wait_until(lambda: gate_view.receive_updates(0.05) >= 0 and gate_view.hugz > 0, timeout=10)
        assert wait_until(lambda: watcher_a.receive_updates(0.05) >= 0 and watcher_a.hugz > 0, timeout=10)
        time.sleep(0.5)  # the KVSET sockets' CURVE handshakes are done too
        start = gate_view.get_snapshot()
        watcher_a.sequence = start
        assert start == 5 and gate_view.kvmap == _central_map(central)

        # Writers on both nodes and two in-process writers at once.
        def enrol_many(prefix: str, seed: int) -> None:
            c = Central(dep.database)
            r = np.random.default_rng(seed)
            for i in range(15):
                c.enrol_subject(f"{prefix}{i}", "allow", ["lane:L1", "lane:L2"], None, None, MODEL, unit(r, 1))
            c.revoke(f"{prefix}3")
            c.close()

        threads = [threading.Thread(target=enrol_many, args=(p, s)) for p, s in (("x", 1), ("y", 2))]
        for t in threads:
            t.start()
        for i in range(8):
            for writer, name in ((writers_a, "ka"), (writers_b, "kb")):
                rec = SubjectRecord(f"{name}{i}", "allow", MODEL, normalise_templates(unit(rng, 1)))
                writer.kvset(f"/lane/L3/{name}{i}", encode_record(rec))
        for t in threads:
            t.join()
        # KVSETs are applied asynchronously by each node's collector
        assert wait_until(lambda: len(central.list_subjects(scope="lane:L3")) == 16, timeout=20)
        final = central.hashmap.current_seq()
        assert final == 5 + 2 * (15 * 2 + 2) + 16
        assert wait_until(lambda: gate_view.receive_updates(0.05) >= 0 and gate_view.sequence == final, timeout=20)
        assert wait_until(lambda: watcher_a.receive_updates(0.05) >= 0 and watcher_a.sequence == final, timeout=20)
        # exactly once, in sequence order, nothing skipped, on both nodes, the same numbers
        got = [s for s, _ in gate_view.received if s > start]
        assert got == list(range(start + 1, final + 1))
        assert [x for x in gate_view.received if x[0] > start] == [x for x in watcher_a.received if x[0] > start]
        assert gate_view.kvmap == _central_map(central)
    finally:
        for c in (gate_view, watcher_a, writers_a, writers_b):
            c.close()
        central.close()


def _chain(gate_id: str, n: int) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    t0 = dt.datetime.now(UTC)
    for seq in range(1, n + 1):
        ts = (t0 + dt.timedelta(milliseconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"event": "decision", "n": seq, "gate": gate_id}
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return rows


def _request(dep: Deployment, secret, port: int, payload: bytes):
    ctx = zmq.Context()
    try:
        security = Security(keypair=load_keypair(secret), server_public=load_public_key(dep.central_public))
        sock = connect_socket(ctx, zmq.REQ, security, "127.0.0.1", port + SERVICE_OFFSET, 1 << 24)
        sock.send(payload)
        assert sock.poll(10_000), "no reply from the central node"
        return decode_reply(sock.recv())
    finally:
        ctx.destroy(0)


def test_the_same_audit_batch_sent_to_both_nodes_is_stored_once(two_nodes):
    dep, ports = two_nodes
    secret = dep.add_gate("G1", ["lane:L1"])
    rows = _chain("G1", 300)
    payload = encode_audit_batch(AuditBatch("G1", 7, tuple(rows)))
    replies: dict[str, object] = {}

    def send(node: str) -> None:
        replies[node] = _request(dep, secret, ports[node], payload)

    threads = [threading.Thread(target=send, args=(n,)) for n in ports for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok and r.durable_seq == 300 for r in replies.values())
    central = Central(dep.database)
    assert central.audit.count("G1") == 300
    held = list(central.audit.rows("G1"))
    assert [r.hash for r in held] == [r.hash for r in rows]
    assert verify_chain(held).ok
    central.close()


def test_expiry_is_published_once_with_two_nodes_running(two_nodes):
    dep, _ = two_nodes
    central = Central(dep.database)
    until = dt.datetime.now(UTC) + dt.timedelta(seconds=1.5)
    central.enrol_subject("short", "allow", ["lane:L1", "lane:L2"], None, until, MODEL,
                           unit(np.random.default_rng(3), 1))
    assert wait_until(lambda: central.list_subjects(status="expired") != [], timeout=15)
    time.sleep(1.0)  # both nodes have run their expiry checks several times since
    deletes = central.conn.execute("SELECT key FROM kv_log WHERE length(body) = 0 ORDER BY seq").fetchall()
    assert sorted(k for (k,) in deletes) == ["/lane/L1/short", "/lane/L2/short"]
    # exactly one node holds the maintenance lock
    holders = central.conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                   "AND objid = ?", (0x6567_0002,)).fetchone()[0]
    assert holders == 1
    central.close()


def test_health_names_the_node_each_gate_reports_through(two_nodes, tmp_path):
    dep, ports = two_nodes
    secret = dep.add_gate("G1", ["lane:L1"])
    cfg = dep.agent_config("G1", secret, ["lane:L1"], base_port=ports["node-b"])
    agent = GateAgent(cfg, MemoryWatchlist(), SqliteAuditLog(tmp_path / "audit.db"),
                      lambda: {"status": "ok", "software_version": "t", "model_versions": {MODEL: "1"}})
    agent.start()
    central = Central(dep.database)
    try:
        assert wait_until(lambda: any(g.node == "node-b" for g in central.gate_statuses(60.0)), timeout=15)
        from sync.ops import gates_table

        assert "node-b" in gates_table(central.gate_statuses(60.0))
    finally:
        agent.stop()
        central.close()
