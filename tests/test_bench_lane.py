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
        {"event": "face_acquired", "t": 11.0}, {"event": "attempt_failed", "t": 11.5,  # bob: second attempt
                                                 "decision": {"outcome": "deny", "reason": "no_match", "score": 0.8}},
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


def test_why_genuine_travellers_failed_is_counted_first_attempt_and_final():
    visits = [Visit("enrolled", "ann", 0.0, 10.0), Visit("enrolled", "bob", 10.0, 20.0),
              Visit("enrolled", "cy", 20.0, 30.0, outcome="gave_up"), Visit("not_enrolled", None, 30.0, 40.0)]
    pad_doubt = {"event": "attempt_failed", "t": 1.2, "decision": {
        "outcome": "refer", "reason": "presentation_attack_suspected", "subject_id": "ann", "score": 0.95,
        "pad": {"live": 0.31}, "details": {}}}
    bodies = [
        {"event": "face_acquired", "t": 1.0}, pad_doubt, _decision(3.0, "allow", "ann"),
        {"event": "face_acquired", "t": 11.0},
        {"event": "attempt_failed", "t": 13.0, "decision": {"outcome": "refer", "reason": "low_quality",
                                                            "subject_id": None, "score": None, "pad": None,
                                                            "details": {"quality_reasons": ["pose_pitch"]}}},
        {"event": "decision", "t": 15.0, "decision": {"outcome": "deny", "reason": "no_match", "subject_id": None,
                                                      "score": 0.9012, "pad": None, "details": {}}},
        {"event": "prompt", "t": 22.0, "why": "outside_capture_zone"},  # cy never came closer
        {"event": "face_acquired", "t": 31.0},
        {"event": "decision", "t": 31.5, "decision": {"outcome": "deny", "reason": "no_match", "subject_id": None,
                                                      "score": 0.9101, "pad": None, "details": {}}},
    ]
    r = score_run(bodies, visits, max_attempts=2)
    assert r["first_attempt_failures"] == {"liveness doubt": 1, "low_quality: pose_pitch": 1,
                                           "never in the capture zone": 1}
    assert r["final_failures"] == {"no_match": 1, "never in the capture zone": 1}
    assert r["misses"][0] == {"subject_id": "bob", "attempts": ["low_quality: pose_pitch", "no_match (score 0.901)"],
                              "passenger": ""}
    assert r["pass_rate_within_attempts"] == 1 / 3 and r["stranger_best_score"] == 0.9101
    assert r["queue_per_min"] == 60 * 4 / 40


def test_other_models_need_their_own_calibration_record_and_the_margin_follows_its_scale():
    from pathlib import Path

    import pytest

    from tools.bench_lane import CALIBRATION, MIN_MARGIN, calibrated_threshold, scaled_margin
    from vision.calibrate import CalibrationError

    provisioned = Path(__file__).resolve().parents[1] / "config" / "calibration-lfw-dev-scrfd-mobilefacenet.json"
    t, why = calibrated_threshold()
    assert t == pytest.approx(0.9292, abs=1e-4) and "dlib-resnet-v1" in why
    with pytest.raises(CalibrationError, match="measured with scrfd-500m"):
        calibrated_threshold(provisioned)  # the default models with another model's record: refused
    t, why = calibrated_threshold(provisioned, detector="scrfd-500m", embedder="mobilefacenet")
    assert t == pytest.approx(0.3354, abs=1e-4) and "mobilefacenet" in why
    assert scaled_margin(CALIBRATION) == pytest.approx(MIN_MARGIN)
    # one decade of false accepts is 0.0145 on dlib's scale and 0.0713 on MobileFaceNet's
    assert scaled_margin(provisioned) == pytest.approx(MIN_MARGIN * 0.0713 / 0.0145, rel=0.01)


def test_a_stranger_matched_as_someone_who_passed_already_is_counted_apart():
    """Anti-passback stops a match of a traveller who passed earlier: no opening, but the same
    matching error as a false open, which another order of the queue would have opened."""
    visits = [Visit("enrolled", "ann", 0.0, 10.0), Visit("not_enrolled", None, 10.0, 20.0),
              Visit("enrolled", "bob", 20.0, 30.0)]
    bodies = [
        {"event": "face_acquired", "t": 1.0}, _decision(1.5, "allow", "ann"),
        {"event": "open", "t": 1.5, "opening": {"subject_id": "ann"}}, {"event": "passage_complete", "t": 3.0},
        {"event": "face_acquired", "t": 11.0}, _decision(11.5, "deny", "ann", reason="anti_passback"),
        {"event": "face_acquired", "t": 21.0}, _decision(21.5, "allow", "bob"),
        {"event": "open", "t": 21.5, "opening": {"subject_id": "bob"}},
    ]
    r = score_run(bodies, visits, max_attempts=2)
    assert r["false_opens"] == 0 and r["false_matches_stopped_by_passback"] == 1
    assert r["pass_rate_within_attempts"] == 1.0
