"""An enrolment station over real CURVE sockets: what it may enrol, and each refusal.

One central, one station bound to SGN, real keys; every refusal is a reply with the reason
and leaves the central's subjects as they were."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import msgpack
import numpy as np
import pytest
import zmq

from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.central import Central, EnrolmentError
from sync.central_server import CentralServer
from sync.keys import generate_keypair_files, load_keypair, load_public_key
from sync.kvmsg import KVMsg, new_uuid
from sync.service_messages import (
    AuditBatch,
    EnrolRequest,
    HealthReport,
    MalformedRequest,
    decode_reply,
    decode_request,
    encode_audit_batch,
    encode_enrol,
    encode_health,
)
from sync.station_client import CentralUnreachable, StationClient, StationLink
from sync.station_policy import ExistingSubject, StationRefusal, check_enrolment
from sync.transport import Security, connect_socket
from tests.sync_helpers import MODEL, Deployment, unit, wait_until

NOW = dt.datetime.now(dt.timezone.utc)
TODAY = NOW.date()
FLIGHT = f"flight:VN123-{TODAY.isoformat()}"


def _request(subject="VNM-079203012", scopes=(FLIGHT, "checkpoint:SGN"), list_type="allow", airport="SGN",
             until=NOW + dt.timedelta(hours=20), name="Nguyễn Văn An", n=3) -> EnrolRequest:
    return EnrolRequest(station_id="K1", request_id=0, subject_id=subject, display_name=name, list_type=list_type,
                        scopes=tuple(scopes), departure_airport=airport, valid_from=None,
                        valid_until=int(until.timestamp()), model_id=MODEL,
                        templates=unit(np.random.default_rng(len(subject)), n))


@pytest.fixture
def site(tmp_path, central_database):
    dep = Deployment(tmp_path, central_database)
    files = generate_keypair_files(dep.keys, "station-K1")
    central = Central(dep.database)
    central.register_station("K1", load_public_key(files.public), "SGN")
    rng = np.random.default_rng(7)
    central.enrol_subject("DENY-1", "deny", ["checkpoint:SGN"], None, None, MODEL, unit(rng, 1))
    central.enrol_subject("METRO-1", "allow", ["lane:M1"], None, None, MODEL, unit(rng, 1))
    central.close()
    srv = CentralServer(dep.central_config())
    srv.start()
    link = StationLink("K1", "127.0.0.1", dep.base_port, files.secret, dep.central_public, reply_timeout_s=2.0,
                       request_retries=2)
    client = StationClient(link)
    yield dep, client, link
    client.close()
    srv.stop()


def test_a_station_enrols_a_departing_traveller(site, capsys):
    from tools import gate_central

    dep, client, _ = site
    reply = client.enrol(_request())
    assert reply.ok, reply.error
    central = Central(dep.database)
    assert reply.change_seq == central.hashmap.current_seq() > 0
    list_type, scopes, name = central.subject_standing("VNM-079203012")
    assert (list_type, name) == ("allow", "Nguyễn Văn An")
    assert scopes == ("/checkpoint/SGN/", f"/flight/VN123-{TODAY.isoformat()}/")
    # the display name stays at the central: nothing a gate receives carries it
    with central.hashmap.snapshot("") as (_, messages):
        bodies = [m.body for m in messages]
    assert bodies and all("Nguyễn".encode() not in b and b"Nguy" not in b for b in bodies)
    assert central.templates_of("VNM-079203012").shape == (3, 16)
    assert gate_central.main(["--config", str(dep.central_toml()), "show", "VNM-079203012"]) == 0
    out = capsys.readouterr().out
    assert "Nguyễn Văn An" in out and f"flight:VN123-{TODAY.isoformat()}" in out and "checkpoint:SGN" in out


@pytest.mark.parametrize("changes, reason", [
    (dict(list_type="deny"), "only enrol into the allow list"),
    (dict(scopes=("lane:M1",)), "only into flight: and checkpoint: scopes"),
    (dict(scopes=(FLIGHT, "lane:M1")), "only into flight: and checkpoint: scopes"),
    (dict(scopes=("checkpoint:HAN",)), "another airport's checkpoint"),
    (dict(airport="HAN"), "departs from HAN"),
    (dict(scopes=("flight:VN123",)), "not a dated flight"),
    (dict(scopes=(f"flight:VN123-{(TODAY + dt.timedelta(days=9)).isoformat()}",)), "not a flight of yesterday"),
    (dict(until=NOW + dt.timedelta(days=30)), "within 3 days"),
    (dict(subject="DENY-1"), "is on the deny list"),
    (dict(subject="METRO-1"), "also published in lane:M1"),
])
def test_each_refusal_over_curve(site, changes, reason):
    dep, client, _ = site
    before = Central(dep.database).list_subjects()
    reply = client.enrol(_request(**changes))
    assert not reply.ok and reason in reply.error
    assert Central(dep.database).list_subjects() == before


def test_a_station_cannot_revoke_snapshot_or_upload(site, caplog):
    caplog.set_level(logging.INFO)
    dep, client, link = site
    assert client.enrol(_request()).ok
    ctx = zmq.Context()
    try:
        security = Security(keypair=load_keypair(link.secret_key_file),
                            server_public=load_public_key(dep.central_public))
        # a KVSET delete on the collector (how an admin tool revokes)
        pub = connect_socket(ctx, zmq.PUB, security, "127.0.0.1", dep.base_port + 2, 1 << 20)
        delete = KVMsg("/checkpoint/SGN/VNM-079203012", 0, new_uuid(), {}, b"")

        def refused() -> bool:
            pub.send_multipart(delete.frames())
            return "collector: refused KVSET from station:K1" in caplog.text
        assert wait_until(refused, timeout=10)
        # a snapshot of the checkpoint (templates would leave the central)
        dealer = connect_socket(ctx, zmq.DEALER, security, "127.0.0.1", dep.base_port, 1 << 20)
        dealer.send_multipart([b"ICANHAZ?", b"/checkpoint/SGN/"])
        assert not dealer.poll(800)
        assert wait_until(lambda: "snapshot: refused '/checkpoint/SGN/' to station:K1" in caplog.text)
        # its own audit log is accepted under its own id only; health reports are for gates
        row = AuditRow(1, "2026-12-02T00:00:00Z", GENESIS_HASH, record_hash(1, "2026-12-02T00:00:00Z", GENESIS_HASH,
                                                                             {"e": 1}), {"e": 1})
        health = HealthReport("K1", 6, "ok", "t", {}, 0, 0, None)
        cases = ((encode_audit_batch(AuditBatch("G1", 5, (row,))), False, "not authorised for gate G1"),
                 (encode_health(health), False, "not authorised for gate K1"),
                 (encode_audit_batch(AuditBatch("K1", 7, (row,))), True, ""))
        for payload, ok, error in cases:
            req = connect_socket(ctx, zmq.REQ, security, "127.0.0.1", dep.base_port + 3, 1 << 20)
            req.send(payload)
            assert req.poll(3000)
            answer = decode_reply(req.recv())
            assert answer.ok is ok and error in answer.error
            req.close(0)
        assert Central(dep.database).audit.count("K1") == 1 and Central(dep.database).audit.count("G1") == 0
    finally:
        ctx.destroy(0)
    assert Central(dep.database).subject_standing("VNM-079203012")[1] == ("/checkpoint/SGN/",
                                                                          f"/flight/VN123-{TODAY.isoformat()}/")


def test_a_gate_key_cannot_enrol_and_an_unknown_key_is_not_heard(site):
    dep, _, link = site
    with pytest.raises(EnrolmentError, match="is an enrolment station's id"):
        dep.add_gate("K1", ["checkpoint:SGN"])
    gate_secret = dep.add_gate("SEC-1", ["checkpoint:SGN"])  # a gate's key claiming to be station K1
    as_gate = StationClient(StationLink("K1", "127.0.0.1", dep.base_port, gate_secret, dep.central_public,
                                        reply_timeout_s=2.0))
    try:
        reply = as_gate.enrol(_request())
        assert not reply.ok and "not authorised as station K1" in reply.error
    finally:
        as_gate.close()
    stranger = generate_keypair_files(dep.keys, "station-K9")
    unknown = StationClient(StationLink("K9", "127.0.0.1", dep.base_port, stranger.secret, dep.central_public,
                                        reply_timeout_s=0.4, request_retries=2))
    try:
        with pytest.raises(CentralUnreachable, match="no reply"):
            unknown.enrol(_request())
    finally:
        unknown.close()
    assert Central(dep.database).subject_standing("VNM-079203012") is None


def test_enrol_request_range_checks():
    good = msgpack.unpackb(encode_enrol(_request()), raw=False)
    decoded = decode_request(msgpack.packb(good, use_bin_type=True))
    assert decoded.display_name == "Nguyễn Văn An" and decode_request(encode_enrol(decoded)) == decoded
    for change, reason in [
        ({"vu": None}, "vu must be a Unix time"),
        ({"vu": -5}, "vu must be a Unix time"),
        ({"vf": good["vu"] + 10}, "vu must be after vf"),
        ({"scopes": []}, "scopes must be a list of 1..8"),
        ({"scopes": ["nowhere:X"]}, "scope kind 'nowhere'"),
        ({"from": "sgn"}, "from must be the 3-letter"),
        ({"n": 17}, "n must be 1..16"),
        ({"tpl": b"\x00" * 12}, r"tpl must be n\*dim\*4"),
        ({"tpl": np.full(good["n"] * good["dim"], np.nan, "<f4").tobytes()}, "NaN"),
        ({"tpl": np.full(good["n"] * good["dim"], 2.0, "<f4").tobytes()}, "not L2-normalised"),
        ({"name": "x" * 200}, "name must be nil or 1-128"),
        ({"subject": "Nguyễn_Văn_An"}, "subject id"),
        ({"station": None}, "station id"),
    ]:
        with pytest.raises(MalformedRequest, match=reason):
            decode_request(msgpack.packb({**good, **change}, use_bin_type=True))


def test_policy_is_a_pure_function():
    req = decode_request(encode_enrol(_request()))
    check_enrolment("SGN", req, None, NOW)
    check_enrolment("SGN", req, ExistingSubject("allow", ("/checkpoint/HAN/", "/flight/VN200-2026-01-01/")), NOW)
    with pytest.raises(StationRefusal, match="departs from SGN"):
        check_enrolment("HAN", req, None, NOW)
    with pytest.raises(StationRefusal, match="must be in the future"):
        check_enrolment("SGN", req, None, NOW + dt.timedelta(days=1))


def test_gate_central_station_add_and_remove(tmp_path, capsys):
    from tools import gate_central

    dep = Deployment(tmp_path)
    toml = dep.central_toml()
    pub = generate_keypair_files(tmp_path / "k", "station-K2").public
    assert gate_central.main(["--config", str(toml), "station", "add", "K2", "--public-key", str(pub),
                              "--airport", "SGN"]) == 0
    assert "airport SGN" in capsys.readouterr().out
    assert Central(dep.database).principal("station:K2").scopes == ("SGN",)
    assert gate_central.main(["--config", str(toml), "station", "add", "K3", "--public-key", str(pub),
                              "--airport", "saigon"]) == 2
    assert "3-letter IATA code" in capsys.readouterr().err
    assert gate_central.main(["--config", str(toml), "station", "remove", "K2"]) == 0
    assert Central(dep.database).principal("station:K2") is None


def test_a_station_moves_to_the_next_central_node(site):
    from tests.sync_helpers import free_base_port

    dep, _, link = site
    dead = free_base_port()  # nothing listens there: the first node is down
    moving = StationClient(dataclasses.replace(link, reply_timeout_s=0.5, request_retries=3,
                                               central=(f"tcp://127.0.0.1:{dead}", f"tcp://127.0.0.1:{dep.base_port}")))
    try:
        reply = moving.enrol(_request(subject="VNM-000000001"))
        assert reply.ok, reply.error
    finally:
        moving.close()
    assert Central(dep.database).subject_standing("VNM-000000001")[0] == "allow"
