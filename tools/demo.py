"""`make demo`: the whole system on one machine, from real photos, in under three minutes.

A local central (ZeroMQ with CURVE keys) enrols travellers from photos; one lane daemon runs
on a camera feed of passengers walking up (enrolled travellers, strangers, a tailgating pair,
a deny-list subject, a printed-photo attack, a late enrolment) with a simulated turnstile. In
the middle the central is killed and later restarted: the lane keeps deciding from its local
watchlist and drains its audit log when the central returns. Ground staff clear the alarms
with gatectl, which is audited. At the end the central's copy of the audit chain is verified
and an HTML report is written.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tools.feedgen import Passenger, one_face, write_walkup_video

log = logging.getLogger("demo")
FPS = 15.0
LANE = "DEMO-1"
GATE = "DEMO-GATE-1"
THRESHOLD = 0.92  # threshold_1n of the demo's lane config (calibrated, see _write_configs)


CENTRAL_DOWN, CENTRAL_UP = "central_down", "central_up"


@dataclass
class Cast:
    """Who appears in the feed and what the gate should do with them."""

    enrolled: dict[str, Path]  # subject id -> enrolment photo
    deny: dict[str, Path]
    late: dict[str, Path]  # enrolled while the lane runs
    passengers: list[Passenger]
    cues: dict[str, int] = field(default_factory=dict)  # scripted incident -> index of the passenger it precedes


def _sequence(items: list) -> tuple[list[Passenger], dict[str, int]]:
    """A script of passengers with incident cues (strings) between them -> passengers, cue positions."""
    passengers, cues = [], {}
    for it in items:
        if isinstance(it, str):
            cues[it] = len(passengers)
        else:
            passengers.append(it)
    return passengers, cues


def _lfw_cast(images: Path, rng: np.random.Generator, pad_samples: Path | None, detector) -> Cast:
    people = sorted(d for d in images.iterdir() if d.is_dir())
    multi = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) >= 2]
    single = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) == 1]
    pick = [d for d in multi[:40] if one_face(detector, sorted(d.glob("*.jpg"))[1])][:10]
    strangers = [d for d in single[:20] if one_face(detector, next(d.glob("*.jpg")))][:4]
    photos = {d.name: sorted(d.glob("*.jpg")) for d in pick}
    enrolled = {d.name: photos[d.name][0] for d in pick[:7]}
    deny = {pick[7].name: photos[pick[7].name][0]}
    late = {pick[8].name: photos[pick[8].name][0]}
    e = [d.name for d in pick[:7]]
    walk = {n: str(photos[n][1]) for n in photos}
    stranger = [str(next(d.glob("*.jpg"))) for d in strangers]
    P = Passenger
    script = [P("enrolled", walk[e[0]], e[0]), P("enrolled", walk[e[1]], e[1]), P("not_enrolled", stranger[0]),
              P("enrolled", walk[e[2]], e[2]), P("tailgate", walk[e[3]], e[3], follower_photo=stranger[3]),
              P("enrolled", walk[e[4]], e[4]),
              CENTRAL_DOWN,  # the lane keeps deciding from its local watchlist
              P("not_enrolled", stranger[1]), P("enrolled", walk[e[5]], e[5]),
              P("deny_list", walk[pick[7].name], pick[7].name),
              CENTRAL_UP,  # the late traveller is enrolled as the central returns
              P("not_enrolled", stranger[2])]
    if pad_samples is not None:
        script.append(P("photo_attack", str(pad_samples / "spoof" / "image_F1.jpg")))
    script += [P("late_enrolled", walk[pick[8].name], pick[8].name), P("enrolled", walk[e[6]], e[6])]
    passengers, cues = _sequence(script)
    return Cast(enrolled, deny, late, passengers, cues)


def _insightface_cast(work: Path, pipeline) -> Cast:
    """Without ../shared: the faces in the group photo that ships inside the insightface wheel,
    each cut out as its own 'person' (enrolled from the cut-out, walking up mirrored)."""
    import cv2
    import insightface

    img = cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"))
    faces = pipeline.detector.detect(img)
    folder = work / "people"
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = f.box
        w, h = x2 - x1, y2 - y1
        crop = img[max(0, int(y1 - h)): int(y2 + h), max(0, int(x1 - w)): int(x2 + w)]
        crop = cv2.resize(crop, (250, 250))
        p = folder / f"person_{i:02d}.jpg"
        cv2.imwrite(str(p), crop)
        m = folder / f"person_{i:02d}_walk.jpg"
        cv2.imwrite(str(m), cv2.flip(crop, 1))
        photos.append((p, m))
    enrolled = {p.stem: p for p, _ in photos[:3]}
    passengers = [Passenger("enrolled", str(m), p.stem) for p, m in photos[:3]]
    passengers += [Passenger("not_enrolled", str(m)) for _, m in photos[3:]]
    return Cast(enrolled, {}, {}, passengers, {CENTRAL_DOWN: min(2, len(passengers) - 1),
                                               CENTRAL_UP: min(3, len(passengers) - 1)})


def _write_configs(work: Path, models: Path, video: Path, pad: bool, keys: Path) -> tuple[Path, Path]:
    central = work / "central.toml"
    central.write_text(f"""[central]
