"""The decision policy: fusion arithmetic, each outcome and reason, and invariants."""
from __future__ import annotations

import math
import random
from dataclasses import replace
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configschema import ConfigError, load_dataclass
from gate.audit import canonical_body
from gate.decide import (
    ABSENT_SCORE,
    PAD_NOT_JUDGED,
    PAD_NOT_PROVISIONED,
    DecisionPolicy,
    MatchMode,
    Outcome,
    Reason,
    Token,
    best_samples,
    decide,
    fuse,
    judge_liveness,
    refer_unknown_token,
)
from gate.observation import Candidate, ListType
from gate.track import Sample, Track
from vision.pad.fusion import DEFAULT_THRESHOLD, PadPolicy, PadState

A, D = ListType.ALLOW, ListType.DENY
POLICY = DecisionPolicy(threshold_1n=0.5, min_margin=0.1, threshold_1to1=0.45, deny_threshold=0.4,
                        fuse_k=3, min_observations_to_deny=5, window_s=3.0, acquire_timeout_s=8.0,
                        low_quality_refer_frames=10, tailgate_size_ratio=0.7)
# the matching rules on their own: a lane without a PAD model
matching_only = partial(decide, pad_provisioned=False)
with_pad = partial(decide, pad_provisioned=True)


def shortlist(*entries):
    """entries: (subject, score) or (subject, score, list_type)."""
    return tuple(Candidate(e[0], e[1], e[2] if len(e) > 2 else A) for e in entries)


def pad_models(live):
    """Per-model scores as the daemon passes them: each network's own live probability."""
    if live is None:
        return None
    return ("minifasnet-v2", min(1.0, live + 0.05)), ("minifasnet-v1se", max(0.0, live - 0.05))


def track_of(shortlists=(), verifies=(), t0=10.0, dt=0.1, dets=None, streak=0, started=None, pads=None):
    """`pads`: one PAD live probability (or None) per sample, shortlists' samples first."""
    samples = []
    for i, sl in enumerate(shortlists):
        samples.append(Sample(t0 + i * dt, dets[i] if dets else 0.9, sl, None))
    for i, v in enumerate(verifies):
        samples.append(Sample(t0 + (len(shortlists) + i) * dt, dets[i] if dets else 0.9, None, v))
    if pads is not None:
        samples = [replace(smp, pad_live=live, pad_scores=pad_models(live))
                   for smp, live in zip(samples, pads, strict=True)]
    n = len(samples)
    return Track(track_id=1, started_t=t0 if started is None else started, last_seen_t=t0 + max(n - 1, 0) * dt,
                 box=(0, 0, 100, 100), frames=n + streak, samples=tuple(samples), low_quality_streak=streak,
                 last_quality_reasons=("blurred",) if streak else ())


def now_of(track):
    return track.last_seen_t


# ---- policy ------------------------------------------------------------------------------------

def test_thresholds_have_no_defaults():
    with pytest.raises(TypeError):
        DecisionPolicy()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        DecisionPolicy(threshold_1n=0.5, min_margin=0.1, threshold_1to1=0.4)  # type: ignore[call-arg]


@pytest.mark.parametrize("change, message", [
    ({"min_observations_to_deny": 2}, "min_observations_to_deny"),
    ({"deny_threshold": 0.6}, "deny_threshold"),
    ({"threshold_1n": 1.5, "deny_threshold": 0.4}, "threshold_1n"),
    ({"fuse_k": 0}, "fuse_k"),
    ({"shortlist_k": 1}, "shortlist_k"),
    ({"min_margin": -0.1}, "min_margin"),
    ({"threshold_1to1": math.nan}, "threshold_1to1"),
])
def test_policy_refuses_unsafe_or_inconsistent_values(change, message):
    base = dict(threshold_1n=0.5, min_margin=0.1, threshold_1to1=0.45, deny_threshold=0.4)
    with pytest.raises(ConfigError, match=message):
        DecisionPolicy(**{**base, **change})


def test_policy_loads_from_a_config_table_and_names_missing_thresholds():
    p = load_dataclass(DecisionPolicy, {"threshold_1n": 0.5, "min_margin": 0.05, "threshold_1to1": 0.4,
                                        "deny_threshold": 0.4, "fuse_k": 2, "min_observations_to_deny": 4},
                       "decision")
    assert (p.threshold_1n, p.fuse_k, p.window_s) == (0.5, 2, 3.0)
    with pytest.raises(ConfigError, match="decision.deny_threshold"):
        load_dataclass(DecisionPolicy, {"threshold_1n": 0.5, "min_margin": 0.05, "threshold_1to1": 0.4}, "decision")


