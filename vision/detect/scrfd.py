"""SCRFD face detection (insightface export format) on ONNX Runtime, decoded in numpy.

SCRFD weights are operator-provisioned (insightface's pretrained ones are licensed for
non-commercial research only), so edgegate ships the decoder, never the weights.

Format, as insightface exports it: input N x 3 x H x W (H, W multiples of 32), RGB,
(x - 127.5) / 128. Per stride s in (8, 16, 32) three outputs with one row per anchor:
face score (already a sigmoid), box distances (left, top, right, bottom) and five landmark
offsets, all in units of s from the anchor centre. Anchors sit at (x * s, y * s) of the
stride's grid, several per position (two for the 9-output models). Outputs are matched to
strides by their row count rather than by position, so an export that lists them in
another order still decodes correctly.

Close range (issue 19): SCRFD's anchors and receptive fields stop at faces of about 400 px in
its input, so a face that fills most of a gate or kiosk frame is simply not found. Measured on
LFW photos cropped and upscaled into frames (40 photos per point, SCRFD-500M, 640-px working
side): a face 384 px tall in the network input was found 40/40 times, 448 px 27/40, 512 px 0/40;
a 640x480 frame whose face fills 90 % of its height (432 px) 35/40. So a frame whose shorter side
exceeds FINE_MAX_FACE in the working input gets a second, coarse pass in which the frame's
shorter side is COARSE_SHORT_SIDE (192) px: a face filling the whole frame is then 192 px, and the
faces that pass contributes (at least half of FINE_MAX_FACE at the fine scale, ~77 px in a 640x480
frame's coarse input) are well inside the anchors; smaller faces come from the fine pass only, so
they keep the landmarks of the finer input. Cost on a 640x480 frame, one thread, CPU time: fine
pass 22.5 ms, coarse pass 5.1 ms at 192 (256x192 input) against 9.5 ms at 256, with the same
recall (100/100 per band for faces filling 50-100 % of 640x480 and 480x640 frames at both).
`gate-bench detect` reports recall per face-size band with this in place (README).
"""
from __future__ import annotations

import cv2
import numpy as np

from models.manifest import ModelError, ModelManifest
from vision.detect.base import DetectorBase
from vision.detect.boxes import nms, to_faces
from vision.detect.frame import DEFAULT_MIN_FACE, letterbox
from vision.image_io import to_bgr8
from vision.onnx_session import verified_session
from vision.types import Face

STRIDES = (8, 16, 32)
ALIGN = 32  # input sides must be multiples of the coarsest stride
FINE_MAX_FACE = 384  # px in the network input: the largest face SCRFD-500M finds reliably (module docstring)
COARSE_SHORT_SIDE = 192  # the coarse pass's shorter side: a frame-filling face stays below FINE_MAX_FACE


