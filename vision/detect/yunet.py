"""YuNet face detection through OpenCV's cv2.FaceDetectorYN.

YuNet (OpenCV Zoo) is operator-provisioned. The 2023mar export has a fixed 1x3x640x640
input, so every frame is scaled to fit 640 px on its longer side, padded to a 640x640
square at the bottom/right, and the results are scaled back. OpenCV loads the model from
the verified bytes (FaceDetectorYN.create's framework/buffer overload), never from a path.

Close range needs nothing extra here, measured: unlike SCRFD (vision/detect/scrfd.py), YuNet
found every face filling 50-90 % of 640x480 and 480x640 frames (`gate-bench detect`, 100 LFW
photos per band: 100/100 each; 576-px faces in its 640x640 input among them), so it runs one pass.

cv2.FaceDetectorYN rows are [x, y, w, h, then five (x, y) landmarks, score]; its landmark
order (the subject's right eye, i.e. the image's left eye, first) already matches
LANDMARK_NAMES.

Threads: OpenCV's DNN has no per-model thread count, only the process-wide cv2.setNumThreads
that every cv2 call in the process (capture, resizing, alignment) shares, so a detector must not
set it: that is the application's choice, made once. The detector used to set it from
`threads`, and the cap bought nothing: on this project's shared 2-core machine, 120 composed
640x480 LFW frames (tools.bench_vision.compose_frames) with OpenCV's thread count switched
frame by frame in one process took 46.2 ms median with 1 thread and 47.0 ms with OpenCV's
default 2 (load average 4); separate runs before and after the change, 41.3 vs 38.9 ms.
"""
from __future__ import annotations

import cv2
import numpy as np

from models.manifest import ModelError, ModelManifest
from vision.detect.base import DetectorBase
from vision.detect.boxes import to_faces
from vision.detect.frame import DEFAULT_MIN_FACE, letterbox
from vision.image_io import to_bgr8
from vision.types import Face

INPUT_SIDE = 640


class YunetDetector(DetectorBase):
    """Faces with landmarks from a YuNet ONNX model.

    score_threshold / nms_threshold / top_k: passed to cv2.FaceDetectorYN (OpenCV Zoo's
        demo defaults).
    min_face: faces whose box's longer side is below this (frame pixels) are dropped.
    threads: accepted like every detector's and checked, but not applied: see the module
        docstring (OpenCV's thread count is process-wide).
    """

    FORMAT = "yunet"

    def __init__(self, manifest: ModelManifest, *, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 5000, min_face: float = DEFAULT_MIN_FACE, threads: int | None = None):
        super().__init__(manifest, min_face)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        model = np.frombuffer(manifest.read_verified("model"), dtype=np.uint8)
        try:
            self._net = cv2.FaceDetectorYN.create(
                "onnx", model, np.zeros(0, dtype=np.uint8), (INPUT_SIDE, INPUT_SIDE),
                float(score_threshold), float(nms_threshold), int(top_k))
        except cv2.error as e:
            raise ModelError(f"model {manifest.name!r}: OpenCV cannot load it as YuNet: {e}") from e

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in the frame, largest first. Input rules: see vision.detect."""
        image = to_bgr8(frame_bgr)
        h, w = image.shape[:2]
        if min(h, w) < self.min_face:
            return []
        square, scale = letterbox(image, INPUT_SIDE, enlarge=True, square=True)
        _, rows = self._net.detect(square)
        if rows is None or len(rows) == 0:
            return []
        rows = rows.reshape(-1, 15)
        boxes = np.concatenate([rows[:, 0:2], rows[:, 0:2] + rows[:, 2:4]], axis=1)
        big = self.big_enough(boxes, scale)
        return to_faces(boxes[big], rows[big, 14], rows[big, 4:14], scale)
