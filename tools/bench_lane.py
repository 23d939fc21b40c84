"""`gate-bench lane`: the real daemon on a recorded feed of passengers, liveness ON and OFF side by side.

One feed, one watchlist, two runs of the real `LaneDaemon` (each on a fresh state dir): first
with the MiniFASNet PAD pair provisioned (as the lane runs in the field), then without. For
genuine (enrolled) travellers it reports, from each run's own audit log:

- first-attempt pass rate: the first judgement of their visit was an acceptance;
- pass rate within the allowed attempts (`lane.attempts.max`): accepted at all during the visit;
- transaction time: first face acquired → passage complete (this includes the simulated
  turnstile's walk-through, `auto_passage_ms` = 1.5 s, as a real passage would);
- throughput: 60 s / mean transaction time, the passengers per minute one lane serves when they
  queue back to back;
- false opens: any opening during a stranger's visit or naming someone other than the traveller
  in view;
and counts the reasons of attempts that ended without a decision and the retry prompts shown.
Face-to-open (first frame captured → unlock acknowledged) and idle CPU are kept from the earlier
bench. The feed's passengers stay in view ~2.9 s (a hurried passenger who does not react to
prompts: a retry only gets fresh frames of the same photo).
"""
from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tools.feedgen import FRAME_H, FRAME_W, Passenger, one_face, write_walkup_video

FPS = 15.0
DWELL_FRAMES = 30  # frames a passenger stands at the gate after walking up (2 s at 15 fps)
PAD_NAMES = ("minifasnet-v2", "minifasnet-v1se")


class TimedSource:
    """Wraps a frame source and remembers when each frame was read (the capture time)."""

    def __init__(self, inner):
        self.inner = inner
        self.description = inner.description
        self.read_at: list[float] = []

    def open(self) -> None:
        self.inner.open()

    def read(self):
        img = self.inner.read()
        if img is not None:
            self.read_at.append(time.monotonic())
        return img

    def close(self) -> None:
        self.inner.close()


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _config(work: Path, video: Path, models: Path, threshold: float, pad: bool) -> dict:
    return {
        "gate": {"id": "BENCH", "state_dir": str(work / "state"), "log_level": "WARNING"},
        "camera": {"source": str(video), "fps": FPS},
        "models": {"dir": str(models), "pad_required": pad, "min_face_px": 60, "pad": list(PAD_NAMES) if pad else []},
        "lane": {"lane_id": "BENCH-1", "open_timeout_s": 4.0, "result_display_s": 0.7,
                 "policy": {"threshold_1n": threshold, "min_margin": 0.03, "threshold_1to1": threshold,
                            "deny_threshold": threshold}},
        "device": {"type": "sim", "auto_passage_ms": 1500},
        "watchlist": {"encrypt_templates": True},
    }


def unserved_reasons(bodies: list[dict]) -> dict[str, int]:
    """How many attempts ended without a decision, by the reason their audit record gives."""
    counts: dict[str, int] = {}
    for b in bodies:
        why = (b.get("unserved") if b.get("event") == "face_lost" else
               b.get("previous_unserved") if b.get("event") == "track_replaced" else None)
        if why:
            counts[why["why"]] = counts.get(why["why"], 0) + 1
    return counts


@dataclass
class Visit:
    """One passenger of the feed, with the lane-clock window in which they were in view."""

    label: str
    subject_id: str | None
    start: float  # capture time of their first frame
    end: float  # capture time of the next passenger's first frame


def score_run(bodies: list[dict], visits: list[Visit], max_attempts: int) -> dict:
    """The genuine-traveller figures of one run, from its audit records (see the module docstring)."""
    genuine = [v for v in visits if v.label == "enrolled"]
    first_ok = within_ok = false_opens = prompts = 0
    transaction_s: list[float] = []
    for v in visits:
        mine = [b for b in bodies if "t" in b and v.start <= b["t"] < v.end]
        judged = [b for b in mine if b["event"] in ("decision", "attempt_failed")]
        prompts += sum(b["event"] == "attempt_failed" for b in mine)
        opens = [b for b in mine if b["event"] == "open" and b["opening"].get("subject_id")]
        false_opens += sum(1 for b in opens if v.label != "enrolled" or b["opening"]["subject_id"] != v.subject_id)
        if v.label != "enrolled":
            continue
        allowed = [b for b in judged if b["event"] == "decision" and b["decision"]["outcome"] == "allow"
                   and b["decision"]["subject_id"] == v.subject_id]
        if judged and judged[0] in allowed:
            first_ok += 1
        if allowed:
            within_ok += 1
            acquired = next((b["t"] for b in mine if b["event"] in ("face_acquired", "track_replaced")), v.start)
            passed = next((b["t"] for b in bodies if b.get("event") == "passage_complete"
                           and b["t"] >= allowed[0]["t"]), None)
            if passed is not None:
                transaction_s.append(passed - acquired)
    n = max(1, len(genuine))
    tx = np.array(transaction_s) if transaction_s else np.array([np.nan])
    return {"genuine": len(genuine), "first_attempt_pass_rate": first_ok / n,
            "pass_rate_within_attempts": within_ok / n, "max_attempts": max_attempts,
            "transaction_s_median": float(np.nanmedian(tx)), "transaction_s_p95": float(np.nanpercentile(tx, 95)),
            "throughput_per_min": float(60.0 / np.nanmean(tx)) if transaction_s else 0.0,
            "false_opens": false_opens, "retry_prompts": prompts, "unserved": unserved_reasons(bodies)}