# ---- fusion ------------------------------------------------------------------------------------

def test_fuse_means_scores_and_bounds_missing_entries():
    fused = fuse([shortlist(("a", 0.8), ("b", 0.3)),
                  shortlist(("a", 0.6), ("c", 0.4)),
                  shortlist(("a", 0.7), ("b", 0.5), ("c", 0.2))])
    by = {f.subject_id: f for f in fused}
    assert [f.subject_id for f in fused] == ["a", "b", "c"]
    assert by["a"].low == pytest.approx(0.7) and by["a"].high == pytest.approx(0.7) and by["a"].listed_in == 3
    # b is missing from frame 2: pessimistically the cosine minimum, optimistically that frame's floor (0.4)
    assert by["b"].low == pytest.approx((0.3 + ABSENT_SCORE + 0.5) / 3)
    assert by["b"].high == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert by["c"].high == pytest.approx((0.3 + 0.4 + 0.2) / 3) and by["c"].listed_in == 2


def test_fuse_takes_a_subjects_best_template_and_lets_a_deny_entry_win():
    fused = fuse([shortlist(("a", 0.5), ("a", 0.9)), shortlist(("a", 0.7, D))])
    assert len(fused) == 1
    assert fused[0].low == pytest.approx(0.8) and fused[0].list_type is D
    assert fuse([]) == () and fuse([(), ()]) == ()


def test_best_samples_ranks_by_detection_confidence_not_by_match_score():
    flattering = Sample(1.0, 0.50, shortlist(("a", 0.99)), None)
    steady = [Sample(1.0 + i, 0.9, shortlist(("a", 0.3)), None) for i in range(3)]
    chosen = best_samples([flattering, *steady], 3)
    assert flattering not in chosen and set(chosen) == set(steady)
    # equal confidence: the most recent wins
    assert best_samples(steady, 1) == (steady[-1],)


# ---- outcomes ----------------------------------------------------------------------------------

def test_allow_on_k_consistent_frames_with_a_clear_margin():
    tr = track_of([shortlist(("alice", 0.62), ("bob", 0.31))] * 3)
    d = matching_only(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason, d.mode) == (Outcome.ALLOW, Reason.MATCH, MatchMode.ONE_TO_MANY)
    assert d.subject_id == "alice" and d.list_type is A
    assert d.score == pytest.approx(0.62) and d.runner_up_id == "bob" and d.margin == pytest.approx(0.31)
    assert d.observations_used == 3 and d.track_id == 1


def test_no_decision_before_k_frames():
    tr = track_of([shortlist(("alice", 0.9), ("bob", 0.1))] * 2)
    assert matching_only(tr, now_of(tr), POLICY) is None


def test_a_lone_subject_gallery_has_no_rival_and_is_allowed():
    tr = track_of([shortlist(("alice", 0.7))] * 3)
    d = matching_only(tr, now_of(tr), POLICY)
    assert d.outcome is Outcome.ALLOW and d.margin is None and d.runner_up_id is None


def test_one_good_frame_cannot_open_the_gate():
    tr = track_of([shortlist(("alice", 0.95), ("bob", 0.1)), shortlist(("alice", 0.3), ("bob", 0.1)),
                   shortlist(("alice", 0.2), ("bob", 0.1))])
    assert matching_only(tr, now_of(tr), POLICY) is None  # mean 0.48 < 0.5 and only 3 of 5 frames for a refusal


def test_candidate_missing_from_one_shortlist_is_not_allowed():
    tr = track_of([shortlist(("alice", 0.9), ("bob", 0.2))] * 2 + [shortlist(("bob", 0.3), ("carol", 0.25))])
    d = matching_only(tr, now_of(tr), POLICY)
    assert d is None or d.outcome is not Outcome.ALLOW


