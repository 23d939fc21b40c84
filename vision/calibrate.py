"""Calibration records: a threshold together with the evidence behind it.

A threshold does not carry its false-accept rate from one population to another: the lane's
0.92 was chosen on LFW at FAR 0.1 %, and an independent check measured ~0.7 % on a cross-pose set
and ~0.2 % on a cross-age set with the same number (issue 19). So a threshold is only as good as
the data, the models and the number of impostor comparisons it was measured on, and a record
keeps all of them beside it:

- the threshold is chosen by principle, never tuned to folds: the smallest threshold at which
  the exact one-sided 95 % Clopper–Pearson upper bound on the FAR, from the false accepts it lets
  through, is at most the target ("FAR ≤ target with 95 % confidence"). The first records took
  the smallest threshold whose *empirical* FAR was at most the target, which left the bound above
  it (1.017e-3 for a 1e-3 target on 9.4 million comparisons); the bound rule is stricter by a
  hair on millions of comparisons (0.9291 → 0.9292) and by much more on a few thousand, which is
  where it matters: on exactly 3,000 comparisons a 1e-3 target allows no false accept at all;
- a target the impostor count cannot support is refused, by the *rule of three*: with n
  impostor comparisons and no false accept, the 95 % upper bound on the FAR is ≈ 3/n, so a
  target below 3/n cannot be stated at all. 0.1 % needs ≥ 3,000 comparisons, 1e-4 ≥ 30,000;
- FNMR at the threshold comes with a two-sided 95 % Clopper–Pearson interval.

Impostor comparisons formed from all cross-identity pairs of a sample reuse each image in many
pairs, so they are not independent: the stated bound treats them as if they were and is
optimistic by an unknown amount (docs/accuracy.md says so). Genuine comparisons whose image had
no detectable face count as false non-matches (a gate that finds no face cannot open); impostor
comparisons need a face in both images to say anything about a false accept.

A config refers to a record instead of writing a bare number (`threshold_1to1 = { record =
"calibration-lfw-dev-default.json", far = 0.001 }`): `RecordRef` is that table, `RecordResolver`
the configschema callback that reads the record, takes the operating point's threshold and keeps
what it used (`CalibratedThreshold`) for `gated --check`, `gatectl status` and the start-up
check that the lane runs the models the record was measured with (`check_models`): a threshold
carries its FAR only for the embedder (and detector, and flip setting) that produced its scores.

vision/ may not import gate or sync: the gate and the kiosk read records through this module.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from configschema import ConfigError, resolve_path
from vision.evaluate import Pair

FORMAT = "edgegate-calibration/1"
CONFIDENCE = 0.95
RULE_OF_THREE = 3.0  # -ln(1 - 0.95) ≈ 3.0: impostors needed per unit of 1/FAR
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

class CalibrationError(ValueError):
    """A calibration record that cannot support what is asked of it (one line, for the operator)."""

def min_impostors(target: float) -> int:
    """Impostor comparisons needed before a FAR (or FPIR) of `target` may be stated: ceil(3 / target)."""
    if not 0 < target < 1:
        raise ValueError(f"target rate must be between 0 and 1, got {target}")
    return math.ceil(RULE_OF_THREE / target - 1e-9)

def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p), summed in log space (n up to millions is fine)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    i = np.arange(k + 1)
    logs = (math.lgamma(n + 1) - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1) for j in i])
            + i * math.log(p) + (n - i) * math.log1p(-p))
    return float(np.exp(logs).sum())

def _upper_by_bisection(k: int, n: int, alpha: float) -> float:
    """The p at which P(X ≤ k) = alpha: the exact Clopper–Pearson upper limit, by bisection."""
    lo, hi = k / n, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi

def bound_method() -> str:
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return "Clopper-Pearson by bisection on the binomial CDF (scipy not installed)"
    return "Clopper-Pearson via scipy.stats.beta"

def cp_upper(k: int, n: int, confidence: float = CONFIDENCE, *, use_scipy: bool = True) -> float:
    """Exact one-sided upper confidence limit of a binomial rate with k events in n trials."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    if use_scipy:
        try:
            from scipy.stats import beta
        except ImportError:
            pass
        else:
            return float(beta.ppf(confidence, k + 1, n - k))
    return _upper_by_bisection(k, n, 1 - confidence)

