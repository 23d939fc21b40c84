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
EMPTY_LANE_GREY = 110  # the empty lane's grey level in the walk-up feed and the camera folders


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


def one_face(detector, photo: str | Path) -> bool:
    """Whether a photo shows exactly one face: a photo with a bystander would make the feed
    show two people at the gate, which the lane rightly treats as tailgating."""
    img = cv2.imread(str(photo))
    return img is not None and len(detector.detect(img)) == 1


def _scene(photo: np.ndarray) -> np.ndarray:
    """The photo's own surroundings, defocused, as the lane behind the passenger. A synthetic
    backdrop would make every frame look like a pasted picture to the liveness model; the
    photo's own colours and light look like a camera scene."""
    # blurred at the photo's own scale, strongly enough that a bystander's face in it can no
    # longer be detected (a stray second face would read as tailgating)
    return cv2.resize(cv2.GaussianBlur(photo, (0, 0), 25), (FRAME_W, FRAME_H), interpolation=cv2.INTER_LINEAR)


def _feathered(img: np.ndarray, feather: float = 0.12) -> np.ndarray:
    """An alpha mask that fades the picture's edges into the scene (no hard rectangle)."""
    h, w = img.shape[:2]
    f = max(1, int(feather * min(h, w)))
    m = np.zeros((h, w), np.float32)
    m[f:h - f, f:w - f] = 1.0
    return cv2.GaussianBlur(m, (0, 0), f / 2)[:, :, None]


def _scaled(photo: np.ndarray, scale: float) -> np.ndarray:
    return cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


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
                       dwell_frames: int = 40, gap_frames: int = 12, lead_in_frames: int = 8, seed: int = 0
                       ) -> list[Appearance]:
    """Write an MJPG .avi and return the ground truth; also writes `<path>.truth.json`.

    A recorded passenger cannot react to the lane, but they do not leave before it has had
    its say: they stand `dwell_frames` (2.7 s at 15 fps) after walking up, long enough for a
    retry (the lane counts frames again `lane.attempts.settle_s` = 1.5 s after a prompt). With
    the old 8 frames (0.5 s) every retry ended "left while responding to a prompt". For
    passengers who respond to the display, see tools.bench_lane_feed.LaneFeed."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (FRAME_W, FRAME_H))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path}")
    frame_no = 0
    truth: list[Appearance] = []
    empty = np.full((FRAME_H, FRAME_W, 3), EMPTY_LANE_GREY, np.uint8)

    def emit(img):
        nonlocal frame_no
        writer.write(img)
        frame_no += 1

    for _ in range(lead_in_frames):
        emit(empty)
    for p in passengers:
        photo = cv2.imread(p.photo)
        if photo is None:
            raise FileNotFoundError(f"cannot read passenger photo {p.photo}")
        follower = cv2.imread(p.follower_photo) if p.follower_photo else None
        scene = _scene(photo)
        cx = FRAME_W // 2 + int(rng.integers(-30, 31))
        first = frame_no
        for i in range(approach_frames + dwell_frames):
            a = min(1.0, i / max(1, approach_frames - 1))
            scale = 1.3 + 0.6 * a  # a 250-px photo's face grows from ~130 to ~190 px as they approach
            cy = FRAME_H // 2 + int((1 - a) * 30)
            canvas = scene.copy()
            if follower is not None:
                fimg = _scaled(follower, scale * 0.8)
                _paste(canvas, fimg, _feathered(fimg, 0.2), cx + int(fimg.shape[1] * 0.55), cy - 20)
            img = _scaled(photo, scale)
            _paste(canvas, img, _feathered(img), cx, cy)
            emit(canvas)
        truth.append(Appearance(p.label, p.subject_id, first, frame_no - 1, tailgate=follower is not None))
        for _ in range(gap_frames):
            emit(empty)
    writer.release()
    Path(str(path) + ".truth.json").write_text(json.dumps({"fps": fps, "frames": frame_no,
                                                            "appearances": [asdict(a) for a in truth]}, indent=1))
    return truth


def standing_frames(photo: str | Path, n: int = 8, scale: float = 1.8, seed: int = 0) -> list[np.ndarray]:
    """A person standing at the capture position, swaying a little: what a kiosk or lane camera
    sees between stepping up and walking on. The sway (≤ 4 px, ±2 % in size) keeps the box
    overlap between frames far above lane.tracking.iou_min (0.3), so the lane follows one
    person, while no two frames are the same picture."""
    img = cv2.imread(str(photo))
    if img is None:
        raise FileNotFoundError(f"cannot read passenger photo {photo}")
    rng = np.random.default_rng(seed)
    scene = _scene(img)
    cx0, cy0 = FRAME_W // 2 + int(rng.integers(-30, 31)), FRAME_H // 2 + int(rng.integers(-10, 11))
    frames = []
    for i in range(n):
        phase = 2 * np.pi * i / n
        face = _scaled(img, scale * (1 + 0.02 * np.sin(phase)))
        canvas = scene.copy()
        _paste(canvas, face, _feathered(face), cx0 + int(round(4 * np.cos(phase))), cy0 + int(round(3 * np.sin(phase))))
        frames.append(canvas)
    return frames


class CameraFolder:
    """A simulated camera for a daemon configured with `camera.source = <folder>` and
    `loop = true`: `slots` picture files that vision.capture.FolderSource plays in order, over
    and over, and whose contents change as people step up and walk on. Each file is replaced
    atomically (os.replace), so the daemon never reads half a picture; the names stay the same
    because FolderSource lists the folder once, when it opens."""

    def __init__(self, folder: Path, slots: int = 8):
        self.folder = Path(folder)
        self.slots = slots
        self.folder.mkdir(parents=True, exist_ok=True)
        self.clear()

    def show(self, frames: list[np.ndarray]) -> None:
        import os

        for i in range(self.slots):
            tmp = self.folder / f".slot_{i:02d}.tmp"
            ok, jpg = cv2.imencode(".jpg", frames[i % len(frames)], [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise RuntimeError("cannot encode a camera frame")
            tmp.write_bytes(jpg.tobytes())
            os.replace(tmp, self.folder / f"slot_{i:02d}.jpg")

    def clear(self) -> None:
        """Nobody in front of the camera."""
        self.show([np.full((FRAME_H, FRAME_W, 3), EMPTY_LANE_GREY, np.uint8)])
