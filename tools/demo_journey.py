"""The travellers' walk through the demo airport: kiosk, security lane, boarding gate.

One kiosk serves one traveller at a time, in the cast's order; as each is enrolled they walk
airside on their own thread, queueing at the security lane and then at their gate, so the
next traveller checks in while the previous one is at security, as in a terminal. What a
traveller does at each place goes through the place's real interfaces:

    kiosk     their face on its camera; the boarding pass typed into the scanner's serial line;
              the chip ID card's DG1/DG2/EF.SOD in the reader's inbox; a referral approved by
              the counter agent with `gate-kiosk approve --operator ... --reason ...`
    lanes     their face on the lane's camera until the lane decides (and, when it opens, the
              simulated turnstile reports the passage); then they walk on
    ops       a gate change with `gate-central assign`, while the gates run

Every step is timed on one clock (UTC, as the audit records are) and printed as one line as
it ends. What each place recorded is read back from the central afterwards
(tools/demo_results.py); this module only keeps the windows in which each traveller stood
where, so a refusal, which names nobody, can still be told apart from the next one.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tools.demo_cast import KIOSK_SCALE, LANE_SCALE, Cast, Traveller
from tools.demo_site import KIOSK, Lane, Site
from tools.feedgen import CameraFolder, standing_frames

AGENT = "agent-07"  # the counter agent's operator id
# What the counter agent writes when approving, by the kiosk's referral reason.
AGENT_REASONS = {
    "verify_failed": "card photo years old; face checked against the card by eye",
    "verify_ambiguous": "face checked against the card by eye",
    "pad_doubt": "live person at the counter, card checked",
    "capture_timeout": "photo retaken with the agent, card checked",
}
DECISION_TIMEOUT_S = 20.0  # a lane that has not decided by then is reported as undecided


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Step:
    """One traveller at one place, from stepping up to walking on."""

    traveller: Traveller
    kind: str  # "kiosk" | "security" | "boarding"
    place: str  # the station's or gate's id
    expected: str  # "enrolled" | "pass" | "refused"
    note: str = ""  # why this step is in the story, e.g. "wrong gate: SGN-G12 boards VN123"
    start: dt.datetime = field(default_factory=utc_now)
    end: dt.datetime | None = None
    got: str = ""  # what the demo saw: enrolled | referred | allow | deny | refer | undecided | skipped
    seen: list[dict] = field(default_factory=list)  # the place's records the demo saw live


@dataclass
class Journey:
    origin: dt.datetime = field(default_factory=utc_now)
    steps: list[Step] = field(default_factory=list)
    gate_changes: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def since(self, moment: dt.datetime) -> float:
        return (moment - self.origin).total_seconds()

    def say(self, place: str, text: str) -> None:
        with self.lock:
            print(f"[{self.since(utc_now()):6.1f}s] {place:9s} {text}", flush=True)

    def add(self, step: Step) -> Step:
        with self.lock:
            self.steps.append(step)
        return step


def _wait_for(predicate: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


def _run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    from tools.demo_site import REPO

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)}
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _name(t: Traveller) -> str:
    return f"{t.name} ({t.flight.code})" if t.flight else f"{t.name} (not enrolled)"


class KioskDesk:
    """The check-in kiosk, as a traveller and the counter agent use it."""

    def __init__(self, site: Site, cast: Cast, journey: Journey):
        from kiosk.specimen import make_document_signer

        self.site, self.cast, self.journey = site, cast, journey
        self.camera = CameraFolder(site.kiosk_camera)
        assert site.csca is not None
        self.signer = make_document_signer(site.csca, "DS Demo Viet Nam")  # signs the cards' EF.SOD
        self.sequence = 0

    def _status(self) -> dict:
        from gate.control import ControlError, call

        try:
            return call(self.site.kiosk_sock, "status", timeout=3)
        except ControlError:
            return {}

    def _records(self, subject_id: str, since: dt.datetime) -> list[dict]:
        """The kiosk's own audit records about this traveller since `since` (read-only)."""
        from gate.audit import AuditLog
        from gate.sqlite_store import parse_utc_iso

        with AuditLog(self.site.kiosk_state, read_only=True) as log:
            return [{"seq": r.seq, "ts": r.ts, **r.body} for r in log.tail(50)
                    if r.body.get("subject_id") == subject_id and parse_utc_iso(r.ts) >= since]

    def _scan(self, t: Traveller) -> None:
        from kiosk.specimen import specimen_bcbp

        assert t.flight is not None and self.site.scanner_master is not None
        self.sequence += 1
        code = specimen_bcbp(t.surname, t.given, f"DEMO{self.sequence:02d}", "SGN", t.flight.to, t.flight.carrier,
                             t.flight.number, self.cast.day, f"{10 + self.sequence}C", self.sequence)
        os.write(self.site.scanner_master, (code + "\r\n").encode("ascii"))

    def _card(self, t: Traveller) -> None:
        from kiosk.specimen import write_chip_handover
        from vision.image_io import load_image

        assert t.doc_photo is not None and t.number is not None
        jpeg = t.doc_photo.read_bytes()
        h, w = load_image(t.doc_photo).shape[:2]
        write_chip_handover(self.site.kiosk_inbox, self.signer, jpeg, w, h, t.number, t.surname, t.given, t.name)

    def serve(self, t: Traveller) -> Step:
        expected = "referred" if t.role == "referred" else "enrolled"
        step = self.journey.add(Step(t, "kiosk", KIOSK, expected))
        sid = t.subject_id or ""
        done_before = self._status().get("completed", 0)
        self.camera.show(standing_frames(t.live_photo, scale=KIOSK_SCALE, seed=t.seed))
        self._scan(t)
        if not _wait_for(lambda: self._status().get("state") == "await_identity", 15):
            step.got = "pass refused"
        else:
            self._card(t)
            done = _wait_for(lambda: self._status().get("completed", 0) > done_before
                             or self._status().get("state") == "referred", 60)
            referred = self._status().get("state") == "referred"
            if referred:
                referral = self._status().get("referral") or ""
                self._say_referral(t, step, sid, referral)
                if not self._agent(t, "approve", AGENT_REASONS.get(referral, "card and face checked by the agent")):
                    self._agent(t, "decline", "could not be enrolled here; boarding pass and card checked by hand")
                done = _wait_for(lambda: self._status().get("completed", 0) > done_before, 30)
            step.seen = self._records(sid, step.start)
            outcome = next((r.get("outcome") for r in reversed(step.seen) if r.get("event") == "kiosk_attempt"), None)
            if not done or outcome is None:
                step.got = "undecided"
            elif outcome == "enrolled":
                step.got = "referred" if referred else "enrolled"
            else:
                step.got = outcome
        self.camera.clear()
        step.end = utc_now()
        self._say_done(t, step)
        return step

    def _say_referral(self, t: Traveller, step: Step, sid: str, referral: str) -> None:
        from gate.event_text import label

        records = self._records(sid, step.start)
        rec: dict = next((r for r in reversed(records) if r.get("event") == "kiosk_referred"), {})
        score = f"1:1 {rec['verify_median']:.3f} < {self.cast.kiosk_threshold:.3f}" if "verify_median" in rec else ""
        self.journey.say("kiosk", f"{_name(t)}: REFERRED to the counter agent ({label(referral)}"
                                  f"{'; ' + score if score else ''})")

    def _agent(self, t: Traveller, decision: str, reason: str) -> bool:
        """The counter agent's decision on a referral, through `gate-kiosk approve|decline`."""
        r = _run_cli(["tools.gate_kiosk", "--config", str(self.site.kiosk_cfg), decision, "--operator", AGENT,
                      "--reason", reason], self.site.kiosk_dir)
        verb = {"approve": "approves", "decline": "declines"}[decision]
        self.journey.say("agent", f"{AGENT} {verb} {t.name}: {reason!r}"
                                  + ("" if r.returncode == 0 else f" — REFUSED: {r.stderr.strip()}"))
        return r.returncode == 0

    def _say_done(self, t: Traveller, step: Step) -> None:
        sent = next((r for r in step.seen if r.get("event") == "kiosk_enrol_sent"), {})
        figures = []
        if "verify_median" in sent:
            figures.append(f"1:1 {sent['verify_median']:.3f}")
        if sent.get("pad_live_mean") is not None:
            figures.append(f"live {sent['pad_live_mean']:.2f}")
        took = (step.end - step.start).total_seconds() if step.end else 0.0
        what = {"enrolled": "ENROLLED", "referred": "ENROLLED after the agent's approval"}.get(
            step.got, f"NOT ENROLLED ({step.got.replace('_', ' ')})")
        scopes = f" for {', '.join(sent['scopes'])}" if sent.get("scopes") else ""
        self.journey.say("kiosk", f"{_name(t)}: {what}{scopes} ({'; '.join(figures + [f'{took:.1f} s'])})")