class ScrfdDetector(DetectorBase):
    """Faces with landmarks from an insightface-format SCRFD model.

    det_side: a frame whose longer side exceeds this is shrunk to it (then padded to a
        multiple of 32); 640 matches how SCRFD models are trained and evaluated, and a
        640x480 gate frame runs unscaled. Smaller frames are never enlarged: upscaling adds no
        detail and pushes a frame-filling face past the largest anchors (on 250x250 LFW
        portraits enlarged to 640, SCRFD-500M missed 8 of 5,700 faces; unscaled, none).
    score_threshold / nms_threshold: insightface's defaults.
    min_face: faces whose box's longer side is below this (frame pixels) are dropped.
    close_range: run the coarse second pass for faces that fill the frame (module docstring);
        off only to measure what it adds.
    threads: ONNX Runtime intra-op threads.
    """

    FORMAT = "scrfd"

    def __init__(self, manifest: ModelManifest, *, det_side: int = 640, score_threshold: float = 0.5,
                 nms_threshold: float = 0.4, min_face: float = DEFAULT_MIN_FACE, threads: int = 1,
                 close_range: bool = True):
        super().__init__(manifest, min_face)
        self.close_range = bool(close_range)
        if det_side < ALIGN or det_side % ALIGN:
            raise ValueError(f"det_side must be a positive multiple of {ALIGN}, got {det_side}")
        self.det_side = int(det_side)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self._session = verified_session(manifest, "model", threads)
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) % 3 or len(outputs) // 3 != len(STRIDES):
            raise ModelError(f"model {manifest.name!r} is not an insightface-format SCRFD with "
                             f"{len(STRIDES)} strides (1 input, {3 * len(STRIDES)} outputs); "
                             f"it has {len(inputs)} inputs and {len(outputs)} outputs")
        self._input = inputs[0].name

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """Faces in the frame, largest first. Input rules: see vision.detect."""
        image = to_bgr8(frame_bgr)
        h, w = image.shape[:2]
        if min(h, w) < self.min_face:
            return []
        boxes, scores, landmarks, scale = self._pass(image, self.det_side)
        if self.close_range and min(h, w) * scale > FINE_MAX_FACE:
            coarse_side = max(ALIGN, round(max(h, w) * COARSE_SHORT_SIDE / min(h, w)))
            b2, s2, l2, _ = self._pass(image, coarse_side)
            large = (b2[:, 2] - b2[:, 0]) * scale >= FINE_MAX_FACE / 2
            boxes = np.concatenate([boxes, b2[large]])
            scores = np.concatenate([scores, s2[large]])
            landmarks = np.concatenate([landmarks, l2[large]])
        keep = nms(boxes, scores, self.nms_threshold)
        boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
        big = self.big_enough(boxes)
        return to_faces(boxes[big], scores[big], landmarks[big], 1.0)

    def _pass(self, image: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """One network run on `image` shrunk to `side` (longer side) and padded: boxes, scores and
        landmarks in frame pixels (landmarks as pixel centres), and the scale used."""
        padded, scale = letterbox(image, side, multiple=ALIGN)
        ph, pw = padded.shape[:2]
        blob = cv2.dnn.blobFromImage(padded, 1 / 128, mean=(127.5, 127.5, 127.5), swapRB=True)
        boxes, scores, landmarks = self._decode(self._session.run(None, {self._input: blob}), ph, pw)
        return boxes / np.float32(scale), scores, (landmarks + 0.5) / np.float32(scale) - 0.5, scale

    def _decode(self, outputs: list[np.ndarray], height: int, width: int):
        """Boxes, scores and landmarks (input pixels) of all anchors above the score threshold."""
        by_width: dict[int, dict[int, np.ndarray]] = {1: {}, 4: {}, 10: {}}
        for out in outputs:
            out = out.reshape(-1, out.shape[-1])
            if out.shape[1] not in by_width:
                raise ModelError(f"SCRFD output with {out.shape[1]} columns; expected 1, 4 or 10")
            by_width[out.shape[1]][out.shape[0]] = out
        boxes, scores, marks = [], [], []
        for s in STRIDES:
            gh, gw = height // s, width // s
            rows = next((n for n in by_width[1] if n % (gh * gw) == 0 and n // (gh * gw) in (1, 2, 3)), None)
            if rows is None or rows not in by_width[4] or rows not in by_width[10]:
                raise ModelError(f"SCRFD outputs do not match stride {s} on a {width}x{height} input")
            per_cell = rows // (gh * gw)
            score = by_width[1][rows][:, 0]
            hit = np.nonzero(score >= self.score_threshold)[0]
            if len(hit) == 0:
                continue
            cell = hit // per_cell
            centres = np.stack([(cell % gw) * s, (cell // gw) * s], axis=1).astype(np.float32)
            d = by_width[4][rows][hit] * s
            boxes.append(np.concatenate([centres - d[:, 0:2], centres + d[:, 2:4]], axis=1))
            marks.append(centres[:, None, :] + by_width[10][rows][hit].reshape(-1, 5, 2) * s)
            scores.append(score[hit])
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)
