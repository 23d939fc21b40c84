"""What the gate hands to the sync agent. sync/ never imports gate/; the gate implements these.

All methods are called from the agent's own threads (never the caller's), so an
implementation must be safe to call from a thread other than the one that created it.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from sync.audit_chain import AuditRow, ChainEpoch
from sync.subject_record import SubjectRecord


@runtime_checkable
class WatchlistSink(Protocol):
    """The gate's local watchlist cache, keyed by hashmap key (/lane/<id>/<subject-id>).

    A subject enrolled in two of the gate's scopes arrives under two keys; the sink decides
    how its matcher folds them. `seq` is the central's sequence of the change; the sink
    persists the highest one it has been given so it survives a restart.
    """

    def apply_upsert(self, key: str, record: SubjectRecord, seq: int) -> None: ...

    def apply_delete(self, key: str, seq: int) -> None: ...

    def replace_all(self, entries: Sequence[tuple[str, SubjectRecord]], seq: int) -> None:
        """Swap the whole cache for a complete snapshot, atomically: a reader (or a crash)
        sees either the old watchlist or the new one, never a mix."""
        ...

    def stored_seq(self) -> int:
        """The sequence persisted with the cache; 0 when the gate has never synced."""
        ...


@runtime_checkable
class AuditSource(Protocol):
    """The gate's tamper-evident audit log, seen from the uploader."""

    def read_unsent(self, limit: int) -> list[AuditRow]:
        """Up to `limit` records not yet acknowledged by the central, lowest seq first."""
        ...

    def mark_acked(self, upto_seq: int) -> None:
        """Record that the central holds every record with seq <= upto_seq durably."""
        ...

    def unsent_count(self) -> int: ...

    def last_seq(self) -> int: ...

    def link_at(self, seq: int) -> str | None:
        """The hash of record `seq` (genesis for 0), or None if the log does not hold it."""
        ...

    def chain_epoch(self) -> ChainEpoch:
        """The chain the unsent records belong to (ChainEpoch() for the first)."""
        ...

    def start_epoch(self, chain: ChainEpoch) -> None:
        """Persist a new epoch for the records after chain.base_seq and lower the ack to it."""
        ...


# Returns the gate's own view for the health report: at least "status" (e.g. "ok",
# "degraded"), "software_version", "model_versions" (name -> version) and
# "last_decision_at" (ISO-8601 UTC or None). Extra keys travel as they are.
HealthProvider = Callable[[], dict[str, Any]]
