"""Where the float32 templates live: read only for the few candidates each search rescores.

The compact scan decides which rows can matter; the exact cosine of those rows is what a
decision uses. Two homes for the float32 copies, same interface:

- `RamExactStore`: in process memory. Right for galleries of thousands (airport boarding gates,
  tests, evaluation) where 512 B/template is nothing.
- `FileExactStore`: in an unlinked, owner-only file, read through a mapping. Right for a
  metro line's million-template gallery on a small box: a search reads tens of rows (a few
  4 KiB pages), so keeping 512 MB resident to serve them would quadruple the matcher's memory.
  The kernel's page cache keeps the hot rows; under memory pressure it drops them and a
  candidate costs one flash read instead. The file is unlinked at creation, so templates never
  outlive the process and no other user can open it.

Rows are addressed by slot. A slot is rewritten only after no reader can still see its previous
owner (the matcher's quarantine), so reads need no lock.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

import numpy as np

_CHUNK_ROWS = 1 << 16


class RamExactStore:
    """Rows in fixed-size chunks: growing appends a chunk and never moves a row a reader may be
    reading, nor copies the whole gallery."""

    def __init__(self, dim: int):
        self.dim = dim
        self._chunks: list[np.ndarray] = []

    def write(self, slot0: int, vectors: np.ndarray) -> None:
        pos = 0
        while pos < len(vectors):
            slot = slot0 + pos
            c, off = divmod(slot, _CHUNK_ROWS)
            while len(self._chunks) <= c:
                self._chunks.append(np.zeros((_CHUNK_ROWS, self.dim), dtype=np.float32))
            n = min(len(vectors) - pos, _CHUNK_ROWS - off)
            self._chunks[c][off:off + n] = vectors[pos:pos + n]
            pos += n

    def read(self, slots: np.ndarray) -> np.ndarray:
        out = np.empty((len(slots), self.dim), dtype=np.float32)
        for i, s in enumerate(slots.tolist()):
            out[i] = self._chunks[s // _CHUNK_ROWS][s % _CHUNK_ROWS]
        return out

    def resident_bytes(self) -> int:
        return sum(c.nbytes for c in self._chunks)

    def close(self) -> None:
        self._chunks = []


class FileExactStore:
    """Written with pwrite (no page of ours is dirtied or mapped for it); read through a shared
    read-only mapping, so rescoring is a few page-cache hits with no system call — a system
    call per candidate would let go of the GIL dozens of times per search, and each time a busy
    sync thread could keep it for a whole switch interval (5 ms). Touched pages show as file
    RSS: page cache the kernel reclaims under pressure, not memory the process pins."""

    _GROW_ROWS = 1 << 16

    def __init__(self, dim: int, directory: Path | str):
        self.dim = dim
        self._row_bytes = dim * 4
        # TemporaryFile is O_TMPFILE / unlinked on POSIX; 0600 in any case.
        self._file = tempfile.TemporaryFile(dir=str(directory), prefix="edgegate-templates-")
        os.fchmod(self._file.fileno(), 0o600)
        self._fd = self._file.fileno()
        self._rows = np.zeros((0, dim), dtype=np.float32)  # view of the current mapping

    def write(self, slot0: int, vectors: np.ndarray) -> None:
        end = slot0 + len(vectors)
        if end > len(self._rows):
            self._remap(max(end, 2 * len(self._rows), self._GROW_ROWS))
        data = memoryview(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        off = slot0 * self._row_bytes
        while data:
            n = os.pwrite(self._fd, data, off)
            data, off = data[n:], off + n

    def _remap(self, rows: int) -> None:
        """A larger mapping of the grown file. The old one stays valid (the file only grows)
        for readers still holding it, and is unmapped when the last of them lets go."""
        os.ftruncate(self._fd, rows * self._row_bytes)
        mm = mmap.mmap(self._fd, rows * self._row_bytes, mmap.MAP_SHARED, mmap.PROT_READ)
        mm.madvise(mmap.MADV_RANDOM)  # candidates are scattered: no read-ahead
        self._rows = np.frombuffer(mm, dtype=np.float32).reshape(rows, self.dim)

    def read(self, slots: np.ndarray) -> np.ndarray:
        return self._rows[slots]

    def resident_bytes(self) -> int:
        return 0

    def close(self) -> None:
        self._rows = np.zeros((0, self.dim), dtype=np.float32)
        self._file.close()


def open_exact_store(dim: int, directory: Path | str | None):
    return RamExactStore(dim) if directory is None else FileExactStore(dim, directory)
