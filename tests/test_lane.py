"""The lane state machine, driven through whole scenarios and random event sequences.

`Gate` below runs each step's actions through the daemon's own `gate.executor.ActionExecutor`
onto a real audit log and the simulated turnstile, so tests check what a passenger would see
and what the audit log holds, with the failure rules the daemon really follows.
"""
from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configschema import ConfigError, load_dataclass
from devices.base import check_indicate_args
from devices.config import SimConfig
from devices.sim import SimDriver
from gate.actions import Action, Alert, Audit, Buzzer, Colour, Direction, Indicate, Unlock
from gate.audit import AuditLog, AuditWriteError
from gate.decide import DecisionPolicy, Outcome, Reason
from gate.events import (
    AuditFailed,
    AuditRestored,
    DeviceFault,
    DeviceRestored,
    DoorForced,
    FireAlarm,
    PassageComplete,
    StaffAction,
    StaffCommand,
    Tamper,
    Tick,
    TokenRead,
)
from gate.executor import ActionExecutor
from gate.lane import AUDIT_LOG, AttemptPolicy, LaneConfig, LatchPolicy, Mode, start, step
from gate.observation import Candidate, FaceObservation, FrameObservation, ListType
from gate.passback import PassbackStore
from gate.track import TrackPolicy
from vision.pad.fusion import PadPolicy

A, D = ListType.ALLOW, ListType.DENY
POLICY = DecisionPolicy(threshold_1n=0.5, min_margin=0.1, threshold_1to1=0.45, deny_threshold=0.4,
                        fuse_k=3, min_observations_to_deny=5, window_s=3.0, acquire_timeout_s=8.0,
                        low_quality_refer_frames=10, tailgate_size_ratio=0.7)
CONFIG = LaneConfig(lane_id="T1-lane-3", policy=POLICY,
                    tracking=TrackPolicy(iou_min=0.3, lost_after_s=1.0, capture_min_face_px=80.0),
                    open_timeout_s=10.0, result_display_s=3.0, token_ttl_s=30.0)
ONE_TRY = replace(CONFIG, attempts=AttemptPolicy(max=1))  # a site that refers at the first failure
STRICT = replace(ONE_TRY, latch=LatchPolicy(presentation_attack=True))  # ...and latches on a suspected photo
NEAR = (100.0, 100.0, 220.0, 240.0)  # ~130 px: in the capture zone
FAR = (400.0, 100.0, 440.0, 140.0)  # 40 px: a person further back


def face(box=NEAR, matches=(("alice", 0.8), ("bob", 0.2)), ok=True, verify=None, reasons=(), pad=None):
    """`pad`: the PAD live probability the daemon measured on this face (None: PAD did not run)."""
    cands = None if matches is None else tuple(Candidate(s, sc, D if s == "mallory" else A) for s, sc in matches)
    return FaceObservation(box=box, detector_score=0.95, quality_ok=ok, quality_reasons=reasons, matches=cands,
                           verify_score=verify, pad_live=pad,
                           pad_scores=None if pad is None else {"minifasnet-v2": pad, "minifasnet-v1se": pad})


def frame(t, primary=None, others=()):
    return FrameObservation(t, primary if primary is not None else face(), tuple(others), {"detect": 12.5})


def staff(t, action, operator="op-17", reason="assisting passenger", direction=None):
    return StaffCommand(t, action, operator, reason, direction)


# What counts as I/O for the pure core: files, sockets, processes, databases, foreign libraries,
# sleeping, and imports (an import at step time reads files and can run anything).
_IO_EVENTS = ("open", "import", "os.", "socket.", "subprocess.", "sqlite3.", "shutil.", "ctypes.", "urllib.",
              "http.", "mmap.", "time.sleep")
_io_guard = threading.local()


def _refuse_io(event: str, args: tuple) -> None:
    if getattr(_io_guard, "on", False) and event.startswith(_IO_EVENTS):
        raise RuntimeError(f"I/O in the pure lane core: {event} {args!r}")


@contextmanager
def forbid_io():
    """Python's audit hooks (PEP 578) see every file open, socket, process and import; this
    one refuses them in the current thread while the block runs. A hook cannot be removed, so
    it is installed once and does nothing outside the block."""
    if not getattr(forbid_io, "installed", False):
        sys.addaudithook(_refuse_io)
        forbid_io.installed = True
    gc.collect()  # an earlier test's Gate closes its audit file when collected: not inside the block
    gc.disable()
    _io_guard.on = True
    try:
        yield
    finally:
        _io_guard.on = False
        gc.enable()


class Gate:
    """The lane driven through the daemon's own `ActionExecutor`, onto a real audit log (SQLite
    on tmpfs) and the simulated turnstile. `disk_full = True` fills the audit database to a
    real size cap, so writes fail the way they fail on a full disk."""

    FILLER = "disk_filler"

    def __init__(self, config=CONFIG, t=0.0, pad_provisioned=False, flights=(), state_dir=None,
                 wall=datetime(2026, 12, 2, 6, 0, tzinfo=timezone.utc)):
        """`state_dir`: reuse a previous Gate's (a restart: its audit log and passages are kept)."""
        if state_dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="lane-test-",
                                                    dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
            state_dir = Path(self._dir.name)
        self.state_dir = state_dir
        self._log = AuditLog(state_dir)
        self.passback = PassbackStore(state_dir)
        self.sim = SimDriver(SimConfig(unlock_pulse_ms=10 ** 9, command_timeout_s=0.01))
        self.sim.open()
        self._t = t
        self.wall = wall  # the wall clock at lane time 0
        self.flights = frozenset(flights)
        self.executor = ActionExecutor(self._log, self.sim, clock=lambda: self._t, on_passage=lambda sid: (
            self.passback.record(sid, config.lane_id, self.wall + timedelta(seconds=self._t), self.flights)))
        self.audit: list[dict] = []
        self.alerts: list[Alert] = []
        self.unlocked: list[Unlock] = []  # unlocks the turnstile acknowledged
        self._full = False
        passed = self.passback.recent(config.lane_id, self.wall + timedelta(seconds=t), timedelta(days=1), flights)
        self.state, actions = start(config, t, pad_provisioned=pad_provisioned, flights=flights, passed=passed)
        self._execute(actions)

    def close(self):
        self._log.close()
        self.passback.close()

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc) -> None:
        """Closes the audit log and passback store at once: the property tests make hundreds of
        gates, and left to __del__ (a gate is in reference cycles) they held ~1,300 file
        descriptors until pyserial's select() in test_osdp failed on descriptors past 1024."""
        self.close()

    def __del__(self):
        self.close()
        if hasattr(self, "_dir"):
            self._dir.cleanup()

    @property
    def disk_full(self) -> bool:
        return self._full

    @disk_full.setter
    def disk_full(self, full: bool) -> None:
        if full and not self._full:
            self._log.set_size_limit(1)  # no new page; then fill the last page's free space
            try:
                for _ in range(200):
                    self._log.append({"event": self.FILLER})
            except AuditWriteError:
                pass
        elif not full and self._full:
            self._log.set_size_limit(1 << 30)
        self._full = full

    @property
    def mode(self):
        return self.state.mode

    @property
    def barrier(self) -> str:
        return "locked" if self.sim.unlocked is None else "unlocked"

    @property
    def unlocked_direction(self):
        return self.sim.unlocked

    @property
    def display(self):
        c = self.sim.last("indicate")
        return None if c is None else Indicate(c.args["colour"], c.args["buzzer"], c.args["text"])

    @property
    def unlocks(self) -> int:
        return len(self.unlocked)

    @property
    def last_unlock(self):
        return self.unlocked[-1] if self.unlocked else None

    def send(self, event) -> tuple[Action, ...]:
        self._t = max(self._t, event.t)
        self.state, actions = step(self.state, event)
        self._execute(actions)
        return actions

    def _execute(self, actions) -> None:
        done = self.executor.run(actions, audit_failing=AUDIT_LOG in self.state.faults)
        self.audit += [r.body for r in done.rows if r.body["event"] != self.FILLER]
        self.alerts += done.alerts
        self.unlocked += done.unlocks
        for ev in done.followups:
            self.send(ev)

    def events(self):
        return [r["event"] for r in self.audit]

    def path(self):
        """The modes the audit log says the lane went through."""
        out = [self.audit[0]["to"]]
        for r in self.audit[1:]:
            if r["from"] != r["to"]:
                assert r["from"] == out[-1], f"audit chain of modes broken at {r}"
                out.append(r["to"])
        return out

    def approach(self, t0, n=3, dt=0.1, **kw):
        for i in range(n):
            self.send(frame(t0 + i * dt, face(**kw)))

    def respond(self, t0, t1, dt=0.1, **kw):
        """The passenger still in view, as they were, from t0 until they respond at t1 (exclusive)."""
        t = t0
        while t < t1 - 1e-9:
            self.send(frame(t, face(**kw)))
            t += dt


