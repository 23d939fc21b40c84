"""The gate's local copy of the watchlist: who may pass (allow) or must be stopped (deny).

Why it is shaped this way:
- It must survive restarts and network loss, so it lives in SQLite with the CHP sequence
  number in the same file, updated in the same transaction as the data: after a crash the
  sequence always describes exactly the content on disk, and the sync agent resumes from it.
  That is also why synchronous=NORMAL is enough here (WAL keeps it consistent; a lost last
  transaction is simply fetched again).
- Removal is physical: secure_delete zeroes deleted rows and a WAL checkpoint after revoke,
  purge and snapshot swap folds the zeroed pages back, so a revoked person's template does not
  linger in the file.
- Templates may be sealed at rest (sync.template_crypto). The database remembers which key
  sealed them, so a store opened without that key, or with another, fails with a clear
  TemplateKeyError instead of loading garbage; a fresh snapshot (replace_all) re-keys.
- Each subject keeps the CHP sequence of its last change. An update no newer than that is
  ignored, so the overlap between a snapshot and the live update stream cannot roll a
  subject back, and a revoked subject keeps a tombstone (no templates, no scopes) so a late
  re-delivery of its enrolment cannot bring it back.
- Changes reach the in-memory matcher through a small listener (add-or-replace / remove),
  called after each commit, so the matcher never holds anything the disk does not.

Validity windows are data, not deletions: a subject outside its window is still loaded, and
the decision checks `is_valid(subject_id, now)` against the local clock; `purge_expired`
removes subjects whose window has closed for good.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from gate.sqlite_store import PrivateSqliteFile, parse_utc_iso, utc_iso
from sync.template_crypto import TemplateCipher, TemplateKeyError
from vision.types import Template

log = logging.getLogger(__name__)

WATCHLIST_DB_NAME = "watchlist.db"
SCHEMA_VERSION = "1"
LIST_TYPES = ("allow", "deny")
PLAINTEXT_KEY_ID = "plaintext"
UNIT_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Subject:
    """A watchlist entry without its templates. `subject_id` is a pseudonym, never a name.

    `scopes` are tags `kind:value` (e.g. `lane:L1`, `flight:VN123`, `line:2`); see in_scope.
    """

    subject_id: str
    list_type: str  # one of LIST_TYPES
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not isinstance(self.subject_id, str) or not self.subject_id.strip():
            raise ValueError(f"subject_id must be a non-empty string, got {self.subject_id!r}")
        if self.list_type not in LIST_TYPES:
            raise ValueError(f"subject {self.subject_id!r}: list_type must be one of {LIST_TYPES}, "
                             f"got {self.list_type!r}")
        for name in ("valid_from", "valid_until"):
            moment = getattr(self, name)
            if moment is not None and (not isinstance(moment, datetime) or moment.tzinfo is None):
                raise ValueError(f"subject {self.subject_id!r}: {name} must be a timezone-aware datetime, "
                                 f"got {moment!r}")
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            raise ValueError(f"subject {self.subject_id!r}: valid_from {self.valid_from} is not before "
                             f"valid_until {self.valid_until}")
        if isinstance(self.scopes, str):
            raise TypeError(f"subject {self.subject_id!r}: scopes must be a collection of tags, not one string")
        scopes = frozenset(self.scopes)
        for tag in scopes:
            kind, _, value = tag.partition(":") if isinstance(tag, str) else ("", "", "")
            if not kind or not value:
                raise ValueError(f"subject {self.subject_id!r}: scope {tag!r} is not of the form kind:value")
        object.__setattr__(self, "scopes", scopes)

    def is_valid(self, now: datetime) -> bool:
        """Inside the validity window [valid_from, valid_until) at `now`."""
        return ((self.valid_from is None or self.valid_from <= now)
                and (self.valid_until is None or now < self.valid_until))

    def in_scope(self, lane_tags: Iterable[str]) -> bool:
        """Whether this subject applies at a lane described by `lane_tags`.

        No scopes = everywhere. Otherwise every kind the subject is scoped by must match:
        within a kind any listed value will do (flight:VN123 or flight:VN124), across kinds
        all must hold (lane:L1 and flight:VN123).
        """
        lane = set(lane_tags)
        by_kind: dict[str, set[str]] = {}
        for tag in self.scopes:
            by_kind.setdefault(tag.partition(":")[0], set()).add(tag)
        return all(tags & lane for tags in by_kind.values())


@dataclass(frozen=True)
class SubjectEntry:
    """A stored subject as `get` returns it."""

    subject: Subject
    updated_seq: int
    revoked: bool
    templates: tuple[Template, ...]  # empty when revoked or when asked without templates


@dataclass(frozen=True)
class ActiveSubject:
    """What the matcher needs for one subject at start-up."""

    subject_id: str
    list_type: str
    vectors: np.ndarray  # (n, D) float32, unit rows, all from one model


@dataclass(frozen=True)
class WatchlistStats:
    active_by_list_type: dict[str, int]  # not revoked, window not closed
    active_by_scope: dict[str, int]
    active_unscoped: int
    not_yet_valid: int
    expiring_soon: int
    expired_unpurged: int
    revoked: int
    templates_by_model: dict[str, int]
    sequence: int
    model_id: str | None


class MatcherListener(Protocol):
    """What the store pushes changes into (vision.match.Matcher fits it).

    `add` must add *or replace* the subject's vectors: the store calls it for updates too, so
    a subject never disappears from the matcher between a remove and an add.
    """

    def add(self, subject_id: str, vectors: np.ndarray) -> None: ...

    def remove(self, subject_id: str) -> None: ...


@dataclass
class _Listener:
    sink: MatcherListener
    model_id: str


class _InsertBatch:
    """Rows for the three tables, written with one executemany each: a 100k-subject snapshot
    is then a few statements per 5,000 subjects instead of three per subject."""

    def __init__(self) -> None:
        self.subjects: list[list] = []
        self.scopes: list[list] = []
        self.rows: list[tuple[str, list[tuple[str, int, np.ndarray]]]] = []

    def __len__(self) -> int:
        return len(self.subjects)

    def add(self, subject: "Subject", rows: list[tuple[str, int, np.ndarray]], seq: int) -> None:
        sid = subject.subject_id
        self.subjects.append([sid, subject.list_type, utc_iso(subject.valid_from) if subject.valid_from else None,
                              utc_iso(subject.valid_until) if subject.valid_until else None, seq])
        self.scopes += [[sid, tag] for tag in sorted(subject.scopes)]
        self.rows.append((sid, rows))

    def flush(self, db, seal) -> None:
        """Checks the batch's vectors in one pass, seals them, and writes the three tables."""
        _check_unit_rows(self.rows)
        templates = [[sid, model_id, idx, vector.size, seal(vector.tobytes(), sid, model_id)]
                     for sid, rows in self.rows for model_id, idx, vector in rows]
        if self.subjects:
            db.conn.executemany("INSERT INTO subjects (subject_id, list_type, valid_from, valid_until, updated_seq, "
                           "revoked) VALUES (?, ?, ?, ?, ?, 0)", self.subjects)
        if self.scopes:
            db.conn.executemany("INSERT INTO scopes (subject_id, scope) VALUES (?, ?)", self.scopes)
        if templates:
            db.conn.executemany("INSERT INTO templates (subject_id, model_id, idx, dim, vector) VALUES (?, ?, ?, ?, ?)",
                           templates)
        self.subjects, self.scopes, self.rows = [], [], []


