"""Scanning a snapshot's parts on more than one core.

Why: one scan of a million int8 templates reads 128 MB and takes ~5.5 ms on one core of this
class of CPU, close to what a single core can pull from memory; the only way below that is a
second core reading the other half. The parts (segments of at most `max_segment_rows`, plus
the staging buffer) are independent, so they are shared out whole, largest first, between the
calling thread and workers of one process-wide pool.

Two details decide whether this pays (measured with tools/bench_search.py, interleaved with
faiss's flat index): the calling thread scans a share itself instead of waiting on futures
(waking two pool threads instead of one cost 1-2 ms), and every worker runs faiss with one
OpenMP thread (a worker's default OpenMP team spins on the core the other half needs).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import faiss
import numpy as np

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class ScannedPart(Protocol):
    def top(self, q: np.ndarray, k: int, visible: int) -> tuple[np.ndarray, np.ndarray]: ...


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a systemd CPUAffinity=)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init() -> None:
    faiss.omp_set_num_threads(1)


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, available_cores() - 1), thread_name_prefix="match-scan",
                                       initializer=_worker_init)
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child inherits the pool object but not its threads: work submitted there
    would wait forever. The child builds its own pool on first use."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _shares(sizes: list[int], ways: int) -> list[list[int]]:
    """Indices of `sizes` split into `ways` groups of similar total (largest first, each to the
    lightest group); group 0 holds the largest part."""
    groups: list[list[int]] = [[] for _ in range(ways)]
    load = [0] * ways
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += sizes[i]
    return [g for g in groups if g]


def scan_parts(q: np.ndarray, jobs: list[tuple[ScannedPart, int, int]], threads: int,
               min_parallel_rows: int = 1 << 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """`part.top(q, k, visible)` for every (part, k, visible) job, in job order, on up to
    `threads` cores. Galleries under `min_parallel_rows` rows are scanned on the calling thread:
    handing work to another thread costs more than scanning them."""
    def run(indices: list[int]) -> list[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        return [(i, jobs[i][0].top(q, jobs[i][1], jobs[i][2])) for i in indices]

    sizes = [visible for _, _, visible in jobs]
    if threads <= 1 or len(jobs) < 2 or sum(sizes) < min_parallel_rows:
        return [r for _, r in run(list(range(len(jobs))))]
    mine, *theirs = _shares(sizes, threads)
    pool = _shared_pool()
    futures = [pool.submit(run, g) for g in theirs]
    out = dict(run(mine))
    for f in futures:
        out.update(f.result())
    return [out[i] for i in range(len(jobs))]
