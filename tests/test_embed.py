"""The generic ONNX embedder on real weights: our dlib ResNet and the provisioned MobileFaceNet.

Both run through the same class, configured only by their manifests; chips are aligned with
vision.align onto each model's template from landmarks of dlib's 68-point predictor.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from models.manifest import ModelError, ModelFile, ModelIntegrityError
from models.provision import provision
from tests.paths import LFW_IMAGES, LFW_PAIRS, SHARED_MODELS, require
from tools.dlib_chip_template import DlibLandmarker
from vision.align import align_points
from vision.embed import Embedder, InputSpec, load_embedder

# foamliu/MobileFaceNet was trained torchvision-style: RGB bytes / 255, ImageNet mean and std.
IMAGENET = {"range": [0.0, 1.0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
PAIRS_PER_KIND = 20


@pytest.fixture(scope="module")
def mobilefacenet_manifest(tmp_path_factory):
    return provision(require(SHARED_MODELS / "mobilefacenet.onnx"), "mobilefacenet", "arcface",
                     "Apache-2.0 code, MS-Celeb-1M weights: test only", "test-only copy in ../shared/models",
                     tmp_path_factory.mktemp("mobilefacenet"), input_overrides=IMAGENET)


@pytest.fixture(scope="module")
def manifests(mobilefacenet_manifest, dlib_resnet_manifest):
    return {"mobilefacenet": mobilefacenet_manifest, "dlib": dlib_resnet_manifest}


@pytest.fixture(scope="module")
def embedders(manifests):
    return {k: load_embedder(m, threads=1) for k, m in manifests.items()}


@pytest.fixture(scope="module")
def lfw_pairs():
    """The first 20 same-person and 20 different-person pairs of LFW fold 1 as photo paths."""
    lines = [ln.split() for ln in require(LFW_PAIRS).read_text().splitlines()[1:601]]

    def photo(name, i):
        return LFW_IMAGES / name / f"{name}_{int(i):04d}.jpg"

    same = [(photo(n, i), photo(n, j)) for n, i, j in lines[:PAIRS_PER_KIND]]
    diff = [(photo(a, i), photo(b, j)) for a, i, b, j in lines[300:300 + PAIRS_PER_KIND]]
    return same, diff


@pytest.fixture(scope="module")
def faces(lfw_pairs):
    """photo path -> (BGR photo, 5 landmarks of its central face)."""
    dl = DlibLandmarker.load()
    out = {}
    for path in sorted({p for pair in lfw_pairs[0] + lfw_pairs[1] for p in pair}):
        bgr = cv2.imread(str(require(path)))
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        boxes = dl.detector(rgb, 1)
        assert boxes, f"no face found in {path}"
        centre = np.array(rgb.shape[1::-1]) / 2
        box = min(boxes, key=lambda b: np.hypot(b.center().x - centre[0], b.center().y - centre[1]))
        out[path] = (bgr, dl.landmarks(rgb, box))
    return out


def chips_for(embedder, faces, paths):
    return np.stack([align_points(faces[p][0], faces[p][1], embedder.template) for p in paths])


@pytest.mark.parametrize("model", ["mobilefacenet", "dlib"])
def test_same_person_scores_above_different_people(model, embedders, faces, lfw_pairs):
    emb = embedders[model]
    assert isinstance(emb, Embedder) and emb.dim == 128
    scores = []
    for pairs in lfw_pairs:
        a = emb.embed(chips_for(emb, faces, [p for p, _ in pairs]))
        b = emb.embed(chips_for(emb, faces, [q for _, q in pairs]))
        scores.append(np.sum(a * b, axis=1))
    same, diff = scores
    auc = (same[:, None] > diff[None, :]).mean()
    best_accuracy = max(((same >= t).sum() + (diff < t).sum()) / (len(same) + len(diff))
                        for t in np.concatenate(scores))
    assert auc >= 0.95 and best_accuracy >= 0.9, (auc, best_accuracy, same.mean(), diff.mean())


@pytest.mark.parametrize("model", ["mobilefacenet", "dlib"])
def test_rows_are_unit_float32_and_batching_changes_nothing(model, manifests, embedders, faces):
    emb = embedders[model]
    chips = chips_for(emb, faces, sorted(faces)[:7])
    rows = emb.embed(chips)
    assert rows.shape == (7, 128) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    small_batches = load_embedder(manifests[model], batch_size=3, threads=2).embed(chips)
    one_by_one = np.concatenate([emb.embed(c[None]) for c in chips])
    assert np.allclose(rows, small_batches, atol=1e-5) and np.allclose(rows, one_by_one, atol=1e-5)


def test_flip_averages_a_chip_with_its_mirror(manifests, faces):
    plain = load_embedder(manifests["dlib"])
    flipping = load_embedder(manifests["dlib"], flip=True)
    chips = chips_for(plain, faces, sorted(faces)[:5])
    mirrored = chips[:, :, ::-1]
    # with flip a chip and its mirror give one embedding; without, they differ
    assert np.allclose(flipping.embed(chips), flipping.embed(mirrored), atol=1e-5)
    assert np.abs(plain.embed(chips) - plain.embed(mirrored)).max() > 1e-2
    expected = plain._run(chips) + plain._run(np.ascontiguousarray(mirrored))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(flipping.embed(chips), expected, atol=1e-5)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_input_tensor_follows_the_manifest(layout):
    rng = np.random.default_rng(1)
    chips = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    imagenet = InputSpec.from_manifest({"size": [5, 4], "colour": "RGB", "layout": layout, **IMAGENET}, "test")
    dlib_like = InputSpec.from_manifest({"size": [5, 4], "colour": "RGB", "layout": layout,
                                         "mean": [122.782, 117.001, 104.298], "std": [256.0] * 3}, "test")
    rgb = chips[..., ::-1].astype(np.float64)
    for spec, want in ((imagenet, (rgb / 255 - IMAGENET["mean"]) / IMAGENET["std"]),
                       (dlib_like, (rgb - dlib_like.mean) / 256)):
        got = spec.to_tensor(chips)
        if layout == "NCHW":
            got = got.transpose(0, 2, 3, 1)
        assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-5)


def test_bad_chips_are_refused_and_empty_batches_allowed(embedders):
    emb = embedders["mobilefacenet"]
    for bad in (np.zeros((1, 112, 112, 3), np.float32), np.zeros((1, 150, 150, 3), np.uint8),
                np.zeros((112, 112, 3), np.uint8), [[0]]):
        with pytest.raises(ValueError, match="chips"):
            emb.embed(bad)
    assert emb.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)


def test_hash_mismatch_is_refused_before_loading(mobilefacenet_manifest):
    f = mobilefacenet_manifest.files["model"]
    forged = dataclasses.replace(mobilefacenet_manifest,
                                 files={"model": ModelFile(f.role, f.file, "0" * 64)})
    with pytest.raises(ModelIntegrityError):
        load_embedder(forged)


@pytest.mark.parametrize("change, message", [
    ({"kind": "detector"}, "embedder"),
    ({"format": "mtcnn"}, "format"),
    ({"embedding_size": 512}, "512"),
    ({"align": None}, "align"),
])
def test_manifest_that_does_not_fit_the_model_is_refused(mobilefacenet_manifest, change, message):
    with pytest.raises(ModelError, match=message):
        load_embedder(dataclasses.replace(mobilefacenet_manifest, **change))


def test_input_size_that_does_not_fit_the_model_is_refused(mobilefacenet_manifest):
    m = mobilefacenet_manifest
    wrong = dataclasses.replace(m, input={**m.input, "size": [150, 150]},
                                align=dataclasses.replace(m.align, size=(150, 150)))
    with pytest.raises(ModelError, match="does not fit"):
        load_embedder(wrong)
