"""What the vision pipeline saw in one frame, in the shape the lane's decision needs.

The lane never sees images or templates: only boxes, verdicts and scores. That keeps the
decision pure and auditable (every number it used can go into the audit record) and keeps
biometric vectors out of the lane's state.

The daemon builds a `FrameObservation` from `vision.pipeline.FrameResult`: its primary face
(the largest, the one that was embedded) becomes `primary` with the matcher's shortlist,
in 1:1 mode the verify score, and, when a presentation-attack detector is provisioned, its
live probability for that same face; every other detected face goes into `others`, because a
second face close behind the first is how tailgating shows up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping, Sequence

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels


class ListType(StrEnum):
    """Which list a subject is enrolled on; the watchlist store owns the truth."""

    ALLOW = "allow"
    DENY = "deny"


def _finite(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} is {value}; it must be a finite number")
    return value


def _probability(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{what} is {value}; it must be a probability in [0, 1]")
    return value


PadModelScores = tuple[tuple[str, float], ...]  # (model id, that model's live probability), model order


def _pad_scores(scores: Mapping[str, float] | Sequence[tuple[str, float]]) -> PadModelScores:
    pairs = tuple(scores.items()) if isinstance(scores, Mapping) else tuple(scores)
    out = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str) or not pair[0]:
            raise ValueError(f"a PAD model score is a (model id, live probability) pair, got {pair!r}")
        out.append((pair[0], _probability(pair[1], f"PAD live probability of {pair[0]!r}")))
    return tuple(out)


def as_box(box: Sequence[float]) -> Box:
    """Accepts any 4-sequence (a numpy box from the detector included) and checks it is a box."""
    values = tuple(float(v) for v in box)
    if len(values) != 4:
        raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(values)}")
    for v in values:
        _finite(v, "a box coordinate")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {values} is empty: x2 must exceed x1 and y2 must exceed y1")
    return values


@dataclass(frozen=True)
class Candidate:
    """One entry of the matcher's shortlist, with the subject's list looked up by the daemon.

    The list type travels with the score so the decision needs no database: a subject that was
    revoked between the search and the lookup is simply left out of the shortlist.
    """

    subject_id: str
    score: float  # cosine similarity of unit vectors, -1..1
    list_type: ListType

    def __post_init__(self) -> None:
        if not self.subject_id:
            raise ValueError("a candidate needs a subject id")
        object.__setattr__(self, "score", _finite(self.score, f"score of {self.subject_id!r}"))
        object.__setattr__(self, "list_type", ListType(self.list_type))


@dataclass(frozen=True)
class FaceObservation:
    """One detected face.

    `matches` is None when the face was not searched (not the primary, failed quality, or
    the embedder was skipped) and an empty tuple when it was searched and nothing came back
    (an empty gallery): the two mean different things to the decision. `pad_scores` accepts a
    mapping {model id: live} or (model id, live) pairs and is kept as pairs, so observations
    stay hashable and the models keep their order.
    """

    box: Box
    detector_score: float
    quality_ok: bool
    quality_reasons: tuple[str, ...] = ()
    quality_figures: Mapping[str, float] = field(default_factory=dict)
    matches: tuple[Candidate, ...] | None = None  # best first, as Matcher.search returns them
    verify_score: float | None = None  # 1:1 mode: Matcher.verify against the token's subject
    # vision.pad PadScore.live for this face; None = PAD did not run on it (or none is provisioned)
    pad_live: float | None = None
    # each PAD network's own live probability behind pad_live, for the audit record (numbers only)
    pad_scores: PadModelScores | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", as_box(self.box))
        object.__setattr__(self, "detector_score", _finite(self.detector_score, "detector score"))
        object.__setattr__(self, "quality_reasons", tuple(self.quality_reasons))
        if self.quality_ok and self.quality_reasons:
            raise ValueError(f"a face that passed quality cannot carry failure reasons {self.quality_reasons}")
        if self.matches is not None:
            object.__setattr__(self, "matches", tuple(self.matches))
        if self.verify_score is not None:
            object.__setattr__(self, "verify_score", _finite(self.verify_score, "verify score"))
        if self.pad_live is not None:
            object.__setattr__(self, "pad_live", _probability(self.pad_live, "PAD live probability"))
        if self.pad_scores is not None:
            if self.pad_live is None:
                raise ValueError("per-model PAD scores without the fused pad_live they were fused into")
            object.__setattr__(self, "pad_scores", _pad_scores(self.pad_scores))

    @property
    def size(self) -> float:
        """Linear face size (geometric mean of box width and height): apparent size falls as
        1/distance, so a ratio of sizes is a ratio of distances from the camera."""
        x1, y1, x2, y2 = self.box
        return math.sqrt((x2 - x1) * (y2 - y1))

    @property
    def scored(self) -> bool:
        """Usable as evidence: passed quality and was compared with the gallery or the token."""
        return self.quality_ok and (self.matches is not None or self.verify_score is not None)


@dataclass(frozen=True)
class FrameObservation:
    """A lane event: one processed frame. A frame with no face is `FrameObservation(t)`."""

    t: float  # seconds on the daemon's monotonic clock
    primary: FaceObservation | None = None  # the largest face, the only one embedded
    others: tuple[FaceObservation, ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)  # per vision stage

    def __post_init__(self) -> None:
        object.__setattr__(self, "t", _finite(self.t, "frame time"))
        object.__setattr__(self, "others", tuple(self.others))
        if self.primary is None and self.others:
            raise ValueError("a frame with faces must name its primary (largest) face")
