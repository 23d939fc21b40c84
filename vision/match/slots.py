"""Slots: a template's place in the exact store, and the bookkeeping that lets readers go
without locks.

A slot freed by a revocation is not reused until every search that might still see its
previous owner has finished (the readers register the snapshot version they read). When it is
reused its generation goes up, so rows of the previous owner still sitting in a segment are
recognised as stale without having to find and rewrite them.
"""
from __future__ import annotations

from collections import defaultdict, deque

import numpy as np


class Quarantine:
    """Items freed at a snapshot version become reusable once no reader is older than it."""

    def __init__(self):
        self._held: deque[tuple[int, object]] = deque()

    def hold(self, version: int, item) -> None:
        self._held.append((version, item))

    def release(self, oldest_reader_version: int) -> list:
        out = []
        while self._held and self._held[0][0] <= oldest_reader_version:
            out.append(self._held.popleft()[1])
        return out

    def __len__(self) -> int:
        return len(self._held)


class SlotTable:
    """Per-slot owner and generation, a copy-on-write liveness bitmap, and contiguous slot ranges
    (a subject's templates sit side by side, so one range describes them)."""

    def __init__(self, capacity: int = 1024):
        self.subject = np.full(capacity, -1, dtype=np.int32)
        self.gen = np.zeros(capacity, dtype=np.uint16)
        self.live = np.zeros((capacity + 7) // 8, dtype=np.uint8)
        self.next_slot = 0
        self._free: dict[int, list[int]] = defaultdict(list)  # range length → range starts
        self._quarantine = Quarantine()

    def _grow(self, need: int) -> None:
        """New arrays, never resized in place: snapshots keep the arrays they were made with."""
        cap = len(self.subject)
        if need <= cap:
            return
        new = max(need, 2 * cap)
        self.subject = np.concatenate([self.subject, np.full(new - cap, -1, dtype=np.int32)])
        self.gen = np.concatenate([self.gen, np.zeros(new - cap, dtype=np.uint16)])
        self.live = np.concatenate([self.live, np.zeros((new + 7) // 8 - len(self.live), dtype=np.uint8)])

    def allocate(self, count: int, subject: int) -> int:
        """First slot of a fresh range of `count` slots owned by `subject` (not live yet)."""
        free = self._free.get(count)
        if free:
            slot0 = free.pop()
            # wrapping after 65536 reuses is harmless: compaction drops stale rows long before
            self.gen[slot0:slot0 + count] += 1
        else:
            slot0 = self.next_slot
            self._grow(slot0 + count)
            self.next_slot += count
        self.subject[slot0:slot0 + count] = subject
        return slot0

    def has_free_ranges(self) -> bool:
        return any(self._free.values())

    def allocate_many(self, counts: np.ndarray, subjects: np.ndarray) -> np.ndarray:
        """First slots of fresh ranges side by side at the end (the bulk `allocate`, for when no
        freed range waits to be reused: `has_free_ranges()` is False)."""
        starts = self.next_slot + np.cumsum(counts) - counts
        end = self.next_slot + int(counts.sum())
        self._grow(end)
        self.subject[self.next_slot:end] = np.repeat(subjects, counts)
        self.next_slot = end
        return starts.astype(np.int64)

    def free(self, slot0: int, count: int, version: int) -> None:
        self._quarantine.hold(version, (slot0, count))

    def reclaim(self, oldest_reader_version: int) -> None:
        for slot0, count in self._quarantine.release(oldest_reader_version):
            self._free[count].append(slot0)

    def update_liveness(self, set_ranges: list[tuple[int, int]], clear_ranges: list[tuple[int, int]]) -> None:
        """Replaces the bitmap with an edited copy; a published one is never written, since
        readers may hold it."""
        bits = self.live.copy()
        for ranges, value in ((clear_ranges, 0), (set_ranges, 1)):
            for slot0, count in _coalesce(ranges):
                b0, b1 = slot0 >> 3, (slot0 + count - 1) >> 3
                part = np.unpackbits(bits[b0:b1 + 1], bitorder="little")
                part[slot0 - 8 * b0:slot0 - 8 * b0 + count] = value
                bits[b0:b1 + 1] = np.packbits(part, bitorder="little")
        self.live = bits


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for slot0, count in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == slot0:
            out[-1][1] += count
        else:
            out.append([slot0, count])
    return [(a, c) for a, c in out]


def live_rows(live: np.ndarray, gen: np.ndarray, row_slot: np.ndarray, row_gen: np.ndarray) -> np.ndarray:
    """Mask of rows that are their slot's current, live template, judged by one snapshot's arrays."""
    return (((live[row_slot >> 3] >> (row_slot & 7).astype(np.uint8)) & 1).astype(bool)
            & (gen[row_slot] == row_gen))
