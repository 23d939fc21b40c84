"""Sizing frames for detection: the one resize/letterbox every detector uses.

Input hygiene (gray, BGRA, 16-bit, float, empty, wrong shape) is vision.image_io.to_bgr8's
job; detectors call it first. What remains here is size: an 8000x8000 still from an
enrolment camera must not make a detector build a pyramid of a quarter gigabyte, so it is
shrunk first and the detector maps its coordinates back with the returned factor; networks
with a fixed or aligned input size get the scaled frame padded at the bottom and right, so
coordinates need no offset, only the scale.
"""
from __future__ import annotations

import cv2
import numpy as np

# Smallest face (box side, frame pixels) a detector looks for unless told otherwise, the same for
# every detector and equal to the lane's `models.min_face_px` default: 60 suits a 640x480 gate
# camera (docs/models.md); crowds and far subjects need ~20, at several times MTCNN's cost.
DEFAULT_MIN_FACE = 60.0


def fit(frame: np.ndarray, max_side: int, *, enlarge: bool = False) -> tuple[np.ndarray, float]:
    """`frame` scaled so its longer side is at most `max_side` (exactly, with `enlarge`), and the
    scale used. Shrinking averages pixels (INTER_AREA, no aliasing); enlarging interpolates."""
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if not enlarge:
        scale = min(1.0, scale)
    size = (min(max_side, max(1, round(w * scale))), min(max_side, max(1, round(h * scale))))
    if size == (w, h):
        return frame, scale
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR), scale


def letterbox(frame: np.ndarray, max_side: int, *, enlarge: bool = False, multiple: int = 1,
              square: bool = False) -> tuple[np.ndarray, float]:
    """`fit`, then black padding at the bottom/right: to a `max_side` square with `square`, else to
    the next multiple of `multiple` on each side (a network's coarsest stride)."""
    image, scale = fit(frame, max_side, enlarge=enlarge)
    h, w = image.shape[:2]
    if square:
        ph = pw = max_side
    else:
        ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if (ph, pw) != (h, w):
        image = cv2.copyMakeBorder(image, 0, ph - h, 0, pw - w, cv2.BORDER_CONSTANT, value=0)
    return image, scale
