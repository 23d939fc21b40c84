"""A camera feed of passengers walking up to the gate, made from real face photos.

The demo and `gate-bench lane` need a camera that shows what a real lane sees — nobody, then a
face that grows as the person approaches, stays a moment, and leaves; sometimes two people
close together — and they need to know the ground truth (who, from which frame) to score the
gate. This writes such a feed as an ordinary video file, so the daemon reads it through the
same capture path as a real camera recording.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

FRAME_W, FRAME_H = 640, 480


@dataclass(frozen=True)
class Passenger:
    label: str  # e.g. "enrolled", "not_enrolled", "tailgate", "deny_list"
    photo: str  # path of the person's photo
    subject_id: str | None = None  # who they really are, when enrolled (ground truth)
    follower_photo: str | None = None  # a second person close behind (tailgating)


@dataclass
class Appearance:
    label: str
    subject_id: str | None
    first_frame: int  # first frame where the face is visible
    last_frame: int
    tailgate: bool = False
    extra: dict = field(default_factory=dict)


def _background(seed: int) -> np.ndarray:
    """A faceless concourse: soft gradient plus low-contrast texture, fixed per seed."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, FRAME_H)[:, None, None]
    x = np.linspace(0, 1, FRAME_W)[None, :, None]
    base = 90 + 60 * y + 30 * x * np.array([1.0, 0.8, 0.6])
    noise = cv2.GaussianBlur(rng.normal(0, 12, (FRAME_H, FRAME_W, 3)), (0, 0), 4)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _head(photo: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The photo's central head region scaled to `width`, with a soft oval alpha mask."""
    h0, w0 = photo.shape[:2]
    crop = photo[int(h0 * 0.12): int(h0 * 0.92), int(w0 * 0.18): int(w0 * 0.82)]
    s = width / crop.shape[1]
    img = cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    hh, ww = img.shape[:2]
    mask = np.zeros((hh, ww), np.float32)
    cv2.ellipse(mask, (ww // 2, hh // 2), (int(ww * 0.48), int(hh * 0.49)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, ww * 0.03))
    return img, mask[:, :, None]


def _paste(canvas: np.ndarray, img: np.ndarray, mask: np.ndarray, cx: int, cy: int) -> None:
    hh, ww = img.shape[:2]
    x0, y0 = cx - ww // 2, cy - hh // 2
    x1, y1 = max(0, x0), max(0, y0)
    x2, y2 = min(FRAME_W, x0 + ww), min(FRAME_H, y0 + hh)
    if x2 <= x1 or y2 <= y1:
        return
    sub = canvas[y1:y2, x1:x2].astype(np.float32)
    im = img[y1 - y0: y2 - y0, x1 - x0: x2 - x0].astype(np.float32)
    m = mask[y1 - y0: y2 - y0, x1 - x0: x2 - x0]
    canvas[y1:y2, x1:x2] = (sub * (1 - m) + im * m).astype(np.uint8)


def write_walkup_video(path: Path, passengers: list[Passenger], fps: float = 15.0, approach_frames: int = 14,
                       dwell_frames: int = 8, gap_frames: int = 12, lead_in_frames: int = 8, seed: int = 0
                       ) -> list[Appearance]:
    """Write an MJPG .avi and return the ground truth; also writes `<path>.truth.json`."""
    path = Path(path)
    bg = _background(seed)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (FRAME_W, FRAME_H))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path}")
    frame_no = 0
    truth: list[Appearance] = []

    def emit(img):
        nonlocal frame_no
        writer.write(img)
        frame_no += 1

    for _ in range(lead_in_frames):
        emit(bg)
    for p in passengers:
        photo = cv2.imread(p.photo)
        if photo is None:
            raise FileNotFoundError(f"cannot read passenger photo {p.photo}")
        follower = cv2.imread(p.follower_photo) if p.follower_photo else None
        cx = FRAME_W // 2 + int(rng.integers(-40, 41))
        first = frame_no
        for i in range(approach_frames + dwell_frames):
            a = min(1.0, i / max(1, approach_frames - 1))
            width = int(110 + a * 130)  # head 110 → 240 px wide as the person approaches
            cy = int(FRAME_H * 0.62 - a * FRAME_H * 0.12)
            canvas = bg.copy()
            if follower is not None:
                fimg, fmask = _head(follower, int(width * 0.8))
                _paste(canvas, fimg, fmask, cx + int(width * 0.55), cy - int(width * 0.15))
            img, mask = _head(photo, width)
            _paste(canvas, img, mask, cx, cy)
            emit(canvas)
        truth.append(Appearance(p.label, p.subject_id, first, frame_no - 1, tailgate=follower is not None))
        for _ in range(gap_frames):
            emit(bg)
    writer.release()
    Path(str(path) + ".truth.json").write_text(json.dumps({"fps": fps, "frames": frame_no,
                                                            "appearances": [asdict(a) for a in truth]}, indent=1))
    return truth
