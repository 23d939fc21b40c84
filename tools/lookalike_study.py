"""What the 1:N margin rule and a retry after a look-alike referral do, on real templates.

    gate-eval ident --images ../shared/faces/lfw-dev/images --flip --min-face 40 --save-templates T.npz
    python -m tools.lookalike_study T.npz --threshold 0.9292 --margin 0.03 --gallery 30

Each trial enrols the first photo of `--gallery` people drawn at random from those with at least
three photos; everyone else with three photos is a stranger. A visit has two looks, as the lane
allows (`lane.attempts.max` = 2): a traveller's second and third photos, a stranger's first
and second. A look opens the gate when its best score is at or above the threshold and leads
every other enrolled identity by the margin (`gate.decide.judge`); it is a look-alike
referral (ambiguous_margin) when the best is at or above the threshold but the lead is short,
a no-match below. Single-photo scores stand for the lane's fused score (its frames are of one
look). Compared, per visit:

- the lane before: a second look after a no-match only, a look-alike referral is final;
- a second look after a look-alike referral too (`lane.attempts.retry_on` default now);
- the margin counted only against rivals that are themselves at or above the threshold;
- no margin rule.

Strangers who open and genuine travellers let through (as themselves, or as someone else).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def study(vectors: np.ndarray, labels: np.ndarray, threshold: float, margin: float, gallery: int,
          trials: int, seed: int = 0) -> dict:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    people: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        people.setdefault(str(lab), []).append(i)
    multi = sorted(p for p, ix in people.items() if len(ix) >= 3)
    enrol = v[[people[p][0] for p in multi]]
    looks = [v[[people[p][k] for p in multi]] @ enrol.T for k in (1, 2)]  # person x enrolment
    n = len(multi)
    rng = np.random.default_rng(seed)
    counts = {k: 0 for k in ("stranger_visits", "stranger_open_look1", "stranger_ambiguous_look1", "stranger_before",
                             "stranger_retry_ambiguous", "stranger_rivals_at_threshold", "stranger_no_margin",
                             "genuine_visits", "genuine_ambiguous_look1", "genuine_before", "genuine_retry_ambiguous",
                             "genuine_rivals_at_threshold", "genuine_no_margin", "genuine_as_other_before",
                             "genuine_as_other_retry_ambiguous")}

    def look(s: np.ndarray, gal: np.ndarray, who: np.ndarray):
        sub = s[who][:, gal]
        order = np.argsort(-sub, axis=1)
        best = np.take_along_axis(sub, order[:, :1], 1)[:, 0]
        second = np.take_along_axis(sub, order[:, 1:2], 1)[:, 0]
        top = gal[order[:, 0]]
        opens = (best >= threshold) & (best - second >= margin)
        ambiguous = (best >= threshold) & ~opens
        lenient = (best >= threshold) & ((best - second >= margin) | (second < threshold))
        return top, best, opens, ambiguous, lenient

    for _ in range(trials):
        gal = rng.choice(n, gallery, replace=False)
        for who, kind in ((np.setdiff1d(np.arange(n), gal), "stranger"), (gal, "genuine")):
            t1, b1, o1, a1, l1 = look(looks[0], gal, who)
            t2, b2, o2, a2, l2 = look(looks[1], gal, who)
            n1 = b1 < threshold
            me1 = t1 == who if kind == "genuine" else np.zeros(len(who), bool)
            me2 = t2 == who if kind == "genuine" else np.zeros(len(who), bool)
            before = (o1, n1 & o2)
            retry = (o1, (n1 | a1) & o2)
            lenient = (l1, ~l1 & n1 & l2)
            no_margin = (b1 >= threshold, n1 & (b2 >= threshold))
            counts[f"{kind}_visits"] += len(who)
            counts[f"{kind}_ambiguous_look1"] += int(a1.sum())
            if kind == "stranger":
                counts["stranger_open_look1"] += int(o1.sum())
            for name, (first, second) in (("before", before), ("retry_ambiguous", retry),
                                          ("rivals_at_threshold", lenient), ("no_margin", no_margin)):
                if kind == "stranger":
                    counts[f"stranger_{name}"] += int((first | second).sum())
                else:
                    counts[f"genuine_{name}"] += int(((first & me1) | (second & me2)).sum())
                    if name in ("before", "retry_ambiguous"):
                        counts[f"genuine_as_other_{name}"] += int(((first & ~me1) | (second & ~me2)).sum())
    out: dict = {"people_with_3_photos": n, "gallery": gallery, "trials": trials, "threshold": threshold,
                 "margin": margin, **counts}
    for k in list(counts):
        if k.endswith("_visits"):
            continue
        visits = counts["stranger_visits" if k.startswith("stranger") else "genuine_visits"]
        out[k + "_rate"] = counts[k] / visits if visits else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.lookalike_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("templates", help=".npz from gate-eval ident --save-templates")
    p.add_argument("--threshold", type=float, required=True, help="threshold_1n (the calibration record's)")
    p.add_argument("--margin", type=float, required=True, help="min_margin")
    p.add_argument("--gallery", type=int, default=30, help="enrolled travellers per trial")
    p.add_argument("--trials", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    d = np.load(args.templates)
    r = study(d["vectors"], d["labels"], args.threshold, args.margin, args.gallery, args.trials, args.seed)
    if args.json:
        json.dump(r, sys.stdout, indent=2)
        print()
        return 0
    print(f"{r['trials']} galleries of {r['gallery']} from {r['people_with_3_photos']} people; threshold "
          f"{r['threshold']:.4f}, margin {r['margin']:.4f}; {r['stranger_visits']} stranger and "
          f"{r['genuine_visits']} genuine visits of 2 looks")
    print(f"stranger, first look: opens {100 * r['stranger_open_look1_rate']:.2f} %, look-alike referral "
          f"{100 * r['stranger_ambiguous_look1_rate']:.2f} %; genuine first look referred as a look-alike "
          f"{100 * r['genuine_ambiguous_look1_rate']:.2f} %")
    print(f"{'per visit':44s} {'strangers opened':>17s} {'genuine let through':>20s} {'genuine as another':>19s}")
    for name, label in (("before", "second look after a no-match only"),
                        ("retry_ambiguous", "+ after a look-alike referral"),
                        ("rivals_at_threshold", "margin only against rivals >= threshold"),
                        ("no_margin", "no margin rule")):
        other = r.get(f"genuine_as_other_{name}_rate")
        print(f"{label:44s} {100 * r[f'stranger_{name}_rate']:16.2f} % {100 * r[f'genuine_{name}_rate']:19.2f} % "
              f"{'' if other is None else f'{100 * other:17.3f} %':>19s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