def cp_interval(k: int, n: int, confidence: float = CONFIDENCE, *, use_scipy: bool = True) -> tuple[float, float]:
    """Exact two-sided Clopper–Pearson interval of a binomial rate."""
    if n <= 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    upper = cp_upper(k, n, 1 - a, use_scipy=use_scipy)
    lower = 0.0 if k == 0 else 1.0 - cp_upper(n - k, n, 1 - a, use_scipy=use_scipy)
    return lower, upper

@dataclass(frozen=True)
class OperatingPoint:
    """One target rate and what the data says about it; threshold None = refused (too few impostors)."""

    mode: str  # "1:1" (FAR / FNMR) or "1:N" (FPIR / FNIR)
    target: float
    impostor_comparisons: int
    genuine_comparisons: int
    needed_impostors: int
    threshold: float | None = None
    false_accepts: int = 0
    rate: float | None = None  # empirical FAR / FPIR at the threshold
    rate_upper: float | None = None  # one-sided 95 % Clopper-Pearson upper bound on it
    miss_rate: float | None = None  # FNMR / FNIR at the threshold
    miss_interval: tuple[float, float] | None = None
    refused: str = ""

    @property
    def supported(self) -> bool:
        return self.threshold is not None

    def to_json(self) -> dict:
        d = {"mode": self.mode, "target": self.target, "supported": self.supported,
             "impostor_comparisons": self.impostor_comparisons, "genuine_comparisons": self.genuine_comparisons,
             "needed_impostors": self.needed_impostors}
        if self.supported:
            d.update(threshold=self.threshold, false_accepts=self.false_accepts, rate=self.rate,
                     rate_upper=self.rate_upper, miss_rate=self.miss_rate,
                     miss_interval=list(self.miss_interval) if self.miss_interval else None)
        else:
            d["refused"] = self.refused
        return d

    @classmethod
    def from_json(cls, d: dict) -> OperatingPoint:
        mi = d.get("miss_interval")
        return cls(mode=d["mode"], target=float(d["target"]), impostor_comparisons=int(d["impostor_comparisons"]),
                   genuine_comparisons=int(d["genuine_comparisons"]), needed_impostors=int(d["needed_impostors"]),
                   threshold=d.get("threshold"), false_accepts=int(d.get("false_accepts", 0)), rate=d.get("rate"),
                   rate_upper=d.get("rate_upper"), miss_rate=d.get("miss_rate"),
                   miss_interval=(float(mi[0]), float(mi[1])) if mi else None, refused=d.get("refused", ""))

    def describe(self) -> str:
        name, miss = ("FAR", "FNMR") if self.mode == "1:1" else ("FPIR", "FNIR")
        if not self.supported:
            return f"{self.mode} {name} {self.target:g}: refused ({self.refused})"
        lo, hi = self.miss_interval or (0.0, 1.0)
        return (f"{self.mode} {name} {self.target:g}: threshold {self.threshold:.4f}, {name} "
                f"{self.false_accepts}/{self.impostor_comparisons} (95 % upper bound {self.rate_upper:.2e}), "
                f"{miss} {self.miss_rate:.4f} [{lo:.4f}, {hi:.4f}] over {self.genuine_comparisons} genuine")

def allowed_false_accepts(n: int, target: float, confidence: float = CONFIDENCE) -> int:
    """The most false accepts in `n` comparisons whose one-sided Clopper–Pearson upper bound is at
    most `target` (-1: not even zero false accepts bound the rate that low)."""
    if cp_upper(0, n, confidence) > target:
        return -1
    lo, hi = 0, max(0, min(n - 1, int(np.ceil(target * n))))  # the bound exceeds the empirical rate
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cp_upper(mid, n, confidence) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def operating_point(genuine: np.ndarray, impostor: np.ndarray, target: float, mode: str = "1:1") -> OperatingPoint:
    """The smallest threshold at which the 95 % upper bound on the FAR over `impostor` is at most
    `target` (module docstring), with its evidence; refused when len(impostor) <
    min_impostors(target)."""
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    n_imp, n_gen, need = len(impostor), len(genuine), min_impostors(target)
    allowed = allowed_false_accepts(n_imp, target) if n_imp >= need else -1
    if allowed < 0:
        return OperatingPoint(mode, target, n_imp, n_gen, need,
                              refused=f"needs at least {need} impostor comparisons (rule of three, 3/{target:g}), "
                                      f"has {n_imp}")
    desc = np.sort(impostor)[::-1]  # the threshold sits just above the (allowed + 1)-th highest impostor
    t = float(np.nextafter(desc[allowed], np.inf)) if allowed < n_imp else float(desc[-1])
    k = int((impostor >= t).sum())
    misses = int((genuine < t).sum())
    return OperatingPoint(mode, target, n_imp, n_gen, need, threshold=float(t), false_accepts=k, rate=k / n_imp,
                          rate_upper=cp_upper(k, n_imp), miss_rate=misses / n_gen if n_gen else None,
                          miss_interval=cp_interval(misses, n_gen) if n_gen else None)

