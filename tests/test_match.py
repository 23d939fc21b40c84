"""Matcher correctness: every answer must equal an exact float32 brute-force search (subject,
score and order), whatever the stored precision, through adds, replacements, revocations,
segment merges and concurrent updates. Speed lives in tools/bench_search.py, not here."""
from __future__ import annotations

import threading
import time

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from vision.match import MAX_TEMPLATES_PER_SUBJECT, Match, Matcher, Precision
from vision.match.segments import Codec
from vision.types import Template

D = 32
PRECISIONS = [Precision.INT8, Precision.FLOAT16, Precision.FLOAT32]


def cos(rows, q) -> np.ndarray:
    """float64 products of the float32 values, summed row by row (BLAS would round identical rows
    differently by position and break exact ties)."""
    return (np.atleast_2d(rows).astype(np.float64) * np.asarray(q, dtype=np.float64)).sum(axis=1)


def unit32(v) -> np.ndarray:
    """What the matcher stores: normalised in float64, kept as float32."""
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


class Reference:
    """Brute force over float32 templates in float64 arithmetic, ties by subject id."""

    def __init__(self):
        self.templates: dict[str, np.ndarray] = {}
        self._stacked = None

    def add(self, sid, vecs):
        self.templates[sid] = unit32(vecs)
        self._stacked = None

    def remove(self, sid):
        self._stacked = None
        return self.templates.pop(sid, None) is not None

    def search(self, q, k):
        if not self.templates:
            return []
        if self._stacked is None:
            owners = [sid for sid, t in self.templates.items() for _ in range(len(t))]
            self._stacked = (np.array(owners), np.concatenate(list(self.templates.values())))
        owners, rows = self._stacked
        scores = cos(rows, unit32(q)[0])
        best: dict[str, float] = {}
        for sid, sc in zip(owners.tolist(), scores.tolist(), strict=True):
            best[sid] = max(sc, best.get(sid, -np.inf))
        return sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]


def assert_same(got: list[Match], want: list[tuple[str, float]]):
    assert [m.subject_id for m in got] == [w[0] for w in want]
    np.testing.assert_allclose([m.score for m in got], [w[1] for w in want], rtol=0, atol=1e-12)


def clustered(rng, n, d=D, spread=0.15):
    """Templates crowded around a few directions, so many rows score within the int8 error of
    each other and the matcher has to prove its way through near-ties."""
    centres = rng.standard_normal((4, d))
    return centres[rng.integers(0, 4, n)] + spread * rng.standard_normal((n, d))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_search_equals_brute_force_on_crowded_gallery(precision):
    rng = np.random.default_rng(1)
    m = Matcher(D, "m", precision=precision, staging_rows=64, candidates=4, merge_fanout=2)
    ref = Reference()
    data = clustered(rng, 3000)
    ids = [f"s{i:05d}" for i in range(2000)]
    m.add_arrays(ids, data[:2000])  # bulk → segments
    for sid, v in zip(ids, data[:2000], strict=True):
        ref.add(sid, v)
    for i in range(2000, 3000, 2):  # one by one → staging, seals, merges; two templates each
        sid = f"m{i:05d}"
        m.add(sid, data[i:i + 2])
        ref.add(sid, data[i:i + 2])
    assert len(m) == len(ref.templates)
    probes = np.concatenate([data[rng.integers(0, 3000, 40)] + 0.05 * rng.standard_normal((40, D)),
                             clustered(rng, 40)])
    for q in probes:
        for k in (1, 5):
            assert_same(m.search(q, k), ref.search(q, k))
    assert m.stats()["segments"] >= 2
    if precision is Precision.INT8:  # near-ties within the int8 error forced second scans
        assert m.rescans > 0


def test_int8_rows_with_clipped_components_stay_exact():
    """Components beyond the int8 range are clipped; the row's error bound must cover it."""
    rng = np.random.default_rng(2)
    v = 0.01 * rng.standard_normal((500, D))
    v[:, 0] = 1.0  # every template is nearly the same spike, far outside ±6/sqrt(D)
    v[:250, 1] += 0.05
    m = Matcher(D, "m", staging_rows=64, candidates=2)
    ref = Reference()
    m.add_arrays([f"s{i}" for i in range(500)], v)
    for i in range(500):
        ref.add(f"s{i}", v[i])
    for q in v[:30] + 0.001 * rng.standard_normal((30, D)):
        assert_same(m.search(q, 3), ref.search(q, 3))


