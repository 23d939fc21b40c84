"""`gate-bench lane`: the real daemon before a queue of passengers, liveness ON and OFF side by side.

One queue, one watchlist, two runs of the real `LaneDaemon` (each on a fresh state dir): first
with the MiniFASNet PAD pair provisioned (as the lane runs in the field), then without. The
camera is `tools.bench_lane_feed.LaneFeed`: passengers made from real LFW photos who walk up
from the queue line, stop (some short of the mark), sway, read the lane's display and react to
its prompts after a human reaction time, walk through an opening (the passage sensor fires
1.5 s later) or turn away from a refusal, and give up after 12 s without an answer. Each
passenger keeps the same stopping point and movements in both runs.

For genuine (enrolled) travellers it reports, from each run's own audit log:

- first-attempt pass rate: the first judgement of their visit was an acceptance;
- pass rate within the allowed attempts (`lane.attempts.max`): accepted at all during the visit;
- transaction time: face acquired in the capture zone → passage complete (includes the
  1.5 s walk-through, as a real passage would);
- throughput: passengers per minute of the queue as it ran (walk-ups, refusals and strangers
  included), and 60 s / mean transaction time (genuine travellers back to back);
- false opens: any opening during a stranger's visit or naming someone other than the traveller
  in view; and, apart, such a match that did not open only because the person it named had
  passed already (anti-passback), which another order of the queue would have opened;
- why genuine travellers failed, first attempt and final: the quality reason, a liveness doubt
  (with the live probability), a no-match (with the score), a timeout, left outside the capture
  zone, gave up; and the strangers' best scores (how close an impostor came to the threshold).

The 1:N threshold is not a number typed here: it is the shipped calibration record's 1:1
operating point at FAR 1e-3 (`config/calibration-lfw-dev-default.json`, measured on LFW with
the default models). With a bench gallery of N travellers the chance that a stranger's best
score crosses it is about N x 1e-3 before the margin rule; the strangers' best scores are
reported so the headroom shows.
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

from tools.bench_lane_feed import Behaviour, LaneFeed, SimDisplay, Traveller
from tools.feedgen import FRAME_H, FRAME_W, one_face

FPS = 15.0
PAD_NAMES = ("minifasnet-v2", "minifasnet-v1se")
CALIBRATION = Path(__file__).resolve().parent.parent / "config" / "calibration-lfw-dev-default.json"
FAR = 1e-3
# A site measures the capture zone at its painted standing position (gate.track.TrackPolicy): the
# feed's mark gives faces of ~205 px; a face below 150 px is a passenger more than ~0.68 m away.
CAPTURE_MIN_FACE_PX = 150.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


DETECTOR, EMBEDDER = "mtcnn-v1", "dlib-resnet-v1"  # the shipped models, which CALIBRATION was measured with
MIN_MARGIN = 0.03  # lane.policy.min_margin on the default embedder's score scale


def calibrated_threshold(record: Path = CALIBRATION, far: float = FAR, *, detector: str = DETECTOR,
                         embedder: str = EMBEDDER, fpir: float | None = None) -> tuple[float, str]:
    """The record's 1:1 threshold at `far` (or, with `fpir`, its 1:N point at that FPIR), and the
    line that says where it came from. A record measured with other models than `detector` +
    `embedder` is refused, as `gated --check` does."""
    from vision.calibrate import CalibrationError, load_record

    rec = load_record(record)
    if (rec.detector, rec.embedder) != (detector, embedder) or rec.models.get("flip") is not True:
        raise CalibrationError(f"calibration record {record} was measured with {rec.detector} + {rec.embedder} "
                               f"(flip {rec.models.get('flip')}); the bench runs {detector} + {embedder} with "
                               "flip: run gate-eval calibrate with these models and give that record")
    if fpir is not None:
        return _threshold_at(rec, fpir, "1:N"), rec.summary("1:N", fpir)
    return _threshold_at(rec, far), rec.summary("1:1", far)


def _threshold_at(rec, far: float, mode: str = "1:1") -> float:
    t = rec.point(mode, far).threshold  # a supported point always has one (point() refuses the others)
    assert t is not None
    return float(t)


def scaled_margin(record: Path, base: Path = CALIBRATION, base_margin: float = MIN_MARGIN) -> float:
    """`base_margin` carried from `base`'s embedder to `record`'s: a cosine lead means nothing on
    another embedder's scale (dlib's impostors sit near 0.9, MobileFaceNet's near 0), so the lead
    is kept in the same units of the impostor tail just above the operating point, the distance
    between the 1:1 thresholds at FAR 1e-3 and 1e-4 (one decade of false accepts). The default's
    0.03 is 2.1 such decades on its own record (0.9292 → 0.9437)."""
    from vision.calibrate import load_record

    def decade(path: Path) -> float:
        rec = load_record(path)
        return _threshold_at(rec, 1e-4) - _threshold_at(rec, 1e-3)

    return base_margin * decade(record) / decade(base)


def _config(work: Path, models: Path, threshold: float, pad: bool, capture_px: float = CAPTURE_MIN_FACE_PX,
            min_margin: float = MIN_MARGIN) -> dict:
    return {
        "gate": {"id": "BENCH", "state_dir": str(work / "state"), "log_level": "WARNING"},
        "camera": {"source": "bench-feed", "fps": FPS},
        "models": {"dir": str(models), "pad_required": pad, "min_face_px": 60, "pad": list(PAD_NAMES) if pad else []},
        "lane": {"lane_id": "BENCH-1",
                 "policy": {"threshold_1n": threshold, "min_margin": min_margin, "threshold_1to1": threshold,
                            "deny_threshold": threshold},
                 "tracking": {"capture_min_face_px": capture_px}},
        "device": {"type": "sim"},
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
    outcome: str = ""  # what the feed's passenger was told, or "gave_up"


def why_failed(judgement: dict | None, mine: list[dict], outcome: str = "") -> str:
    """One word (and a figure) for why an attempt did not let a genuine traveller through."""
    if judgement is None:
        lost = [b for b in mine if b["event"] in ("face_lost", "track_replaced")]
        why = next((b.get("unserved") or b.get("previous_unserved") for b in reversed(lost)), None)
        if why:
            return f"unserved: {why['why']}"
        if not any(b["event"] in ("face_acquired", "track_replaced") for b in mine):
            return "never in the capture zone"
        return "gave up waiting" if outcome == "gave_up" else "no decision"
    d = judgement["decision"]
    reason = d["reason"]
    if reason == "low_quality":
        return "low_quality: " + ", ".join((d.get("details") or {}).get("quality_reasons") or ["?"])
    if reason == "presentation_attack_suspected":
        live = d["pad"].get("live") if isinstance(d.get("pad"), dict) else None
        return f"liveness doubt (live {live:.2f})" if live is not None else "liveness doubt"
    if reason in ("no_match", "ambiguous_margin", "token_mismatch"):
        return f"{reason} (score {d['score']:.3f})" if d.get("score") is not None else reason
    if reason == "match" and d["outcome"] == "allow":
        return f"opened for {d['subject_id']}"
    return reason


def _bucket(text: str) -> str:
    return text.split(" (")[0]


def score_run(bodies: list[dict], visits: list[Visit], max_attempts: int) -> dict:
    """The genuine-traveller figures of one run, from its audit records (see the module docstring)."""
    genuine = [v for v in visits if v.label == "enrolled"]
    first_ok = within_ok = false_opens = false_matches = prompts = 0
    transaction_s: list[float] = []
    first_fail: dict[str, int] = {}
    final_fail: dict[str, int] = {}
    misses: list[dict] = []
    stranger_best: list[float] = []
    for v in visits:
        mine = [b for b in bodies if "t" in b and v.start <= b["t"] < v.end]
        judged = [b for b in mine if b["event"] in ("decision", "attempt_failed")]
        prompts += sum(b["event"] == "attempt_failed" for b in mine)
        opens = [b for b in mine if b["event"] == "open" and b["opening"].get("subject_id")]
        false_opens += sum(1 for b in opens if v.label != "enrolled" or b["opening"]["subject_id"] != v.subject_id)
        # a match of the wrong person that only anti-passback stopped (the one it named had passed already):
        # the same error as a false open, which another queue order would have opened
        false_matches += sum(1 for b in judged if b["decision"]["reason"] == "anti_passback"
                             and (v.label != "enrolled" or b["decision"]["subject_id"] != v.subject_id))
        if v.label != "enrolled":
            scores = [b["decision"]["score"] for b in judged if b["decision"].get("score") is not None]
            if scores:
                stranger_best.append(max(scores))
            continue
        allowed = [b for b in judged if b["event"] == "decision" and b["decision"]["outcome"] == "allow"
                   and b["decision"]["subject_id"] == v.subject_id]
        if judged and judged[0] in allowed:
            first_ok += 1
        else:
            k = _bucket(why_failed(judged[0] if judged else None, mine, v.outcome))
            first_fail[k] = first_fail.get(k, 0) + 1
        if allowed:
            within_ok += 1
            acquired = next((b["t"] for b in mine if b["event"] in ("face_acquired", "track_replaced")), v.start)
            passed = next((b["t"] for b in bodies if b.get("event") == "passage_complete"
                           and b["t"] >= allowed[0]["t"]), None)
            if passed is not None:
                transaction_s.append(passed - acquired)
        else:
            whys = [why_failed(j, mine) for j in judged] or [why_failed(None, mine, v.outcome)]
            final_fail[_bucket(whys[-1])] = final_fail.get(_bucket(whys[-1]), 0) + 1
            misses.append({"subject_id": v.subject_id, "attempts": whys, "passenger": v.outcome})
    n = max(1, len(genuine))
    tx = np.array(transaction_s)
    span = (visits[-1].end - visits[0].start) if visits else 0.0
    return {"genuine": len(genuine), "first_attempt_pass_rate": first_ok / n,
            "pass_rate_within_attempts": within_ok / n, "max_attempts": max_attempts,
            "transaction_s_median": float(np.median(tx)) if len(tx) else float("nan"),
            "transaction_s_p95": float(np.percentile(tx, 95)) if len(tx) else float("nan"),
            "throughput_per_min": float(60.0 / np.mean(tx)) if len(tx) else 0.0,
            "queue_per_min": 60.0 * len(visits) / span if span > 0 else 0.0,
            "false_opens": false_opens, "false_matches_stopped_by_passback": false_matches,
            "retry_prompts": prompts, "unserved": unserved_reasons(bodies),
            "first_attempt_failures": first_fail, "final_failures": final_fail, "misses": misses,
            "stranger_best_score": max(stranger_best) if stranger_best else None}


@dataclass
class LaneRun:
    """What one run left behind: the audit records, the feed's ground truth, the unlocks."""

    bodies: list[dict]
    feed_visits: list  # tools.bench_lane_feed.Visit, in queue order
    unlock_times: list[float]  # when the turnstile acknowledged each unlock (time.monotonic)

    def visits(self) -> list[Visit]:
        """Each passenger's window runs until the next one's first frame: windows never overlap."""
        seen = [v for v in self.feed_visits if v.first_frame >= 0]
        out = []
        for i, v in enumerate(seen):
            end = seen[i + 1].first_t if i + 1 < len(seen) else v.last_t + 1.0
            out.append(Visit(v.label, v.subject_id, v.first_t, end, v.outcome))
        return out


