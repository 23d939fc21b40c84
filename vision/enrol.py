"""Templates from enrolment photos, with a per-photo verdict.

Enrolment is where a bad photo does lasting harm: a blurred or turned-away reference makes
the traveller fail at every gate. So each photo must pass the same quality gate as a live
frame and contain exactly one clear face; rejects are reported with their reason, never
silently dropped or silently used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vision.capture import IMAGE_SUFFIXES
from vision.image_io import ImageError, load_image


@dataclass(frozen=True)
class PhotoVerdict:
    photo: str
    accepted: bool
    reason: str = ""  # no_face, several_faces, unreadable, or quality reasons
    figures: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EnrolmentResult:
    subject_id: str
    model_id: str
    vectors: np.ndarray  # (n, D) float32, one per accepted photo
    verdicts: list[PhotoVerdict]


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def enrol_photos(pipeline, subject_id: str, photos: list[Path], *, second_face_ratio: float = 0.6
                 ) -> EnrolmentResult:
    """One template per acceptable photo. A second face at least `second_face_ratio` of the
    main face's width makes the photo ambiguous (whose face is being enrolled?)."""
    vecs, verdicts = [], []
    for p in photos:
        try:
            img = load_image(p)
        except ImageError as e:
            verdicts.append(PhotoVerdict(str(p), False, f"unreadable: {e}"))
            continue
        r = pipeline.process(img, embed="primary", require_quality=True)
        if not r.faces:
            verdicts.append(PhotoVerdict(str(p), False, "no_face"))
            continue
        main = r.faces[0]
        if len(r.faces) > 1 and r.faces[1].face.width >= second_face_ratio * main.face.width:
            verdicts.append(PhotoVerdict(str(p), False, "several_faces"))
            continue
        if main.template is None:
            verdicts.append(PhotoVerdict(str(p), False, "low_quality: " + ", ".join(main.quality.reasons),
                                         dict(main.quality.figures)))
            continue
        vecs.append(main.template)
        verdicts.append(PhotoVerdict(str(p), True, "", dict(main.quality.figures)))
    dim = pipeline.embedder.dim
    arr = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, dim), np.float32)
    return EnrolmentResult(subject_id, pipeline.model_id, arr, verdicts)