def test_exact_ties_and_duplicate_templates_order_by_subject_id():
    rng = np.random.default_rng(3)
    base = rng.standard_normal(D)
    m = Matcher(D, "m", staging_rows=64)
    others = rng.standard_normal((300, D))
    m.add_arrays([f"o{i}" for i in range(300)], others)
    for sid in ("zeta", "alpha", "mu"):
        m.add(sid, base)  # three subjects with the very same template
    m.add("beta", np.stack([base, base, rng.standard_normal(D)]))  # duplicate inside one subject
    got = m.search(base, 4)
    assert [g.subject_id for g in got] == ["alpha", "beta", "mu", "zeta"]
    assert len({g.score for g in got}) == 1
    assert got[0].score == pytest.approx(1.0, abs=1e-6)


def test_subject_with_several_templates_scores_its_best_one_once():
    rng = np.random.default_rng(4)
    t = rng.standard_normal((3, D))
    m = Matcher(D, "m")
    m.add("a", t)
    m.add("b", -t[0])
    res = m.search(t[1], 5)
    assert [r.subject_id for r in res] == ["a", "b"]
    assert res[0].score == pytest.approx(1.0, abs=1e-6)
    assert m.verify(t[2], "a") == pytest.approx(1.0, abs=1e-6)
    assert m.verify(t[2], "b") == pytest.approx(float(cos(unit32(-t[0]), unit32(t[2])[0])[0]), abs=1e-12)
    assert m.verify(t[2], "nobody") is None


def test_add_replaces_and_remove_revokes():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, D))
    m = Matcher(D, "m")
    assert m.search(a) == [] and len(m) == 0 and "x" not in m
    m.add("x", a)
    assert "x" in m and len(m) == 1
    assert m.search(a, 1)[0].score == pytest.approx(1.0, abs=1e-6)
    m.add("x", b)  # replaces, does not append
    assert len(m) == 1
    assert m.verify(a, "x") == pytest.approx(float(cos(unit32(b), unit32(a)[0])[0]), abs=1e-12)
    assert m.remove("x") is True
    assert m.remove("x") is False
    assert "x" not in m and len(m) == 0 and m.search(b) == [] and m.verify(b, "x") is None


def test_bulk_load_in_segment_sized_steps_is_all_or_nothing():
    rng = np.random.default_rng(11)
    v = rng.standard_normal((2000, D))
    ids = [f"s{i}" for i in range(2000)]
    m = Matcher(D, "m", staging_rows=64, max_segment_rows=500)
    bad = v.copy()
    bad[1900] = np.nan  # in the last step: the first three must not have gone in either
    with pytest.raises(ValueError):
        m.add_arrays(ids, bad)
    assert len(m) == 0
    m.add_arrays(ids, v)
    ref = Reference()
    for sid, x in zip(ids, v, strict=True):
        ref.add(sid, x)
    assert len(m) == 2000 and m.stats()["segments"] >= 2
    for q in v[::97] + 0.1 * rng.standard_normal((len(v[::97]), D)):
        assert_same(m.search(q, 5), ref.search(q, 5))


def test_search_split_over_two_cores_gives_the_exact_answer():
    """A gallery large enough to be split between the calling thread and a scan worker, in
    segments of unequal size plus a staging buffer, clustered so the proof needs rescans."""
    rng = np.random.default_rng(12)
    n = 80_000
    v = clustered(rng, n, spread=0.3).astype(np.float32)
    ids = [f"s{i}" for i in range(n)]
    split = Matcher(D, "m", max_segment_rows=30_000, candidates=4, scan_threads=2)
    split.add_arrays(ids, v)
    split.add("late", v[5] + 0.01)  # lands in the staging buffer
    ref = Reference()
    for sid, x in zip(ids, v, strict=True):
        ref.add(sid, x)
    ref.add("late", v[5] + 0.01)
    assert split.stats()["segments"] == 3
    for q in v[::4000] + 0.05 * rng.standard_normal((len(v[::4000]), D)):
        assert_same(split.search(q, 5), ref.search(q, 5))
    if split.scan_threads > 1:  # the machine lets this process use two cores
        assert any(t.name.startswith("match-scan") for t in threading.enumerate())


