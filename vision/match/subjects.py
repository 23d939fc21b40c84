"""Subject ids ↔ small integers, and each subject's range of template slots.

Rows carry a 4-byte subject number rather than the id string, so a million rows cost 4 MB
here instead of a Python string each. A number freed by a revocation waits in quarantine, like a
slot, so a search still reading an older snapshot never reports the wrong person.
"""
from __future__ import annotations

import numpy as np

from vision.match.slots import Quarantine


class SubjectTable:
    def __init__(self, capacity: int = 1024):
        self._number: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.slot0 = np.zeros(capacity, dtype=np.int64)
        self.count = np.zeros(capacity, dtype=np.int32)
        self._free: list[int] = []
        self._quarantine = Quarantine()

    def __len__(self) -> int:
        return len(self._number)

    def __contains__(self, subject_id: str) -> bool:
        return subject_id in self._number

    def number(self, subject_id: str) -> int | None:
        return self._number.get(subject_id)

    def slots(self, number: int) -> tuple[int, int]:
        return int(self.slot0[number]), int(self.count[number])

    def reserve(self, subject_id: str) -> int:
        """A number for a subject about to be enrolled. Its id is readable by number at once
        (a search may meet its rows as soon as they are published) but `number(subject_id)`
        finds it only after `bind`, when its templates are in place."""
        if self._free:
            n = self._free.pop()
            self.ids[n] = subject_id
        else:
            n = len(self.ids)
            self.ids.append(subject_id)
            if n >= len(self.slot0):
                self.slot0 = np.concatenate([self.slot0, np.zeros(len(self.slot0), dtype=np.int64)])
                self.count = np.concatenate([self.count, np.zeros(len(self.count), dtype=np.int32)])
        return n

    def bind(self, subject_id: str, number: int, slot0: int, count: int) -> None:
        self._number[subject_id] = number
        self.slot0[number] = slot0
        self.count[number] = count

    def drop(self, subject_id: str, version: int) -> int:
        """Forget a subject; its number stays reserved (and its id readable) until `reclaim`
        says no reader older than `version` remains."""
        n = self._number.pop(subject_id)
        self._quarantine.hold(version, n)
        return n

    def reclaim(self, oldest_reader_version: int) -> None:
        self._free.extend(self._quarantine.release(oldest_reader_version))
