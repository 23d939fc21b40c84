"""Face detectors: frame in, faces (box, score, 5 landmarks in LANDMARK_NAMES order) out.

`load_detector(manifest)` picks the implementation from the manifest's format:

* "mtcnn": the default, converted by models/mtcnn.py from the MIT-licensed `mtcnn` wheel.
* "scrfd": an operator-provisioned insightface-format SCRFD model.
* "yunet": an operator-provisioned OpenCV Zoo YuNet model.

Every detector reads its model through `ModelManifest.read_verified`, so a file whose sha256
differs from the manifest is refused (ModelIntegrityError) before anything runs.

Input rules, the same for every detector: frames go through vision.image_io.to_bgr8, so
gray, BGRA, 16-bit and float frames are converted and non-images (not an array, wrong rank
or channel count, empty, NaN) raise ImageError, a ValueError. A frame smaller than the
detector's `min_face` holds no detectable face and gives an empty list. Frames larger than
a detector's working size are shrunk for detection and coordinates mapped back.
Boxes are not clipped to the frame: a face cut by the frame edge keeps its full box, which
the quality stage can use to reject it.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from models.manifest import ModelError, ModelManifest
from vision.types import Face


class Detector(Protocol):
    name: str  # the model id (manifest name)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in frame pixel coordinates, sorted by box area, largest first."""
        ...


FORMATS = ("mtcnn", "scrfd", "yunet")


def load_detector(manifest: ModelManifest, **opts) -> Detector:
    """The detector for `manifest`, built from its verified bytes; `opts` go to its constructor."""
    if manifest.kind != "detector":
        raise ModelError(f"model {manifest.name!r} is a {manifest.kind}, not a detector")
    if manifest.format == "mtcnn":
        from vision.detect.mtcnn import MtcnnDetector
        return MtcnnDetector(manifest, **opts)
    if manifest.format == "scrfd":
        from vision.detect.scrfd import ScrfdDetector
        return ScrfdDetector(manifest, **opts)
    if manifest.format == "yunet":
        from vision.detect.yunet import YunetDetector
        return YunetDetector(manifest, **opts)
    raise ModelError(f"model {manifest.name!r} has detector format {manifest.format!r}; "
                     f"edgegate can run {', '.join(FORMATS)}")


__all__ = ["Detector", "FORMATS", "load_detector"]
