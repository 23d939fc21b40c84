"""PAD networks on ONNX Runtime, and their fusion into one detector.

Every model-specific detail comes from the manifest: the crop (`input.crop_scale`,
`input.size`), the pixel encoding (`input.colour`, `range`, `mean`, `std`, `layout`, read by
the embedders' InputSpec) and the meaning of the outputs (`extra.output`: `classes`, one
name per output with "live" marking the live ones, and `activation`, "softmax" when the
network emits logits). Weights reach ONNX Runtime as the bytes ModelManifest.read_verified
hashed, so a swapped or truncated file never scores a face.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import ModelError, ModelManifest, find_manifests
from vision.embed.base import InputSpec
from vision.image_io import to_bgr8
from vision.onnx_session import verified_session
from vision.pad.base import ModelOutput, PadScore
from vision.pad.crop import CropRule
from vision.types import Face

log = logging.getLogger(__name__)

PAD_FORMATS = ("minifasnet",)
LIVE = "live"
ACTIVATIONS = ("softmax", "none")


@dataclass(frozen=True)
class OutputSpec:
    classes: tuple[str, ...]
    activation: str

    @classmethod
    def from_manifest(cls, extra: dict[str, Any], where: str) -> "OutputSpec":
        d = extra.get("output")
        if not isinstance(d, dict) or not isinstance(d.get("classes"), list):
            raise ModelError(f"{where}: a PAD manifest needs extra.output.classes, one name per model output "
                             f"with 'live' marking the live class(es)")
        spec = cls(classes=tuple(str(c) for c in d["classes"]), activation=str(d.get("activation", "softmax")))
        if LIVE not in spec.classes or all(c == LIVE for c in spec.classes):
            raise ModelError(f"{where}: output classes {list(spec.classes)} need at least one 'live' and one "
                             f"attack class")
        if spec.activation not in ACTIVATIONS:
            raise ModelError(f"{where}: output activation {spec.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        return spec

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        if self.activation == "none":
            return raw
        e = np.exp(raw - raw.max())
        return e / e.sum()


class OnnxPadModel:
    """One PAD network: crop the face's surroundings as its manifest says, classify the crop."""

    def __init__(self, manifest: ModelManifest, *, threads: int = 1):
        where = f"model {manifest.name!r}"
        if manifest.kind != "pad" or manifest.format not in PAD_FORMATS:
            raise ModelError(f"{where} is a {manifest.kind} of format {manifest.format!r}; a PAD model needs "
                             f"kind 'pad' and a format in {', '.join(PAD_FORMATS)}")
        self.model_id = manifest.name
        self.spec = InputSpec.from_manifest(manifest.input, where)
        self.crop = CropRule.from_manifest(manifest.input, where)
        self.output = OutputSpec.from_manifest(manifest.extra, where)
        self._session = verified_session(manifest, "model", threads)
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{where}: a PAD model has one input, this model has {len(inputs)}")
        self._input_name = inputs[0].name
        self._check_input(where, inputs[0].shape)
        w, h = self.spec.size
        n_out = self._run(np.zeros((h, w, 3), np.uint8)).size
        if n_out != len(self.output.classes):
            raise ModelError(f"{where}: the model has {n_out} outputs, its manifest names "
                             f"{len(self.output.classes)} classes")
        self._live = np.array([c == LIVE for c in self.output.classes])

    def _check_input(self, where: str, shape: list) -> None:
        w, h = self.spec.size
        want = [3, h, w] if self.spec.layout == "NCHW" else [h, w, 3]
        if len(shape) != 4 or any(isinstance(got, int) and got != exp
                                  for got, exp in zip(shape[1:], want, strict=True)):
            raise ModelError(f"{where}: model input shape {shape} does not fit the manifest's "
                             f"{self.spec.layout} {w}x{h} crops")

    def _run(self, crop: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input_name: self.spec.to_tensor(crop[None])})[0].reshape(-1)

    def score(self, frame_bgr: np.ndarray, face: Face) -> ModelOutput:
        raw = self._run(self.crop.cut(frame_bgr, face.box)).astype(np.float64)
        if not np.all(np.isfinite(raw)):
            raise ModelError(f"model {self.model_id!r} produced a non-finite output")
        p = self.output.probabilities(raw)
        return ModelOutput(self.model_id, tuple(float(v) for v in raw), tuple(float(v) for v in p),
                           float(np.clip(p[self._live].sum(), 0.0, 1.0)))


class FusedPad:
    """Several PAD networks on one face, fused as the MiniFASNet reference does.

    The reference sums the models' softmax vectors; the live share of that sum is the mean of
    the models' live probabilities, which is what `PadScore.live` reports. Models with
    different crops see different context (V2 mostly the face, V1SE the head and shoulders
    with the background), which is why the pair beats either one alone.
    """

    def __init__(self, models: list[OnnxPadModel]):
        if not models:
            raise ModelError("no PAD model given; provision one with `gate-models add --format minifasnet`")
        ids = [m.model_id for m in models]
        if len(set(ids)) != len(ids):
            raise ModelError(f"PAD models listed twice: {', '.join(ids)}")
        self.models = tuple(models)
        self.model_ids = tuple(ids)
        self.name = "+".join(ids)

    def score(self, frame_bgr: np.ndarray, face: Face) -> PadScore:
        frame = to_bgr8(frame_bgr)
        outputs = tuple(m.score(frame, face) for m in self.models)
        return PadScore(live=float(np.mean([o.live for o in outputs])), models=outputs)


def load_pad(manifests: list[ModelManifest], *, threads: int = 1) -> FusedPad:
    """The presentation-attack detector for these PAD manifests (one or more, fused).

    threads: ONNX Runtime intra-op threads per model; MiniFASNet runs at batch 1 on an 80x80
    crop, where a second thread buys little and costs the rest of the gate a core.
    """
    pad = FusedPad([OnnxPadModel(m, threads=threads) for m in manifests])
    log.info("loaded PAD %s (crop scales %s)", pad.name, ", ".join(f"{m.crop.scale:g}" for m in pad.models))
    return pad


def find_pad_manifests(model_dir: Path) -> list[ModelManifest]:
    """Every PAD manifest in a model folder, by name; empty when none is provisioned."""
    if not Path(model_dir).is_dir():
        return []
    return [m for m in find_manifests(Path(model_dir)).values() if m.kind == "pad"]
