"""Quality gate before matching: a face that is too small, blurred, turned away or badly lit
gives an unreliable template, and an unreliable template is how a gate opens for the wrong
person or keeps refusing the right one. Each check has a named reason so staff and the audit
log see why a face was not used.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from vision.types import Face


@dataclass(frozen=True)
class QualityThresholds:
    min_inter_eye_px: float = 30.0  # below this the embedder sees an upscaled blur
    min_sharpness: float = 20.0  # variance of the Laplacian on a 64×64 grey face crop
    max_yaw_deg: float = 35.0
    max_pitch_deg: float = 30.0
    min_brightness: float = 40.0  # mean grey level of the face crop, 0–255
    max_brightness: float = 220.0
    max_clipped_fraction: float = 0.25  # share of face pixels at 0 or 255
    min_detector_score: float = 0.8


@dataclass(frozen=True)
class Quality:
    ok: bool
    reasons: tuple[str, ...]
    figures: dict[str, float] = field(default_factory=dict)


def estimate_pose(landmarks: np.ndarray) -> tuple[float, float]:
    """Rough yaw and pitch in degrees from the 5 landmarks.

    A head turned sideways moves the nose towards one eye; tilted up/down changes where the
    nose sits between the eye line and the mouth line. The mapping to degrees is approximate
    (a frontal face gives ~0, a 45° profile ~45°); thresholds are about rejecting clearly
    turned heads, not measuring angles precisely.
    """
    le, re, nose, ml, mr = (np.asarray(p, dtype=np.float64) for p in landmarks)
    eye_mid = (le + re) / 2
    mouth_mid = (ml + mr) / 2
    eye_vec = re - le
    iod = np.linalg.norm(eye_vec)
    if iod < 1e-6:
        return 90.0, 90.0
    ex = eye_vec / iod
    ey = np.array([-ex[1], ex[0]])
    # yaw: sideways nose offset from the eye/mouth midline, as a fraction of half the eye distance
    mid = (eye_mid + mouth_mid) / 2
    off = float(np.dot(nose - mid, ex)) / (iod / 2)
    yaw = float(np.degrees(np.arcsin(np.clip(off, -1.0, 1.0))))
    # pitch: where the nose sits along the eye→mouth axis; ~0.55 of the way for a frontal face
    em = float(np.dot(mouth_mid - eye_mid, ey))
    if abs(em) < 1e-6:
        return yaw, 90.0
    t = float(np.dot(nose - eye_mid, ey)) / em
    pitch = float(np.degrees(np.arcsin(np.clip((t - 0.55) / 0.45, -1.0, 1.0))))
    return yaw, pitch


def _face_crop_grey(frame: np.ndarray, face: Face, size: int = 64) -> np.ndarray:
    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(w, x2), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return np.zeros((size, size), np.uint8)
    crop = frame[y1:y2, x1:x2]
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)


def assess(face: Face, frame: np.ndarray, t: QualityThresholds = QualityThresholds()) -> Quality:
    reasons = []
    iod = face.inter_eye_px
    yaw, pitch = estimate_pose(face.landmarks)
    grey = _face_crop_grey(frame, face)
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    bright = float(grey.mean())
    clipped = float(((grey <= 2) | (grey >= 253)).mean())
    if face.score < t.min_detector_score:
        reasons.append("low_detector_score")
    if iod < t.min_inter_eye_px:
        reasons.append("face_too_small")
    if sharp < t.min_sharpness:
        reasons.append("blurred")
    if abs(yaw) > t.max_yaw_deg:
        reasons.append("pose_yaw")
    if abs(pitch) > t.max_pitch_deg:
        reasons.append("pose_pitch")
    if bright < t.min_brightness:
        reasons.append("too_dark")
    elif bright > t.max_brightness:
        reasons.append("too_bright")
    if clipped > t.max_clipped_fraction:
        reasons.append("exposure_clipped")
    figures = {"inter_eye_px": round(iod, 2), "sharpness": round(sharp, 2), "yaw_deg": round(yaw, 2),
               "pitch_deg": round(pitch, 2), "brightness": round(bright, 2), "clipped": round(clipped, 4),
               "detector_score": round(float(face.score), 4)}
    return Quality(ok=not reasons, reasons=tuple(reasons), figures=figures)
