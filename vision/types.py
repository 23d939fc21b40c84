"""Value types that cross the boundaries between vision stages.

Kept in one small module so detectors, aligners, embedders and the gate can agree on
shapes without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The alignment template is part of a model's description, so it lives in models/ (vision may
# import models, never the reverse); re-exported here for the stages that align.
from models.align_template import ARCFACE_112, AlignTemplate  # noqa: F401

# Landmark order used everywhere in edgegate (the ArcFace / MTCNN / SCRFD convention):
# 0 = eye on the image's left, 1 = eye on the image's right, 2 = nose tip,
# 3 = mouth corner on the image's left, 4 = mouth corner on the image's right.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face in frame pixel coordinates."""

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2) float32, order LANDMARK_NAMES

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def inter_eye_px(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


@dataclass(frozen=True)
class Template:
    """An L2-normalised face embedding tagged with the model that produced it.

    Templates from different models live in different spaces; comparing them is
    meaningless, so every template carries its model id and matchers refuse mixes.
    """

    vector: np.ndarray  # (D,) float32, unit norm
    model_id: str