SETTLE = AttemptPolicy().settle_s  # after a prompt, the passenger's response time (frames are not evidence)


# ---- ordinary passengers ------------------------------------------------------------------------

def test_enrolled_passenger_is_let_through_and_the_lane_returns_to_idle():
    g = Gate()
    assert g.mode is Mode.IDLE and g.barrier == "locked"
    g.send(frame(1.0))
    assert g.mode is Mode.ACQUIRING and g.barrier == "locked"
    g.send(frame(1.1))
    actions = g.send(frame(1.2))
    assert g.mode is Mode.OPEN and g.barrier == "unlocked" and g.last_unlock == Unlock(Direction.ENTRY, hold=False)
    assert g.display == Indicate(Colour.GREEN, Buzzer.SHORT, "Please pass")
    # the decision and the opening are recorded before the barrier moves
    kinds = [type(a) for a in actions]
    assert kinds.index(Unlock) > max(i for i, k in enumerate(kinds) if k is Audit)
    decision = next(r for r in g.audit if r["event"] == "decision")["decision"]
    assert (decision["outcome"], decision["reason"], decision["subject_id"]) == ("allow", "match", "alice")
    assert decision["observations_used"] == 3 and decision["margin"] == pytest.approx(0.6)
    assert next(r for r in g.audit if r["event"] == "decision")["timings_ms"] == {"detect": 12.5}
    g.send(PassageComplete(3.0, Direction.ENTRY))
    assert g.mode is Mode.IDLE and g.barrier == "locked"
    assert g.path() == ["idle", "acquiring", "decided", "open", "idle"]
    assert g.audit[-1]["opening"]["subject_id"] == "alice"


def test_open_times_out_without_a_passage():
    g = Gate()
    g.approach(1.0)
    assert g.mode is Mode.OPEN
    g.send(Tick(11.1))
    assert g.mode is Mode.OPEN
    g.send(Tick(11.25))  # opened at 1.2 + 10 s
    assert g.mode is Mode.IDLE and g.barrier == "locked" and g.events()[-1] == "open_timeout"


def test_no_face_and_far_faces_leave_the_lane_idle_without_actions():
    g = Gate()
    assert g.send(FrameObservation(1.0)) == ()
    assert g.send(frame(1.1, face(box=FAR))) == ()
    assert g.mode is Mode.IDLE


def test_a_face_standing_outside_the_capture_zone_is_asked_to_step_closer_once():
    g = Gate()
    short = (100.0, 100.0, 170.0, 170.0)  # 70 px: stopped short of the mark (the zone starts at 80 px)
    wait = CONFIG.tracking.step_closer_after_s
    g.respond(1.0, 1.0 + wait, box=short)
    assert g.mode is Mode.IDLE and "prompt" not in g.events() and g.display.text == "Look at the camera"
    g.approach(1.0 + wait, n=1, box=short)
    rec = g.audit[-1]
    assert (rec["event"], rec["why"], rec["prompt"], rec["face_px"]) == (
        "prompt", "outside_capture_zone", "Please step closer", 70.0)
    assert g.mode is Mode.IDLE and g.display == Indicate(Colour.AMBER, Buzzer.SHORT, "Please step closer")
    g.respond(1.1 + wait, 5.0, box=short)
    assert g.events().count("prompt") == 1  # said once
    g.approach(5.0, n=3)  # steps onto the mark
    assert g.mode is Mode.OPEN and g.events().count("decision") == 1


def test_a_passenger_walking_in_or_a_different_face_is_not_told_to_step_closer():
    g = Gate()
    for i in range(8):  # 0.8 s through the band below the capture zone, growing, then on the mark
        side = 40.0 + 5 * i
        g.send(frame(1.0 + i * 0.1, face(box=(100.0, 100.0, 100.0 + side, 100.0 + side))))
    g.approach(1.8, n=3)
    assert "prompt" not in g.events() and g.mode is Mode.OPEN
    g = Gate()  # faces outside the zone, but not the same person for long: nobody is waiting
    for i in range(30):
        g.send(frame(1.0 + i * 0.1, face(box=(100.0, 100.0, 170.0, 170.0) if i % 2 else FAR)))
    assert "prompt" not in g.events()
    g = Gate(replace(CONFIG, tracking=replace(CONFIG.tracking, step_closer_after_s=0.0)))  # the site turned it off
    g.respond(1.0, 5.0, box=(100.0, 100.0, 170.0, 170.0))
    assert g.events() == ["lane_started"]


def test_unknown_person_is_refused_then_the_lane_resets():
    g = Gate(ONE_TRY)
    g.approach(1.0, n=5, matches=(("alice", 0.3), ("bob", 0.2)))
    assert g.mode is Mode.DECIDED and g.barrier == "locked"
    assert g.display == Indicate(Colour.RED, Buzzer.LONG, "Not recognised")
    assert g.state.decision.reason is Reason.NO_MATCH
    g.send(frame(2.0))  # faces are not judged while the result is shown
    assert g.mode is Mode.DECIDED
    g.send(Tick(4.45))  # decided at 1.4 + 3 s
    assert g.mode is Mode.IDLE


def test_a_failed_first_attempt_prompts_and_the_second_attempt_can_pass():
    g = Gate()  # a bad first look (no match), then the passenger looks straight at the camera
    g.approach(1.0, n=5, matches=(("alice", 0.3), ("bob", 0.2)))
    assert g.mode is Mode.ACQUIRING and g.barrier == "locked"
    rec = g.audit[-1]
    assert (rec["event"], rec["attempt"], rec["of"], rec["decision"]["reason"]) == ("attempt_failed", 1, 2, "no_match")
    assert g.display == Indicate(Colour.AMBER, Buzzer.SHORT, "Look straight at the camera")
    prompted = g.audit[-1]["t"]
    # while they read the prompt and turn, the frames still show the first look: not evidence
    g.respond(1.5, prompted + SETTLE, matches=(("alice", 0.3), ("bob", 0.2)))
    assert g.mode is Mode.ACQUIRING and g.events().count("attempt_failed") == 1
    g.approach(prompted + SETTLE, n=3)  # fresh evidence: the no-match frames are not fused with these
    assert g.mode is Mode.OPEN and decisions(g)[-1]["reason"] == "match"
    assert [r["event"] for r in g.audit].count("decision") == 1  # one decision for the visit


def test_the_last_allowed_attempt_is_final():
    g = Gate()
    g.approach(1.0, n=5, matches=(("alice", 0.3),))
    g.respond(1.5, 1.4 + SETTLE, matches=(("alice", 0.3),))
    g.approach(1.4 + SETTLE, n=5, matches=(("alice", 0.3),))
    assert g.mode is Mode.DECIDED and g.state.decision.reason is Reason.NO_MATCH
    assert [r["event"] for r in g.audit].count("attempt_failed") == 1


@pytest.mark.parametrize("reasons, prompt", [(("face_too_small",), "Please step closer"),
                                             (("blurred",), "Hold still, look at camera"),
                                             (("too_dark",), "Look at the camera")])
def test_poor_quality_prompts_with_what_to_do(reasons, prompt):
    """Early guidance (after quality_prompt_frames, no attempt used), then, if the face stays
    poor for low_quality_refer_frames after the passenger had time to respond, a failed attempt
    with the same prompt."""
    g = Gate()
    bad = dict(ok=False, matches=None, reasons=reasons)
    n = AttemptPolicy().quality_prompt_frames
    g.approach(1.0, n=n, **bad)
    rec = g.audit[-1]
    assert g.mode is Mode.ACQUIRING and (rec["event"], rec["why"], rec["quality_reasons"], rec["attempt"]) == (
        "prompt", "low_quality", list(reasons), 1)
    assert g.display == Indicate(Colour.AMBER, Buzzer.SHORT, prompt)
    g.respond(1.0 + n * 0.1, rec["t"] + SETTLE, **bad)
    assert g.audit[-1] is rec  # responding: neither a second prompt nor a failed attempt
    g.approach(rec["t"] + SETTLE, n=POLICY.low_quality_refer_frames - 1, **bad)
    assert g.audit[-1] is rec
    g.approach(rec["t"] + SETTLE + 1.0, n=1, **bad)
    assert g.mode is Mode.ACQUIRING and g.audit[-1]["event"] == "attempt_failed" and g.audit[-1]["attempt"] == 1
    assert g.display.text == prompt


