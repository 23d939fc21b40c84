"""How `gate-bench lane` scores a run from its audit records (the runs themselves are the benchmark)."""
from tools.bench_lane import Visit, score_run


def _decision(t, outcome, subject=None, reason="match"):
    return {"event": "decision", "t": t, "decision": {"outcome": outcome, "reason": reason, "subject_id": subject}}


def test_first_attempt_and_within_attempts_pass_rates_transaction_time_and_false_opens():
    visits = [Visit("enrolled", "ann", 0.0, 10.0), Visit("enrolled", "bob", 10.0, 20.0),
              Visit("not_enrolled", None, 20.0, 30.0), Visit("enrolled", "cy", 30.0, 40.0)]
    bodies = [
        {"event": "face_acquired", "t": 1.0}, _decision(1.5, "allow", "ann"),
        {"event": "open", "t": 1.5, "opening": {"subject_id": "ann"}}, {"event": "passage_complete", "t": 3.0},
        {"event": "face_acquired", "t": 11.0}, {"event": "attempt_failed", "t": 11.5},  # bob: second attempt
        _decision(12.0, "allow", "bob"), {"event": "open", "t": 12.0, "opening": {"subject_id": "bob"}},
        {"event": "passage_complete", "t": 14.0},
        {"event": "face_acquired", "t": 21.0}, _decision(21.5, "allow", "ann"),  # a stranger taken for ann
        {"event": "open", "t": 21.5, "opening": {"subject_id": "ann"}}, {"event": "passage_complete", "t": 23.0},
        {"event": "face_acquired", "t": 31.0}, {"event": "face_lost", "t": 33.0,
                                                 "unserved": {"why": "too_few_quality_frames"}},
    ]
    r = score_run(bodies, visits, max_attempts=2)
    assert r["genuine"] == 3 and r["first_attempt_pass_rate"] == 1 / 3 and r["pass_rate_within_attempts"] == 2 / 3
    assert r["transaction_s_median"] == 2.5 and r["false_opens"] == 1 and r["retry_prompts"] == 1
    assert r["unserved"] == {"too_few_quality_frames": 1}
    assert r["throughput_per_min"] == 60 / 2.5