def test_split_search_works_in_a_forked_child():
    """The scan pool's threads do not survive fork; a child must not wait on them."""
    import os

    rng = np.random.default_rng(13)
    v = rng.standard_normal((70_000, D)).astype(np.float32)
    m = Matcher(D, "m", max_segment_rows=40_000, scan_threads=2)
    m.add_arrays([f"s{i}" for i in range(len(v))], v)
    m.search(v[0], 1)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: exit 0 only if the split search answers
        try:
            os._exit(0 if m.search(v[1], 1)[0].subject_id == "s1" else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("a search in a forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0


def test_parts_are_shared_out_by_rows():
    from vision.match.scan import _shares

    assert _shares([500, 100, 400, 50], 2) == [[0, 3], [2, 1]]
    assert _shares([10], 2) == [[0]]


def test_add_arrays_groups_rows_of_one_subject():
    rng = np.random.default_rng(6)
    v = rng.standard_normal((4, D))
    m = Matcher(D, "m")
    m.add_arrays(["p", "q", "p", "r"], v)
    assert len(m) == 3
    assert m.verify(v[2], "p") == pytest.approx(1.0, abs=1e-6)
    assert m.verify(v[0], "p") == pytest.approx(1.0, abs=1e-6)


def test_many_revocations_compact_and_reuse_slots_without_ghosts(tmp_path):
    """Revoke most of the gallery (triggers compaction), enrol new people into the freed slots:
    no revoked subject may come back, and the templates file is never visible on disk."""
    rng = np.random.default_rng(7)
    m = Matcher(D, "m", exact_dir=tmp_path, staging_rows=64, merge_fanout=2)
    ref = Reference()
    v = rng.standard_normal((1200, D))
    m.add_arrays([f"s{i}" for i in range(1200)], v)
    for i in range(1200):
        ref.add(f"s{i}", v[i])
    assert list(tmp_path.iterdir()) == []  # unlinked file: nothing to leak or read by others
    for i in range(0, 1200, 4):
        if i % 8:
            m.remove(f"s{i}")
            ref.remove(f"s{i}")
    for i in range(1, 1200, 3):
        m.remove(f"s{i}")
        ref.remove(f"s{i}")
    rows_after_revocations = m.stats()["rows"]
    new = rng.standard_normal((500, D))
    for i in range(500):
        m.add(f"n{i}", new[i])
        ref.add(f"n{i}", new[i])
    assert m.stats()["rows"] < 1200 + 500  # dead rows were dropped
    assert rows_after_revocations <= 1200
    for q in np.concatenate([v[rng.integers(0, 1200, 30)], new[:30]]):
        assert_same(m.search(q, 5), ref.search(q, 5))
    m.compact()  # rows left by earlier owners of reused slots must go too
    assert m.stats()["rows"] == sum(len(t) for t in ref.templates.values())
    assert m.stats()["dead_rows"] == 0
    for q in new[30:60]:
        assert_same(m.search(q, 5), ref.search(q, 5))
    m.close()


def test_subject_ids_of_any_length_survive_growth_revocation_and_reuse():
    """The id index is a hash table of its own: lookups must hold through table growth,
    tombstones, wider ids arriving later and reused subject numbers."""
    rng = np.random.default_rng(10)
    m = Matcher(D, "m", staging_rows=64)
    ids = [f"p{i}" for i in range(1500)] + ["Zoë Ünïcødé-" + "x" * i for i in range(0, 200, 7)]
    vecs = rng.standard_normal((len(ids), D))
    for sid, v in zip(ids, vecs, strict=True):
        m.add(sid, v)
    for sid in ids[::3]:
        assert m.remove(sid)
    for sid, v in zip(ids[::3], vecs[::3], strict=True):  # back, into reused numbers
        m.add(sid, -v)
    assert len(m) == len(ids) and all(sid in m for sid in ids) and "p1500" not in m
    for i in list(range(0, len(ids), 97)) + [len(ids) - 1]:
        sign = -1 if i % 3 == 0 else 1
        assert m.search(sign * vecs[i], 1)[0].subject_id == ids[i]
        assert m.verify(sign * vecs[i], ids[i]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", [
    np.zeros(D), np.full(D, np.nan), np.r_[np.inf, np.ones(D - 1)], np.ones(D + 1), np.ones((0, D)),
    np.ones((2, 3, D)), np.array(["a"] * D),
])
def test_bad_vectors_are_refused_and_change_nothing(bad):
    rng = np.random.default_rng(8)
    good = rng.standard_normal(D)
    m = Matcher(D, "m")
    m.add("keep", good)
    with pytest.raises(ValueError):
        m.add("new", bad)
    with pytest.raises(ValueError):
        m.add_many([("ok", good), ("bad", bad)])  # validated first: "ok" is not enrolled either
    with pytest.raises(ValueError):
        m.search(bad)
    with pytest.raises(ValueError):
        m.verify(bad, "keep")
    assert len(m) == 1 and "ok" not in m and "new" not in m
    assert m.search(good, 5)[0].subject_id == "keep"


@pytest.mark.parametrize("dim", [32, 100, 128, 512])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_scan_kernel_self_check_passes_on_this_machine(dim, precision):
    Codec(dim, precision)  # raises if faiss's kernel for this dim/CPU scores wrongly


def test_scan_kernel_self_check_refuses_a_kernel_that_scores_wrongly():
    """A scan whose scores disagree with the codes' decoding (here: an index that decodes the
    codes on another range, as a miscompiled SIMD kernel would) must stop the matcher."""

    class OtherRange(Codec):
        def new_index(self):
            idx = super().new_index()
            if hasattr(self, "_template"):  # the scanning index, not the encoder
                faiss.copy_array_to_vector(np.array([-1.0, 2.0], dtype=np.float32), idx.sq.trained)
            return idx

    with pytest.raises(RuntimeError, match="wrong int8 scan scores"):
        OtherRange(128, Precision.INT8)


def test_other_bad_input():
    m = Matcher(D, "model-a")
    v = np.ones(D)
    with pytest.raises(ValueError):
        m.add("", v)
    with pytest.raises(ValueError):
        m.add(7, v)
    with pytest.raises(ValueError):
        m.add("x" * 300, v)
    with pytest.raises(ValueError):
        m.add("nul\0", v)
    with pytest.raises(ValueError):
        m.search(v, k=0)
    with pytest.raises(ValueError, match="model"):
        m.add("x", Template(unit32(v)[0], "model-b"))
    with pytest.raises(ValueError, match="per subject"):
        m.add("x", np.ones((MAX_TEMPLATES_PER_SUBJECT + 1, D)))
    with pytest.raises(ValueError):
        m.add_arrays(["a", "b"], np.ones((3, D)))
    with pytest.raises(ValueError):
        Matcher(0, "m")
    m.add("x", Template(unit32(v)[0], "model-a"))
    assert m.search(Template(unit32(v)[0], "model-a"), 1)[0].subject_id == "x"
    assert len(m) == 1


def test_searches_during_concurrent_updates_are_consistent():
    """A subject that is enrolled throughout (only its template is replaced) is never missing
    and always carries one of its two templates' exact score; untouched subjects never change;
    churned subjects come and go. Each search answers for one state of the gallery."""
    rng = np.random.default_rng(9)
    m = Matcher(D, "m", staging_rows=64, merge_fanout=2)
    stable = rng.standard_normal((200, D))
    m.add_arrays([f"s{i}" for i in range(200)], stable)
    a, b = rng.standard_normal((2, D))
    m.add("flip", a)
    churn = rng.standard_normal((300, D))
    both = {float(cos(unit32(x), unit32(a)[0])[0]) for x in (a, b)}
    stop = threading.Event()
    errors = []

    def writer():
        try:
            for r in range(6):
                for i in range(300):
                    m.add("flip", b if (r * 300 + i) % 2 else a)
                    if r % 2 == 0:
                        m.add(f"c{i}", churn[i])
                    else:
                        m.remove(f"c{i}")
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)
        finally:
            stop.set()

    t = threading.Thread(target=writer)
    t.start()
    searches = 0
    while not stop.is_set() or searches < 50:
        res = {r.subject_id: r.score for r in m.search(a, 1000)}  # everyone
        assert "flip" in res and any(abs(res["flip"] - s) < 1e-9 for s in both)
        i = searches % 200
        top = m.search(stable[i], 1)[0]
        assert top.subject_id == f"s{i}" and top.score == pytest.approx(1.0, abs=1e-6)
        searches += 1
    t.join()
    assert not errors
    ref = Reference()
    for i in range(200):
        ref.add(f"s{i}", stable[i])
    ref.add("flip", a if (6 * 300 - 1) % 2 == 0 else b)
    for q in np.concatenate([stable[:10], churn[:10], [a, b]]):
        assert_same(m.search(q, 5), ref.search(q, 5))


