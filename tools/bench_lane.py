"""`gate-bench lane`: the real daemon on a recorded feed of passengers, timed end to end.

face-to-open = from the capture of the first frame in which an enrolled passenger's face is
visible to the moment the turnstile acknowledged the unlock. Idle CPU is the daemon's own
CPU time per wall second while the camera shows an empty lane.
"""
from __future__ import annotations

import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tools.feedgen import FRAME_H, FRAME_W, Passenger, one_face, write_walkup_video

FPS = 15.0


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


def _config(work: Path, video: Path, models: Path, threshold: float) -> dict:
    return {
        "gate": {"id": "BENCH", "state_dir": str(work / "state"), "log_level": "WARNING"},
        "camera": {"source": str(video), "fps": FPS},
        "models": {"dir": str(models), "pad_required": False, "min_face_px": 60},
        "lane": {"lane_id": "BENCH-1", "open_timeout_s": 4.0, "result_display_s": 0.7,
                 "policy": {"threshold_1n": threshold, "min_margin": 0.03, "threshold_1to1": threshold,
                            "deny_threshold": threshold}},
        "device": {"type": "sim", "auto_passage_ms": 1500},
        "watchlist": {"encrypt_templates": True},
    }


def lane_bench(models: Path, images: Path, enrolled: int = 12, strangers: int = 8, idle_s: float = 10.0,
               threshold: float = 0.92, seed: int = 3) -> dict:
    from gate.config import parse_config
    from gate.daemon import LaneDaemon
    from gate.template_crypto import TemplateCipher
    from gate.watchlist import Subject, WatchlistStore
    from vision.capture import open_source
    from vision.enrol import enrol_photos
    from vision.loading import load_pipeline
    from vision.types import Template

    rng = np.random.default_rng(seed)
    pipeline = load_pipeline(models, "mtcnn-v1", "dlib-resnet-v1", flip=True, threads=2, detector_opts={"min_face": 40})
    people = sorted(d for d in images.iterdir() if d.is_dir())
    multi = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) >= 2]
    single = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) == 1]
    pick = [d for d in multi[: enrolled * 3] if one_face(pipeline.detector, sorted(d.glob("*.jpg"))[1])][:enrolled]
    others = [d for d in single[: strangers * 3] if one_face(pipeline.detector, next(d.glob("*.jpg")))][:strangers]
    passengers = [Passenger("enrolled", str(sorted(d.glob("*.jpg"))[1]), d.name) for d in pick]
    passengers += [Passenger("not_enrolled", str(next(d.glob("*.jpg")))) for d in others]
    order = rng.permutation(len(passengers))
    passengers = [passengers[i] for i in order]
    work = Path(tempfile.mkdtemp(prefix="edgegate-lane-bench-"))
    video = work / "feed.avi"
    truth = write_walkup_video(video, passengers, fps=FPS, lead_in_frames=int(2 * FPS))
    cfg = parse_config(_config(work, video, models, threshold), work)
    cfg.gate.state_dir.mkdir(parents=True)
    cfg.template_key_file.parent.mkdir(parents=True, mode=0o700)
    store = WatchlistStore(cfg.gate.state_dir, cipher=TemplateCipher.load_or_create(cfg.template_key_file))
    for i, d in enumerate(pick, start=1):
        r = enrol_photos(pipeline, d.name, [sorted(d.glob("*.jpg"))[0]])
        if len(r.vectors):
            store.upsert_subject(Subject(d.name, "allow"), [Template(v, r.model_id) for v in r.vectors], seq=i)
    store.close()

    source = TimedSource(open_source(str(video), fps=FPS))
    daemon = LaneDaemon(cfg, pipeline=pipeline, source=source)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    t.join(600)
    sim = daemon._driver
    unlocks = [c for c in sim.commands if c.name == "unlock"]
    decisions = {u["subject_id"]: u for u in daemon.metrics.unlocks}
    daemon.close()
    alarms = len(daemon.metrics.alerts)

    enrolled_ids = {d.name for d in pick}
    face_to_open, missed = [], 0
    for a in truth:
        if a.label != "enrolled":
            continue
        # the unlock for this passenger: first unlock acknowledged after their first visible frame
        first_cap = source.read_at[a.first_frame] if a.first_frame < len(source.read_at) else None
        last_cap = source.read_at[min(a.last_frame, len(source.read_at) - 1)]
        mine = [u for u in unlocks if first_cap is not None and first_cap <= u.at <= last_cap + 1.0]
        if a.subject_id in decisions and mine:
            face_to_open.append((mine[0].at - first_cap) * 1e3)
        else:
            missed += 1
    false_opens = sum(1 for u in daemon.metrics.unlocks if u["subject_id"] not in enrolled_ids)
    # idle: an empty lane for idle_s seconds
    idle_dir = work / "idle"
    idle_dir.mkdir()
    import cv2

    cv2.imwrite(str(idle_dir / "empty.jpg"), np.full((FRAME_H, FRAME_W, 3), 110, np.uint8))
    icfg = parse_config({**_config(work / "i", video, models, threshold),
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
    f2o = np.array(face_to_open) if face_to_open else np.array([np.nan])
    return {"passengers": len(passengers), "enrolled_passengers": sum(a.label == "enrolled" for a in truth),
            "opened_for_enrolled": len(face_to_open), "enrolled_not_opened": missed,
            "face_to_open_ms_median": float(np.nanmedian(f2o)), "face_to_open_ms_p95": float(np.nanpercentile(f2o, 95)),
            "false_opens": false_opens, "alerts": alarms, "idle_cpu_percent": 100.0 * (c1 - c0) / (w1 - w0),
            "threshold_1n": threshold, "fps": FPS}
