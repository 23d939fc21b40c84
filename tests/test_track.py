"""Face tracking across frames and the observation types it consumes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from configschema import ConfigError
from gate.observation import Candidate, FaceObservation, FrameObservation, ListType
from gate.track import TrackPolicy, follow, in_capture_zone, iou, restart, tailgate_ratio

POLICY = TrackPolicy(iou_min=0.3, lost_after_s=1.0, capture_min_face_px=80.0)


def face(box=(100, 100, 220, 240), ok=True, matches=(("alice", 0.8),), det=0.9, verify=None, reasons=()):
    cands = None if matches is None else tuple(Candidate(s, sc, ListType.ALLOW) for s, sc in matches)
    return FaceObservation(box=box, detector_score=det, quality_ok=ok, quality_reasons=reasons,
                           matches=cands, verify_score=verify)


def test_iou_known_values():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges share no area
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (2, 2, 8, 8)) == pytest.approx(36 / 100)


coord = st.floats(min_value=0, max_value=1000, allow_nan=False)
extent = st.floats(min_value=1, max_value=500, allow_nan=False)
boxes = st.builds(lambda x, y, w, h: (x, y, x + w, y + h), coord, coord, extent, extent)


@given(boxes, boxes)
def test_iou_is_symmetric_bounded_and_one_on_itself(a, b):
    v = iou(a, b)
    assert 0.0 <= v <= 1.0 + 1e-12
    assert v == pytest.approx(iou(b, a))
    assert iou(a, a) == pytest.approx(1.0)


def test_follow_keeps_the_track_while_boxes_overlap_and_starts_a_new_one_on_a_jump():
    t1 = follow(None, face((100, 100, 220, 240)), 1.0, new_id=7, policy=POLICY, window_s=3.0)
    assert (t1.track_id, t1.started_t, t1.frames, len(t1.samples)) == (7, 1.0, 1, 1)
    t2 = follow(t1, face((110, 105, 230, 245)), 1.1, new_id=8, policy=POLICY, window_s=3.0)
    assert (t2.track_id, t2.started_t, t2.frames, len(t2.samples)) == (7, 1.0, 2, 2)
    assert t2.last_seen_t == 1.1 and t2.box == (110, 105, 230, 245)
    # someone else stepped in front: the evidence of the first person must not carry over
    t3 = follow(t2, face((500, 100, 620, 240)), 1.2, new_id=8, policy=POLICY, window_s=3.0)
    assert (t3.track_id, t3.started_t, t3.frames, len(t3.samples)) == (8, 1.2, 1, 1)


def test_only_scored_quality_passing_faces_become_samples_and_bad_quality_is_counted():
    t = follow(None, face(ok=False, matches=None, reasons=("blurred",)), 0.0, 1, POLICY, 3.0)
    t = follow(t, face(ok=False, matches=None, reasons=("pose_yaw",)), 0.1, 1, POLICY, 3.0)
    assert t.samples == () and t.low_quality_streak == 2 and t.last_quality_reasons == ("pose_yaw",)
    t = follow(t, face(ok=True, matches=None), 0.2, 1, POLICY, 3.0)  # passed quality, not searched
    assert t.samples == () and t.low_quality_streak == 2
    t = follow(t, face(ok=True, matches=()), 0.3, 1, POLICY, 3.0)  # searched an empty gallery
    assert len(t.samples) == 1 and t.samples[0].matches == () and t.low_quality_streak == 0
    t = follow(t, face(ok=True, matches=None, verify=0.6), 0.4, 1, POLICY, 3.0)  # 1:1 verification
    assert t.samples[-1].verify_score == 0.6 and t.samples[-1].matches is None


def test_samples_older_than_the_window_are_dropped():
    t = None
    for i in range(10):
        t = follow(t, face(), i * 0.5, 1, POLICY, window_s=1.0)
    assert [s.t for s in t.samples] == [3.5, 4.0, 4.5]


def test_restart_keeps_the_person_but_drops_the_evidence():
    t = follow(follow(None, face(), 0.0, 3, POLICY, 3.0), face(ok=False, matches=None, reasons=("blurred",)),
               0.1, 3, POLICY, 3.0)
    r = restart(t, 2.0)
    assert (r.track_id, r.box, r.started_t, r.samples, r.low_quality_streak) == (3, t.box, 2.0, (), 0)


def test_tailgate_ratio_compares_linear_sizes():
    primary = face((0, 0, 100, 100))
    assert tailgate_ratio(FrameObservation(0.0, primary)) is None
    assert tailgate_ratio(FrameObservation(0.0)) is None
    frame = FrameObservation(0.0, primary, others=(face((200, 0, 240, 40)), face((300, 0, 370, 70))))
    assert tailgate_ratio(frame) == pytest.approx(0.7)
    # a non-square box: size is the geometric mean of width and height
    assert face((0, 0, 50, 200)).size == pytest.approx(100.0)


def test_capture_zone_is_a_minimum_linear_size():
    assert in_capture_zone(face((0, 0, 80, 80)), POLICY)
    assert not in_capture_zone(face((0, 0, 79, 80)), POLICY)
    assert not in_capture_zone(None, POLICY)


def test_observations_accept_numpy_boxes_and_refuse_bad_input():
    f = face(box=np.array([1, 2, 3, 4], dtype=np.float32))
    assert f.box == (1.0, 2.0, 3.0, 4.0) and all(type(v) is float for v in f.box)
    with pytest.raises(ValueError, match="4 numbers"):
        face(box=(1, 2, 3))
    with pytest.raises(ValueError, match="empty"):
        face(box=(10, 10, 5, 20))
    with pytest.raises(ValueError, match="finite"):
        face(box=(0, 0, math.inf, 10))
    with pytest.raises(ValueError, match="finite"):
        face(det=math.nan)
    with pytest.raises(ValueError, match="finite"):
        Candidate("alice", math.nan, ListType.ALLOW)
    with pytest.raises(ValueError, match="subject id"):
        Candidate("", 0.5, ListType.ALLOW)
    with pytest.raises(ValueError):
        Candidate("alice", 0.5, "maybe")
    assert Candidate("alice", 0.5, "deny").list_type is ListType.DENY
    with pytest.raises(ValueError, match="failure reasons"):
        face(ok=True, reasons=("blurred",))
    with pytest.raises(ValueError, match="primary"):
        FrameObservation(0.0, None, others=(face(),))
    with pytest.raises(ValueError, match="finite"):
        FrameObservation(math.nan)


def test_track_policy_ranges_are_enforced_for_code_built_policies():
    with pytest.raises(ConfigError, match="iou_min"):
        TrackPolicy(iou_min=1.5)
    with pytest.raises(ConfigError, match="lost_after_s"):
        TrackPolicy(lost_after_s=-1.0)
    with pytest.raises(ConfigError, match="NaN"):
        TrackPolicy(capture_min_face_px=math.nan)


def test_pad_scores_travel_with_the_frame_s_other_evidence():
    scored = FaceObservation(box=(100, 100, 220, 240), detector_score=0.9, quality_ok=True,
                             matches=(Candidate("alice", 0.8, ListType.ALLOW),), pad_live=0.9,
                             pad_scores={"minifasnet-v2": 0.95, "minifasnet-v1se": 0.85})
    t = follow(None, scored, 0.0, 1, POLICY, 3.0)
    assert t.samples[0].pad_live == 0.9
    assert t.samples[0].pad_scores == (("minifasnet-v2", 0.95), ("minifasnet-v1se", 0.85))  # in the models' order
    hash(t.samples[0])  # samples stay hashable, so they can be compared as sets
    t = follow(t, face(), 0.1, 1, POLICY, 3.0)  # PAD did not run on this frame
    assert (t.samples[1].pad_live, t.samples[1].pad_scores) == (None, None)
    # a face that failed quality is no evidence, whatever PAD said about it
    t = follow(t, face(ok=False, matches=None, reasons=("blurred",)), 0.2, 1, POLICY, 3.0)
    assert len(t.samples) == 2


@pytest.mark.parametrize("pad_live, pad_scores, message", [
    (1.2, None, "probability"),
    (math.nan, None, "probability"),
    (-0.1, None, "probability"),
    (None, {"minifasnet-v2": 0.9}, "without the fused pad_live"),
    (0.9, {"minifasnet-v2": 1.5}, "minifasnet-v2"),
    (0.9, {"": 0.9}, "model id"),
    (0.9, [("minifasnet-v2",)], "pair"),
])
def test_pad_scores_must_be_probabilities(pad_live, pad_scores, message):
    with pytest.raises(ValueError, match=message):
        FaceObservation(box=(0, 0, 10, 10), detector_score=0.9, quality_ok=True, pad_live=pad_live,
                        pad_scores=pad_scores)
