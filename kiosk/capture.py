"""Camera frames and reference photos through the vision pipeline, into what the session reads.

The same FacePipeline (detect, quality, align, embed) and PAD detector the lane runs; what
leaves here are figures and templates, never pixels, so nothing downstream can store an image.
"""
from __future__ import annotations

import logging

import numpy as np

from kiosk.identity import IdentityReference
from kiosk.session import LiveFrame, Reference

log = logging.getLogger(__name__)

# A second face at least this fraction of the main face's width is a second person at the
# station (the rule vision.enrol applies to enrolment photos); smaller ones are the hall behind.
SECOND_FACE_RATIO = 0.6


def live_frame(pipeline, pad, frame: np.ndarray, t: float) -> LiveFrame:
    r = pipeline.process(frame, embed="primary", require_quality=True)
    if not r.faces:
        return LiveFrame(t=t, faces=0)
    main = r.faces[0]
    faces = 1 + sum(f.face.width >= SECOND_FACE_RATIO * main.face.width for f in r.faces[1:])
    pad_live = None
    if pad is not None and main.template is not None:
        try:
            pad_live = float(pad.score(frame, main.face).live)
        except Exception:  # no evidence, never counted as live
            log.exception("presentation-attack scoring failed on this frame")
    return LiveFrame(t=t, faces=faces, quality_ok=main.quality.ok, reasons=tuple(main.quality.reasons),
                     figures=dict(main.quality.figures), template=main.template, pad_live=pad_live)


def reference_of(pipeline, ref: IdentityReference) -> Reference:
    """The reference's template. A document portrait is taken to a standard, so it is embedded
    even where the live-frame quality gate would complain (a small chip image), but it must
    hold exactly one face."""
    r = pipeline.process(ref.image, embed="primary", require_quality=False)
    template, problem = None, ""
    if not r.faces:
        problem = "no face in the reference photo"
    elif len(r.faces) > 1 and r.faces[1].face.width >= SECOND_FACE_RATIO * r.faces[0].face.width:
        problem = "several faces in the reference photo"
    else:
        template = r.faces[0].template
    return Reference(subject_id=ref.subject_id, display_name=ref.display_name, source=ref.source,
                     verified=ref.verified, template=template, problem=problem)
