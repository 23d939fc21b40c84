"""What every face embedder promises, and the manifest's input rules it must follow.

Callers (enrolment, the gate lane, evaluation) only see `Embedder`: aligned BGR chips in,
unit-length float32 rows out, tagged with the model id and the alignment template the chips
must have been cut with. Everything that differs between models (colour order, pixel scale,
mean/std, chip size, tensor layout) is data in the model's manifest, read by `InputSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.manifest import ModelError
from vision.types import AlignTemplate


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    dim: int
    template: AlignTemplate

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """N x H x W x 3 uint8 BGR chips aligned with `template` -> N x dim float32 unit rows."""
        ...


COLOURS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class InputSpec:
    """A model's input rule, from the manifest's `input` dict.

    Keys: size [w, h]; colour "RGB" | "BGR" (channel order the model expects); range
    [lo, hi], the values 0 and 255 of a byte map to (linearly; default [0, 255]); mean [3]
    and std [3] in that range, applied per channel in the model's colour order; layout
    "NCHW" | "NHWC". So dlib's ResNet is range [0, 255], mean = its channel averages,
    std 256; insightface ArcFace is mean = std = 127.5; an ImageNet-normalised model
    (MobileFaceNet) is range [0, 1] with the ImageNet mean/std.
    """

    size: tuple[int, int]
    colour: str
    range: tuple[float, ...]  # 2 values (checked in from_manifest)
    mean: tuple[float, ...]  # 3 values
    std: tuple[float, ...]  # 3 values
    layout: str

    @classmethod
    def from_manifest(cls, d: dict[str, Any], where: str) -> "InputSpec":
        missing = [k for k in ("size", "colour", "mean", "std", "layout") if k not in d]
        if missing:
            raise ModelError(f"{where}: manifest 'input' lacks {', '.join(missing)}")
        try:
            spec = cls(size=(int(d["size"][0]), int(d["size"][1])), colour=str(d["colour"]).upper(),
                       range=tuple(float(v) for v in d.get("range", (0.0, 255.0))),
                       mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                       layout=str(d["layout"]).upper())
        except (TypeError, ValueError, IndexError) as e:
            raise ModelError(f"{where}: manifest 'input' is malformed: {e}") from e
        if spec.colour not in COLOURS or spec.layout not in LAYOUTS:
            raise ModelError(f"{where}: input colour must be one of {COLOURS} and layout one of {LAYOUTS}, "
                             f"got {spec.colour!r}, {spec.layout!r}")
        if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0 or min(spec.size) <= 0 \
                or len(spec.range) != 2 or spec.range[0] == spec.range[1]:
            raise ModelError(f"{where}: input needs 3 means, 3 positive stds, a positive size "
                             f"and a range [lo, hi] with lo != hi")
        return spec

    def to_tensor(self, chips: np.ndarray) -> np.ndarray:
        """uint8 BGR chips -> the model's float32 input tensor."""
        x = chips[..., ::-1] if self.colour == "RGB" else chips
        lo, hi = self.range
        std = np.asarray(self.std, np.float32)
        # byte b -> (lo + b * (hi - lo) / 255 - mean) / std, as one multiply-add per value
        scale = np.float32((hi - lo) / 255.0) / std
        offset = (np.float32(lo) - np.asarray(self.mean, np.float32)) / std
        x = x.astype(np.float32) * scale + offset
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)
