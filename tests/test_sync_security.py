"""Nothing from anyone who is not ours: ZAP allowlist, per-gate identity, the collector kept to
admin tools, message size limits, and plain TCP only on loopback behind an explicit flag."""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import zmq

from sync.agent import GateAgent
from sync.central import Central
from sync.central_server import CentralServer
from sync.keys import generate_keypair_files, load_keypair, load_public_key
from sync.kvmsg import KVMsg, icanhaz_frames, new_uuid
from sync.service_messages import AuditBatch, decode_reply, encode_audit_batch
from sync.subject_record import SubjectRecord, encode_record
from sync.transport import InsecureTransportError, Security, connect_socket, is_loopback_host
from tests.sync_helpers import MODEL, Deployment, MemoryWatchlist, SqliteAuditLog, unit, wait_until

HEALTH = {"status": "ok", "software_version": "t", "model_versions": {}, "last_decision_at": None}


@pytest.fixture
def central(tmp_path, central_database):
    dep = Deployment(tmp_path, central_database)
    Central(dep.database).enrol_subject("p1", "allow", ["lane:L1"], None, None, MODEL,
                                        unit(np.random.default_rng(0), 1))
    srv = CentralServer(dep.central_config())
    srv.start()
    yield dep
    srv.stop()


def _client(dep: Deployment, secret, kind: int, offset: int, ctx: zmq.Context) -> zmq.Socket:
    security = Security(keypair=load_keypair(secret), server_public=load_public_key(dep.central_public))
    return connect_socket(ctx, kind, security, "127.0.0.1", dep.base_port + offset, 1 << 20)


