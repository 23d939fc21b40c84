"""Following the person in the capture zone from frame to frame.

Evidence is only worth fusing if every frame shows the same person. The primary face's box
is associated with the previous one by IoU: at 10–30 frames/s a walking person's box overlaps
itself heavily between frames, while a different person stepping in front does not. When the
overlap breaks, the evidence gathered so far belongs to someone else and is dropped with the
old track.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from gate.field_ranges import check_ranges
from gate.observation import Box, Candidate, FaceObservation, FrameObservation, PadModelScores


@dataclass(frozen=True, kw_only=True)
class TrackPolicy:
    iou_min: float = field(default=0.3, metadata={
        "help": "box overlap (IoU) between consecutive frames below which the face is a new person",
        "min": 0.0, "max": 1.0})
    lost_after_s: float = field(default=1.0, metadata={
        "help": "seconds without the tracked face before the attempt is abandoned", "min": 0.0})
    capture_min_face_px: float = field(default=80.0, metadata={
        "help": "linear face size (sqrt of box area, pixels) from which a face counts as in the "
                "capture zone; smaller faces are people further back. Site-specific: measure it "
                "at the lane's marked standing position and set it a little below (~0.75x): the lane "
                "decides on the first faces in the zone, and far below the mark it judges people still "
                "walking in (in gate-bench lane, faces ~205 px on the mark: 80 px gave 5 of 11 "
                "liveness doubts at the first attempt, 150 px gave 2)", "min": 0.0})

    step_closer_after_s: float = field(default=1.5, metadata={
        "help": "seconds a face stays outside the capture zone, with the lane free, before the display asks the "
                "passenger to step closer (longer than a walk through the zone's edge, ~0.8 s); 0 = never",
        "min": 0.0})
    visit_gap_s: float = field(default=0.5, metadata={
        "help": "after a decision, the decided person is not judged again while their face stays in view; "
                "the visit ends after this many seconds without it (shorter than the gap between two "
                "passengers, longer than a detector's missed frame)", "min": 0.0})

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class Sample:
    """The evidence one quality-passing frame contributes.

    The liveness score travels in the same sample as the match scores, so both are judged
    on the same frames of the same tracked person (see gate.decide).
    """

    t: float
    detector_score: float
    matches: tuple[Candidate, ...] | None
    verify_score: float | None
    pad_live: float | None = None  # None: PAD did not score this frame
    pad_scores: PadModelScores | None = None
    face_px: float | None = None  # the face's linear size (FaceObservation.size); None: not known


@dataclass(frozen=True)
class Track:
    track_id: int
    started_t: float  # start of this attempt (reset when a token switches to 1:1 mode)
    last_seen_t: float
    box: Box
    frames: int = 1
    samples: tuple[Sample, ...] = ()  # scored frames inside the fusion window, oldest first
    low_quality_streak: int = 0  # consecutive frames whose face failed quality
    last_quality_reasons: tuple[str, ...] = ()
    out_of_zone_streak: int = 0  # frames since the face was last seen inside the capture zone
    # frames before this time are not evidence: the passenger is still responding to a prompt
    evidence_from: float = float("-inf")
    guided: bool = False  # this attempt has shown the passenger what to fix (see gate.lane's quality prompt)


def iou(a: Box, b: Box) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def in_capture_zone(face: FaceObservation | None, policy: TrackPolicy) -> bool:
    return face is not None and face.size >= policy.capture_min_face_px


def tailgate_ratio(frame: FrameObservation) -> float | None:
    """Size of the closest other face relative to the primary (None when alone).

    Near 1 means two people at about the same distance from the camera, i.e. together at the
    gate; a person waiting their turn a few metres back gives a small ratio.
    """
    if frame.primary is None or not frame.others:
        return None
    return max(o.size for o in frame.others) / frame.primary.size


def follow(track: Track | None, face: FaceObservation, t: float, new_id: int,
           policy: TrackPolicy, window_s: float) -> Track:
    """The track after seeing `face` at `t`: the same track if the boxes overlap enough,
    otherwise a fresh one numbered `new_id` (callers detect the switch by the id)."""
    if track is None or iou(track.box, face.box) < policy.iou_min:
        track = Track(track_id=new_id, started_t=t, last_seen_t=t, box=face.box, frames=0)
    if t < track.evidence_from:  # still reacting to a prompt: followed, not judged
        return replace(track, last_seen_t=t, box=face.box, frames=track.frames + 1, out_of_zone_streak=0)
    samples = track.samples
    streak, reasons = track.low_quality_streak, track.last_quality_reasons
    if face.scored:
        samples = samples + (Sample(t, face.detector_score, face.matches, face.verify_score, face.pad_live,
                                    face.pad_scores, face.size),)
        streak, reasons = 0, ()
    elif not face.quality_ok:
        streak, reasons = streak + 1, face.quality_reasons
    return replace(track, last_seen_t=t, box=face.box, frames=track.frames + 1,
                   samples=tuple(s for s in samples if t - s.t <= window_s),
                   low_quality_streak=streak, last_quality_reasons=reasons, out_of_zone_streak=0)


def restart(track: Track, t: float, settle_s: float = 0.0) -> Track:
    """Same person, fresh attempt: after a retry prompt (the first `settle_s` seconds are the
    passenger's reaction, not evidence), or when a token read switches the lane to 1:1 mode,
    so evidence gathered for a 1:N search is not mixed with the 1:1 verification."""
    return replace(track, started_t=t, samples=(), low_quality_streak=0, last_quality_reasons=(),
                   evidence_from=t + settle_s, guided=False)


def settle(track: Track, t: float, settle_s: float) -> Track:
    """The same attempt after a guidance prompt: its evidence so far stays, but the next
    `settle_s` seconds are the passenger's reaction, and the quality streak starts again."""
    return replace(track, low_quality_streak=0, evidence_from=t + settle_s, guided=True)


def same_visit(track: Track, face: FaceObservation, policy: TrackPolicy) -> bool:
    """Whether `face` is still the person of `track` (their boxes overlap enough)."""
    return iou(track.box, face.box) >= policy.iou_min
