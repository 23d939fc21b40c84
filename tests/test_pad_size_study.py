"""tools.pad_size_study's rules on a walk-up whose scores are known."""
from tools.pad_size_study import judge, summarise

WALK = [{"t": 1.4, "px": 150.0, "live": 0.2}, {"t": 1.47, "px": 160.0, "live": 0.3},
        {"t": 1.53, "px": 165.0, "live": None},  # failed quality: not judged
        {"t": 1.6, "px": 175.0, "live": 0.9}, {"t": 1.67, "px": 180.0, "live": 0.9},
        {"t": 1.73, "px": 185.0, "live": 0.9}, {"t": 2.1, "px": 186.0, "live": 0.1}]


def test_each_rule_judges_its_own_frames():
    assert judge(WALK, 150.0, 0.0, 3) == (True, 1.6)  # 0.2, 0.3, 0.9: doubted as soon as in the zone
    assert judge(WALK, 170.0, 0.0, 3) == (False, 1.73)  # the larger faces only
    assert judge(WALK, 190.0, 0.0, 3) is None  # never that large: no verdict
    assert judge(WALK, 150.0, 2.0, 1) == (True, 2.1)  # standing, after the walk-in
    r = summarise({"a": WALK, "b": WALK[3:]})
    first = r["rules"][0]
    assert (first["people"], first["judged"], first["doubted"]) == (2, 2, 1)
    band = next(b for b in r["bands"] if b["px"] == [150, 170])
    assert (band["people"], band["doubted"]) == (1, 1)
