"""gate-bench kiosk runs end to end on real photos against a real central and reports figures."""
import json

from tests.paths import LFW_IMAGES, require
from tools import gate_bench


def test_kiosk_bench_reports_times(capsys):
    import os

    models = os.environ.get("EDGEGATE_MODEL_DIR")
    args = ["kiosk", "--images", str(require(LFW_IMAGES)), "--travellers", "2", "--frames-needed", "3", "--json"]
    if models:
        args += ["--models", models]
    assert gate_bench.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["timed"] >= 1 and r["outcomes"].get("enrolled", 0) == r["timed"]
    assert 0 < r["face_to_ack_s_median"] <= r["face_to_lane_match_s_median"] < 10
