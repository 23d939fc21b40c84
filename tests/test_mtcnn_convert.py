"""The MTCNN converter against an independent numpy implementation of the wheel's networks.

The reference below follows mtcnn/network/*.py layer by layer in Keras' own layout (NHWC,
HWIO kernels, PReLU shared over H and W, Permute((2, 1, 3)) before Flatten) and reads the
wheel's weight list directly, sharing nothing with models/mtcnn.py. Agreement to float
rounding on real face crops means every transpose and permutation in the converter is
right; the control test shows a wrong flatten order would be caught.
"""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from models import mtcnn
from models.manifest import load_manifest
from tests.paths import lfw_people

TOLERANCE = 2e-4  # float32 graph vs float64 reference


# --- reference layers (Keras semantics, float64) ---------------------------------------

def conv(x, kernel, bias):
    kh, kw = kernel.shape[:2]
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3])) + bias
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + ho, j:j + wo, :] @ kernel[i, j]
    return out


def prelu(x, alpha):
    return np.where(x > 0, x, x * alpha.reshape(-1))


def maxpool(x, k, s, same):
    n, h, w, c = x.shape
    if same:  # TensorFlow: output ceil(n / s), padding split with the extra cell at the end
        oh, ow = -(-h // s), -(-w // s)
        ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=-np.inf)
    else:
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((n, oh, ow, c), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :])
    return out


def dense(x, kernel, bias):
    return x @ kernel + bias


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def keras_flatten(x, permute=True):
    """Permute((2, 1, 3)) then Flatten, as R-Net and O-Net do."""
    if permute:
        x = x.transpose(0, 2, 1, 3)
    return x.reshape(x.shape[0], -1)


def ref_pnet(w, x):
    x = prelu(conv(x, w[0], w[1]), w[2])
    x = maxpool(x, 2, 2, True)
    x = prelu(conv(x, w[3], w[4]), w[5])
    x = prelu(conv(x, w[6], w[7]), w[8])
    return {"reg": conv(x, w[9], w[10]), "prob": softmax(conv(x, w[11], w[12]))}


def ref_rnet(w, x, permute=True):
    x = maxpool(prelu(conv(x, w[0], w[1]), w[2]), 3, 2, True)
    x = maxpool(prelu(conv(x, w[3], w[4]), w[5]), 3, 2, False)
    x = prelu(conv(x, w[6], w[7]), w[8])
    x = prelu(dense(keras_flatten(x, permute), w[9], w[10]), w[11])
    return {"reg": dense(x, w[12], w[13]), "prob": softmax(dense(x, w[14], w[15]))}


def ref_onet(w, x, permute=True):
    x = maxpool(prelu(conv(x, w[0], w[1]), w[2]), 3, 2, True)
    x = maxpool(prelu(conv(x, w[3], w[4]), w[5]), 3, 2, False)
    x = maxpool(prelu(conv(x, w[6], w[7]), w[8]), 2, 2, True)
    x = prelu(conv(x, w[9], w[10]), w[11])
    x = prelu(dense(keras_flatten(x, permute), w[12], w[13]), w[14])
    return {"reg": dense(x, w[15], w[16]), "landmarks": dense(x, w[17], w[18]),
            "prob": softmax(dense(x, w[19], w[20]))}


# --- real inputs -------------------------------------------------------------------------

def normalised_rgb(bgr):
    """The wheel's input convention: RGB, (x - 127.5) / 128, NHWC."""
    return ((bgr[..., ::-1].astype(np.float64) - 127.5) / 128)[None]


@pytest.fixture(scope="module")
def photos():
    return [cv2.imread(str(sorted(p.glob("*.jpg"))[0])) for p in lfw_people(6)]


def face_crops(photos, size):
    """Square crops around the face of LFW's centred portraits, area-resized to `size`."""
    crops = [cv2.resize(p[62:192, 60:190], (size, size), interpolation=cv2.INTER_AREA) for p in photos]
    return np.concatenate([normalised_rgb(c) for c in crops])