db_path = "central.db"
base_port = {_free_port_block()}
bind_host = "127.0.0.1"
secret_key_file = "{keys / 'central.key_secret'}"
heartbeat_s = 0.5
gate_silent_after_s = 5.0
""")
    port = central.read_text().split("base_port = ")[1].split()[0]
    gate = work / "gate.toml"
    pad_names = '["minifasnet-v2", "minifasnet-v1se"]' if pad else "[]"
    gate.write_text(f"""[gate]
id = "{GATE}"
site = "DEMO"
state_dir = "gate-state"
log_level = "WARNING"

[camera]
source = "{video}"
fps = {FPS}

[models]
dir = "{models}"
min_face_px = 60
pad = {pad_names}
pad_required = {str(pad).lower()}

[lane]
lane_id = "{LANE}"
open_timeout_s = 4.0
result_display_s = 0.7

[lane.policy]
# Calibrated by gate-eval on LFW folds (README, "Accuracy"); see docs/accuracy.md.
# 1:1 at FAR 0.1 % on LFW (gate-eval lfw: threshold_at_far_1e-3 = 0.918). For 1:N the chance of
# a false match grows with the gallery: with ~10 enrolled here, FPIR is about 10 x FAR, ~1 %.
threshold_1n = {THRESHOLD}
min_margin = 0.03
threshold_1to1 = {THRESHOLD}
deny_threshold = {THRESHOLD}
acquire_timeout_s = 3.0

[lane.policy.pad]
threshold = 0.5
frames = 3

[device]
type = "sim"
auto_passage_ms = 1500