class LaneDesk:
    """A lane (security or boarding gate) as a traveller meets it: one at a time."""

    def __init__(self, lane: Lane, journey: Journey):
        self.lane, self.journey = lane, journey
        self.camera = CameraFolder(lane.camera)
        self.queue = threading.Lock()

    def status(self) -> dict:
        from gate.control import ControlError, call

        try:
            return call(self.lane.sock, "status", timeout=3)
        except ControlError:
            return {}

    def _events_after(self, seq: int) -> list[dict]:
        from gate.control import ControlError, call

        try:
            return [e for e in call(self.lane.sock, "events", last=60, timeout=3).get("events", []) if e["seq"] > seq]
        except ControlError:
            return []

    def visit(self, t: Traveller, kind: str, expected: str, note: str = "") -> Step:
        with self.queue:
            _wait_for(lambda: self.status().get("mode") == "idle", 15)
            seq0 = max([e["seq"] for e in self._events_after(0)] or [0])
            step = self.journey.add(Step(t, kind, self.lane.gate_id, expected, note))
            self.camera.show(standing_frames(t.live_photo, scale=LANE_SCALE, seed=t.seed + 1))

            def decided() -> dict | None:
                return next((e for e in self._events_after(seq0) if e.get("event") == "decision"), None)

            decision = _wait_for(decided, DECISION_TIMEOUT_S, every=0.15)
            if decision and decision["decision"]["outcome"] == "allow":
                _wait_for(lambda: any(e.get("event") == "passage_complete" for e in self._events_after(seq0)), 6)
            else:
                time.sleep(1.0)  # they read the display, then step back
            self.camera.clear()
            _wait_for(lambda: self.status().get("mode") == "idle", 10)
            step.end = utc_now()
            step.seen = self._events_after(seq0)
            step.got = decision["decision"]["outcome"] if decision else "undecided"
        self._say(t, step, decision)
        return step

    def _say(self, t: Traveller, step: Step, decision: dict | None) -> None:
        from gate.event_text import decision_text

        retries = sum(1 for e in step.seen if e.get("event") == "attempt_failed")
        what = decision_text(decision["decision"]) if decision else "no decision"
        extra = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
        self.journey.say(self.lane.short, f"{_name(t)}: {what}{extra}" + (f" — {step.note}" if step.note else ""))


