"""The one ONNX Runtime embedder: every model-specific detail comes from its manifest.

The same class runs edgegate's converted dlib ResNet and operator-provisioned ArcFace-style
models, so there is one code path to test and to audit. Weights are handed to ONNX Runtime
as the exact bytes whose sha256 the manifest vouched for (ModelManifest.read_verified), so a
swapped or truncated file never produces a template.
"""
from __future__ import annotations

import logging

import numpy as np

from models.manifest import ModelError, ModelManifest
from vision.embed.base import InputSpec
from vision.onnx_session import verified_session
from vision.types import AlignTemplate

log = logging.getLogger(__name__)

EMBEDDER_FORMATS = ("dlib-resnet", "arcface")


class OnnxEmbedder:
    """Embeds aligned chips with an ONNX model described by an embedder manifest.

    flip: also embed each chip's horizontal mirror and add the two raw embeddings before
    normalising (test-time augmentation; doubles the cost). On LFW folds 1-5 it takes the
    default pair from 98.97% to 99.07% verification accuracy, and its equal error rate
    from 1.20% to 1.07% (docs/accuracy.md).
    threads: ONNX Runtime intra-op threads; a gate shares few cores between capture,
    detection, embedding and I/O, so the default is one.
    batch_size: most chips per inference call (1 when the model's batch is fixed to 1).
    """

    def __init__(self, manifest: ModelManifest, *, flip: bool = False, threads: int = 1, batch_size: int = 32):
        where = f"model {manifest.name!r}"
        if manifest.kind != "embedder" or manifest.format not in EMBEDDER_FORMATS:
            raise ModelError(f"{where} is a {manifest.kind} of format {manifest.format!r}; "
                             f"an embedder needs kind 'embedder' and a format in {', '.join(EMBEDDER_FORMATS)}")
        if manifest.align is None:
            raise ModelError(f"{where}: an embedder manifest must give its alignment template ('align')")
        if threads < 1 or batch_size < 1:
            raise ValueError(f"threads and batch_size must be >= 1, got {threads}, {batch_size}")
        self.spec = InputSpec.from_manifest(manifest.input, where)
        if tuple(manifest.align.size) != self.spec.size:
            raise ModelError(f"{where}: align size {manifest.align.size} differs from input size {self.spec.size}")
        self.model_id = manifest.name
        self.template: AlignTemplate = manifest.align
        self.flip = flip

        self._session = verified_session(manifest, "model", threads)
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{where}: an embedder has one input, this model has {len(inputs)}")
        self._check_input(where, inputs[0].shape)
        self._input_name = inputs[0].name
        fixed_batch = inputs[0].shape[0]
        self.batch_size = fixed_batch if isinstance(fixed_batch, int) else batch_size
        self.dim = self._output_size(where, manifest.embedding_size)

    def _check_input(self, where: str, shape: list) -> None:
        w, h = self.spec.size
        want = [3, h, w] if self.spec.layout == "NCHW" else [h, w, 3]
        if len(shape) != 4 or any(isinstance(got, int) and got != exp
                                  for got, exp in zip(shape[1:], want, strict=True)):
            raise ModelError(f"{where}: model input shape {shape} does not fit the manifest's "
                             f"{self.spec.layout} {w}x{h} RGB/BGR chips")

    def _output_size(self, where: str, declared: int | None) -> int:
        """Embedding width, measured on a blank chip: exported graphs often leave it symbolic."""
        w, h = self.spec.size
        dim = self._run(np.zeros((1, h, w, 3), np.uint8)).shape[1]
        if declared and declared != dim:
            raise ModelError(f"{where}: model outputs {dim}-d embeddings, its manifest says {declared}")
        return dim

    def embed(self, chips: np.ndarray) -> np.ndarray:
        chips = self._check_chips(chips)
        n = len(chips)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.flip:
            chips = np.concatenate([chips, chips[:, :, ::-1]])
        raw = np.concatenate([self._run(chips[i:i + self.batch_size])
                              for i in range(0, len(chips), self.batch_size)])
        if self.flip:
            raw = raw[:n] + raw[n:]
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        if not np.all(np.isfinite(raw)) or np.any(norms == 0):
            raise ModelError(f"model {self.model_id!r} produced a zero or non-finite embedding")
        return (raw / norms).astype(np.float32)

    def _run(self, chips: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {self._input_name: self.spec.to_tensor(chips)})[0]
        return out.reshape(len(chips), -1)

    def _check_chips(self, chips: np.ndarray) -> np.ndarray:
        w, h = self.spec.size
        if not isinstance(chips, np.ndarray):
            raise ValueError(f"{self.model_id}: chips must be a numpy array, got {type(chips).__name__}")
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (h, w, 3):
            raise ValueError(f"{self.model_id}: expected uint8 BGR chips of shape (N, {h}, {w}, 3), "
                             f"got {chips.dtype} array of shape {chips.shape}")
        return chips


def load_embedder(manifest: ModelManifest, **options) -> OnnxEmbedder:
    """The embedder for a manifest; options are OnnxEmbedder's (flip, threads, batch_size)."""
    embedder = OnnxEmbedder(manifest, **options)
    log.info("loaded embedder %s (%d-d, %dx%d chips, flip=%s)", embedder.model_id, embedder.dim,
             *embedder.spec.size, embedder.flip)
    return embedder
