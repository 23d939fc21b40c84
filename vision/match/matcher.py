"""1:N search and 1:1 verification of face templates by cosine similarity.

A gate decides on the exact float32 cosine, yet reading a million float32 templates per decision
costs 512 MB of memory traffic (about 17 ms on a small CPU, the same for faiss's flat index:
both wait for memory). So the gallery is scanned in a compact form (int8 by default: 4x fewer
bytes) and only a few candidates are rescored against their float32 copies.

Rescoring a fixed handful would usually give the right answer; this matcher proves it does.
Every stored row knows the bound of its quantisation error, e = ‖x − decode(x)‖, so for a unit
probe its scanned score is within e of the exact cosine. Per segment, a row that was not among
the K best scanned scores cannot beat (K-th scanned score + e_max); once the k-th best exact
score among the rescored candidates clears that bound in every segment, no unseen row can enter
or reorder the top k. If it does not (near-ties, many dead rows nearby), that segment is scanned
again for twice as many candidates. The result is identical to an exact float32 search — subject,
score and order — not a recall figure.

Concurrency: one writer (the sync thread) and any number of searching threads. Writers publish
immutable snapshots; a search takes the current one under a lock held for microseconds and then
runs without it, so an update never waits for a scan and a scan never waits for an update (a
segment merge included). Results are those of the gallery as it was at one instant during the
call. One search may use more than one core: its segments are shared out between the calling
thread and a scan worker (vision/match/scan.py, `scan_threads`).
"""
from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import faiss
import numpy as np

from vision.match.exact import open_exact_store
from vision.match.scan import available_cores, scan_parts
from vision.match.segments import Codec, CodeSegment, Precision, Staging
from vision.match.slots import SlotTable, live_rows
from vision.match.subjects import SubjectTable
from vision.types import Template

log = logging.getLogger(__name__)

# Headroom for float32 rounding inside the scan kernels: summing D float32 products of unit
# vectors errs by at most about D * 2^-24 (6e-8 per term), so D * 1e-6 is a wide margin.
_SLACK_PER_DIM = 1e-6
_thread_state = threading.local()


def _faiss_one_thread() -> None:
    """faiss opens an OpenMP parallel region for every call, even a search of one query. On a
    CPU shared with the vision pipeline the region's barrier waits for a descheduled thread:
    measured 3-11 ms per search instead of 8 µs on this 2-core machine under load, and a
    writer's team spinning on the second core starves the searching thread. One query or a
    few thousand rows gain nothing from a team, so every thread that calls into the matcher
    runs faiss with one thread (an OpenMP setting of the calling thread only)."""
    if not getattr(_thread_state, "single", False):
        faiss.omp_set_num_threads(1)
        _thread_state.single = True


def _yield_to_readers() -> None:
    """Called after each update. A search thread waiting for the GIL would otherwise wait out
    the interpreter's switch interval (5 ms) each time while the sync thread applies a burst of
    updates; sleep(0) releases the GIL at once. Measured on 300k templates during 6000
    updates: median search 5.9 → 4.5 ms, p99 24-34 → 17 ms on this 2-core machine."""
    time.sleep(0)


# A subject with more templates than this is a data error, not a use case (and would not fit a
# staging buffer).
MAX_TEMPLATES_PER_SUBJECT = 64


