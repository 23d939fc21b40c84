"""The answer the matcher must give, computed the slow way: exact float32 search over the rows
exactly as the matcher stores them, float64 sums, ties by subject id. Used by gate-eval ident
(every probe checked) and gate-bench search (top-1/top-k agreement)."""
from __future__ import annotations

import numpy as np

from vision.match.matcher import exact_scores, unit_rows


def exact_search(gallery: np.ndarray, ids: list[str], probes: np.ndarray, k: int
                 ) -> list[list[tuple[str, float]]]:
    """Exact float32 search of every probe, over the rows exactly as the matcher stores them:
    a float32 GEMM per chunk finds each probe's neighbourhood (everything within 1e-4 of its
    k-th best), float64 row sums settle scores and order, ties by subject id."""
    q = unit_rows(probes)
    chunk = max(1024, (256 << 20) // (4 * len(q)))  # a 256 MB score block at most
    cands: list[list[np.ndarray]] = [[] for _ in range(len(q))]
    for a in range(0, len(gallery), chunk):
        scores = unit_rows(gallery[a:a + chunk]) @ q.T  # (rows, probes)
        kk = min(k, len(scores))
        kth = -np.partition(-scores, kk - 1, axis=0)[kk - 1]
        for p in range(len(q)):
            cands[p].append(a + np.flatnonzero(scores[:, p] >= kth[p] - 1e-4))
    out = []
    for p in range(len(q)):
        rows = np.concatenate(cands[p])
        exact = exact_scores(unit_rows(gallery[rows]), q[p])
        ranked = sorted(((ids[i], float(s)) for i, s in zip(rows.tolist(), exact.tolist(), strict=True)),
                        key=lambda t: (-t[1], t[0]))
        out.append(ranked[:k])
    return out
