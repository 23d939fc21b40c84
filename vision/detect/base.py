"""What every detector shares: its manifest format, the registry keyed by it, and `min_face`.

A detector class names the manifest format it runs (`FORMAT`) and lives in the module of that
name (vision/detect/<format>.py); subclassing DetectorBase registers it, and `load_detector`
imports the module for a manifest's format and builds the registered class (the way Frigate
keys its detector plugins by type), so adding a format is one module, not another branch.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from models.manifest import ModelError, ModelManifest
from vision.detect.frame import DEFAULT_MIN_FACE

DETECTORS: dict[str, type[DetectorBase]] = {}  # manifest format -> class


class DetectorBase:
    FORMAT: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        DETECTORS[cls.FORMAT] = cls

    def __init__(self, manifest: ModelManifest, min_face: float = DEFAULT_MIN_FACE) -> None:
        if manifest.format != self.FORMAT:
            raise ModelError(f"model {manifest.name!r} has format {manifest.format!r}, not {self.FORMAT!r}")
        if not min_face > 0:
            raise ValueError(f"min_face must be a positive number of pixels, got {min_face}")
        self.name = manifest.name  # the model id
        self.min_face = float(min_face)

    def big_enough(self, boxes: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Mask of the (N, 4) boxes (in a frame resized by `scale`) whose longer side is at least
        `min_face` frame pixels: the same meaning for every detector. MTCNN looks for faces with
        a square window of side min_face, which a face fits by its height (and reported faces
        down to ~0.75x min_face before this filter applied to it too); SCRFD and YuNet used to
        compare the box's *width*, about 0.74 of its height, so a face of 60-90 px height was
        dropped by them at min_face 60 (`gate-bench detect`, small band: SCRFD 9/20, YuNet 10/20
        against MTCNN 20/20 on 640x480 frames; 20/20 for all with the longer side)."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        return np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= self.min_face * scale
