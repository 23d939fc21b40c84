"""gate-bench search: 1:N latency, memory and exactness of the matcher, side by side with faiss.

For each (gallery size, dim) one gallery is built and every method searched with the same
probes in the same run, interleaved probe by probe, so a busy machine slows all of them alike
and the ratios stay meaningful even when the absolute numbers wander:

- `faiss_flat`: faiss `IndexFlatIP`, float32, the usual exact baseline;
- `faiss_flat_sharded` (with `--threads` > 1, galleries up to 1M): the same split over as many
  cores as the matcher may use, so the ratio holds at equal core count;
- one row per matcher precision (int8, float16, float32 scanned copies; all rescore exactly).

Exactness is judged against an exact float32 search (float64 arithmetic, ties by subject id).
`top1_agreement` is the fraction of probes whose best subject and its score equal it; `topk_*`
count probes whose whole top-k list differs.

Data. Face embeddings are not uniform on the sphere: they share a mean direction and their
variance is spread unevenly. The synthetic model reproduces what MobileFaceNet templates of LFW
show (128-d: norm of the mean template 0.12; impostor cosine mean 0.012, std 0.101; largest
component 0.39, 99.99th percentile of |component| 0.335) with a Gaussian of mean norm 0.12 and
eigenvalues decaying as exp(-2 i / D) in a random basis, normalised (it gives 0.12; 0.014, 0.101;
0.40, 0.334). Genuine probes are noisy copies of enrolled templates at the genuine cosine seen on
LFW (0.65 on average); impostor probes are fresh draws. `templates=PATH.npz` (arrays `vectors`,
optional `labels`) fits the model to real templates instead and, with labels, enrols the first
template of each label seen twice or more among the synthetic ones, probes with the others
(genuine) and with single-label templates (impostors), the gate-eval ident protocol, and reports
the decision changes on those real probes.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

GENUINE_COSINE = 0.65


@dataclass(frozen=True)
class EmbeddingModel:
    """Gaussian in embedding space, normalised onto the sphere."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D, D): z @ scale is the centred part

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def calibrated(cls, dim: int, seed: int = 0) -> "EmbeddingModel":
        rng = np.random.default_rng(seed)
        lam = np.exp(-2.0 * np.arange(dim) / dim)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        mean = rng.standard_normal(dim)
        m = 0.12
        mean *= m / np.linalg.norm(mean) / np.sqrt(1 - m * m)
        return cls(mean, np.sqrt(lam / lam.sum())[:, None] * basis)

    @classmethod
    def fitted(cls, vectors: np.ndarray) -> "EmbeddingModel":
        v = np.asarray(vectors, dtype=np.float64)
        lam, vec = np.linalg.eigh(np.cov(v.T))
        return cls(v.mean(0), np.sqrt(np.clip(lam, 0, None))[:, None] * vec.T)

    def _centred(self, n: int, rng) -> np.ndarray:
        return rng.standard_normal((n, self.dim)) @ self.scale

    def sample(self, n: int, rng, chunk: int = 1 << 18) -> np.ndarray:
        out = np.empty((n, self.dim), dtype=np.float32)
        for a in range(0, n, chunk):
            z = self._centred(min(chunk, n - a), rng) + self.mean
            out[a:a + len(z)] = z / np.linalg.norm(z, axis=1, keepdims=True)
        return out

    def genuine(self, enrolled: np.ndarray, rng, cosine: float = GENUINE_COSINE) -> np.ndarray:
        noise = self._centred(len(enrolled), rng)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        q = enrolled + np.sqrt(1 / cosine**2 - 1) * noise
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _resident_bytes() -> int:
    """Anonymous resident memory after handing freed heap back to the OS: what the gallery
    really pins. File pages (the float32 copies read with pread) are page cache, not counted."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class _Data:
    gallery: np.ndarray
    ids: list[str]
    probes: np.ndarray
    probe_kind: list[str]  # genuine / impostor / real-genuine / real-impostor


def _make_data(size: int, dim: int, probes: int, rng, templates: Path | None) -> _Data:
    real_enrol = np.zeros((0, dim), dtype=np.float32)
    real_ids: list[str] = []
    real_probes = np.zeros((0, dim), dtype=np.float32)
    real_kind: list[str] = []
    if templates is not None:
        z = np.load(templates, allow_pickle=False)
        vecs = np.asarray(z["vectors"], dtype=np.float32)
        if vecs.shape[1] != dim:
            raise ValueError(f"{templates}: templates are {vecs.shape[1]}-d, benchmark asked for {dim}")
        vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        model = EmbeddingModel.fitted(vecs)
        if "labels" in z:
            labels = [str(x) for x in z["labels"]]
            rows: dict[str, list[int]] = {}
            for i, lab in enumerate(labels):
                rows.setdefault(lab, []).append(i)
            enrol = {lab: r for lab, r in rows.items() if len(r) >= 2}
            real_ids = [f"real:{lab}" for lab in enrol]
            real_enrol = vecs[[r[0] for r in enrol.values()]]
            gen = [i for r in enrol.values() for i in r[1:]]
            imp = [r[0] for r in rows.values() if len(r) == 1]
            real_probes = vecs[gen + imp]
            real_kind = ["real-genuine"] * len(gen) + ["real-impostor"] * len(imp)
            if len(real_enrol) > size:
                raise ValueError(f"gallery size {size} is smaller than the {len(real_enrol)} real enrolments")
    else:
        model = EmbeddingModel.calibrated(dim)
    synth = model.sample(size - len(real_enrol), rng)
    gallery = np.concatenate([real_enrol, synth]) if len(real_enrol) else synth
    ids = real_ids + [f"s{i:08d}" for i in range(len(synth))]
    n_gen = probes // 2
    pick = rng.integers(len(real_enrol), size, n_gen)
    probe_vecs = np.concatenate([model.genuine(gallery[pick], rng), model.sample(probes - n_gen, rng), real_probes])
    kinds = ["genuine"] * n_gen + ["impostor"] * (probes - n_gen) + real_kind
    return _Data(gallery, ids, probe_vecs.astype(np.float32), kinds)


def _burst(matcher, data: _Data, model_rng, updates: int) -> dict:
    """Searches on the main thread while another thread applies `updates` adds, replacements
    and revocations. Sentinel subjects are never touched, so each of their searches must give
    the same exact answer as before the burst; any other answer counts as inconsistent."""
    n = len(data.ids)
    sentinels = model_rng.choice(n, size=min(64, n // 4), replace=False)
    sentinel_set = set(sentinels.tolist())
    dim = data.gallery.shape[1]
    noise = model_rng.standard_normal((len(sentinels), dim)) * (0.75 / np.sqrt(dim))  # genuine-like, cos ≈ 0.8
    probes = [(data.ids[i], data.gallery[i] + e) for i, e in zip(sentinels, noise, strict=True)]
    before = {sid: matcher.search(v, 1)[0] for sid, v in probes}
    touchable = np.array([i for i in model_rng.permutation(n)[:updates * 2] if i not in sentinel_set])
    slowest = [0.0]
    done = threading.Event()
    errors: list[BaseException] = []

    def writer():
        try:
            removed = []
            for j in range(updates):
                op = j % 10
                t0 = time.perf_counter()
                if op < 4:  # re-enrolment with a new template
                    i = touchable[j % len(touchable)]
                    v = data.gallery[i] + 0.05 * model_rng.standard_normal(dim).astype(np.float32)
                    matcher.add(data.ids[i], v)
                elif op < 7:  # a new rider
                    matcher.add(f"burst{j}", model_rng.standard_normal(dim).astype(np.float32))
                else:  # revocation / expiry
                    i = touchable[(j * 7919) % len(touchable)]
                    if matcher.remove(data.ids[i]):
                        removed.append(i)
                slowest[0] = max(slowest[0], time.perf_counter() - t0)
        except BaseException as e:  # reported in the result
            errors.append(e)
        finally:
            done.set()

    def search_loop(until) -> tuple[np.ndarray, int]:
        lat, bad, j = [], 0, 0
        while not until():
            sid, v = probes[j % len(probes)]
            t0 = time.perf_counter()
            r = matcher.search(v, 1)
            lat.append(time.perf_counter() - t0)
            bad += (not r) or r[0] != before[sid]
            j += 1
        return (np.array(lat) * 1e3 if lat else np.array([np.nan])), bad

    th = threading.Thread(target=writer, name="burst-writer")
    t_start = time.perf_counter()
    th.start()
    lat_ms, bad = search_loop(done.is_set)
    th.join()
    elapsed = time.perf_counter() - t_start
    # Control: the same loop for as long without updates, to show what the (shared, busy)
    # machine alone does to the tail.
    t_end = time.perf_counter() + elapsed
    ctl_ms, _ = search_loop(lambda: time.perf_counter() > t_end)
    return {"burst_updates": updates, "burst_seconds": elapsed, "burst_searches": len(lat_ms),
            "burst_median_ms": float(np.median(lat_ms)), "burst_p99_ms": float(np.quantile(lat_ms, 0.99)),
            "burst_worst_ms": float(lat_ms.max()), "burst_inconsistent": int(bad),
            "burst_slowest_update_ms": slowest[0] * 1e3, "burst_error": repr(errors[0]) if errors else None,
            "control_p99_ms": float(np.quantile(ctl_ms, 0.99)), "control_worst_ms": float(ctl_ms.max())}


def search_bench(sizes=(10_000, 100_000, 1_000_000), dims=(128, 512), methods=("float32", "float16", "int8"),
                 probes: int = 200, k: int = 1, threads: int = 1, exact_dir: str | Path | None = None,
                 templates: str | Path | None = None, burst: int = 10_000, seed: int = 0,
                 faiss_baseline: bool = True) -> list[dict]:
    """One row per (size, dim, method); see the module docstring for the columns' meaning."""
    import faiss
    from threadpoolctl import threadpool_limits

    from vision.match import Matcher
    from vision.match.reference import exact_search

    faiss.omp_set_num_threads(threads)
    exact_dir = Path(exact_dir) if exact_dir is not None else Path(tempfile.gettempdir())
    rows = []
    for dim in dims:
        for size in sizes:
            rng = np.random.default_rng(seed)
            data = _make_data(size, dim, probes, rng, Path(templates) if templates else None)
            truth = exact_search(data.gallery, data.ids, data.probes, k)
            engines: dict[str, object] = {}
            build: dict[str, dict] = {}
            if faiss_baseline:
                rss0 = _resident_bytes()
                t0 = time.perf_counter()
                flat = faiss.IndexFlatIP(dim)
                flat.add(data.gallery)
                build["faiss_flat"] = {"load_s": time.perf_counter() - t0, "rss_delta": _resident_bytes() - rss0}
                engines["faiss_flat"] = flat
                # The same scan on as many cores as the matcher may use; up to 1M rows only, as it
                # holds one more float32 copy (5 GB at 10M x 128, and it gains nothing: both
                # baselines wait for memory).
                if threads > 1 and size <= 1_000_000:
                    rss0 = _resident_bytes()
                    t0 = time.perf_counter()
                    engines["faiss_flat_sharded"] = _sharded_flat(data.gallery, threads)
                    build["faiss_flat_sharded"] = {"load_s": time.perf_counter() - t0,
                                                   "rss_delta": _resident_bytes() - rss0}
            for method in methods:
                gc.collect()
                rss0 = _resident_bytes()
                t0 = time.perf_counter()
                m = Matcher(dim, "bench", precision=method, exact_dir=exact_dir, scan_threads=threads)
                m.add_arrays(data.ids, data.gallery)
                gc.collect()
                build[method] = {"load_s": time.perf_counter() - t0, "rss_delta": _resident_bytes() - rss0,
                                 "stats": m.stats()}
                engines[method] = m
            lat = {name: [] for name in engines}
            answers = {name: [] for name in engines}
            with threadpool_limits(threads):
                names = list(engines)
                for name in names:  # warm-up: page in, fill caches
                    for q in data.probes[:3]:
                        _query(engines[name], name, q, k, data.ids)
                for p, q in enumerate(data.probes):
                    for name in names[p % len(names):] + names[:p % len(names)]:
                        t0 = time.perf_counter()
                        ans = _query(engines[name], name, q, k, data.ids)
                        lat[name].append(time.perf_counter() - t0)
                        answers[name].append(ans)
            faiss_median = float(np.median(lat["faiss_flat"]) * 1e3) if faiss_baseline else None
            sharded_median = (float(np.median(lat["faiss_flat_sharded"]) * 1e3)
                              if "faiss_flat_sharded" in lat else None)
            for name in engines:
                ms = np.array(lat[name]) * 1e3
                baseline = name.startswith("faiss_flat")
                agree = [a[:1] == t[:1] if not baseline else _same_top1_id(a, t)
                         for a, t in zip(answers[name], truth, strict=True)]
                row = {
                    "size": size, "dim": dim, "method": name, "k": k, "probes": len(data.probes),
                    "median_ms": float(np.median(ms)), "p99_ms": float(np.quantile(ms, 0.99)),
                    "faiss_median_ms": faiss_median,
                    "speedup_vs_faiss": faiss_median / float(np.median(ms)) if faiss_median else None,
                    "faiss_sharded_median_ms": sharded_median,
                    "speedup_vs_faiss_sharded": sharded_median / float(np.median(ms)) if sharded_median else None,
                    "top1_agreement": float(np.mean(agree)),
                    "topk_disagreements": int(sum(a != t for a, t in zip(answers[name], truth, strict=True)))
                    if not baseline else None,
                    "load_s": build[name]["load_s"],
                    "resident_bytes": int(build[name]["rss_delta"]),
                    "bytes_per_template": build[name]["rss_delta"] / size,
                    "peak_rss_bytes": _peak_resident_bytes(), "threads": threads,
                }
                real = [i for i, kd in enumerate(data.probe_kind) if kd.startswith("real")]
                if real and not baseline:
                    row["real_probes"] = len(real)
                    row["real_decision_changes"] = int(sum(not agree[i] for i in real))
                if not baseline:
                    st = build[name]["stats"]
                    row["matcher_bytes_per_template"] = (st["scan_bytes"] + st["slot_bytes"] + st["subject_bytes"]
                                                         + st["exact_resident_bytes"]) / size
                    row["rescans"] = engines[name].rescans
                rows.append(row)
                log.info("%s", row)
            if burst and "int8" in engines:
                res = _burst(engines["int8"], data, np.random.default_rng(seed + 1), burst)
                next(r for r in rows if r["size"] == size and r["dim"] == dim and r["method"] == "int8").update(res)
            for name, e in engines.items():
                if not name.startswith("faiss_flat"):
                    e.close()
            del engines, data, truth
            gc.collect()
    return rows


