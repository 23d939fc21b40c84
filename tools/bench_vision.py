"""Per-stage speed of the vision pipeline on 640×480 frames made from real photos, side by side
with dlib's own pipeline (HOG + 5-point + ResNet descriptor) on the very same frames."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np


def compose_frames(photos: list[Path], n: int, size=(640, 480), seed: int = 0) -> list[np.ndarray]:
    """One face per frame: a photo scaled so the face is gate-sized (~150–200 px wide), placed at
    a random spot on a background cut from another photo (real texture, no second face)."""
    rng = np.random.default_rng(seed)
    w, h = size
    frames = []
    for i in range(n):
        img = cv2.imread(str(photos[i % len(photos)]))
        bg_src = cv2.imread(str(photos[(i * 7 + 3) % len(photos)]))
        bg = cv2.resize(cv2.GaussianBlur(bg_src[:60, :60], (0, 0), 3), (w, h))
        s = rng.uniform(1.3, 1.7)
        face = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        fh, fw = face.shape[:2]
        x = int(rng.integers(0, w - fw + 1))
        y = int(rng.integers(0, max(1, h - fh + 1)))
        canvas = bg.copy()
        canvas[y:y + fh, x:x + fw] = face[: h - y, : w - x]
        frames.append(canvas)
    return frames


def _stats(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v)
    return float(np.median(a)), float(np.percentile(a, 95))


def run_pipeline(pipeline, matcher, frames: list[np.ndarray], warmup: int = 5, pad=None) -> dict:
    """What the lane does per frame: detect, quality, align + embed the primary face, search
    the gallery, and (when provisioned) score the same face for presentation attacks."""
    for f in frames[:warmup]:
        r = pipeline.process(f)
        if pad is not None and r.primary is not None:
            pad.score(f, r.primary.face)
    names = ("detect", "quality", "align", "embed", "match") + (("pad",) if pad is not None else ()) + ("frame",)
    stages: dict[str, list[float]] = {k: [] for k in names}
    found = 0
    for f in frames:
        t0 = time.perf_counter()
        r = pipeline.process(f)
        tm = time.perf_counter()
        p = r.primary
        if p is not None and p.template is not None:
            matcher.search(p.template, k=5)
            found += 1
        t1 = time.perf_counter()
        if pad is not None:
            if p is not None and p.template is not None:
                pad.score(f, p.face)
            stages["pad"].append((time.perf_counter() - t1) * 1e3)
        t2 = time.perf_counter()
        for k, v in r.timings_ms.items():
            stages[k].append(v)
        stages["match"].append((t1 - tm) * 1e3)
        stages["frame"].append((t2 - t0) * 1e3)
    out = {"frames": len(frames), "faces_embedded": found}
    for k, v in stages.items():
        med, p95 = _stats(v)
        out[f"{k}_ms_median"] = med
        out[f"{k}_ms_p95"] = p95
    return out


def run_dlib_reference(frames: list[np.ndarray], warmup: int = 3) -> dict:
    """dlib's pipeline as the face_recognition package runs it: HOG (upsample 1), 5-point
    shape predictor, 150×150 chip, ResNet descriptor."""
    import dlib
    import face_recognition_models as frm

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def one(f):
        rgb = cv2.cvtColor(f, cv2.COLOR_BGR2RGB)
        dets = det(rgb, 1)
        if len(dets):
            shape = sp(rgb, dets[0])
            rec.compute_face_descriptor(rgb, shape)
        return len(dets)

    for f in frames[:warmup]:
        one(f)
    times, found = [], 0
    for f in frames:
        t0 = time.perf_counter()
        found += one(f) > 0
        times.append((time.perf_counter() - t0) * 1e3)
    med, p95 = _stats(times)
    return {"reference_frame_ms_median": med, "reference_frame_ms_p95": p95, "reference_faces_found": found}


def vision_bench(pipeline, photos: list[Path], n_frames: int = 100, gallery: int = 10_000,
                 reference: bool = True, seed: int = 0, pad=None) -> dict:
    from vision.match import Matcher

    frames = compose_frames(photos, n_frames, seed=seed)
    rng = np.random.default_rng(seed)
    d = pipeline.embedder.dim
    g = rng.standard_normal((gallery, d)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    matcher = Matcher(d, pipeline.model_id)
    for i in range(gallery):
        matcher.add(f"s{i}", g[i:i + 1])
    out = run_pipeline(pipeline, matcher, frames, pad=pad)
    out["gallery"] = gallery
    if reference:
        out.update(run_dlib_reference(frames))
        out["speedup"] = out["reference_frame_ms_median"] / out["frame_ms_median"]
    return out
