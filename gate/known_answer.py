"""The models' known-answer test: one fixed photo through detector and embedder.

A model file can pass its sha256 check and still compute the wrong thing on this device (a
different ONNX Runtime build, a broken CPU feature, a changed preprocessing default). So at
build time the bundle records the embedding of a reference photo, and the self-test on the
gate recomputes it and requires a cosine of at least MIN_COSINE. The photo is the one that
ships inside the insightface wheel we already depend on; it is identified by its sha256 so a
changed wheel is noticed instead of silently moving the reference.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

MIN_COSINE = 0.999
REFERENCE_PACKAGE = "insightface"
REFERENCE_RESOURCE = "data/images/Tom_Hanks_54745.png"
# The photo is a tight 112x112 crop; a grey border gives the detector the context it was
# trained with, so the face is found whole rather than clipped at the image edge.
BORDER_PX = 56
DETECTOR_MIN_FACE = 40
FILE_NAME = "known-answer.json"


class KnownAnswerError(Exception):
    """The reference photo or the record is missing or malformed, or no face was found."""


@dataclass(frozen=True)
class KnownAnswer:
    photo: str  # package:resource
    photo_sha256: str
    detector: str
    embedder: str
    flip: bool
    embedding: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"photo": self.photo, "photo_sha256": self.photo_sha256, "detector": self.detector,
                "embedder": self.embedder, "flip": self.flip, "embedding": list(self.embedding)}

    @classmethod
    def from_dict(cls, d: dict) -> "KnownAnswer":
        try:
            emb = tuple(float(x) for x in d["embedding"])
            if not emb:
                raise ValueError("empty embedding")
            return cls(photo=str(d["photo"]), photo_sha256=str(d["photo_sha256"]), detector=str(d["detector"]),
                       embedder=str(d["embedder"]), flip=bool(d["flip"]), embedding=emb)
        except (KeyError, TypeError, ValueError) as e:
            raise KnownAnswerError(f"known-answer record is malformed: {e}") from None


def reference_photo() -> tuple[bytes, str]:
    """The reference photo's bytes and its sha256."""
    try:
        data = files(REFERENCE_PACKAGE).joinpath(REFERENCE_RESOURCE).read_bytes()
    except (ModuleNotFoundError, OSError) as e:
        raise KnownAnswerError(f"reference photo {REFERENCE_PACKAGE}:{REFERENCE_RESOURCE} not found: {e}") from None
    return data, hashlib.sha256(data).hexdigest()


def _embed_reference(model_dir: Path, detector: str, embedder: str, flip: bool) -> np.ndarray:
    import cv2

    from vision.image_io import ImageError, decode_image
    from vision.loading import load_pipeline

    data, _ = reference_photo()
    try:
        img = decode_image(data)
    except ImageError as e:
        raise KnownAnswerError(f"reference photo unreadable: {e}") from None
    frame = cv2.copyMakeBorder(img, BORDER_PX, BORDER_PX, BORDER_PX, BORDER_PX, cv2.BORDER_CONSTANT,
                               value=(128, 128, 128))
    pipeline = load_pipeline(model_dir, detector, embedder, flip=flip, threads=1,
                             detector_opts={"min_face": DETECTOR_MIN_FACE})
    result = pipeline.process(frame, require_quality=False)
    if result.primary is None or result.primary.template is None:
        raise KnownAnswerError(f"detector {detector!r} found no face in the reference photo")
    return np.asarray(result.primary.template, np.float64)


def record(model_dir: Path, detector: str, embedder: str, flip: bool) -> KnownAnswer:
    """Compute the reference embedding with these models (at bundle build time)."""
    _, sha = reference_photo()
    vec = _embed_reference(model_dir, detector, embedder, flip)
    return KnownAnswer(photo=f"{REFERENCE_PACKAGE}:{REFERENCE_RESOURCE}", photo_sha256=sha, detector=detector,
                       embedder=embedder, flip=flip, embedding=tuple(float(x) for x in vec))


def write(answer: KnownAnswer, path: Path) -> None:
    Path(path).write_text(json.dumps(answer.to_dict(), indent=1, sort_keys=True) + "\n")


def load(path: Path) -> KnownAnswer:
    try:
        d = json.loads(Path(path).read_text())
    except OSError as e:
        raise KnownAnswerError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise KnownAnswerError(f"{path} is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise KnownAnswerError(f"{path} must hold a JSON object")
    return KnownAnswer.from_dict(d)


def check(answer: KnownAnswer, model_dir: Path) -> float:
    """Recompute the embedding on this device; return its cosine with the recorded one.

    Raises KnownAnswerError when the photo is not the one recorded (its cosine would mean
    nothing) or the dimensions differ.
    """
    _, sha = reference_photo()
    if sha != answer.photo_sha256:
        raise KnownAnswerError(f"reference photo {answer.photo} has sha256 {sha[:16]}… but the record was made "
                               f"with {answer.photo_sha256[:16]}… (insightface wheel changed?)")
    got = _embed_reference(model_dir, answer.detector, answer.embedder, answer.flip)
    want = np.asarray(answer.embedding, np.float64)
    if got.shape != want.shape:
        raise KnownAnswerError(f"embedding has {got.size} dimensions, the record {want.size}")
    return float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
