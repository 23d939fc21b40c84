"""Turn what vision saw into what the lane may know: boxes, verdicts and scores.

The lane decides on candidates that are valid right now, so the watchlist's validity window
and list type are applied here, at the moment of the frame, from the local clock: a gate cut
off from the central for days still refuses a traveller whose boarding window has closed.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable

from gate.observation import Candidate, FaceObservation, FrameObservation, ListType
from vision.pipeline import FaceResult, FrameResult

log = logging.getLogger(__name__)

# subject id -> its list type if the subject may be matched now, else None
SubjectLookup = Callable[[str, datetime], "ListType | None"]


def store_lookup(store) -> SubjectLookup:
    def lookup(subject_id: str, now: datetime) -> ListType | None:
        entry = store.get(subject_id, with_templates=False)
        if entry is None or entry.revoked or not entry.subject.is_valid(now):
            return None
        return ListType(entry.subject.list_type)

    return lookup


def _face(fr: FaceResult, matches=None, verify_score=None, pad_score=None) -> FaceObservation:
    q = fr.quality
    pad_live = pad_scores = None
    if pad_score is not None:
        pad_live = float(pad_score.live)
        pad_scores = tuple((m.model_id, float(m.live)) for m in pad_score.models)
    return FaceObservation(box=tuple(fr.face.box.tolist()), detector_score=float(fr.face.score), quality_ok=q.ok,
                           quality_reasons=tuple(q.reasons), quality_figures=dict(q.figures),
                           matches=matches, verify_score=verify_score, pad_live=pad_live, pad_scores=pad_scores)


def observe(t: float, result: FrameResult, matcher, lookup: SubjectLookup, shortlist_k: int,
            one_to_one_subject: str | None = None, now_utc: datetime | None = None, pad=None,
            frame=None) -> FrameObservation:
    """One lane observation for a processed frame; searches only the primary face's template,
    and scores that same face for presentation attacks when a PAD stage is loaded. A PAD
    failure on a frame leaves it unscored (no evidence), never scored as live."""
    if not result.faces:
        return FrameObservation(t, timings_ms=dict(result.timings_ms))
    now_utc = now_utc or datetime.now(timezone.utc)
    primary = result.faces[0]
    matches = verify_score = pad_score = None
    timings = dict(result.timings_ms)
    if primary.template is not None:
        t0 = time.perf_counter()
        found = matcher.search(primary.template, k=shortlist_k)
        cands = []
        for m in found:
            lt = lookup(m.subject_id, now_utc)
            if lt is not None:
                cands.append(Candidate(m.subject_id, float(m.score), lt))
        matches = tuple(cands)
        if one_to_one_subject is not None and lookup(one_to_one_subject, now_utc) is not None:
            verify_score = matcher.verify(primary.template, one_to_one_subject)
        timings["match"] = (time.perf_counter() - t0) * 1e3
        if pad is not None and frame is not None:
            t1 = time.perf_counter()
            try:
                pad_score = pad.score(frame, primary.face)
            except Exception:
                log.exception("presentation-attack scoring failed on this frame; it counts as no evidence")
            timings["pad"] = (time.perf_counter() - t1) * 1e3
    return FrameObservation(t, primary=_face(primary, matches, verify_score, pad_score),
                            others=tuple(_face(f) for f in result.faces[1:]), timings_ms=timings)
