"""The one ONNX Runtime embedder: every model-specific detail comes from its manifest.

The same class runs edgegate's converted dlib ResNet and operator-provisioned ArcFace-style
models, so there is one code path to test and to audit. Weights are handed to ONNX Runtime
as the exact bytes whose sha256 the manifest vouched for (ModelManifest.read_verified), so a
swapped or truncated file never produces a template.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np

from models.manifest import ModelError, ModelManifest
from vision.align import similarity_transform
from vision.detect.runtime import session_from_bytes
from vision.embed.base import InputSpec
from vision.types import AlignTemplate

log = logging.getLogger(__name__)

EMBEDDER_FORMATS = ("dlib-resnet", "arcface")
# Where each landmark (LANDMARK_NAMES order) goes in a left-right mirror image: the eyes and
# the mouth corners swap sides.
MIRRORED_LANDMARKS = (1, 0, 2, 4, 3)


def mirror_onto_template(template: AlignTemplate) -> np.ndarray:
    """2x3 map from a chip to its mirror image, re-aligned so the mirrored face's landmarks
    land on the template again.

    Why not a plain flip: templates are measured, not symmetric. dlib's chip puts the face
    0.6 px left of centre, so a flipped chip has the face 1.3 px (eyes) to 2.3 px (nose)
    right of where the network expects it: a misaligned second view. Folding the small
    correcting shift into the flip costs nothing (one warp either way).
    """
    w = template.size[0]
    flip = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0]])  # x -> (w - 1) - x on pixel centres
    mirrored = template.points @ flip[:, :2].T + flip[:, 2]
    fix = similarity_transform(mirrored[list(MIRRORED_LANDMARKS)], template.points)
    return np.concatenate([fix[:, :2] @ flip[:, :2], fix[:, :2] @ flip[:, 2:] + fix[:, 2:]], axis=1)


class OnnxEmbedder:
    """Embeds aligned chips with an ONNX model described by an embedder manifest.

    flip: also embed each chip's mirror image (aligned onto the template like any face, see
    mirror_onto_template) and add the two raw embeddings before normalising: test-time
    augmentation that doubles the cost. On LFW folds 1-5 it takes the default pair from
    98.97% to 99.17% verification accuracy (docs/accuracy.md).
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
        self._mirror = mirror_onto_template(self.template)

        weights = manifest.read_verified()
        try:
            self._session = session_from_bytes(weights, threads)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise ModelError(f"{where}: ONNX Runtime cannot load {manifest.file_path()}: {e}") from e
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
        if len(shape) != 4 or any(isinstance(got, int) and got != exp for got, exp in zip(shape[1:], want)):
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
            chips = np.concatenate([chips, self.mirror(chips)])
        raw = np.concatenate([self._run(chips[i:i + self.batch_size])
                              for i in range(0, len(chips), self.batch_size)])
        if self.flip:
            raw = raw[:n] + raw[n:]
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        if not np.all(np.isfinite(raw)) or np.any(norms == 0):
            raise ModelError(f"model {self.model_id!r} produced a zero or non-finite embedding")
        return (raw / norms).astype(np.float32)

    def mirror(self, chips: np.ndarray) -> np.ndarray:
        """Each chip's mirror image with the mirrored face aligned on the template."""
        size = self.spec.size
        return np.stack([cv2.warpAffine(np.ascontiguousarray(c), self._mirror, size, flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE) for c in chips])

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
