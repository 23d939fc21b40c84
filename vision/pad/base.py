"""What every presentation-attack detector promises, and the scores it hands back.

The gate only sees `PresentationAttackDetector`: a frame and the detector's face in, a live
probability out. Which networks run, how they crop and how several are fused is the
detector's business and is described by model manifests, so another PAD model can replace
MiniFASNet without the gate changing. Scores carry every model's own output so an audit
record can show what each network said, never the image it said it about.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vision.types import Face


@dataclass(frozen=True)
class ModelOutput:
    """One PAD network's answer for one face."""

    model_id: str
    raw: tuple[float, ...]  # the network's output as it came out (logits for MiniFASNet)
    probabilities: tuple[float, ...]  # after the manifest's activation, in the manifest's class order
    live: float  # probability mass of the classes the manifest names "live"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_id, "live": round(self.live, 4),
                "probabilities": [round(p, 4) for p in self.probabilities]}


@dataclass(frozen=True)
class PadScore:
    """The fused verdict material for one face in one frame.

    `live` is in [0, 1]: the mean over models of each model's live probability, which is the
    live share of the models' summed class probabilities (the reference's fusion).
    """

    live: float
    models: tuple[ModelOutput, ...]

    def to_dict(self) -> dict[str, Any]:
        """Numbers only, rounded, ready for an audit record."""
        return {"live": round(self.live, 4), "models": [m.to_dict() for m in self.models]}


@runtime_checkable
class PresentationAttackDetector(Protocol):
    name: str  # what the audit and status report, e.g. "minifasnet-v2+minifasnet-v1se"
    model_ids: tuple[str, ...]

    def score(self, frame_bgr: np.ndarray, face: Face) -> PadScore:
        """How likely `face` (detector coordinates in `frame_bgr`) is a live person, not an artefact."""
        ...
