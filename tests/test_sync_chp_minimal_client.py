"""Wire compatibility: an RFC 12 client that shares no code with sync/ follows our central."""
from __future__ import annotations

import time

import numpy as np
import pytest

from sync.central import Central, Enrolment
from sync.central_server import CentralServer
from sync.keys import load_keypair, load_public_key
from sync.subject_record import SubjectRecord, encode_record
from tests.chp_minimal_client import MinimalChpClient
from tests.sync_helpers import MODEL, Deployment, unit, wait_until


@pytest.fixture
def served(tmp_path, central_database):
    dep = Deployment(tmp_path, central_database)
    central = Central(dep.database)
    rng = np.random.default_rng(0)
    central.enrol_subjects([Enrolment(f"p{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
                             for i in range(5)] +
                            [Enrolment("q", "deny", ["flight:BA1"], None, None, MODEL, unit(rng, 1))])
    srv = CentralServer(dep.central_config())
    srv.start()
    yield dep, central
    srv.stop()


def _curve(dep: Deployment, secret) -> tuple[bytes, bytes, bytes]:
    pair = load_keypair(secret)
    return load_public_key(dep.central_public), pair.public, pair.secret


def _central_map(central: Central, subtree: str) -> dict[str, bytes]:
    with central.hashmap.snapshot(subtree) as (_, msgs):
        return {m.key: m.body for m in msgs}


def test_an_independent_rfc12_client_follows_the_central(served):
    dep, central = served
    client = MinimalChpClient("127.0.0.1", dep.base_port, "", _curve(dep, dep.add_admin("ops-console")))
    try:
        seq = client.get_snapshot()
        assert seq == central.hashmap.current_seq() == 6
        assert client.kvmap == _central_map(central, "")

        rng = np.random.default_rng(1)
        central.enrol_subject("new", "allow", ["lane:L2"], None, None, MODEL, unit(rng, 1))
        central.revoke("p2")
        central.enrol_subject("p3", "deny", ["lane:L1"], None, None, MODEL, unit(rng, 2))
        assert wait_until(lambda: client.receive_updates(0.05) >= 0 and client.sequence == 9, timeout=20)
        assert client.kvmap == _central_map(central, "")
        assert client.props["/lane/L1/p3"]["prev"] == "8"
        client.receive_updates(0.3)
        assert client.hugz >= 1  # heartbeats while idle
    finally:
        client.close()


def test_the_client_can_publish_through_the_collector(served):
    dep, central = served
    admin = MinimalChpClient("127.0.0.1", dep.base_port, "/lane/L1/", _curve(dep, dep.add_admin("enroller")))
    try:
        admin.get_snapshot()
        # The body format is ours (docs/protocol.md); the transport is plain RFC 12. A PUB
        # drops what it sends before the collector has subscribed, so send until it comes back.
        body = encode_record(SubjectRecord("p9", "allow", MODEL, unit(np.random.default_rng(3), 1)))
        deadline = time.monotonic() + 5
        while "/lane/L1/p9" not in admin.kvmap and time.monotonic() < deadline:
            admin.kvset("/lane/L1/p9", body, {"ttl": "600"})
            admin.receive_updates(0.1)
        assert "/lane/L1/p9" in admin.kvmap
        assert [s.subject_id for s in central.list_subjects(scope="lane:L1")].count("p9") == 1
        deadline = time.monotonic() + 5
        while "/lane/L1/p9" in admin.kvmap and time.monotonic() < deadline:
            admin.kvset("/lane/L1/p9", b"")
            admin.receive_updates(0.1)
        assert "/lane/L1/p9" not in admin.kvmap
        assert admin.kvmap == _central_map(central, "/lane/L1/")
    finally:
        admin.close()


def test_a_gate_key_follows_only_its_subtree(served):
    dep, central = served
    client = MinimalChpClient("127.0.0.1", dep.base_port, "/flight/BA1/",
                              _curve(dep, dep.add_gate("G1", ["flight:BA1"])))
    try:
        client.get_snapshot()
        assert set(client.kvmap) == {"/flight/BA1/q"}
        central.enrol_subject("p0", "allow", ["flight:BA1"], None, None, MODEL, unit(np.random.default_rng(2), 1))
        assert wait_until(lambda: client.receive_updates(0.05) >= 0 and "/flight/BA1/p0" in client.kvmap)
        assert all(k.startswith("/flight/BA1/") for k in client.kvmap)
    finally:
        client.close()