def test_the_candidate_is_scored_at_its_pessimistic_bound():
    no_margin = replace(POLICY, min_margin=0.0)
    tr = track_of([shortlist(("alice", 0.9), ("bob", 0.2))] * 2 + [shortlist(("bob", 0.3))])
    d = matching_only(tr, now_of(tr), no_margin)
    # optimistically alice would be (0.9 + 0.9 + 0.3) / 3 = 0.7; what is known is (0.9 + 0.9 - 1) / 3
    assert d is None
    tr = track_of([shortlist(("alice", 0.9), ("bob", 0.2))] * 2 + [shortlist(("bob", 0.3))] * 3,
                  dets=[0.9, 0.9, 0.8, 0.5, 0.5])  # the first three frames are fused
    d = matching_only(tr, now_of(tr), no_margin)
    assert d.reason is Reason.NO_MATCH and d.score == pytest.approx(0.8 / 3)
    assert d.subject_id is None and d.top == ()  # below the threshold the best candidate is not named


def test_only_a_matched_identity_is_named():
    d = matching_only(track_of([shortlist(("alice", 0.3), ("bob", 0.2))] * 5), 9.0, POLICY)
    rec = d.to_record()
    assert (rec["outcome"], rec["subject_id"], rec["runner_up_id"], rec["top"]) == ("deny", None, None, [])
    assert rec["score"] == 0.3  # the best score is kept, the name is not
    tr = track_of([shortlist(("alice", 0.66), ("alicia", 0.60))] * 3)  # both above the threshold: named
    assert matching_only(tr, now_of(tr), POLICY).subject_id == "alice"


def test_close_runner_up_is_referred_as_ambiguous():
    tr = track_of([shortlist(("alice", 0.66), ("alicia", 0.60))] * 3)
    d = matching_only(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason) == (Outcome.REFER, Reason.AMBIGUOUS_MARGIN)
    assert d.subject_id == "alice" and d.runner_up_id == "alicia" and d.margin == pytest.approx(0.06)


def test_no_match_needs_more_frames_than_a_match():
    low = shortlist(("alice", 0.3), ("bob", 0.2))
    for n in (3, 4):
        tr = track_of([low] * n)
        assert matching_only(tr, now_of(tr), POLICY) is None
    tr = track_of([low] * 5)
    d = matching_only(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason) == (Outcome.DENY, Reason.NO_MATCH)
    assert d.observations_in_window == 5 and d.observations_used == 3 and d.score == pytest.approx(0.3)


def test_empty_gallery_is_no_match():
    tr = track_of([()] * 5)
    d = matching_only(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason, d.subject_id, d.score) == (Outcome.DENY, Reason.NO_MATCH, None, None)


def test_deny_list_hit_holds_even_when_an_allowed_subject_scores_higher():
    tr = track_of([shortlist(("alice", 0.8), ("mallory", 0.45, D))] * 3)
    d = matching_only(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason, d.subject_id, d.list_type) == (Outcome.DENY, Reason.DENY_LIST, "mallory", D)
    assert d.score == pytest.approx(0.45)


def test_deny_list_subject_slipping_out_of_one_shortlist_is_still_caught():
    tr = track_of([shortlist(("mallory", 0.7, D), ("bob", 0.38)),
                   shortlist(("carol", 0.41), ("bob", 0.40)),  # mallory just below the cut
                   shortlist(("mallory", 0.6, D), ("bob", 0.3))])
    d = matching_only(tr, now_of(tr), POLICY)
    assert d.reason is Reason.DENY_LIST and d.subject_id == "mallory"
    assert d.score == pytest.approx((0.7 + 0.40 + 0.6) / 3)


def test_deny_list_subject_below_the_deny_threshold_is_a_plain_no_match():
    tr = track_of([shortlist(("mallory", 0.2, D), ("bob", 0.1))] * 5)
    assert matching_only(tr, now_of(tr), POLICY).reason is Reason.NO_MATCH


def test_tailgating_comes_first():
    tr = track_of([shortlist(("alice", 0.9))] * 3)
    d = matching_only(tr, now_of(tr), POLICY, tailgate_ratio=0.75)
    assert (d.outcome, d.reason, d.details["tailgate_ratio"]) == (Outcome.REFER, Reason.TAILGATING, 0.75)
    assert matching_only(tr, now_of(tr), POLICY, tailgate_ratio=0.5).outcome is Outcome.ALLOW
    # even before any evidence
    assert matching_only(track_of([]), 10.0, POLICY, tailgate_ratio=0.9).reason is Reason.TAILGATING