[sync]
central_host = "127.0.0.1"
base_port = {port}
scopes = ["lane:{LANE}"]
accepted_models = ["dlib-resnet-v1"]
secret_key_file = "{keys / 'gate.key_secret'}"
central_public_key_file = "{keys / 'central.key'}"
heartbeat_timeout_s = 2.0
reply_timeout_s = 1.0
health_interval_s = 1.0
""")
    return central, gate


def _free_port_block() -> int:
    """A base port with four free ports after it on loopback."""
    import socket

    for base in range(25556, 26556, 7):
        ok = True
        for p in range(base, base + 4):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free loopback ports for the demo central")


class Procs:
    """Child processes that must not outlive the demo, even on Ctrl-C."""

    def __init__(self):
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], cwd: Path, logfile: Path) -> subprocess.Popen:
        f = open(logfile, "ab")
        # the children run the same checkout as the demo itself, whatever their working folder
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (repo, os.environ.get("PYTHONPATH")) if x)}
        p = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.procs[name] = p
        return p

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)


def _fmt_event(e: dict) -> str | None:
    """The live view's line for an audit record (None: not worth a line), in staff wording."""
    from gate.event_text import decision_text, label, unserved_text

    ev = e.get("event")
    if ev == "decision":
        ms = e.get("timings_ms", {})
        d = e["decision"]
        took = f"; decided {d.get('elapsed_s', 0) * 1000:.0f} ms after the first face" if d.get("elapsed_s") else ""
        frame = f"; frame: detect {ms['detect']:.0f} ms, embed {ms.get('embed', 0):.0f} ms" if "detect" in ms else ""
        return f"{decision_text(d)}{took}{frame}"
    if ev == "attempt_failed":
        return (f"RETRY  attempt {e['attempt']}/{e['of']}: {label(e['decision']['reason'])}; "
                f"passenger told {e['prompt']!r}")
    if ev == "face_lost" and e.get("unserved"):
        return f"LOST   {unserved_text(e['unserved'])}"
    if ev == "open":
        o = e["opening"]
        return f"OPEN   turnstile unlocked for {o.get('subject_id') or 'staff ' + str(o.get('operator_id'))}"
    if ev == "manual_action":
        return f"STAFF  {label(e.get('action'))} by {e.get('operator_id')}: {e.get('reason')}"
    if e.get("to") == "alarm" and e.get("from") != "alarm":
        return f"ALARM  {label(ev)} (lane held for staff)"
    return None


class LiveView:
    """Prints the lane's events and the demo's own incidents in time order.

    Audit records reach the demo over the control socket a little after they happen, while the
    demo's incidents (the central killed, a late enrolment) are known at once; lines are held
    for `delay_s` and printed sorted by their time (one clock: the system's monotonic clock,
    which the lane's records also use), so the story reads in the order it happened."""

    def __init__(self, delay_s: float = 0.6):
        self.delay_s = delay_s
        self.origin: float | None = None  # the lane's start (its lane_started record)
        self._pending: list[tuple[float, int, str]] = []
        self._n = 0
        self._lock = threading.Lock()

    def add(self, t: float, line: str) -> None:
        with self._lock:
            self._n += 1
            self._pending.append((t, self._n, line))

    def flush(self, everything: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            ready = sorted(x for x in self._pending if everything or x[0] <= now - self.delay_s)
            self._pending = [x for x in self._pending if x not in ready]
        for t, _, line in ready:
            print(f"[{t - (self.origin or t):6.1f}s] {line}", flush=True)


@dataclass
class DemoRun:
    """What the phases share. A phase reads what earlier phases set and adds its own part, so a
    longer journey (more lanes, more stations) is more phases, not a longer function."""

    models: Path
    shared: Path
    work: Path
    seed: int
    t_start: float = field(default_factory=time.monotonic)
    pipeline: object = None
    pad: bool = False
    cast: Cast | None = None
    keys: Path | None = None
    central_cfg: Path | None = None
    gate_cfg: Path | None = None
    ccfg: object = None
    truth: list = field(default_factory=list)
    procs: Procs = field(default_factory=Procs)
    events: list[dict] = field(default_factory=list)
    outage: list = field(default_factory=lambda: [None, None])
    view: LiveView = field(default_factory=LiveView)
    summary: dict = field(default_factory=dict)
    per_passenger: list[dict] = field(default_factory=list)

    @property
    def sock(self) -> Path:
        return self.work / "gate-state" / "control.sock"

    def folder_of(self, people: dict[str, Path], name: str) -> Path:
        """An enrolment folder: one sub-folder per person, named by the (pseudonymous) subject id."""
        root = self.work / "enrol" / name
        for sid, photo in people.items():
            (root / sid).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, root / sid / photo.name)
        return root