def run(session_bytes, x_nhwc):
    s = ort.InferenceSession(session_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    outs = s.run(None, {"input": x_nhwc.transpose(0, 3, 1, 2).astype(np.float32)})
    return dict(zip(names, outs, strict=True))


def max_error(got, want, nchw=False):
    return max(float(np.abs(got[k] - (want[k].transpose(0, 3, 1, 2) if nchw else want[k])).max()) for k in want)


# --- tests -------------------------------------------------------------------------------

def test_pnet_matches_reference_on_odd_and_even_sizes(mtcnn_manifest, photos):
    weights = mtcnn.load_source_weights("pnet")
    model = mtcnn_manifest.read_verified("pnet")
    for photo, size in zip(photos, [(97, 83), (64, 64), (125, 125), (51, 38)], strict=False):  # first four photos
        x = normalised_rgb(cv2.resize(photo, size, interpolation=cv2.INTER_AREA))
        err = max_error(run(model, x), ref_pnet(weights, x), nchw=True)
        assert err < TOLERANCE, f"P-Net on {size}: max abs error {err}"


def test_rnet_and_onet_match_reference_on_face_crops(mtcnn_manifest, photos):
    for role, ref, size in (("rnet", ref_rnet, 24), ("onet", ref_onet, 48)):
        weights = mtcnn.load_source_weights(role)
        x = face_crops(photos, size)
        got = run(mtcnn_manifest.read_verified(role), x)
        err = max_error(got, ref(weights, x))
        assert err < TOLERANCE, f"{role}: max abs error {err}"
        assert got["prob"][:, 1].min() > 0.9, f"{role} does not see the faces: {got['prob'][:, 1]}"


def test_wrong_flatten_order_would_be_caught(mtcnn_manifest, photos):
    """Control: forgetting Keras' Permute before Flatten changes O-Net's output a lot."""
    weights = mtcnn.load_source_weights("onet")
    x = face_crops(photos, 48)
    got = run(mtcnn_manifest.read_verified("onet"), x)
    assert max_error(got, ref_onet(weights, x, permute=False)) > 100 * TOLERANCE


def test_onet_landmarks_are_image_left_eye_first(mtcnn_manifest, photos):
    got = run(mtcnn_manifest.read_verified("onet"), face_crops(photos, 48))
    xs, ys = got["landmarks"][:, 0:5], got["landmarks"][:, 5:10]
    assert (xs[:, 0] < xs[:, 1]).all() and (xs[:, 3] < xs[:, 4]).all()
    assert (ys[:, 0:2].max(axis=1) < ys[:, 3:5].min(axis=1)).all(), "eyes must be above the mouth"


def test_rebuild_is_byte_identical_and_manifest_is_complete(tmp_path):
    stages = []
    first = mtcnn.build(tmp_path / "a", progress=lambda stage, done, total: stages.append((stage, done, total)))
    second = mtcnn.build(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["mtcnn-v1-onet.onnx", "mtcnn-v1-pnet.onnx", "mtcnn-v1-rnet.onnx", "mtcnn-v1.manifest.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert stages[-1] == ("write manifest", 3, 3) and [s[1] for s in stages] == [0, 1, 2, 3]

    m = load_manifest(first.path)
    assert m.to_dict() == second.to_dict()
    assert (m.name, m.kind, m.format, m.licence) == ("mtcnn-v1", "detector", "mtcnn", "MIT")
    assert set(m.files) == {"pnet", "rnet", "onet"} and m.verify() == []
    assert m.source["package"] == "mtcnn" and m.source["version"] == mtcnn.source_version()
    assert m.input["colour"] == "RGB" and m.input["normalise"] == "(x - 127.5) / 128"
    for role, digest in m.source["weights_sha256"].items():
        src = mtcnn.source_weights_path(role.removesuffix(".lz4"))
        assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
