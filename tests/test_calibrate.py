"""Calibration records: the Clopper–Pearson bound, the rule of three, the threshold rule, and a
record computed from real photos with the real default models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.paths import LFW_IMAGES, require
from vision import calibrate as cal


def test_upper_bound_shrinks_with_more_impostors():
    # the same empirical FAR (0.1 %) on more impostor comparisons gives a tighter bound
    bounds = [cal.cp_upper(n // 1000, n) for n in (3_000, 30_000, 300_000, 3_000_000)]
    assert all(b > 1e-3 for b in bounds)
    assert all(a > b for a, b in zip(bounds, bounds[1:], strict=False))
    # zero false accepts: the bound falls as ~3/n (the rule of three)
    zero = [cal.cp_upper(0, n) for n in (300, 3_000, 30_000)]
    assert all(a > b for a, b in zip(zero, zero[1:], strict=False))
    for n, b in zip((300, 3_000, 30_000), zero, strict=True):
        assert 2.9 / n < b < 3.0 / n


@pytest.mark.parametrize("k,n", [(0, 3000), (3, 3000), (7, 760), (120, 700_000), (0, 1)])
def test_bisection_equals_scipy(k, n):
    """Without scipy the bound comes from bisection on the binomial CDF; both must agree."""
    pytest.importorskip("scipy")
    assert cal.cp_upper(k, n, use_scipy=False) == pytest.approx(cal.cp_upper(k, n), rel=1e-6, abs=1e-12)
    lo, hi = cal.cp_interval(k, n, use_scipy=False)
    slo, shi = cal.cp_interval(k, n)
    assert (lo, hi) == pytest.approx((slo, shi), rel=1e-6, abs=1e-12)


def test_rule_of_three_refuses_unsupported_far():
    assert cal.min_impostors(1e-3) == 3_000
    assert cal.min_impostors(1e-4) == 30_000
    rng = np.random.default_rng(0)
    genuine = rng.normal(0.95, 0.02, 500)
    short = cal.operating_point(genuine, rng.normal(0.8, 0.05, 2_999), 1e-3)
    assert not short.supported and short.threshold is None
    assert "3000" in short.refused and "2999" in short.refused
    enough = cal.operating_point(genuine, rng.normal(0.8, 0.05, 3_000), 1e-3)
    assert enough.supported
    record = cal.calibrate(genuine, rng.normal(0.8, 0.05, 5_000), [1e-3, 1e-4], description="synthetic",
                           data={}, models={"embedder": "e", "detector": "d"})
    assert record.point("1:1", 1e-3).supported
    with pytest.raises(cal.CalibrationError, match="refused.*30000"):
        record.point("1:1", 1e-4)
    with pytest.raises(cal.CalibrationError, match="no 1:1 operating point at FAR 0.01"):
        record.point("1:1", 1e-2)


def test_threshold_is_smallest_whose_far_bound_is_at_most_target():
    """FAR <= target with 95 % confidence: the bound at the threshold is within the target, and
    one more false accept (the next impostor below the threshold) would break it."""
    rng = np.random.default_rng(1)
    imp = rng.normal(0.8, 0.05, 10_000)
    p = cal.operating_point(rng.normal(0.95, 0.02, 100), imp, 1e-3)
    assert p.false_accepts == (imp >= p.threshold).sum() < 10  # fewer than the empirical rule's 10
    assert p.rate_upper <= 1e-3 < cal.cp_upper(p.false_accepts + 1, len(imp))
    lower = np.sort(imp)[::-1][p.false_accepts]  # the next impostor below the threshold
    assert (imp >= lower).sum() == p.false_accepts + 1
    assert p.rate_upper > p.rate


def test_allowed_false_accepts_meets_the_rule_of_three():
    assert cal.allowed_false_accepts(2_900, 1e-3) == -1  # not even zero false accepts bound 1e-3
    assert cal.allowed_false_accepts(3_000, 1e-3) == 0
    assert cal.allowed_false_accepts(30_000, 1e-3) == 20  # Clopper-Pearson at 95 %: 20/30000 -> 9.7e-4
    for n in (3_000, 50_000, 2_000_000):
        k = cal.allowed_false_accepts(n, 1e-3)
        assert cal.cp_upper(k, n) <= 1e-3 < cal.cp_upper(k + 1, n)


def test_record_needs_a_description():
    with pytest.raises(cal.CalibrationError, match="description"):
        cal.calibrate(np.ones(3), np.zeros(3), [0.5], description=" ", data={}, models={})


def test_calibrate_cli_on_real_photos(tmp_path, capsys):
    """40 real LFW photos through the default models: a record with 1:1 FAR 1e-2 stated, 1e-3
    refused for want of impostors, readable back by the gate."""
    from tools.gate_eval import main

    require(LFW_IMAGES)
    out = tmp_path / "record.json"
    rc = main(["calibrate", "--images", str(LFW_IMAGES), "--max-images", "40", "--min-face", "40", "--quiet",
               "--description", "LFW dev sample: news photos, not this site's camera", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    rec = cal.load_record(out)
    assert rec.embedder == "dlib-resnet-v1" and rec.detector == "mtcnn-v1"
    assert rec.data["kind"] == "identities" and rec.data["images"] == 40
    assert not rec.data["source"].startswith("/") and rec.data["source"].endswith("lfw-dev/images")
    n = rec.data["impostor_comparisons"]
    assert 700 < n <= 40 * 39 // 2
    p = rec.point("1:1", 1e-2)
    assert -1 <= p.threshold <= 1 and p.impostor_comparisons == n and p.rate <= 1e-2
    with pytest.raises(cal.CalibrationError, match="rule of three"):
        rec.point("1:1", 1e-3)
    assert "LFW dev sample" in rec.summary("1:1", 1e-2)
    raw = json.loads(out.read_text())
    assert raw["format"] == cal.FORMAT and "rule of three" in raw["rule"]


def test_malformed_record_is_one_line(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(cal.CalibrationError, match="not JSON"):
        cal.load_record(bad)
    bad.write_text('{"format": "other"}')
    with pytest.raises(cal.CalibrationError, match="not a calibration record"):
        cal.load_record(bad)
    with pytest.raises(cal.CalibrationError, match="cannot read"):
        cal.load_record(tmp_path / "missing.json")


# ---------------------------------------------------------------- gate-eval verify: the 1:1 reference check

def test_reference_scores_pair_each_probe_with_every_reference():
    """Person a: reference + 2 probes, b: reference + 1 probe, c: reference only (an ID photo with
    no live capture): every probe meets its own reference once and every other person's once."""
    rng = np.random.default_rng(3)
    vecs = [v / np.linalg.norm(v) for v in rng.normal(size=(6, 8)).astype(np.float32)]
    labels = ["a", "a", "a", "b", "b", "c"]
    gen, imp, refs = cal.reference_scores(list(vecs), labels)
    assert refs == 3 and len(gen) == 3 and len(imp) == 3 * 2
    assert gen[0] == pytest.approx(float(vecs[1] @ vecs[0]), abs=1e-6)
    assert sorted(imp[:2]) == pytest.approx(sorted([float(vecs[1] @ vecs[3]), float(vecs[1] @ vecs[5])]), abs=1e-6)
    gen, imp, _ = cal.reference_scores([vecs[0], None, vecs[2], vecs[3], vecs[4], vecs[5]], labels)
    assert gen[0] == -1.0 and len(imp) == 2 * 2  # a probe without a face: a miss, no impostor comparisons