def phase_prepare(run: DemoRun) -> None:
    """Working folder, models (liveness provisioned when the shared models are there), the cast."""
    from models.provision import provision_minifasnet_pair
    from vision.loading import load_pipeline

    if run.work.exists():
        shutil.rmtree(run.work)
    run.work.mkdir(parents=True)
    print(f"edgegate demo — working folder {run.work}")
    run.pipeline = load_pipeline(run.models, "mtcnn-v1", "dlib-resnet-v1", flip=True, detector_opts={"min_face": 40})
    shared_models = run.shared / "models"
    run.pad = (shared_models / "2.7_80x80_MiniFASNetV2.onnx").exists()
    if run.pad:
        provision_minifasnet_pair(shared_models, run.models)
        print("liveness: MiniFASNet pair provisioned from ../shared/models")
    else:
        print("liveness: NOT PROVISIONED (../shared/models missing) — the lane says so in every record")
    lfw = run.shared / "faces" / "lfw-dev" / "images"
    if lfw.is_dir():
        pad_samples = run.shared / "faces" / "pad-samples" if run.pad else None
        run.cast = _lfw_cast(lfw, np.random.default_rng(run.seed), pad_samples, run.pipeline.detector)
        print(f"people: LFW photos from {lfw}")
    else:
        run.cast = _insightface_cast(run.work, run.pipeline)
        print("people: faces from the photo shipped in the insightface wheel (../shared not found)")


