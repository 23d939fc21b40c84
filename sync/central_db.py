"""The central's storage: one small protocol, two engines.

`CentralDatabase` is what `Central`, `Hashmap`, `AuditStore` and the server's threads use. It is
deliberately SQL-shaped (execute, transactions of three kinds, a streaming read, a change
notification, a maintenance lock) rather than a repository of domain methods, so the SQL of the
central is written once and runs on both engines; the few places where the dialects differ are
methods here (`group_concat`, `contains`).

- SQLite (`sync.central_sqlite`): the embedded default, one process on one file (demo, a single
  small site). Unchanged on the wire and on disk from the first release.
- PostgreSQL (`sync.central_pg`, psycopg 3 + psycopg_pool): a fleet's system of record, several
  `gate-central` nodes on one database, streaming replication and failover from PostgreSQL's
  own tooling.

`open_central_db(database)` picks the engine from the setting: a `postgresql://` or
`postgres://` URL (libpq multi-host strings allowed) or a libpq keyword string
(`host=... dbname=...`) is PostgreSQL, anything else is a SQLite file path.

The three transaction kinds, and why each exists:
- `write_transaction()` serialises every writer of the change log (SQLite: BEGIN IMMEDIATE;
  PostgreSQL: a transaction-scoped advisory lock taken first). Sequence numbers are therefore
  handed out in commit order on every node, so a publisher tailing "seq > published" never
  skips a change that commits late.
- `audit_transaction(gate_id)` serialises ingest per gate only, so 200 gates upload in parallel
  while the same (gate, seq) arriving at two nodes is still stored once.
- `read_snapshot()` is one consistent view for a snapshot stream.
"""
from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

_KEYWORD_DSN = re.compile(r"^\s*(host|hostaddr|dbname|user|port|service)\s*=", re.IGNORECASE)
# Bound parameters one statement may carry on both engines, with room to spare: SQLite takes
# 32766 since 3.32 (this machine's is 3.40), PostgreSQL's protocol 65535. A set query over a
# whole fleet (scope heads of every gate's scopes) stays one statement up to this many values.
MAX_PARAMS = 10_000


class StorageError(Exception):
    """The central's database refused or failed a statement; the request it served is retried
    by its sender (a gate's Lazy Pirate client, the next publisher poll), never lost."""


class StorageUnavailable(StorageError):
    """The connection to the database is gone (server down, failover in progress); the next
    call reconnects."""


class SchemaMissing(StorageError):
    """The database has no central schema, or an older one: run `gate-central migrate`."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class CentralDatabase(Protocol):
    dialect: str  # "sqlite" | "postgresql"
    description: str  # for logs and `gate-ops`: no password

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with `?` placeholders."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Many rows into one table inside the caller's transaction (PostgreSQL: COPY)."""
        ...

    def stream(self, sql: str, params: Sequence[Any] = (), batch: int = 2000) -> Iterator[tuple]:
        """Rows of a query read in batches, so memory stays flat in the number of rows (a
        100k-subject snapshot, a year of audit). Must run inside a transaction on PostgreSQL."""
        ...

    def write_transaction(self) -> AbstractContextManager[None]: ...

    def audit_transaction(self, gate_id: str) -> AbstractContextManager[None]: ...

    def read_snapshot(self) -> AbstractContextManager[None]: ...

    def group_transaction(self) -> AbstractContextManager[None]:
        """Several requests' transactions committed as one (group commit): the ones opened
        inside take their locks and commit with it. Used by the service thread for a burst of
        audit batches, so a burst costs one disk flush instead of one per batch."""
        ...

    def notify_change(self, seq: int) -> None:
        """Inside a write transaction: tell other nodes' publishers at commit (PostgreSQL
        NOTIFY); nothing on SQLite, whose one process wakes its publisher in memory."""
        ...

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` for a change notification; True if one came. Publishers also
        poll by sequence, so a missed notification delays an update, never loses it."""
        ...

    def try_maintenance_lock(self) -> bool:
        """True while this connection is the one node allowed to run validity expiry and log
        retention (PostgreSQL session advisory lock; always True on SQLite's single node)."""
        ...

    def group_concat(self, expr: str) -> str: ...

    def contains(self, column: str) -> str:
        """SQL that is true when `column` contains the next `?` parameter as a substring."""
        ...

    def files(self) -> list[Path]:
        """Raw files that may hold the central's data, for byte-level forgetting checks;
        empty where the engine's files are not ours to read (PostgreSQL)."""
        ...

    def after_forget(self) -> None:
        """Make deleted rows leave the engine's files as far as it allows."""
        ...

    def after_bulk_load(self, rows_by_table: dict[str, int]) -> None:
        """After a committed bulk load (rows added per table): refresh the planner's
        statistics where the load changed them a lot, so the next statements are planned for
        the tables as they now are (PostgreSQL ANALYZE; nothing on SQLite)."""
        ...

    def close(self) -> None: ...


def is_postgres(database: str | Path) -> bool:
    text = str(database)
    return text.startswith(("postgresql://", "postgres://")) or bool(_KEYWORD_DSN.match(text))


def open_central_db(database: str | Path, create: bool = True, pool_size: int | None = None) -> CentralDatabase:
    """Open the central's database for the calling thread.

    SQLite files are created with the schema on first open (the embedded default needs no set-up
    step). PostgreSQL is created and upgraded only by `gate-central migrate`; opening a
    database without the current schema raises SchemaMissing, so a node never runs against a
    half-made or older schema. `create=False` skips the check (used by migrate itself).
    """
    if is_postgres(database):
        from sync.central_pg import POOL_SIZE, PostgresDatabase

        return PostgresDatabase(str(database), check_schema=create, pool_size=pool_size or POOL_SIZE)
    from sync.central_sqlite import SqliteDatabase

    return SqliteDatabase(Path(database))


def redact_dsn(database: str | Path) -> str:
    """A connection string fit for a log line: any password removed."""
    text = str(database)
    text = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", text)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)