def run_lane(cfg, pipeline, travellers: list[Traveller], behaviour: Behaviour | None = None, seed: int = 0,
             progress: Callable[[str], None] = lambda _: None, what: str = "lane", *,
             lead_in_s: float = 2.0) -> LaneRun:
    """The real daemon on `cfg` before `travellers` (a LaneFeed on the simulated turnstile's
    display), until the queue is through; the audit log is read back afterwards."""
    from devices.config import SimConfig
    from devices.sim import SimDriver
    from gate.audit import AuditLog
    from gate.daemon import LaneDaemon

    driver = SimDriver(SimConfig())  # the passage sensor fires when the feed's passenger walks through
    feed = LaneFeed(travellers, SimDisplay(driver), fps=FPS, behaviour=behaviour, seed=seed, lead_in_s=lead_in_s,
                    passage=lambda after_s: driver.emit_passage(after_ms=after_s * 1000))
    daemon = LaneDaemon(cfg, pipeline=pipeline, source=feed, driver=driver)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(5.0)
            gone = sum(1 for v in feed.visits if v.outcome)
            progress(f"{what}: {gone}/{len(travellers)} passengers served or gone, "
                     f"{len(daemon.metrics.unlocks)} openings")
            if feed.done and t.is_alive():
                t.join(15.0)
                break
    finally:
        if t.is_alive():
            daemon.stop_requested.set()
            t.join(15.0)
        unlocks = [c.at for c in driver.commands if c.name == "unlock"]
        daemon.close()
    with AuditLog(cfg.gate.state_dir, read_only=True) as log:
        bodies = [r.body for r in log.iter_since(0)]
    return LaneRun(bodies, list(feed.visits), unlocks)