def phase_enrol(run: DemoRun) -> None:
    """CURVE keys, configs, and the travellers enrolled at the central."""
    from sync.central import Central
    from sync.config import load_central_config
    from sync.keys import generate_keypair_files, load_public_key
    from tools.enrolment import enrol_folder

    run.keys = run.work / "keys"
    generate_keypair_files(run.keys, "central")
    generate_keypair_files(run.keys, "gate")
    run.central_cfg, run.gate_cfg = _write_configs(run.work, run.models, run.work / "feed.avi", run.pad, run.keys)
    run.ccfg = load_central_config(run.central_cfg)
    central = Central(run.ccfg.db_path)
    central.register_gate(GATE, load_public_key(run.keys / "gate.key"), [f"lane:{LANE}"])
    scope = [f"lane:{LANE}"]
    r = enrol_folder(central, run.pipeline, run.folder_of(run.cast.enrolled, "allow"), scope, "allow",
                     valid_until=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    if run.cast.deny:
        enrol_folder(central, run.pipeline, run.folder_of(run.cast.deny, "deny"), scope, "deny")
    print(f"enrolled {len(r.enrolled)} travellers, {len(run.cast.deny)} on the deny list "
          f"({len(r.rejects)} photos rejected)")
    central.close()


def phase_feed(run: DemoRun) -> None:
    """The camera feed: 3 s of empty lane first (the gate takes its first watchlist snapshot
    meanwhile) and 1.6 s between passengers, so staff can clear an alarm before the next one."""
    run.truth = write_walkup_video(run.work / "feed.avi", run.cast.passengers, fps=FPS,
                                   lead_in_frames=int(3 * FPS), gap_frames=24)
    print(f"camera feed: {len(run.cast.passengers)} passengers, {run.truth[-1].last_frame / FPS:.0f} s "
          f"at {FPS:.0f} fps")


def phase_start(run: DemoRun) -> None:
    """The central and the lane daemon as child processes; wait for the lane to be up."""
    from gate.control import ControlError, call

    py = sys.executable
    run.procs.start("central", [py, "-m", "tools.gate_central", "--config", str(run.central_cfg)], run.work,
                    run.work / "central.log")
    time.sleep(1.0)
    run.procs.start("gated", [py, "-m", "tools.gated", "--config", str(run.gate_cfg)], run.work,
                    run.work / "gated.log")
    deadline = time.monotonic() + 60
    while True:
        try:
            st = call(run.sock, "status")
            if st.get("mode") not in (None, "starting"):
                break
        except ControlError:
            pass
        if run.procs.procs["gated"].poll() is not None or time.monotonic() > deadline:
            print((run.work / "gated.log").read_text()[-3000:])
            raise RuntimeError("the lane did not start; see gated.log above")
        time.sleep(0.2)
    print(f"lane {LANE} is up ({st['mode']}, pad {st['pad']}, watchlist {st['watchlist_size']} subjects)\n")
    threading.Thread(target=_follow_events, args=(run,), daemon=True).start()


def _follow_events(run: DemoRun) -> None:
    from gate.control import ControlError, call

    try:
        for e in call(run.sock, "events", stream=True, last=1000, follow=True):  # from the lane's start
            if e.get("event") == "lane_started":
                run.view.origin = e.get("t")
            elif run.view.origin is None and isinstance(e.get("t"), (int, float)):
                run.view.origin = e["t"]
            run.events.append(e)
            line = _fmt_event(e)
            if line and isinstance(e.get("t"), (int, float)):
                run.view.add(e["t"], line)
    except (ControlError, OSError, ValueError):
        return


STAFF_REASONS = {"tailgating": "second person sent back", "deny_list": "security informed",
                 "presentation_attack": "photo attack, passenger escorted"}


def _cue_time(run: DemoRun, cue: str) -> float | None:
    """Seconds into the feed at which a scripted incident happens: just before its passenger."""
    i = run.cast.cues.get(cue)
    return None if i is None or i >= len(run.truth) else run.truth[i].first_frame / FPS - 0.5


def phase_lane(run: DemoRun) -> None:
    """Play the feed through the lane; kill and restart the central on cue; staff clear alarms."""
    from gate.control import ControlError, call
    from sync.central import Central
    from tools.enrolment import enrol_folder

    py = sys.executable
    down_at, up_at = _cue_time(run, CENTRAL_DOWN), _cue_time(run, CENTRAL_UP)
    last_reset = 0.0
    while run.procs.procs["gated"].poll() is None:
        if run.view.origin is None:
            time.sleep(0.1)
            continue
        wall = time.monotonic()
        now = wall - run.view.origin
        if run.outage[0] is None and down_at is not None and now >= down_at:
            run.procs.kill("central", signal.SIGKILL)
            run.outage[0] = now
            run.view.add(wall, "--- central service killed (kill -9): the lane keeps deciding offline ---")
        if run.outage[0] is not None and run.outage[1] is None and up_at is not None and now >= up_at:
            run.procs.start("central", [py, "-m", "tools.gate_central", "--config", str(run.central_cfg)],
                            run.work, run.work / "central.log")
            run.outage[1] = now
            run.view.add(wall, "--- central service restarted ---")
            if run.cast.late:
                c = Central(run.ccfg.db_path)
                enrol_folder(c, run.pipeline, run.folder_of(run.cast.late, "late"), [f"lane:{LANE}"], "allow")
                c.close()
                run.view.add(time.monotonic(), f"--- late traveller {next(iter(run.cast.late))} enrolled "
                                               "at the central ---")
        try:
            st = call(run.sock, "status", timeout=2)
        except ControlError:
            st = {}
        if st.get("mode") == "alarm" and now - last_reset > 1.0:
            time.sleep(0.3)  # staff look, decide
            why = next((v for k, v in STAFF_REASONS.items() if k in str(st.get("alarm"))), "checked")
            call(run.sock, "emergency-reset", operator="demo-staff-07", reason=why)
            last_reset = time.monotonic() - run.view.origin
        if now > run.truth[-1].last_frame / FPS + 60:  # the feed is long over: the lane is stuck
            run.view.add(time.monotonic(), "demo: time budget reached, stopping the lane")
            run.procs.kill("gated", signal.SIGTERM)
            break
        run.view.flush()
        time.sleep(0.2)
    time.sleep(run.view.delay_s)
    run.view.flush(everything=True)
    print("\nlane finished its feed; checking the central's copy of the audit log ...")


def phase_summary(run: DemoRun) -> None:
    run.summary, run.per_passenger = _summarise(run)


def phase_report(run: DemoRun) -> None:
    _report(run)
    print(f"\nreport: {run.work / 'report.html'}   (total {time.monotonic() - run.t_start:.0f} s)")


PHASES = (phase_prepare, phase_enrol, phase_feed, phase_start, phase_lane, phase_summary)


def run_demo(models: Path, shared: Path, out: Path, seed: int = 7) -> int:
    run = DemoRun(models=models.resolve(), shared=shared, work=out.resolve(), seed=seed)
    try:
        for phase in PHASES:
            phase(run)
    finally:
        run.procs.stop_all()
    phase_report(run)
    return 0 if run.summary["false opens"] == 0 and run.summary["audit chain at the central"] == "ok" else 1


# What the gate should do with each kind of passenger, as (outcome, reason) of the visit's decision.
EXPECTED = {"enrolled": ("allow", "match"), "late_enrolled": ("allow", "match"), "not_enrolled": ("deny", "no_match"),
            "tailgate": ("refer", "tailgating"), "deny_list": ("deny", "deny_list"),
            "photo_attack": ("refer", "presentation_attack_suspected")}
KIND_LABELS = {"enrolled": "enrolled traveller", "late_enrolled": "enrolled during the run",
               "not_enrolled": "not enrolled", "tailgate": "tailgating pair", "deny_list": "deny-list subject",
               "photo_attack": "printed-photo attack"}
OUTCOME_LABELS = {("allow", "match"): "let through", ("deny", "no_match"): "refused: no match"}


def _outcome_label(outcome: str, reason: str) -> str:
    from gate.event_text import label

    return OUTCOME_LABELS.get((outcome, reason), f"{'referred' if outcome == 'refer' else 'refused'}: {label(reason)}")


def _why(a, mine: list[dict], threshold: float, mode_before: str | None = None) -> str:
    """Why a passenger's visit ended as it did, from the visit's own audit records."""
    from gate.event_text import label, unserved_text

    decision = next((b["decision"] for b in mine if b["event"] == "decision"), None)
    if not mine and mode_before in ("alarm", "out_of_service", "emergency"):
        return f"the lane was held in {mode_before.replace('_', '-')} while they were there (nobody served)"
    retries = [b for b in mine if b["event"] == "attempt_failed"]
    lost = next((b for b in mine if b["event"] == "face_lost" and b.get("unserved")), None)
    parts = []
    if retries:
        parts.append(f"{len(retries)} retry: " + ", ".join(label(b["decision"]["reason"]) for b in retries))
    if decision is None:
        parts.append("no decision: " + (unserved_text(lost["unserved"]) if lost else "face never in the capture zone"))
    elif decision["reason"] == "no_match" and a.label in ("enrolled", "late_enrolled"):
        sc = decision.get("score")
        parts.append("model limit: best score " + (f"{sc:.3f}" if sc is not None else "n/a")
                     + f" below the threshold {threshold:.2f} (enrolment photo years apart)")
    elif decision["reason"] == "presentation_attack_suspected" and a.label != "photo_attack":
        live = (decision.get("pad") or {}).get("live")
        parts.append(f"liveness model doubted a genuine face (live {live:.2f}; stated BPCER 8 %)" if live is not None
                     else "liveness model doubted a genuine face")
    elif decision.get("score") is not None:
        parts.append(f"score {decision['score']:.3f}")
    return "; ".join(parts)


def _feed_clock(truth, bodies: list[dict], origin: float) -> tuple[float, float]:
    """(offset, rate) with lane time ≈ offset + rate × feed time. A recorded file plays a little
    slower than its frame rate on a loaded machine (decoding adds to each frame's period) and
    starts a moment after the lane, so the clock is fitted on the acceptances, whose passenger
    is known; the fit is moved 0.8 s earlier, as acceptances come ~0.5–1 s after the first face."""
    start_of = {a.subject_id: a.first_frame / FPS for a in truth if a.subject_id}
    pts = [(start_of[b["decision"]["subject_id"]], b["t"] - origin) for b in bodies
           if b.get("event") == "decision" and b["decision"]["outcome"] == "allow"
           and b["decision"].get("subject_id") in start_of]
    if len(pts) >= 2 and len({x for x, _ in pts}) >= 2:
        rate, offset = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
        if 0.8 <= rate <= 1.5:
            return float(offset) - 0.8, float(rate)
    offset = float(np.median([y - x for x, y in pts])) if pts else 0.5
    return offset - 0.8, 1.0


def _per_passenger(truth, bodies: list[dict], origin: float, threshold: float) -> list[dict]:
    """Each passenger's visit: the records from their first frame until the next passenger's,
    on the feed clock fitted by `_feed_clock`."""
    rows = []
    offset, rate = _feed_clock(truth, bodies, origin)
    starts = [offset + rate * a.first_frame / FPS for a in truth] + [float("inf")]
    for i, a in enumerate(truth):
        timed = [b for b in bodies if isinstance(b.get("t"), (int, float))]
        mine = [b for b in timed if starts[i] <= b["t"] - origin < starts[i + 1]]
        mode_before = next((b.get("to") for b in reversed(timed) if b["t"] - origin < starts[i] and b.get("to")), None)
        d = next((b["decision"] for b in mine if b["event"] == "decision"), None)
        expected = EXPECTED[a.label]
        got = None if d is None else (d["outcome"], d["reason"])
        ok = got == expected and (a.label not in ("enrolled", "late_enrolled") or d["subject_id"] == a.subject_id)
        rows.append({"passenger": a.subject_id or "(not enrolled)", "kind": KIND_LABELS[a.label],
                     "expected": _outcome_label(*expected),
                     "got": "no decision" if got is None else _outcome_label(*got),
                     "score": None if d is None else d.get("score"), "as_expected": ok,
                     "why": "" if ok else _why(a, mine, threshold, mode_before)})
    return rows


def _summarise(run: DemoRun) -> tuple[dict, list[dict]]:
    from gate.audit import AuditLog
    from sync.audit_chain import verify_chain
    from sync.central import Central

    with AuditLog(run.work / "gate-state", read_only=True) as alog:
        rows = list(alog.iter_since(0))
        chain_gate = alog.verify()
    bodies = [r.body for r in rows]
    decisions = [b["decision"] for b in bodies if b.get("event") == "decision"]
    opens = [b["opening"] for b in bodies if b.get("event") == "open"]
    allowed = set(run.cast.enrolled) | set(run.cast.late)
    auto_opens = [o for o in opens if o.get("operator_id") is None]
    false_opens = [o for o in auto_opens if o.get("subject_id") not in allowed]
    second_opens = len(auto_opens) - len({o["subject_id"] for o in auto_opens})
    deadline = time.monotonic() + 20
    central_rows, chain_c = 0, None
    while time.monotonic() < deadline:
        c = Central(run.ccfg.db_path)
        crow = list(c.audit.rows(GATE))
        c.close()
        central_rows, chain_c = len(crow), verify_chain(crow)
        if central_rows >= len(rows):
            break
        time.sleep(0.5)
    elapsed = [d["elapsed_s"] * 1000 for d in decisions if d["outcome"] == "allow"]
    origin = next((b["t"] for b in bodies if b.get("event") == "lane_started"), 0.0)
    per = _per_passenger(run.truth, bodies, origin, THRESHOLD)
    print("\n=== passengers (the decision of each visit) ===")
    for r in per:
        score = f" (score {r['score']:.3f})" if r["score"] is not None else ""
        print(f"  {'ok  ' if r['as_expected'] else 'MISS'} {r['kind']:24s} {r['passenger']:28s} expected "
              f"{r['expected']:34s} got {r['got']}{score}" + (f" — {r['why']}" if r["why"] else ""))
    genuine = [r for r in per if r["kind"] in (KIND_LABELS["enrolled"], KIND_LABELS["late_enrolled"])]
    s = {
        "passengers in the feed": len(run.cast.passengers),
        "passengers handled as expected": f"{sum(r['as_expected'] for r in per)} of {len(per)}",
        "enrolled travellers let through": f"{sum(r['as_expected'] for r in genuine)} of {len(genuine)}",
        "false opens": len(false_opens),
        "second openings for the same person": second_opens,
        "visits without a decision or a recorded reason": sum(
            1 for r in per if r["got"] == "no decision" and "no decision: " not in r["why"]),
        "retry prompts shown": sum(1 for b in bodies if b.get("event") == "attempt_failed"),
        "staff actions (audited)": sum(1 for b in bodies if b.get("event") == "manual_action"),
        "first face → acceptance, median": f"{np.median(elapsed):.0f} ms" if elapsed else "n/a",
        "central outage": (f"{run.outage[0]:.1f} s – {run.outage[1]:.1f} s into the run"
                           if run.outage[0] and run.outage[1] else "none"),
        "audit records at the gate / received by the central": f"{len(rows)} / {central_rows}",
        "audit chain at the gate": "ok" if chain_gate.ok else f"BROKEN at {chain_gate.first_broken_seq}",
        "audit chain at the central": "ok" if chain_c is not None and chain_c.ok and central_rows == len(rows) else
        f"{'ok' if chain_c and chain_c.ok else 'BROKEN'} ({central_rows}/{len(rows)} records)",
        "demo wall time": f"{time.monotonic() - run.t_start:.0f} s",
    }
    print("\n=== summary ===")
    for k, v in s.items():
        print(f"  {k:52s} {v}")
    return s, per


def _report(run: DemoRun) -> None:
    from gate.event_text import label
    from tools.demo_report import write_report
    from vision.evaluate import embed_images, read_pairs

    pairs_file = run.shared / "faces" / "lfw-dev" / "pairs.txt"
    if pairs_file.exists():
        pairs = read_pairs(pairs_file, run.shared / "faces" / "lfw-dev" / "images")
        fold1 = [p for p in pairs if p.fold == 0]
        sample = [p for p in fold1 if p.same][:150] + [p for p in fold1 if not p.same][:150]
        tpl = embed_images(run.pipeline, {p.a for p in sample} | {p.b for p in sample})
        sc = [(float(np.dot(tpl[p.a], tpl[p.b])), p.same) for p in sample
              if tpl[p.a] is not None and tpl[p.b] is not None]
        genuine = np.array([x for x, same in sc if same])
        impostor = np.array([x for x, same in sc if not same])
    else:
        genuine = impostor = np.array([])
    stage: dict[str, list[float]] = {}
    timeline = []
    t0 = run.view.origin or next((e["t"] for e in run.events if isinstance(e.get("t"), (int, float))), 0.0)
    rows = {"allow": 0, "deny": 1, "refer": 2}
    for e in run.events:
        if e.get("event") == "decision":
            for k, v in e.get("timings_ms", {}).items():
                stage.setdefault(k, []).append(v)
            d = e["decision"]
            timeline.append({"t": e["t"] - t0, "row": rows.get(d["outcome"], 2), "kind": d["outcome"],
                             "label": d.get("subject_id") or label(d["reason"])})
        if e.get("event") == "manual_action" and isinstance(e.get("t"), (int, float)):
            timeline.append({"t": e["t"] - t0, "row": 3, "kind": "manual", "label": label(e.get("action", ""))})
    out_span = (run.outage[0], run.outage[1]) if run.outage[0] and run.outage[1] else None
    write_report(run.work / "report.html", run.summary, genuine, impostor, THRESHOLD, stage, timeline, out_span,
                 run.per_passenger)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="edgegate-demo", description=__doc__)
    p.add_argument("--models", default=os.environ.get("EDGEGATE_MODEL_DIR", ".models"))
    p.add_argument("--shared", default="../shared")
    p.add_argument("--out", default="out/demo")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_demo(Path(args.models), Path(args.shared), Path(args.out))
    except KeyboardInterrupt:
        print("\ndemo interrupted; child processes stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
