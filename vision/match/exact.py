"""Where the float32 templates live: read only for the few candidates each search rescores.

The compact scan decides which rows can matter; the exact cosine of those rows is what a
decision uses. Two homes for the float32 copies, same interface:

- `RamExactStore`: in process memory. Right for galleries of thousands (airport boarding gates,
  tests, evaluation) where 512 B/template is nothing.
- `FileExactStore`: in an unlinked, owner-only file, read through a mapping. Right for a
  metro line's million-template gallery on a small box: a search reads tens of rows (a few
  4 KiB pages), so keeping 512 MB resident to serve them would quadruple the matcher's memory.
  The kernel's page cache keeps the hot rows; under memory pressure it drops them and a
  candidate costs one flash read instead. The file is unlinked at creation, so no other user
  can open it — but its blocks stay on the disk after the process ends, so the rows are
  **encrypted** (AES-256-CTR) under a key made at random when the store opens and held only in
  process memory: after a stop or a crash (core dumps are off, gate/process_hardening.py) the
  blocks are noise. Decrypting is one AES-ECB call over the candidates' counter blocks per
  search (~1 µs a 512-byte row measured on the 2-core dev box under load: ~0.13 ms for 128
  candidates), plus 4 resident bytes per row for its write counter.

Rows are addressed by slot. A slot is rewritten only after no reader can still see its previous
owner (the matcher's quarantine), so reads need no lock.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_CHUNK_ROWS = 1 << 16
_BLOCK = 16
_WRITE_CHUNK_ROWS = 4096
EXACT_FILE_PREFIX = "edgegate-templates-"  # named so the forgetting check can look for leftovers


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
    RSS: page cache the kernel reclaims under pressure, not memory the process pins.

    Encryption is AES-CTR built on one ECB call per batch of rows: the counter block of byte
    block `i` of slot `s` written by write number `w` is (w << 64) | (s * blocks_per_row + i),
    so no (key, counter) pair is ever used twice — a rewritten slot gets a new `w` — and the
    scattered candidates of a search are decrypted together."""

    _GROW_ROWS = 1 << 16

    def __init__(self, dim: int, directory: Path | str):
        self.dim = dim
        self._row_bytes = dim * 4
        self._row_blocks = -(-self._row_bytes // _BLOCK)
        # TemporaryFile is O_TMPFILE / unlinked on POSIX; 0600 in any case.
        self._file = tempfile.TemporaryFile(dir=str(directory), prefix=EXACT_FILE_PREFIX)
        os.fchmod(self._file.fileno(), 0o600)
        self._fd = self._file.fileno()
        self._ecb = Cipher(algorithms.AES(os.urandom(32)), modes.ECB())  # the key exists only here
        self._writes = 0
        self._gen = np.zeros(0, dtype=np.uint32)  # write number of each slot's current row
        self._rows = np.zeros((0, self._row_bytes), dtype=np.uint8)  # view of the current mapping

    def _keystream(self, gens: np.ndarray, slots: np.ndarray) -> np.ndarray:
        blocks = (slots.astype(np.uint64)[:, None] * np.uint64(self._row_blocks)
                  + np.arange(self._row_blocks, dtype=np.uint64)[None, :])
        counters = np.empty((blocks.size, 2), dtype=">u8")
        counters[:, 0] = np.repeat(gens.astype(np.uint64), self._row_blocks)
        counters[:, 1] = blocks.ravel()
        stream = self._ecb.encryptor().update(counters.tobytes())
        return np.frombuffer(stream, dtype=np.uint8).reshape(len(slots), -1)[:, :self._row_bytes]

    def write(self, slot0: int, vectors: np.ndarray) -> None:
        end = slot0 + len(vectors)
        if end > len(self._rows):
            self._remap(max(end, 2 * len(self._rows), self._GROW_ROWS))
        clear = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint8).reshape(len(vectors), -1)
        for a in range(0, len(vectors), _WRITE_CHUNK_ROWS):
            b = min(a + _WRITE_CHUNK_ROWS, len(vectors))
            self._writes += 1
            slots = np.arange(slot0 + a, slot0 + b)
            gens = np.full(b - a, self._writes, dtype=np.uint32)
            self._gen[slot0 + a:slot0 + b] = gens
            data = memoryview((clear[a:b] ^ self._keystream(gens, slots)).tobytes())
            off = (slot0 + a) * self._row_bytes
            while data:
                n = os.pwrite(self._fd, data, off)
                data, off = data[n:], off + n

    def _remap(self, rows: int) -> None:
        """A larger mapping of the grown file. The old one stays valid (the file only grows)
        for readers still holding it, and is unmapped when the last of them lets go."""
        os.ftruncate(self._fd, rows * self._row_bytes)
        mm = mmap.mmap(self._fd, rows * self._row_bytes, mmap.MAP_SHARED, mmap.PROT_READ)
        mm.madvise(mmap.MADV_RANDOM)  # candidates are scattered: no read-ahead
        gen = np.zeros(rows, dtype=np.uint32)
        gen[:len(self._gen)] = self._gen
        self._gen = gen
        self._rows = np.frombuffer(mm, dtype=np.uint8).reshape(rows, self._row_bytes)

    def read(self, slots: np.ndarray) -> np.ndarray:
        slots = np.asarray(slots)
        cipher = self._rows[slots]
        return (cipher ^ self._keystream(self._gen[slots], slots)).view(np.float32).reshape(len(slots), self.dim)

    def resident_bytes(self) -> int:
        return self._gen.nbytes

    def close(self) -> None:
        self._rows = np.zeros((0, self._row_bytes), dtype=np.uint8)
        self._file.close()


def open_exact_store(dim: int, directory: Path | str | None):
    return RamExactStore(dim) if directory is None else FileExactStore(dim, directory)
