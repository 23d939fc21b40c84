"""Accuracy measurement anyone can rerun: LFW-protocol verification and 1:N identification.

Thresholds are chosen by leave-one-fold-out on identity-disjoint folds, never on the fold being
scored, so the reported accuracy is what a fresh population would see, not a number tuned to
the test data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from vision.image_io import ImageError, load_image
from vision.match.reference import exact_search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    fold: int
    a: Path
    b: Path
    same: bool


def lfw_image_path(images: Path, name: str, idx: int) -> Path:
    return Path(images) / name / f"{name}_{idx:04d}.jpg"


def read_pairs(pairs_file: Path, images: Path) -> list[Pair]:
    """LFW pairs format: header `folds n`, then per fold n same lines and n different lines."""
    lines = [ln.split() for ln in Path(pairs_file).read_text().splitlines() if ln.strip()]
    try:
        folds, n = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError) as e:
        raise ValueError(f"{pairs_file}: first line must be '<folds> <pairs per class>'") from e
    body = lines[1:]
    if len(body) != folds * 2 * n:
        raise ValueError(f"{pairs_file}: header promises {folds}×2×{n} pairs, file has {len(body)} lines")
    pairs = []
    for i, parts in enumerate(body):
        fold = i // (2 * n)
        if len(parts) == 3:
            pairs.append(Pair(fold, lfw_image_path(images, parts[0], int(parts[1])),
                              lfw_image_path(images, parts[0], int(parts[2])), True))
        elif len(parts) == 4:
            pairs.append(Pair(fold, lfw_image_path(images, parts[0], int(parts[1])),
                              lfw_image_path(images, parts[2], int(parts[3])), False))
        else:
            raise ValueError(f"{pairs_file}: line {i + 2} is neither 'name i j' nor 'name1 i name2 j'")
    return pairs


def pick_central_face(faces, shape) -> int | None:
    """Index of the face nearest the image centre: LFW photos are centred on their subject and
    often show bystanders, so the largest face is not always the right one."""
    if not faces:
        return None
    cy, cx = shape[0] / 2, shape[1] / 2
    d = [np.hypot((f.box[0] + f.box[2]) / 2 - cx, (f.box[1] + f.box[3]) / 2 - cy) for f in faces]
    return int(np.argmin(d))


def embed_images(pipeline, paths: Iterable[Path], progress: Callable[[int, int], None] | None = None
                 ) -> dict[Path, np.ndarray | None]:
    """Template of the central face of each image; None where no face was found or the file is bad."""
    from vision.align import align

    paths = list(dict.fromkeys(Path(p) for p in paths))
    out: dict[Path, np.ndarray | None] = {}
    for i, p in enumerate(paths):
        try:
            img = load_image(p)
        except ImageError as e:
            log.warning("%s", e)
            out[p] = None
            continue
        faces = pipeline.detector.detect(img)
        j = pick_central_face(faces, img.shape)
        if j is None:
            out[p] = None
        else:
            chip = align(img, faces[j], pipeline.embedder.template)
            out[p] = pipeline.embedder.embed(chip[None])[0]
        if progress:
            progress(i + 1, len(paths))
    return out


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold maximising accuracy; midpoints between sorted scores, ties broken to the middle."""
    order = np.sort(np.unique(scores))
    cands = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    acc = np.array([((scores >= t) == same).mean() for t in cands])
    best = np.flatnonzero(acc == acc.max())
    return float(cands[best[len(best) // 2]])


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Smallest threshold whose false-accept rate (score ≥ t) is at most `far`."""
    imp = np.sort(np.asarray(impostor))[::-1]
    allowed = int(np.floor(far * len(imp)))
    if allowed >= len(imp):
        return float(imp[-1])
    return float(np.nextafter(imp[allowed], np.inf))


@dataclass(frozen=True)
class VerificationReport:
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    threshold: float  # best on all folds pooled, for reference only
    tar_at_far_1e_3: float
    threshold_at_far_1e_3: float
    pairs: int
    no_face: int
    no_face_images: list[str]

    def to_json(self) -> dict:
        return {"accuracy_mean": self.accuracy_mean, "accuracy_std": self.accuracy_std,
                "fold_accuracies": self.fold_accuracies, "fold_thresholds": self.fold_thresholds,
                "threshold": self.threshold, "tar_at_far_1e-3": self.tar_at_far_1e_3,
                "threshold_at_far_1e-3": self.threshold_at_far_1e_3, "pairs": self.pairs,
                "no_face": self.no_face, "no_face_images": self.no_face_images}


def verification_report(pairs: list[Pair], templates: dict[Path, np.ndarray | None]) -> VerificationReport:
    """A pair with an image where no face was found scores -1 (a certain 'different'): a gate
    that cannot find a face cannot open, and hiding such pairs would flatter the numbers."""
    scores = np.empty(len(pairs))
    for i, p in enumerate(pairs):
        a, b = templates.get(p.a), templates.get(p.b)
        scores[i] = -1.0 if a is None or b is None else float(np.dot(a, b))
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    accs, ths = [], []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        t = _best_threshold(scores[train], same[train])
        ths.append(t)
        accs.append(float(((scores[test] >= t) == same[test]).mean()))
    t_far = threshold_at_far(scores[~same], 1e-3)
    tar = float((scores[same] >= t_far).mean())
    missing = sorted(str(p) for p, v in templates.items() if v is None)
    return VerificationReport(float(np.mean(accs)), float(np.std(accs)), accs, ths,
                              _best_threshold(scores, same), tar, t_far, len(pairs), len(missing), missing)


@dataclass(frozen=True)
class IdentSplit:
    gallery: dict[str, Path]  # identity → enrolled image
    genuine: list[tuple[str, Path]]  # (identity, probe image)
    impostor: list[Path]  # images of people not enrolled


def ident_split(images: Path) -> IdentSplit:
    gallery, genuine, impostor = {}, [], []
    for person in sorted(p for p in Path(images).iterdir() if p.is_dir()):
        files = sorted(f for f in person.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(files) >= 2:
            gallery[person.name] = files[0]
            genuine += [(person.name, f) for f in files[1:]]
        elif len(files) == 1:
            impostor.append(files[0])
    return IdentSplit(gallery, genuine, impostor)


def fnir_at_fpir(gen_top_id_ok: np.ndarray, gen_scores: np.ndarray, imp_scores: np.ndarray, fpir: float
                 ) -> tuple[float, float]:
    """(FNIR, threshold) at the threshold where at most `fpir` of non-enrolled probes get any
    candidate at or above it; a genuine probe is a miss if its top-1 is wrong or below it."""
    t = threshold_at_far(imp_scores, fpir)
    hit = gen_top_id_ok & (gen_scores >= t)
    return float(1.0 - hit.mean()), t


def identification_report(split: IdentSplit, templates: dict[Path, np.ndarray | None], matcher_factory
                          ) -> dict:
    gal_ids = [i for i, p in split.gallery.items() if templates.get(p) is not None]
    vecs = np.stack([v for i in gal_ids if (v := templates.get(split.gallery[i])) is not None])
    matcher = matcher_factory(vecs.shape[1])
    for i, v in zip(gal_ids, vecs, strict=True):
        matcher.add(i, v[None])
    enrolled = set(gal_ids)
    asked: list[tuple[np.ndarray, tuple[str, float]]] = []  # every probe and the matcher's answer

    def search(v: np.ndarray):
        m = matcher.search(v, k=1)[0]
        asked.append((v, (m.subject_id, m.score)))
        return m

    gen_ok, gen_s, gen_missing = [], [], 0
    for ident, p in split.genuine:
        v = templates.get(p)
        if v is None or ident not in enrolled:
            gen_missing += 1
            gen_ok.append(False)
            gen_s.append(-1.0)
            continue
        m = search(v)
        gen_ok.append(m.subject_id == ident)
        gen_s.append(m.score)
    imp_s = []
    for p in split.impostor:
        v = templates.get(p)
        imp_s.append(-1.0 if v is None else search(v).score)
    ok, gen, imp = np.array(gen_ok), np.array(gen_s), np.array(imp_s)
    # the matcher scans a compact copy; its answers must equal exact float32 search (0 changes)
    truth = exact_search(vecs, gal_ids, np.stack([v for v, _ in asked]), 1) if asked else []
    changes = sum(got != want[0] for (_, got), want in zip(asked, truth, strict=True))
    f3, t3 = fnir_at_fpir(ok, gen, imp, 0.003)
    f2, t2 = fnir_at_fpir(ok, gen, imp, 0.01)
    return {"rank1": float(ok.mean()), "fnir_at_fpir_0.003": f3, "threshold_at_fpir_0.003": t3,
            "fnir_at_fpir_0.01": f2, "threshold_at_fpir_0.01": t2, "gallery": len(gal_ids),
            "genuine_probes": len(split.genuine), "impostor_probes": len(split.impostor),
            "no_face": sum(v is None for v in templates.values()), "genuine_unusable": gen_missing,
            "exact_decision_changes": int(changes)}

