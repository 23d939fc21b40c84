"""The staff wording of audit records: one line, labels not code names, no invented figures."""
from gate.event_text import event_line, label


def test_a_refusal_shows_the_best_score_and_no_name():
    line = event_line({"seq": 7, "ts": "2026-12-02T06:12:03.000001Z", "lane": "L1", "event": "decision",
                       "from": "acquiring", "to": "decided",
                       "decision": {"outcome": "deny", "reason": "no_match", "subject_id": None, "score": 0.8123,
                                    "pad": "not provisioned", "details": {}}})
    assert line == "06:12:03 #7 L1 decision: DENY no match (best score 0.812)  [acquiring → decided]"


def test_no_score_is_shown_where_there_is_none_and_unknown_codes_stay_readable():
    line = event_line({"seq": 1, "ts": "2026-12-02T06:12:03Z", "lane": "L1", "event": "decision",
                       "decision": {"outcome": "refer", "reason": "token_unknown", "subject_id": None, "score": None}})
    assert "score" not in line and "document of nobody enrolled" in line
    assert label("some_new_code") == "some new code"


def test_an_attempt_lost_without_a_decision_says_why():
    line = event_line({"seq": 3, "ts": "2026-12-02T06:12:03Z", "lane": "L1", "event": "face_lost",
                       "from": "acquiring", "to": "idle",
                       "unserved": {"why": "too_few_quality_frames", "quality_frames": 1, "needed": 3,
                                    "quality_reasons": ["blurred"]}})
    assert "face lost without a decision: too few good frames (1 of 3 good frames; blurred)" in line


def test_a_prompt_says_what_the_passenger_was_told_and_why():
    line = event_line({"seq": 4, "ts": "2026-12-02T06:12:04Z", "lane": "L1", "event": "prompt", "from": "idle",
                       "to": "idle", "why": "outside_capture_zone", "face_px": 131.6, "capture_min_face_px": 150.0,
                       "prompt": "Please step closer"})
    assert line == ("06:12:04 #4 L1 passenger told 'Please step closer' (stood outside the capture zone "
                    "(face 132 px, zone from 150 px))")
    line = event_line({"seq": 5, "ts": "2026-12-02T06:12:05Z", "lane": "L1", "event": "prompt",
                       "from": "acquiring", "to": "acquiring", "why": "low_quality",
                       "quality_reasons": ["pose_pitch"], "prompt": "Look at the camera"})
    assert line.endswith("passenger told 'Look at the camera' (poor image quality: head tilted)")
