"""gate-eval on real LFW photos with the built default models: the JSON each command promises,
leave-one-fold-out thresholds, and the 1:N matcher agreeing with exact float32 search on every
probe. Small subsets, so this checks the commands, not the accuracy (docs/accuracy.md)."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from tests.paths import LFW_IMAGES, LFW_PAIRS, lfw_people, require
from tools import gate_eval


def _run(capsys, argv: list[str]) -> tuple[int, dict]:
    rc = gate_eval.main(argv)
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture
def model_args(mtcnn_manifest, dlib_resnet_manifest) -> list[str]:
    return ["--detector", str(mtcnn_manifest.path), "--embedder", str(dlib_resnet_manifest.path),
            "--min-face", "40", "--json", "--quiet"]


def _small_pairs(tmp_path, per_fold: int = 12) -> str:
    """The first `per_fold` same and different lines of folds 1 and 2 of the real pairs file."""
    lines = require(LFW_PAIRS).read_text().splitlines()
    n = int(lines[0].split()[1])
    out = [f"2 {per_fold}"]
    for fold in range(2):
        body = lines[1 + 2 * n * fold: 1 + 2 * n * (fold + 1)]
        out += body[:per_fold] + body[n:n + per_fold]
    p = tmp_path / "pairs.txt"
    p.write_text("\n".join(out) + "\n")
    return str(p)


def test_lfw_verification_json(tmp_path, capsys, model_args):
    rc, r = _run(capsys, ["lfw", "--images", str(require(LFW_IMAGES)), "--pairs", _small_pairs(tmp_path),
                          "--flip", *model_args])
    assert rc == 0
    assert r["pairs"] == 48 and r["no_face"] == 0
    for key in ("accuracy_mean", "accuracy_std", "tar_at_far_1e-3", "threshold"):
        assert key in r
    assert len(r["fold_accuracies"]) == 2
    # 48 easy-to-middling pairs: a broken pipeline scores ~0.5
    assert r["accuracy_mean"] >= 0.9
    assert 0.5 < r["threshold"] < 1.0


def test_ident_agrees_with_exact_search_and_saves_templates(tmp_path, capsys, model_args):
    people = tmp_path / "people"
    people.mkdir()
    singles = [d for d in lfw_people(60) if len(list(d.glob("*.jpg"))) == 1][:8]  # never enrolled: impostors
    for d in lfw_people(14, min_images=2) + singles:
        (people / d.name).symlink_to(d)
    saved = tmp_path / "templates.npz"
    rc, r = _run(capsys, ["ident", "--images", str(people), "--save-templates", str(saved), *model_args])
    assert rc == 0
    assert r["exact_decision_changes"] == 0
    assert r["gallery"] == 14 and r["genuine_probes"] > 14
    assert r["impostor_probes"] >= 1
    for key in ("rank1", "fnir_at_fpir_0.003", "fnir_at_fpir_0.01"):
        assert 0.0 <= r[key] <= 1.0
    assert r["rank1"] >= 0.8
    z = np.load(saved)
    assert z["vectors"].shape == (r["templates_saved"], 128)
    assert set(z["labels"]) <= {p.name for p in people.iterdir()}
    np.testing.assert_allclose(np.linalg.norm(z["vectors"], axis=1), 1.0, atol=1e-5)
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