def test_a_face_that_improves_after_the_quality_prompt_is_judged_in_the_same_attempt():
    g = Gate()
    g.approach(1.0, n=AttemptPolicy().quality_prompt_frames, ok=False, matches=None, reasons=("pose_pitch",))
    prompted = g.audit[-1]["t"]
    g.respond(prompted + 0.1, prompted + SETTLE, ok=False, matches=None, reasons=("pose_pitch",))
    g.approach(prompted + SETTLE, n=3)
    assert g.mode is Mode.OPEN
    assert "attempt_failed" not in g.events() and decisions(g)[-1]["elapsed_s"] == pytest.approx(
        prompted + SETTLE + 0.2 - 1.0)


def test_a_liveness_doubt_is_retried_then_referred_without_blocking_the_next_traveller():
    g = Gate(pad_provisioned=True)
    g.approach(1.0, pad=PHOTO)
    assert g.mode is Mode.ACQUIRING and g.display.text == "Remove glasses, look at camera"
    g.respond(1.3, 1.2 + SETTLE, pad=PHOTO)
    g.approach(1.2 + SETTLE, pad=PHOTO)
    assert g.mode is Mode.DECIDED and g.display == Indicate(Colour.AMBER, Buzzer.LONG, "Please see staff")
    assert g.alerts[-1].kind == "refer" and g.alerts[-1].details["reason"] == "presentation_attack_suspected"
    g.send(Tick(6.0))  # decided at 2.9 + 3 s result display
    assert g.mode is Mode.IDLE  # not latched: the traveller behind is served
    g.approach(7.0, box=(300.0, 100.0, 420.0, 240.0), pad=LIVE)
    assert g.mode is Mode.OPEN
    g = Gate(pad_provisioned=True)  # a genuine traveller whose first look was doubtful
    g.approach(1.0, pad=PHOTO)
    g.respond(1.3, 1.2 + SETTLE, pad=PHOTO)  # still the doubtful look while they respond
    g.approach(1.2 + SETTLE, pad=LIVE)
    assert g.mode is Mode.OPEN
    assert all(f["t"] >= 1.2 + SETTLE for f in decisions(g)[-1]["pad"]["scores"])  # the new frames only


def test_deny_list_and_tailgating_are_never_retried():
    g = Gate()
    g.approach(1.0, matches=(("mallory", 0.9), ("alice", 0.2)))
    assert g.mode is Mode.ALARM and "attempt_failed" not in g.events()


def test_attempts_and_latches_are_site_settings():
    cfg = load_dataclass(LaneConfig, {"lane_id": "L", "policy": {"threshold_1n": 0.5, "min_margin": 0.1,
                                                                  "threshold_1to1": 0.5, "deny_threshold": 0.5},
                                      "attempts": {"max": 3, "retry_on": ["no_match"]},
                                      "latch": {"presentation_attack": True, "tailgating": False}}, "lane")
    assert cfg.attempts.max == 3 and cfg.attempts.retry_on == ("no_match",)
    assert cfg.latch.latches(Reason.PRESENTATION_ATTACK) and not cfg.latch.latches(Reason.TAILGATING)
    with pytest.raises(ConfigError, match="tailgating cannot be retried"):
        load_dataclass(LaneConfig, {"lane_id": "L", "policy": {"threshold_1n": 0.5, "min_margin": 0.1,
                                                                "threshold_1to1": 0.5, "deny_threshold": 0.5},
                                    "attempts": {"retry_on": ["tailgating"]}}, "lane")


def _pass(g, t, **kw):
    g.approach(t, **kw)
    assert g.mode is Mode.OPEN
    g.send(PassageComplete(t + 1.0))
    assert g.mode is Mode.IDLE


def test_a_passenger_who_passed_cannot_open_the_lane_again_within_the_window():
    g = Gate()
    _pass(g, 1.0)
    g.send(Tick(2.5))
    g.approach(3.0)  # still in view after passing, matched again
    assert g.mode is Mode.DECIDED and g.unlocks == 1 and g.display.text == "Already passed: see staff"
    d = decisions(g)[-1]
    assert (d["outcome"], d["reason"], d["subject_id"]) == ("deny", "anti_passback", "alice")
    assert d["details"]["passed_s_ago"] == pytest.approx(1.0, abs=0.3)
    assert g.alerts[-1].kind == "anti_passback"
    g.send(Tick(7.0))
    g.approach(400.0)  # after the window (300 s) the lane serves them again
    assert g.mode is Mode.OPEN


def test_anti_passback_survives_a_restart_and_a_boarding_gate_boards_a_flight_once():
    g = Gate(flights=("flight:BA123",))
    _pass(g, 1.0)
    g.close()
    later = g.wall + timedelta(seconds=60)
    g2 = Gate(flights=("flight:BA123",), state_dir=g.state_dir, wall=later)  # the daemon restarted a minute later
    assert g2.state.boarded["alice"] == pytest.approx(-58.0)  # passed 58 s before this start
    g2.approach(1000.0)  # long after the 300 s window, but it is the same flight
    assert g2.mode is Mode.DECIDED and decisions(g2)[-1]["reason"] == "anti_passback"
    assert decisions(g2)[-1]["details"]["boarded"] == ["flight:BA123"]
    g2.close()
    g3 = Gate(flights=("flight:BA999",), state_dir=g.state_dir, wall=later)  # the gate's next flight
    g3.approach(1000.0)
    assert g3.mode is Mode.OPEN


def test_one_decision_per_person_per_visit():
    g = Gate(ONE_TRY)  # a stranger who stays in front of the camera after the refusal
    g.approach(1.0, n=5, matches=(("alice", 0.3),))
    for i in range(60):  # six more seconds in view, through the refusal display and after
        g.send(frame(1.5 + i * 0.1, face(matches=(("alice", 0.3),))))
    assert g.events().count("decision") == 1 and g.mode is Mode.IDLE
    g.send(Tick(8.0))  # leaves (no face for longer than visit_gap_s), comes back: a new visit
    g.approach(8.1, n=5, matches=(("alice", 0.3),))
    assert g.events().count("decision") == 2

    g = Gate()  # a deny-list subject: one alarm, not one per reset
    g.approach(1.0, matches=(("mallory", 0.9),))
    g.send(staff(2.0, StaffAction.RESET, reason="police called"))
    for i in range(10):
        g.send(frame(2.1 + i * 0.1, face(matches=(("mallory", 0.9),))))
    assert g.mode is Mode.IDLE and len([a for a in g.alerts if a.kind == "deny_list"]) == 1

    g = Gate()  # a passenger who lingers in view after passing is not judged again
    g.approach(1.0)
    for i in range(8):  # in view while the gate is open
        g.send(frame(1.3 + i * 0.1))
    g.send(PassageComplete(2.0))
    for i in range(10):
        g.send(frame(2.1 + i * 0.1))
    assert g.events().count("decision") == 1 and g.unlocks == 1 and not g.alerts

    g = Gate(ONE_TRY)  # the refused stranger left while "not recognised" was shown; the next one steps onto
    g.approach(1.0, n=5, matches=(("alice", 0.3),))  # the same spot with a face that does not match yet
    g.send(frame(1.5, face(matches=(("alice", 0.3),))))
    for i in range(10):  # gone during the display, then someone else at the same place
        g.send(FrameObservation(1.6 + i * 0.1))
    for i in range(20):
        g.send(frame(4.5 + i * 0.1, face(ok=False, matches=None, reasons=("pose_yaw",))))
    assert g.mode is Mode.ACQUIRING and g.events().count("face_acquired") == 2 and "prompt" in g.events()

    g = Gate(ONE_TRY)  # the next passenger steps into the same spot at once: not mistaken for the stranger
    g.approach(1.0, n=5, matches=(("alice", 0.3),))
    g.send(Tick(4.5))
    g.approach(4.6, matches=(("bob", 0.9), ("alice", 0.2)))
    assert g.mode is Mode.OPEN and decisions(g)[-1]["subject_id"] == "bob"


LOOK_ALIKES = (("alice", 0.66), ("alicia", 0.61))  # both above threshold_1n 0.5, within min_margin 0.1