def unit_rows(v: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Rows scaled to unit length in float64, stored as float32: what the matcher keeps and
    searches with, so an exact reference must start from the same rows. Not idempotent in the
    last bit, hence one shared definition."""
    out = np.empty(v.shape, dtype=np.float32)
    for a in range(0, len(v), 1 << 16):  # float64 in chunks: a bulk load needs no 8-byte copy
        c = v[a:a + (1 << 16)].astype(np.float64)
        if not np.isfinite(c).all():
            raise ValueError(f"{what}: non-finite values")
        norms = np.linalg.norm(c, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError(f"{what}: zero vector has no direction")
        out[a:a + len(c)] = c / norms
    return out


def exact_scores(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosines of float32 rows with a float32 unit probe in float64. Elementwise product then a
    row-wise sum, not BLAS: a matrix-vector kernel may round rows differently by their position
    in the block, and two identical templates must tie exactly (ties are ordered by id)."""
    return (rows.astype(np.float64) * q.astype(np.float64)).sum(axis=1)


@dataclass(frozen=True)
class Match:
    subject_id: str
    score: float  # cosine similarity, exact (float32 templates, float64 arithmetic)


@dataclass(frozen=True)
class _Snapshot:
    version: int
    segments: tuple[CodeSegment, ...]
    staging: Staging
    staging_rows: int
    live: np.ndarray
    slot_gen: np.ndarray
    slot_subject: np.ndarray
    subjects: int

    def parts(self) -> list[tuple[object, int]]:
        out: list[tuple[object, int]] = [(s, len(s)) for s in self.segments]
        if self.staging_rows:
            out.append((self.staging, self.staging_rows))
        return out


class Matcher:
    """Templates of one model (`model_id`), `dim`-dimensional, several per subject allowed.

    precision: how the scanned copy is stored (int8 default; float16/float32 for comparison).
    exact_dir: None keeps the float32 copies for rescoring in RAM (512 B/template at 128-d); a
    directory keeps them in an unlinked file there, read through a mapping (use a disk-backed
    state directory, not tmpfs, for million-template galleries: see exact.py).
    candidates: rows taken from each segment's scan before the proof asks for more. 128: on
    real dlib templates, which crowd together, 32 forced a second scan for three probes in
    four (p90 13 ms at 1M), 128 for one in fifteen (p90 5.6 ms), for ~0.2 ms more rescoring.
    scan_threads: cores one search may use (capped at the cores this process may run on); a
    search splits the gallery's segments between them (vision/match/scan.py), so segments are
    kept at most `max_segment_rows` long: half a million rows, so that a million-template
    gallery already has two.
    """

    def __init__(self, dim: int, model_id: str, *, precision: Precision | str = Precision.INT8,
                 exact_dir: Path | str | None = None, staging_rows: int = 4096, candidates: int = 128,
                 max_segment_rows: int = 1 << 19, merge_fanout: int = 4, scan_threads: int = 2):
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if staging_rows < MAX_TEMPLATES_PER_SUBJECT or candidates < 1 or merge_fanout < 2 or scan_threads < 1:
            raise ValueError("staging_rows must be ≥ 64, candidates ≥ 1, merge_fanout ≥ 2, scan_threads ≥ 1")
        self.dim = dim
        self.model_id = model_id
        self.precision = Precision(precision)
        self._codec = Codec(dim, self.precision)
        self._exact = open_exact_store(dim, exact_dir)
        self._staging_rows = staging_rows
        self._candidates = candidates
        self._max_segment_rows = max(max_segment_rows, staging_rows)
        self._fanout = merge_fanout
        self.scan_threads = min(scan_threads, available_cores())
        self._slack = dim * _SLACK_PER_DIM
        self._slots = SlotTable()
        self._subjects = SubjectTable()
        self._segments: tuple[CodeSegment, ...] = ()
        self._staging = Staging(dim, staging_rows)
        self._dead_rows = 0  # rows in segments/staging whose template was replaced or revoked
        self._lock = threading.Lock()  # guards the snapshot pointer, reader registry, subject table
        self._write_lock = threading.RLock()  # serialises writers
        self._readers: Counter[int] = Counter()
        self._snap = self._make_snapshot(0)
        self.rescans = 0  # extra scan rounds forced by near-ties or dead rows (a speed statistic)

    # ---------- input checks ----------
    def _vectors(self, vectors, what: str) -> np.ndarray:
        if isinstance(vectors, Template):
            if vectors.model_id != self.model_id:
                raise ValueError(f"{what}: template of model {vectors.model_id!r}, matcher holds {self.model_id!r}")
            vectors = vectors.vector
        v = np.asarray(vectors)
        if v.dtype.kind not in "fiu":
            raise ValueError(f"{what}: expected a numeric array, got dtype {v.dtype}")
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self.dim or v.shape[0] == 0:
            raise ValueError(f"{what}: expected shape ({self.dim},) or (k, {self.dim}) with k ≥ 1, "
                             f"got {np.shape(vectors)}")
        return unit_rows(v, what)

    def _probe(self, vector) -> np.ndarray:
        v = self._vectors(vector, "probe")
        if len(v) != 1:
            raise ValueError(f"probe: expected one vector of {self.dim}, got {len(v)}")
        return v[0]

    @staticmethod
    def _check_id(subject_id) -> str:
        if not isinstance(subject_id, str) or not subject_id:
            raise ValueError(f"subject_id must be a non-empty str, got {subject_id!r}")
        SubjectTable.encode(subject_id)
        return subject_id

    # ---------- snapshots ----------
    def _make_snapshot(self, version: int) -> _Snapshot:
        return _Snapshot(version, self._segments, self._staging, self._staging.used, self._slots.live,
                         self._slots.gen, self._slots.subject, len(self._subjects))

    def _publish(self) -> int:
        snap = self._make_snapshot(self._snap.version + 1)
        with self._lock:
            self._snap = snap
        return snap.version

    @contextmanager
    def _reading(self):
        with self._lock:
            snap = self._snap
            self._readers[snap.version] += 1
        try:
            yield snap
        finally:
            with self._lock:
                self._readers[snap.version] -= 1
                if not self._readers[snap.version]:
                    del self._readers[snap.version]

    def _reclaim(self) -> None:
        with self._lock:
            oldest = min(self._readers, default=self._snap.version)
        self._slots.reclaim(oldest)
        self._subjects.reclaim(oldest)

    # ---------- writer side ----------
    def add(self, subject_id: str, vectors) -> None:
        """Enrol a subject with k ≥ 1 templates, replacing any it had."""
        self.add_many([(self._check_id(subject_id), vectors)])

    def add_many(self, items: Iterable[tuple[str, object]]) -> None:
        """Enrol many subjects in one published step (startup load, a sync batch): cheaper than
        one `add` each, and a search sees all of them or none. Validates everything first, so a
        bad item changes nothing. A repeated id: the last one wins."""
        groups: dict[str, np.ndarray] = {}
        for sid, vecs in items:
            v = self._vectors(vecs, f"templates of {sid!r}")
            if len(v) > MAX_TEMPLATES_PER_SUBJECT:
                raise ValueError(f"templates of {sid!r}: {len(v)} > {MAX_TEMPLATES_PER_SUBJECT} per subject")
            groups.pop(self._check_id(sid), None)
            groups[sid] = v
        if groups:
            counts = np.fromiter((len(v) for v in groups.values()), dtype=np.int64, count=len(groups))
            with self._write_lock:
                self._add_groups(list(groups), counts, np.concatenate(list(groups.values())))
            _yield_to_readers()

    def add_arrays(self, subject_ids: Sequence[str], vectors: np.ndarray) -> None:
        """One template per row; rows sharing a subject id become that subject's templates. The
        bulk form for a watchlist loaded from a database: no Python object per template, and
        with distinct ids the rows go in one segment (`max_segment_rows`, half a million) at a
        time, so loading ten million templates never holds a second copy of them. Everything is
        validated before anything changes."""
        v = np.asarray(vectors)
        if v.ndim != 2 or len(v) != len(subject_ids):
            raise ValueError(f"need one subject id per row: {len(subject_ids)} ids, array shape {v.shape}")
        ids = [self._check_id(sid) for sid in subject_ids]
        if len(set(ids)) != len(ids):
            rows: dict[str, list[int]] = {}
            for i, sid in enumerate(ids):
                rows.setdefault(sid, []).append(i)
            self.add_many((sid, v[r]) for sid, r in rows.items())
            return
        step = self._max_segment_rows
        # Validate all first, so a bad row changes nothing; one segment's worth is kept from the
        # check rather than normalised twice (a fifth of a 100k-subject snapshot's matcher time).
        first: np.ndarray | None = None
        for a in range(0, len(v), step):
            unit = self._vectors(v[a:a + step], "templates")
            first = unit if a == 0 else first
        for a in range(0, len(v), step):
            unit = first if a == 0 and first is not None else self._vectors(v[a:a + step], "templates")
            with self._write_lock:
                self._add_groups(ids[a:a + step], np.ones(len(unit), dtype=np.int64), unit)
            _yield_to_readers()

    def _add_groups(self, ids: list[str], counts: np.ndarray, vecs: np.ndarray) -> None:
        """Subject ids[i] gets the next counts[i] rows of vecs (unit float32, ids distinct)."""
        _faiss_one_thread()
        self._reclaim()
        version = self._snap.version + 1
        clear_ranges = []
        # A first snapshot or a start-up load: no id can be known yet, so no per-subject lookups.
        bulk = len(self._subjects) == 0 and not self._slots.has_free_ranges()
        if bulk:
            numbers = self._subjects.reserve_many(ids)
            starts = self._slots.allocate_many(counts, numbers)
        else:
            numbers = np.empty(len(ids), dtype=np.int64)
            starts = np.empty(len(ids), dtype=np.int64)
            for i, (sid, k) in enumerate(zip(ids, counts.tolist(), strict=True)):
                with self._lock:
                    number = self._subjects.number(sid)
                    old = None if number is None else self._subjects.slots(number)
                if number is None:
                    number = self._subjects.reserve(sid)
                numbers[i] = number
                starts[i] = self._slots.allocate(k, number)
                if old is not None:
                    clear_ranges.append(old)
                    self._slots.free(old[0], old[1], version)
                    self._dead_rows += old[1]
        row_slots = (np.repeat(starts, counts) + np.arange(len(vecs))
                     - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.int32)
        self._write_exact(row_slots, vecs)
        if bulk:
            with self._lock:  # only now, with its templates stored, can verify() find a subject
                self._subjects.bind_many(numbers, starts, counts)
        else:
            for sid, number, slot0, k in zip(ids, numbers.tolist(), starts.tolist(), counts.tolist(), strict=True):
                with self._lock:
                    self._subjects.bind(sid, number, slot0, k)
                self._subjects.rehash_if_needed()
        self._slots.update_liveness(list(zip(starts.tolist(), counts.tolist(), strict=True)), clear_ranges)
        gens = self._slots.gen[row_slots]
        if len(vecs) >= self._staging_rows:
            for a in range(0, len(vecs), self._max_segment_rows):
                b = a + self._max_segment_rows
                self._segments += (self._encode(vecs[a:b], row_slots[a:b], gens[a:b]),)
        else:
            if self._staging.used + len(vecs) > self._staging.capacity:
                self._seal_staging()
            self._staging.append(vecs, row_slots, gens)
        self._publish()
        self._maintain()

    def _write_exact(self, row_slots: np.ndarray, vecs: np.ndarray) -> None:
        """One write per run of consecutive slots (a bulk load is a few large writes, not a
        system call per subject), in pieces, so a reordered copy never holds all of them."""
        order = np.argsort(row_slots, kind="stable")
        sorted_slots = row_slots[order]
        breaks = np.flatnonzero(np.diff(sorted_slots) != 1) + 1
        for a, b in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(order)].tolist(), strict=True):
            for c in range(a, b, 1 << 16):
                d = min(b, c + (1 << 16))
                self._exact.write(int(sorted_slots[c]), vecs[order[c:d]])

    def remove(self, subject_id: str) -> bool:
        """Revoke a subject; False if it was not enrolled."""
        self._check_id(subject_id)
        _faiss_one_thread()
        with self._write_lock:
            self._reclaim()
            version = self._snap.version + 1
            with self._lock:
                number = self._subjects.number(subject_id)
                if number is None:
                    return False
                slot0, count = self._subjects.slots(number)
                self._subjects.drop(subject_id, version)
            self._slots.update_liveness([], [(slot0, count)])
            self._slots.free(slot0, count, version)
            self._dead_rows += count
            self._publish()
            self._maintain()
        _yield_to_readers()
        return True

    def _encode(self, vecs: np.ndarray, row_slots: np.ndarray, gens: np.ndarray) -> CodeSegment:
        codes, err = self._codec.encode(vecs)
        return CodeSegment.build(self._codec, codes, row_slots, gens, err)

    def _seal_staging(self) -> None:
        st = self._staging
        n = st.used
        keep = live_rows(self._slots.live, self._slots.gen, st.row_slot[:n], st.row_gen[:n])
        self._dead_rows -= int(n - keep.sum())
        if keep.any():
            self._segments += (self._encode(st.vectors[:n][keep], st.row_slot[:n][keep], st.row_gen[:n][keep]),)
        self._staging = Staging(self.dim, self._staging_rows)

    def _rows(self) -> int:
        return sum(len(s) for s in self._segments) + self._staging.used

    def _maintain(self) -> None:
        """Merge same-sized segments (fewer scan calls) and drop dead rows once they are a
        quarter of the gallery. Runs in the writer; readers keep scanning their snapshot."""
        if self._dead_rows > max(self._staging_rows, self._rows() // 4):
            self._compact()
        while True:
            tiers: dict[int, list[CodeSegment]] = {}
            for s in self._segments:  # tier t: about staging_rows * fanout**t rows
                t = int(math.log(len(s) / self._staging_rows, self._fanout)) if len(s) > self._staging_rows else 0
                tiers.setdefault(t, []).append(s)
            group = next((sorted(g, key=len)[:self._fanout] for g in tiers.values() if len(g) >= self._fanout
                          and sum(map(len, sorted(g, key=len)[:self._fanout])) <= self._max_segment_rows), None)
            if group is None:
                return
            self._replace(group, self._merge(group))

    def _merge(self, group: list[CodeSegment]) -> CodeSegment | None:
        codes, slots, gens = [], [], []
        err = 0.0
        for s in group:
            keep = live_rows(self._slots.live, self._slots.gen, s.row_slot, s.row_gen)
            codes.append(s.codes()[keep])
            slots.append(s.row_slot[keep])
            gens.append(s.row_gen[keep])
            err = max(err, s.max_error)
        self._dead_rows -= sum(len(s) for s in group) - sum(map(len, slots))
        if not sum(map(len, slots)):
            return None
        return CodeSegment.build(self._codec, np.concatenate(codes), np.concatenate(slots), np.concatenate(gens), err)

    def _replace(self, old: list[CodeSegment], new: CodeSegment | None) -> None:
        ids = {id(s) for s in old}
        self._segments = tuple(s for s in self._segments if id(s) not in ids) + ((new,) if new is not None else ())
        log.debug("matcher: %d segments → %s rows", len(old), len(new) if new is not None else 0)
        self._publish()

    def compact(self) -> None:
        """Drop every dead row now (normally done when a quarter of the rows are dead), e.g.
        after a large expiry batch, to return the memory at once."""
        _faiss_one_thread()
        with self._write_lock:
            self._compact()

    def _compact(self) -> None:
        """Rewrite every segment holding dead rows. Runs when a quarter of all rows are dead, so
        its cost (one copy of the gallery, a segment at a time) is spread over as many updates."""
        if self._staging.used:
            self._seal_staging()
            self._publish()
        for s in self._segments:
            live = int(live_rows(self._slots.live, self._slots.gen, s.row_slot, s.row_gen).sum())
            if live < len(s):
                self._replace([s], self._merge([s]))

    # ---------- reader side ----------
    def search(self, vector, k: int = 5) -> list[Match]:
        """Best `k` subjects, best first; a subject's score is its best template's cosine.
        Ties are ordered by subject id."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = self._probe(vector)
        _faiss_one_thread()
        with self._reading() as snap:
            if not snap.subjects:
                return []
            parts = snap.parts()
            want = [min(max(self._candidates, 2 * k), n) for _, n in parts]
            bound = [math.inf] * len(parts)
            todo = list(range(len(parts)))
            best: dict[int, float] = {}  # subject number → best exact score
            scored = np.zeros(0, dtype=np.int64)  # slots already rescored, sorted
            rounds = 0
            while todo:
                self.rescans += rounds > 0
                rounds += 1
                new_slots = []
                scanned = scan_parts(q, [(parts[i][0], want[i], parts[i][1]) for i in todo], self.scan_threads)
                for i, (scores, rows) in zip(todo, scanned, strict=True):
                    part, n = parts[i]
                    if want[i] >= n or not len(rows):  # every row seen: nothing left to bound
                        bound[i] = -math.inf
                    else:
                        bound[i] = float(scores[-1]) + part.max_error + self._slack
                    rs = part.row_slot[rows]
                    new_slots.append(rs[live_rows(snap.live, snap.slot_gen, rs, part.row_gen[rows])])
                slots = np.unique(np.concatenate(new_slots)).astype(np.int64)
                slots = slots[~np.isin(slots, scored, assume_unique=True)]
                if len(slots):
                    scored = np.union1d(scored, slots)
                    exact = exact_scores(self._exact.read(slots), q)
                    for subj, sc in zip(snap.slot_subject[slots].tolist(), exact.tolist(), strict=True):
                        if sc > best.get(subj, -math.inf):
                            best[subj] = sc
                ranked = self._rank(best, k)
                threshold = self._threshold(ranked, best, k, snap.subjects)
                todo = [i for i in range(len(parts)) if bound[i] != -math.inf and bound[i] >= threshold]
                for i in todo:
                    want[i] = min(2 * want[i], parts[i][1])
            return [Match(sid, score) for sid, score in ranked]

    @staticmethod
    def _threshold(ranked: list[tuple[str, float]], best: dict[int, float], k: int, subjects: int) -> float:
        """What an unseen row would have to reach to change the answer: the k-th best score so
        far; with fewer than k subjects found, the lowest found score if every subject has been
        found (an unseen row could only raise a listed subject), else anything."""
        if len(ranked) >= k:
            return ranked[-1][1]
        if len(best) == subjects:
            return min(best.values())
        return -math.inf

    def _rank(self, best: dict[int, float], k: int) -> list[tuple[str, float]]:
        """The k best (subject id, score), ties by id. Only subjects scoring at least the k-th
        best score are named and sorted: a search rescores hundreds of candidates."""
        id_of = self._subjects.id_of
        if len(best) > k:
            cut = heapq.nlargest(k, best.values())[-1]
            best = {n: s for n, s in best.items() if s >= cut}
        return sorted(((id_of(n), s) for n, s in best.items()), key=lambda t: (-t[1], t[0]))[:k]

    def verify(self, vector, subject_id: str) -> float | None:
        """Exact cosine against the subject's best template; None if not enrolled."""
        self._check_id(subject_id)
        q = self._probe(vector)
        with self._reading():
            with self._lock:
                number = self._subjects.number(subject_id)
                if number is None:
                    return None
                slot0, count = self._subjects.slots(number)
            vecs = self._exact.read(np.arange(slot0, slot0 + count))
        return float(exact_scores(vecs, q).max())

    def __len__(self) -> int:
        return self._snap.subjects

    def __contains__(self, subject_id: object) -> bool:
        with self._lock:
            return isinstance(subject_id, str) and subject_id in self._subjects

    # ---------- housekeeping ----------
    def stats(self) -> dict:
        """Sizes for benchmarks and health reports (bytes held by the matcher's arrays)."""
        snap = self._snap
        rows = sum(len(s) for s in snap.segments) + snap.staging_rows
        return {
            "subjects": snap.subjects, "rows": rows, "dead_rows": self._dead_rows,
            "segments": len(snap.segments), "precision": self.precision.value,
            "scan_bytes": sum(s.resident_bytes() for s in snap.segments) + snap.staging.resident_bytes(),
            "slot_bytes": self._slots.subject.nbytes + self._slots.gen.nbytes + self._slots.live.nbytes,
            "subject_bytes": self._subjects.nbytes(),
            "exact_resident_bytes": self._exact.resident_bytes(),
        }

    def close(self) -> None:
        with self._write_lock:
            self._exact.close()

    def __enter__(self) -> "Matcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
