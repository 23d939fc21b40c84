"""The fleet view at national scale: a refresh of `console.views.fleet` (and `gate-ops gates`,
`Central.gate_statuses`) sends the same number of SQL statements for 3 gates as for 30, on both
stores; and the rows its set queries build are the ones the single-gate methods give, for
several gates at once (the newest chain across new epochs, alarms, assigned flights, changes
behind)."""
from __future__ import annotations

import datetime as dt

import numpy as np

from console import views
from sync.audit_chain import GENESIS_HASH, AuditRow, ChainEpoch, record_hash
from sync.central import Central, Enrolment
from sync.service_messages import HealthReport
from tests.sync_helpers import MODEL, unit
from tools.bench_fleet import count_statements

TODAY = dt.datetime.now(dt.timezone.utc).date().isoformat()


def _chain(n: int, start: int = 1, prev: str = GENESIS_HASH, tag: str = "") -> list[AuditRow]:
    rows = []
    for seq in range(start, start + n):
        ts = f"2026-12-02T06:00:{seq % 60:02d}.{seq:06d}Z"
        body = {"event": "decision", "n": seq, "tag": tag}
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return rows


def _key(name: str) -> str:
    return name.ljust(40, "k")


def _fork(central: Central, gate: str, parent: str, base: AuditRow, now: float) -> str:
    chain = ChainEpoch.fork(gate, _key(gate), parent, base.seq, base.hash, "2026-12-02T07:00:00.000000Z",
                            f"{int(now * 1000):032x}")
    central.audit.register_epoch(gate, chain, _key(gate), now)
    return chain.epoch


def _add_gates(central: Central, first: int, last: int, rng) -> None:
    """Gates first..last-1 in three kinds, every kind present in any three in a row: a security
    lane up to date; a boarding gate behind on its assigned flight; a lane whose log forked
    (resolved) and then conflicted again in the new chain (open alarm)."""
    flight = f"flight:VN1-{TODAY}"
    kinds = {}
    for i in range(first, last):
        g = f"G{i:03d}"
        kinds[g] = i % 3
        if i % 3 == 1:
            central.register_gate(g, _key(g), [])
            central.assign_flights(g, [flight])
        else:
            central.register_gate(g, _key(g), [f"lane:L{i:03d}"])
    central.enrol_subjects([Enrolment(f"S{i}", "allow", [f"lane:L{i:03d}" if i % 3 != 1 else flight], None, None,
                                      MODEL, unit(rng, 1)) for i in range(first, last)])
    head = central.hashmap.current_seq()
    for g, kind in kinds.items():  # the boarding gates report having applied nothing yet
        rows = _chain(4)
        central.audit.store_batch(g, rows, 1.0)
        if kind == 2:
            central.audit.store_batch(g, _chain(1, 4, rows[2].hash, "theirs"), 2.0)
            epoch = _fork(central, g, "", rows[2], 3.0)
            again = _chain(2, 4, rows[2].hash, "second")
            central.audit.store_batch(g, again, 4.0, epoch=epoch)
            central.audit.store_batch(g, _chain(1, 5, again[0].hash, "third"), 5.0, epoch=epoch)
        central.record_health(HealthReport(g, 1, "ok", "1.0", {}, 0 if kind == 1 else head, 0, None, (),
                                           {"site": "SGN", "mode": "in_service"}))


def _statements(central: Central) -> tuple[int, int]:
    with count_statements(central.db) as fleet_sql:
        rows = views.fleet(central, 600.0)
    with count_statements(central.db) as gates_sql:
        central.gate_statuses(600.0)
    assert {r.state for r in rows} == {"online", "alarm"} and any(r.watchlist_behind for r in rows)
    return len(fleet_sql), len(gates_sql)


def test_a_fleet_refresh_sends_as_many_statements_for_30_gates_as_for_3(central):
    rng = np.random.default_rng(5)
    _add_gates(central, 0, 3, rng)
    few = _statements(central)
    _add_gates(central, 3, 30, rng)
    many = _statements(central)
    assert len(views.fleet(central, 600.0)) == 30
    assert few == many, f"statements per refresh grew with the fleet: {few} for 3 gates, {many} for 30"
    assert many[0] <= 10 and many[1] <= 5, many


