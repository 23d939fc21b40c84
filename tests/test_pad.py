"""Presentation-attack detection on real weights and real photos: the provisioned MiniFASNet
pair behind the real MTCNN detector, the crop rule, the multi-frame verdict and `gate-eval pad`."""
from __future__ import annotations

import io
import json
import math
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.manifest import ModelError, ModelIntegrityError, load_manifest
from models.provision import provision
from tests.paths import PAD_SAMPLES, SHARED_MODELS, require
from tools import gate_eval
from vision.detect import load_detector
from vision.image_io import ImageError, load_image
from vision.pad import (
    DEFAULT_THRESHOLD,
    CropRule,
    PadPolicy,
    PadState,
    PresentationAttackDetector,
    find_pad_manifests,
    fuse_frames,
    load_pad,
)
from vision.pad.evaluate import apcer, bpcer, pad_report, roc_auc, threshold_at_bpcer
from vision.types import Face

V2 = "2.7_80x80_MiniFASNetV2.onnx"
V1SE = "4_0_0_80x80_MiniFASNetV1SE.onnx"
SAMPLES = (("live/image_T1.jpg", "live"), ("spoof/image_F1.jpg", "spoof"), ("spoof/image_F2.jpg", "spoof"))
LICENCE = "Apache-2.0"
SOURCE = "test-only copy in ../shared/models"


@pytest.fixture(scope="module")
def pad_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pad-models")
    provision(require(SHARED_MODELS / V2), "minifasnet-v2", "minifasnet", LICENCE, SOURCE, out,
              input_overrides={"crop_scale": 2.7})
    provision(require(SHARED_MODELS / V1SE), "minifasnet-v1se", "minifasnet", LICENCE, SOURCE, out,
              input_overrides={"crop_scale": 4.0})
    return out


@pytest.fixture(scope="module")
def pad_manifests(pad_dir):
    ms = {m.name: m for m in find_pad_manifests(pad_dir)}
    return [ms["minifasnet-v2"], ms["minifasnet-v1se"]]


@pytest.fixture(scope="module")
def pad(pad_manifests):
    return load_pad(pad_manifests)


@pytest.fixture(scope="module")
def detector(mtcnn_manifest):
    return load_detector(mtcnn_manifest)


def face_at(box) -> Face:
    return Face(box=np.asarray(box, np.float32), score=0.99, landmarks=np.zeros((5, 2), np.float32))


# --- the real models on the real samples -------------------------------------------------

@pytest.mark.parametrize("rel, label", SAMPLES)
def test_samples_are_classified_at_the_default_threshold(detector, pad, rel, label):
    frame = load_image(require(PAD_SAMPLES / rel))
    faces = detector.detect(frame)
    assert len(faces) == 1, "each sample shows one face"
    s = pad.score(frame, faces[0])
    assert (s.live >= DEFAULT_THRESHOLD) == (label == "live"), f"{rel}: live {s.live:.4f}"
    assert [m.model_id for m in s.models] == ["minifasnet-v2", "minifasnet-v1se"]
    for m in s.models:
        assert math.isclose(sum(m.probabilities), 1.0, abs_tol=1e-6)
        assert m.live == pytest.approx(m.probabilities[1])  # class 1 is the live class
    assert s.live == pytest.approx(np.mean([m.live for m in s.models]))
    # the reference's own decision (argmax of the summed softmax vectors) agrees
    summed = np.sum([m.probabilities for m in s.models], axis=0)
    assert (int(np.argmax(summed)) == 1) == (label == "live")
    assert json.loads(json.dumps(s.to_dict()))["live"] == round(s.live, 4)