@pytest.fixture(scope="module")
def lfw_reference_sample(default_pipeline):
    """Up to 3 photos each of 120 LFW images' people, embedded once by the default pipeline."""
    require(LFW_IMAGES)
    sample = cal.sample_identities(LFW_IMAGES, max_images=120, per_identity=3, seed=1)
    from vision.evaluate import embed_images

    templates = embed_images(default_pipeline, sample.images)
    return [templates.get(p) for p in sample.images], sample.labels


def test_fmr_bound_tightens_with_more_impostors_on_real_photos(lfw_reference_sample):
    """The same check on half the people and on all of them: with more impostor comparisons the
    confidence interval on the FMR shrinks (its upper bound closes in on the measured rate), so
    the threshold may let the measured rate come closer to the target."""
    templates, labels = lfw_reference_sample
    people = list(dict.fromkeys(labels))
    half = set(people[: len(people) // 2])
    idx = [i for i, lab in enumerate(labels) if lab in half]
    small = cal.reference_scores([templates[i] for i in idx], [labels[i] for i in idx])
    full = cal.reference_scores(templates, labels)
    assert len(full[1]) > 3 * len(small[1]) >= 3 * 300
    p_small = cal.operating_point(small[0], small[1], 1e-2)
    p_full = cal.operating_point(full[0], full[1], 1e-2)
    assert p_small.supported and p_full.supported
    assert p_full.rate_upper - p_full.rate < p_small.rate_upper - p_small.rate
    assert p_small.rate < p_full.rate < p_full.rate_upper <= 1e-2 and p_small.rate_upper <= 1e-2


def test_verify_cli_states_fnmr_with_interval_and_refuses_unsupported_fmr(tmp_path, capsys):
    """40 real photos: FNMR at FMR 1e-2 comes with its interval and impostor count; 1e-3 and 1e-4
    need 3,000 and 30,000 impostor comparisons and are refused (exit 1), and the record written
    says so to a kiosk config that asks for them."""
    from configschema import ConfigError
    from tools.gate_eval import main

    require(LFW_IMAGES)
    out = tmp_path / "verify.json"
    rc = main(["verify", "--images", str(LFW_IMAGES), "--max-images", "40", "--min-face", "40", "--quiet",
               "--fmr", "1e-2", "--fmr", "1e-3", "--fmr", "1e-4", "--json", "--out", str(out),
               "--description", "LFW dev sample: news photos, not this site's camera"])
    r = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert r["check"] == "1:1 reference" and r["data"]["kind"] == "references"
    n = r["impostor_comparisons"]
    assert 0 < n < 3_000
    stated, *refused = r["points"]
    assert stated["supported"] and stated["impostor_comparisons"] == n
    lo, hi = stated["miss_interval"]
    assert lo <= stated["miss_rate"] <= hi and hi - lo > 0
    assert [p["supported"] for p in refused] == [False, False]
    assert "3000" in refused[0]["refused"] and "30000" in refused[1]["refused"]
    rec = cal.load_record(out)
    resolver = cal.RecordResolver(tmp_path)
    assert resolver(cal.RecordRef(record=out, far=1e-2), "verify.threshold_1to1", {}) == stated["threshold"]
    with pytest.raises(ConfigError, match="verify.threshold_1to1: .*refused.*30000"):
        resolver(cal.RecordRef(record=out, far=1e-4), "verify.threshold_1to1", {})
    assert rec.data["references"] > 0


def test_verify_cli_text_names_the_impostor_count(capsys):
    from tools.gate_eval import main

    require(LFW_IMAGES)
    assert main(["verify", "--images", str(LFW_IMAGES), "--max-images", "40", "--min-face", "40", "--quiet",
                 "--fmr", "1e-2"]) == 0
    out = capsys.readouterr().out
    assert "FMR 0.01: FNMR" in out and "impostor comparisons (FMR upper bound" in out
