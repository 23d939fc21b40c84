"""A gate change on real sockets against both central stores: `gate-central assign` moves a
boarding gate from flight A to flight B while its agent runs; B's passengers appear in the
gate's watchlist and A's disappear, with no restart. Refusals (an unregistered gate, a
security lane, a lane scope, a departed flight) are one-line errors that change nothing."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from sync.agent import GateAgent
from sync.central import Central, Enrolment, EnrolmentError
from sync.central_server import CentralServer
from sync.service_messages import MalformedRequest, Reply, decode_reply, encode_reply
from tests.sync_helpers import MODEL, Deployment, MemoryWatchlist, SqliteAuditLog, in_days, unit, wait_until
from tools import gate_central

TODAY = dt.datetime.now(dt.timezone.utc).date().isoformat()
A, B = f"flight:VN123-{TODAY}", f"flight:VN456-{TODAY}"
SA, SB = f"/flight/VN123-{TODAY}/", f"/flight/VN456-{TODAY}/"
HEALTH = {"status": "ok", "software_version": "test"}


def _enrol(central: Central, scope: str, names: list[str], rng) -> None:
    central.enrol_subjects([Enrolment(n, "allow", [scope], None, in_days(1), MODEL, unit(rng, 2)) for n in names])


def test_assign_moves_a_running_gate_from_flight_a_to_b_without_restart(tmp_path, central_database):
    rng = np.random.default_rng(3)
    dep = Deployment(tmp_path, central_database)
    secret = dep.add_gate("G12", [])  # a boarding gate: registered for no scope, its flights are assigned
    central = Central(dep.database)
    _enrol(central, A, ["pax-a1", "pax-a2"], rng)
    _enrol(central, B, ["pax-b1", "pax-b2", "pax-b3"], rng)
    central.assign_flights("G12", [A])
    server = CentralServer(dep.central_config())
    server.start()
    sink = MemoryWatchlist()
    agent = GateAgent(dep.agent_config("G12", secret, [], boarding_gate=True), sink,
                      SqliteAuditLog(tmp_path / "audit.db"), lambda: HEALTH)
    agent.start()
    try:
        assert wait_until(lambda: set(sink.snapshot()) == {SA + "pax-a1", SA + "pax-a2"}, 15)
        assert agent.scopes() == (SA,)
        # the gate change, through the CLI, while the agent runs
        assert gate_central.main(["--config", str(dep.central_toml()), "assign", "--gate", "G12",
                                  "--flight", B.removeprefix("flight:")]) == 0
        assert wait_until(lambda: set(sink.snapshot()) == {SB + "pax-b1", SB + "pax-b2", SB + "pax-b3"}, 15), \
            sink.snapshot().keys()
        assert agent.scopes() == (SB,) and agent.status().watchlist.scope_changes >= 1
        # live updates of the new flight arrive; the old flight's no longer do
        _enrol(central, B, ["pax-b4"], rng)
        _enrol(central, A, ["pax-a3"], rng)
        assert wait_until(lambda: SB + "pax-b4" in sink.snapshot(), 10)
        assert not any(k.startswith(SA) for k in sink.snapshot())
        # the central now refuses flight A's subtree to this gate (policy follows the assignment)
        assert central.principal("gate:G12").may_snapshot(SB) and not central.principal("gate:G12").may_snapshot(SA)
        # and `--none`: the gate boards nothing, its watchlist empties
        central.assign_flights("G12", [])
        assert wait_until(lambda: sink.snapshot() == {}, 15)
    finally:
        agent.stop()
        server.stop()
        central.close()


def test_assign_refusals_are_one_line_and_change_nothing(tmp_path, central_database, capsys):
    dep = Deployment(tmp_path, central_database)
    dep.add_gate("G12", [])
    dep.add_gate("SEC1", ["checkpoint:SGN"])
    cfg = str(dep.central_toml())
    central = Central(dep.database)
    central.assign_flights("G12", [A])
    refused = {
        ("--gate", "G99", "--flight", A): "gate 'G99' is not registered",
        ("--gate", "SEC1", "--flight", A): "registered for checkpoint:SGN",
        ("--gate", "G12", "--flight", "lane:L1"): "not a dated flight",
        ("--gate", "G12", "--flight", "VN123"): "not a dated flight",
        ("--gate", "G12", "--flight", "VN1-2020-01-01"): "departed on 2020-01-01",
        ("--gate", "G12"): "needs --flight",
    }
    for argv, message in refused.items():
        assert gate_central.main(["--config", cfg, "assign", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert central.assigned_flights("G12") == (SA,) and central.assigned_flights("SEC1") == ()
    with pytest.raises(EnrolmentError, match="not registered"):
        central.assign_flights("station-1", [A])
    central.close()


def test_reply_assigned_scopes_round_trip_and_are_range_checked():
    r = Reply(request_id=1, ok=True, assigned_scopes=(SA, SB))
    assert decode_reply(encode_reply(r)).assigned_scopes == (SA, SB)
    import msgpack

    base = msgpack.unpackb(encode_reply(Reply(request_id=1, ok=True)))
    for bad in (["/lane/L1/"], ["flight:VN1"], "x", [SA] * 17, [1]):
        with pytest.raises(MalformedRequest, match="assigned"):
            decode_reply(msgpack.packb({**base, "assigned": bad}))