def test_persistent_low_quality_is_referred():
    d = matching_only(track_of([], streak=10), 10.5, POLICY)
    assert (d.outcome, d.reason) == (Outcome.REFER, Reason.LOW_QUALITY)
    assert d.details["quality_reasons"] == ["blurred"]
    assert matching_only(track_of([], streak=9), 10.5, POLICY) is None


def test_timeout_is_referred():
    tr = track_of([shortlist(("alice", 0.3))], started=10.0)
    assert matching_only(tr, 17.9, POLICY) is None
    d = matching_only(tr, 18.0, POLICY)
    assert (d.outcome, d.reason, d.elapsed_s) == (Outcome.REFER, Reason.TIMEOUT, pytest.approx(8.0))


def test_frames_outside_the_window_are_not_fused():
    good = [shortlist(("alice", 0.9))] * 3
    tr = track_of(good, t0=10.0, dt=1.0)  # samples at 10, 11, 12
    assert matching_only(tr, 12.0, POLICY).outcome is Outcome.ALLOW
    assert matching_only(tr, 13.5, POLICY) is None  # the frame at 10 has left the 3 s window


def test_one_to_one_uses_only_the_token_subjects_verify_scores():
    token = Token("alice", A, "boarding_pass", 9.0)
    tr = track_of(verifies=[0.5, 0.46, 0.44])
    d = matching_only(tr, now_of(tr), POLICY, token=token)
    assert (d.outcome, d.reason, d.mode, d.subject_id) == (Outcome.ALLOW, Reason.MATCH, MatchMode.ONE_TO_ONE, "alice")
    assert d.score == pytest.approx((0.5 + 0.46 + 0.44) / 3) and d.details["token_kind"] == "boarding_pass"
    # a strong 1:N match for someone does not stand in for the token's verification
    tr = track_of([shortlist(("alice", 0.9))] * 5)
    assert matching_only(tr, now_of(tr), POLICY, token=token) is None


def test_one_to_one_mismatch_is_referred_after_enough_frames():
    token = Token("alice", A, "id_number", 9.0)
    tr = track_of(verifies=[0.2] * 4)
    assert matching_only(tr, now_of(tr), POLICY, token=token) is None
    tr = track_of(verifies=[0.2] * 5)
    d = matching_only(tr, now_of(tr), POLICY, token=token)
    assert (d.outcome, d.reason, d.subject_id) == (Outcome.REFER, Reason.TOKEN_MISMATCH, None)
    assert d.details["token_subject_id"] == "alice"  # what the document says, not who the face is


def test_one_to_one_with_a_deny_listed_token_holder():
    token = Token("mallory", D, "boarding_pass", 9.0)
    tr = track_of(verifies=[0.9] * 3)
    d = matching_only(tr, now_of(tr), POLICY, token=token)
    assert (d.outcome, d.reason, d.subject_id) == (Outcome.DENY, Reason.DENY_LIST, "mallory")
    # a shortlist deny-list hit also counts in 1:1 mode
    tr = track_of([shortlist(("eve", 0.7, D))] * 3)
    d = matching_only(tr, now_of(tr), POLICY, token=Token("alice", A, "boarding_pass", 9.0))
    assert d.reason is Reason.DENY_LIST


def test_unknown_token_referral():
    d = refer_unknown_token("boarding_pass", None, 4.0, pad_provisioned=False)
    assert (d.outcome, d.reason, d.mode, d.decided_at) == (
        Outcome.REFER, Reason.TOKEN_UNKNOWN, MatchMode.ONE_TO_ONE, 4.0)


def test_decision_record_is_a_valid_audit_body():
    tr = track_of([shortlist(("alice", 0.61234567), ("bob", 0.3), ("carol", 0.2), ("dave", 0.1))] * 3)
    record = matching_only(tr, now_of(tr), POLICY).to_record()
    canonical_body({"event": "decision", "decision": record})
    assert record["score"] == 0.6123 and len(record["top"]) == 3
    assert record["top"][0] == {"subject_id": "alice", "list": "allow", "score": 0.6123, "score_upper": 0.6123,
                                "listed_in": 3}


# ---- invariants --------------------------------------------------------------------------------

SUBJECTS = {"alice": A, "bob": A, "carol": A, "mallory": D}


