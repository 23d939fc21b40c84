"""The region of the camera frame a PAD network looks at.

Liveness cues are in the face's surroundings as much as in the face: a phone bezel, a paper
edge, moiré on the background. So PAD models are trained on the detector's box enlarged
about its centre by a fixed factor (MiniFASNetV2 ×2.7, MiniFASNetV1SE ×4.0), not on the
tight aligned chip the embedder uses. The factor comes from the model's manifest
(`input.crop_scale`); feeding a model another scale than it was trained with does not fail
loudly, it quietly changes its error rates.

Near the frame edge the enlarged region is shifted, not padded, to stay inside the frame
(the training crops were cut the same way, so padding would be a cue the model never saw);
when even that cannot fit, the scale is reduced until it does, keeping the box's shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.manifest import ModelError


@dataclass(frozen=True)
class CropRule:
    scale: float  # crop side / face box side, about the box centre
    size: tuple[int, int]  # (width, height) the crop is resized to

    @classmethod
    def from_manifest(cls, d: dict[str, Any], where: str) -> "CropRule":
        if "crop_scale" not in d:
            raise ModelError(f"{where}: a PAD manifest's 'input' must give crop_scale, the factor the face "
                             f"box is enlarged by before cropping (the scale the model was trained with)")
        try:
            rule = cls(scale=float(d["crop_scale"]), size=(int(d["size"][0]), int(d["size"][1])))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModelError(f"{where}: manifest 'input' crop_scale/size is malformed: {e}") from e
        if not math.isfinite(rule.scale) or rule.scale <= 0 or min(rule.size) <= 0:
            raise ModelError(f"{where}: crop_scale must be a positive number and size positive, "
                             f"got {rule.scale}, {rule.size}")
        return rule

    def region(self, box: np.ndarray, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
        """Integer pixel bounds (x1, y1, x2, y2), x2/y2 exclusive, of the crop inside the frame."""
        x1, y1, x2, y2 = (float(v) for v in box)
        bw, bh = x2 - x1, y2 - y1
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or bw <= 0 or bh <= 0:
            raise ValueError(f"face box {list(box)} is not a box with positive width and height")
        if x2 <= 0 or y2 <= 0 or x1 >= frame_w or y1 >= frame_h:
            raise ValueError(f"face box {list(box)} lies outside the {frame_w}x{frame_h} frame")
        scale = min(self.scale, frame_w / bw, frame_h / bh)
        cw, ch = bw * scale, bh * scale
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left = min(max(cx - cw / 2, 0.0), frame_w - cw)
        top = min(max(cy - ch / 2, 0.0), frame_h - ch)
        xa, ya = int(round(left)), int(round(top))
        xb = min(frame_w, max(xa + 1, int(round(left + cw))))
        yb = min(frame_h, max(ya + 1, int(round(top + ch))))
        return xa, ya, xb, yb

    def cut(self, frame_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The model's input crop: uint8 BGR, resized to `size` bilinearly (as in training)."""
        h, w = frame_bgr.shape[:2]
        xa, ya, xb, yb = self.region(box, w, h)
        return cv2.resize(frame_bgr[ya:yb, xa:xb], self.size, interpolation=cv2.INTER_LINEAR)