def test_network_input_is_the_manifests_crop_bgr_unscaled_nchw(pad):
    """What reaches each network is the box scaled about its centre, BGR, 0-255, NCHW: rebuilt
    here by hand and run on a separate ONNX Runtime session of the same file."""
    frame = cv2.resize(load_image(require(PAD_SAMPLES / "live/image_T1.jpg")), (1280, 960))
    box = (560, 380, 720, 580)  # 160x200, centre (640, 480): even x4 fits inside the frame
    for model, file in zip(pad.models, (V2, V1SE), strict=True):
        w, h = 160 * model.crop.scale, 200 * model.crop.scale
        x1, y1 = round(640 - w / 2), round(480 - h / 2)
        crop = cv2.resize(frame[y1:y1 + round(h), x1:x1 + round(w)], (80, 80), interpolation=cv2.INTER_LINEAR)
        tensor = crop.astype(np.float32).transpose(2, 0, 1)[None]
        session = ort.InferenceSession(str(SHARED_MODELS / file), providers=["CPUExecutionProvider"])
        want = session.run(None, {session.get_inputs()[0].name: tensor})[0].reshape(-1)
        got = np.asarray(model.score(frame, face_at(box)).raw)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bad_input_gets_a_clear_error(pad):
    frame = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        pad.score(frame, face_at((700, 10, 800, 100)))
    with pytest.raises(ValueError, match="positive width"):
        pad.score(frame, face_at((100, 100, 100, 200)))
    with pytest.raises(ImageError):
        pad.score("frame.jpg", face_at((100, 100, 200, 200)))
    s = pad.score(np.zeros((480, 640), np.uint8), face_at((100, 100, 200, 200)))  # grey frames are converted
    assert 0.0 <= s.live <= 1.0
    assert isinstance(pad, PresentationAttackDetector)


# --- the crop rule ---------------------------------------------------------------------

def test_crop_is_the_box_scaled_about_its_centre():
    assert CropRule(2.0, (80, 80)).region(np.array([270, 190, 370, 290]), 640, 480) == (220, 140, 420, 340)


def test_crop_near_the_edge_shifts_inside_keeping_its_size():
    rule = CropRule(2.7, (80, 80))
    assert rule.region(np.array([10, 20, 110, 120]), 640, 480) == (0, 0, 270, 270)
    assert CropRule(4.0, (80, 80)).region(np.array([600, 400, 640, 470]), 640, 480) == (480, 200, 640, 480)
    # a box cut by the frame edge (detector boxes are not clipped) still gives a crop inside it
    assert rule.region(np.array([-30, 100, 70, 200]), 640, 480) == (0, 15, 270, 285)


def test_crop_scale_shrinks_when_the_frame_is_too_small():
    # x2.7 of a 300x400 box cannot fit 640x480: the scale drops to 480/400 = 1.2, shape kept
    assert CropRule(2.7, (80, 80)).region(np.array([100, 0, 400, 400]), 640, 480) == (70, 0, 430, 480)


def test_cut_resizes_to_the_model_size():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 320:] = 255  # right half white
    crop = CropRule(2.0, (80, 60)).cut(frame, np.array([270, 190, 370, 290]))
    assert crop.shape == (60, 80, 3) and crop.dtype == np.uint8
    assert crop[:, :38].max() == 0 and crop[:, 42:].min() == 255  # the frame's x=320 lands mid-crop


@given(st.floats(0, 600), st.floats(0, 440), st.floats(4, 640), st.floats(4, 480), st.floats(0.5, 5.0))
def test_crop_stays_in_the_frame_and_holds_a_box_that_is_inside_it(x, y, w, h, scale):
    x2, y2 = min(640.0, x + w), min(480.0, y + h)
    xa, ya, xb, yb = CropRule(scale, (80, 80)).region(np.array([x, y, x2, y2]), 640, 480)
    assert 0 <= xa < xb <= 640 and 0 <= ya < yb <= 480
    if scale >= 1.0:
        assert xa <= x + 1 and ya <= y + 1 and xb >= x2 - 1 and yb >= y2 - 1


# --- manifests -------------------------------------------------------------------------