def random_track(rnd: random.Random) -> tuple[Track, float | None]:
    """A plausible attempt: each subject has a true similarity to the person, frames add noise,
    and a shortlist keeps the top 3 entries, so subjects drop in and out of shortlists."""
    base = {s: rnd.uniform(-0.2, 0.9) for s in SUBJECTS}
    samples = []
    for i in range(rnd.randint(0, 8)):
        listed = [Candidate(s, max(-1.0, min(1.0, b + rnd.gauss(0, 0.08))), SUBJECTS[s])
                  for s, b in base.items() if rnd.random() < 0.9]
        listed.sort(key=lambda c: -c.score)
        samples.append(Sample(10.0 + 0.1 * i, rnd.uniform(0.5, 1.0), tuple(listed[:3]), None))
    streak = rnd.choice([0, 0, 0, 12])
    ratio = rnd.choice([None, None, None, rnd.uniform(0, 1)])
    return Track(1, 10.0, 10.0 + 0.1 * len(samples), (0, 0, 100, 100), len(samples) + streak, tuple(samples),
                 streak), ratio


@settings(max_examples=400, deadline=None)
@given(st.randoms(use_true_random=False))
def test_decisions_respect_the_policy_and_ignore_frame_order(rnd):
    tr, ratio = random_track(rnd)
    now = tr.last_seen_t
    d = matching_only(tr, now, POLICY, tailgate_ratio=ratio)

    shuffled = list(tr.samples)
    rnd.shuffle(shuffled)
    assert matching_only(replace(tr, samples=tuple(shuffled)), now, POLICY, tailgate_ratio=ratio) == d

    if d is None:
        return
    canonical_body({"event": "decision", "decision": d.to_record()})
    if ratio is not None and ratio >= POLICY.tailgate_size_ratio:
        assert d.reason is Reason.TAILGATING
    if d.outcome is Outcome.ALLOW:
        used = best_samples(tr.samples, POLICY.fuse_k)
        assert len(used) == POLICY.fuse_k and SUBJECTS[d.subject_id] is A
        # the accepted subject was in every fused shortlist and its true mean clears the threshold
        own = [max((c.score for c in s.matches if c.subject_id == d.subject_id), default=None) for s in used]
        assert None not in own and sum(own) / len(own) >= POLICY.threshold_1n
        # every deny-list subject stays below the deny threshold even at its optimistic bound
        assert all(f.high < POLICY.deny_threshold for f in fuse([s.matches for s in used]) if f.list_type is D)
        # no other identity's true fused score can come within the margin
        assert d.margin is None or d.margin >= POLICY.min_margin
        for other in {c.subject_id for s in used for c in s.matches} - {d.subject_id}:
            theirs = [max((c.score for c in s.matches if c.subject_id == other), default=None) for s in used]
            if None not in theirs:
                assert sum(theirs) / len(theirs) <= d.score - POLICY.min_margin + 1e-9
    if d.reason is Reason.DENY_LIST:
        assert SUBJECTS[d.subject_id] is D and d.score >= POLICY.deny_threshold


def test_the_random_attempts_reach_every_outcome():
    """The invariant test above is only as good as its inputs: they must produce every reason."""
    seen = set()
    for seed in range(400):
        tr, ratio = random_track(random.Random(seed))
        d = matching_only(tr, tr.last_seen_t, POLICY, tailgate_ratio=ratio)
        seen.add(None if d is None else d.reason)
    assert {None, Reason.MATCH, Reason.NO_MATCH, Reason.AMBIGUOUS_MARGIN, Reason.DENY_LIST, Reason.TAILGATING,
            Reason.LOW_QUALITY} <= seen


# ---- liveness (presentation-attack detection) -----------------------------------------------------

ALICE = shortlist(("alice", 0.8), ("bob", 0.2))
LIVE, PHOTO = 0.92, 0.12  # PadScore.live of a live face and of a printed photo