def test_an_unknown_gate_key_is_refused_and_logged_at_both_ends(central, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    dep = central
    stranger = dep.add_gate("G9", ["lane:L1"], register=False)  # keypair exists, central never heard of it
    audit = SqliteAuditLog(tmp_path / "audit.db")
    audit.append_many([{"event": "decision"}] * 5)
    sink = MemoryWatchlist()
    agent = GateAgent(dep.agent_config("G9", stranger, ["lane:L1"]), sink, audit, lambda: HEALTH)
    agent.start()
    try:
        assert wait_until(lambda: "is not registered" in caplog.text, timeout=20)
        assert wait_until(lambda: "the central refused our CURVE key" in caplog.text, timeout=20)
        time.sleep(0.5)
        assert sink.snapshot() == {} and audit.unsent_count() == 5
        assert Central(dep.database).audit.count("G9") == 0
        refusals = [r for r in caplog.records if "is not registered" in r.getMessage()]
        refused = refusals[0].getMessage()
        assert load_public_key(stranger).decode() in refused and "127.0.0.1" in refused
    finally:
        agent.stop()


def test_a_removed_gate_is_refused_from_its_next_connection(central, caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    dep = central
    secret = dep.add_gate("G1", ["lane:L1"])
    assert Central(dep.database).remove_principal("gate", "G1")
    ctx = zmq.Context()
    try:
        dealer = _client(dep, secret, zmq.DEALER, 0, ctx)
        dealer.send_multipart(icanhaz_frames("/lane/L1/"))
        assert not dealer.poll(800)
        assert "is not registered" in caplog.text
    finally:
        ctx.destroy(0)


def test_a_gate_may_only_snapshot_its_own_scopes(central, caplog):
    caplog.set_level(logging.WARNING)
    dep = central
    secret = dep.add_gate("G2", ["lane:L2"])
    ctx = zmq.Context()
    try:
        dealer = _client(dep, secret, zmq.DEALER, 0, ctx)
        dealer.send_multipart(icanhaz_frames("/lane/L1/"))
        assert not dealer.poll(800)  # no templates of another lane, not even an empty answer
        assert "snapshot: refused '/lane/L1/' to gate:G2" in caplog.text
        dealer.send_multipart(icanhaz_frames(""))
        assert not dealer.poll(500)
        dealer.send_multipart(icanhaz_frames("/lane/L2/"))
        assert dealer.poll(2000) and dealer.recv_multipart()[0] == b"KTHXBAI"
    finally:
        ctx.destroy(0)


def test_a_gate_cannot_upload_under_another_gates_id(central, caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    dep = central
    secret_g1 = dep.add_gate("G1", ["lane:L1"])
    dep.add_gate("G2", ["lane:L2"])
    audit = SqliteAuditLog(tmp_path / "forged.db")
    audit.append_many([{"event": "decision", "who": "someone else"}] * 3)
    forged = GateAgent(dep.agent_config("G2", secret_g1, ["lane:L2"]), MemoryWatchlist(), audit, lambda: HEALTH)
    forged.start()
    try:
        assert wait_until(lambda: "service: refused a request for gate G2 from gate:G1" in caplog.text, timeout=20)
        # the uploader's first request on connect (the central's head of its chain) is refused already
        assert wait_until(lambda: "central refused to tell its audit head: not authorised for gate G2" in caplog.text)
        assert Central(dep.database).audit.count("G2") == 0 and audit.unsent_count() == 3
    finally:
        forged.stop()


def test_only_admin_tools_may_publish_through_the_collector(central, caplog):
    caplog.set_level(logging.INFO)
    dep = central
    gate_secret = dep.add_gate("G1", ["lane:L1"])
    admin_secret = dep.add_admin("enroller")
    rng = np.random.default_rng(1)
    ctx = zmq.Context()
    try:
        gate_pub, admin_pub = _client(dep, gate_secret, zmq.PUB, 2, ctx), _client(dep, admin_secret, zmq.PUB, 2, ctx)
        gate_msg = KVMsg("/lane/L1/planted", 0, new_uuid(), {},
                         encode_record(SubjectRecord("planted", "allow", MODEL, unit(rng, 1))))
        admin_msg = KVMsg("/lane/L1/approved", 0, new_uuid(), {},
                          encode_record(SubjectRecord("approved", "allow", MODEL, unit(rng, 1))))

        def both_seen() -> bool:
            # PUB drops what it sends before the collector's subscription arrives, so keep
            # sending; the UUID makes the repeats harmless.
            gate_pub.send_multipart(gate_msg.frames())
            admin_pub.send_multipart(admin_msg.frames())
            return ("collector: admin:enroller set /lane/L1/approved (upsert)" in caplog.text
                    and "collector: refused KVSET from gate:G1: only admin tools may publish" in caplog.text)

        assert wait_until(both_seen, timeout=5, interval=0.05)
        admin_pub.send_multipart(admin_msg.frames())
        assert [s.subject_id for s in Central(dep.database).list_subjects(scope="lane:L1")] == ["approved", "p1"]
        assert wait_until(lambda: "already applied; ignoring the repeat" in caplog.text)
    finally:
        ctx.destroy(0)


def test_oversized_requests_cost_the_sender_its_connection_not_the_central(central, tmp_path):
    dep = central
    secret = dep.add_gate("G1", ["lane:L1"])
    ctx = zmq.Context()
    try:
        req = _client(dep, secret, zmq.REQ, 3, ctx)
        req.send(b"\x00" * (9 << 20))  # over the 8 MiB service frame limit
        assert not req.poll(1000)
        req.close(0)
        audit = SqliteAuditLog(tmp_path / "a.db")
        rows = audit.append_many([{"event": "decision"}])
        req = _client(dep, secret, zmq.REQ, 3, ctx)
        req.send(encode_audit_batch(AuditBatch("G1", 5, tuple(rows))))
        assert req.poll(3000)
        reply = decode_reply(req.recv())
        assert reply.ok and reply.durable_seq == 1
        dealer = _client(dep, secret, zmq.DEALER, 0, ctx)
        dealer.send_multipart([b"ICANHAZ?", b"/lane/L1/" * 10_000])  # over the 64 KiB request limit
        assert not dealer.poll(800)
    finally:
        ctx.destroy(0)


def test_a_plain_tcp_client_gets_nothing_from_a_curve_central(central):
    dep = central
    ctx = zmq.Context()
    try:
        dealer = connect_socket(ctx, zmq.DEALER, Security(dev_plain_loopback=True), "127.0.0.1", dep.base_port, 1 << 20)
        dealer.send_multipart(icanhaz_frames(""))
        assert not dealer.poll(800)
    finally:
        ctx.destroy(0)


def test_plain_tcp_needs_the_flag_and_stays_on_loopback(tmp_path, central_database):
    assert is_loopback_host("127.0.0.1") and is_loopback_host("127.8.9.10") and is_loopback_host("::1")
    assert is_loopback_host("localhost") and not is_loopback_host("10.0.0.5") and not is_loopback_host("*")
    ctx = zmq.Context()
    try:
        for host in ("*", "0.0.0.0", "192.0.2.10", "gate-host.example"):
            with pytest.raises(InsecureTransportError, match="loopback"):
                Security(dev_plain_loopback=True).apply_server(ctx.socket(zmq.ROUTER), host)
            with pytest.raises(InsecureTransportError, match="loopback"):
                connect_socket(ctx, zmq.DEALER, Security(dev_plain_loopback=True), host, 5556, 1024)
        with pytest.raises(InsecureTransportError, match="CURVE"):
            connect_socket(ctx, zmq.DEALER, Security(), "127.0.0.1", 5556, 1024)
    finally:
        ctx.destroy(0)
    dep = Deployment(tmp_path, central_database)
    with pytest.raises(InsecureTransportError):
        CentralServer(dep.central_config(dev_plain_loopback=True, bind_host="0.0.0.0", secret_key_file=None)).start()
    with pytest.raises(ValueError, match="secret_key_file"):
        CentralServer(dep.central_config(secret_key_file=None)).start()
    with pytest.raises(InsecureTransportError):
        secret = dep.add_gate("G1", ["lane:L1"])
        GateAgent(dep.agent_config("G1", secret, ["lane:L1"], dev_plain_loopback=True, central_host="192.0.2.1"),
                  MemoryWatchlist(), SqliteAuditLog(tmp_path / "a.db"), lambda: HEALTH).start()


def test_development_mode_works_on_loopback(tmp_path, caplog, central_database):
    caplog.set_level(logging.WARNING)
    dep = Deployment(tmp_path, central_database)
    Central(dep.database).enrol_subject("p1", "allow", ["lane:L1"], None, None, MODEL,
                                         unit(np.random.default_rng(2), 1))
    Central(dep.database).register_gate("G1", load_public_key(generate_keypair_files(tmp_path / "k", "g").public),
                                        ["lane:L1"])
    srv = CentralServer(dep.central_config(dev_plain_loopback=True, secret_key_file=None))
    srv.start()
    sink, audit = MemoryWatchlist(), SqliteAuditLog(tmp_path / "a.db")
    audit.append_many([{"event": "decision"}] * 4)
    agent = GateAgent(dep.agent_config("G1", None, ["lane:L1"], dev_plain_loopback=True, central_public_key_file=None),
                      sink, audit, lambda: HEALTH)
    agent.start()
    try:
        assert wait_until(lambda: set(sink.snapshot()) == {"/lane/L1/p1"} and audit.unsent_count() == 0)
        assert "DEVELOPMENT MODE" in caplog.text
    finally:
        agent.stop()
        srv.stop()


def test_a_gate_configured_beyond_its_registration_is_told_and_keeps_its_cache(central, caplog, tmp_path):
    caplog.set_level(logging.INFO)
    dep = central
    secret = dep.add_gate("G1", ["lane:L1"])
    sink = MemoryWatchlist(seq=4, entries={"/lane/L1/cached": SubjectRecord("cached", "allow", MODEL,
                                                                             unit(np.random.default_rng(5), 1))})
    agent = GateAgent(dep.agent_config("G1", secret, ["lane:L1", "lane:L2"]), sink,
                      SqliteAuditLog(tmp_path / "a.db"), lambda: HEALTH)
    agent.start()
    try:
        assert wait_until(lambda: "the central does not serve /lane/L2/ to gate G1" in caplog.text, timeout=20)
        assert wait_until(lambda: "snapshot: refused '/lane/L2/' to gate:G1" in caplog.text, timeout=20)
        assert wait_until(lambda: "snapshot of /lane/L2/ aborted" in caplog.text, timeout=20)
        assert set(sink.snapshot()) == {"/lane/L1/cached"} and sink.stored_seq() == 4
        assert caplog.text.count("the central does not serve") == 1  # said once, not every report
    finally:
        agent.stop()
