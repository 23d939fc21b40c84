"""Face detectors: frame in, faces (box, score, 5 landmarks in LANDMARK_NAMES order) out.

`load_detector(manifest)` picks the implementation from the manifest's format (the registry in
vision.detect.base):

* "mtcnn": the default, converted by models/mtcnn.py from the MIT-licensed `mtcnn` wheel.
* "scrfd": an operator-provisioned insightface-format SCRFD model.
* "yunet": an operator-provisioned OpenCV Zoo YuNet model.

Every detector reads its model through `ModelManifest.read_verified`, so a file whose sha256
differs from the manifest is refused (ModelIntegrityError) before anything runs.

Input rules, the same for every detector: frames go through vision.image_io.to_bgr8, so
gray, BGRA, 16-bit and float frames are converted and non-images (not an array, wrong rank
or channel count, empty, NaN) raise ImageError, a ValueError. A frame smaller than the
detector's `min_face` holds no detectable face and gives an empty list; `min_face` defaults to
DEFAULT_MIN_FACE (60 px) for every detector. Frames larger than a detector's working size are
shrunk for detection (vision.detect.frame, shared by all) and coordinates mapped back.
Boxes are not clipped to the frame: a face cut by the frame edge keeps its full box, which
the quality stage can use to reject it.
"""
from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from models.manifest import ModelError, ModelManifest
from vision.detect.base import DETECTORS
from vision.detect.frame import DEFAULT_MIN_FACE
from vision.types import Face


class Detector(Protocol):
    name: str  # the model id (manifest name)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in frame pixel coordinates, sorted by box area, largest first."""
        ...


FORMATS = ("mtcnn", "scrfd", "yunet")  # each run by the class in vision/detect/<format>.py


def detector_class(fmt: str) -> type:
    """The registered class for a manifest format (its module is imported on first use)."""
    if fmt not in FORMATS:
        raise ModelError(f"detector format {fmt!r}; edgegate can run {', '.join(FORMATS)}")
    importlib.import_module(f"vision.detect.{fmt}")
    return DETECTORS[fmt]


def load_detector(manifest: ModelManifest, **opts) -> Detector:
    """The detector for `manifest`, built from its verified bytes; `opts` go to its constructor."""
    if manifest.kind != "detector":
        raise ModelError(f"model {manifest.name!r} is a {manifest.kind}, not a detector")
    try:
        cls = detector_class(manifest.format)
    except ModelError as e:
        raise ModelError(f"model {manifest.name!r}: {e}") from None
    return cls(manifest, **opts)


__all__ = ["DEFAULT_MIN_FACE", "Detector", "FORMATS", "detector_class", "load_detector"]