def test_ambiguous_match_is_referred_to_staff():
    g = Gate(ONE_TRY)
    g.approach(1.0, matches=LOOK_ALIKES)
    assert g.mode is Mode.DECIDED and g.display.colour is Colour.AMBER and g.barrier == "locked"
    assert g.alerts[-1].kind == "refer" and g.alerts[-1].details["reason"] == "ambiguous_margin"
    g = Gate(replace(CONFIG, attempts=AttemptPolicy(retry_on=("no_match",))))  # a site that refers look-alikes at once
    g.approach(1.0, matches=LOOK_ALIKES)
    assert g.mode is Mode.DECIDED and "attempt_failed" not in g.events()


def test_a_look_alike_gets_a_new_look_and_is_referred_if_it_is_still_ambiguous():
    """The second look must pass the same rule (threshold and margin) on fresh frames; the visit
    still has `attempts.max` tries in all, as after a no-match."""
    g = Gate()
    g.approach(1.0, matches=LOOK_ALIKES)
    rec = g.audit[-1]
    assert g.mode is Mode.ACQUIRING and g.barrier == "locked"
    assert (rec["event"], rec["attempt"], rec["decision"]["reason"]) == ("attempt_failed", 1, "ambiguous_margin")
    assert g.display == Indicate(Colour.AMBER, Buzzer.SHORT, "Look straight at the camera")
    g.respond(1.3, rec["t"] + SETTLE, matches=(("alice", 0.95), ("alicia", 0.2)))  # not evidence yet
    g.approach(rec["t"] + SETTLE, matches=LOOK_ALIKES)
    assert g.mode is Mode.DECIDED and g.barrier == "locked" and g.unlocks == 0
    assert decisions(g)[-1]["reason"] == "ambiguous_margin" and g.alerts[-1].details["reason"] == "ambiguous_margin"
    g = Gate()  # the new look tells the two apart
    g.approach(1.0, matches=LOOK_ALIKES)
    g.respond(1.3, 1.2 + SETTLE, matches=LOOK_ALIKES)
    g.approach(1.2 + SETTLE, matches=(("alice", 0.8), ("alicia", 0.55)))
    assert g.mode is Mode.OPEN and decisions(g)[-1]["subject_id"] == "alice"
    assert all(s["score"] == 0.8 for s in decisions(g)[-1]["top"][:1])  # fused on the new frames only
    g = Gate()  # a no-match first and a look-alike second: two attempts in all, then the referral
    g.approach(1.0, n=5, matches=(("alice", 0.3), ("bob", 0.2)))
    g.respond(1.5, 1.4 + SETTLE, matches=(("alice", 0.3), ("bob", 0.2)))
    g.approach(1.4 + SETTLE, matches=LOOK_ALIKES)
    assert g.mode is Mode.DECIDED and decisions(g)[-1]["reason"] == "ambiguous_margin"
    assert g.events().count("attempt_failed") == 1


def test_evidence_of_a_previous_person_is_not_used_for_the_next():
    g = Gate()
    g.approach(1.0, n=2)
    g.send(frame(1.2, face(box=(500.0, 100.0, 620.0, 240.0))))  # someone else stepped in
    assert g.mode is Mode.ACQUIRING and g.events()[-1] == "track_replaced"
    assert g.audit[-1]["previous_track_id"] == 1 and g.audit[-1]["track_id"] == 2
    g.send(frame(1.3, face(box=(505.0, 100.0, 625.0, 240.0))))
    assert g.mode is Mode.ACQUIRING  # two frames of the new person, not three
    g.send(frame(1.4, face(box=(505.0, 100.0, 625.0, 240.0))))
    assert g.mode is Mode.OPEN


def test_acquisition_timeouts():
    g = Gate()  # face lost
    g.approach(1.0, n=1, matches=None)
    g.send(Tick(1.9))
    assert g.mode is Mode.ACQUIRING
    g.send(Tick(2.0))
    assert g.mode is Mode.IDLE and g.events()[-1] == "face_lost"

    g = Gate()  # no decision in time: searched frames never arrive (e.g. the embedder is skipped)
    for i in range(90):
        g.send(frame(1.0 + i * 0.1, face(matches=None)))
    assert g.mode is Mode.DECIDED and g.state.decision.reason is Reason.TIMEOUT
    assert g.state.decision.decided_at == pytest.approx(9.0)

    g = Gate(ONE_TRY)  # persistent low quality, after the guidance prompt and the time to respond
    n = AttemptPolicy().quality_prompt_frames
    g.approach(1.0, n=n + 15 + 10, ok=False, matches=None, reasons=("blurred",))
    assert g.mode is Mode.DECIDED and g.state.decision.reason is Reason.LOW_QUALITY
    assert g.alerts[-1].details["reason"] == "low_quality"


def _lost(g):
    rec = g.audit[-1]
    assert g.mode is Mode.IDLE and rec["event"] == "face_lost", rec
    return rec["unserved"]


def test_an_attempt_that_ends_without_a_decision_records_why():
    g = Gate()  # the face never passed quality: which check failed is in the record
    for i in range(4):
        g.send(frame(1.0 + i * 0.1, face(ok=False, matches=None, reasons=("blur",))))
    g.send(Tick(2.5))
    why = _lost(g)
    assert why["why"] == "too_few_quality_frames" and why["quality_reasons"] == ["blur"]
    assert why["quality_frames"] == 0 and why["needed"] == POLICY.fuse_k

    g = Gate()  # seen well, then stepped back out of the capture zone and left
    g.approach(1.0, n=2)
    for i in range(3):
        g.send(frame(1.2 + i * 0.1, face(box=FAR)))
    g.send(Tick(2.5))
    assert _lost(g)["why"] == "outside_capture_zone" and _lost(g)["frames_outside_zone"] == 3

    g = Gate(pad_provisioned=True, config=replace(CONFIG, policy=replace(POLICY, pad=PadPolicy(frames=5))))
    g.approach(1.0, n=3, pad=0.9)  # matched on 3 frames; liveness needs 5
    g.send(Tick(2.5))
    why = _lost(g)
    assert why["why"] == "waiting_for_liveness" and why["pad"]["state"] == "pending"

    g = Gate()  # a stranger who left before a refusal could be concluded: a score, no name
    g.approach(1.0, n=3, matches=(("alice", 0.3),))
    g.send(Tick(2.5))
    why = _lost(g)
    assert why["why"] == "too_few_frames_to_refuse" and why["needed"] == POLICY.min_observations_to_deny
    assert why["best_score"] == 0.3 and "alice" not in str(g.audit[-1])

    g = Gate()  # prompted after a no-match, and gone before the response could be judged
    g.approach(1.0, n=5, matches=(("alice", 0.3),))
    g.send(frame(1.5, face(matches=(("alice", 0.3),))))
    g.send(Tick(2.6))
    why = _lost(g)
    assert why["why"] == "left_after_prompt" and why["responding_until"] == pytest.approx(1.4 + SETTLE)


def test_a_track_replaced_by_another_person_records_why_the_first_was_not_served():
    g = Gate()
    g.approach(1.0, n=1)
    g.send(frame(1.1, face(box=(500.0, 100.0, 620.0, 240.0))))
    assert g.audit[-1]["event"] == "track_replaced"
    assert g.audit[-1]["previous_unserved"]["why"] == "too_few_quality_frames"


def test_time_never_runs_backwards():
    g = Gate()
    g.approach(1.0)
    g.send(Tick(0.5))  # a late event stamped before the opening
    assert g.state.now == pytest.approx(1.2) and g.mode is Mode.OPEN
    g.send(PassageComplete(0.6))
    assert g.audit[-1]["t"] == pytest.approx(1.2)


# ---- 1:1 mode ------------------------------------------------------------------------------------

def test_token_switches_to_one_to_one_for_its_holder():
    g = Gate()
    g.send(TokenRead(0.5, "boarding_pass", "alice", A))
    assert g.state.one_to_one_subject == "alice" and g.events()[-1] == "token_read"
    # strong 1:N frames do not count in 1:1 mode; verify scores do
    g.approach(1.0, n=3, matches=(("bob", 0.9),), verify=None)
    assert g.mode is Mode.ACQUIRING
    g.approach(1.3, n=3, matches=None, verify=0.6)
    assert g.mode is Mode.OPEN
    decision = next(r for r in g.audit if r["event"] == "decision")["decision"]
    assert (decision["mode"], decision["subject_id"], decision["details"]["token_kind"]) == ("1:1", "alice",
                                                                                                "boarding_pass")
    assert g.state.one_to_one_subject is None  # the token was used up


