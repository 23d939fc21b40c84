"""tools.lookalike_study on synthetic templates whose answers are known."""
import numpy as np

from tools.lookalike_study import study


def _person(rng, centre, n=3, spread=0.05):
    return [centre + spread * rng.normal(size=centre.shape) for _ in range(n)]


def test_a_look_alike_stranger_opens_only_with_the_retry_and_the_rules_are_ordered():
    rng = np.random.default_rng(0)
    dim = 64
    a = rng.normal(size=dim)
    vecs, labels = [], []
    for name, centre in (("alice", a), ("alicia", a + 0.05 * rng.normal(size=dim))):  # twins
        vecs += _person(rng, centre, spread=0.01)
        labels += [name] * 3
    for i in range(6):  # people nobody resembles
        vecs += _person(rng, rng.normal(size=dim), spread=0.01)
        labels += [f"p{i}"] * 3
    r = study(np.array(vecs), np.array(labels), threshold=0.9, margin=0.05, gallery=8, trials=1)
    # everyone enrolled: the twins refer each other on both looks, the others pass
    assert r["genuine_visits"] == 8 and r["genuine_before"] == 6 and r["genuine_retry_ambiguous"] == 6
    assert r["genuine_ambiguous_look1"] == 2 and r["genuine_no_margin"] == 8
    assert r["stranger_visits"] == 0
    r = study(np.array(vecs), np.array(labels), threshold=0.9, margin=0.05, gallery=7, trials=40, seed=1)
    s = [r[f"stranger_{k}"] for k in ("before", "retry_ambiguous", "rivals_at_threshold", "no_margin")]
    assert s == sorted(s) and s[-1] > 0  # each rule opens at least as often as the stricter one before it


def test_a_stranger_referred_as_a_look_alike_opens_on_the_second_look_only_with_the_retry():
    def unit(*v):
        v = np.array(v, float)
        return v / np.linalg.norm(v)

    a, b = unit(1, 0, 0), unit(1, 0.3, 0)  # two enrolled look-alikes (cosine 0.958)
    s1, s2 = unit(1, 0.15, 0), unit(1, -0.1, 0)  # a stranger between them, then nearer to a
    vecs = [a, a, a, b, b, b, unit(0, 0, 1), s1, s2]
    labels = ["a"] * 3 + ["b"] * 3 + ["s"] * 3
    r = study(np.array(vecs), np.array(labels), threshold=0.9, margin=0.05, gallery=2, trials=60, seed=2)
    assert r["stranger_ambiguous_look1"] > 0
    # only galleries {a, b} differ: the stranger s is referred on the first look, and opens on the second
    assert r["stranger_retry_ambiguous"] > r["stranger_before"]
