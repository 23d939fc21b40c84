"""Anti-passback memory: who passed this lane, when, and for which flight.

A traveller who stays in view after passing was matched and let through a second time 1.8 s
later; a boarding pass handed back over the barrier would let a second person board. The
lane refuses a subject who passed within `lane.passback.window_s`, and on a boarding gate (a
lane following a `flight:` scope) a subject who already boarded that flight. The memory must
outlive a daemon restart, so it is a small SQLite file in the state dir (`passages.db`, 0600
like every gate store), holding subject ids, times and flight tags, never images or templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

from gate.sqlite_store import PrivateSqliteFile, parse_utc_iso, utc_iso

PASSAGES_DB_NAME = "passages.db"


@dataclass(frozen=True)
class PastPassage:
    subject_id: str
    age_s: float  # seconds before the moment asked about
    boarded: bool  # passed for one of the flights asked about


class PassbackStore:
    def __init__(self, directory: Path) -> None:
        self._file = PrivateSqliteFile(Path(directory) / PASSAGES_DB_NAME, synchronous="FULL", secure_delete=True)
        try:
            with self._file.write() as db:
                db.table("passages").create({"subject_id": str, "lane": str, "passed_at": str, "flights": str},
                                      not_null={"subject_id", "lane", "passed_at", "flights"}, strict=True,
                                      if_not_exists=True)
                db.execute("CREATE INDEX IF NOT EXISTS passages_lane_time ON passages (lane, passed_at)")
        except BaseException:
            self._file.close()
            raise

    def record(self, subject_id: str, lane: str, at: datetime, flights: Iterable[str]) -> None:
        """`flights`: the lane's flight tags at the time (e.g. "flight:BA123"), if any."""
        with self._file.write() as db:
            db.execute("INSERT INTO passages (subject_id, lane, passed_at, flights) VALUES (?, ?, ?, ?)",
                       [subject_id, lane, utc_iso(at), " ".join(sorted(flights))])

    def recent(self, lane: str, now: datetime, keep: timedelta, flights: Iterable[str] = ()) -> list[PastPassage]:
        """Passages of `lane` within `keep` before `now`, latest per subject, with whether each was
        for one of `flights`."""
        wanted = set(flights)
        rows = self._file.reader().execute(
            "SELECT subject_id, passed_at, flights FROM passages WHERE lane = ? AND passed_at >= ? "
            "ORDER BY passed_at", [lane, utc_iso(now - keep)]).fetchall()
        latest: dict[str, PastPassage] = {}
        for subject_id, passed_at, tags in rows:
            boarded = bool(wanted & set(tags.split())) or (subject_id in latest and latest[subject_id].boarded)
            latest[subject_id] = PastPassage(subject_id, (now - parse_utc_iso(passed_at)).total_seconds(), boarded)
        return list(latest.values())

    def purge(self, older_than: datetime) -> int:
        with self._file.write() as db:
            return db.execute("DELETE FROM passages WHERE passed_at < ?", [utc_iso(older_than)]).rowcount

    def close(self) -> None:
        self._file.close()
