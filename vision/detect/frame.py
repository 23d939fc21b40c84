"""Shrinking huge frames for detection.

Input hygiene (gray, BGRA, 16-bit, float, empty, wrong shape) is vision.image_io.to_bgr8's
job; detectors call it first. What remains here is size: an 8000x8000 still from an
enrolment camera must not make a detector build a pyramid of a quarter gigabyte, so it is
shrunk first and the detector maps its coordinates back with the returned factor.
"""
from __future__ import annotations

import cv2
import numpy as np


def shrink_to(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`frame` scaled down so its longer side is at most `max_side`, and the scale used (<= 1)."""
    h, w = frame.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return frame, 1.0
    scale = max_side / longest
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale
