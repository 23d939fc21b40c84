"""How the liveness verdict of a walk-up depends on which frames it is judged on, on the lane feed.

    python -m tools.pad_size_study --images ../shared/faces/lfw-dev/images --pad-from ../shared/models \\
        --people 150 --skip-bench-queue

Each person (LFW, with at least two photos; their second photo, one face) walks in exactly as
`tools.bench_lane_feed.LaneFeed` draws a passenger who stops on the mark, with no display to
react to, for 4 s; every frame goes through the default pipeline and, when the primary face
passes quality, through the MiniFASNet pair. Then for several rules of which frames a verdict
is judged on (the first 3 quality frames in the capture zone, as the lane does; the first 3 at
or above a face size; the first 3 standing on the mark; the first 5, 7 or 10), the share of people doubted
(mean live < 0.5), without a verdict (their face never met the rule) and the median time of the
verdict, and by face-size band the share whose frames in it average below 0.5.
`--skip-bench-queue` leaves out the people `gate-bench lane` enrols, so a rule is not judged
on the travellers it would be reported on.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

RULES = (("first 3 in the capture zone (>= 150 px), as now", 150.0, 0.0, 3),
         ("first 3 at >= 170 px", 170.0, 0.0, 3),
         ("first 3 at >= 190 px", 190.0, 0.0, 3),
         ("first 3 after the walk-in (on the mark)", 150.0, 2.0, 3),
         ("first 5 in the capture zone", 150.0, 0.0, 5),
         ("first 7 in the capture zone", 150.0, 0.0, 7),
         ("first 10 in the capture zone", 150.0, 0.0, 10))
BANDS = ((100, 130), (130, 150), (150, 170), (170, 190), (190, 10_000))


def walk_up(pipeline, pad, photo: Path, seed: int, noise: list[np.ndarray], fps: float = 15.0,
            seconds: float = 4.0) -> list[dict]:
    """Per frame of one walk-up: time since setting off, face px (from 100), live (None: failed
    quality); `noise` are the sensor-noise frames, one drawn per frame as LaneFeed does."""
    from tools.bench_lane_feed import Behaviour, Traveller, Visit, _Passenger
    from tools.feedgen import FRAME_H, FRAME_W

    b = Behaviour()
    rng = np.random.default_rng([5, seed])
    p = _Passenger(Traveller("enrolled", (str(photo),), "x", stops_short=False), Visit("enrolled", "x"), b, rng, 0.0)
    out = []
    for i in range(int(seconds * fps)):
        t = i / fps
        p.act(t)
        canvas = np.full((FRAME_H, FRAME_W, 3), 110, np.uint8)
        if not p.draw(canvas, t):
            continue
        noisy = np.clip(canvas.astype(np.int16) + noise[int(rng.integers(len(noise)))], 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, b.jpeg_quality])
        frame = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        r = pipeline.process(frame, embed="primary")
        if not r.faces:
            continue
        f = r.faces[0]
        x1, y1, x2, y2 = (float(v) for v in f.face.box)
        px = float(np.sqrt((x2 - x1) * (y2 - y1)))
        if px < 100:
            continue
        live = float(pad.score(frame, f.face).live) if f.quality.ok and f.template is not None else None
        out.append({"t": round(t, 4), "px": round(px, 1), "live": live})
    return out


def judge(frames: list[dict], min_px: float, after_s: float, k: int) -> tuple[bool, float] | None:
    """(doubted, time of the verdict) under one rule, or None when it gives no verdict."""
    use = [f for f in frames if f["live"] is not None and f["px"] >= min_px and f["t"] >= after_s][:k]
    if len(use) < k:
        return None
    return float(np.mean([f["live"] for f in use])) < 0.5, use[-1]["t"]


def summarise(walks: dict[str, list[dict]]) -> dict:
    rules = []
    for label, min_px, after_s, k in RULES:
        res = [judge(w, min_px, after_s, k) for w in walks.values()]
        got = [r for r in res if r is not None]
        rules.append({"rule": label, "people": len(res), "doubted": sum(d for d, _ in got), "judged": len(got),
                      "median_verdict_s": float(np.median([t for _, t in got])) if got else None})
    bands = []
    for lo, hi in BANDS:
        means = [np.mean([f["live"] for f in w if f["live"] is not None and lo <= f["px"] < hi])
                 for w in walks.values() if any(f["live"] is not None and lo <= f["px"] < hi for f in w)]
        bands.append({"px": [lo, hi], "people": len(means), "doubted": int(sum(m < 0.5 for m in means))})
    return {"people": len(walks), "rules": rules, "bands": bands}


def main(argv=None) -> int:
    from models.provision import provision_minifasnet_pair
    from tools.bench_lane import DETECTOR, EMBEDDER, choose_travellers
    from tools.feedgen import one_face
    from tools.gate_models import default_model_dir
    from vision.loading import load_pipeline
    from vision.pad import find_pad_manifests, load_pad

    p = argparse.ArgumentParser(prog="python -m tools.pad_size_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default="../shared/faces/lfw-dev/images")
    p.add_argument("--pad-from", default="../shared/models")
    p.add_argument("--models", default=str(default_model_dir()))
    p.add_argument("--people", type=int, default=150)
    p.add_argument("--skip-bench-queue", action="store_true",
                   help="leave out the travellers gate-bench lane enrols (its default seed and size)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    pipeline = load_pipeline(Path(args.models), DETECTOR, EMBEDDER, flip=True, threads=2,
                             detector_opts={"min_face": 40})
    with tempfile.TemporaryDirectory(prefix="edgegate-pad-study-") as tmp:
        provision_minifasnet_pair(Path(args.pad_from), Path(tmp))
        pad = load_pad(find_pad_manifests(Path(tmp)), threads=2)
    skip: set[str] = set()
    if args.skip_bench_queue:
        skip = set(choose_travellers(pipeline, Path(args.images), 30, 10, 3, 3)[1])
    people = sorted(d for d in Path(args.images).iterdir() if d.is_dir())
    rng = np.random.default_rng(args.seed)
    order = [people[i] for i in rng.permutation(len(people))]
    noise = [rng.normal(0, 2.0, (480, 640, 3)).astype(np.int16) for _ in range(8)]  # Behaviour.noise_sd
    walks: dict[str, list[dict]] = {}
    for d in order:
        if len(walks) >= args.people:
            break
        if d.name in skip:
            continue
        photos = sorted(d.glob("*.jpg"))
        if len(photos) < 2 or not one_face(pipeline.detector, photos[1]):
            continue
        walks[d.name] = walk_up(pipeline, pad, photos[1], len(walks) + 1, noise)
        print(f"{len(walks)}/{args.people} {d.name}", file=sys.stderr, flush=True)
    r = summarise(walks)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
        return 0
    print(f"{r['people']} people walking up (LFW, their second photo)")
    for x in r["rules"]:
        n = max(1, x["judged"])
        med = "n/a" if x["median_verdict_s"] is None else f"{x['median_verdict_s']:.2f} s"
        print(f"{x['rule']:48s} doubted {x['doubted']}/{x['judged']} = {100 * x['doubted'] / n:.1f} %, "
              f"no verdict {x['people'] - x['judged']}, median verdict {med} after setting off")
    for b in r["bands"]:
        print(f"band {b['px'][0]}-{b['px'][1]} px: {b['doubted']}/{b['people']} people's frames average below 0.5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
