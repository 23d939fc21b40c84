"""MTCNN face detection on ONNX Runtime: the licence-clean default detector.

The three networks come from `models/mtcnn.py` (converted from the MIT `mtcnn` wheel); this
module is the cascade around them, written in numpy:

1. P-Net slides a 12 px window (stride 2) over an image pyramid whose first level makes a
   face of `min_face` pixels 12 px tall. Only faces at least that big are looked for,
   which is what makes MTCNN fast on a gate camera where the subject fills the frame.
2. R-Net re-scores every surviving square proposal from a 24x24 crop and refines its box.
3. O-Net does the same from 48x48 crops and adds the five landmarks.

Crops are area-averaged straight from an integral image of the frame: a few vectorised
gathers per stage for all boxes together, no per-box resize calls, and no aliasing when a 200 px face
is shrunk to 24 px (a plain bilinear sample would skip most of its pixels). Parts of a box
outside the frame read as black, as in the original implementation.

Coordinates: boxes are pixel edges (x2 - x1 is the width); landmarks are pixel centres in
the frame, the convention cv2.warpAffine uses when aligning.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from models.manifest import ModelManifest
from vision.detect.base import DetectorBase
from vision.detect.boxes import nms, to_faces
from vision.detect.frame import DEFAULT_MIN_FACE, fit
from vision.image_io import to_bgr8
from vision.onnx_session import verified_session
from vision.types import Face

PNET_CELL = 12
PNET_STRIDE = 2
RNET_SIZE = 24
ONET_SIZE = 48


class MtcnnDetector(DetectorBase):
    """Faces with landmarks from the three-stage MTCNN cascade.

    min_face: smallest face (box's longer side, frame pixels) looked for and reported (the pyramid
        finds some faces down to ~0.75x min_face; they are dropped, as every detector drops
        them, so min_face means one thing whichever model runs); the default 60 suits a 640x480
        gate camera and LFW-style 250x250 portraits; crowd photos need ~20. Smaller values grow
        the pyramid and the run time (docs/models.md: 8.6 ms at 60, 28.5 ms at 20).
    thresholds: face probability a candidate needs at P-Net, R-Net and O-Net.
    scale_factor: ratio between pyramid levels (0.709 = half the area per level).
    max_side: frames whose longer side exceeds this are shrunk before detection; results
        are mapped back to the original frame.
    threads: ONNX Runtime intra-op threads per network.
    """

    FORMAT = "mtcnn"

    def __init__(self, manifest: ModelManifest, *, min_face: float = DEFAULT_MIN_FACE,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), scale_factor: float = 0.709,
                 max_side: int = 1920, threads: int = 1):
        super().__init__(manifest, min_face)
        if min_face < PNET_CELL:
            raise ValueError(f"min_face must be at least {PNET_CELL} px, got {min_face}")
        if not 0.1 <= scale_factor <= 0.9:
            raise ValueError(f"scale_factor must be within 0.1..0.9, got {scale_factor}")
        if len(thresholds) != 3 or not all(0.0 <= t < 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities in [0, 1), got {thresholds}")
        if max_side < 4 * PNET_CELL:
            raise ValueError(f"max_side must be at least {4 * PNET_CELL}, got {max_side}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.max_side = int(max_side)
        self._pnet = verified_session(manifest, "pnet", threads)
        self._rnet = verified_session(manifest, "rnet", threads)
        self._onet = verified_session(manifest, "onet", threads)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in the frame, largest first. Input rules: see vision.detect."""
        image, scale = fit(to_bgr8(frame_bgr), self.max_side)
        min_face = max(float(PNET_CELL), self.min_face * scale)
        boxes = self._propose(image, min_face)
        if len(boxes) == 0:
            return []
        integral = cv2.integral(image)
        boxes = self._refine(integral, boxes)
        if len(boxes) == 0:
            return []
        boxes, scores, landmarks = self._output(integral, boxes)
        big = self.big_enough(boxes, scale)  # the pyramid also finds faces somewhat below min_face
        return to_faces(boxes[big], scores[big], landmarks[big], scale)

    # --- stages -----------------------------------------------------------------------

    def pyramid_scales(self, height: int, width: int, min_face: float) -> list[float]:
        """Scales at which P-Net's 12 px window covers faces from `min_face` px upwards."""
        scales = []
        s = PNET_CELL / min_face
        while min(height, width) * s >= PNET_CELL:
            scales.append(s)
            s *= self.scale_factor
        return scales

    def _propose(self, image: np.ndarray, min_face: float) -> np.ndarray:
        h, w = image.shape[:2]
        found = []
        source = image
        for i, s in enumerate(self.pyramid_scales(h, w, min_face)):  # all <= 1, as min_face >= 12
            hs, ws = math.ceil(h * s), math.ceil(w * s)
            level = cv2.resize(source, (ws, hs), interpolation=cv2.INTER_AREA)
            if i == 0:
                source = level  # smaller levels are resized from the first: ~10x cheaper than from the frame
            blob = cv2.dnn.blobFromImage(level, 1 / 128, mean=(127.5, 127.5, 127.5), swapRB=True)
            reg, prob = self._pnet.run(None, {"input": blob})
            ys, xs = np.nonzero(prob[0, 1] > self.thresholds[0])
            if len(ys) == 0:
                continue
            sx, sy = ws / w, hs / h
            windows = np.stack([xs * PNET_STRIDE / sx, ys * PNET_STRIDE / sy,
                                (xs * PNET_STRIDE + PNET_CELL) / sx, (ys * PNET_STRIDE + PNET_CELL) / sy], axis=1)
            scores = prob[0, 1, ys, xs]
            offsets = reg[0, :, ys, xs]  # (n, 4)
            keep = nms(windows, scores, 0.5)
            found.append(np.concatenate([windows[keep], scores[keep, None], offsets[keep]], axis=1))
        if not found:
            return np.zeros((0, 4))
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        return _square(_regress(cand[:, :4], cand[:, 5:9]))

    def _refine(self, integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        reg, prob = self._rnet.run(None, {"input": _crops(integral, boxes, RNET_SIZE)})
        keep = prob[:, 1] > self.thresholds[1]
        boxes = _regress(boxes[keep], reg[keep])
        boxes = boxes[nms(boxes, prob[keep, 1], 0.7)]
        return _square(boxes)

    def _output(self, integral: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        reg, marks, prob = self._onet.run(None, {"input": _crops(integral, boxes, ONET_SIZE)})
        keep = prob[:, 1] > self.thresholds[2]
        boxes, reg, marks, scores = boxes[keep], reg[keep], marks[keep], prob[keep, 1]
        size = (boxes[:, 2:4] - boxes[:, 0:2])[:, None, :]  # (n, 1, 2): w, h
        points = np.stack([marks[:, 0:5], marks[:, 5:10]], axis=2)  # (n, 5, 2) fractions of the crop
        landmarks = boxes[:, None, 0:2] + points * size - 0.5  # edges -> pixel centres
        boxes = _regress(boxes, reg)
        keep = nms(boxes, scores, 0.7, mode="min")
        return boxes[keep], scores[keep], landmarks[keep]


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply a network's box offsets, given as fractions of the box's width and height."""
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    return boxes + offsets * np.concatenate([wh, wh], axis=1)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres: the next network sees an undistorted face."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = np.max(boxes[:, 2:4] - boxes[:, 0:2], axis=1, keepdims=True) / 2
    squares = np.concatenate([centre - half, centre + half], axis=1)
    return squares[half[:, 0] >= 0.5]  # drop degenerate boxes (< 1 px), they have no pixels


def _crops(integral: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged size x size crops of `boxes`, as a normalised RGB NCHW batch.

    The integral image S (from cv2.integral, S[y, x] = sum of pixels above and left of the
    corner (x, y)) interpolated bilinearly is the exact integral of the piecewise-constant
    image, so the mean over any sub-pixel rectangle is four look-ups. Each crop cell is one
    such rectangle.
    """
    hi, wi = integral.shape[0] - 1, integral.shape[1] - 1
    t = np.arange(size + 1) / size
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    gx = np.clip(boxes[:, 0:1] + wh[:, 0:1] * t, 0, wi)  # (n, size+1) cell edges
    gy = np.clip(boxes[:, 1:2] + wh[:, 1:2] * t, 0, hi)
    x0 = np.minimum(gx.astype(np.intp), wi - 1)
    y0 = np.minimum(gy.astype(np.intp), hi - 1)
    ax = (gx - x0)[:, None, :, None]
    ay = (gy - y0)[:, :, None, None]
    flat = integral.reshape(-1, 3)
    corner = y0[:, :, None] * (wi + 1) + x0[:, None, :]  # flat index of the integer corner below each edge

    def at(offset: int) -> np.ndarray:  # np.take is several times faster than 2-D fancy indexing here
        return np.take(flat, corner + offset, axis=0).astype(np.float64)

    top, bottom = at(0), at(wi + 1)
    top += ax * (at(1) - top)
    bottom += ax * (at(wi + 2) - bottom)
    f = top + ay * (bottom - top)  # exact integral up to every cell corner
    sums = f[:, 1:, 1:] - f[:, :-1, 1:] - f[:, 1:, :-1] + f[:, :-1, :-1]
    cell_area = wh[:, 0] * wh[:, 1] / (size * size)
    mean = sums * (1 / (128 * cell_area))[:, None, None, None] - 127.5 / 128  # BGR, normalised
    return np.ascontiguousarray(mean.transpose(0, 3, 1, 2)[:, ::-1], dtype=np.float32)  # RGB, NCHW