def test_pad_settings_load_with_the_policy_and_default_to_the_stated_operating_point():
    base = {"threshold_1n": 0.5, "min_margin": 0.05, "threshold_1to1": 0.4, "deny_threshold": 0.4}
    assert load_dataclass(DecisionPolicy, base, "decision").pad == PadPolicy(threshold=DEFAULT_THRESHOLD, frames=3)
    p = load_dataclass(DecisionPolicy, {**base, "pad": {"threshold": 0.7, "frames": 4}}, "decision")
    assert (p.pad.threshold, p.pad.frames) == (0.7, 4)
    with pytest.raises(ConfigError, match="decision.pad.threshold"):
        load_dataclass(DecisionPolicy, {**base, "pad": {"threshold": 1.5}}, "decision")
    with pytest.raises(ConfigError, match="decision.pad.frames"):
        load_dataclass(DecisionPolicy, {**base, "pad": {"frames": 0}}, "decision")
    with pytest.raises(ConfigError, match="did you mean decision.pad.threshold"):
        load_dataclass(DecisionPolicy, {**base, "pad": {"treshold": 0.6}}, "decision")


def test_spoof_frames_are_referred_as_a_suspected_attack_however_good_the_match():
    tr = track_of([shortlist(("alice", 0.95), ("bob", 0.1))] * 3, pads=[0.2, 0.1, 0.3])
    d = with_pad(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason, d.subject_id) == (Outcome.REFER, Reason.PRESENTATION_ATTACK, "alice")
    assert d.pad.verdict.state is PadState.SPOOF and d.pad.verdict.live == pytest.approx(0.2)
    record = d.to_record()
    canonical_body({"event": "decision", "decision": record})
    pad = record["pad"]
    assert (pad["state"], pad["live"], pad["frames"], pad["threshold"]) == (
        "presentation_attack_suspected", 0.2, 3, DEFAULT_THRESHOLD)
    # every frame's score and what each network said, as numbers: nothing else
    assert [f["live"] for f in pad["scores"]] == [0.2, 0.1, 0.3]
    assert pad["scores"][0] == {"t": 10.0, "live": 0.2, "px": None,
                                "models": {"minifasnet-v2": 0.25, "minifasnet-v1se": 0.15}}


def test_live_frames_with_a_match_are_allowed_and_the_record_shows_the_check():
    tr = track_of([ALICE] * 3, pads=[0.9, 0.95, 0.85])
    d = with_pad(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason, d.subject_id) == (Outcome.ALLOW, Reason.MATCH, "alice")
    pad = d.to_record()["pad"]
    assert (pad["state"], pad["live"], pad["frames"]) == ("live", 0.9, 3)


def test_the_threshold_is_the_policy_s():
    tr = track_of([ALICE] * 3, pads=[0.6, 0.6, 0.6])
    assert with_pad(tr, now_of(tr), POLICY).outcome is Outcome.ALLOW
    strict = replace(POLICY, pad=PadPolicy(threshold=0.7))
    assert with_pad(tr, now_of(tr), strict).reason is Reason.PRESENTATION_ATTACK


def test_no_opening_before_pad_has_judged_enough_frames():
    five = replace(POLICY, pad=PadPolicy(frames=5))
    for n in (3, 4):
        tr = track_of([ALICE] * n, pads=[LIVE] * n)
        assert with_pad(tr, now_of(tr), five) is None  # matching alone would open at 3 frames
        assert matching_only(tr, now_of(tr), five).outcome is Outcome.ALLOW
    tr = track_of([ALICE] * 5, pads=[LIVE] * 5)
    d = with_pad(tr, now_of(tr), five)
    assert d.outcome is Outcome.ALLOW and d.pad.verdict.frames == 5


def test_pending_liveness_holds_refusals_and_referrals_too():
    five = replace(POLICY, pad=PadPolicy(frames=6))
    tr = track_of([shortlist(("alice", 0.3), ("bob", 0.2))] * 5, pads=[PHOTO] * 5)
    assert matching_only(tr, now_of(tr), five).reason is Reason.NO_MATCH
    assert with_pad(tr, now_of(tr), five) is None  # it may be an attack: wait one more frame to say so
    tr = track_of([shortlist(("alice", 0.3), ("bob", 0.2))] * 6, pads=[PHOTO] * 6)
    assert with_pad(tr, now_of(tr), five).reason is Reason.PRESENTATION_ATTACK


def test_a_frame_pad_did_not_score_is_no_evidence_on_a_lane_with_pad():
    tr = track_of([ALICE] * 3, pads=[LIVE, None, LIVE])
    assert with_pad(tr, now_of(tr), POLICY) is None
    tr = track_of([ALICE] * 4, pads=[LIVE, None, LIVE, LIVE])
    d = with_pad(tr, now_of(tr), POLICY)
    assert d.outcome is Outcome.ALLOW and d.observations_in_window == 3
    assert [s["t"] for s in d.to_record()["pad"]["scores"]] == [10.0, 10.2, 10.3]


