"""Shared fixtures: built models, found or built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.manifest import ModelError, ModelManifest, load_model


@pytest.fixture(scope="session")
def mtcnn_manifest(tmp_path_factory) -> ModelManifest:
    """The default MTCNN detector: the intact copy in $EDGEGATE_MODEL_DIR (what `make models`
    built), otherwise converted from the installed wheel into a temporary folder."""
    from models import mtcnn

    built = os.environ.get("EDGEGATE_MODEL_DIR")
    if built:
        try:
            m = load_model(Path(built), mtcnn.MODEL_NAME)
            if not m.verify():
                return m
        except ModelError:
            pass
    return mtcnn.build(tmp_path_factory.mktemp("mtcnn"))


@pytest.fixture(scope="session")
def dlib_resnet_manifest(tmp_path_factory) -> ModelManifest:
    """The default dlib ResNet embedder: the intact copy in $EDGEGATE_MODEL_DIR, otherwise
    converted from the installed wheel into a temporary folder (well under a second)."""
    from models import dlib_resnet

    built = os.environ.get("EDGEGATE_MODEL_DIR")
    if built:
        try:
            m = load_model(Path(built), dlib_resnet.MODEL_NAME)
            if not m.verify():
                return m
        except ModelError:
            pass
    return dlib_resnet.build(tmp_path_factory.mktemp("dlib-resnet"))
