"""The console's store and figures on both central stores: accounts, sessions, lock-out, the
hash-chained ops log, lane statistics from real lane records, search filters, the fleet's
alarm and watchlist columns, and the shared chain-checked export."""
from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest

from console import views
from console.config import BindRefused, ConsoleConfig, check_bind
from console.store import AccountError, ConsoleStore
from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.audit_export import export_audit, pull_audit
from sync.service_messages import HealthReport
from tests.sync_helpers import MODEL, Clock, unit

UTC = dt.timezone.utc




def test_accounts_sessions_and_their_end(central):
    clock = Clock()
    store = ConsoleStore(central.db, clock)
    with pytest.raises(AccountError, match="12 characters"):
        store.add_account("ana", "viewer", "short", "t")
    with pytest.raises(AccountError, match="role"):
        store.add_account("ana", "admin", "long-enough-password", "t")
    store.add_account("ana", "viewer", "long-enough-password", "lead (unix ops)")
    with pytest.raises(AccountError, match="exists"):
        store.add_account("ana", "viewer", "long-enough-password", "t")
    row = central.conn.execute("SELECT password_hash FROM ops_accounts WHERE username = 'ana'").fetchone()
    assert row[0].startswith("$argon2id$") and "long-enough-password" not in row[0]
    ok = store.check_login("ana", "long-enough-password", "10.0.0.9", 5, 60)
    assert ok.reason == "ok" and ok.account.role == "viewer"
    token, s = store.create_session(ok.account, "10.0.0.9")
    assert store.session(token, idle_s=900, max_age_s=3600).account.username == "ana"
    clock.t += 899
    assert store.session(token, 900, 3600) is not None  # used now: the idle time starts again
    clock.t += 899
    assert store.session(token, 900, 3600) is not None
    clock.t += 901
    assert store.session(token, 900, 3600) is None  # idle too long
    token, _ = store.create_session(ok.account, "x")
    for _ in range(5):
        clock.t += 700
        assert store.session(token, 900, 3600) is not None
    clock.t += 700
    assert store.session(token, 900, 3600) is None  # older than max_age_s, however busy
    token, _ = store.create_session(ok.account, "x")
    store.set_role("ana", "supervisor", "lead")
    assert store.session(token, 900, 3600) is None  # a role change ends sessions
    token, _ = store.create_session(store.account("ana"), "x")
    store.set_disabled("ana", True, "lead")
    assert store.session(token, 900, 3600) is None
    assert store.check_login("ana", "long-enough-password", "x", 5, 60).reason == "disabled"
    store.set_disabled("ana", False, "lead")
    store.set_password("ana", "another-long-password", "lead")
    assert store.check_login("ana", "long-enough-password", "x", 5, 60).reason == "wrong password"
    assert store.check_login("ana", "another-long-password", "x", 5, 60).reason == "ok"


def test_lock_out_after_repeated_failures_and_it_ends(central):
    clock = Clock()
    store = ConsoleStore(central.db, clock)
    store.add_account("bo", "supervisor", "the-right-password", "t")
    for _ in range(2):
        assert store.check_login("bo", "wrong-password!", "a", 3, 300).locked_until is None
    third = store.check_login("bo", "wrong-password!", "a", 3, 300)
    assert third.account is None and third.locked_until == pytest.approx(clock.t + 300)
    clock.t += 299
    assert store.check_login("bo", "the-right-password", "a", 3, 300).reason == "locked"
    clock.t += 2
    assert store.check_login("bo", "the-right-password", "a", 3, 300).reason == "ok"
    logins = [e for e in store.ops_log(50) if e.action == "login"]
    assert [e.detail["reason"] for e in reversed(logins)] == ["wrong password"] * 3 + ["locked", "ok"]


def test_ops_log_is_a_hash_chain_that_finds_an_edit_and_a_deletion(central):
    store = ConsoleStore(central.db, Clock())
    store.add_account("cy", "viewer", "long-enough-password", "t")
    for i in range(5):
        store.record("cy", "search", "ok", "G1", "127.0.0.1", {"subject": f"S{i}"})
    check = store.verify_ops_log()
    assert check.ok and check.records == 6
    with central.db.write_transaction():
        body = central.conn.execute("SELECT body FROM ops_audit WHERE seq = 3").fetchone()[0]
        central.conn.execute("UPDATE ops_audit SET body = ? WHERE seq = 3", (body.replace("S1", "S9"),))
    bad = store.verify_ops_log()
    assert not bad.ok and bad.first_broken_seq == 3 and "altered" in bad.reason
    with central.db.write_transaction():
        central.conn.execute("UPDATE ops_audit SET body = ? WHERE seq = 3", (body,))
        central.conn.execute("DELETE FROM ops_audit WHERE seq = 4")
    gone = store.verify_ops_log()
    assert not gone.ok and gone.first_broken_seq == 5


