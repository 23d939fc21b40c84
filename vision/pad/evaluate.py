"""ISO/IEC 30107-3 error rates of the PAD stage on an operator's own labelled photos.

Layout: `DIR/live/**` holds bona fide captures, `DIR/spoof/**` attack captures; a subfolder
of spoof/ (spoof/print/, spoof/replay/, ...) is one attack instrument species, and APCER is
reported per species and as the worst species, as the standard asks (a detector that stops
prints but not screens must not look good on the average).

Each photo goes through the real detector and the real PAD models, exactly as a gate frame
would: the largest face is scored. Photos where no face is found are counted in `no_face`
and left out of APCER/BPCER: the gate cannot open on them, and the embedding evaluation
already reports them as failures to acquire.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vision.image_io import ImageError, load_image
from vision.pad.base import PresentationAttackDetector
from vision.pad.fusion import STATED_OPERATING_POINT

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LABELS = ("live", "spoof")
BPCER_TARGET = 0.05


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str  # "live" (bona fide) or "spoof" (attack)
    species: str  # attack instrument species: the spoof/ subfolder, "spoof" directly in it, "" for live


def labelled_images(images_dir: Path) -> list[LabelledImage]:
    root = Path(images_dir)
    missing = [lab for lab in LABELS if not (root / lab).is_dir()]
    if missing:
        raise ValueError(f"{root} must hold live/ and spoof/ subfolders of labelled captures "
                         f"(missing: {', '.join(missing)})")
    out = []
    for label in LABELS:
        for p in sorted((root / label).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                parts = p.relative_to(root / label).parts
                species = "" if label == "live" else (parts[0] if len(parts) > 1 else "spoof")
                out.append(LabelledImage(p, label, species))
    return out


def bpcer(live: np.ndarray, threshold: float) -> float | None:
    """Share of bona fide presentations classified as attacks (live score below threshold)."""
    return float(np.mean(live < threshold)) if len(live) else None


def apcer(spoof: np.ndarray, threshold: float) -> float | None:
    """Share of attack presentations classified as bona fide (live score at or above threshold)."""
    return float(np.mean(spoof >= threshold)) if len(spoof) else None


def threshold_at_bpcer(live: np.ndarray, target: float) -> float | None:
    """The strictest threshold whose BPCER does not exceed `target`."""
    if not len(live):
        return None
    allowed = int(np.floor(target * len(live) + 1e-9))  # bona fide rejections tolerated
    return float(np.sort(live)[min(allowed, len(live) - 1)])


def roc_auc(live: np.ndarray, spoof: np.ndarray) -> float | None:
    """P(a random bona fide scores above a random attack), ties counting half."""
    if not len(live) or not len(spoof):
        return None
    s = np.sort(spoof)
    below = np.searchsorted(s, live, side="left")
    ties = np.searchsorted(s, live, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(live) * len(spoof)))


def _worst_apcer(by_species: dict[str, np.ndarray], threshold: float | None) -> float | None:
    if threshold is None:
        return None
    values = [a for v in by_species.values() if len(v) and (a := apcer(v, threshold)) is not None]
    return max(values) if values else None


def pad_report(detector, pad: PresentationAttackDetector, images_dir: Path, threshold: float,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Figures and a per-image table for `gate-eval pad`; scores only, no image data."""
    items = labelled_images(images_dir)
    if not items:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images_dir}/live or /spoof")
    root = Path(images_dir)
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        row: dict[str, Any] = {"image": str(item.path.relative_to(root)), "label": item.label,
                               "species": item.species or None, "face": False, "live": None,
                               "models": None, "verdict": None, "correct": None}
        try:
            frame = load_image(item.path)
        except ImageError as e:
            log.warning("skipping %s", e)
            row["error"] = str(e)
        else:
            faces = detector.detect(frame)
            if faces:
                s = pad.score(frame, faces[0])
                verdict = "live" if s.live >= threshold else "spoof"
                row.update(face=True, live=round(s.live, 6), models={m.model_id: round(m.live, 6) for m in s.models},
                           verdict=verdict, correct=verdict == item.label)
        rows.append(row)
        if progress:
            progress(i + 1, len(items))

    scored = [r for r in rows if r["face"]]
    live = np.array([r["live"] for r in scored if r["label"] == "live"], dtype=np.float64)
    by_species: dict[str, np.ndarray] = {}
    for sp in sorted({r["species"] for r in scored if r["label"] == "spoof"}):
        by_species[sp] = np.array([r["live"] for r in scored if r["species"] == sp], dtype=np.float64)
    spoof = np.concatenate(list(by_species.values())) if by_species else np.zeros(0)
    t_bp = threshold_at_bpcer(live, BPCER_TARGET)
    return {
        "threshold": threshold,
        "pad": pad.name,
        "images": len(rows),
        "live": int(len(live)),
        "spoof": int(len(spoof)),
        "no_face": {lab: sum(1 for r in rows if r["label"] == lab and not r["face"] and "error" not in r)
                    for lab in LABELS},
        "unreadable": sum(1 for r in rows if "error" in r),
        "apcer": _worst_apcer(by_species, threshold),
        "apcer_per_species": {sp: apcer(v, threshold) for sp, v in by_species.items()},
        "bpcer": bpcer(live, threshold),
        f"apcer_at_bpcer_{BPCER_TARGET:g}": _worst_apcer(by_species, t_bp),
        f"threshold_at_bpcer_{BPCER_TARGET:g}": t_bp,
        "auc": roc_auc(live, spoof),
        "reference_operating_point": STATED_OPERATING_POINT,
        "per_image": rows,
    }
