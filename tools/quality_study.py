"""How each quality check trades refusals against match scores, measured on real photos.

    python -m tools.quality_study --images ../shared/faces/lfw-dev/images --video ../shared/faces/video

The quality gate (vision/quality.py) refuses a face before it is matched. A check that is too
strict refuses travellers whose faces would have matched (the video check of issue 19 refused
many close-up frames as too dark, too turned or blurred); one that is too loose lets through
faces that score badly, and, worse, faces that score high against *other* people. So for every
check and several cut-offs this measures, with the default models and the lane's 1:1 threshold
from the shipped calibration record (FAR 1e-3):

* LFW (every person's photos, up to 4 each, the calibration record's sample): each face's
  quality figures and template, then for the faces a cut-off refuses (by that check alone) and
  the faces it keeps: the share refused, the FNMR of their genuine pairs and the FAR of their
  impostor pairs at the threshold. A refused group with a FNMR and FAR like the kept group's is
  refused for nothing; one with a high FAR is what the check is for.
* sweeps, because LFW's news photos are nearly all bright, sharp and near: a probe photo of each
  of 200 people shrunk (eyes 44 down to 12 px apart: further from the camera), darkened (every
  pixel times 1 down to 0.12: a shorter exposure) or blurred (Gaussian, sigma up to 0.16 x the eye
  distance: defocus, motion), matched against the person's other photo untouched and against
  everyone else's: FNMR with its interval and FAR at the threshold per step, and the figure the
  check reads, so a cut-off can be read off where scores start to fall.
* the video beside the LFW folder (a speaker talking to a camera, cuts between shots): every
  frame's faces, their quality figures, and their scores against the speaker's still and a
  second person's still; per check, the close-up frames it alone refuses and whether those
  frames would have matched the speaker (and never the second person).

Templates and figures only, never images, are cached (--cache, 0600) so the tables can be
re-cut without embedding again. `--json` prints everything as one object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np

from vision.quality import QualityThresholds, assess

# (figure, check's field, direction: a face is refused when its figure is "below" / "above" the
# cut-off, cut-offs to try). The defaults are among the cut-offs.
CHECKS = (
    ("brightness", "min_brightness", "below", (20.0, 30.0, 40.0, 50.0, 60.0)),
    ("brightness", "max_brightness", "above", (200.0, 210.0, 220.0, 235.0)),
    ("yaw_deg", "max_yaw_deg", "above", (15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0)),
    ("pitch_deg", "max_pitch_deg", "above", (15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0)),
    ("sharpness", "min_sharpness", "below", (5.0, 10.0, 20.0, 40.0, 80.0)),
    ("clipped", "max_clipped_fraction", "above", (0.05, 0.1, 0.25, 0.4)),
    ("detector_score", "min_detector_score", "below", (0.8, 0.9, 0.95, 0.99)),
)


def _record_threshold(record: Path, target: float = 1e-3) -> float:
    from vision.calibrate import load_record

    return float(load_record(record).point("1:1", target).threshold)  # type: ignore[arg-type]


def _load_pipeline(models: Path, min_face: int):
    from vision.loading import load_pipeline

    return load_pipeline(models, "mtcnn-v1", "dlib-resnet-v1", flip=True, threads=1,
                         detector_opts={"min_face": min_face})


def _face_figures(pipe, img: np.ndarray, central: bool = True) -> list[tuple[dict, np.ndarray]]:
    """(quality figures, template) of the central face (LFW) or of every face (video)."""
    from vision.align import align
    from vision.evaluate import pick_central_face

    faces = pipe.detector.detect(img)
    if not faces:
        return []
    chosen = [faces[pick_central_face(faces, img.shape)]] if central else faces
    out = []
    for f in chosen:
        q = assess(f, img, QualityThresholds())
        chip = align(img, f, pipe.embedder.template)
        out.append((dict(q.figures), pipe.embedder.embed(chip[None])[0]))
    return out


def embed_lfw(pipe, images: Path, max_images: int, per_identity: int) -> dict:
    from vision.calibrate import sample_identities

    sample = sample_identities(images, max_images=max_images, per_identity=per_identity, seed=0)
    labels, figs, vecs = [], [], []
    for path, lab in zip(sample.images, sample.labels, strict=True):
        img = cv2.imread(str(path))
        found = _face_figures(pipe, img) if img is not None else []
        if found:
            labels.append(lab)
            figs.append(found[0][0])
            vecs.append(found[0][1])
    keys = sorted(figs[0])
    return {"labels": np.array(labels), "figures": np.array([[f[k] for k in keys] for f in figs]),
            "keys": np.array(keys), "vectors": np.stack(vecs).astype(np.float32)}


def lfw_table(data: dict, threshold: float) -> list[dict]:
    """Per check and cut-off: faces refused, and FNMR / FAR at `threshold` of pairs with a refused
    face against pairs of kept faces."""
    from vision.calibrate import cp_interval

    labels, vecs = data["labels"], data["vectors"]
    keys = list(data["keys"])
    sims = vecs @ vecs.T
    iu, ju = np.triu_indices(len(labels), k=1)
    same = labels[iu] == labels[ju]
    s = sims[iu, ju]
    rows = []
    for figure, check, direction, cuts in CHECKS:
        v = np.abs(data["figures"][:, keys.index(figure)]) if figure.endswith("_deg") else \
            data["figures"][:, keys.index(figure)]
        default = getattr(QualityThresholds(), check)
        for cut in sorted(set(cuts) | {default}):
            refused = v < cut if direction == "below" else v > cut
            pair_refused = refused[iu] | refused[ju]
            row = {"check": check, "cut": cut, "default": cut == default, "faces": int(len(v)),
                   "refused": int(refused.sum()), "refused_share": float(refused.mean())}
            for name, mask in (("refused", pair_refused), ("kept", ~pair_refused)):
                g, i = s[same & mask], s[~same & mask]
                row[f"{name}_genuine_pairs"] = int(len(g))
                row[f"{name}_impostor_pairs"] = int(len(i))
                row[f"{name}_fnmr"] = float((g < threshold).mean()) if len(g) else None
                row[f"{name}_fnmr_interval"] = list(cp_interval(int((g < threshold).sum()), len(g))) if len(g) else None
                row[f"{name}_far"] = float((i >= threshold).mean()) if len(i) else None
            rows.append(row)
    return rows


# Bands beyond (or around) a cut-off, per figure: the faces in each band are compared with the
# "core" faces every setting accepts (|yaw| <= 35, |pitch| <= 30, sharpness >= 150).
BANDS = (("yaw_deg", ((35, 45), (45, 60), (60, 90))), ("pitch_deg", ((30, 40), (40, 90))),
         ("sharpness", ((0, 100), (100, 150), (150, 250), (250, 1e9))))


def band_table(data: dict, threshold: float) -> list[dict]:
    """For each band of a figure: the faces in it (within the core's limits on the other figures),
    and FNMR / FAR at `threshold` of their pairs with core faces, against core-core pairs."""
    from vision.calibrate import cp_interval

    keys = list(data["keys"])
    labels, vecs = data["labels"], data["vectors"]
    fig = {k: np.abs(data["figures"][:, keys.index(k)]) if k.endswith("_deg") else data["figures"][:, keys.index(k)]
           for k in ("yaw_deg", "pitch_deg", "sharpness")}
    limits = {"yaw_deg": fig["yaw_deg"] <= 35, "pitch_deg": fig["pitch_deg"] <= 30,
              "sharpness": fig["sharpness"] >= 150}
    core = limits["yaw_deg"] & limits["pitch_deg"] & limits["sharpness"]
    sims = vecs @ vecs.T
    iu, ju = np.triu_indices(len(labels), k=1)
    same = labels[iu] == labels[ju]
    s = sims[iu, ju]

    def row(name: str, lo: float, hi: float, members: np.ndarray, pairs: np.ndarray) -> dict:
        g, i = s[same & pairs], s[~same & pairs]
        k = int((g < threshold).sum())
        return {"figure": name, "band": [lo, hi], "faces": int(members.sum()), "genuine_pairs": int(len(g)),
                "fnmr": k / len(g) if len(g) else None, "fnmr_interval": list(cp_interval(k, len(g))) if len(g)
                else None, "impostor_pairs": int(len(i)), "far": float((i >= threshold).mean()) if len(i) else None}

    rows = [row("core", 0, 0, core, core[iu] & core[ju])]
    for name, bands in BANDS:
        for lo, hi in bands:
            # in the band on this figure, within the core's limits on the others
            others = np.logical_and.reduce([v for k, v in limits.items() if k != name])
            inb = (fig[name] > lo) & (fig[name] <= hi) & others
            rows.append(row(name, lo, hi, inb, (inb[iu] & core[ju]) | (inb[ju] & core[iu])))
    return rows


def _probes(pipe, images: Path, people: int) -> tuple[np.ndarray, list[tuple[np.ndarray, object]]]:
    """For the first `people` persons with two photos: the first photo's template (the enrolment)
    and the second photo with its face (the probe to be transformed)."""
    from vision.evaluate import pick_central_face

    dirs = [d for d in sorted(images.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 2][:people]
    refs, probes = [], []
    for d in dirs:
        a, b = sorted(d.glob("*.jpg"))[:2]
        ra = _face_figures(pipe, cv2.imread(str(a)))
        img_b = cv2.imread(str(b))
        fb = pipe.detector.detect(img_b)
        if not ra or not fb:
            continue
        refs.append(ra[0][1])
        probes.append((img_b, fb[pick_central_face(fb, img_b.shape)]))
    return np.stack(refs), probes


def _shrunk(img: np.ndarray, face, iod: float) -> np.ndarray:
    """The photo shrunk until the eyes are `iod` px apart, pasted on a grey 640x480 frame."""
    s = iod / max(face.inter_eye_px, 1.0)
    photo = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    frame = np.full((480, 640, 3), 110, np.uint8)
    h, w = min(photo.shape[0], 480 - 100), min(photo.shape[1], 640 - 200)
    frame[100:100 + h, 200:200 + w] = photo[:h, :w]
    return frame


def _darker(img: np.ndarray, _face, gain: float) -> np.ndarray:
    """An under-exposed frame: every pixel times `gain` (a shorter exposure, a darker scene)."""
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _blurred(img: np.ndarray, face, sigma_iod: float) -> np.ndarray:
    """Defocus or motion smear: a Gaussian blur whose sigma is `sigma_iod` x the eye distance."""
    if sigma_iod <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma_iod * face.inter_eye_px)


# name, transform, parameter values (the first is the photo as it is, or the largest size), the
# figure the check reads, the check
SWEEPS = (
    ("size", _shrunk, (44, 36, 30, 24, 20, 16, 12), "inter_eye_px", "min_inter_eye_px"),
    ("exposure", _darker, (1.0, 0.6, 0.45, 0.35, 0.25, 0.18, 0.12), "brightness", "min_brightness"),
    ("blur", _blurred, (0.0, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16), "sharpness", "min_sharpness"),
)


def sweep(pipe, refs: np.ndarray, probes: list, transform, values, figure: str, check: str,
          threshold: float) -> list[dict]:
    """Each probe photo transformed, detected, assessed and matched against its own person's
    enrolment (genuine) and everyone else's (impostor), per parameter value."""
    from vision.calibrate import cp_interval

    rows = []
    cut = getattr(QualityThresholds(), check)
    for value in values:
        gen, imp, figs_seen, refused, found = [], [], [], 0, 0
        for k, (img, face) in enumerate(probes):
            got = _face_figures(pipe, transform(img, face, value))
            if not got:
                gen.append(-1.0)  # no face: the lane cannot match it either
                continue
            found += 1
            figs, t = got[0]
            figs_seen.append(figs[figure])
            refused += figs[figure] < cut
            scores = refs @ t
            gen.append(float(scores[k]))
            imp += [float(x) for j, x in enumerate(scores) if j != k]
        g, i = np.array(gen), np.array(imp)
        misses = int((g < threshold).sum())
        rows.append({"value": value, "figure": figure, "figure_median": float(np.median(figs_seen)) if figs_seen
                     else None, "probes": len(probes), "found": found, "refused_by_default": int(refused),
                     "genuine_median": float(np.median(g)), "fnmr": misses / len(g),
                     "fnmr_interval": list(cp_interval(misses, len(g))), "impostor_pairs": int(len(i)),
                     "far": float((i >= threshold).mean()) if len(i) else None,
                     "impostor_max": float(i.max()) if len(i) else None})
    return rows


def _shots(path: Path, cut_level: float = 25.0) -> list[tuple[int, int]]:
    """(first, last) frame of each shot: a cut is a mean absolute difference of the downscaled
    grey frames above `cut_level` (the clip's 3 cuts score 28-31, motion within a shot <= 15)."""
    cap = cv2.VideoCapture(str(path))
    prev, cuts, n = None, [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        g = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (64, 36)).astype(np.float32)
        if prev is not None and float(np.abs(g - prev).mean()) > cut_level:
            cuts.append(n)
        prev, n = g, n + 1
    cap.release()
    bounds = [0, *cuts, n]
    return [(a, b - 1) for a, b in zip(bounds, bounds[1:], strict=False)]


def video_study(pipe, folder: Path, threshold: float) -> dict:
    """Every face of every frame of the clip, scored against the speaker's still and a second
    person's. The clip is split into shots at its cuts; the speaker's close-up is the shot whose
    largest faces score highest against the speaker's still (a label for the shot, not for a
    frame: each frame's refusal is then judged by its own score)."""
    speaker = _face_figures(pipe, cv2.imread(str(folder / "lin-manuel-miranda.png")))[0][1]
    other = _face_figures(pipe, cv2.imread(str(folder / "alex-lacamoire.png")))[0][1]
    clip = folder / "short_hamilton_clip.mp4"
    cap = cv2.VideoCapture(str(clip))
    faces = []
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        for rank, (figs, t) in enumerate(_face_figures(pipe, frame, central=False)):
            faces.append({"frame": n, "rank": rank, **figs, "speaker": float(speaker @ t), "other": float(other @ t)})
        n += 1
    cap.release()
    shots = []
    for a, b in _shots(clip):
        prim = [f for f in faces if a <= f["frame"] <= b and f["rank"] == 0]
        every = [f for f in faces if a <= f["frame"] <= b]
        shots.append({"frames": [a, b], "frames_with_face": len(prim), "faces": len(every),
                      "inter_eye_px_median": float(np.median([f["inter_eye_px"] for f in prim])) if prim else None,
                      "speaker_median": float(np.median([f["speaker"] for f in prim])) if prim else None,
                      "reasons": _reasons(prim, QualityThresholds())})
    best = max((s for s in shots if s["frames_with_face"] >= 10), key=lambda s: s["speaker_median"])
    a, b = best["frames"]
    close = [f for f in faces if a <= f["frame"] <= b and f["rank"] == 0]
    others = [f for f in faces if not (a <= f["frame"] <= b)]
    t = QualityThresholds()
    rows = []
    for figure, check, direction, cuts in CHECKS + (("inter_eye_px", "min_inter_eye_px", "below",
                                                     (20.0, 25.0, 30.0, 35.0)),):
        default = getattr(t, check)
        for cut in sorted(set(cuts) | {default}):
            def refused(f, cut=cut, figure=figure, direction=direction):
                v = abs(f[figure]) if figure.endswith("_deg") else f[figure]
                return v < cut if direction == "below" else v > cut
            ref = [f for f in close if refused(f)]
            kept_others = [f for f in others if not refused(f)]
            rows.append({"check": check, "cut": cut, "default": cut == default, "close_up_faces": len(close),
                         "refused": len(ref), "refused_matching_speaker": sum(f["speaker"] >= threshold for f in ref),
                         "kept_other_shots_max_speaker": max((f["speaker"] for f in kept_others), default=None),
                         "kept_any_max_other": max((f["other"] for f in faces if not refused(f)), default=None)})
    passing = [f for f in close if assess_figures(f, t)]
    return {"frames": n, "faces": len(faces), "shots": shots, "close_up_shot": best["frames"],
            "close_up_faces": len(close), "close_up_passing_quality": len(passing),
            "passing_matching_speaker": sum(f["speaker"] >= threshold for f in passing),
            "close_up_matching_speaker": sum(f["speaker"] >= threshold for f in close),
            "max_speaker_other_shots": max((f["speaker"] for f in others), default=None),
            "max_other_any_face": max(f["other"] for f in faces) if faces else None,
            "refusals_by_reason": _reasons(close, t), "rows": rows}


def assess_figures(f: dict, t: QualityThresholds) -> bool:
    """The quality gate's verdict from the figures it reported (vision.quality.assess's rules)."""
    return not _fails(f, t)


def _fails(f: dict, t: QualityThresholds) -> list[str]:
    out = []
    if f["detector_score"] < t.min_detector_score:
        out.append("low_detector_score")
    if f["inter_eye_px"] < t.min_inter_eye_px:
        out.append("face_too_small")
    if f["sharpness"] < t.min_sharpness:
        out.append("blurred")
    if abs(f["yaw_deg"]) > t.max_yaw_deg:
        out.append("pose_yaw")
    if abs(f["pitch_deg"]) > t.max_pitch_deg:
        out.append("pose_pitch")
    if f["brightness"] < t.min_brightness:
        out.append("too_dark")
    elif f["brightness"] > t.max_brightness:
        out.append("too_bright")
    if f["clipped"] > t.max_clipped_fraction:
        out.append("exposure_clipped")
    return out


def _reasons(faces: list[dict], t: QualityThresholds) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in faces:
        for r in _fails(f, t):
            out[r] = out.get(r, 0) + 1
    return dict(sorted(out.items()))


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _ci(iv) -> str:
    return "" if not iv else f" [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]"


def format_tables(r: dict) -> str:
    lines = [f"LFW: {r['lfw_faces']} faces; threshold {r['threshold']:.4f} (1:1 FAR 1e-3, shipped record)", "",
             "| check | cut-off | faces refused | FNMR of pairs with a refused face [95 % CI] / kept pairs "
             "| FAR refused / kept |", "|---|---|---|---|---|"]
    for row in r["lfw"]:
        if not row["refused"] and not row["default"]:
            continue
        mark = " (default)" if row["default"] else ""
        lines.append(f"| `{row['check']}` | {row['cut']:g}{mark} | {row['refused']} ({_pct(row['refused_share'])}) | "
                     f"{_pct(row['refused_fnmr'])}{_ci(row.get('refused_fnmr_interval'))} / "
                     f"{_pct(row['kept_fnmr'])} | {_pct(row['refused_far'])} / {_pct(row['kept_far'])} |")
    lines += ["", "bands: each band's faces paired with the core faces (|yaw| <= 35, |pitch| <= 30, sharpness "
                  ">= 150), against core-core pairs", "",
              "| figure | band | faces | genuine pairs | FNMR [95 % CI] | impostor pairs | FAR |",
              "|---|---|---|---|---|---|---|"]
    for b in r.get("bands", []):
        band = "core" if b["figure"] == "core" else f"{b['band'][0]:g}-{b['band'][1]:g}"
        far = "–" if b["far"] is None else f"{100 * b['far']:.3f} %"
        lines.append(f"| {b['figure']} | {band} | {b['faces']} | {b['genuine_pairs']} | {_pct(b['fnmr'])}"
                     f"{_ci(b['fnmr_interval'])} | {b['impostor_pairs']} | {far} |")
    for name, rows in r["sweeps"].items():
        figure = rows[0]["figure"]
        lines += ["", f"{name} sweep ({rows[0]['probes']} LFW people, probe transformed, enrolment untouched)", "",
                  f"| {name} | {figure} (median) | found | refused by the default | genuine median | FNMR [95 % CI] "
                  "| FAR | impostor max |", "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            fm = "–" if row["figure_median"] is None else f"{row['figure_median']:.1f}"
            im = "–" if row["impostor_max"] is None else f"{row['impostor_max']:.3f}"
            lines.append(f"| {row['value']:g} | {fm} | {row['found']}/{row['probes']} | {row['refused_by_default']} | "
                         f"{row['genuine_median']:.3f} | {_pct(row['fnmr'])}{_ci(row['fnmr_interval'])} | "
                         f"{_pct(row['far'])} | {im} |")
    v = r.get("video")
    if v:
        a, b = v["close_up_shot"]
        lines += ["", f"video: {v['frames']} frames, {v['faces']} faces in {len(v['shots'])} shots; the speaker's "
                      f"close-up is frames {a}-{b}: {v['close_up_faces']} faces, {v['close_up_passing_quality']} pass "
                      f"quality, {v['passing_matching_speaker']} of those match the speaker "
                      f"({v['close_up_matching_speaker']} of all close-up faces would); highest speaker score in "
                      f"the other shots {v['max_speaker_other_shots']:.3f}, highest score of the second person's "
                      f"still on any face {v['max_other_any_face']:.3f}; close-up refusals by reason "
                      f"{v['refusals_by_reason']}", "",
                  "| shot | frames with a face | faces | inter-eye px | speaker score (median) | refusals |",
                  "|---|---|---|---|---|---|"]
        for sh in v["shots"]:
            iod = "–" if sh["inter_eye_px_median"] is None else f"{sh['inter_eye_px_median']:.0f}"
            sp = "–" if sh["speaker_median"] is None else f"{sh['speaker_median']:.3f}"
            lines.append(f"| {sh['frames'][0]}-{sh['frames'][1]} | {sh['frames_with_face']} | {sh['faces']} | {iod} | "
                         f"{sp} | {sh['reasons']} |")
        lines += ["", "| check | cut-off | close-up faces refused | of which would match the speaker | "
                      "kept faces: max second-person score |",
                  "|---|---|---|---|---|"]
        for row in v["rows"]:
            if not row["refused"] and not row["default"]:
                continue
            mark = " (default)" if row["default"] else ""
            mo = "–" if row["kept_any_max_other"] is None else f"{row['kept_any_max_other']:.3f}"
            lines.append(f"| `{row['check']}` | {row['cut']:g}{mark} | {row['refused']}/{row['close_up_faces']} | "
                         f"{row['refused_matching_speaker']} | {mo} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="quality_study", description=__doc__.split("\n")[0])
    p.add_argument("--images", type=Path, default=Path("../shared/faces/lfw-dev/images"))
    p.add_argument("--video", type=Path, default=Path("../shared/faces/video"))
    p.add_argument("--models", type=Path, default=Path(os.environ.get("EDGEGATE_MODEL_DIR", ".models")))
    p.add_argument("--record", type=Path, default=Path(__file__).resolve().parents[1] / "config" /
                   "calibration-lfw-dev-default.json")
    p.add_argument("--max-images", type=int, default=6158)
    p.add_argument("--per-identity", type=int, default=4)
    p.add_argument("--sweep-people", type=int, default=200, help="people in the size, exposure and blur sweeps")
    p.add_argument("--cache", type=Path, help="templates and figures of the LFW faces (.npz, 0600)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    threshold = _record_threshold(args.record)
    pipe = _load_pipeline(args.models, 40)
    if args.cache and args.cache.exists():
        with np.load(args.cache) as z:
            data = {k: z[k] for k in z.files}
    else:
        data = embed_lfw(pipe, args.images, args.max_images, args.per_identity)
        if args.cache:
            fd = os.open(args.cache, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **data)
    small = _load_pipeline(args.models, 20)  # the size sweep's faces go down to 12 px between the eyes
    refs, probes = _probes(small, args.images, args.sweep_people)
    r = {"threshold": threshold, "lfw_faces": int(len(data["labels"])), "lfw": lfw_table(data, threshold),
         "bands": band_table(data, threshold),
         "sweeps": {name: sweep(small, refs, probes, transform, values, figure, check, threshold)
                    for name, transform, values, figure, check in SWEEPS},
         "defaults": {f.name: getattr(QualityThresholds(), f.name) for f in fields(QualityThresholds)}}
    if (args.video / "short_hamilton_clip.mp4").is_file():
        r["video"] = video_study(pipe, args.video, threshold)
    if args.json:
        json.dump(r, sys.stdout, indent=2, default=float)
        print()
    else:
        print(format_tables(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
