"""The watchlist store as the sync agent sees it (sync.interfaces.WatchlistSink).

The central's hashmap holds one key per (scope, subject) — /lane/L1/p-7, /flight/VN123/p-7 —
so the agent's subtree subscriptions keep other lanes' templates off the wire. The store
holds one row per subject with its scopes as tags, because the matcher and the decision work
per subject. This adapter folds keys into subjects: an upsert adds its key's scope to the
subject, a delete withdraws it, and the subject is revoked when its last scope goes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

from gate.watchlist import Subject, WatchlistStore
from sync.scopes import scope_label, split_key
from sync.subject_record import SubjectRecord
from vision.types import Template


class WatchlistSyncSink:
    def __init__(self, store: WatchlistStore) -> None:
        self._store = store

    def apply_upsert(self, key: str, record: SubjectRecord, seq: int) -> None:
        scope, subject_id = _scope_and_subject(key, record)
        self._store.upsert_subject(_subject(record, {scope}), _templates(record), seq, merge_scopes=True)

    def apply_delete(self, key: str, seq: int) -> None:
        subtree, subject_id = split_key(key)
        self._store.remove_scope(subject_id, scope_label(subtree), seq)

    def replace_all(self, entries: Sequence[tuple[str, SubjectRecord]], seq: int) -> None:
        folded: dict[str, tuple[SubjectRecord, set[str]]] = {}
        for key, record in entries:
            scope, subject_id = _scope_and_subject(key, record)
            scopes = folded[subject_id][1] if subject_id in folded else set()
            folded[subject_id] = (record, scopes | {scope})
        self._store.replace_all(((_subject(r, scopes), _templates(r)) for r, scopes in folded.values()), seq)

    def stored_seq(self) -> int:
        return self._store.sequence()


def _scope_and_subject(key: str, record: SubjectRecord) -> tuple[str, str]:
    subtree, subject_id = split_key(key)
    if record.subject_id != subject_id:
        raise ValueError(f"key {key!r} carries a record for subject {record.subject_id!r}")
    return scope_label(subtree), subject_id


def _subject(record: SubjectRecord, scopes: set[str]) -> Subject:
    return Subject(subject_id=record.subject_id, list_type=record.list_type,
                   valid_from=_utc(record.valid_from), valid_until=_utc(record.valid_until), scopes=frozenset(scopes))


def _templates(record: SubjectRecord) -> list[Template]:
    return [Template(vector=row, model_id=record.model_id) for row in record.templates]


def _utc(unix_seconds: int | None) -> datetime | None:
    return None if unix_seconds is None else datetime.fromtimestamp(unix_seconds, timezone.utc)
