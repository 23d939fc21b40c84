"""Turning whatever a camera or caller hands us into an 8-bit BGR frame a detector can use.

Every detector goes through `as_bgr8`, so the rules for odd input are the same everywhere:

* 2-D grayscale, (H, W, 1) and 4-channel BGRA frames are converted to BGR.
* 16-bit frames are taken as full-range and scaled to 8 bits (value / 257).
* Anything that is not an image (not an array, wrong rank or channel count, float or bool
  pixels, zero pixels) raises `ValueError` naming the problem; float frames are refused
  rather than guessed at, because 0..1 and 0..255 conventions are both common.
* A frame too small to hold a detectable face is valid input and yields no faces; each
  detector checks its own minimum size after conversion.

Huge frames are shrunk for detection by `shrink_to`; the detector maps its coordinates
back with the returned factor, so callers always get frame pixel coordinates.
"""
from __future__ import annotations

import cv2
import numpy as np


def as_bgr8(frame: object) -> np.ndarray:
    """A contiguous (H, W, 3) uint8 BGR view or copy of `frame`; ValueError if it is not an image."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise ValueError(f"frame is empty (shape {frame.shape})")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise ValueError(f"frame must be H x W (gray), H x W x 3 (BGR) or H x W x 4 (BGRA), got shape {frame.shape}")
    if frame.dtype == np.uint16:
        frame = (frame // 257).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"frame pixels must be uint8 or uint16, got {frame.dtype}; "
                         f"convert float images to uint8 (0..255) first")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame)


def shrink_to(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`frame` scaled down so its longer side is at most `max_side`, and the scale used (<= 1)."""
    h, w = frame.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return frame, 1.0
    scale = max_side / longest
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), scale