class MatcherVersusReference(RuleBasedStateMachine):
    """Random sequences of enrolments, replacements, revocations and bulk loads, checked against
    the brute-force reference after every step."""

    @initialize(precision=st.sampled_from(PRECISIONS), seed=st.integers(0, 2**32 - 1))
    def setup(self, precision, seed):
        self.rng = np.random.default_rng(seed)
        self.m = Matcher(8, "m", precision=precision, staging_rows=64, candidates=1, merge_fanout=2,
                         max_segment_rows=256)
        self.ref = Reference()
        self.pool = [f"id{i}" for i in range(40)]

    def _vecs(self, k):
        # few distinct directions: duplicates and near-ties are common
        return np.round(self.rng.standard_normal((k, 8)), 1)

    @rule(i=st.integers(0, 39), k=st.integers(1, 3))
    def add(self, i, k):
        v = self._vecs(k)
        self.m.add(self.pool[i], v)
        self.ref.add(self.pool[i], v)

    @rule(n=st.integers(64, 200))
    def bulk(self, n):
        ids = [f"bulk{j}" for j in self.rng.integers(0, 400, n)]
        v = self._vecs(n)
        self.m.add_arrays(ids, v)
        for sid in dict.fromkeys(ids):
            self.ref.add(sid, v[[j for j, x in enumerate(ids) if x == sid]])

    @rule(i=st.integers(0, 39))
    def remove(self, i):
        assert self.m.remove(self.pool[i]) == self.ref.remove(self.pool[i])

    @invariant()
    def agrees(self):
        if not hasattr(self, "m"):
            return
        assert len(self.m) == len(self.ref.templates)
        q = self._vecs(1)[0] + 0.01
        assert_same(self.m.search(q, 3), self.ref.search(q, 3))