def test_the_crop_scale_comes_from_each_manifest(pad):
    assert [(m.model_id, m.crop.scale, m.crop.size) for m in pad.models] == \
        [("minifasnet-v2", 2.7, (80, 80)), ("minifasnet-v1se", 4.0, (80, 80))]


def test_provisioning_minifasnet_needs_the_crop_scale(tmp_path):
    with pytest.raises(ValueError, match="crop_scale"):
        provision(require(SHARED_MODELS / V2), "m", "minifasnet", LICENCE, SOURCE, tmp_path)


def test_a_file_that_does_not_match_its_sha256_is_refused(tmp_path):
    m = provision(require(SHARED_MODELS / V2), "minifasnet-v2", "minifasnet", LICENCE, SOURCE, tmp_path,
                  input_overrides={"crop_scale": 2.7}, copy=True)
    data = bytearray(m.file_path().read_bytes())
    data[len(data) // 2] ^= 1
    m.file_path().write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="minifasnet-v2"):
        load_pad([load_manifest(m.path)])


def test_manifests_it_cannot_run_are_refused(pad_manifests, mtcnn_manifest, tmp_path):
    d = pad_manifests[0].to_dict()
    cases = (({**d, "input": {k: v for k, v in d["input"].items() if k != "crop_scale"}}, "crop_scale"),
             ({**d, "input": {**d["input"], "crop_scale": -1}}, "positive"),
             ({**d, "extra": {"output": {"classes": ["spoof", "live"]}}}, "3 outputs"),
             ({**d, "extra": {"output": {"classes": ["spoof", "real", "spoof"]}}}, "'live'"),
             ({**d, "input": {**d["input"], "size": [112, 112]}}, "input shape"))
    for i, (bad, msg) in enumerate(cases):
        p = tmp_path / f"bad{i}.manifest.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(ModelError, match=msg):
            load_pad([load_manifest(p)])
    with pytest.raises(ModelError, match="PAD model needs kind 'pad'"):
        load_pad([mtcnn_manifest])
    with pytest.raises(ModelError, match="no PAD model"):
        load_pad([])
    with pytest.raises(ModelError, match="twice"):
        load_pad([pad_manifests[0], pad_manifests[0]])


# --- the multi-frame verdict -------------------------------------------------------------

def test_no_verdict_before_enough_frames():
    v = fuse_frames([0.01, 0.02], PadPolicy(frames=3))
    assert (v.state, v.live, v.frames) == (PadState.PENDING, None, 2)


def test_verdict_is_the_mean_of_the_last_frames_of_the_track():
    scores = [0.0, 0.0, 0.9, 0.9, 0.9]
    assert fuse_frames(scores, PadPolicy(frames=3)).live == pytest.approx(0.9)
    assert fuse_frames(scores, PadPolicy(frames=5)).live == pytest.approx(0.54)
    assert fuse_frames(scores, PadPolicy(frames=5)).state == PadState.LIVE
    assert fuse_frames(scores, PadPolicy(frames=5, threshold=0.6)).state == PadState.SPOOF
    # one unlucky frame does not refer a live person; a run of low scores does
    assert fuse_frames([0.9, 0.2, 0.9]).state == PadState.LIVE
    spoof = fuse_frames([0.3, 0.2, 0.6])
    assert spoof.state == PadState.SPOOF and spoof.to_dict()["state"] == "presentation_attack_suspected"
    assert fuse_frames([0.5, 0.5, 0.5]).state == PadState.LIVE  # at the threshold counts as live


def test_fuser_refuses_bad_scores_and_policies():
    for bad in (float("nan"), 1.5, -0.1):
        with pytest.raises(ValueError, match="probability"):
            fuse_frames([0.9, 0.9, bad])
    for kwargs in ({"threshold": 1.5}, {"threshold": float("nan")}, {"frames": 0}):
        with pytest.raises(ValueError):
            PadPolicy(**kwargs)


# --- ISO/IEC 30107-3 figures ------------------------------------------------------------

