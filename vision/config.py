"""The [camera] and [models] config sections, declared once for every program that runs the
face pipeline: a lane (gate.config) and an enrolment station (kiosk.config).

They are what `vision.capture.open_source` / `FrameGrabber` and `vision.loading.load_pipeline`
take, so they live beside them; a program that needs a key of its own extends a section
(the lane's camera adds `stale_after_s`, its fault timer) rather than copying it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.registry import DEFAULT_DETECTOR, DEFAULT_EMBEDDER


@dataclass(frozen=True)
class CameraSection:
    source: str = field(metadata={"help": "camera index (\"0\" = /dev/video0), rtsp:// or http:// URL, "
                                          "video file, or folder of images"})
    fps: float | None = field(default=None, metadata={"help": "frame rate to request / play files at", "min": 0.1})
    width: int | None = field(default=None, metadata={"min": 16})
    height: int | None = field(default=None, metadata={"min": 16})
    loop: bool = field(default=False, metadata={"help": "replay a file or folder forever (demos)"})
    reconnect_max_s: float = field(default=10.0, metadata={
        "help": "longest back-off between attempts to reopen a dead camera", "min": 0.1})


@dataclass(frozen=True)
class ModelsSection:
    dir: Path = field(metadata={"help": "folder with model manifests and ONNX files"})
    detector: str = field(default=DEFAULT_DETECTOR, metadata={"help": "detector model name or manifest path"})
    embedder: str = field(default=DEFAULT_EMBEDDER, metadata={"help": "embedder model name or manifest path"})
    flip: bool = field(default=True, metadata={"help": "average each template with its mirror image's "
                                                        "(more accurate, ~2× embed time)"})
    threads: int = field(default=2, metadata={"help": "ONNX Runtime threads per model", "min": 1, "max": 64})
    min_face_px: int = field(default=60, metadata={"help": "detector's smallest face (pixels)", "min": 12})
    pad: list[str] = field(default_factory=list, metadata={
        "help": "presentation-attack (liveness) model names; empty = none provisioned"})
    pad_required: bool = field(default=True, metadata={
        "help": "refuse to start when no PAD model is provisioned (false accepts the risk; a lane's PAD "
                "threshold and frames: [lane.policy.pad], a station's: [verify])"})