def test_liveness_is_judged_on_the_frames_the_match_rests_on():
    """A photo of alice held up close (sharp, confident detections) and the holder's own live
    face afterwards: the match comes from the photo frames, so must the liveness verdict. A
    verdict over the most recent frames would see only the live holder and open the gate."""
    holder = shortlist(("bob", 0.1), ("carol", 0.05))
    tr = track_of([ALICE] * 3 + [holder] * 3, dets=[0.99] * 3 + [0.8] * 3, pads=[PHOTO] * 3 + [LIVE] * 3)
    d = with_pad(tr, now_of(tr), POLICY)
    assert (d.reason, d.subject_id) == (Reason.PRESENTATION_ATTACK, "alice")
    assert [s["t"] for s in d.to_record()["pad"]["scores"]] == [10.0, 10.1, 10.2]


def test_the_liveness_frames_and_the_matched_frames_are_nested():
    rnd = random.Random(7)
    samples = [Sample(float(i), rnd.uniform(0.5, 1.0), ALICE, None, rnd.random()) for i in range(12)]
    for fuse_k in (1, 3, 5):
        for frames in (1, 3, 5, 8):
            matched = set(best_samples(samples, fuse_k))
            judged = set(judge_liveness(samples, PadPolicy(frames=frames)).samples)
            assert matched <= judged if frames >= fuse_k else judged <= matched


def test_a_spoof_of_nobody_enrolled_is_reported_as_an_attack_not_as_a_plain_refusal():
    tr = track_of([shortlist(("alice", 0.3), ("bob", 0.2))] * 5, pads=[PHOTO] * 5)
    assert with_pad(tr, now_of(tr), POLICY).reason is Reason.PRESENTATION_ATTACK


def test_deny_list_hit_and_tailgating_still_come_first_with_the_pad_verdict_recorded():
    tr = track_of([shortlist(("mallory", 0.7, D), ("bob", 0.2))] * 3, pads=[PHOTO] * 3)
    d = with_pad(tr, now_of(tr), POLICY)
    assert (d.outcome, d.reason, d.subject_id) == (Outcome.DENY, Reason.DENY_LIST, "mallory")
    assert d.to_record()["pad"]["state"] == "presentation_attack_suspected"
    # a deny-list hit does not wait for liveness
    tr = track_of([shortlist(("mallory", 0.7, D))] * 3, pads=[LIVE] * 3)
    d = with_pad(tr, now_of(tr), replace(POLICY, pad=PadPolicy(frames=5)))
    assert d.reason is Reason.DENY_LIST and d.pad.verdict.state is PadState.PENDING
    tr = track_of([ALICE] * 3, pads=[PHOTO] * 3)
    assert with_pad(tr, now_of(tr), POLICY, tailgate_ratio=0.9).reason is Reason.TAILGATING
    # 1:1 mode: a deny-listed token holder
    tr = track_of(verifies=[0.9] * 3, pads=[PHOTO] * 3)
    assert with_pad(tr, now_of(tr), POLICY, token=Token("mallory", D, "boarding_pass", 9.0)).reason is Reason.DENY_LIST


def test_one_to_one_verification_is_checked_for_liveness_too():
    token = Token("alice", A, "boarding_pass", 9.0)
    tr = track_of(verifies=[0.9] * 3, pads=[PHOTO] * 3)
    d = with_pad(tr, now_of(tr), POLICY, token=token)
    assert (d.outcome, d.reason, d.mode, d.subject_id) == (
        Outcome.REFER, Reason.PRESENTATION_ATTACK, MatchMode.ONE_TO_ONE, "alice")
    tr = track_of(verifies=[0.9] * 3, pads=[LIVE] * 3)
    assert with_pad(tr, now_of(tr), POLICY, token=token).outcome is Outcome.ALLOW


def test_pending_liveness_still_times_out_and_says_so():
    five = replace(POLICY, pad=PadPolicy(frames=5))
    tr = track_of([ALICE] * 3, pads=[LIVE] * 3, started=10.0)
    d = with_pad(tr, 18.0, replace(five, window_s=10.0))
    assert (d.outcome, d.reason) == (Outcome.REFER, Reason.TIMEOUT)
    assert d.to_record()["pad"]["state"] == "pending"


