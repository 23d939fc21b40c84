"""The action executor on a real audit log and the simulated turnstile: no opening without its record."""
from devices.config import SimConfig
from devices.sim import SimDriver
from gate.actions import Audit, Direction, Lock, RecordPassage, Unlock
from gate.audit import AuditLog
from gate.events import AuditFailed
from gate.executor import ActionExecutor


def _parts(tmp_path):
    log = AuditLog(tmp_path)
    sim = SimDriver(SimConfig(unlock_pulse_ms=10 ** 9))
    sim.open()
    return log, sim


def test_the_written_rows_are_returned_and_the_stamp_is_added(tmp_path):
    log, sim = _parts(tmp_path)
    passed = []
    ex = ActionExecutor(log, sim, clock=lambda: 1.0, stamp={"gate": "G1", "pad": "not provisioned"},
                        on_passage=passed.append)
    done = ex.run([Audit({"event": "open", "lane": "L1"}), Unlock(Direction.ENTRY), RecordPassage("ann")])
    assert [r.body for r in done.rows] == [{"event": "open", "lane": "L1", "gate": "G1", "pad": "not provisioned"}]
    assert done.rows[0].seq == log.last_seq() and done.row_for("open") is done.rows[0]
    assert sim.unlocked is Direction.ENTRY and done.unlocks == [Unlock(Direction.ENTRY)] and passed == ["ann"]
    log.close()


def test_a_record_the_log_refuses_drops_the_opening_and_leaves_a_trace_instead_of_a_crash(tmp_path):
    log, sim = _parts(tmp_path)
    ex = ActionExecutor(log, sim, clock=lambda: 1.0)
    done = ex.run([Audit({"event": "manual_action", "operator_id": "x" * 20000}), Unlock(Direction.ENTRY), Lock()])
    assert sim.unlocked is None and done.unlocks == []  # no opening without its record
    assert [r.body["event"] for r in done.rows] == ["record_refused"]
    assert done.rows[0].body["refused_event"] == "manual_action" and "limit" in done.rows[0].body["why"]
    assert "x" * 100 not in str(done.rows[0].body)
    assert sim.last("lock") is not None and not any(isinstance(f, AuditFailed) for f in done.followups)
    log.close()