TestMatcherVersusReference = MatcherVersusReference.TestCase
TestMatcherVersusReference.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                               suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 8))
def test_verify_equals_reference(seed, k):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((k, D))
    q = rng.standard_normal(D)
    m = Matcher(D, "m")
    m.add("s", t)
    want = float(cos(unit32(t), unit32(q)[0]).max())
    assert m.verify(q, "s") == pytest.approx(want, abs=1e-12)


def test_the_rescoring_file_holds_no_template_in_clear(tmp_path):
    """exact_on_disk: the unlinked file's blocks outlive the process on the disk, so what is
    written there must be ciphertext under a key that never leaves memory."""
    from vision.match.exact import FileExactStore

    rng = np.random.default_rng(11)
    rows = unit32(rng.standard_normal((300, 128)))
    store = FileExactStore(128, tmp_path)
    store.write(0, rows)
    raw = open(f"/proc/self/fd/{store._fd}", "rb").read()  # what the disk holds, as the kernel has it
    assert len(raw) >= rows.nbytes and not any(rows[i].tobytes()[:64] in raw for i in range(len(rows)))
    for probe in rows[:, :4]:  # not even a 16-byte run of any row's floats
        assert probe.tobytes() not in raw
    slots = rng.permutation(300)[:64]
    assert np.array_equal(store.read(slots), rows[slots])
    store.write(7, rows[7:8])  # the same row rewritten: a fresh counter, a different ciphertext
    again = open(f"/proc/self/fd/{store._fd}", "rb").read()
    assert again[7 * 512:8 * 512] != raw[7 * 512:8 * 512] and np.array_equal(store.read(np.array([7])), rows[7:8])
    other = FileExactStore(128, tmp_path)  # another process's (or a restarted daemon's) key reads noise
    other.write(0, rows[:1])
    assert open(f"/proc/self/fd/{other._fd}", "rb").read(512) != raw[:512]
    assert store.resident_bytes() == 4 * len(store._gen)
    store.close()
    other.close()
    assert list(tmp_path.iterdir()) == []
