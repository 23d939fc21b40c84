"""Box arithmetic shared by the detectors: non-maximum suppression and packing results.

Kept in numpy so every detector suppresses duplicates and orders faces the same way.
"""
from __future__ import annotations

import numpy as np

from vision.types import Face


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    mode "union" is the usual IoU; "min" divides the overlap by the smaller box, which
    MTCNN's last stage uses to drop a small box sitting inside a larger one.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        if mode == "min":
            denom = np.minimum(areas[i], areas[rest])
        else:
            denom = areas[i] + areas[rest] - inter
        overlap = inter / np.maximum(denom, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def to_faces(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, scale: float = 1.0) -> list[Face]:
    """Faces from (N,4) boxes, (N,) scores, (N,5,2) landmarks, sorted by box area, largest first.

    `scale` is the factor the frame was resized by before detection. Box edges scale as they
    are; landmarks are pixel centres, which sit half a pixel inside the edge at either scale.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32(scale)
    landmarks = (np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2) + 0.5) / np.float32(scale) - 0.5
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    faces = [Face(box=boxes[i].copy(), score=float(scores[i]), landmarks=landmarks[i].copy())
             for i in range(len(boxes))]
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces
