"""Face alignment: warp a face so its 5 landmarks land on the embedder's template.

Every embedder was trained on chips aligned one particular way; feeding it chips aligned any
other way costs accuracy. The template travels in the embedder's manifest, so the same code
aligns for dlib's 150×150 chip and ArcFace's 112×112 one.
"""
from __future__ import annotations

import cv2
import numpy as np

from vision.types import AlignTemplate, Face


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src→dst points.

    Umeyama's closed form: no RANSAC, because all five landmarks come from one face and an
    outlier rejection step would only make the chip jitter between frames.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = t
    return m


def align(frame: np.ndarray, face: Face, template: AlignTemplate) -> np.ndarray:
    """Return the aligned chip (template.size, same channels as frame)."""
    return align_points(frame, face.landmarks, template)


def align_points(frame: np.ndarray, landmarks: np.ndarray, template: AlignTemplate) -> np.ndarray:
    m = similarity_transform(landmarks, template.points)
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    img = frame
    # Shrinking a big face straight to a small chip aliases (the chip only samples every
    # n-th pixel). Halve the source first until the remaining shrink is at most 2×,
    # as image pyramids do, so close-up faces look like the training chips.
    while scale < 0.5 and min(img.shape[:2]) >= 4:
        img = cv2.pyrDown(img)
        m[:, :2] *= 2.0
        scale *= 2.0
    w, h = template.size
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
