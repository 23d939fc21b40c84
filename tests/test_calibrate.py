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


def test_threshold_is_smallest_with_far_at_most_target():
    rng = np.random.default_rng(1)
    imp = rng.normal(0.8, 0.05, 10_000)
    p = cal.operating_point(rng.normal(0.95, 0.02, 100), imp, 1e-3)
    assert p.false_accepts == (imp >= p.threshold).sum() <= 10
    lower = np.sort(imp)[::-1][p.false_accepts]  # the next impostor below the threshold
    assert (imp >= lower).sum() > 10
    assert p.rate_upper > p.rate


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
