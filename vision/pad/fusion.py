"""From per-frame live scores of one tracked person to one liveness verdict.

A single frame can be unlucky (motion blur, a glare, a half-turned head) in both
directions, so the verdict is the mean live probability over the last `frames` scored frames
of the same track, and there is no verdict at all until that many frames exist. The gate
keeps the scores with the track's other evidence (a new person starts a new track, so one
person's frames never vouch for another) and calls `fuse_frames` when it decides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Sequence

# The reference's cut-off on the fused pair. An independent check of MiniFASNetV2 +
# MiniFASNetV1SE on 516 labelled real/spoof photos measured, at this cut-off, BPCER 8.2%
# (real faces rejected) and APCER 16.9% (spoofs accepted), ROC AUC 0.913 — on single
# photos, not on a site's camera: re-measure with `gate-eval pad` (docs/security.md).
DEFAULT_THRESHOLD = 0.5
STATED_OPERATING_POINT = {"threshold": DEFAULT_THRESHOLD, "apcer": 0.169, "bpcer": 0.082, "auc": 0.913,
                          "measured_on": "independent check, 516 labelled real/spoof photos, single frame"}


class PadState(StrEnum):
    LIVE = "live"
    SPOOF = "presentation_attack_suspected"
    PENDING = "pending"  # fewer scored frames than the policy needs


@dataclass(frozen=True, kw_only=True)
class PadPolicy:
    threshold: float = field(default=DEFAULT_THRESHOLD, metadata={
        "help": "fused live probability (mean over the last `frames` frames) below which the person is "
                "referred as a suspected presentation attack. 0.5 is the reference cut-off: APCER 16.9%, "
                "BPCER 8.2% on 516 independent single photos; re-measure on the site's cameras with "
                "`gate-eval pad`", "min": 0.0, "max": 1.0})
    frames: int = field(default=3, metadata={
        "help": "scored frames of the same track averaged for the liveness verdict; no verdict before",
        "min": 1})

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(f"pad {f.name} = {v!r} must be a number within "
                                 f"[{lo}, {hi if hi is not None else '∞'}]")


@dataclass(frozen=True)
class PadVerdict:
    state: PadState
    live: float | None  # mean live probability over the frames used; None when pending
    frames: int  # scores the mean was taken over (or the scores seen so far, when pending)
    threshold: float

    def to_dict(self) -> dict:
        return {"state": str(self.state), "live": None if self.live is None else round(self.live, 4),
                "frames": self.frames, "threshold": self.threshold}


def fuse_frames(live_scores: Sequence[float], policy: PadPolicy = PadPolicy()) -> PadVerdict:
    """The verdict from one track's per-frame `PadScore.live` values, oldest first."""
    scores = [float(s) for s in live_scores]
    for s in scores:
        if not 0.0 <= s <= 1.0:  # also catches NaN
            raise ValueError(f"a live score must be a probability in [0, 1], got {s}")
    if len(scores) < policy.frames:
        return PadVerdict(PadState.PENDING, None, len(scores), policy.threshold)
    recent = scores[-policy.frames:]
    live = sum(recent) / len(recent)
    state = PadState.LIVE if live >= policy.threshold else PadState.SPOOF
    return PadVerdict(state, live, len(recent), policy.threshold)