def _chain(bodies: list[dict], start: dt.datetime, first_seq: int = 1, prev: str = GENESIS_HASH) -> list[AuditRow]:
    rows = []
    for i, body in enumerate(bodies):
        seq = first_seq + i
        ts = (start + dt.timedelta(seconds=10 * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return rows


def _decision(track: int, outcome: str, reason: str, subject: str | None = None, event: str = "decision") -> dict:
    return {"event": event, "lane": "L1", "decision": {"outcome": outcome, "reason": reason, "track_id": track,
                                                        "subject_id": subject}}


def test_lane_figures_from_lane_records(central):
    now = dt.datetime.now(UTC).replace(microsecond=0)
    bodies = [
        {"event": "lane_started", "lane": "L1"},
        _decision(1, "allow", "match", "P1"),  # first attempt
        _decision(2, "deny", "no_match", event="attempt_failed"), _decision(2, "allow", "match", "P2"),  # second
        _decision(3, "refer", "presentation_attack_suspected", event="attempt_failed"),
        _decision(3, "refer", "presentation_attack_suspected"),
        {"event": "door_forced", "lane": "L1", "from": "idle", "to": "alarm"},
        {"event": "manual_action", "lane": "L1", "action": "reset", "operator_id": "st-3", "reason": "checked",
         "cleared": ["door_forced"], "from": "alarm", "to": "idle"},
        {"event": "lane_started", "lane": "L1"},  # a restart: track ids start again
        _decision(1, "deny", "no_match"),
    ]
    central.register_gate("G1", "g" * 40, ["lane:L1"])
    central.audit.store_batch("G1", _chain(bodies, now - dt.timedelta(minutes=20)), 1.0)
    st = views.lane_stats(central, "G1", "1h", now=now)
    assert st.decisions == 4 and st.visits == 4 and st.first_attempt_allowed == 1
    assert st.first_attempt_rate == 0.25
    assert (st.liveness_final, st.liveness_retried, st.retries) == (1, 1, 2)
    assert st.totals == {("allow", "match"): 2, ("refer", "presentation_attack_suspected"): 1,
                         ("deny", "no_match"): 1}
    assert sum(sum(b.values()) for b in st.buckets) == 4 and len(st.buckets) == 30
    assert st.alarms_raised == {"door_forced": 1}
    assert [(a.operator, a.reason, a.cleared) for a in st.staff] == [("st-3", "checked", "door forced")]
    # outside the window: nothing
    assert views.lane_stats(central, "G1", "1h", now=now + dt.timedelta(hours=2)).decisions == 0


def test_search_filters_by_outcome_and_subject_and_names_only_on_request(central):
    now = dt.datetime.now(UTC)
    from sync.central import Enrolment

    central.enrol_subjects([Enrolment("P1", "allow", ["lane:L1"], None, None, MODEL,
                                        unit(np.random.default_rng(1), 1), display_name="Đỗ Thị Hà")])
    central.register_gate("G1", "g" * 40, ["lane:L1"])
    central.register_gate("G2", "h" * 40, ["lane:L1"])
    central.audit.store_batch("G1", _chain([_decision(1, "allow", "match", "P1"), _decision(2, "deny", "no_match"),
                                            {"event": "open", "lane": "L1", "opening": {"subject_id": "P1"}}],
                                           now - dt.timedelta(minutes=5)), 1.0)
    central.audit.store_batch("G2", _chain([_decision(1, "allow", "match", "P11"),
                                            _decision(2, "allow", "match", "P1")], now - dt.timedelta(minutes=4)), 1.0)
    since, until = now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1)
    rows, more = views.search_audit(central, since, until, subject="P1")
    assert {(r.gate_id, r.seq) for r in rows} == {("G1", 1), ("G1", 3), ("G2", 2)} and not more  # not P11
    rows, _ = views.search_audit(central, since, until, outcome="allow")
    assert {(r.gate_id, r.seq) for r in rows} == {("G1", 1), ("G2", 1), ("G2", 2)}
    rows, _ = views.search_audit(central, since, until, gate_id="G1", outcome="deny")
    assert [(r.gate_id, r.seq, r.outcome) for r in rows] == [("G1", 2, "deny")]
    rows, more = views.search_audit(central, since, until, limit=2)
    assert len(rows) == 2 and more and rows[0].ts >= rows[1].ts  # newest first
    assert views.display_names(central, ["P1", "P11", ""]) == {"P1": "Đỗ Thị Hà"}


def test_export_through_the_cli_path_and_a_filtered_export_still_checks_the_whole_chain(central, tmp_path):
    now = dt.datetime.now(UTC)
    central.register_gate("G1", "g" * 40, ["lane:L1"])
    rows = _chain([_decision(i, "allow" if i % 2 else "deny", "match" if i % 2 else "no_match", f"P{i % 3}")
                   for i in range(1, 13)], now - dt.timedelta(minutes=10))
    central.audit.store_batch("G1", rows, 1.0)
    since = now - dt.timedelta(hours=1)
    for fmt in ("jsonl", "csv"):
        report = pull_audit(central, "G1", since, None, fmt, tmp_path / f"cli.{fmt}")
        buf = io.StringIO()
        r = export_audit(central, "G1", since, None, fmt, buf.write)
        assert report.check.ok and r.check.ok and r.records == r.written == 12
        assert buf.getvalue().encode("utf-8") == (tmp_path / f"cli.{fmt}").read_bytes()
    buf = io.StringIO()
    r = export_audit(central, "G1", since, None, "jsonl", buf.write,
                     select=lambda row: views.matches(row.body, None, "P1"))
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert r.records == 12 and r.written == len(lines) == 4
    assert {x["body"]["decision"]["subject_id"] for x in lines} == {"P1"}
    # a record altered at the central breaks the chain; the filtered export says so too
    with central.db.write_transaction():
        central.conn.execute("UPDATE audit SET body = ? WHERE gate_id = 'G1' AND seq = 7",
                             (json.dumps(_decision(7, "allow", "match", "P9"), sort_keys=True, separators=(",", ":")),))
    r = export_audit(central, "G1", since, None, "jsonl", lambda _t: None,
                     select=lambda row: views.matches(row.body, None, "P1"))
    assert not r.check.ok and r.check.first_broken_seq == 7


def test_fleet_columns_alarms_watchlist_and_ack(central):
    clock = Clock(dt.datetime.now(UTC).timestamp())
    central.register_gate("G1", "g" * 40, ["lane:L1"])
    central.register_gate("G2", "h" * 40, ["lane:L2"])
    rng = np.random.default_rng(2)
    for i in range(3):
        central.enrol_subject(f"S{i}", "allow", ["lane:L1"], None, None, MODEL, unit(rng, 1))
    central.enrol_subject("T0", "allow", ["lane:L2"], None, None, MODEL, unit(rng, 1))
    seq_after_first = 1
    since = clock.t - 30
    central.record_health(HealthReport("G1", 1, "ok", "0.1.0", {}, seq_after_first, 7, None, ("/lane/L1/",), {
        "mode": "alarm", "alarm": "tailgating", "mode_since": since, "site": "SGN", "lane": "L1", "faults": []}))
    central.record_health(HealthReport("G2", 2, "degraded", "0.1.0", {}, central.hashmap.current_seq(), 0, None,
                                       ("/lane/L2/",), {"mode": "out_of_service", "out_of_service_by": "st-9",
                                                        "site": "HAN", "lane": "L2", "faults": []}))
    store = ConsoleStore(central.db, clock)
    rows = {r.gate_id: r for r in views.fleet(central, 60.0, store.acks())}
    g1, g2 = rows["G1"], rows["G2"]
    assert (g1.state, g1.site, g1.lanes, g1.audit_backlog) == ("alarm", "SGN", ("L1",), 7)
    assert g1.watchlist_behind == 2 and g1.watchlist_head == 3  # S1, S2 published after its sequence
    assert g2.state == "out-of-service" and g2.out_of_service_by == "st-9" and g2.watchlist_behind == 0
    (alarm,) = g1.alarms
    assert "tailgating" in alarm.text and alarm.since is not None and alarm.ack is None
    store.acknowledge("G1", alarm.key, "sam", "security at the lane", "127.0.0.1")
    (acked,) = {r.gate_id: r for r in views.fleet(central, 60.0, store.acks())}["G1"].alarms
    assert acked.ack[0] == "sam" and acked.ack[1] == "security at the lane"
    with pytest.raises(AccountError, match="note"):
        store.acknowledge("G1", alarm.key, "sam", "   ", "x")
    assert [r.gate_id for r in views.fleet(central, 60.0, site="HAN")] == ["G2"]
    assert [r.gate_id for r in views.fleet(central, 60.0, state="alarm")] == ["G1"]
    # a gate not heard from is offline, whatever it said last
    assert {r.gate_id: r.state for r in views.fleet(central, 0.001)} == {"G1": "offline", "G2": "offline"}


def test_bind_rule():
    check_bind(ConsoleConfig())
    check_bind(ConsoleConfig(bind="::1"))
    for bad in (ConsoleConfig(bind="0.0.0.0"), ConsoleConfig(bind="10.1.2.3"),
                ConsoleConfig(bind="0.0.0.0", behind_proxy=True)):
        with pytest.raises(BindRefused):
            check_bind(bad)
    with pytest.raises(Exception, match="go together"):
        ConsoleConfig(tls_cert_file=Path("a.pem"))


def test_the_lane_tells_its_health_what_the_fleet_shows():
    from configschema import load_dataclass
    from gate.events import DoorForced, StaffAction, StaffCommand, Tick
    from gate.lane import LaneConfig, health_fields, start, step
    from tools.sim_gate import LANE_DEFAULTS

    cfg = load_dataclass(LaneConfig, {**LANE_DEFAULTS, "lane_id": "L7"}, "lane")
    s, _ = start(cfg, 100.0, pad_provisioned=False)
    s, _ = step(s, DoorForced(105.0, "door forced"))
    s, _ = step(s, Tick(112.0))
    # lane time 112 is wall time 5000: the alarm began 7 s before
    assert health_fields(s, 5000.0) == {"lane": "L7", "alarm": "door_forced", "out_of_service_by": None,
                                        "mode_since": 4993.0}
    s, _ = step(s, StaffCommand(113.0, StaffAction.RESET, "st-1", "checked"))
    s, _ = step(s, StaffCommand(114.0, StaffAction.OUT_OF_SERVICE, "st-1", "camera cleaning"))
    assert health_fields(s, 6000.0) == {"lane": "L7", "alarm": None, "out_of_service_by": "st-1",
                                        "mode_since": 6000.0}


def test_the_shipped_console_config_is_valid_and_refuses_nothing_it_should_serve():
    from console.config import load_console_config
    from tests.console_helpers import REPO

    central_cfg, cfg = load_console_config(REPO / "config" / "ops-console.toml")
    assert cfg.behind_proxy and cfg.secure_cookies and central_cfg.pool_size >= cfg.db_threads + 3
    check_bind(cfg)


def test_journey_follows_one_passenger_across_check_in_security_and_boarding(central):
    """The airport journey on one page: the kiosk's enrolment, the security lane and the
    boarding gate, oldest first, each place named for what it is; another passenger's records
    and the same id's prefix (P1 vs P11) stay out."""
    now = dt.datetime.now(UTC)
    central.register_station("K01", "k" * 40, "SGN")
    central.register_gate("SEC1", "s" * 40, ["checkpoint:SGN"])
    central.register_gate("G12", "b" * 40, [])  # a boarding gate between flights, then assigned one
    central.assign_flights("G12", [f"flight:VN123-{now.date().isoformat()}"])
    central.audit.store_batch("K01", _chain([{"event": "kiosk_attempt", "outcome": "enrolled", "subject_id": "P1"},
                                             {"event": "kiosk_attempt", "outcome": "enrolled", "subject_id": "P11"}],
                                            now - dt.timedelta(minutes=30)), 1.0)
    central.audit.store_batch("SEC1", _chain([_decision(1, "allow", "match", "P1"),
                                              _decision(2, "allow", "match", "P11")],
                                             now - dt.timedelta(minutes=20)), 1.0)
    central.audit.store_batch("G12", _chain([_decision(1, "deny", "no_match"), _decision(2, "allow", "match", "P1")],
                                            now - dt.timedelta(minutes=10)), 1.0)
    steps, more = views.journey(central, "P1", now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1))
    assert [(s.place, s.place_kind, s.outcome) for s in steps] == [
        ("K01", "check-in", ""), ("SEC1", "security", "allow"), ("G12", "boarding", "allow")] and not more
    assert [s.ts for s in steps] == sorted(s.ts for s in steps)
    assert views.place_kind(central, "nowhere") == "lane"
