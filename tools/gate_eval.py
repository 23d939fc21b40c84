"""gate-eval: accuracy of a detector + embedder pair on LFW-format data, rerunnable by anyone."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tools.gate_models import default_model_dir


def _progress(desc: str, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="img", file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return update


def _pipeline(args):
    from vision.loading import load_pipeline

    return load_pipeline(Path(args.models), args.detector, args.embedder, flip=args.flip, threads=args.threads,
                         detector_opts={"min_face": args.min_face} if args.min_face else None)


def cmd_lfw(args) -> int:
    from vision.evaluate import embed_images, read_pairs, verification_report

    pairs = read_pairs(Path(args.pairs), Path(args.images))
    pipe = _pipeline(args)
    paths = sorted({p.a for p in pairs} | {p.b for p in pairs})
    templates = embed_images(pipe, paths, _progress("embedding", args.quiet or args.json))
    r = verification_report(pairs, templates)
    out = {**r.to_json(), "detector": args.detector, "embedder": args.embedder, "flip": args.flip}
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print(f"pairs {r.pairs}  no_face {r.no_face}")
        for i, (a, t) in enumerate(zip(r.fold_accuracies, r.fold_thresholds, strict=True)):
            print(f"  fold {i + 1}: accuracy {a:.4f} at threshold {t:.4f} (chosen on the other folds)")
        print(f"accuracy {r.accuracy_mean:.4f} ± {r.accuracy_std:.4f}")
        print(f"TAR@FAR=1e-3 {r.tar_at_far_1e_3:.4f} at threshold {r.threshold_at_far_1e_3:.4f}")
    return 0


def cmd_ident(args) -> int:
    from vision.evaluate import embed_images, ident_split, identification_report
    from vision.match import Matcher

    split = ident_split(Path(args.images))
    pipe = _pipeline(args)
    paths = list(split.gallery.values()) + [p for _, p in split.genuine] + split.impostor
    templates = embed_images(pipe, paths, _progress("embedding", args.quiet or args.json))
    r = identification_report(split, templates, lambda d: Matcher(d, pipe.model_id))
    r.update({"detector": args.detector, "embedder": args.embedder, "flip": args.flip})
    if args.save_templates:
        r["templates_saved"] = save_templates(Path(args.save_templates), templates)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
    else:
        print(f"gallery {r['gallery']}  genuine probes {r['genuine_probes']}  impostor probes {r['impostor_probes']}")
        print(f"rank-1 {r['rank1']:.4f}")
        print(f"FNIR@FPIR=0.003 {r['fnir_at_fpir_0.003']:.4f} (threshold {r['threshold_at_fpir_0.003']:.4f})")
        print(f"FNIR@FPIR=0.01  {r['fnir_at_fpir_0.01']:.4f} (threshold {r['threshold_at_fpir_0.01']:.4f})")
        print(f"matcher answers differing from exact float32 search: {r['exact_decision_changes']}")
    return 0 if r["exact_decision_changes"] == 0 else 1


def _model_info(args) -> dict:
    """Names and file hashes of the models a record was measured with (the gate checks the name)."""
    from vision.loading import resolve_manifest

    out: dict = {"flip": args.flip, "min_face": args.min_face}
    for role in ("detector", "embedder"):
        m = resolve_manifest(Path(args.models), getattr(args, role))
        out[role] = m.name
        out[f"{role}_sha256"] = {r: f.sha256 for r, f in m.files.items()}
    return out


def describe_source(path: Path) -> str:
    """Where the data came from, for a record that travels to other machines: the path relative
    to the working directory when it lies within one folder above it (e.g. "../shared/faces/...",
    run from the repository root), else its last three parts. Never an absolute path, which
    names one machine's layout (and often a person's home folder)."""
    import os

    p = Path(os.path.abspath(path))
    rel = Path(os.path.relpath(p, Path.cwd()))
    if rel.parts[:2] != ("..", "..") and not rel.is_absolute():
        return rel.as_posix()
    return ".../" + "/".join(p.parts[-3:])


def _pair_scores(args, pipe, progress):
    """(templates by path, genuine scores, impostor scores, data description) for a labelled
    pairs file: the same for `calibrate` and `verify`."""
    from vision import calibrate as cal
    from vision.evaluate import embed_images, read_pairs

    pairs = read_pairs(Path(args.pairs), Path(args.images))
    templates = embed_images(pipe, sorted({p.a for p in pairs} | {p.b for p in pairs}), progress)
    genuine, impostor = cal.pair_scores(pairs, templates)
    return templates, genuine, impostor, {"kind": "pairs", "source": describe_source(Path(args.pairs)),
                                          "images": len(templates)}


def cmd_calibrate(args) -> int:
    """Embed a site's labelled data and write a calibration record (vision/calibrate.py)."""
    from models.manifest import ModelError
    from vision import calibrate as cal
    from vision.evaluate import embed_images

    try:
        if not args.description.strip():
            raise cal.CalibrationError("--description must say what the data is (e.g. \"LFW dev folds: news "
                                       "photos, not this site's camera\")")
        models = _model_info(args)
        pipe = _pipeline(args)
        progress = _progress("embedding", args.quiet or args.json)
        ident = None
        if args.pairs:
            templates, genuine, impostor, data = _pair_scores(args, pipe, progress)
        else:
            sample = cal.sample_identities(Path(args.images), max_images=args.max_images,
                                           per_identity=args.per_identity, seed=args.seed)
            by_path = embed_images(pipe, sample.images, progress)
            templates_list = [by_path.get(p) for p in sample.images]
            genuine, impostor = cal.identity_scores(templates_list, sample.labels)
            ident = cal.ident_scores(templates_list, sample.labels)
            data = {"kind": "identities", "source": describe_source(Path(args.images)), "images": len(sample.images),
                    "identities": len(set(sample.labels)), "folder_identities": sample.identities,
                    "folder_images": sample.folder_images, "per_identity": args.per_identity,
                    "max_images": args.max_images, "seed": args.seed,
                    "pairs": "all pairs of the sample: same person = genuine, different people = impostor"}
            templates = by_path
        data["no_face"] = sum(v is None for v in templates.values())
        record = cal.calibrate(genuine, impostor, args.far, description=args.description, data=data,
                               models=models, ident=ident, fpir_targets=args.fpir if ident else ())
    except (cal.CalibrationError, ModelError, ValueError) as e:
        print(f"gate-eval: {e}", file=sys.stderr)
        return 2
    if args.out:
        cal.write_record(record, Path(args.out))
    if args.json:
        json.dump(record.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        d = record.data
        print(f"{d['genuine_comparisons']} genuine and {d['impostor_comparisons']} impostor comparisons, "
              f"{d['no_face']} images without a face; models {models['detector']} + {models['embedder']}")
        print(f"bound: one-sided {record.confidence:.0%} {record.method}")
        for p in record.points:
            print("  " + p.describe())
        if args.out:
            print(f"record written to {args.out}")
    return 0 if any(p.supported for p in record.points) else 1


def cmd_verify(args) -> int:
    """FNMR at stated FMRs for the 1:1 reference check (the kiosk's live face against an ID photo),
    each with its confidence interval and the impostor comparisons behind it; an FMR the data
    cannot support is refused, not estimated (vision/calibrate.py: rule of three)."""
    from models.manifest import ModelError
    from vision import calibrate as cal
    from vision.evaluate import embed_images

    try:
        if args.out and not (args.description or "").strip():
            raise cal.CalibrationError("--out needs --description saying what the data is (e.g. \"LFW dev folds: "
                                       "news photos, not this site's camera\")")
        models = _model_info(args)
        pipe = _pipeline(args)
        progress = _progress("embedding", args.quiet or args.json)
        if args.pairs:
            templates, genuine, impostor, data = _pair_scores(args, pipe, progress)
        else:
            sample = cal.sample_identities(Path(args.images), max_images=args.max_images,
                                           per_identity=args.per_identity, seed=args.seed)
            templates = embed_images(pipe, sample.images, progress)
            genuine, impostor, refs = cal.reference_scores([templates.get(p) for p in sample.images], sample.labels)
            data = {"kind": "references", "source": describe_source(Path(args.images)), "images": len(sample.images),
                    "identities": len(set(sample.labels)), "references": refs, "per_identity": args.per_identity,
                    "max_images": args.max_images, "seed": args.seed,
                    "pairs": "each person's first image is the reference (the ID photo), their other images probes; "
                             "genuine = probe vs own reference, impostor = probe vs every other person's reference"}
        data["no_face"] = sum(v is None for v in templates.values())
        record = cal.calibrate(genuine, impostor, args.fmr, description=args.description or "gate-eval verify",
                               data=data, models=models)
    except (cal.CalibrationError, ModelError, ValueError) as e:
        print(f"gate-eval: {e}", file=sys.stderr)
        return 2
    if args.out:
        cal.write_record(record, Path(args.out))
    d = record.data
    if args.json:
        json.dump({"check": "1:1 reference", "genuine_comparisons": d["genuine_comparisons"],
                   "impostor_comparisons": d["impostor_comparisons"], "no_face": d["no_face"], "data": d,
                   "models": models, "confidence": record.confidence, "method": record.method,
                   "points": [p.to_json() for p in record.points]}, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(f"1:1 reference check: {d['genuine_comparisons']} genuine and {d['impostor_comparisons']} impostor "
              f"comparisons, {d['no_face']} images without a face; models {models['detector']} + "
              f"{models['embedder']}, flip {str(models['flip']).lower()}")
        for p in record.points:
            if not p.supported:
                print(f"  FMR {p.target:g}: refused: {p.refused}")
                continue
            lo, hi = p.miss_interval or (0.0, 1.0)
            print(f"  FMR {p.target:g}: FNMR {p.miss_rate:.2%} [{lo:.2%}, {hi:.2%}] ({record.confidence:.0%} CI, "
                  f"{p.genuine_comparisons} genuine) at threshold {p.threshold:.4f}; {p.false_accepts} false matches "
                  f"in {p.impostor_comparisons} impostor comparisons (FMR upper bound {p.rate_upper:.2e})")
        print(f"intervals: {record.method}; impostor comparisons share images, so the bounds are optimistic "
              f"(docs/accuracy.md)")
        if args.out:
            print(f"record written to {args.out}")
    return 0 if all(p.supported for p in record.points) else 1


def save_templates(path: Path, templates: dict) -> int:
    """The templates as `vectors` + `labels` (the person folder) in an .npz, the input of
    `gate-bench search --templates`. Templates only, no images; written 0600 like any biometric
    data."""
    import os

    import numpy as np

    found = [(p, v) for p, v in templates.items() if v is not None]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, vectors=np.stack([v for _, v in found]).astype(np.float32),
                 labels=np.array([Path(p).parent.name for p, _ in found]))
    return len(found)


def cmd_pad(args) -> int:
    from models.manifest import ModelError
    from vision.detect import load_detector
    from vision.loading import resolve_manifest
    from vision.pad import find_pad_manifests, load_pad
    from vision.pad.evaluate import pad_report

    models = Path(args.models)
    threads = {"threads": args.threads} if args.threads else {}
    try:
        manifests = [resolve_manifest(models, n) for n in args.pad] if args.pad else find_pad_manifests(models)
        if not manifests:
            raise ModelError(f"no PAD model in {models}; give --pad NAME_OR_MANIFEST or provision one with "
                             f"`gate-models add --format minifasnet`")
        detector = load_detector(resolve_manifest(models, args.detector),
                                 **({"min_face": args.min_face} if args.min_face else {}), **threads)
        pad = load_pad(manifests, **threads)
        r = pad_report(detector, pad, Path(args.images), args.threshold, _progress("pad", args.quiet or args.json))
    except (ModelError, ValueError) as e:
        print(f"gate-eval: {e}", file=sys.stderr)
        return 2
    r["detector"] = args.detector
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'image':40s} {'label':6s} {'live':>7s}  verdict")
    for row in r["per_image"]:
        live = f"{row['live']:.4f}" if row["face"] else "-"
        verdict = row["verdict"] or row.get("error", "no face")
        wrong = "" if row["correct"] in (None, True) else "  WRONG"
        print(f"{row['image'][:40]:40s} {row['label']:6s} {live:>7s}  {verdict}{wrong}")

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"
    print(f"pad {r['pad']}  detector {r['detector']}  live {r['live']}  spoof {r['spoof']}  "
          f"no_face {r['no_face']}  unreadable {r['unreadable']}")
    species = ", ".join(f"{k} {pct(v)}" for k, v in r["apcer_per_species"].items()) or "none"
    print(f"at threshold {r['threshold']:g}: APCER {pct(r['apcer'])} (worst species; {species})  "
          f"BPCER {pct(r['bpcer'])}")
    t, auc = r["threshold_at_bpcer_0.05"], r["auc"]
    print(f"APCER at BPCER<=5% {pct(r['apcer_at_bpcer_0.05'])} (threshold {'n/a' if t is None else f'{t:.4f}'})  "
          f"AUC {'n/a' if auc is None else f'{auc:.4f}'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from models.registry import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
    from vision.pad import DEFAULT_THRESHOLD

    p = argparse.ArgumentParser(prog="gate-eval", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(s):
        s.add_argument("--images", required=True, help="folder per person (LFW layout)")
        s.add_argument("--models", default=str(default_model_dir()), help="model folder (manifests)")
        s.add_argument("--detector", default=DEFAULT_DETECTOR, help="model name in --models, or a manifest path")
        s.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="model name in --models, or a manifest path")
        s.add_argument("--flip", action="store_true", help="average each template with its mirror image's")
        s.add_argument("--min-face", type=int, help="detector minimum face size in pixels")
        s.add_argument("--threads", type=int)
        s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        s.add_argument("--quiet", action="store_true")

    s = sub.add_parser("lfw", help="1:1 verification on an LFW pairs file, leave-one-fold-out threshold")
    common(s)
    s.add_argument("--pairs", required=True)
    s.set_defaults(func=cmd_lfw)
    s = sub.add_parser("ident", help="1:N identification: first image enrolled, the rest probes")
    common(s)
    s.add_argument("--save-templates", metavar="NPZ",
                   help="also write the templates (vectors, person labels) for gate-bench search --templates")
    s.set_defaults(func=cmd_ident)
    s = sub.add_parser("calibrate", help="thresholds at target FAR/FPIR with their evidence, written as a "
                                         "calibration record a lane or kiosk config can point at")
    common(s)
    s.add_argument("--pairs", help="an LFW-style pairs file (else all pairs of a sample of the --images folder)")
    s.add_argument("--description", required=True,
                   help="what the data is, in words (e.g. \"LFW dev folds: news photos, not this site's camera\")")
    s.add_argument("--far", type=float, action="append", help="1:1 target FAR (repeatable; default 1e-2, 1e-3, 1e-4)")
    s.add_argument("--fpir", type=float, action="append",
                   help="1:N target FPIR (repeatable; identities folder only; default 0.003, 0.01)")
    s.add_argument("--max-images", type=int, default=1200, help="images sampled from the identities folder")
    s.add_argument("--per-identity", type=int, default=4, help="at most this many images per person")
    s.add_argument("--seed", type=int, default=0, help="seed of the sample's person order")
    s.add_argument("--out", help="write the record (JSON) here")
    s.set_defaults(func=cmd_calibrate)
    s = sub.add_parser("verify", help="the 1:1 reference check (live face vs ID photo): FNMR at FMR 1e-3 and 1e-4 "
                                      "with confidence intervals and the impostor comparisons behind each; "
                                      "unsupported FMRs refused")
    common(s)
    s.add_argument("--pairs", help="an LFW-style pairs file (else references formed from the --images folder: each "
                                   "person's first photo is the reference)")
    s.add_argument("--fmr", type=float, action="append", help="target FMR (repeatable; default 1e-3 and 1e-4)")
    s.add_argument("--max-images", type=int, default=1200, help="images sampled from the identities folder")
    s.add_argument("--per-identity", type=int, default=4, help="at most this many images per person")
    s.add_argument("--seed", type=int, default=0, help="seed of the sample's person order")
    s.add_argument("--description", help="what the data is, in words (required with --out)")
    s.add_argument("--out", help="also write a calibration record a kiosk config can refer to")
    s.set_defaults(func=cmd_verify)
    s = sub.add_parser("pad", help="presentation-attack detection: APCER/BPCER (ISO/IEC 30107-3) on live/ and "
                                   "spoof/ captures")
    s.add_argument("--images", required=True, help="folder with live/ and spoof/ subfolders (spoof/<species>/ allowed)")
    s.add_argument("--models", default=str(default_model_dir()), help="model folder (manifests)")
    s.add_argument("--detector", default=DEFAULT_DETECTOR, help="model name in --models, or a manifest path")
    s.add_argument("--pad", action="append", help="PAD model name in --models or manifest path (repeatable; "
                                                  "default: every PAD model in --models, fused)")
    s.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="fused live probability below which a face is called an attack")
    s.add_argument("--min-face", type=int, help="detector minimum face size in pixels")
    s.add_argument("--threads", type=int)
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_pad)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.cmd == "verify":
        args.fmr = args.fmr or [1e-3, 1e-4]
    if args.cmd == "calibrate":
        args.far = args.far or [1e-2, 1e-3, 1e-4]
        args.fpir = args.fpir or [0.003, 0.01]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