def _sharded_flat(gallery: np.ndarray, shards: int):
    """faiss IndexFlatIP split into `shards` row ranges searched by one C++ thread each: the
    flat baseline given the cores the matcher gets."""
    import faiss

    index = faiss.IndexShards(gallery.shape[1], True, True)  # threaded, successive ids
    bounds = np.linspace(0, len(gallery), shards + 1).astype(int)
    for a, b in itertools.pairwise(bounds):
        shard = faiss.IndexFlatIP(gallery.shape[1])
        shard.add(gallery[a:b])
        index.add_shard(shard)
    return index  # faiss's Python wrapper keeps the shards alive with the index


def _query(engine, name: str, q: np.ndarray, k: int, ids: list[str]):
    if name.startswith("faiss_flat"):
        scores, idx = engine.search(q[None], k)
        return [(ids[i], float(s)) for i, s in zip(idx[0], scores[0], strict=True)]
    return [(m.subject_id, m.score) for m in engine.search(q, k)]


def _same_top1_id(a, t) -> bool:
    """faiss scores are float32 sums, so only the identity is compared."""
    return bool(a) and bool(t) and a[0][0] == t[0][0]


def environment() -> dict:
    import faiss

    return {"faiss": faiss.__version__, "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "faiss_simd": faiss.get_compile_options()}


def _ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split(",") if x]


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=_ints, default=[10_000, 100_000, 1_000_000], help="gallery sizes, comma-separated")
    p.add_argument("--dims", type=_ints, default=[128, 512])
    p.add_argument("--methods", type=lambda s: s.split(","), default=["float32", "float16", "int8"],
                   help="matcher precisions to compare (faiss IndexFlatIP always runs alongside)")
    p.add_argument("--probes", type=int, default=200, help="synthetic probes per gallery, half genuine")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--threads", type=int, default=2,
                   help="cores one search may use (the matcher's scan_threads; faiss flat also runs sharded "
                        "over as many when > 1)")
    p.add_argument("--exact-dir", default=None, help="where the float32 copies live (default: the temp dir)")
    p.add_argument("--templates", default=None, help="real templates .npz (vectors[, labels])")
    p.add_argument("--burst", type=int, default=10_000, help="updates applied while searching (int8 rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-faiss", action="store_true", help="skip the faiss baseline")
    p.add_argument("--json", action="store_true")


def run_search_cli(args) -> int:
    logging.basicConfig(level=logging.INFO if not args.json else logging.WARNING, stream=sys.stderr)
    rows = search_bench(args.sizes, args.dims, args.methods, probes=args.probes, k=args.k, threads=args.threads,
                        exact_dir=args.exact_dir, templates=args.templates, burst=args.burst, seed=args.seed,
                        faiss_baseline=not args.no_faiss)
    if args.json:
        json.dump({"environment": environment(), "rows": rows}, sys.stdout, indent=2, default=float)
        sys.stdout.write("\n")
    else:
        print(f"{'size':>9} {'dim':>4} {'method':>18} {'median':>8} {'p99':>8} {'faiss':>8} {'x':>5} "
              f"{'top1':>6} {'B/tmpl':>7} {'burst worst':>11}")
        for r in rows:
            print(f"{r['size']:>9} {r['dim']:>4} {r['method']:>18} {r['median_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{(r['faiss_median_ms'] or float('nan')):8.2f} {(r['speedup_vs_faiss'] or float('nan')):5.2f} "
                  f"{r['top1_agreement']:6.3f} {r['bytes_per_template']:7.0f} "
                  f"{r.get('burst_worst_ms', float('nan')):11.2f}")
    return 0
