"""Build vision components from model manifests by name, so configs and CLIs never hard-code
model classes."""
from __future__ import annotations

from pathlib import Path

from models.manifest import ModelManifest, load_manifest, load_model


def resolve_manifest(model_dir: Path, name_or_path: str) -> ModelManifest:
    """A model name in `model_dir`, or a path to a manifest file anywhere."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.exists():
        return load_manifest(p)
    return load_model(Path(model_dir), name_or_path)


def load_pipeline(model_dir: Path, detector: str, embedder: str, flip: bool = False, threads: int | None = None,
                  thresholds=None, detector_opts: dict | None = None):
    from vision.detect import load_detector
    from vision.embed import load_embedder
    from vision.pipeline import FacePipeline
    from vision.quality import QualityThresholds

    det = load_detector(resolve_manifest(model_dir, detector), **(detector_opts or {}),
                        **({"threads": threads} if threads else {}))
    emb = load_embedder(resolve_manifest(model_dir, embedder), flip=flip, **({"threads": threads} if threads else {}))
    return FacePipeline(det, emb, thresholds or QualityThresholds())
