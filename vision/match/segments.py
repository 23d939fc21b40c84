"""The scanned part of the gallery: immutable compact segments plus one small float32 staging
buffer for recent additions.

Why segments and not one matrix: a reader scans a snapshot while the sync thread adds and
revokes. Segments never change once built, so a scan holds no lock and an update never waits
for a scan; growing the gallery never copies it. New templates land in the staging buffer
(appended past the rows any published snapshot can see), which is sealed into a segment when
full; segments of similar size are merged in the writer thread so a search makes few scan calls.

The scan itself is faiss's scalar-quantizer flat scan (`IndexScalarQuantizer`), the fastest
correct kernel measured on this class of CPU (see tools/bench_search.py). Every row also carries
the exact bound of its quantisation error, which is what lets the matcher prove that rescoring a
few candidates in float32 gives exactly the float32 answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import faiss
import numpy as np


class Precision(str, Enum):
    """How templates are stored for the scan (the float32 copy for rescoring is kept apart)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT8 = "int8"


# Unit vectors in D dimensions have components around 1/sqrt(D); real 128-d face embeddings
# (MobileFaceNet on LFW) peak at 0.39 = 4.4/sqrt(128). A range of ±6/sqrt(D) leaves headroom
# with a step of 0.047/sqrt(D); a rare larger component is clipped, and its row's error bound
# (below) says so, so exactness never depends on this choice, only speed.
INT8_RANGE_SIGMAS = 6.0


class Codec:
    """Encodes unit vectors for one faiss flat index type and bounds their error."""

    def __init__(self, dim: int, precision: Precision):
        self.dim = dim
        self.precision = Precision(precision)
        self._template = self.new_index()
        self._check_kernel()

    def _check_kernel(self) -> None:
        """The proof of exactness trusts the scan to compute query · decode(code). faiss picks
        its SIMD kernel by CPU and dimension at run time, and some are wrong (1.15.1's
        QT_8bit_direct kernels return 0 on AVX-512 at d % 32 == 0), so check the one this
        machine will run, once, on a few hundred rows, and refuse to start rather than
        answer wrongly."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((256, self.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        codes = self._template.sa_encode(x)
        index = self.new_index()
        index.add_sa_codes(codes)
        scanned, rows = index.search(x[:8], 256)
        decoded = self._template.sa_decode(codes).astype(np.float64)
        want = np.take_along_axis(x[:8].astype(np.float64) @ decoded.T, rows, axis=1)
        if not np.allclose(scanned, want, rtol=0, atol=self.dim * 1e-6):
            raise RuntimeError(f"faiss {faiss.__version__} computes wrong {self.precision.value} scan scores at "
                               f"dim {self.dim} on this CPU; the matcher cannot run exactly with it")

    def new_index(self) -> faiss.IndexFlatCodes:  # flat and scalar-quantised: both keep their codes
        if self.precision is Precision.FLOAT32:
            return faiss.IndexFlatIP(self.dim)
        if self.precision is Precision.FLOAT16:
            return faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        # QT_8bit_uniform: one range for all dimensions, decoded and multiplied by the float
        # query inside faiss's SIMD loop. The per-dimension QT_8bit is 1.7x slower, and the
        # QT_8bit_direct(_signed) byte kernels return zero scores at d % 32 == 0 in faiss 1.15.1.
        idx = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT)
        a = INT8_RANGE_SIGMAS / np.sqrt(self.dim)
        faiss.copy_array_to_vector(np.array([-a, 2 * a], dtype=np.float32), idx.sq.trained)
        idx.is_trained = True
        return idx

    @property
    def code_bytes(self) -> int:
        return self._template.sa_code_size()

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, float]:
        """(codes, largest row error ‖x − decode(code)‖) — by Cauchy–Schwarz, no unit query's
        scanned score is further than that from its exact cosine."""
        codes = self._template.sa_encode(np.ascontiguousarray(vectors, dtype=np.float32))
        if self.precision is Precision.FLOAT32 or len(vectors) == 0:
            return codes, 0.0
        err = 0.0
        for a in range(0, len(codes), 1 << 16):
            diff = self._template.sa_decode(codes[a:a + (1 << 16)]) - vectors[a:a + (1 << 16)]
            # squared row errors summed in float32 (a third of the time of a float64 norm per row;
            # the sum's relative error is ~1e-7 on 128-512 terms), widened by 1e-5 to stay a bound
            err = max(err, float(np.sqrt(np.einsum("ij,ij->i", diff, diff).max())) * (1 + 1e-5))
        return codes, err


@dataclass(frozen=True)
class CodeSegment:
    """Immutable block of encoded rows. Rows are identified by (slot, generation): a slot is the
    row's place in the exact store, the generation tells a live row from a stale one left by an
    earlier owner of the same slot."""

    index: faiss.IndexFlatCodes
    row_slot: np.ndarray  # (n,) int32
    row_gen: np.ndarray  # (n,) uint16
    max_error: float

    @classmethod
    def build(cls, codec: Codec, codes: np.ndarray, row_slot: np.ndarray, row_gen: np.ndarray,
              max_error: float) -> "CodeSegment":
        index = codec.new_index()
        index.add_sa_codes(np.ascontiguousarray(codes))
        return cls(index, np.ascontiguousarray(row_slot, dtype=np.int32),
                   np.ascontiguousarray(row_gen, dtype=np.uint16), max_error)

    def __len__(self) -> int:
        return len(self.row_slot)

    def codes(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.codes).reshape(len(self), -1)

    def top(self, q: np.ndarray, k: int, visible: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(q[None], k)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep]

    def resident_bytes(self) -> int:
        return self.index.sa_code_size() * len(self) + self.row_slot.nbytes + self.row_gen.nbytes


class Staging:
    """Fixed-capacity float32 buffer for recent additions. The writer only appends past the row
    count of the latest snapshot, so rows a reader can see never change."""

    max_error = 0.0

    def __init__(self, dim: int, capacity: int):
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.row_slot = np.zeros(capacity, dtype=np.int32)
        self.row_gen = np.zeros(capacity, dtype=np.uint16)
        self.used = 0  # writer's count; readers use their snapshot's count

    @property
    def capacity(self) -> int:
        return len(self.row_slot)

    def append(self, vectors: np.ndarray, slots: np.ndarray, gens: np.ndarray) -> None:
        n = len(vectors)
        if self.used + n > self.capacity:
            raise ValueError("staging buffer full")  # the matcher seals before this can happen
        s = slice(self.used, self.used + n)
        self.vectors[s] = vectors
        self.row_slot[s] = slots
        self.row_gen[s] = gens
        self.used += n

    def top(self, q: np.ndarray, k: int, visible: int) -> tuple[np.ndarray, np.ndarray]:
        # faiss's own loop, not numpy's matmul: BLAS would wake its thread team for a few
        # thousand rows (measured 3.5 ms against 0.1 ms on this busy 2-core machine)
        scores, rows = faiss.knn(q[None], self.vectors[:visible], min(k, visible), metric=faiss.METRIC_INNER_PRODUCT)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep]

    def resident_bytes(self) -> int:
        return self.vectors.nbytes + self.row_slot.nbytes + self.row_gen.nbytes
