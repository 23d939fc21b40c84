"""Shared fixtures: built models, found or built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.manifest import ModelError, ModelManifest, load_model


def _intact_or_build(name: str, build, tmp_path_factory) -> ModelManifest:
    """The intact copy in $EDGEGATE_MODEL_DIR (what `make models` built), otherwise converted
    from the installed wheel into a temporary folder."""
    built = os.environ.get("EDGEGATE_MODEL_DIR")
    if built:
        try:
            m = load_model(Path(built), name)
            if not m.verify():
                return m
        except ModelError:
            pass
    return build(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def mtcnn_manifest(tmp_path_factory) -> ModelManifest:
    from models import mtcnn

    return _intact_or_build(mtcnn.MODEL_NAME, mtcnn.build, tmp_path_factory)


@pytest.fixture(scope="session")
def dlib_resnet_manifest(tmp_path_factory) -> ModelManifest:
    from models import dlib_resnet

    return _intact_or_build(dlib_resnet.MODEL_NAME, dlib_resnet.build, tmp_path_factory)


@pytest.fixture(scope="session")
def default_pipeline(mtcnn_manifest, dlib_resnet_manifest):
    """The embedded default vision pipeline (MTCNN + dlib ResNet, flip-averaged)."""
    from vision.detect import load_detector
    from vision.embed import load_embedder
    from vision.pipeline import FacePipeline

    return FacePipeline(load_detector(mtcnn_manifest, min_face=40), load_embedder(dlib_resnet_manifest, flip=True))
