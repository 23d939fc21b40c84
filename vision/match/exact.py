"""Where the float32 templates live: read only for the few candidates each search rescores.

The compact scan decides which rows can matter; the exact cosine of those rows is what a
decision uses. Two homes for the float32 copies, same interface:

- `RamExactStore`: in process memory. Right for galleries of thousands (airport boarding gates,
  tests, evaluation) where 512 B/template is nothing.
- `FileExactStore`: in an unlinked, owner-only file read with `pread`. Right for a metro line's
  million-template gallery on a small box: a search reads tens of rows (a few 4 KiB pages), so
  keeping 512 MB resident to serve them would quadruple the matcher's memory. The kernel's page
  cache keeps the hot rows; under memory pressure it drops them and a candidate costs one flash
  read instead. The file is unlinked at creation, so templates never outlive the process and no
  other user can open it.

Rows are addressed by slot. A slot is rewritten only after no reader can still see its previous
owner (the matcher's quarantine), so reads need no lock.
"""
from __future__ import annotations

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
    def __init__(self, dim: int, directory: Path | str):
        self.dim = dim
        self._row_bytes = dim * 4
        # TemporaryFile is O_TMPFILE / unlinked on POSIX and created 0600.
        self._file = tempfile.TemporaryFile(dir=str(directory), prefix="edgegate-templates-")
        os.fchmod(self._file.fileno(), 0o600)
        self._fd = self._file.fileno()

    def write(self, slot0: int, vectors: np.ndarray) -> None:
        data = np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
        view = memoryview(data)
        off = slot0 * self._row_bytes
        while view:
            n = os.pwrite(self._fd, view, off)
            view, off = view[n:], off + n

    def read(self, slots: np.ndarray) -> np.ndarray:
        rb = self._row_bytes
        buf = bytearray(len(slots) * rb)
        mv = memoryview(buf)
        for i, s in enumerate(slots.tolist()):
            got = os.preadv(self._fd, [mv[i * rb:(i + 1) * rb]], s * rb)
            if got != rb:
                raise OSError(f"template store: short read at slot {s}")
        return np.frombuffer(buf, dtype=np.float32).reshape(len(slots), self.dim)

    def resident_bytes(self) -> int:
        return 0

    def close(self) -> None:
        self._file.close()


def open_exact_store(dim: int, directory: Path | str | None):
    return RamExactStore(dim) if directory is None else FileExactStore(dim, directory)
