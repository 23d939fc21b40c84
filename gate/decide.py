"""The decision policy: from a tracked person's evidence to ALLOW, DENY or REFER.

A pure function of its arguments, so every outcome can be replayed from the audit record and
tested without cameras or databases.

Fusion: score-level, not template-level. For each identity in the shortlists of the best k
quality-passing frames, the fused score is the mean of its per-frame cosine similarities.
- It stays on the scale `gate-eval` calibrates (single-probe cosine similarity at a stated
  FAR), so the configured threshold keeps its meaning. A re-normalised mean embedding scores
  on a different distribution and would need its own calibration.
- A single lucky frame cannot open the gate: the identity must score well across k frames,
  which damps frame-to-frame noise (blur, a turned head, a reflection).
- The decision needs no vectors and no matcher, only the numbers the audit record shows.
The k frames are chosen by detector confidence (frontal, unoccluded faces score higher),
never by match score, which would pick the frames most flattering to some identity.

A shortlist holds only the matcher's top entries, so an identity missing from one frame's
shortlist has an unknown score there. The candidate is scored pessimistically (a missing
frame counts at the cosine minimum, so in practice it must appear in every frame to pass),
rivals and deny-list subjects optimistically (at most the lowest listed score of that frame).
The margin is therefore a lower bound on the true margin, and a deny-list hit is never missed
because the subject slipped out of one shortlist.

Liveness (presentation-attack detection) is judged on the same evidence as the match. On a
lane with a PAD model a frame only counts as evidence once PAD has scored it, and the PAD
frames are picked from the same pool by the same rule (`best_samples`), so the frames PAD
judged and the frames the match rests on are nested: with `pad.frames` >= `fuse_k` every
matched frame was judged live, otherwise every judged frame is a matched one. A printed photo
cannot supply the match while the holder's own face supplies the liveness. On a lane without
PAD the decision rests on matching alone and its record says "pad": "not provisioned".
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from statistics import fmean
from typing import Any, Mapping, Sequence

from configschema import ConfigError
from gate.field_ranges import check_ranges
from gate.observation import Candidate, ListType
from gate.track import Sample, Track
from vision.calibrate import RecordRef
from vision.pad.fusion import PadPolicy, PadState, PadVerdict, fuse_frames

ABSENT_SCORE = -1.0  # the cosine minimum: the most pessimistic value of an unlisted score
PAD_NOT_PROVISIONED = "not provisioned"  # the lane runs without PAD: its records never claim a check
PAD_NOT_JUDGED = "not judged"  # a decision on a token alone: no face was in front of the camera


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REFER = "refer"


class Reason(StrEnum):
    MATCH = "match"
    NO_MATCH = "no_match"
    AMBIGUOUS_MARGIN = "ambiguous_margin"
    LOW_QUALITY = "low_quality"
    TIMEOUT = "timeout"
    TAILGATING = "tailgating"
    DENY_LIST = "deny_list"
    TOKEN_MISMATCH = "token_mismatch"
    TOKEN_UNKNOWN = "token_unknown"
    PRESENTATION_ATTACK = "presentation_attack_suspected"
    ANTI_PASSBACK = "anti_passback"  # matched, but passed this lane (or boarded this flight) already


class Unserved(StrEnum):
    """Why an attempt ended without a decision (the face left or another person stepped in)."""

    TOO_FEW_QUALITY_FRAMES = "too_few_quality_frames"  # not enough frames passed quality to decide
    WAITING_FOR_LIVENESS = "waiting_for_liveness"  # the match was there, the PAD verdict was not yet
    OUTSIDE_CAPTURE_ZONE = "outside_capture_zone"  # the face was last seen too far from the camera
    TOO_FEW_FRAMES_TO_REFUSE = "too_few_frames_to_refuse"  # no match yet, not enough frames to conclude one
    LEFT_AFTER_PROMPT = "left_after_prompt"  # last seen while still responding to a prompt (see track.evidence_from)


class MatchMode(StrEnum):
    ONE_TO_MANY = "1:N"
    ONE_TO_ONE = "1:1"


def _threshold(help_text: str, mode: str) -> Any:
    """A score threshold: a number, or `{ record = "FILE.json", far|fpir = RATE }` taking it from a
    calibration record (vision.calibrate), whose operating point the status then shows."""
    return field(metadata={"help": help_text, "min": -1.0, "max": 1.0, "or_table": RecordRef,
                           "calibration_mode": mode})


@dataclass(frozen=True, kw_only=True)
class DecisionPolicy:
    """Thresholds and evidence sizes.

    The four score thresholds have no defaults on purpose: they depend on the embedder model
    and the gallery and must come from `gate-eval` at a stated false-accept rate. A default
    here would be a number nobody measured deciding who walks through.
    """

    threshold_1n: float = _threshold("fused cosine score at or above which a 1:N match is accepted; a number "
                                     "or a calibration record at the site's target FPIR: "
                                     "{ record = \"FILE.json\", fpir = 0.003 }", "1:N")
    min_margin: float = field(metadata={
        "help": "fused score lead the best identity needs over any other identity in 1:N mode; "
                "a smaller lead (look-alikes, twins, duplicate enrolments) gets the visit's next attempt, "
                "judged by the same rule, and is referred to staff after the last (lane.attempts.retry_on)",
        "min": 0.0, "max": 2.0})
    threshold_1to1: float = _threshold("fused verify score at or above which the token holder is accepted "
                                       "(1:1 mode); a number or a calibration record at the site's target FAR: "
                                       "{ record = \"FILE.json\", far = 0.001 }", "1:1")
    deny_threshold: float = _threshold("fused score at or above which a deny-list subject counts as present; "
                                       "at most threshold_1n (missing a deny-list subject is the costlier error); "
                                       "a number or a record at a higher FPIR than threshold_1n's", "1:N")
    fuse_k: int = field(default=3, metadata={
        "help": "number of quality-passing frames fused into one decision", "min": 1})
    min_observations_to_deny: int = field(default=5, metadata={
        "help": "quality-passing frames needed before 'no match' is concluded (at least fuse_k); "
                "a refusal waits for more evidence than an acceptance because a false refusal of a "
                "genuine passenger is usually a bad first frame", "min": 1})
    window_s: float = field(default=3.0, metadata={
        "help": "only frames this recent are fused; must hold min_observations_to_deny frames at "
                "the camera's frame rate", "min": 0.0})
    shortlist_k: int = field(default=5, metadata={
        "help": "entries the daemon asks Matcher.search for; at least 2 so there is a runner-up "
                "to measure the margin against", "min": 2})
    acquire_timeout_s: float = field(default=8.0, metadata={
        "help": "seconds from the first face to a referral when no decision was reached", "min": 0.0})
    low_quality_refer_frames: int = field(default=30, metadata={
        "help": "consecutive quality-failing frames after which the passenger is referred to staff",
        "min": 1})
    tailgate_size_ratio: float = field(default=0.7, metadata={
        "help": "a second face at least this fraction of the primary face's linear size is a second "
                "person at the gate (tailgating); 0.7 ≈ standing within 1.4x the distance", "min": 0.0,
        "max": 1.0})
    tailgate_frames: int = field(default=3, metadata={
        "help": "consecutive frames that must show that second face before it is tailgating: one frame "
                "is how a detector's false positive looks (MTCNN on the lane feed: 1 stray close face in "
                "~230 frames of one passenger), while two people at the gate stay in view together",
        "min": 1})
    pad: PadPolicy = field(default_factory=PadPolicy, metadata={
        "help": "presentation-attack detection: live-probability threshold and frames fused; used only "
                "when a PAD model is provisioned"})

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.min_observations_to_deny < self.fuse_k:
            raise ConfigError(f"min_observations_to_deny = {self.min_observations_to_deny} must be at least "
                              f"fuse_k = {self.fuse_k}: a refusal cannot rest on less evidence than an acceptance")
        if self.deny_threshold > self.threshold_1n:
            raise ConfigError(f"deny_threshold = {self.deny_threshold} must not exceed threshold_1n = "
                              f"{self.threshold_1n}: a deny-list subject scoring between them would be "
                              "refused without an alert")


@dataclass(frozen=True)
class Token:
    """A boarding pass or ID number read at the lane, resolved by the daemon to a subject."""

    subject_id: str
    list_type: ListType
    kind: str  # e.g. "boarding_pass", "id_number": for the audit record, never the raw token
    read_at: float


@dataclass(frozen=True)
class FusedScore:
    subject_id: str
    list_type: ListType
    low: float  # frames without this subject counted at ABSENT_SCORE
    high: float  # frames without this subject counted at their lowest listed score
    listed_in: int  # frames whose shortlist held this subject

    def to_record(self) -> dict[str, Any]:
        return {"subject_id": self.subject_id, "list": self.list_type.value, "score": round(self.low, 4),
                "score_upper": round(self.high, 4), "listed_in": self.listed_in}


@dataclass(frozen=True)
class PadEvidence:
    """The liveness verdict of one attempt and the frames behind it: scores, never images."""

    verdict: PadVerdict
    samples: tuple[Sample, ...]  # the frames fused into the verdict, oldest first

    def to_record(self) -> dict[str, Any]:
        return {**self.verdict.to_dict(), "scores": [
            {"t": round(s.t, 6), "live": None if s.pad_live is None else round(s.pad_live, 4),
             "px": None if s.face_px is None else round(s.face_px, 1),
             "models": {m: round(live, 4) for m, live in s.pad_scores or ()}} for s in self.samples]}


def judge_liveness(samples: Sequence[Sample], policy: PadPolicy) -> PadEvidence:
    """The verdict over the `policy.frames` most confident detections among PAD-scored samples
    (`best_samples`, the rule matching uses); pending until that many exist."""
    judged = tuple(sorted(best_samples([s for s in samples if s.pad_live is not None], policy.frames),
                          key=lambda s: s.t))
    return PadEvidence(fuse_frames([s.pad_live for s in judged if s.pad_live is not None], policy), judged)


@dataclass(frozen=True)
class Decision:
    """One decision, with every figure it rests on, for the audit record and the operator."""

    outcome: Outcome
    reason: Reason
    mode: MatchMode
    decided_at: float
    track_id: int | None = None
    subject_id: str | None = None  # who matched (see named_only_if_matched); None for a non-match
    list_type: ListType | None = None
    score: float | None = None
    runner_up_id: str | None = None
    runner_up_score: float | None = None
    margin: float | None = None
    observations_used: int = 0
    observations_in_window: int = 0
    frames: int = 0
    low_quality_streak: int = 0
    elapsed_s: float = 0.0
    top: tuple[FusedScore, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)
    pad_provisioned: bool = False  # so a record never claims a liveness check that did not run
    pad: PadEvidence | None = None  # the liveness verdict, on a lane with PAD (None: no face judged)

    def pad_record(self) -> str | dict[str, Any]:
        if not self.pad_provisioned:
            return PAD_NOT_PROVISIONED
        return PAD_NOT_JUDGED if self.pad is None else self.pad.to_record()

    def to_record(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "outcome": self.outcome.value, "reason": self.reason.value, "mode": self.mode.value,
            "track_id": self.track_id, "subject_id": self.subject_id,
            "list": None if self.list_type is None else self.list_type.value,
            "score": r(self.score), "runner_up_id": self.runner_up_id, "runner_up_score": r(self.runner_up_score),
            "margin": r(self.margin), "observations_used": self.observations_used,
            "observations_in_window": self.observations_in_window, "frames": self.frames,
            "low_quality_streak": self.low_quality_streak, "elapsed_s": round(self.elapsed_s, 3),
            "top": [f.to_record() for f in self.top], "details": dict(self.details), "pad": self.pad_record(),
        }


def fuse(shortlists: Sequence[Sequence[Candidate]]) -> tuple[FusedScore, ...]:
    """Per-identity fused scores over the given shortlists, best (by `low`) first."""
    frames = []
    for shortlist in shortlists:
        best: dict[str, Candidate] = {}
        for c in shortlist:  # several templates of one subject: its best one speaks for it
            if c.subject_id not in best or c.score > best[c.subject_id].score:
                best[c.subject_id] = c
        frames.append((best, min((c.score for c in shortlist), default=ABSENT_SCORE)))
    fused = []
    for sid in sorted({sid for best, _ in frames for sid in best}):
        listed = [best[sid] for best, _ in frames if sid in best]
        # a watchlist change mid-attempt: the deny entry wins
        kind = ListType.DENY if any(c.list_type is ListType.DENY for c in listed) else ListType.ALLOW
        low = fmean(best[sid].score if sid in best else ABSENT_SCORE for best, _ in frames)
        high = fmean(best[sid].score if sid in best else floor for best, floor in frames)
        fused.append(FusedScore(sid, kind, low, high, len(listed)))
    fused.sort(key=lambda f: (-f.low, f.subject_id))
    return tuple(fused)


def best_samples(samples: Sequence[Sample], k: int) -> tuple[Sample, ...]:
    """The k samples with the most confident detections, the most recent winning ties."""
    return tuple(sorted(samples, key=lambda s: (s.detector_score, s.t), reverse=True)[:k])


def refer_unknown_token(kind: str, subject_id: str | None, now: float, *, pad_provisioned: bool) -> Decision:
    """A token that resolves to nobody enrolled (or to a subject no longer valid): the
    passenger has a document but no biometric enrolment here, which is for staff to handle."""
    return Decision(Outcome.REFER, Reason.TOKEN_UNKNOWN, MatchMode.ONE_TO_ONE, decided_at=now,
                    subject_id=subject_id, details={"token_kind": kind}, pad_provisioned=pad_provisioned)


@dataclass(frozen=True)
class Evidence:
    """What one attempt's frames say, before any rule is applied: the fused scores, the best
    candidate and its lead, the liveness verdict and how many frames stand behind them."""

    mode: MatchMode
    fused: tuple[FusedScore, ...]  # 1:N: every identity of the used frames' shortlists, best first
    observations_used: int  # frames fused into the score
    observations_in_window: int  # quality-passing frames of the window (what a refusal waits for)
    subject_id: str | None = None  # 1:N: best allow-list candidate; 1:1: the token's subject
    list_type: ListType | None = None
    score: float | None = None
    runner_up_id: str | None = None
    runner_up_score: float | None = None
    margin: float | None = None
    pad: PadEvidence | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def decision_fields(self) -> dict[str, Any]:
        """The Decision fields this evidence fills in."""
        return {"subject_id": self.subject_id, "list_type": self.list_type, "score": self.score,
                "runner_up_id": self.runner_up_id, "runner_up_score": self.runner_up_score, "margin": self.margin,
                "observations_used": self.observations_used,
                "observations_in_window": self.observations_in_window}


def named_only_if_matched(d: Decision, policy: DecisionPolicy) -> Decision:
    """A decision names a person only when that person matched: an acceptance, a deny-list hit,
    or a best candidate at or above the threshold (e.g. a matched face judged a photo). The best
    candidate below the threshold is not an identity: a stranger's refusal naming the nearest
    enrolled traveller reads to staff as that traveller being there. Scores stay in the record."""
    threshold = policy.threshold_1n if d.mode is MatchMode.ONE_TO_MANY else policy.threshold_1to1
    if d.outcome is Outcome.ALLOW or d.reason is Reason.DENY_LIST or (d.score is not None and d.score >= threshold):
        return d
    details = dict(d.details)
    if d.mode is MatchMode.ONE_TO_ONE and d.subject_id is not None:
        details["token_subject_id"] = d.subject_id  # who the document says, not who the face is
    return replace(d, subject_id=None, list_type=None, runner_up_id=None, top=(), details=details)


def gather_evidence(track: Track, now: float, policy: DecisionPolicy, token: Token | None = None, *,
                    pad_provisioned: bool) -> Evidence:
    """The evidence of `track`'s frames inside the fusion window at `now` (see the module
    docstring for fusion and for why PAD-unscored frames do not count on a lane with PAD)."""
    window = tuple(s for s in track.samples if now - s.t <= policy.window_s)
    if pad_provisioned:  # a frame PAD did not score vouches for nobody (see the module docstring)
        window = tuple(s for s in window if s.pad_live is not None)
    # the shortlists are fused in 1:1 mode too: a deny-list subject holding someone's pass is still a hit
    searched = tuple(s for s in window if s.matches is not None)
    used = best_samples(searched, policy.fuse_k)
    fused = fuse([s.matches for s in used if s.matches is not None]) if len(used) >= policy.fuse_k else ()
    if token is None:
        pad = judge_liveness(searched, policy.pad) if pad_provisioned else None
        best = next((f for f in fused if f.list_type is ListType.ALLOW), None)
        rival = None if best is None else max(
            (f for f in fused if f is not best), key=lambda f: (f.high, f.subject_id), default=None)
        return Evidence(
            MatchMode.ONE_TO_MANY, fused, len(used), len(searched), pad=pad,
            subject_id=None if best is None else best.subject_id, list_type=None if best is None else best.list_type,
            score=None if best is None else best.low,
            runner_up_id=None if rival is None else rival.subject_id,
            runner_up_score=None if rival is None else rival.high,
            margin=None if rival is None or best is None else best.low - rival.high)
    verified = tuple(s for s in window if s.verify_score is not None)
    used_v = best_samples(verified, policy.fuse_k)
    score = (fmean(s.verify_score for s in used_v if s.verify_score is not None)
             if len(used_v) >= policy.fuse_k else None)
    pad = judge_liveness(verified, policy.pad) if pad_provisioned else None
    return Evidence(MatchMode.ONE_TO_ONE, fused, len(used_v), len(verified), subject_id=token.subject_id,
                    list_type=token.list_type, score=score, pad=pad, details={"token_kind": token.kind})


def decide(track: Track, now: float, policy: DecisionPolicy, token: Token | None = None,
           tailgate_ratio: float | None = None, *, pad_provisioned: bool) -> Decision | None:
    """The decision for `track` at time `now`, or None while evidence is still coming in.

    `tailgate_ratio` is the current frame's second-face ratio (`gate.track.tailgate_ratio`);
    with a `token`, the track's verify scores are judged against that subject (1:1 mode).
    `pad_provisioned` says whether the lane runs a PAD model; it is not inferred from the
    samples, because a PAD model that failed on every frame must not look like no PAD model.
    """
    ev = gather_evidence(track, now, policy, token, pad_provisioned=pad_provisioned)
    return judge(ev, track, now, policy, token, tailgate_ratio, pad_provisioned=pad_provisioned)


def judge(ev: Evidence, track: Track, now: float, policy: DecisionPolicy, token: Token | None,
          tailgate_ratio: float | None, *, pad_provisioned: bool) -> Decision | None:
    """The precedence ladder over gathered evidence: tailgating, deny-list hit, suspected
    presentation attack, (while liveness is pending, nothing else from the evidence),
    acceptance, refusal/mismatch, persistent low quality, timeout."""
    def result(outcome: Outcome, reason: Reason, **override: Any) -> Decision:
        details = {**ev.details, **override.pop("details", {})}
        return named_only_if_matched(Decision(
            outcome, reason, ev.mode, decided_at=now, track_id=track.track_id, frames=track.frames,
            low_quality_streak=track.low_quality_streak, elapsed_s=now - track.started_t,
            top=ev.fused[:3], pad_provisioned=pad_provisioned, pad=ev.pad,
            **{**ev.decision_fields(), **override, "details": details}), policy)

    if tailgate_ratio is not None and tailgate_ratio >= policy.tailgate_size_ratio:
        return result(Outcome.REFER, Reason.TAILGATING, details={"tailgate_ratio": round(tailgate_ratio, 3)})

    # A deny-list hit comes before the liveness verdict and does not wait for it. The hit latches
    # an alarm and brings staff either way, and ranking a spoof verdict first would let a PAD
    # false reject (BPCER ~8% at the reference operating point) turn a wanted person's alarm into
    # a "suspected photo" referral. The PAD verdict, whatever it is, stays in the record.
    hits = [f for f in ev.fused if f.list_type is ListType.DENY and f.high >= policy.deny_threshold]
    if hits:
        hit = max(hits, key=lambda f: (f.high, f.subject_id))
        return result(Outcome.DENY, Reason.DENY_LIST, subject_id=hit.subject_id, list_type=ListType.DENY,
                      score=hit.high, runner_up_id=None, runner_up_score=None, margin=None)
    score = ev.score
    if token is not None and token.list_type is ListType.DENY and score is not None \
            and score >= policy.deny_threshold:
        return result(Outcome.DENY, Reason.DENY_LIST)

    pad = ev.pad
    if pad is not None and pad.verdict.state is PadState.SPOOF:  # before any match: never an opening
        return result(Outcome.REFER, Reason.PRESENTATION_ATTACK)
    # While liveness is pending no conclusion is drawn from the matching either: not an
    # acceptance, and not a refusal or referral that may turn out to be an attack and should
    # then be reported as one. Persistent low quality and the timeout still end the attempt.
    if pad is None or pad.verdict.state is PadState.LIVE:
        if token is None:
            if score is not None and score >= policy.threshold_1n:
                if ev.margin is None or ev.margin >= policy.min_margin:
                    return result(Outcome.ALLOW, Reason.MATCH)
                return result(Outcome.REFER, Reason.AMBIGUOUS_MARGIN)
            if ev.observations_in_window >= policy.min_observations_to_deny:
                return result(Outcome.DENY, Reason.NO_MATCH)
        else:
            if score is not None and token.list_type is ListType.ALLOW and score >= policy.threshold_1to1:
                return result(Outcome.ALLOW, Reason.MATCH)
            if ev.observations_in_window >= policy.min_observations_to_deny:
                return result(Outcome.REFER, Reason.TOKEN_MISMATCH)

    if track.low_quality_streak >= policy.low_quality_refer_frames:
        return result(Outcome.REFER, Reason.LOW_QUALITY,
                      details={"quality_reasons": list(track.last_quality_reasons)})
    if now - track.started_t >= policy.acquire_timeout_s:
        return result(Outcome.REFER, Reason.TIMEOUT)
    return None


def why_undecided(track: Track, now: float, policy: DecisionPolicy, token: Token | None = None, *,
                  pad_provisioned: bool) -> dict[str, Any]:
    """The reason an attempt that ends now without a decision was not served, with the figures
    behind it, for its audit record: staff must be able to tell why a traveller was not let
    through, and `gate-bench lane` counts these reasons."""
    ev = gather_evidence(track, now, policy, token, pad_provisioned=pad_provisioned)
    figures: dict[str, Any] = {"frames": track.frames, "quality_frames": ev.observations_in_window,
                               "needed": policy.fuse_k, "elapsed_s": round(now - track.started_t, 3)}
    if track.last_quality_reasons:
        figures["quality_reasons"] = list(track.last_quality_reasons)
    if ev.score is not None:
        figures["best_score"] = round(ev.score, 4)  # a score, never a name: the person did not match
    if track.out_of_zone_streak:
        return {"why": Unserved.OUTSIDE_CAPTURE_ZONE.value, **figures,
                "frames_outside_zone": track.out_of_zone_streak}
    if track.last_seen_t < track.evidence_from:
        return {"why": Unserved.LEFT_AFTER_PROMPT.value, **figures,
                "responding_until": round(track.evidence_from, 6)}
    if ev.observations_used < policy.fuse_k:
        return {"why": Unserved.TOO_FEW_QUALITY_FRAMES.value, **figures}
    if ev.pad is not None and ev.pad.verdict.state is PadState.PENDING:
        return {"why": Unserved.WAITING_FOR_LIVENESS.value, **figures, "pad": ev.pad.to_record()}
    return {"why": Unserved.TOO_FEW_FRAMES_TO_REFUSE.value, **figures, "needed": policy.min_observations_to_deny}