def test_token_read_mid_attempt_restarts_the_evidence():
    g = Gate()
    g.approach(1.0, n=2, matches=None, verify=0.9)  # verify scores without a token: not 1:1 evidence yet
    g.send(TokenRead(1.15, "id_number", "alice", A))
    g.approach(1.2, n=2, matches=None, verify=0.9)
    assert g.mode is Mode.ACQUIRING and g.state.track.samples and len(g.state.track.samples) == 2
    g.send(frame(1.4, face(matches=None, verify=0.9)))
    assert g.mode is Mode.OPEN


def test_token_of_someone_else_is_referred():
    g = Gate()
    g.send(TokenRead(0.5, "boarding_pass", "alice", A))
    g.approach(1.0, n=5, matches=None, verify=0.1)
    assert g.mode is Mode.DECIDED and g.state.decision.reason is Reason.TOKEN_MISMATCH
    assert g.display.colour is Colour.AMBER


def test_unknown_token_is_referred_at_once_and_expired_tokens_are_dropped():
    g = Gate()
    g.send(TokenRead(0.5, "boarding_pass", None, None))
    assert g.mode is Mode.DECIDED and g.state.decision.reason is Reason.TOKEN_UNKNOWN
    g = Gate()
    g.send(TokenRead(0.5, "boarding_pass", "alice", A))
    g.send(Tick(30.6))
    assert g.state.one_to_one_subject is None and g.events()[-1] == "token_expired"


# ---- alarms ------------------------------------------------------------------------------------

def test_tailgating_holds_the_gate_and_latches_an_alarm_until_staff_reset():
    g = Gate()
    g.send(frame(1.0))
    for t in (1.1, 1.2):  # two people together stay in view together
        g.send(frame(t, face(), others=[face(box=(300.0, 110.0, 400.0, 220.0))]))  # ratio ~0.8
        assert g.mode is not Mode.ALARM
    g.send(frame(1.3, face(), others=[face(box=(300.0, 110.0, 400.0, 220.0))]))
    assert g.mode is Mode.ALARM and g.barrier == "locked"
    assert g.display == Indicate(Colour.RED, Buzzer.ALARM, "Stop: staff called")
    assert g.alerts[-1].kind == "tailgating"
    decision = next(r for r in g.audit if r["event"] == "decision")["decision"]
    assert (decision["outcome"], decision["reason"]) == ("refer", "tailgating")
    g.approach(2.0, n=5)  # a perfect match while the alarm is latched opens nothing
    g.send(Tick(60.0))
    assert g.mode is Mode.ALARM and g.unlocks == 0
    g.send(staff(61.0, StaffAction.RESET, reason="checked: family of two, escorted"))
    assert g.mode is Mode.IDLE and g.audit[-1]["operator_id"] == "op-17"
    assert g.audit[-1]["cleared"] == ["tailgating"]


def test_a_person_waiting_further_back_is_not_tailgating():
    g = Gate()
    for i in range(3):
        g.send(frame(1.0 + i * 0.1, face(), others=[face(box=(300.0, 110.0, 360.0, 170.0))]))  # ratio ~0.46
    assert g.mode is Mode.OPEN


def test_tailgater_during_an_opening_raises_the_alarm_and_locks():
    g = Gate()
    g.approach(1.0)
    for t in (1.5, 1.6, 1.7):
        g.send(frame(t, face(), others=[face(box=(300.0, 100.0, 420.0, 240.0))]))
    assert g.mode is Mode.ALARM and g.barrier == "locked" and g.alerts[-1].kind == "tailgating"


def test_a_stray_second_face_in_single_frames_is_not_tailgating():
    """A detector false positive shows in one frame, not in several in a row: it must not latch
    the lane (it did, for a stranger in the lane-feed test, under load)."""
    g = Gate()
    g.send(frame(1.0))
    for i in range(4):  # a close stray "face" every other frame, never three in a row
        t = 1.1 + i * 0.2
        g.send(frame(t, face(), others=[face(box=(300.0, 110.0, 400.0, 220.0))]))
        g.send(frame(t + 0.1, face()))
    assert g.mode is Mode.OPEN and not g.alerts
    g3 = Gate()  # enough matching frames, but a second face in the latest one: no opening yet
    g3.send(frame(1.0))
    g3.send(frame(1.1, face(), others=[face(box=(300.0, 110.0, 400.0, 220.0))]))
    g3.send(Tick(1.15))
    assert g3.mode is Mode.ACQUIRING and g3.unlocks == 0
    g2 = Gate()
    g2.approach(1.0)
    g2.send(frame(1.5, face(), others=[face(box=(300.0, 100.0, 420.0, 240.0))]))
    g2.send(frame(1.6, face()))
    assert g2.mode is Mode.OPEN and not g2.alerts


def test_deny_list_hit_holds_closed_quietly_and_alerts_staff():
    g = Gate()
    g.approach(1.0, matches=(("mallory", 0.7), ("bob", 0.2)))
    assert g.mode is Mode.ALARM and g.barrier == "locked"
    assert g.display == Indicate(Colour.RED, Buzzer.NONE, "Please wait")
    alert = g.alerts[-1]
    assert alert.kind == "deny_list" and alert.details["subject_id"] == "mallory"
    g.send(Tick(30.0))
    assert g.mode is Mode.ALARM


def test_forced_door_raises_an_alarm():
    g = Gate()
    g.send(DoorForced(1.0, "barrier moved while locked"))
    assert g.mode is Mode.ALARM and g.barrier == "locked" and g.alerts[-1].kind == "door_forced"
    g.send(PassageComplete(1.5))
    assert g.events()[-1] == "unexpected_passage" and g.mode is Mode.ALARM
    g.send(Tamper(2.0, "cabinet open"))  # a second cause while latched is recorded and alerted
    assert g.events()[-1] == "tamper" and g.alerts[-1].kind == "tamper" and g.mode is Mode.ALARM
    g.send(staff(3.0, StaffAction.RESET, reason="door checked"))
    assert g.mode is Mode.IDLE


# ---- liveness (presentation-attack detection) -----------------------------------------------------

LIVE, PHOTO = 0.93, 0.15  # PadScore.live of a live face and of a photo held to the camera


def decisions(g):
    return [r["decision"] for r in g.audit if r["event"] == "decision"]


def test_a_photo_of_an_enrolled_passenger_opens_nothing_and_holds_the_lane_for_staff():
    g = Gate(STRICT, pad_provisioned=True)
    assert g.audit[0]["pad_provisioned"] is True
    g.approach(1.0, pad=PHOTO)
    assert g.mode is Mode.ALARM and g.barrier == "locked" and g.unlocks == 0
    assert g.display == Indicate(Colour.RED, Buzzer.NONE, "Please wait")  # quiet: staff are alerted
    decision = decisions(g)[-1]
    assert (decision["outcome"], decision["reason"], decision["subject_id"]) == (
        "refer", "presentation_attack_suspected", "alice")
    assert decision["pad"]["state"] == "presentation_attack_suspected" and decision["pad"]["live"] == PHOTO
    assert [f["models"] for f in decision["pad"]["scores"]] == [{"minifasnet-v2": PHOTO, "minifasnet-v1se": PHOTO}] * 3
    alert = g.alerts[-1]
    assert alert.kind == "presentation_attack_suspected" and alert.details["subject_id"] == "alice"
    assert alert.details["pad"] == decision["pad"]
    alarm = g.audit[-1]
    assert (alarm["event"], alarm["to"], alarm["pad"]["live"]) == ("presentation_attack_suspected", "alarm", PHOTO)
    # the attacker steps back and tries again, live or not: nothing opens until staff have looked
    g.send(Tick(5.0))
    g.approach(6.0, n=5, pad=LIVE)
    g.send(Tick(60.0))
    assert g.mode is Mode.ALARM and g.unlocks == 0
    g.send(staff(61.0, StaffAction.RESET, reason="checked passport by hand: genuine traveller, glare on glasses"))
    assert g.mode is Mode.IDLE and g.audit[-1]["cleared"] == ["presentation_attack_suspected"]
    g.approach(62.0, pad=LIVE)
    assert g.mode is Mode.OPEN


def test_a_live_enrolled_passenger_opens_and_the_record_shows_the_liveness_check():
    g = Gate(pad_provisioned=True)
    g.approach(1.0, pad=LIVE)
    assert g.mode is Mode.OPEN and g.unlocks == 1
    pad = decisions(g)[-1]["pad"]
    assert (pad["state"], pad["live"], pad["frames"]) == ("live", LIVE, 3)
    assert [f["t"] for f in pad["scores"]] == [1.0, 1.1, 1.2]