def test_without_pad_the_match_alone_decides_and_every_record_says_so():
    tr = track_of([ALICE] * 3)
    d = matching_only(tr, now_of(tr), POLICY)
    assert d.outcome is Outcome.ALLOW and d.pad is None
    assert d.to_record()["pad"] == PAD_NOT_PROVISIONED == "not provisioned"
    assert refer_unknown_token("id_number", None, 1.0, pad_provisioned=False).to_record()["pad"] == PAD_NOT_PROVISIONED
    # on a lane with PAD, a decision on a token alone had no face to judge, and says that instead
    assert refer_unknown_token("id_number", None, 1.0, pad_provisioned=True).to_record()["pad"] == PAD_NOT_JUDGED
    # the caller must say which lane it is: there is no default to hide behind
    with pytest.raises(TypeError):
        decide(tr, now_of(tr), POLICY)  # type: ignore[call-arg]


def random_pad_track(rnd: random.Random) -> tuple[Track, float | None]:
    """`random_track` with liveness: the person is live or a presentation attack, each frame's
    PAD score scatters around that, and PAD occasionally fails on a frame."""
    tr, ratio = random_track(rnd)
    centre = rnd.choice([0.9, 0.75, 0.5, 0.3, 0.1])
    pads = [None if rnd.random() < 0.1 else min(1.0, max(0.0, rnd.gauss(centre, 0.2))) for _ in tr.samples]
    samples = tuple(replace(s, pad_live=p, pad_scores=pad_models(p)) for s, p in zip(tr.samples, pads, strict=True))
    return replace(tr, samples=samples), ratio


@settings(max_examples=400, deadline=None)
@given(st.randoms(use_true_random=False))
def test_no_opening_rests_on_frames_that_are_not_live_on_average(rnd):
    tr, ratio = random_pad_track(rnd)
    now = tr.last_seen_t
    d = with_pad(tr, now, POLICY, tailgate_ratio=ratio)
    shuffled = list(tr.samples)
    rnd.shuffle(shuffled)
    assert with_pad(replace(tr, samples=tuple(shuffled)), now, POLICY, tailgate_ratio=ratio) == d
    # a face looking less live can take an opening away, never create one
    lowered = tuple(s if s.pad_live is None else replace(s, pad_live=s.pad_live * rnd.random()) for s in tr.samples)
    d_lowered = with_pad(replace(tr, samples=lowered), now, POLICY, tailgate_ratio=ratio)
    if d is None or d.outcome is not Outcome.ALLOW:
        assert d_lowered is None or d_lowered.outcome is not Outcome.ALLOW
    if d is None:
        return
    canonical_body({"event": "decision", "decision": d.to_record()})
    if d.outcome is Outcome.ALLOW:
        # the match rests on PAD-scored frames only, and exactly those were judged (frames == fuse_k)
        used = best_samples([s for s in tr.samples if s.pad_live is not None], POLICY.fuse_k)
        assert set(d.pad.samples) == set(used)
        assert sum(s.pad_live for s in used) / len(used) >= POLICY.pad.threshold
        # the same frames looking like a photo turn the opening into a referral
        photo = tuple(replace(s, pad_live=PHOTO) if s in used else s for s in tr.samples)
        assert with_pad(replace(tr, samples=photo), now, POLICY).reason is Reason.PRESENTATION_ATTACK
    if d.reason is Reason.PRESENTATION_ATTACK:
        assert d.pad.verdict.live < POLICY.pad.threshold and len(d.pad.samples) == POLICY.pad.frames
        assert all(s in tr.samples for s in d.pad.samples)
    if all(s.pad_live is None or s.pad_live < POLICY.pad.threshold for s in tr.samples):
        assert d.outcome is not Outcome.ALLOW


def test_the_random_attempts_with_liveness_reach_every_outcome():
    seen = set()
    for seed in range(400):
        tr, ratio = random_pad_track(random.Random(seed))
        d = with_pad(tr, tr.last_seen_t, POLICY, tailgate_ratio=ratio)
        seen.add(None if d is None else d.reason)
    assert {None, Reason.MATCH, Reason.NO_MATCH, Reason.DENY_LIST, Reason.TAILGATING, Reason.LOW_QUALITY,
            Reason.PRESENTATION_ATTACK} <= seen
