"""Frame → faces → quality → aligned chip → template, with per-stage timings.

The gate only needs a template for the person in the capture zone (the largest face), so by
default only that face is aligned and embedded; the others are still detected and assessed,
because a second face close behind is how tailgating shows up.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from vision.align import align
from vision.image_io import to_bgr8
from vision.quality import Quality, QualityThresholds, assess
from vision.types import Face


@dataclass(frozen=True)
class FaceResult:
    face: Face
    quality: Quality
    template: np.ndarray | None = None  # (D,) float32 unit vector, only for embedded faces


@dataclass(frozen=True)
class FrameResult:
    faces: list[FaceResult]  # largest first
    timings_ms: dict[str, float] = field(default_factory=dict)
    model_id: str = ""

    @property
    def primary(self) -> FaceResult | None:
        return self.faces[0] if self.faces else None


class FacePipeline:
    def __init__(self, detector, embedder, thresholds: QualityThresholds | None = None):
        self.detector = detector
        self.embedder = embedder
        self.thresholds = thresholds if thresholds is not None else QualityThresholds()

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def process(self, frame: np.ndarray, embed: str = "primary", require_quality: bool = True) -> FrameResult:
        """embed: "primary" (largest face), "all", or "none".

        With require_quality, faces failing the quality gate get no template: matching a bad
        template is worse than not matching at all.
        """
        frame = to_bgr8(frame)
        t = {}
        t0 = time.perf_counter()
        faces = self.detector.detect(frame)
        t1 = time.perf_counter()
        t["detect"] = (t1 - t0) * 1e3
        quals = [assess(f, frame, self.thresholds) for f in faces]
        t2 = time.perf_counter()
        t["quality"] = (t2 - t1) * 1e3
        if embed == "none":
            idx = []
        elif embed == "all":
            idx = list(range(len(faces)))
        else:
            idx = [0] if faces else []
        if require_quality:
            idx = [i for i in idx if quals[i].ok]
        templates: dict[int, np.ndarray] = {}
        if idx:
            chips = np.stack([align(frame, faces[i], self.embedder.template) for i in idx])
            t3 = time.perf_counter()
            t["align"] = (t3 - t2) * 1e3
            vecs = self.embedder.embed(chips)
            t["embed"] = (time.perf_counter() - t3) * 1e3
            templates = {i: vecs[j] for j, i in enumerate(idx)}
        else:
            t["align"] = 0.0
            t["embed"] = 0.0
        results = [FaceResult(f, q, templates.get(i)) for i, (f, q) in enumerate(zip(faces, quals, strict=True))]
        return FrameResult(results, t, self.model_id)
