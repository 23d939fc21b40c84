"""A simulated gate: the real lane, audit log, watchlist store and sync agent, with scripted
passengers instead of a camera and the simulated turnstile instead of hardware.

What is real: `gate.lane` (the state machine the daemon runs), `gate.executor.ActionExecutor`
(audit first, then the device command), `gate.audit.AuditLog` (hash-chained, synchronous=FULL),
`gate.watchlist.WatchlistStore` fed by the CHP follower, `sync.agent.GateAgent` over ZeroMQ/CURVE
to a real central, and the health report the daemon sends. What is scripted: the vision
pipeline's output — each passenger is a run of `FrameObservation`s at 10 fps naming a subject
and a score, as `vision.match` and `vision.pad` would report them. So the central and the
operations console see exactly the records and health a lane writes, without the CPU cost of
face models (the console's browser tests run several gates on a 2-core machine).

    python -m tools.sim_gate --spec gate.json

The spec (JSON): {"gate_id", "site", "lane_id", "state_dir", "commands" (a JSON-lines file the
sim follows), "status" (a JSON file it rewrites), "sync": {the gate's [sync] table},
"lane": {optional [lane] overrides}}. Commands, one JSON object a line:
  {"do": "passenger", "subject": "S1", "score": 0.95, "live": 0.9}   an enrolled traveller
  {"do": "stranger"}  {"do": "photo_attack", "subject": "S1"}  {"do": "tailgate", "subject": "S1"}
  {"do": "door_forced"}  {"do": "fire", "active": true}
  {"do": "staff", "action": "reset|out_of_service|in_service|open_once|lock", "operator": "ID", "reason": "..."}
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import devices
from configschema import load_dataclass
from devices.config import SimConfig
from devices.sim import SimDriver
from gate.audit import AuditLog
from gate.events import (
    DeviceFault,
    DeviceRestored,
    DoorForced,
    FireAlarm,
    PassageComplete,
    StaffAction,
    StaffCommand,
    Tamper,
)
from gate.executor import BARRIER, ActionExecutor
from gate.lane import LaneConfig, Mode, health_fields, start, step
from gate.observation import Candidate, FaceObservation, FrameObservation, ListType
from gate.watchlist import WatchlistStore
from gate.watchlist_sync import WatchlistSyncSink
from sync.agent import GateAgent
from sync.config import agent_config_from_mapping

log = logging.getLogger("sim_gate")
FPS = 10.0
SOFTWARE = "0.1.0-sim"
NEAR = (100.0, 100.0, 230.0, 250.0)  # ~140 px: in the capture zone
BESIDE = (260.0, 110.0, 380.0, 250.0)  # a second person as close: tailgating
LANE_DEFAULTS: dict[str, Any] = {
    "policy": {"threshold_1n": 0.6, "min_margin": 0.05, "threshold_1to1": 0.6, "deny_threshold": 0.6,
               "acquire_timeout_s": 4.0},
    "open_timeout_s": 4.0, "result_display_s": 0.6,
}


@dataclass
class Script:
    """One person in front of the camera until the lane has judged them."""

    kind: str
    subject: str | None
    score: float
    live: float
    list_type: ListType
    judged_at: float | None = None

    def face(self, box=NEAR) -> FaceObservation:
        if self.subject is None:
            matches = (Candidate("nobody-alike", 0.21, ListType.ALLOW), Candidate("nobody-else", 0.18, ListType.ALLOW))
        else:
            matches = (Candidate(self.subject, self.score, self.list_type),
                       Candidate("runner-up", self.score - 0.4, ListType.ALLOW))
        return FaceObservation(box=box, detector_score=0.97, quality_ok=True, matches=matches, pad_live=self.live,
                               pad_scores={"minifasnet-v2": self.live, "minifasnet-v1se": self.live})


def _script(cmd: dict[str, Any]) -> Script | None:
    kind = cmd.get("do")
    subject = cmd.get("subject")
    if kind == "passenger":
        return Script(kind, str(subject), float(cmd.get("score", 0.95)), float(cmd.get("live", 0.93)),
                      ListType(cmd.get("list", "allow")))
    if kind == "stranger":
        return Script(kind, None, 0.2, float(cmd.get("live", 0.92)), ListType.ALLOW)
    if kind == "photo_attack":
        return Script(kind, str(subject) if subject else None, 0.9, float(cmd.get("live", 0.08)), ListType.ALLOW)
    if kind == "tailgate":
        return Script(kind, str(subject), 0.95, 0.93, ListType.ALLOW)
    return None


class SimGate:
    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.gate_id = spec["gate_id"]
        self.site = spec.get("site", "")
        state_dir = Path(spec["state_dir"])
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lane = {**LANE_DEFAULTS, **spec.get("lane", {}), "lane_id": spec["lane_id"]}
        lane["policy"] = {**LANE_DEFAULTS["policy"], **lane.get("policy", {})}
        self.lane_cfg = load_dataclass(LaneConfig, lane, "lane")
        self.audit = AuditLog(state_dir)
        # Templates here are the central's test vectors; stored as the daemon stores them, in clear
        # only because this simulator has no key file to hand (a real gate encrypts them).
        self.store = WatchlistStore(state_dir)
        self.driver = SimDriver(SimConfig(unlock_pulse_ms=10_000, auto_passage_ms=int(spec.get("passage_ms", 700))))
        self.driver.open()
        self.clock = time.monotonic
        self.executor = ActionExecutor(self.audit, self.driver, clock=self.clock,
                                       stamp={"gate": self.gate_id, "pad": "minifasnet-v2+minifasnet-v1se"},
                                       on_written=lambda row: self.agent.notify_audit() if self.agent else None)
        self.agent: GateAgent | None = None
        self.state, actions = start(self.lane_cfg, self.clock(), pad_provisioned=True)
        self.last_decision_at: str | None = None
        self.decisions = 0
        self._run(actions)
        cfg = agent_config_from_mapping({"gate_id": self.gate_id, **spec["sync"]}, Path(spec["state_dir"]))
        self.agent = GateAgent(cfg, WatchlistSyncSink(self.store), self.audit, self.health)
        self.commands = Path(spec["commands"])
        self.status_file = Path(spec["status"])
        self._offset = 0
        self.pending: list[dict[str, Any]] = []
        self.current: Script | None = None
        self.gap_until = 0.0

    # ----- the lane ---------------------------------------------------------------------

    def _run(self, actions) -> None:
        done = self.executor.run(actions, audit_failing=False)
        for row in done.rows:
            if row.body.get("event") == "decision":
                self.decisions += 1
                self.last_decision_at = row.ts
        for ev in done.followups:
            self.send(ev)

    def send(self, event) -> None:
        self.state, actions = step(self.state, event)
        self._run(actions)

    def health(self) -> dict[str, Any]:
        s = self.state
        return {"status": "ok" if not s.faults and s.mode is not Mode.OUT_OF_SERVICE else "degraded",
                "software_version": SOFTWARE, "model_versions": {"detector": "sim", "embedder": "sim"},
                "last_decision_at": self.last_decision_at, "mode": str(s.mode), "faults": sorted(s.faults),
                "audit_chain_alarm": None, "site": self.site,
                **health_fields(s, time.time() - (self.clock() - s.now))}

    # ----- inputs -----------------------------------------------------------------------

    def _device_events(self) -> None:
        q = self.driver.events
        while not q.empty():
            e = q.get_nowait()
            t = self.clock()
            if isinstance(e, devices.PassageComplete):
                self.send(PassageComplete(t, e.direction))
            elif isinstance(e, devices.DoorForced):
                self.send(DoorForced(t, "door forced"))
            elif isinstance(e, devices.Tamper):
                self.send(Tamper(t, "tamper switch"))
            elif isinstance(e, devices.FireAlarm):
                self.send(FireAlarm(t, e.active))
            elif isinstance(e, devices.DeviceOffline):
                self.send(DeviceFault(t, BARRIER, e.reason))
            elif isinstance(e, devices.DeviceOnline) and BARRIER in self.state.faults:
                self.send(DeviceRestored(t, BARRIER))

    def _read_commands(self) -> None:
        if not self.commands.exists():
            return
        with open(self.commands, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                self.pending.append(json.loads(line))

    def _next_command(self, now: float) -> None:
        while self.pending and self.current is None and now >= self.gap_until:
            cmd = self.pending.pop(0)
            kind = cmd.get("do")
            if kind == "door_forced":
                self.driver.emit_door_forced()
            elif kind == "fire":
                self.driver.set_fire_alarm(bool(cmd.get("active", True)))
            elif kind == "staff":
                self.send(StaffCommand(now, StaffAction(cmd["action"]), str(cmd["operator"]), str(cmd["reason"])))
            else:
                self.current = _script(cmd)
                if self.current is None:
                    log.warning("unknown command %r", cmd)

    def _frame(self, now: float) -> FrameObservation:
        sc = self.current
        if sc is None or self.state.mode not in (Mode.IDLE, Mode.ACQUIRING, Mode.DECIDED, Mode.OPEN):
            if sc is not None:  # the lane left service (alarm, emergency): this person walks away
                self.current, self.gap_until = None, now + 1.0
            return FrameObservation(now)
        if sc.judged_at is None and self.state.mode in (Mode.DECIDED, Mode.OPEN):
            sc.judged_at = now
        if sc.judged_at is not None and now - sc.judged_at > 0.4:  # judged: they walk on (or away)
            self.current, self.gap_until = None, now + 1.0
            return FrameObservation(now)
        others = (sc.face(BESIDE),) if sc.kind == "tailgate" else ()
        return FrameObservation(now, sc.face(), others, {"detect": 8.0, "embed": 5.0})

    def _write_status(self) -> None:
        s = self.state
        text = json.dumps({"gate": self.gate_id, "mode": str(s.mode), "alarm": s.alarm, "decisions": self.decisions,
                           "audit_last_seq": self.audit.last_seq(), "unsent": self.audit.unsent_count(),
                           "pending": len(self.pending) + (self.current is not None),
                           "watchlist_seq": self.store.sequence(), "pid": os.getpid(),
                           "at": dt.datetime.now(dt.timezone.utc).isoformat()})
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.status_file)

    def run(self, stop: threading.Event) -> None:
        assert self.agent is not None
        self.agent.start()
        next_status = 0.0
        try:
            while not stop.is_set():
                now = self.clock()
                self._device_events()
                self._read_commands()
                self._next_command(now)
                self.send(self._frame(now))
                if now >= next_status:
                    self._write_status()
                    next_status = now + 0.25
                stop.wait(max(0.0, 1 / FPS - (self.clock() - now)))
        finally:
            self.agent.stop()
            self.audit.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sim-gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s sim-gate %(levelname)s %(name)s: %(message)s")
    spec = json.loads(args.spec.read_text())
    gate = SimGate(spec)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    gate.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