def test_no_opening_before_the_liveness_verdict():
    config = LaneConfig(lane_id="T1-lane-3", policy=replace(POLICY, pad=PadPolicy(frames=5)),
                        tracking=CONFIG.tracking)
    g = Gate(config, pad_provisioned=True)
    g.approach(1.0, n=4, pad=LIVE)
    assert g.mode is Mode.ACQUIRING and g.unlocks == 0  # matching alone would have opened at frame 3
    g.send(frame(1.4, face(pad=LIVE)))
    assert g.mode is Mode.OPEN and decisions(g)[-1]["pad"]["frames"] == 5


def test_frames_without_a_pad_score_never_open_a_lane_that_has_pad():
    g = Gate(pad_provisioned=True)
    for i in range(90):  # e.g. the PAD model raises on every frame
        g.send(frame(1.0 + i * 0.1, face(pad=None)))
    assert g.unlocks == 0 and g.mode is Mode.DECIDED
    decision = decisions(g)[-1]
    assert decision["reason"] == "timeout" and decision["pad"]["state"] == "pending"
    assert g.display.colour is Colour.AMBER


def test_without_pad_the_lane_runs_on_matching_alone_and_every_decision_says_so():
    g = Gate(ONE_TRY, pad_provisioned=False)
    assert g.audit[0]["pad_provisioned"] is False
    g.approach(1.0)
    assert g.mode is Mode.OPEN
    g.send(PassageComplete(2.0))
    g.send(TokenRead(3.0, "boarding_pass", None, None))
    g.send(Tick(6.5))
    g.approach(7.0, n=5, matches=(("alice", 0.3),))
    assert [(d["reason"], d["pad"]) for d in decisions(g)] == [
        ("match", "not provisioned"), ("token_unknown", "not provisioned"), ("no_match", "not provisioned")]
    g = Gate(pad_provisioned=True)
    g.send(TokenRead(1.0, "boarding_pass", None, None))
    assert decisions(g)[-1]["pad"] == "not judged"  # no face was there to check


def test_the_lane_start_must_say_whether_pad_runs():
    with pytest.raises(TypeError):
        start(CONFIG, 0.0)  # type: ignore[call-arg]


def test_the_pure_core_does_no_io_while_stepping():
    """The lane decides from its arguments alone: a whole attempt, an attack and a staff reset
    run with the interpreter's audit hooks refusing files, sockets, processes and imports."""
    events = [frame(1.0 + i * 0.1, face(pad=PHOTO)) for i in range(3)]
    events += [Tick(5.0), staff(6.0, StaffAction.RESET, reason="checked"), TokenRead(6.5, "boarding_pass", "alice", A)]
    events += [frame(7.0 + i * 0.1, face(matches=None, verify=0.7, pad=LIVE)) for i in range(3)]
    events += [PassageComplete(8.0), Tick(20.0)]
    state, _ = start(CONFIG, 0.0, pad_provisioned=True)
    with forbid_io():
        for ev in events:
            state, _ = step(state, ev)
    assert state.mode is Mode.IDLE and state.decision is None
    with pytest.raises(RuntimeError, match="I/O"), forbid_io():
        open("/dev/null").close()  # the guard itself works


# ---- emergency ---------------------------------------------------------------------------------

def test_fire_alarm_opens_and_stays_open_until_staff_reset_with_the_input_off():
    g = Gate()
    g.approach(1.0, n=2)
    g.send(FireAlarm(1.5, True))
    assert g.mode is Mode.EMERGENCY and g.barrier == "unlocked" and g.unlocked_direction is Direction.BOTH
    assert g.last_unlock == Unlock(Direction.BOTH, hold=True, fail_safe=True)
    assert g.alerts[-1].kind == "emergency"
    # the barrier controller drops off and comes back (drivers relock on reconnect): released again
    g.sim.stop_answering()
    g.send(DeviceFault(1.6, "barrier", "link down"))
    g.sim.resume_answering()  # the simulated controller relocks as it comes back
    assert g.barrier == "locked"
    g.send(DeviceRestored(1.7, "barrier"))
    assert g.mode is Mode.EMERGENCY and g.barrier == "unlocked"
    g.send(staff(2.0, StaffAction.LOCK, reason="drill?"))
    assert g.barrier == "unlocked" and g.audit[-1]["refused"].startswith("emergency")
    g.send(staff(3.0, StaffAction.RESET, reason="all clear"))
    assert g.mode is Mode.EMERGENCY and "fire-alarm input" in g.audit[-1]["refused"]
    g.send(FireAlarm(4.0, False))
    g.send(Tick(100.0))
    assert g.mode is Mode.EMERGENCY and g.barrier == "unlocked"  # latched
    g.send(DoorForced(101.0))  # doors are open by law: recorded, no alarm
    assert g.mode is Mode.EMERGENCY
    g.send(staff(102.0, StaffAction.RESET, operator="sup-2", reason="fire brigade all clear"))
    assert g.mode is Mode.IDLE and g.barrier == "locked"
    assert (g.audit[-1]["operator_id"], g.audit[-1]["reason"]) == ("sup-2", "fire brigade all clear")
    assert g.audit[-1]["cleared"] == ["emergency"]


def test_fire_alarm_opens_even_when_the_audit_log_cannot_be_written():
    g = Gate()
    g.disk_full = True
    g.send(FireAlarm(1.0, True))
    assert g.mode is Mode.EMERGENCY and g.barrier == "unlocked"
    assert AUDIT_LOG in g.state.faults
    g.send(FireAlarm(2.0, False))
    g.send(staff(3.0, StaffAction.RESET, reason="all clear"))
    assert g.mode is Mode.OUT_OF_SERVICE and g.barrier == "locked"  # the audit fault remains


# ---- faults ------------------------------------------------------------------------------------

def test_device_fault_mid_opening_locks_and_takes_the_lane_out_of_service():
    g = Gate()
    g.approach(1.0)
    assert g.barrier == "unlocked"
    g.send(DeviceFault(1.5, "barrier", "motor current"))
    assert g.mode is Mode.OUT_OF_SERVICE and g.barrier == "locked" and g.display.colour is Colour.RED
    assert g.alerts[-1].kind == "device_fault" and g.alerts[-1].details["device"] == "barrier"
    assert g.send(DeviceFault(1.6, "barrier", "motor current")) == ()  # repeats are not news
    g.send(DeviceFault(1.7, "camera", "no frames"))
    g.send(DeviceRestored(2.0, "barrier"))
    assert g.mode is Mode.OUT_OF_SERVICE and g.audit[-1]["faults"] == ["camera"]
    g.send(DeviceRestored(2.1, "camera"))
    assert g.mode is Mode.IDLE


def test_audit_failure_keeps_the_gate_locked_until_writes_work_again():
    g = Gate()
    g.approach(1.0, n=2)
    g.disk_full = True
    actions = g.send(frame(1.2))
    assert any(isinstance(a, Unlock) for a in actions)  # the lane wanted to open...
    assert g.unlocks == 0 and g.barrier == "locked"  # ...but the record could not be written
    assert g.mode is Mode.OUT_OF_SERVICE and AUDIT_LOG in g.state.faults
    assert g.alerts[-1].kind == "audit_failure"
    assert g.send(AuditFailed(1.3, "disk full")) == ()  # idempotent: the daemon cannot loop on it
    g.approach(2.0, n=5)
    g.send(staff(3.0, StaffAction.OPEN_ONCE))
    assert g.unlocks == 0 and g.mode is Mode.OUT_OF_SERVICE
    g.disk_full = False
    g.send(AuditRestored(4.0))
    assert g.mode is Mode.IDLE
    g.approach(5.0)
    assert g.mode is Mode.OPEN and g.barrier == "unlocked"


# ---- staff -------------------------------------------------------------------------------------

def test_staff_open_one_passage_is_recorded_with_operator_and_reason():
    g = Gate()
    g.send(staff(1.0, StaffAction.OPEN_ONCE, reason="wheelchair user, manual check", direction=Direction.EXIT))
    assert g.mode is Mode.OPEN and g.barrier == "unlocked" and g.unlocked_direction is Direction.EXIT
    rec = g.audit[-1]
    assert (rec["event"], rec["action"], rec["operator_id"], rec["reason"]) == (
        "manual_action", "open_once", "op-17", "wheelchair user, manual check")
    g.send(PassageComplete(2.0))
    assert g.mode is Mode.IDLE and g.barrier == "locked"


