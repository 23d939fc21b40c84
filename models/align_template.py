"""Where a model wants the 5 face landmarks: the alignment template a manifest carries.

It lives in models/ (not vision/) because it is part of a model's description, next to its
input size and normalisation: the converters write it into the manifest and vision reads it
back. vision may import models; models imports nothing of vision, so the two rooms have no
import cycle. vision.types re-exports both names for the stages that align.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AlignTemplate:
    """Where the 5 landmarks must land in an aligned chip of `size` (width, height) pixels.

    Points are in vision.types.LANDMARK_NAMES order (eyes, nose tip, mouth corners).
    """

    size: tuple[int, int]
    points: np.ndarray  # (5, 2) float32 in chip pixels

    def to_dict(self) -> dict:
        return {"size": list(self.size), "points": np.asarray(self.points, dtype=float).round(4).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "AlignTemplate":
        return cls(size=(int(d["size"][0]), int(d["size"][1])), points=np.asarray(d["points"], dtype=np.float32))


# ArcFace's canonical 112x112 template (insightface `arcface_dst`), used by provisioned
# ArcFace-style embedders (MobileFaceNet, ArcFace R50/R100, ...).
ARCFACE_112 = AlignTemplate(
    size=(112, 112),
    points=np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
        dtype=np.float32,
    ),
)