def _run_lane(cfg, pipeline, video: Path, truth, progress: Callable[[str], None], what: str) -> tuple[dict, dict]:
    from gate.audit import AuditLog
    from gate.daemon import LaneDaemon
    from vision.capture import open_source

    source = TimedSource(open_source(str(video), fps=FPS))
    daemon = LaneDaemon(cfg, pipeline=pipeline, source=source)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    total = truth[-1].last_frame + 1
    while t.is_alive():
        t.join(5.0)
        passed = sum(1 for a in truth if a.last_frame < len(source.read_at))
        progress(f"{what}: {passed}/{len(truth)} passengers through the feed, "
                 f"{len(daemon.metrics.unlocks)} openings")
        if len(source.read_at) >= total and t.is_alive():
            t.join(15.0)
            break
    unlocks = [c for c in daemon._driver.commands if c.name == "unlock"]
    daemon.close()
    with AuditLog(cfg.gate.state_dir, read_only=True) as log:
        bodies = [r.body for r in log.iter_since(0)]
    seen = [a for a in truth if a.first_frame < len(source.read_at)]
    starts = [source.read_at[a.first_frame] for a in seen]
    visits = []  # each visit runs until the next passenger's first frame: windows never overlap
    for i, a in enumerate(seen):
        end = starts[i + 1] if i + 1 < len(seen) else \
            source.read_at[min(a.last_frame, len(source.read_at) - 1)] + cfg.lane.open_timeout_s
        visits.append(Visit(a.label, a.subject_id, starts[i], end))
    r = score_run(bodies, visits, cfg.lane.attempts.max)
    f2o = []
    for v in visits:
        if v.label == "enrolled":
            mine = [u for u in unlocks if v.start <= u.at < v.end]
            if mine:
                f2o.append((mine[0].at - v.start) * 1e3)
    f2o_a = np.array(f2o) if f2o else np.array([np.nan])
    r.update(face_to_open_ms_median=float(np.nanmedian(f2o_a)), face_to_open_ms_p95=float(np.nanpercentile(f2o_a, 95)))
    return r, {"unlocks": len(unlocks)}


def _idle_cpu(work: Path, video: Path, models: Path, pipeline, threshold: float, idle_s: float) -> float:
    import cv2

    from gate.config import parse_config
    from gate.daemon import LaneDaemon

    idle_dir = work / "idle"
    idle_dir.mkdir()
    cv2.imwrite(str(idle_dir / "empty.jpg"), np.full((FRAME_H, FRAME_W, 3), 110, np.uint8))
    icfg = parse_config({**_config(work / "i", video, models, threshold, pad=False),
                         "camera": {"source": str(idle_dir), "fps": FPS, "loop": True}}, work)
    idle = LaneDaemon(icfg, pipeline=pipeline)
    idle.open()
    t = threading.Thread(target=idle.run, daemon=True)
    t.start()
    time.sleep(1.0)
    c0, w0 = _cpu_s(), time.monotonic()
    time.sleep(idle_s)
    c1, w1 = _cpu_s(), time.monotonic()
    idle.stop_requested.set()
    t.join(10)
    idle.close()
    return 100.0 * (c1 - c0) / (w1 - w0)


def _stderr(msg: str) -> None:
    print(f"gate-bench lane: {msg}", file=sys.stderr, flush=True)