def test_staff_open_from_alarm_returns_to_the_alarm():
    g = Gate()
    g.send(DoorForced(1.0))
    g.send(staff(2.0, StaffAction.OPEN_ONCE, reason="let the cleaner out"))
    assert g.mode is Mode.OPEN and g.barrier == "unlocked"
    g.send(PassageComplete(3.0))
    assert g.mode is Mode.ALARM and g.barrier == "locked"


def test_staff_hold_open_survives_passages_until_lock():
    g = Gate()
    g.send(staff(1.0, StaffAction.UNLOCK, reason="crowd flow after a cancelled flight"))
    assert g.last_unlock == Unlock(Direction.ENTRY, hold=True)
    for t in (2.0, 3.0, 4.0):
        g.send(PassageComplete(t))
    g.send(Tick(100.0))
    assert g.mode is Mode.OPEN and g.barrier == "unlocked" and g.events().count("passage") == 3
    g.send(frame(101.0, face(), others=[face(box=(300.0, 100.0, 420.0, 240.0))]))
    assert g.mode is Mode.OPEN  # free passage: groups are expected
    g.send(staff(102.0, StaffAction.LOCK, reason="flow back to normal"))
    assert g.mode is Mode.IDLE and g.barrier == "locked"


def test_out_of_service_ignores_faces_until_back_in_service():
    g = Gate()
    g.send(staff(1.0, StaffAction.OUT_OF_SERVICE, reason="cleaning"))
    assert g.mode is Mode.OUT_OF_SERVICE and not g.state.uses_frames
    g.approach(2.0, n=6)
    g.send(TokenRead(3.0, "boarding_pass", "alice", A))
    assert g.mode is Mode.OUT_OF_SERVICE and g.unlocks == 0 and g.events()[-1] == "token_ignored"
    g.send(DeviceFault(4.0, "reader"))
    g.send(staff(5.0, StaffAction.IN_SERVICE, reason="cleaning done"))
    assert g.mode is Mode.OUT_OF_SERVICE and g.audit[-1]["faults"] == ["reader"]
    g.send(DeviceRestored(6.0, "reader"))
    assert g.mode is Mode.IDLE and g.state.uses_matching
    g.approach(7.0)
    assert g.mode is Mode.OPEN


def test_staff_commands_need_an_operator_and_a_reason():
    with pytest.raises(ValueError, match="operator"):
        StaffCommand(1.0, StaffAction.OPEN_ONCE, " ", "x")
    with pytest.raises(ValueError, match="reason"):
        StaffCommand(1.0, StaffAction.OPEN_ONCE, "op-1", "")
    with pytest.raises(ValueError):
        StaffCommand(1.0, "open_wide", "op-1", "x")


def test_bad_events_and_configs_are_refused_clearly():
    with pytest.raises(TypeError, match="no handler"):
        step(start(CONFIG, 0.0, pad_provisioned=False)[0], object())
    with pytest.raises(ValueError, match="both"):
        TokenRead(1.0, "boarding_pass", "alice", None)
    with pytest.raises(ValueError, match="finite"):
        Tick(float("nan"))
    with pytest.raises(ValueError, match="name the device"):
        DeviceFault(1.0, "")
    with pytest.raises(ValueError):
        LaneConfig(lane_id="x", policy=POLICY, passage_direction="sideways")
    with pytest.raises(ConfigError, match="open_timeout_s"):
        LaneConfig(lane_id="x", policy=POLICY, open_timeout_s=-1.0)


def test_lane_config_loads_from_a_config_table():
    cfg = load_dataclass(LaneConfig, {
        "lane_id": "B12", "passage_direction": "exit", "open_timeout_s": 6,
        "policy": {"threshold_1n": 0.5, "min_margin": 0.08, "threshold_1to1": 0.42, "deny_threshold": 0.45},
        "tracking": {"capture_min_face_px": 120}}, "lane")
    assert cfg.policy.min_margin == 0.08 and cfg.tracking.capture_min_face_px == 120.0 and cfg.open_timeout_s == 6.0
    with pytest.raises(ConfigError, match="lane.policy.threshold_1n"):
        load_dataclass(LaneConfig, {"lane_id": "B12", "policy": {"threshold_1n": 2}}, "lane")


# ---- properties over random event sequences ---------------------------------------------------------

SUBJECT_SCORES = st.sampled_from([
    (("alice", 0.8), ("bob", 0.2)), (("alice", 0.3), ("bob", 0.25)), (("alice", 0.66), ("alicia", 0.6)),
    (("mallory", 0.7),), (), None])
BOXES = st.sampled_from([NEAR, (105.0, 102.0, 225.0, 242.0), (500.0, 100.0, 620.0, 240.0), FAR])
PAD_SCORES = st.sampled_from([LIVE, 0.7, 0.45, PHOTO, None])  # per frame, so verdicts mix live and spoof frames
faces = st.builds(lambda box, m, ok, v, pad: face(box=box, matches=m if ok else None, ok=ok, verify=v if ok else None,
                                                  reasons=() if ok else ("blurred",), pad=pad),
                  BOXES, SUBJECT_SCORES, st.booleans(), st.one_of(st.none(), st.sampled_from([0.1, 0.7])), PAD_SCORES)
OTHERS = st.lists(st.sampled_from([(300.0, 100.0, 420.0, 240.0), (300.0, 100.0, 340.0, 140.0)]), max_size=1)
ACTIONS = st.sampled_from(list(StaffAction))


def _event(kind, t, draw):
    if kind == "frame":
        primary = draw(st.one_of(st.none(), faces))
        others = [] if primary is None else [face(box=b) for b in draw(OTHERS)]
        return FrameObservation(t, primary, tuple(others))
    if kind == "staff":
        return StaffCommand(t, draw(ACTIONS), "op-1", "property test", draw(st.sampled_from([None, Direction.EXIT])))
    if kind == "token":
        return draw(st.sampled_from([TokenRead(t, "boarding_pass", "alice", A), TokenRead(t, "id_number", None, None),
                                     TokenRead(t, "boarding_pass", "mallory", D)]))
    if kind == "fault":
        return DeviceFault(t, draw(st.sampled_from(["barrier", "camera"])), "x")
    if kind == "restored":
        return DeviceRestored(t, draw(st.sampled_from(["barrier", "camera"])))
    if kind == "fire":
        return FireAlarm(t, draw(st.booleans()))
    simple = {"tick": Tick, "passage": PassageComplete, "forced": DoorForced, "tamper": Tamper,
              "audit_failed": AuditFailed, "audit_restored": AuditRestored}
    return simple[kind](t)


KINDS = (["passenger"] * 10 + ["frame"] * 4 + ["tick"] * 3 + ["passage"] * 3 + ["staff"] * 3
         + ["token", "fault", "restored", "fire", "forced", "tamper", "audit_failed", "audit_restored", "disk"])


@st.composite
def scenarios(draw):
    """Mostly passengers (bursts of consistent frames of one person), with every other event mixed in."""
    t, out = 0.0, []
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0.0, 0.05, 0.1, 0.5, 2.0, 12.0]))
        kind = draw(st.sampled_from(KINDS))
        if kind == "passenger":
            matches, verify = draw(SUBJECT_SCORES), draw(st.sampled_from([None, 0.1, 0.7]))
            liveness = draw(st.sampled_from([LIVE, PHOTO, "mixed"]))  # a live person, a photo, or anything
            others = [face(box=b) for b in draw(OTHERS)]
            for i in range(draw(st.integers(1, 6))):
                x = 100.0 + 3 * i
                pad = draw(PAD_SCORES) if liveness == "mixed" else liveness
                out.append(FrameObservation(t, face(box=(x, 100.0, x + 120.0, 240.0), matches=matches, verify=verify,
                                                    pad=pad), tuple(others if i == 2 else ())))
                t += 0.1
        elif kind == "disk":
            out.append(("disk", t))
        else:
            out.append(_event(kind, t, draw))
    return out


def _opens_allowed_by(event, before_state, actions) -> bool:
    """An unlock may only come from an accepted passenger, a staff opening or the fire input."""
    if isinstance(event, StaffCommand) and event.action in (StaffAction.OPEN_ONCE, StaffAction.UNLOCK):
        return True
    if isinstance(event, FireAlarm) and event.active:
        return True
    if isinstance(event, (DeviceRestored, AuditRestored)) and before_state.mode in (Mode.OPEN, Mode.EMERGENCY):
        return True  # a driver relocks when its link returns; the lane re-applies the opening
    return any(isinstance(a, Audit) and a.record["event"] == "decision" and a.record["decision"]["outcome"] == "allow"
               for a in actions)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.booleans(), st.sampled_from([CONFIG, STRICT]))