class WatchlistStore:
    """The watchlist in `<directory>/watchlist.db`. Writes come from the sync thread, reads
    from any thread (each gets its own connection)."""

    def __init__(self, directory: Path, *, cipher: TemplateCipher | None = None, read_only: bool = False) -> None:
        self._cipher = cipher
        self._key_id = cipher.key_id if cipher else PLAINTEXT_KEY_ID
        self._listener: _Listener | None = None
        self._read_only = read_only
        self._file = PrivateSqliteFile(Path(directory) / WATCHLIST_DB_NAME, synchronous="NORMAL",
                                       secure_delete=True, read_only=read_only)
        try:
            if not read_only:
                self._create_schema()
            version = self._meta(self._file.reader(), "schema_version")
            if version != SCHEMA_VERSION:
                raise ValueError(f"{self.path} has watchlist schema {version!r}; "
                                 f"this edgegate reads {SCHEMA_VERSION!r}")
        except BaseException:
            self._file.close()
            raise

    @property
    def path(self) -> Path:
        return self._file.path

    def _create_schema(self) -> None:
        with self._file.write() as db:
            db.table("subjects").create(
                {"subject_id": str, "list_type": str, "valid_from": str, "valid_until": str,
                 "updated_seq": int, "revoked": int},
                pk="subject_id", not_null={"list_type", "updated_seq", "revoked"}, strict=True, if_not_exists=True)
            db.table("scopes").create({"subject_id": str, "scope": str}, pk=("subject_id", "scope"), strict=True,
                                if_not_exists=True)
            db.table("templates").create({"subject_id": str, "model_id": str, "idx": int, "dim": int, "vector": bytes},
                                   pk=("subject_id", "model_id", "idx"), not_null={"dim", "vector"}, strict=True,
                                   if_not_exists=True)
            db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"value"}, strict=True,
                                    if_not_exists=True)
            db.table("scopes").create_index(["scope"], if_not_exists=True)
            db.table("templates").create_index(["model_id"], if_not_exists=True)
            db.table("subjects").create_index(["valid_until"], if_not_exists=True)
            for key, value in (("schema_version", SCHEMA_VERSION), ("sequence", "0"), ("template_key", self._key_id)):
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", [key, value])

    # ---- meta ------------------------------------------------------------------------------

    @staticmethod
    def _meta(db, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    @staticmethod
    def _set_meta(db, key: str, value: str) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [key, value])

    def sequence(self) -> int:
        """The CHP sequence of the last update applied (0 = never synced)."""
        return int(self._meta(self._file.reader(), "sequence") or 0)

    def set_sequence(self, seq: int) -> None:
        """Record that updates up to `seq` are applied. Refuses to go backwards (only a
        snapshot, through replace_all, may reset the sequence)."""
        _check_seq(seq)
        with self._file.write() as db:
            current = int(self._meta(db, "sequence") or 0)
            if seq < current:
                raise ValueError(f"watchlist sequence would go back from {current} to {seq}; "
                                 "use replace_all for a reset")
            self._set_meta(db, "sequence", str(seq))

    def model_id(self) -> str | None:
        """The embedding model of the lane that last attached its matcher (`set_listener`), so a
        daemon started with another embedder can warn that the cached templates do not fit it."""
        return self._meta(self._file.reader(), "model_id")

    def set_model_id(self, model_id: str) -> None:
        if not model_id:
            raise ValueError("model_id must be non-empty")
        with self._file.write() as db:
            self._set_meta(db, "model_id", model_id)

    def set_listener(self, listener: MatcherListener | None, model_id: str | None = None) -> None:
        """Push every later change to `listener` (vectors of `model_id` only); None detaches."""
        if listener is None:
            self._listener = None
            return
        if not model_id:
            raise ValueError("a listener needs the model id whose vectors it takes")
        self._listener = _Listener(listener, model_id)
        if not self._read_only and model_id != self.model_id():
            self.set_model_id(model_id)  # the model the lane now runs: what model_id() reports next start

    # ---- writes ----------------------------------------------------------------------------

    def upsert_subject(self, subject: Subject, templates: Sequence[Template], seq: int, *,
                       merge_scopes: bool = False) -> bool:
        """Add or replace a subject and all its templates at CHP sequence `seq`.

        `merge_scopes=True` keeps the scopes already stored for a (non-revoked) subject and
        adds the new ones: the CHP hashmap carries one key per (scope, subject), so each key's
        update names only its own scope.

        Returns False (and changes nothing but the sequence) when the stored subject is
        already at `seq` or newer. Bad input raises ValueError before anything is written.
        """
        _check_seq(seq)
        _check_subject(subject)
        rows = _template_rows(subject.subject_id, templates)
        with self._file.write() as db:
            self._check_key_for_write(db, subject.subject_id)
            self._check_dims(db, rows, exclude_subject=subject.subject_id)
            applied = self._is_newer(db, subject.subject_id, seq)
            if applied:
                if merge_scopes:
                    kept = {r[0] for r in db.execute(
                        "SELECT scope FROM scopes JOIN subjects USING (subject_id) "
                        "WHERE subject_id = ? AND revoked = 0",
                        [subject.subject_id])}
                    subject = replace(subject, scopes=subject.scopes | kept)
                self._delete_subject_rows(db, subject.subject_id)
                self._insert_subject(db, subject, rows, seq)
            self._raise_sequence(db, seq)
        if applied:
            self._notify_upsert(subject.subject_id, templates)
        return applied

    def revoke(self, subject_id: str, seq: int) -> bool:
        """Revoke a subject at CHP sequence `seq`: its templates and scopes are deleted from
        disk, a tombstone remains. Returns False for an unknown subject or a stale revoke."""
        _check_seq(seq)
        with self._file.write() as db:
            applied = self._is_known(db, subject_id) and self._is_newer(db, subject_id, seq)
            if applied:
                self._tombstone(db, subject_id, seq)
            self._raise_sequence(db, seq)
        if applied:
            self._after_revoke(subject_id)
        return applied

    def remove_scope(self, subject_id: str, scope: str, seq: int) -> bool:
        """Withdraw one scope of a subject (a CHP delete of one of its keys). When no scope is
        left, the subject is revoked. Returns False for an unknown subject or a stale change."""
        _check_seq(seq)
        with self._file.write() as db:
            applied = self._is_known(db, subject_id) and self._is_newer(db, subject_id, seq)
            revoked = False
            if applied:
                db.execute("DELETE FROM scopes WHERE subject_id = ? AND scope = ?", [subject_id, scope])
                db.execute("UPDATE subjects SET updated_seq = ? WHERE subject_id = ?", [seq, subject_id])
                if db.execute("SELECT 1 FROM scopes WHERE subject_id = ?", [subject_id]).fetchone() is None:
                    self._tombstone(db, subject_id, seq)
                    revoked = True
            self._raise_sequence(db, seq)
        if revoked:
            self._after_revoke(subject_id)
        return applied

    @staticmethod
    def _is_known(db, subject_id: str) -> bool:
        return db.execute("SELECT 1 FROM subjects WHERE subject_id = ?", [subject_id]).fetchone() is not None

    @staticmethod
    def _tombstone(db, subject_id: str, seq: int) -> None:
        db.execute("DELETE FROM templates WHERE subject_id = ?", [subject_id])
        db.execute("DELETE FROM scopes WHERE subject_id = ?", [subject_id])
        db.execute("UPDATE subjects SET revoked = 1, updated_seq = ? WHERE subject_id = ?", [seq, subject_id])

    def _after_revoke(self, subject_id: str) -> None:
        self._file.checkpoint_truncate()
        if self._listener:
            self._listener.sink.remove(subject_id)

    def erase(self, subject_id: str) -> bool:
        """Erase now: remove a *withdrawn* subject's tombstone (and any row left) at once
        instead of when its validity window closes. Refuses an active subject (ValueError):
        erasing it here alone would not stop the central re-sending it, and a running matcher
        still holds its templates; revoke it at the central first. Returns False when there is
        nothing to erase. Afterwards a late re-delivery of its enrolment is stopped only by the
        follower's sequence checks (the tombstone that also guarded against it is gone)."""
        with self._file.write() as db:
            row = db.execute("SELECT revoked FROM subjects WHERE subject_id = ?", [subject_id]).fetchone()
            if row is None:
                return False
            if not row[0]:
                raise ValueError(f"subject {subject_id} is active on this gate: revoke it at the central first, "
                                 "then erase")
            self._delete_subject_rows(db, subject_id)
        self._file.checkpoint_truncate()
        log.info("erased the tombstone of withdrawn subject %s", subject_id)
        return True

    def purge_expired(self, now: datetime) -> list[str]:
        """Delete every subject whose window closed at or before `now` (tombstones too).

        Returns the ids of the removed subjects that were not revoked (the ones a matcher may
        hold), after telling the listener to drop them.
        """
        cutoff = utc_iso(now)
        with self._file.write() as db:
            removed = [r[0] for r in db.execute(
                "SELECT subject_id FROM subjects WHERE valid_until <= ? AND revoked = 0 ORDER BY subject_id", [cutoff])]
            expired = "SELECT subject_id FROM subjects WHERE valid_until <= ?"
            db.execute(f"DELETE FROM templates WHERE subject_id IN ({expired})", [cutoff])
            db.execute(f"DELETE FROM scopes WHERE subject_id IN ({expired})", [cutoff])
            count = db.execute("DELETE FROM subjects WHERE valid_until <= ?", [cutoff]).rowcount
        if count:
            self._file.checkpoint_truncate()
            log.info("purged %d expired watchlist subjects (%d active until now)", count, len(removed))
        if self._listener:
            for subject_id in removed:
                self._listener.sink.remove(subject_id)
        return removed

    def replace_all(self, snapshot: Iterable[tuple[Subject, Sequence[Template]]], seq: int) -> int:
        """Swap in a fresh snapshot (CHP ICANHAZ reply) at sequence `seq`, atomically.

        Built inside one transaction: readers keep seeing the old watchlist until the commit,
        and a bad record or a failing iterator rolls everything back (old content and old
        sequence intact). Re-seals every template with this store's key. Returns the number
        of subjects.
        """
        _check_seq(seq)
        old_ids = set()
        with self._file.write() as db:
            if self._listener:
                old_ids = {r[0] for r in db.execute("SELECT DISTINCT subject_id FROM templates WHERE model_id = ?",
                                                    [self._listener.model_id])}
            for table in ("templates", "scopes", "subjects"):
                db.execute(f"DELETE FROM {table}")
            dims: dict[str, int] = {}
            count = 0
            loaded: list[tuple[str, np.ndarray]] = []  # (subject, one vector) for the matcher: nothing read back
            listen_model = self._listener.model_id if self._listener else None
            seen: set[str] = set()
            batch = _InsertBatch()
            for subject, templates in snapshot:
                _check_subject(subject)
                rows = _numbered_rows(subject.subject_id, templates)
                for model_id, _, vector in rows:
                    if dims.setdefault(model_id, vector.size) != vector.size:
                        raise ValueError(f"snapshot: subject {subject.subject_id!r} has a {vector.size}-d {model_id} "
                                         f"template; others have {dims[model_id]}-d")
                if subject.subject_id in seen:
                    raise ValueError(f"snapshot lists subject {subject.subject_id!r} twice")
                seen.add(subject.subject_id)
                batch.add(subject, rows, seq)
                if listen_model is not None:
                    loaded.extend((subject.subject_id, vector) for model_id, _, vector in rows
                                  if model_id == listen_model)
                if len(batch) >= 5000:
                    batch.flush(db, self._seal)
                count += 1
            batch.flush(db, self._seal)
            self._set_meta(db, "sequence", str(seq))
            self._set_meta(db, "template_key", self._key_id)
        self._file.checkpoint_truncate()
        log.info("watchlist snapshot at seq %d: %d subjects", seq, count)
        if self._listener:
            sink = self._listener.sink
            add_arrays = getattr(sink, "add_arrays", None)
            if add_arrays is not None and loaded:  # one bulk step, no Python object per template
                add_arrays([sid for sid, _ in loaded], np.stack([vector for _, vector in loaded]))
            else:
                grouped: dict[str, list[np.ndarray]] = {}
                for subject_id, vector in loaded:
                    grouped.setdefault(subject_id, []).append(vector)
                for subject_id, vectors in grouped.items():
                    sink.add(subject_id, np.stack(vectors))
            for subject_id in sorted(old_ids - {sid for sid, _ in loaded}):
                sink.remove(subject_id)
        return count

    def _is_newer(self, db, subject_id: str, seq: int) -> bool:
        row = db.execute("SELECT updated_seq FROM subjects WHERE subject_id = ?", [subject_id]).fetchone()
        if row is not None and seq <= row[0]:
            log.debug("ignored stale watchlist change for %s at seq %d (stored seq %d)", subject_id, seq, row[0])
            return False
        return True

    def _raise_sequence(self, db, seq: int) -> None:
        db.execute("UPDATE meta SET value = CAST(MAX(CAST(value AS INTEGER), ?) AS TEXT) WHERE key = 'sequence'", [seq])

    @staticmethod
    def _delete_subject_rows(db, subject_id: str) -> None:
        for table in ("templates", "scopes", "subjects"):
            db.execute(f"DELETE FROM {table} WHERE subject_id = ?", [subject_id])

    def _insert_subject(self, db, subject: Subject, rows: list[tuple[str, int, np.ndarray]], seq: int) -> None:
        batch = _InsertBatch()
        batch.add(subject, rows, seq)
        batch.flush(db, self._seal)

    def _seal(self, raw: bytes, subject_id: str, model_id: str) -> bytes:
        return self._cipher.seal(raw, subject_id, model_id) if self._cipher else raw

    def _check_key_for_write(self, db, subject_id: str) -> None:
        stored = self._meta(db, "template_key")
        if stored == self._key_id:
            return
        if db.execute("SELECT 1 FROM templates LIMIT 1").fetchone() is None:
            self._set_meta(db, "template_key", self._key_id)  # nothing sealed yet: adopt this key
            return
        raise TemplateKeyError(f"cannot store subject {subject_id!r}: {self.path} holds templates sealed with "
                               f"key {stored!r} but this store has {self._key_id!r}; load a fresh snapshot to re-key")

    def _check_dims(self, db, rows: list[tuple[str, int, np.ndarray]], exclude_subject: str) -> None:
        for model_id in {m for m, _, _ in rows}:
            stored = db.execute("SELECT dim FROM templates WHERE model_id = ? AND subject_id != ? LIMIT 1",
                                [model_id, exclude_subject]).fetchone()
            for m, _, vector in rows:
                if m == model_id and stored is not None and vector.size != stored[0]:
                    raise ValueError(f"subject {exclude_subject!r}: {vector.size}-d {model_id} template, but stored "
                                     f"{model_id} templates are {stored[0]}-d")

    def _notify_upsert(self, subject_id: str, templates: Sequence[Template]) -> None:
        if not self._listener:
            return
        mine = [t.vector for t in templates if t.model_id == self._listener.model_id]
        if mine:
            self._listener.sink.add(subject_id, np.stack(mine).astype(np.float32))
        else:
            self._listener.sink.remove(subject_id)

    # ---- reads -----------------------------------------------------------------------------

    def get(self, subject_id: str, *, with_templates: bool = True) -> SubjectEntry | None:
        with self._file.snapshot() as db:
            row = db.execute("SELECT subject_id, list_type, valid_from, valid_until, updated_seq, revoked "
                             "FROM subjects WHERE subject_id = ?", [subject_id]).fetchone()
            if row is None:
                return None
            scopes = [r[0] for r in db.execute("SELECT scope FROM scopes WHERE subject_id = ?", [subject_id])]
            templates: tuple[Template, ...] = ()
            if with_templates:
                self._check_key_for_read(db)
                templates = tuple(
                    Template(vector=self._vector(blob, subject_id, model_id, dim), model_id=model_id)
                    for model_id, dim, blob in db.execute(
                        "SELECT model_id, dim, vector FROM templates WHERE subject_id = ? ORDER BY model_id, idx",
                        [subject_id]))
        return SubjectEntry(subject=_subject(row, scopes), updated_seq=row[4], revoked=bool(row[5]),
                            templates=templates)

    def is_valid(self, subject_id: str, now: datetime) -> bool:
        """Known, not revoked, and inside its validity window at `now` (local clock)."""
        entry = self.get(subject_id, with_templates=False)
        return entry is not None and not entry.revoked and entry.subject.is_valid(now)

    def iter_active(self, now: datetime, model_id: str) -> Iterator[ActiveSubject]:
        """Subjects to load into a matcher for `model_id` at start-up: not revoked, window not
        closed at `now` (a window that opens later is included: the decision checks
        is_valid). Templates of other models are skipped and counted in the log."""
        db = self._file.reader()
        cutoff = utc_iso(now)
        foreign = db.execute(
            "SELECT t.model_id, COUNT(*) FROM templates t JOIN subjects s USING (subject_id) "
            "WHERE s.revoked = 0 AND (s.valid_until IS NULL OR s.valid_until > ?) AND t.model_id != ? "
            "GROUP BY t.model_id", [cutoff, model_id]).fetchall()
        for other, n in foreign:
            log.warning("skipped %d watchlist templates of model %s (matcher uses %s)", n, other, model_id)
        without = db.execute(
            "SELECT COUNT(*) FROM subjects s WHERE s.revoked = 0 AND (s.valid_until IS NULL OR s.valid_until > ?) "
            "AND NOT EXISTS (SELECT 1 FROM templates t WHERE t.subject_id = s.subject_id AND t.model_id = ?)",
            [cutoff, model_id]).fetchone()[0]
        if without:
            log.warning("%d active watchlist subjects have no %s template and cannot match", without, model_id)
        yield from self._iter_with_templates(model_id, now)

    def _iter_with_templates(self, model_id: str, now: datetime | None) -> Iterator[ActiveSubject]:
        db = self._file.reader()
        self._check_key_for_read(db)
        window = "AND (s.valid_until IS NULL OR s.valid_until > :now)" if now is not None else ""
        cursor = db.execute(
            "SELECT s.subject_id, s.list_type, t.dim, t.vector FROM subjects s "
            "JOIN templates t ON t.subject_id = s.subject_id AND t.model_id = :model "
            f"WHERE s.revoked = 0 {window} ORDER BY s.subject_id, t.idx",
            {"model": model_id, "now": utc_iso(now) if now is not None else None})
        current: tuple[str, str] | None = None
        vectors: list[np.ndarray] = []
        for subject_id, list_type, dim, blob in cursor:
            if current and current[0] != subject_id:
                yield ActiveSubject(current[0], current[1], np.stack(vectors))
                vectors = []
            current = (subject_id, list_type)
            vectors.append(self._vector(blob, subject_id, model_id, dim))
        if current:
            yield ActiveSubject(current[0], current[1], np.stack(vectors))

    def _check_key_for_read(self, db) -> None:
        stored = self._meta(db, "template_key")
        if stored != self._key_id:
            if stored == PLAINTEXT_KEY_ID:
                why = "they are stored in plaintext but this store was given a key"
            elif self._cipher is None:
                why = f"they are sealed with key {stored} and no key was given"
            else:
                why = f"they are sealed with key {stored}, not with the given key {self._key_id}"
            raise TemplateKeyError(f"cannot read templates from {self.path}: {why}")

    def _vector(self, blob: bytes, subject_id: str, model_id: str, dim: int) -> np.ndarray:
        raw = self._cipher.open(blob, subject_id, model_id) if self._cipher else blob
        if len(raw) != 4 * dim:
            raise ValueError(f"template of subject {subject_id!r} ({model_id}) holds {len(raw)} bytes, "
                             f"expected {4 * dim}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)

    def stats(self, now: datetime, expiring_within: timedelta = timedelta(days=1)) -> WatchlistStats:
        now_s, soon_s = utc_iso(now), utc_iso(now + expiring_within)
        with self._file.snapshot() as db:
            active = "revoked = 0 AND (valid_until IS NULL OR valid_until > :now)"
            p = {"now": now_s, "soon": soon_s}
            by_type = dict(db.execute(f"SELECT list_type, COUNT(*) FROM subjects WHERE {active} GROUP BY list_type",
                                      p).fetchall())
            by_scope = dict(db.execute(
                "SELECT scope, COUNT(*) FROM scopes WHERE subject_id IN "
                f"(SELECT subject_id FROM subjects WHERE {active}) "
                "GROUP BY scope", p).fetchall())

            def count(where: str) -> int:
                return db.execute(f"SELECT COUNT(*) FROM subjects WHERE {where}", p).fetchone()[0]

            return WatchlistStats(
                active_by_list_type={t: by_type.get(t, 0) for t in LIST_TYPES},
                active_by_scope=by_scope,
                active_unscoped=count(f"{active} AND subject_id NOT IN (SELECT subject_id FROM scopes)"),
                not_yet_valid=count(f"{active} AND valid_from > :now"),
                expiring_soon=count(f"{active} AND valid_until <= :soon"),
                expired_unpurged=count("revoked = 0 AND valid_until <= :now"),
                revoked=count("revoked = 1"),
                templates_by_model=dict(db.execute(
                    "SELECT model_id, COUNT(*) FROM templates GROUP BY model_id").fetchall()),
                sequence=int(self._meta(db, "sequence") or 0),
                model_id=self._meta(db, "model_id"),
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "WatchlistStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_seq(seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"a CHP sequence is an int >= 0, got {seq!r}")


def _check_subject(subject: Subject) -> None:
    if not isinstance(subject, Subject):
        raise TypeError(f"expected a gate.watchlist.Subject, got {type(subject).__name__}")


def _template_rows(subject_id: str, templates: Sequence[Template]) -> list[tuple[str, int, np.ndarray]]:
    """Validate templates and number them per model: (model_id, idx, little-endian float32 vector)."""
    rows = _numbered_rows(subject_id, templates)
    _check_unit_rows([(subject_id, rows)])
    return rows


def _numbered_rows(subject_id: str, templates: Sequence[Template]) -> list[tuple[str, int, np.ndarray]]:
    """Types, shapes and one size per model, checked row by row; the numeric checks are left to
    `_check_unit_rows`, which does them for a whole batch of subjects in one pass (a 100k-subject
    snapshot spent a fifth of its store time on per-template norm and finiteness calls)."""
    rows = []
    per_model: Counter[str] = Counter()
    dims: dict[str, int] = {}
    for i, template in enumerate(templates):
        if not isinstance(template, Template):
            raise TypeError(f"subject {subject_id!r}: template {i} is a {type(template).__name__}, "
                            "not a vision.types.Template")
        if not template.model_id:
            raise ValueError(f"subject {subject_id!r}: template {i} has no model id")
        vector = np.asarray(template.vector)
        if vector.ndim != 1 or vector.size == 0:
            raise ValueError(f"subject {subject_id!r}: template {i} has shape {vector.shape}, expected (D,)")
        if vector.dtype != _LE_F4:
            vector = vector.astype(_LE_F4)
        model_id = template.model_id
        if dims.setdefault(model_id, vector.size) != vector.size:
            raise ValueError(f"subject {subject_id!r}: {model_id} templates of different sizes "
                             f"({dims[model_id]} and {vector.size})")
        rows.append((model_id, per_model[model_id], vector))
        per_model[model_id] += 1
    return rows


_LE_F4 = np.dtype("<f4")


def _check_unit_rows(batch: Sequence[tuple[str, list[tuple[str, int, np.ndarray]]]]) -> None:
    """Every vector finite and of unit norm, checked per vector size in one matrix pass; on a
    failure the first offending template is named as the row-by-row check would."""
    by_size: dict[int, list[np.ndarray]] = {}
    for _, rows in batch:
        for _, _, vector in rows:
            by_size.setdefault(vector.size, []).append(vector)
    for vectors in by_size.values():
        m = np.stack(vectors)
        squared = np.einsum("ij,ij->i", m, m)  # a NaN or infinity fails the comparison below
        if (np.abs(squared - 1.0) <= 2 * UNIT_NORM_TOLERANCE).all():
            continue
        for subject_id, rows in batch:
            for i, (_, _, vector) in enumerate(rows):
                if not np.all(np.isfinite(vector)):
                    raise ValueError(f"subject {subject_id!r}: template {i} holds non-finite values")
                norm = float(np.linalg.norm(vector))
                if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
                    raise ValueError(f"subject {subject_id!r}: template {i} has norm {norm:.4f}; "
                                     "templates must be L2-normalised")


def _subject(row: tuple, scopes: list[str]) -> Subject:
    subject_id, list_type, valid_from, valid_until = row[:4]
    return Subject(subject_id=subject_id, list_type=list_type,
                   valid_from=parse_utc_iso(valid_from) if valid_from else None,
                   valid_until=parse_utc_iso(valid_until) if valid_until else None,
                   scopes=frozenset(scopes))