def test_set_queries_give_each_gate_what_its_single_gate_methods_give(central):
    rng = np.random.default_rng(6)
    flight_a, flight_b = f"flight:VN2-{TODAY}", f"flight:VN3-{TODAY}"
    central.register_gate("LANE1", _key("LANE1"), ["lane:L1", "lane:L1B"])
    central.register_gate("FORK2", _key("FORK2"), ["lane:L2"])  # two new epochs, records in the newest
    central.register_gate("FORK3", _key("FORK3"), ["lane:L3"])  # a new epoch holding nothing yet
    central.register_gate("BOARD4", _key("BOARD4"), [])
    central.register_gate("BOARD5", _key("BOARD5"), [])
    central.register_gate("QUIET6", _key("QUIET6"), ["lane:L6"])  # never reported, never uploaded
    central.assign_flights("BOARD4", [flight_a, flight_b])
    central.assign_flights("BOARD5", [flight_b])
    central.enrol_subjects([Enrolment("P1", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1)),
                            Enrolment("PA", "allow", [flight_a], None, None, MODEL, unit(rng, 1))])
    reported = central.hashmap.current_seq()
    for g in ("LANE1", "FORK2", "FORK3", "BOARD4", "BOARD5"):
        central.record_health(HealthReport(g, 1, "ok", "1.0", {}, reported, 0, None, (), {"mode": "in_service"}))
    central.enrol_subjects([Enrolment(f"P{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
                            for i in range(2, 5)] +
                           [Enrolment("PB", "allow", [flight_b], None, None, MODEL, unit(rng, 1))])
    central.audit.store_batch("LANE1", _chain(7), 1.0)
    # FORK2: conflict at 6 -> epoch A from 5 (alarm resolved) -> conflict in A at 8 -> epoch B from 7
    first = _chain(10)
    central.audit.store_batch("FORK2", first, 1.0)
    central.audit.store_batch("FORK2", _chain(1, 6, first[4].hash, "a"), 2.0)
    epoch_a = _fork(central, "FORK2", "", first[4], 3.0)
    in_a = _chain(3, 6, first[4].hash, "a")
    central.audit.store_batch("FORK2", in_a, 4.0, epoch=epoch_a)
    central.audit.store_batch("FORK2", _chain(1, 8, in_a[1].hash, "b"), 5.0, epoch=epoch_a)
    epoch_b = _fork(central, "FORK2", epoch_a, in_a[1], 6.0)
    central.audit.store_batch("FORK2", _chain(5, 8, in_a[1].hash, "b"), 7.0, epoch=epoch_b)
    # FORK3: forks at 3 of 6 held, and has sent nothing in the new chain yet
    third = _chain(6)
    central.audit.store_batch("FORK3", third, 1.0)
    central.audit.store_batch("FORK3", _chain(1, 4, third[2].hash, "x"), 2.0)
    _fork(central, "FORK3", "", third[2], 3.0)
    central.audit.store_batch("BOARD5", _chain(2, 1, GENESIS_HASH, "five"), 1.0)
    central.audit.store_batch("BOARD5", _chain(1, 2, _chain(1)[0].hash, "other"), 8.0)  # open conflict at 2

    rows = {r.gate_id: r for r in views.fleet(central, 600.0)}
    statuses = {g.gate_id: g for g in central.gate_statuses(600.0)}
    assert list(rows) == ["BOARD4", "BOARD5", "FORK2", "FORK3", "LANE1", "QUIET6"]
    held = {g: r.audit_held_seq for g, r in rows.items()}
    assert held == {"LANE1": 7, "FORK2": 12, "FORK3": 3, "BOARD4": 0, "BOARD5": 2, "QUIET6": 0}
    assert central.audit.latest_seqs() == held
    for g in rows:
        assert central.audit.latest_seq(g) == held[g] == statuses[g].audit_max_seq
        assert list(statuses[g].audit_alarms) == central.audit.alarms(g)
        assert statuses[g].audit_alarm == central.audit.alarm_summary(g)
    assert [a.resolved_by for a in statuses["FORK2"].audit_alarms] == [epoch_a, epoch_b]
    assert statuses["FORK2"].audit_alarm.startswith("forked: conflict at seq 8")
    assert statuses["BOARD5"].audit_alarm.startswith("ALARM conflict at seq 2")
    assert [a.key for a in rows["BOARD5"].alarms if a.source == "audit"] == ["audit::conflict:2"]
    assert {g: r.state for g, r in rows.items()} == {"LANE1": "online", "FORK2": "online", "FORK3": "online",
                                                      "BOARD4": "online", "BOARD5": "alarm", "QUIET6": "offline"}
    # flights assigned and what the gates have not applied yet
    assert central.all_assigned_flights() == {g: central.assigned_flights(g) for g in ("BOARD4", "BOARD5")}
    assert rows["BOARD4"].scopes == (f"flight:VN2-{TODAY}", f"flight:VN3-{TODAY}")
    assert rows["BOARD5"].scopes == (f"flight:VN3-{TODAY}",)
    heads = central.hashmap.scope_heads(["/lane/L1/", "/lane/L1B/", f"/flight/VN2-{TODAY}/", f"/flight/VN3-{TODAY}/"])
    assert heads["/lane/L1B/"] == 0 and heads[f"/flight/VN3-{TODAY}/"] == central.hashmap.current_seq()
    assert (rows["LANE1"].watchlist_head, rows["LANE1"].watchlist_behind) == (heads["/lane/L1/"], 3)  # P2..P4
    assert (rows["BOARD4"].watchlist_head, rows["BOARD4"].watchlist_behind) == (heads[f"/flight/VN3-{TODAY}/"], 1)
    assert (rows["BOARD5"].watchlist_head, rows["BOARD5"].watchlist_behind) == (heads[f"/flight/VN3-{TODAY}/"], 1)
    assert (rows["FORK2"].watchlist_behind, rows["QUIET6"].watchlist_behind) == (0, None)
    assert central.hashmap.changes_behind([("/lane/L1/", 0), ("/lane/L1/", reported), ("/lane/L1/", 99),
                                           ("/lane/L6/", 0)]) == {
        ("/lane/L1/", 0): 4, ("/lane/L1/", reported): 3, ("/lane/L1/", 99): 0, ("/lane/L6/", 0): 0}
    assert central.principal("gate:BOARD4").assigned == central.assigned_flights("BOARD4")
    assert {p.ident: p.assigned for p in central.principals() if p.kind == "gate"}["BOARD5"] == \
        central.assigned_flights("BOARD5")
    # a gate's own page reads only that gate, and sees exactly its row in the fleet
    for g in rows:
        assert views.fleet(central, 600.0, gate_id=g) == [rows[g]]
        assert central.gate_statuses(600.0, g) == [statuses[g]]
    assert views.fleet(central, 600.0, gate_id="NOSUCH") == [] and central.gate_statuses(600.0, "NOSUCH") == []
    assert views.fleet(central, 600.0, gate_id="P1") == []  # a subject's id is not a gate