def lane_bench(models: Path, images: Path, pad_from: Path, enrolled: int = 12, strangers: int = 8,
               idle_s: float = 10.0, threshold: float = 0.92, seed: int = 3,
               progress: Callable[[str], None] = _stderr) -> dict:
    """Both runs; `pad_from` is the folder holding the MiniFASNet pair (e.g. ../shared/models)."""
    from gate.config import parse_config
    from gate.watchlist import Subject, WatchlistStore
    from models.provision import provision_minifasnet_pair
    from sync.template_crypto import TemplateCipher
    from vision.enrol import enrol_photos
    from vision.loading import load_pipeline
    from vision.types import Template

    rng = np.random.default_rng(seed)
    progress("loading models and choosing passengers")
    pipeline = load_pipeline(models, "mtcnn-v1", "dlib-resnet-v1", flip=True, threads=2, detector_opts={"min_face": 40})
    people = sorted(d for d in images.iterdir() if d.is_dir())
    multi = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) >= 2]
    single = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) == 1]
    pick = [d for d in multi[: enrolled * 3] if one_face(pipeline.detector, sorted(d.glob("*.jpg"))[1])][:enrolled]
    others = [d for d in single[: strangers * 3] if one_face(pipeline.detector, next(d.glob("*.jpg")))][:strangers]
    passengers = [Passenger("enrolled", str(sorted(d.glob("*.jpg"))[1]), d.name) for d in pick]
    passengers += [Passenger("not_enrolled", str(next(d.glob("*.jpg")))) for d in others]
    passengers = [passengers[i] for i in rng.permutation(len(passengers))]
    work = Path(tempfile.mkdtemp(prefix="edgegate-lane-bench-"))
    video = work / "feed.avi"
    truth = write_walkup_video(video, passengers, fps=FPS, lead_in_frames=int(2 * FPS), dwell_frames=DWELL_FRAMES)
    pad_models = work / "models"
    pad_models.mkdir()
    provision_minifasnet_pair(Path(pad_from), pad_models)
    enrolments = []
    for d in pick:
        r = enrol_photos(pipeline, d.name, [sorted(d.glob("*.jpg"))[0]])
        if len(r.vectors):
            enrolments.append((d.name, [Template(v, r.model_id) for v in r.vectors]))

    runs = {}
    for name, pad in (("liveness_on", True), ("liveness_off", False)):
        run_dir = work / name
        run_dir.mkdir()
        cfg = parse_config(_config(run_dir, video, pad_models, threshold, pad), run_dir)
        cfg.gate.state_dir.mkdir(parents=True)
        cfg.template_key_file.parent.mkdir(parents=True, mode=0o700)
        store = WatchlistStore(cfg.gate.state_dir, cipher=TemplateCipher.load_or_create(cfg.template_key_file))
        for i, (sid, templates) in enumerate(enrolments, start=1):
            store.upsert_subject(Subject(sid, "allow"), templates, seq=i)
        store.close()
        runs[name], _ = _run_lane(cfg, pipeline, video, truth, progress, name.replace("_", " "))
    progress(f"measuring idle CPU for {idle_s:g} s")
    idle = _idle_cpu(work, video, pad_models, pipeline, threshold, idle_s)
    return {"runs": runs, "passengers": len(passengers), "enrolled_passengers": len(pick),
            "strangers": len(others), "idle_cpu_percent": idle, "threshold_1n": threshold, "fps": FPS,
            "in_view_s": round((14 + DWELL_FRAMES) / FPS, 1)}


ROWS = (
    ("first-attempt pass rate (genuine)", "first_attempt_pass_rate", "pct"),
    ("pass rate within allowed attempts", "pass_rate_within_attempts", "pct"),
    ("transaction time median, first face → passage complete", "transaction_s_median", "s"),
    ("transaction time p95", "transaction_s_p95", "s"),
    ("throughput, back-to-back queue (passengers/min/lane)", "throughput_per_min", "f1"),
    ("false opens", "false_opens", "int"),
    ("retry prompts shown", "retry_prompts", "int"),
    ("face-to-open median (frame captured → unlock acked)", "face_to_open_ms_median", "ms"),
)


def format_table(r: dict) -> str:
    on, off = r["runs"]["liveness_on"], r["runs"]["liveness_off"]

    def cell(v, kind):
        if kind == "pct":
            return f"{100 * v:.1f} %"
        if kind == "s":
            return "n/a" if v != v else f"{v:.2f} s"
        if kind == "ms":
            return "n/a" if v != v else f"{v:.0f} ms"
        if kind == "f1":
            return f"{v:.1f}"
        return str(v)

    w = max(len(label) for label, _, _ in ROWS)
    lines = [f"{r['passengers']} passengers ({r['enrolled_passengers']} enrolled, {r['strangers']} strangers), "
             f"{r['fps']:g} fps feed, each in view {r['in_view_s']} s; threshold {r['threshold_1n']}; "
             f"attempts allowed {on['max_attempts']}",
             f"{'':{w}}  {'liveness ON':>12}  {'liveness OFF':>12}"]
    for label, key, kind in ROWS:
        lines.append(f"{label:{w}}  {cell(on[key], kind):>12}  {cell(off[key], kind):>12}")
    for name, run in (("ON", on), ("OFF", off)):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(run["unserved"].items())) or "none"
        lines.append(f"attempts ended without a decision (liveness {name}): {reasons}")
    lines.append(f"idle CPU (empty lane, liveness off): {r['idle_cpu_percent']:.1f} % of a core")
    return "\n".join(lines)