def test_safety_properties_hold_for_any_event_sequence(events, pad_provisioned, config):
    with Gate(config, pad_provisioned=pad_provisioned) as g:
        _check_safety_properties(g, events, pad_provisioned, config)


def _check_safety_properties(g, events, pad_provisioned, config):
    spoof_at = -1.0  # time of the latest spoof verdict (a failed attempt or a final referral)
    fed_pad: dict[float, set[float]] = {}  # frame time -> PAD scores the lane was given at that time
    spoof_seen = False  # a spoof verdict was reached and no staff member has acted since
    for ev in events:
        if isinstance(ev, tuple):  # the disk fills up or frees space
            g.disk_full = not g.disk_full
            continue
        if isinstance(ev, FrameObservation) and ev.primary is not None and ev.primary.pad_live is not None:
            # stamped as the lane stamps it: its clock never runs backwards, records round to the µs
            fed_pad.setdefault(round(max(g.state.now, ev.t), 6), set()).add(ev.primary.pad_live)
        before = g.state
        actions = g.send(ev)
        after, direct = step(before, ev)  # the lane's own output for this event, before any feedback
        kinds = [type(a) for a in direct]

        # 1. every unlock has an audit record before it in the same step
        for i, k in enumerate(kinds):
            if k is Unlock:
                assert Audit in kinds[:i], (ev, direct)
        # 2. unlocks only from an accepted passenger, staff or the fire input; never while the audit
        #    log is failing (except the emergency release); in ALARM / OUT_OF_SERVICE only staff or fire
        for a in direct:
            if isinstance(a, Unlock):
                assert _opens_allowed_by(ev, before, direct), (before.mode, ev)
                assert a.fail_safe or AUDIT_LOG not in before.faults
                if before.mode in (Mode.ALARM, Mode.OUT_OF_SERVICE):
                    assert isinstance(ev, (StaffCommand, FireAlarm)), (before.mode, ev)
                assert a.fail_safe == (after.mode is Mode.EMERGENCY) == (a.hold and a.direction is Direction.BOTH)
            if isinstance(a, Indicate):
                check_indicate_args(a.colour, a.buzzer, a.text)  # what every driver accepts
        # 3. every change of mode is in the audit trail, as a connected chain from old to new
        transitions = [a.record for a in direct if isinstance(a, Audit) and a.record["from"] != a.record["to"]]
        if after.mode is not before.mode:
            assert transitions and transitions[0]["from"] == before.mode.value
            assert transitions[-1]["to"] == after.mode.value
        for x, y in zip(transitions, transitions[1:], strict=False):  # consecutive pairs
            assert x["to"] == y["from"]
        # 4. manual actions carry who and why
        if isinstance(ev, StaffCommand):
            manual = [a.record for a in direct if isinstance(a, Audit) and a.record["event"] == "manual_action"]
            assert manual and all(r["operator_id"] == "op-1" and r["reason"] == "property test" for r in manual)
        # 5. the emergency latch only yields to a staff reset with the fire input off
        if before.mode is Mode.EMERGENCY and g.mode is not Mode.EMERGENCY:
            assert isinstance(ev, StaffCommand) and ev.action is StaffAction.RESET and not before.fire_active
        # 6. after the daemon has run the actions (and any audit-failure feedback), the barrier is
        #    unlocked exactly when the lane is OPEN or in EMERGENCY
        assert (g.barrier == "unlocked") == (g.mode in (Mode.OPEN, Mode.EMERGENCY)), (g.mode, ev, actions)
        # 7. state invariants the daemon relies on
        assert (g.state.track is not None) == (g.mode is Mode.ACQUIRING)
        assert (g.state.opening is not None) == (g.mode is Mode.OPEN)
        assert g.state.fire_active <= (g.mode is Mode.EMERGENCY)
        if g.mode is Mode.DECIDED:
            assert g.state.decision is not None and g.state.decision.outcome is not Outcome.ALLOW
        # 8. liveness: a lane without PAD never claims a check; on a lane with PAD an opening rests
        #    on a live verdict over scores the lane was really given, never on a frame judged before a
        #    spoof verdict; on a site that latches suspected photos, no opening follows a spoof
        #    verdict until a staff member has acted (or the fire input releases the doors)
        if isinstance(ev, StaffCommand):
            spoof_seen = False
        for a in direct:
            if isinstance(a, Unlock) and config.latch.presentation_attack:
                assert not spoof_seen or isinstance(ev, (StaffCommand, FireAlarm)), (ev, direct)
            if not (isinstance(a, Audit) and a.record["event"] in ("decision", "attempt_failed")):
                continue
            d = a.record["decision"]
            if not pad_provisioned:
                assert d["pad"] == "not provisioned"
            elif d["pad"] != "not judged":
                assert d["pad"]["state"] != "live" or d["pad"]["live"] >= POLICY.pad.threshold
                for f in d["pad"]["scores"]:
                    assert f["live"] in fed_pad[f["t"]]
                if d["pad"]["state"] == "presentation_attack_suspected":
                    assert d["outcome"] != "allow"
                    spoof_seen, spoof_at = True, a.record["t"]
                if d["outcome"] == "allow":
                    assert all(f["t"] >= spoof_at for f in d["pad"]["scores"])
            if d["outcome"] == "allow" and pad_provisioned:
                assert d["pad"]["state"] == "live" and len(d["pad"]["scores"]) == POLICY.pad.frames
                assert sum(f["live"] for f in d["pad"]["scores"]) / POLICY.pad.frames >= POLICY.pad.threshold


attempts = st.lists(st.tuples(
    st.sampled_from([0.1, 0.5, 2.0, 4.0]),  # pause before the attempt (the track is lost after 1 s)
    st.sampled_from([LIVE, PHOTO, "mixed"]),  # a live face, a photo, or anything frame by frame
    st.lists(PAD_SCORES, min_size=6, max_size=6),  # the frame-by-frame scores of a "mixed" attempt
    st.integers(1, 6),
    st.sampled_from([(("alice", 0.8), ("bob", 0.2)), (("alice", 0.3),), (("alice", 0.66), ("alicia", 0.6))]),
    st.booleans()), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attempts)
def test_no_opening_ever_follows_a_spoof_verdict(tries):
    """Someone with a photo tries, steps back, tries again, mixes in their own face: once a
    spoof verdict is reached, no attempt opens the gate until staff have acted."""
    with Gate(STRICT, pad_provisioned=True) as g:
        _check_no_opening_after_spoof(g, tries)


def _check_no_opening_after_spoof(g, tries):
    t, spoofed = 0.0, False
    for pause, liveness, mixed, n, matches, with_token in tries:
        t += pause
        if with_token:
            g.send(TokenRead(t, "boarding_pass", "alice", A))
        for i in range(n):
            pad = mixed[i] if liveness == "mixed" else liveness
            verify = 0.7 if matches[0][1] > 0.5 else 0.2
            actions = g.send(frame(t, face(box=(100.0 + 2 * i, 100.0, 220.0 + 2 * i, 240.0), matches=matches,
                                           verify=verify, pad=pad)))
            t += 0.1
            for a in actions:
                if isinstance(a, Unlock):
                    assert not spoofed, g.audit[-4:]
                if isinstance(a, Audit) and a.record["event"] == "decision":
                    pad_record = a.record["decision"]["pad"]
                    spoofed = spoofed or (pad_record != "not judged"
                                          and pad_record["state"] == "presentation_attack_suspected")
        g.send(Tick(t + 3.5))
        if g.mode is Mode.OPEN:
            g.send(PassageComplete(t + 3.6))
    if spoofed:
        assert g.mode is Mode.ALARM and g.barrier == "locked"


def test_the_liveness_record_gives_the_face_size_of_every_frame_it_judged():
    """Liveness depends on how large the face is in the frame (the crops hold more or less of
    the surroundings): staff and the lane benchmark read it from the record."""
    g = Gate(pad_provisioned=True)
    g.send(frame(1.0, face(box=(100.0, 100.0, 200.0, 200.0), pad=LIVE)))
    g.approach(1.1, n=2, pad=LIVE)  # NEAR, 120 x 140 px: overlaps the first box enough to be the same person
    assert g.mode is Mode.OPEN
    assert [f["px"] for f in decisions(g)[-1]["pad"]["scores"]] == [100.0, 129.6, 129.6]