def _score_lane(run: LaneRun, max_attempts: int) -> dict:
    visits = run.visits()
    r = score_run(run.bodies, visits, max_attempts)
    f2o = []
    for v in visits:
        if v.label == "enrolled":
            acquired = next((b["t"] for b in run.bodies if b.get("event") in ("face_acquired", "track_replaced")
                             and v.start <= b["t"] < v.end), None)
            mine = [u for u in run.unlock_times if v.start <= u < v.end]
            if mine and acquired is not None:
                f2o.append((mine[0] - acquired) * 1e3)
    f2o_a = np.array(f2o) if f2o else np.array([np.nan])
    seen = run.feed_visits
    r.update(face_to_open_ms_median=float(np.nanmedian(f2o_a)), face_to_open_ms_p95=float(np.nanpercentile(f2o_a, 95)),
             stopped_short=sum(v.stopped_short for v in seen), gave_up=sum(v.outcome == "gave_up" for v in seen),
             takes_shown=sum(v.takes_shown for v in seen))
    return r


def _idle_cpu(work: Path, models: Path, pipeline, threshold: float, idle_s: float) -> float:
    import cv2

    from gate.config import parse_config
    from gate.daemon import LaneDaemon

    idle_dir = work / "idle"
    idle_dir.mkdir()
    cv2.imwrite(str(idle_dir / "empty.jpg"), np.full((FRAME_H, FRAME_W, 3), 110, np.uint8))
    icfg = parse_config({**_config(work / "i", models, threshold, pad=False),
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


def choose_travellers(pipeline, images: Path, enrolled: int, strangers: int, takes: int, seed: int
                      ) -> tuple[list[Traveller], dict[str, Path]]:
    """Enrolled travellers (enrolment photo = their first; the feed shows their others) and
    strangers (anyone else, with their own photos), shuffled into one queue. Only photos with
    one face: a bystander in a photo would be a second person at the gate (tailgating).

    With `takes` > 1 every passenger has at least two photos to show, so that each can look
    at the camera again when prompted (people with one other photo could only repeat it; the
    first benchmark runs on this feed lost 4 of 11 travellers that way, each failing twice on
    the same photo); `takes` = 1 keeps everyone with one photo to show, the conservative bound."""
    rng = np.random.default_rng(seed)
    people = sorted(d for d in images.iterdir() if d.is_dir())
    order = [people[i] for i in rng.permutation(len(people))]
    need = min(2, takes)

    def single(photos):
        return [str(p) for p in photos if one_face(pipeline.detector, p)][:takes]

    queue: list[Traveller] = []
    enrolment: dict[str, Path] = {}
    rest = []
    for d in order:
        photos = sorted(d.glob("*.jpg"))
        if len(enrolment) < enrolled and len(photos) >= 1 + need:
            shown = single(photos[1:1 + 2 * takes])
            if len(shown) >= need:
                enrolment[d.name] = photos[0]
                queue.append(Traveller("enrolled", tuple(shown), d.name))
                continue
        if len(photos) >= need:
            rest.append(d)
        if len(enrolment) >= enrolled and len(rest) >= 3 * strangers:
            break
    n_strangers = 0
    for d in rest:
        if n_strangers >= strangers:
            break
        shown = single(sorted(d.glob("*.jpg"))[: 2 * takes])
        if len(shown) >= need:
            queue.append(Traveller("not_enrolled", tuple(shown)))
            n_strangers += 1
    return [queue[i] for i in rng.permutation(len(queue))], enrolment


def lane_bench(models: Path, images: Path, pad_from: Path, enrolled: int = 30, strangers: int = 10,
               idle_s: float = 10.0, threshold: float | None = None, seed: int = 3, takes: int = 3,
               behaviour: Behaviour | None = None, capture_px: float = CAPTURE_MIN_FACE_PX,
               progress: Callable[[str], None] = _stderr, *, detector: str = DETECTOR, embedder: str = EMBEDDER,
               calibration: Path = CALIBRATION, min_detector_score: float | None = None,
               fpir: float | None = None) -> dict:
    """Both runs; `pad_from` is the folder holding the MiniFASNet pair (e.g. ../shared/models).
    `threshold` None = the calibration record's 1:1 operating point at FAR 1e-3. Other models
    than the shipped ones (`detector`, `embedder`: names in `models`, e.g. operator-provisioned
    SCRFD + MobileFaceNet) need their own `calibration` record, from which the threshold and the
    margin (`scaled_margin`) are taken; `min_detector_score` (quality.min_detector_score, None =
    the default 0.8) is on the detector's own confidence scale, which differs between detectors
    (MTCNN's lowest on 800 LFW faces 0.821, SCRFD-500M's 0.675: 0.8 refuses 21 % of LFW faces
    with SCRFD and none with MTCNN)."""
    from gate.config import parse_config
    from gate.watchlist import Subject, WatchlistStore
    from models.provision import provision_minifasnet_pair
    from sync.template_crypto import TemplateCipher
    from vision.enrol import enrol_photos
    from vision.loading import load_pipeline
    from vision.quality import QualityThresholds
    from vision.types import Template

    behaviour = behaviour or Behaviour()
    source = "given"
    if threshold is None:
        threshold, source = calibrated_threshold(calibration, detector=detector, embedder=embedder, fpir=fpir)
    min_margin = MIN_MARGIN if Path(calibration) == CALIBRATION else scaled_margin(Path(calibration))
    progress("loading models and choosing passengers")
    quality = QualityThresholds() if min_detector_score is None else QualityThresholds(
        min_detector_score=min_detector_score)
    pipeline = load_pipeline(models, detector, embedder, flip=True, threads=2, thresholds=quality,
                             detector_opts={"min_face": 40})
    # the queue does not depend on the lane's models: its photos are chosen with the default detector
    chooser = pipeline if detector == DETECTOR else load_pipeline(models, DETECTOR, EMBEDDER,
                                                                  detector_opts={"min_face": 40})
    travellers, enrol_from = choose_travellers(chooser, images, enrolled, strangers, takes, seed)
    work = Path(tempfile.mkdtemp(prefix="edgegate-lane-bench-"))
    pad_models = work / "models"
    pad_models.mkdir()
    provision_minifasnet_pair(Path(pad_from), pad_models)
    enrolments = []
    for sid, photo in enrol_from.items():
        r = enrol_photos(pipeline, sid, [photo])
        if len(r.vectors):
            enrolments.append((sid, [Template(v, r.model_id) for v in r.vectors]))
    enrolled_ids = {sid for sid, _ in enrolments}
    travellers = [t if t.subject_id is None or t.subject_id in enrolled_ids else
                  Traveller("not_enrolled", t.takes) for t in travellers]

    runs, visits = {}, {}
    for name, pad in (("liveness_on", True), ("liveness_off", False)):
        run_dir = work / name
        run_dir.mkdir()
        cfg = parse_config(_config(run_dir, pad_models, threshold, pad, capture_px, min_margin), run_dir)
        cfg.gate.state_dir.mkdir(parents=True)
        cfg.template_key_file.parent.mkdir(parents=True, mode=0o700)
        store = WatchlistStore(cfg.gate.state_dir, cipher=TemplateCipher.load_or_create(cfg.template_key_file))
        for i, (sid, templates) in enumerate(enrolments, start=1):
            store.upsert_subject(Subject(sid, "allow"), templates, seq=i)
        store.close()
        run = run_lane(cfg, pipeline, travellers, behaviour, seed, progress, name.replace("_", " "))
        runs[name] = _score_lane(run, cfg.lane.attempts.max)
        visits[name] = [v.to_record() for v in run.feed_visits]
    progress(f"measuring idle CPU for {idle_s:g} s")
    idle = _idle_cpu(work, pad_models, pipeline, threshold, idle_s)
    return {"runs": runs, "visits": visits, "passengers": len(travellers),
            "enrolled_passengers": sum(t.label == "enrolled" for t in travellers),
            "strangers": sum(t.label != "enrolled" for t in travellers), "idle_cpu_percent": idle,
            "threshold_1n": threshold, "threshold_source": source, "min_margin": min_margin,
            "detector": detector, "embedder": embedder, "min_detector_score": quality.min_detector_score,
            "fps": FPS, "takes": takes,
            "capture_min_face_px": capture_px, "work_dir": str(work)}


ROWS = (
    ("first-attempt pass rate (genuine)", "first_attempt_pass_rate", "pct"),
    ("pass rate within allowed attempts", "pass_rate_within_attempts", "pct"),
    ("transaction time median, face acquired → passage complete", "transaction_s_median", "s"),
    ("transaction time p95", "transaction_s_p95", "s"),
    ("throughput, the queue as it ran (passengers/min/lane)", "queue_per_min", "f1"),
    ("throughput, 60 s / mean transaction (genuine back to back)", "throughput_per_min", "f1"),
    ("false opens", "false_opens", "int"),
    ("wrong person matched, stopped only by anti-passback", "false_matches_stopped_by_passback", "int"),
    ("retry prompts shown", "retry_prompts", "int"),
    ("face acquired → unlock acknowledged, median", "face_to_open_ms_median", "ms"),
    ("strangers' best fused score (threshold above)", "stranger_best_score", "f3"),
)


def format_table(r: dict) -> str:
    on, off = r["runs"]["liveness_on"], r["runs"]["liveness_off"]

    def cell(v, kind):
        if v is None:
            return "n/a"
        if kind == "pct":
            return f"{100 * v:.1f} %"
        if kind == "s":
            return "n/a" if v != v else f"{v:.2f} s"
        if kind == "ms":
            return "n/a" if v != v else f"{v:.0f} ms"
        if kind == "f1":
            return f"{v:.1f}"
        if kind == "f3":
            return f"{v:.3f}"
        return str(v)

    w = max(len(label) for label, _, _ in ROWS)
    lines = [f"{r['passengers']} passengers ({r['enrolled_passengers']} enrolled, {r['strangers']} strangers) "
             f"walking up to a {r['fps']:g} fps camera, up to {r['takes']} photos each; attempts allowed "
             f"{on['max_attempts']}; capture zone from {r['capture_min_face_px']:g} px",
             f"models {r.get('detector', DETECTOR)} + {r.get('embedder', EMBEDDER)}; threshold_1n "
             f"{r['threshold_1n']:.4f}: {r['threshold_source']}; min_margin {r.get('min_margin', MIN_MARGIN):.4f}; "
             f"quality.min_detector_score {r.get('min_detector_score', 0.8):g}",
             f"{'':{w}}  {'liveness ON':>12}  {'liveness OFF':>12}"]
    for label, key, kind in ROWS:
        lines.append(f"{label:{w}}  {cell(on.get(key), kind):>12}  {cell(off.get(key), kind):>12}")
    for name, run in (("ON", on), ("OFF", off)):
        for title, key in (("first attempts that failed", "first_attempt_failures"),
                           ("genuine travellers not let through", "final_failures"),
                           ("attempts ended without a decision", "unserved")):
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(run[key].items())) or "none"
            lines.append(f"liveness {name}, {title}: {reasons}")
        for m in run["misses"]:
            lines.append(f"  {m['subject_id']}: " + " → ".join(m["attempts"]))
        lines.append(f"liveness {name}, passengers: {run['stopped_short']} stopped short, {run['gave_up']} gave up, "
                     f"{run['takes_shown']} looks at the camera in all")
    lines.append(f"idle CPU (empty lane, liveness off): {r['idle_cpu_percent']:.1f} % of a core")
    return "\n".join(lines)