# ---------------------------------------------------------------- the data: identities folder or pairs file

@dataclass(frozen=True)
class IdentitySample:
    images: list[Path]
    labels: list[str]
    identities: int  # in the folder
    folder_images: int

def sample_identities(folder: Path, *, max_images: int = 1200, per_identity: int = 4, seed: int = 0
                      ) -> IdentitySample:
    """A reproducible sample of an identities folder (one sub-folder per person): up to
    `per_identity` images of each person, people in a seeded random order, until `max_images`.
    The cap per person keeps a few heavily photographed people (LFW has one with 530 photos)
    from dominating the genuine comparisons."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{folder} is not a folder of identities (one sub-folder per person)")
    people = sorted(p for p in folder.iterdir() if p.is_dir())
    files = {p.name: sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for p in people}
    files = {k: v for k, v in files.items() if v}
    if len(files) < 2:
        raise CalibrationError(f"{folder}: needs at least two identities (sub-folders with images), has {len(files)}")
    order = sorted(files)
    random.Random(seed).shuffle(order)
    images: list[Path] = []
    labels: list[str] = []
    for name in order:
        take = files[name][:per_identity][: max_images - len(images)]
        images += take
        labels += [name] * len(take)
        if len(images) >= max_images:
            break
    return IdentitySample(images, labels, len(files), sum(len(v) for v in files.values()))

def identity_scores(templates: list[np.ndarray | None], labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosine scores over all pairs of the sample. Genuine pairs with a
    missing template score -1 (a miss); impostor pairs need both templates."""
    lab = np.array(labels)
    ok = np.array([t is not None for t in templates])
    dim = next((len(t) for t in templates if t is not None), 0)
    vecs = np.stack([t if t is not None else np.zeros(dim, np.float32) for t in templates]).astype(np.float32)
    sims = vecs @ vecs.T
    iu, ju = np.triu_indices(len(templates), k=1)
    same = lab[iu] == lab[ju]
    both = ok[iu] & ok[ju]
    s = sims[iu, ju].astype(np.float64)
    genuine = np.where(both[same], s[same], -1.0)
    impostor = s[~same & both]
    return genuine, impostor