def test_error_rate_definitions():
    live, spoof = np.array([0.2, 0.6, 0.9]), np.array([0.1, 0.5, 0.6])
    assert bpcer(live, 0.6) == pytest.approx(1 / 3)  # 0.2 rejected
    assert apcer(spoof, 0.6) == pytest.approx(1 / 3)  # a score at the threshold is accepted
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.3, 0.7]), np.array([0.5])) == 0.5
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert roc_auc(np.array([0.5]), np.zeros(0)) is None


def test_threshold_at_bpcer_is_the_strictest_that_meets_the_target():
    live = np.linspace(0.01, 1.0, 100)
    t = threshold_at_bpcer(live, 0.05)
    assert bpcer(live, t) <= 0.05 < bpcer(live, t + 1e-9)
    assert threshold_at_bpcer(np.array([0.7]), 0.05) == 0.7  # one sample: none may be rejected


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """A tiny labelled capture folder: the three samples, two attack species, a face-less live
    frame and an unreadable file."""
    root = tmp_path_factory.mktemp("captures")
    for sub in ("live", "spoof/print", "spoof/replay"):
        (root / sub).mkdir(parents=True)
    shutil.copy(require(PAD_SAMPLES / "live/image_T1.jpg"), root / "live")
    shutil.copy(PAD_SAMPLES / "spoof/image_F1.jpg", root / "spoof/print")
    shutil.copy(PAD_SAMPLES / "spoof/image_F2.jpg", root / "spoof/replay")
    cv2.imwrite(str(root / "live/empty_corridor.png"), np.full((480, 640, 3), 90, np.uint8))
    (root / "spoof/broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def test_eval_report_on_labelled_captures(detector, pad, labelled):
    r = pad_report(detector, pad, labelled, DEFAULT_THRESHOLD)
    assert (r["images"], r["live"], r["spoof"]) == (5, 1, 2)
    assert r["no_face"] == {"live": 1, "spoof": 0} and r["unreadable"] == 1
    assert (r["apcer"], r["bpcer"], r["apcer_at_bpcer_0.05"], r["auc"]) == (0.0, 0.0, 0.0, 1.0)
    assert r["apcer_per_species"] == {"print": 0.0, "replay": 0.0}
    rows = {row["image"]: row for row in r["per_image"]}
    assert rows["live/empty_corridor.png"]["face"] is False
    assert "not a decodable image" in rows["spoof/broken.jpg"]["error"]
    assert all(row["correct"] for row in rows.values() if row["face"])
    assert r["threshold_at_bpcer_0.05"] == rows["live/image_T1.jpg"]["live"]

    # at the print's own score the print is accepted: APCER is the worst species, not the mean
    print_score = rows["spoof/print/image_F1.jpg"]["live"]
    r = pad_report(detector, pad, labelled, print_score)
    assert r["apcer_per_species"] == {"print": 1.0, "replay": 0.0} and r["apcer"] == 1.0 and r["bpcer"] == 0.0


def test_gate_eval_pad_cli(mtcnn_manifest, pad_dir, labelled, tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        rc = gate_eval.main(["pad", "--images", str(labelled), "--models", str(pad_dir), "--detector",
                             str(mtcnn_manifest.path), "--pad", "minifasnet-v2", "--pad", "minifasnet-v1se",
                             "--json"])
    assert rc == 0
    r = json.loads(out.getvalue())
    assert r["pad"] == "minifasnet-v2+minifasnet-v1se"
    assert (r["apcer"], r["bpcer"], r["auc"], r["no_face"]["live"]) == (0.0, 0.0, 1.0, 1)
    assert len(r["per_image"]) == 5
    (tmp_path / "live").mkdir()  # no spoof/ folder: a clear error, no traceback
    assert gate_eval.main(["pad", "--images", str(tmp_path), "--models", str(pad_dir), "--detector",
                           str(mtcnn_manifest.path), "--quiet"]) == 2