class Airport:
    """Runs the cast through the site: the kiosk in order, then each traveller airside."""

    def __init__(self, site: Site, cast: Cast, journey: Journey):
        self.site, self.cast, self.journey = site, cast, journey
        self.kiosk = KioskDesk(site, cast, journey)
        self.lanes = {gid: LaneDesk(lane, journey) for gid, lane in site.lanes.items()}
        self.security = self.lanes[site.security.gate_id]
        self.gate_of = {f.code: f.first_gate for f in cast.flights}
        self.enrolled: set[str] = set()
        self._airside: list[threading.Thread] = []
        self._boarded_others = threading.Event()
        self._gate_changed = threading.Event()
        self._others_left = sum(1 for t in cast.travellers if t.role not in ("gate_change", "stranger"))
        if not self._others_left:
            self._boarded_others.set()
        self._count_lock = threading.Lock()

    def run(self) -> None:
        moving = next((t.flight for t in self.cast.travellers if t.role == "gate_change" and t.flight), None)
        if moving is not None:  # ops moves the flight once everyone else has boarded
            self._go(self._gate_change_when_due, moving.code)
        for t in self.cast.travellers:
            if t.role == "stranger":  # walks straight to security, never checked in
                self._go_airside(t)
        for t in self.cast.travellers:
            if t.role == "stranger":
                continue
            step = self.kiosk.serve(t)
            if step.got in ("enrolled", "referred") and t.subject_id:
                self.enrolled.add(t.subject_id)
            self._go_airside(t, enrolled=step.got in ("enrolled", "referred"))
        for th in self._airside:
            th.join()

    def _go_airside(self, t: Traveller, enrolled: bool = False) -> None:
        self._go(self._airside_walk, t, enrolled)

    def _go(self, target, *args) -> None:
        th = threading.Thread(target=target, args=args, daemon=True)
        th.start()
        self._airside.append(th)

    def _gate_change_when_due(self, flight_code: str) -> None:
        try:
            self._boarded_others.wait(300)
            self.change_gate(flight_code)
        finally:
            self._gate_changed.set()

    def _airside_walk(self, t: Traveller, enrolled: bool) -> None:
        try:
            if t.role == "stranger":
                self.security.visit(t, "security", "refused", "never enrolled at the kiosk")
                return
            if not enrolled:
                for kind in ("security", "boarding"):
                    self.journey.add(Step(t, kind, "", "pass", "not enrolled at the kiosk", got="skipped",
                                          end=utc_now()))
                return
            self._wait_until_known(self.security, t)
            self.security.visit(t, "security", "pass")
            self._board(t)
        finally:
            if t.role not in ("gate_change", "stranger"):
                with self._count_lock:
                    self._others_left -= 1
                    if self._others_left == 0:
                        self._boarded_others.set()

    def _board(self, t: Traveller) -> None:
        assert t.flight is not None
        own = self.gate_of[t.flight.code]
        if t.role == "wrong_gate":
            other = next(f for f in self.cast.flights if f.code != t.flight.code)
            self.lanes[other.first_gate].visit(t, "boarding", "refused",
                                               f"wrong gate: {other.first_gate} boards {other.code}")
        if t.role == "gate_change":  # waits airside for the announced gate
            self._gate_changed.wait(320)
            own = self.gate_of[t.flight.code]
        self._wait_until_known(self.lanes[own], t)
        note = "after the gate change" if t.role == "gate_change" else ""
        self.lanes[own].visit(t, "boarding", "pass", note)

    def _wait_until_known(self, desk: LaneDesk, t: Traveller) -> None:
        """The walk from the kiosk takes minutes in a terminal; here it lasts until the lane's
        watchlist holds everyone enrolled for it so far (bounded), timed for the report."""
        assert t.flight is not None
        gate = desk.lane.gate_id
        want = sum(1 for x in self.cast.travellers if x.subject_id in self.enrolled and x.flight is not None
                   and (desk is self.security or self.gate_of.get(x.flight.code) == gate))
        _wait_for(lambda: desk.status().get("watchlist_size", 0) >= want, 10)

    def change_gate(self, flight_code: str) -> None:
        """Move a flight to the other boarding gate (which has finished its own flight), with the
        ops command, and wait until the new gate holds the flight's passengers."""
        flight = next(f for f in self.cast.flights if f.code == flight_code)
        old = self.gate_of[flight_code]
        new = next(f.first_gate for f in self.cast.flights if f.first_gate != old)
        label = flight.label(self.cast.day)
        cfg = str(self.site.central_cfg)
        self.journey.say("ops", f"GATE CHANGE: {flight_code} moves from {old} to {new} (gate-central assign)")
        t0 = utc_now()
        results = [_run_cli(["tools.gate_central", "--config", cfg, "assign", "--gate", new, "--flight", label],
                            self.site.work),
                   _run_cli(["tools.gate_central", "--config", cfg, "assign", "--gate", old, "--none"],
                            self.site.work)]
        ok = all(r.returncode == 0 for r in results)
        pax = sum(1 for x in self.cast.travellers if x.flight == flight and x.subject_id in self.enrolled)
        new_desk, old_desk = self.lanes[new], self.lanes[old]
        followed = _wait_for(lambda: new_desk.status().get("watchlist_size", -1) == pax
                             and old_desk.status().get("watchlist_size", -1) == 0, 20)
        took = (utc_now() - t0).total_seconds()
        for code, gate in list(self.gate_of.items()):  # the flight the new gate boarded before has closed
            if gate == new:
                self.gate_of[code] = ""
        self.gate_of[flight_code] = new
        change = {"at": t0, "flight": flight_code, "label": label, "from": old, "to": new, "ok": ok,
                  "followed": bool(followed), "took_s": took, "passengers": pax}
        self.journey.gate_changes.append(change)
        errors = "; ".join(r.stderr.strip() for r in results if r.returncode)
        self.journey.say("ops", f"{new} now boards {flight_code} ({pax} passenger{'s' if pax != 1 else ''} in its "
                                f"watchlist, "
                                f"{old} holds none) after {took:.1f} s" if followed and ok
                         else f"the gate change did not take effect in time{': ' + errors if errors else ''}")