def reference_scores(templates: list[np.ndarray | None], labels: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """The 1:1 reference check as the kiosk makes it (a live face against the photo on an ID
    document), formed from an identities sample: each person's first image is their reference,
    their other images are probes. Genuine = a probe against its own person's reference (a missing
    face on either side is a miss, -1); impostor = a probe against every other person's reference
    (both faces needed). Returns (genuine, impostor, references)."""
    first: dict[str, int] = {}
    for i, lab in enumerate(labels):
        first.setdefault(lab, i)
    ref_ids = [lab for lab, i in first.items() if templates[i] is not None]
    if not ref_ids:
        return np.zeros(0), np.zeros(0), 0
    refs = np.stack([templates[first[lab]] for lab in ref_ids]).astype(np.float32)  # type: ignore[misc]
    col = {lab: j for j, lab in enumerate(ref_ids)}
    genuine: list[float] = []
    impostor: list[np.ndarray] = []
    for i, (t, lab) in enumerate(zip(templates, labels, strict=True)):
        if first[lab] == i:
            continue
        if t is None or lab not in col:
            genuine.append(-1.0)
            continue
        s = refs @ t.astype(np.float32)
        genuine.append(float(s[col[lab]]))
        impostor.append(np.delete(s, col[lab]).astype(np.float64))
    imp = np.concatenate(impostor) if impostor else np.zeros(0)
    return np.array(genuine), imp, len(ref_ids)


def pair_scores(pairs: list[Pair], templates: dict[Path, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) scores of an LFW-style pairs file, with the same rules for missing faces."""
    gen, imp = [], []
    for p in pairs:
        a, b = templates.get(p.a), templates.get(p.b)
        if p.same:
            gen.append(-1.0 if a is None or b is None else float(np.dot(a, b)))
        elif a is not None and b is not None:
            imp.append(float(np.dot(a, b)))
    return np.array(gen), np.array(imp)

def ident_scores(templates: list[np.ndarray | None], labels: list[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """1:N from the same sample: each person's first image enrolled (if they have ≥ 2), their
    other images genuine probes; images of single-image people are non-enrolled probes.
    Returns (genuine top-1 correct, genuine top-1 score, impostor top-1 score, gallery size)."""
    first: dict[str, int] = {}
    counts: dict[str, int] = {}
    for i, lab in enumerate(labels):
        counts[lab] = counts.get(lab, 0) + 1
        first.setdefault(lab, i)
    gal = [(lab, i) for lab, i in first.items() if counts[lab] >= 2 and templates[i] is not None]
    if not gal:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0), 0
    gvec = np.stack([templates[i] for _, i in gal]).astype(np.float32)  # type: ignore[misc]
    gids = [lab for lab, _ in gal]
    enrolled_idx = {i for _, i in gal}
    ok, gs, imp = [], [], []
    for i, (t, lab) in enumerate(zip(templates, labels, strict=True)):
        if i in enrolled_idx:
            continue
        if counts[lab] >= 2:
            if t is None or lab not in gids:
                ok.append(False)
                gs.append(-1.0)
                continue
            s = gvec @ t
            j = int(np.argmax(s))
            ok.append(gids[j] == lab)
            gs.append(float(s[j]))
        elif t is not None:
            imp.append(float((gvec @ t).max()))
    return np.array(ok, bool), np.array(gs), np.array(imp), len(gal)

def ident_operating_point(ok: np.ndarray, gen: np.ndarray, imp: np.ndarray, target: float) -> OperatingPoint:
    """As `operating_point`, for 1:N: FPIR over non-enrolled probes, FNIR = top-1 wrong or below."""
    p = operating_point(gen, imp, target, "1:N")
    if not p.supported or not len(gen):
        return p
    misses = int((~(ok & (gen >= p.threshold))).sum())
    return OperatingPoint(**{**p.__dict__, "miss_rate": misses / len(gen),
                             "miss_interval": cp_interval(misses, len(gen))})

# ---------------------------------------------------------------- the record

@dataclass(frozen=True)
class CalibrationRecord:
    description: str
    data: dict
    models: dict  # detector, embedder (names as in the manifests), their sha256s, flip, min_face
    points: list[OperatingPoint]
    confidence: float = CONFIDENCE
    method: str = ""
    path: Path | None = None

    @property
    def embedder(self) -> str:
        return str(self.models.get("embedder", ""))

    @property
    def detector(self) -> str:
        return str(self.models.get("detector", ""))

    def point(self, mode: str, target: float) -> OperatingPoint:
        """The supported operating point for `target`, or a CalibrationError naming what the record has."""
        name = "FAR" if mode == "1:1" else "FPIR"
        for p in self.points:
            if p.mode == mode and math.isclose(p.target, target, rel_tol=1e-9):
                if not p.supported:
                    raise CalibrationError(f"calibration record {self.path}: {p.describe()}")
                return p
        have = ", ".join(f"{p.target:g}" for p in self.points if p.mode == mode and p.supported) or "none"
        raise CalibrationError(f"calibration record {self.path} has no {mode} operating point at {name} "
                               f"{target:g} (supported: {have})")

    def summary(self, mode: str, target: float) -> str:
        """One line for `gated --check` and `gatectl status`: target, bound, data, model."""
        p = self.point(mode, target)
        name = "FAR" if mode == "1:1" else "FPIR"
        return (f"{p.threshold:.4f} at {mode} {name} {target:g} (≤ {p.rate_upper:.2e} at 95 %, "
                f"{p.impostor_comparisons} impostor comparisons) on \"{self.description}\", "
                f"model {self.embedder} + {self.detector}")

    def to_json(self) -> dict:
        return {"format": FORMAT, "description": self.description, "data": self.data, "models": self.models,
                "confidence": self.confidence, "method": self.method,
                "rule": "a target rate r is stated only with at least ceil(3 / r) impostor comparisons "
                        "(rule of three: zero errors in n comparisons bound the rate by ~3/n at 95 %)",
                "threshold_rule": "smallest threshold at which the one-sided 95 % Clopper-Pearson upper bound on "
                                  "the FAR (score >= threshold counts as a false accept) is at most the target",
                "operating_points": [p.to_json() for p in self.points]}

def write_record(record: CalibrationRecord, path: Path) -> None:
    Path(path).write_text(json.dumps(record.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

def load_record(path: Path) -> CalibrationRecord:
    """A record from its JSON file; anything unreadable or malformed is one CalibrationError line."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CalibrationError(f"cannot read calibration record {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CalibrationError(f"calibration record {path} is not JSON: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CalibrationError(f"{path} is not a calibration record (format {FORMAT!r} expected)")
    try:
        points = [OperatingPoint.from_json(p) for p in d["operating_points"]]
        return CalibrationRecord(str(d["description"]), dict(d["data"]), dict(d["models"]), points,
                                 float(d.get("confidence", CONFIDENCE)), str(d.get("method", "")), path)
    except (KeyError, TypeError, ValueError) as e:
        raise CalibrationError(f"calibration record {path} is malformed: {e!r}") from None

def calibrate(genuine: np.ndarray, impostor: np.ndarray, far_targets: Iterable[float], *,
              description: str, data: dict, models: dict,
              ident: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None,
              fpir_targets: Iterable[float] = ()) -> CalibrationRecord:
    """A record with one operating point per target (refused ones kept, with the reason)."""
    if not description.strip():
        raise CalibrationError("a calibration record needs a description of its data "
                               "(e.g. \"LFW dev folds: news photos, not this site's camera\")")
    points = [operating_point(genuine, impostor, t, "1:1") for t in far_targets]
    data = {**data, "genuine_comparisons": int(len(genuine)), "impostor_comparisons": int(len(impostor))}
    if ident is not None:
        ok, gen, imp, gallery = ident
        points += [ident_operating_point(ok, gen, imp, t) for t in fpir_targets]
        data.update(ident_gallery=gallery, ident_genuine_probes=int(len(gen)), ident_impostor_probes=int(len(imp)))
    return CalibrationRecord(description, data, models, points, CONFIDENCE, bound_method())


# ---------------------------------------------------------------- thresholds that know where they came from

@dataclass(frozen=True)
class RecordRef:
    """A threshold given as the calibration record it came from and the target rate of its
    operating point (the config's `{ record = "...", far = 0.001 }`)."""

    record: Path = field(metadata={"help": "calibration record (gate-eval calibrate --out), relative to the "
                                           "config file's folder"})
    far: float | None = field(default=None, metadata={"help": "1:1 target false-accept rate", "min": 0.0,
                                                         "max": 1.0})
    fpir: float | None = field(default=None, metadata={"help": "1:N target false-positive identification rate",
                                                          "min": 0.0, "max": 1.0})

    def check(self) -> None:
        if (self.far is None) == (self.fpir is None):
            raise ConfigError("give exactly one target: far = ... (a 1:1 threshold) or fpir = ... (1:N)")


@dataclass(frozen=True)
class CalibratedThreshold:
    """A threshold a config took from a record: which key, which record, which operating point."""

    key: str  # the config key, e.g. "lane.policy.threshold_1to1"
    record: CalibrationRecord
    point: OperatingPoint

    @property
    def threshold(self) -> float:
        return float(self.point.threshold)  # type: ignore[arg-type]

    def line(self) -> str:
        """One line for `gated --check` and the status: key, threshold, target, bound, data, models."""
        p, rec = self.point, self.record
        name = "FAR" if p.mode == "1:1" else "FPIR"
        lo, hi = p.miss_interval or (0.0, 1.0)
        miss = "FNMR" if p.mode == "1:1" else "FNIR"
        return (f"{self.key} = {self.threshold:.4f} from {rec.path}: {p.mode} {name} {p.target:g} "
                f"(measured {p.false_accepts}/{p.impostor_comparisons}, 95 % upper bound {p.rate_upper:.2e}; "
                f"{miss} {p.miss_rate:.1%} [{lo:.1%}, {hi:.1%}]) on \"{rec.description}\"; "
                f"models {rec.detector} + {rec.embedder}, flip {str(rec.models.get('flip')).lower()}")

    def to_status(self) -> dict:
        p, rec = self.point, self.record
        return {"threshold": round(self.threshold, 6), "record": str(rec.path), "mode": p.mode, "target": p.target,
                "impostor_comparisons": p.impostor_comparisons, "false_accepts": p.false_accepts,
                "rate_upper_95": p.rate_upper, "miss_rate": p.miss_rate,
                "miss_interval_95": list(p.miss_interval) if p.miss_interval else None,
                "data": rec.description, "detector": rec.detector, "embedder": rec.embedder,
                "flip": rec.models.get("flip")}


class RecordResolver:
    """The configschema `resolve` callback for thresholds given as a `RecordRef`: reads the record
    (relative to `base_dir`, the config file's folder), returns the operating point's threshold
    and remembers it in `used`. A field's metadata `calibration_mode` ("1:1" or "1:N") says which
    kind of rate its threshold is stated at, so a 1:N threshold cannot be taken from a 1:1 FAR."""

    def __init__(self, base_dir: Path):
        self.base_dir = Path(base_dir)
        self.used: dict[str, CalibratedThreshold] = {}
        self._records: dict[Path, CalibrationRecord] = {}

    def __call__(self, ref: RecordRef, key: str, meta: dict) -> float:
        mode = meta.get("calibration_mode", "1:1")
        if mode == "1:1" and ref.far is None:
            raise ConfigError(f"{key} is a 1:1 threshold: its record reference needs far = ... (the 1:1 "
                              "false-accept rate), not fpir")
        if mode == "1:N" and ref.fpir is None:
            raise ConfigError(f"{key} is a 1:N threshold: its record reference needs fpir = ... (the rate at "
                              "which a person not enrolled is matched to someone), not far")
        path = resolve_path(ref.record, self.base_dir)
        try:
            record = self._records.get(path) or load_record(path)
            self._records[path] = record
            point = record.point(mode, float(ref.far if mode == "1:1" else ref.fpir))  # type: ignore[arg-type]
        except CalibrationError as e:
            raise ConfigError(f"{key}: {e}") from None
        self.used[key] = CalibratedThreshold(key, record, point)
        return float(point.threshold)  # type: ignore[arg-type]


def model_name(model_dir: Path, name_or_manifest: str) -> str:
    """The model id a config's `models.detector` / `models.embedder` stands for: the name itself,
    or the `name` inside a manifest file given by path."""
    p = Path(name_or_manifest)
    if p.suffix == ".json":
        q = p if p.is_absolute() else Path(model_dir) / p
        for candidate in (p, q):
            try:
                return str(json.loads(candidate.read_text(encoding="utf-8"))["name"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return name_or_manifest


def check_models(used: dict[str, CalibratedThreshold], *, detector: str, embedder: str, flip: bool) -> None:
    """Refuse thresholds measured with other models than the ones that will produce the scores:
    one ConfigError line naming both ids (the embedder first, as it matters most)."""
    for key, c in used.items():
        rec = c.record
        for what, theirs, ours, where in (("embedder", rec.embedder, embedder, "models.embedder"),
                                          ("detector", rec.detector, detector, "models.detector")):
            if theirs != ours:
                raise ConfigError(f"{key}: calibration record {rec.path} was measured with {what} {theirs!r}, "
                                  f"this config runs {ours!r} ({where}); its threshold does not carry over to "
                                  f"another model: run gate-eval calibrate with {ours!r} and refer to that record")
        rec_flip = rec.models.get("flip")
        if rec_flip is not None and bool(rec_flip) != bool(flip):
            raise ConfigError(f"{key}: calibration record {rec.path} was measured with flip = "
                              f"{str(bool(rec_flip)).lower()}, this config has models.flip = {str(bool(flip)).lower()}"
                              f" (flip-averaged templates score on another scale): calibrate with the same setting")
