"""The central on PostgreSQL (psycopg 3, psycopg_pool): several nodes on one database.

Why PostgreSQL for a fleet: streaming replication with synchronous standbys (an acknowledged
audit record is on two machines), declarative partitioning (a national audit log dropped a
month at a time), LISTEN/NOTIFY (every node's publisher learns of a change at commit), advisory
locks (one node runs expiry), and the operational tooling every ops team already knows
(pg_basebackup, Patroni, pg_dump, monitoring).

Design rules (docs/protocol.md, "Several central nodes"):
- The CHP sequence is the change log's id, handed out under a transaction-scoped advisory lock,
  so it is global and in commit order: every node publishes the same number for the same change.
- Audit ingest takes a per-gate advisory lock, then checks and inserts, so the same (gate, seq)
  arriving at two nodes is stored once.
- Text keys use the "C" collation: the subtree range scans (`key >= '/lane/A/' AND key <
  '/lane/A0'`) rely on byte order, whatever the database's locale.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from sync.central_db import SchemaMissing, StorageError, StorageUnavailable, redact_dsn

log = logging.getLogger(__name__)

CHANNEL = "edgegate_changes"
_CHANGE_LOCK = 0x6567_0001  # serialises change-log writers (the sequence)
_MAINTENANCE_LOCK = 0x6567_0002  # one node runs expiry, log retention, partition upkeep
POOL_SIZE = 20  # a node uses ~5 (snapshot, publisher, service, ZAP, CLI); headroom for bursts
# How long a thread waits for a pool connection before its request fails with StorageUnavailable
# (and its sender retries). Short, because during a failover the callers' own retries are what
# find the promoted primary: a thread parked here for 30 s kept a node deaf for 30 s.
POOL_WAIT_S = 2.0

# A bulk load that adds this fraction of a table's rows since its last analysis refreshes the
# planner's statistics (autovacuum_analyze_scale_factor's default).
ANALYZE_AFTER_GROWTH = 0.1
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")

# Version 1: the schema of the SQLite central, engine-native types, audit partitioned by month.
# Version 2: gate_health.node (the node a gate reports through).
# Version 3: audit chain epochs (sync.audit_chain.ChainEpoch): audit.epoch in the key, audit_epochs,
# audit_alarms; erasures (sync.forget.erase_subject).
# Version 4: subjects.display_name (as the person writes it, for staff; never published to gates).
# Version 5: gate_assignments (the flights a boarding gate follows).
# Version 6: the operations console's tables (console.store): ops_accounts, ops_sessions, ops_audit, ops_acks.
# Version 7: kv_log (scope, seq), for a gate's catch-up and the fleet's changes behind (one scope's
# changes after a sequence): 184 -> 3.1 ms on a 1M-row log of 1,000 scopes (it was a parallel
# seq scan of the log). The log holds `log_retention_s` of changes, so the index is built in seconds.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        "CREATE TABLE IF NOT EXISTS meta (name text PRIMARY KEY, value bigint NOT NULL)",
        'CREATE TABLE kv (key text COLLATE "C" PRIMARY KEY, scope text COLLATE "C" NOT NULL, '
        "subject_id text NOT NULL, seq bigint NOT NULL, uuid bytea, body bytea NOT NULL, expires_at double precision)",
        "CREATE INDEX kv_scope ON kv (scope)",
        "CREATE INDEX kv_subject ON kv (subject_id)",
        'CREATE TABLE kv_log (seq bigint PRIMARY KEY, key text COLLATE "C" NOT NULL, scope text COLLATE "C" NOT NULL, '
        "uuid bytea, props text NOT NULL, body bytea NOT NULL, logged_at double precision NOT NULL)",
        "CREATE INDEX kv_log_uuid ON kv_log (uuid)",
        'CREATE TABLE scope_heads (scope text COLLATE "C" PRIMARY KEY, seq bigint NOT NULL)',
        "CREATE TABLE subjects (subject_id text PRIMARY KEY, list_type text NOT NULL, model_id text NOT NULL, "
        "dim integer NOT NULL, n_templates integer NOT NULL, valid_from double precision, "
        "valid_until double precision, status text NOT NULL, reason text, created_at double precision NOT NULL, "
        "updated_at double precision NOT NULL)",
        "CREATE INDEX subjects_status_valid ON subjects (status, valid_until)",
        "CREATE INDEX subjects_model ON subjects (model_id)",
        'CREATE TABLE scope_models (scope text COLLATE "C" PRIMARY KEY, model_id text NOT NULL)',
        "CREATE TABLE templates (subject_id text NOT NULL, idx integer NOT NULL, model_id text NOT NULL, "
        "vector bytea NOT NULL, PRIMARY KEY (subject_id, idx))",
        "CREATE TABLE principals (name text PRIMARY KEY, kind text NOT NULL, ident text NOT NULL, "
        "public_key text NOT NULL UNIQUE, scopes text NOT NULL, created_at double precision NOT NULL)",
        "CREATE TABLE gate_health (gate_id text PRIMARY KEY, last_seen double precision NOT NULL, status text, "
        "software_version text, model_versions text, watchlist_seq bigint, queue_depth bigint, "
        "last_decision_at text, report text, silent integer NOT NULL)",
        # The partition key is the record's own ISO-8601 UTC timestamp (text in "C" order sorts
        # as time); it must be in the primary key, and the per-gate ingest lock keeps (gate, seq)
        # unique across partitions. The default partition takes a gate whose clock is far off,
        # so no record is ever refused for its date.
        'CREATE TABLE audit (gate_id text NOT NULL, seq bigint NOT NULL, ts text COLLATE "C" NOT NULL, '
        "prev_hash text NOT NULL, hash text NOT NULL, body text NOT NULL, received_at double precision NOT NULL, "
        "PRIMARY KEY (gate_id, seq, ts)) PARTITION BY RANGE (ts)",
        "CREATE TABLE audit_default PARTITION OF audit DEFAULT",
        "CREATE INDEX audit_gate_ts ON audit (gate_id, ts)",
        "INSERT INTO meta (name, value) VALUES ('seq', 0) ON CONFLICT DO NOTHING",
    ]),
    (2, ["ALTER TABLE gate_health ADD COLUMN IF NOT EXISTS node text"]),
    (3, [
        "ALTER TABLE audit ADD COLUMN IF NOT EXISTS epoch text NOT NULL DEFAULT ''",
        "ALTER TABLE audit DROP CONSTRAINT IF EXISTS audit_pkey",
        "ALTER TABLE audit ADD PRIMARY KEY (gate_id, epoch, seq, ts)",
        "CREATE TABLE audit_epochs (gate_id text NOT NULL, epoch text NOT NULL, parent text NOT NULL, "
        "base_seq bigint NOT NULL, base_hash text NOT NULL, public_key text NOT NULL, created text NOT NULL, "
        "nonce text NOT NULL, vouched integer NOT NULL, registered_at double precision NOT NULL, "
        "PRIMARY KEY (gate_id, epoch))",
        "CREATE TABLE audit_alarms (gate_id text NOT NULL, epoch text NOT NULL, kind text NOT NULL, "
        "seq bigint NOT NULL, detail text NOT NULL, detected_at double precision NOT NULL, resolved_by text, "
        "PRIMARY KEY (gate_id, epoch, kind, seq))",
        "CREATE TABLE erasures (subject_sha256 text NOT NULL, operator text NOT NULL, reason text NOT NULL, "
        "erased_at double precision NOT NULL, templates integer NOT NULL, log_entries integer NOT NULL, "
        "PRIMARY KEY (subject_sha256, erased_at))",
    ]),
    (4, ["ALTER TABLE subjects ADD COLUMN IF NOT EXISTS display_name text"]),
    (5, ['CREATE TABLE gate_assignments (gate_id text NOT NULL, scope text COLLATE "C" NOT NULL, '
         "assigned_at double precision NOT NULL, PRIMARY KEY (gate_id, scope))"]),
    (6, [
        # Per-person console accounts: argon2id hashes only, never a password.
        "CREATE TABLE ops_accounts (username text PRIMARY KEY, role text NOT NULL, password_hash text NOT NULL, "
        "created_at double precision NOT NULL, created_by text NOT NULL, updated_at double precision NOT NULL, "
        "disabled integer NOT NULL DEFAULT 0, failed_logins integer NOT NULL DEFAULT 0, "
        "locked_until double precision)",
        # Sessions by the sha256 of their cookie (a stolen table gives no usable cookie).
        "CREATE TABLE ops_sessions (token_sha256 text PRIMARY KEY, username text NOT NULL, csrf text NOT NULL, "
        "created_at double precision NOT NULL, last_seen double precision NOT NULL, client text NOT NULL)",
        "CREATE INDEX ops_sessions_user ON ops_sessions (username)",
        # The ops audit log: logins, searches, exports, acknowledgements, account changes; hash-chained
        # like a gate's audit log (sync.audit_chain.record_hash).
        "CREATE TABLE ops_audit (seq bigint PRIMARY KEY, ts text NOT NULL, prev_hash text NOT NULL, "
        "hash text NOT NULL, body text NOT NULL)",
        # A supervisor's acknowledgement of an alarm, with a note: recorded, never sent to a gate.
        "CREATE TABLE ops_acks (gate_id text NOT NULL, alarm text NOT NULL, username text NOT NULL, "
        "note text NOT NULL, acked_at double precision NOT NULL, PRIMARY KEY (gate_id, alarm))",
    ]),
    (7, ["CREATE INDEX IF NOT EXISTS kv_log_scope_seq ON kv_log (scope, seq)"]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()


class _ConnectFailures(logging.Filter):
    """psycopg_pool logs every failed connection attempt as two WARNINGs, and with attempts
    not backed off (see pool_for) that is about eight lines a second per waiting thread while
    the database is away: an admin command against a stopped server printed 40 lines before its
    error. The callers already report an outage once per request or retry, so these records are
    kept here instead of printed, and the last one per pool is the cause StorageUnavailable
    names ("connection refused", "password authentication failed", ...)."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, tuple[float, str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "error connecting in %r: %s" and isinstance(record.args, tuple) and len(record.args) == 2:
            name, error = record.args
            text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
            self._last[str(name)] = (time.monotonic(), text)
            return False
        return record.msg != "reconnection attempt in pool %r failed after %s sec"

    def since(self, pool: str, t: float) -> str | None:
        """The pool's last connection error if it happened at or after `t` (a wait that ran
        out because every connection was busy must not blame an outage of an hour ago)."""
        at, text = self._last.get(pool, (0.0, ""))
        return text if text and at >= t else None


_connect_failures = _ConnectFailures()
logging.getLogger("psycopg.pool").addFilter(_connect_failures)


def _with_timeout(conninfo: str) -> str:
    """A dead primary must cost seconds, not the kernel's TCP timeout."""
    if "connect_timeout" in conninfo:
        return conninfo
    if "://" in conninfo:
        return conninfo + ("&" if "?" in conninfo else "?") + "connect_timeout=5"
    return conninfo + " connect_timeout=5"


def pool_for(conninfo: str, size: int = POOL_SIZE) -> ConnectionPool:
    """One pool per process and database; every `Central` in the process borrows from it."""
    with _pools_lock:
        pool = _pools.get(conninfo)
        if pool is None:
            # reconnect_timeout=0: a failed connection attempt is given up at once instead of
            # being retried on the pool's own exponential backoff (1, 2, 4, 8 s...), which after
            # a primary's death put up to that long between the standby's promotion and the
            # node's next attempt (measured 1.5 s after a 0.13 s promotion). Every caller
            # retries by itself (gates' Lazy Pirate, the publisher's poll, thread start-up), and
            # each retry asks the pool for a fresh connection through the multi-host string.
            pool = ConnectionPool(_with_timeout(conninfo), min_size=0, max_size=max(1, size),
                                  kwargs={"autocommit": True}, check=ConnectionPool.check_connection,
                                  open=True, name=f"edgegate-central-{len(_pools) + 1}", timeout=POOL_WAIT_S,
                                  reconnect_timeout=0.0)
            _pools[conninfo] = pool
        return pool


def close_pool(conninfo: str) -> None:
    with _pools_lock:
        pool = _pools.pop(conninfo, None)
    if pool is not None:
        pool.close()


def close_pools() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


@lru_cache(maxsize=1024)
def _translate(sql: str) -> str:
    # The central's SQL uses qmark placeholders and no literal '?' or '%'.
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase:
    """A connection borrowed from the process pool, held by one thread until close()."""

    dialect = "postgresql"

    def __init__(self, conninfo: str, check_schema: bool = True, pool_size: int = POOL_SIZE):
        self.conninfo = conninfo
        self.description = redact_dsn(conninfo)
        self._pool = pool_for(conninfo, pool_size)
        self._conn: psycopg.Connection | None = None
        self._listen: psycopg.Connection | None = None
        self._maintenance_held = False
        # How long a call may wait for a connection; the publisher lowers it below its
        # heartbeat interval, so HUGZ keep flowing while the database is away.
        self.connect_wait_s = POOL_WAIT_S
        self._depth = 0
        if check_schema:
            version = self.schema_version()
            if version is None:
                raise SchemaMissing(f"{self.description} has no edgegate central schema: "
                                    "run `gate-central migrate` first")
            if version < SCHEMA_VERSION:
                raise SchemaMissing(f"{self.description} has central schema {version}, this release needs "
                                    f"{SCHEMA_VERSION}: run `gate-central migrate`")

    # ----- connection --------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            # Asked in short slices: each ask lets the pool try a new connection (it gives a
            # failed attempt up at once, see pool_for), so a thread waiting through a failover
            # finds the promoted primary within ~0.25 s of it accepting writes.
            started = time.monotonic()
            deadline = started + self.connect_wait_s
            while True:
                try:
                    self._conn = self._pool.getconn(timeout=min(0.25, self.connect_wait_s))
                    break
                except PoolTimeout as exc:
                    if time.monotonic() >= deadline:
                        why = _connect_failures.since(self._pool.name, started) or str(exc)
                        raise StorageUnavailable(f"{self.description}: {why}") from exc
                except Exception as exc:  # OperationalError, a closed pool
                    raise StorageUnavailable(f"{self.description}: {exc}") from exc
            self._maintenance_held = False
        return self._conn

    def _lost(self) -> None:
        conn, self._conn = self._conn, None
        self._maintenance_held = False
        if conn is not None:
            try:
                conn.close()
            finally:
                self._pool.putconn(conn)  # a closed connection is discarded by the pool

    def _run(self, fn):
        conn = self._connection()
        try:
            return fn(conn)
        except psycopg.OperationalError as exc:
            if conn.closed or conn.broken:
                self._lost()
                raise StorageUnavailable(f"{self.description}: {exc}") from exc
            raise StorageError(str(exc)) from exc
        except psycopg.Error as exc:
            raise StorageError(str(exc)) from exc

    def execute(self, sql: str, params: Sequence[Any] = ()):
        return self._run(lambda conn: conn.execute(_translate(sql), tuple(params)))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = [tuple(r) for r in rows]
        if not rows:
            return

        def run(conn):
            with conn.cursor() as cur:
                cur.executemany(_translate(sql), rows)
        self._run(run)

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """COPY: roughly an order of magnitude faster than executemany for a bulk import."""
        def run(conn):
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        self._run(run)

    def stream(self, sql: str, params: Sequence[Any] = (), batch: int = 2000) -> Iterator[tuple]:
        """A server-side cursor: the result stays in the server until read, `batch` rows at a time."""
        conn = self._connection()
        try:
            with conn.cursor(name=f"edgegate_stream_{id(self)}") as cur:
                cur.itersize = batch
                cur.execute(_translate(sql), tuple(params))
                yield from cur
        except psycopg.OperationalError as exc:
            if conn.closed or conn.broken:
                self._lost()
                raise StorageUnavailable(f"{self.description}: {exc}") from exc
            raise StorageError(str(exc)) from exc
        except psycopg.Error as exc:
            raise StorageError(str(exc)) from exc

    # ----- transactions ------------------------------------------------------------------

    @contextmanager
    def _transaction(self, begin: str, lock_sql: str | None = None, lock_args: Sequence[Any] = ()) -> Iterator[None]:
        if self._depth:  # inside group_transaction(): take this transaction's lock, commit with the group
            if lock_sql:
                self.execute(lock_sql, lock_args)
            yield
            return
        self.execute(begin)
        self._depth += 1
        try:
            if lock_sql:
                self.execute(lock_sql, lock_args)
            yield
        except BaseException:
            self._depth -= 1
            conn = self._conn
            if conn is not None and not conn.closed:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    self._lost()
            raise
        self._depth -= 1
        self.execute("COMMIT")

    def group_transaction(self):
        """One transaction (one commit, one WAL flush) around several requests' own
        transactions; their advisory locks are held to its end."""
        return self._transaction("BEGIN")

    def write_transaction(self):
        return self._transaction("BEGIN", "SELECT pg_advisory_xact_lock(?)", (_CHANGE_LOCK,))

    def audit_transaction(self, gate_id: str):
        return self._transaction("BEGIN", "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                                 (f"audit:{gate_id}",))

    def read_snapshot(self):
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    # ----- notifications and the maintenance lock ----------------------------------------

    def notify_change(self, seq: int) -> None:
        self.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(seq)))

    def wait_for_change(self, timeout: float) -> bool:
        # The listening connection comes from the pool, whose workers make new connections:
        # after the primary's death the caller (the publisher, which must keep sending HUGZ)
        # waits at most `timeout` for one, never a libpq connect to a dead host.
        try:
            if self._listen is None or self._listen.closed:
                try:
                    conn = self._pool.getconn(timeout=max(0.01, timeout))
                except Exception:  # PoolTimeout, a closed pool: no listener yet, poll by sequence
                    return False
                self._listen = conn
                conn.execute(f"LISTEN {CHANNEL}")
                log.info("change listener connected")
            for _ in self._listen.notifies(timeout=max(0.001, timeout), stop_after=1):
                return True
            return False
        except psycopg.Error as exc:
            log.warning("change listener lost (%s); polling by sequence until it is back",
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._drop_listener()
            # Wait here as the notification would have, so the caller keeps its pace.
            time.sleep(min(max(0.0, timeout), 0.2))
            return False

    def _drop_listener(self) -> None:
        conn, self._listen = self._listen, None
        if conn is not None:
            conn.close()  # discarded, never handed on still listening
            self._pool.putconn(conn)

    def try_maintenance_lock(self) -> bool:
        if not self._maintenance_held:
            row = self.execute("SELECT pg_try_advisory_lock(?)", (_MAINTENANCE_LOCK,)).fetchone()
            self._maintenance_held = bool(row[0])
        return self._maintenance_held

    # ----- dialect -----------------------------------------------------------------------

    def group_concat(self, expr: str) -> str:
        return f"string_agg({expr}, ' ')"

    def contains(self, column: str) -> str:
        return f"strpos({column}, ?) > 0"

    def files(self) -> list[Path]:
        return []

    def after_forget(self) -> None:
        pass  # autovacuum reclaims dead tuples; docs/security.md states what that means at rest

    def after_bulk_load(self, rows_by_table: dict[str, int]) -> None:
        """ANALYZE each table that was never analysed or grew by at least ANALYZE_AFTER_GROWTH
        of its size at the last analysis (autovacuum's own default rule, applied at once rather
        than at its next round, which a load of a minute can outrun). Why: on a never-analysed
        1M-subject table the enrolment's model check (`model_id = ? AND status = 'active' ...
        LIMIT 1`) was planned as a BitmapAnd of two indexes over every row, 68 ms, instead of a
        scan that stops at the first row, 0.01 ms; `gate-bench central` measured update latency
        82 ms median after its bulk import, 11 ms once the tables were analysed. The PostgreSQL
        manual gives the same advice for any bulk load ("Populating a Database": run ANALYZE
        afterwards)."""
        for table, rows in rows_by_table.items():
            if not _IDENTIFIER.fullmatch(table):
                raise ValueError(f"not a table name: {table!r}")
            row = self.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(?)", (table,)).fetchone()
            if row is None or row[0] is None:
                continue
            if row[0] <= 0 or rows >= ANALYZE_AFTER_GROWTH * row[0]:
                started = time.monotonic()
                self.execute(f"ANALYZE {table}")
                log.debug("analysed %s after a bulk load of %d rows in %.2fs", table, rows, time.monotonic() - started)

    # ----- schema ------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        if self.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
            return None
        row = self.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        return None if row is None else int(row[0])

    def __del__(self) -> None:
        # A `Central` dropped without close() (a one-shot CLI call) must not keep a pool slot.
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        self._drop_listener()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if self._maintenance_held and not conn.closed:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_MAINTENANCE_LOCK,))
                except psycopg.Error:
                    pass
            self._maintenance_held = False
            self._pool.putconn(conn)


def migrate(db: PostgresDatabase) -> tuple[int, int]:
    """Create or upgrade the schema in one transaction per version; returns (from, to).
    Safe to run from several nodes at once: the change lock serialises them."""
    with db.write_transaction():
        start = db.schema_version() or 0
    current = start
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        with db.write_transaction():
            if (db.schema_version() or 0) >= version:  # another node got there first
                current = version
                continue
            for sql in statements:
                db.execute(sql)
            db.execute("INSERT INTO meta (name, value) VALUES ('schema', ?) "
                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (version,))
        current = version
    ensure_audit_partitions(db, dt.datetime.now(dt.timezone.utc))
    return start, current


# ----- audit partitions ----------------------------------------------------------------------

_PARTITION_RE = re.compile(r"^audit_(\d{4})_(\d{2})$")


def _month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def _bound(day: dt.date) -> str:
    return day.strftime("%Y-%m-%dT00:00:00.000000Z")


def audit_partitions(db: PostgresDatabase) -> list[str]:
    return sorted(r[0] for r in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit'"))


def _ensure_month(db: PostgresDatabase, month: dt.date) -> bool:
    """The partition for `month`, created if missing (moving any of its rows out of the
    default partition); True if created."""
    name = f"audit_{month:%Y_%m}"
    lo, hi = _bound(month), _bound(_next_month(month))
    with db.write_transaction():
        if db.execute("SELECT 1 FROM pg_class WHERE relname = ?", (name,)).fetchone():
            return False
        moved = db.execute("SELECT COUNT(*) FROM audit_default WHERE ts >= ? AND ts < ?", (lo, hi)).fetchone()[0]
        if moved:
            db.execute("ALTER TABLE audit DETACH PARTITION audit_default")
        db.execute(f"CREATE TABLE {name} PARTITION OF audit FOR VALUES FROM ('{lo}') TO ('{hi}')")
        if moved:
            db.execute(f"INSERT INTO {name} SELECT * FROM audit_default WHERE ts >= ? AND ts < ?", (lo, hi))
            db.execute("DELETE FROM audit_default WHERE ts >= ? AND ts < ?", (lo, hi))
            db.execute("ALTER TABLE audit ATTACH PARTITION audit_default DEFAULT")
    return True


def ensure_audit_partitions(db: PostgresDatabase, now: dt.datetime, months_ahead: int = 2) -> list[str]:
    """Monthly partitions from the current month to `months_ahead` ahead, plus one for every
    plausible month (2000-2099) that has rows waiting in the default partition (a migrated
    history, a gate whose clock was off)."""
    months = []
    month = _month_start(now.date())
    for _ in range(months_ahead + 1):
        months.append(month)
        month = _next_month(month)
    for (prefix,) in db.execute("SELECT DISTINCT substr(ts, 1, 7) FROM audit_default").fetchall():
        m = re.match(r"^(20\d\d)-(0[1-9]|1[0-2])$", prefix or "")
        if m:
            months.append(dt.date(int(m.group(1)), int(m.group(2)), 1))
    return [f"audit_{m:%Y_%m}" for m in sorted(set(months)) if _ensure_month(db, m)]


def drop_audit_partitions_before(db: PostgresDatabase, cutoff: dt.datetime) -> list[str]:
    """Retention: drop every monthly partition that ends on or before `cutoff`. A whole month
    goes at once (no row-by-row DELETE, no bloat): that is why the table is partitioned."""
    dropped = []
    for name in audit_partitions(db):
        m = _PARTITION_RE.match(name)
        if not m:
            continue
        upper = _next_month(dt.date(int(m.group(1)), int(m.group(2)), 1))
        if upper <= cutoff.date():
            with db.write_transaction():
                db.execute(f"DROP TABLE {name}")
            dropped.append(name)
    if dropped:
        log.info("audit retention: dropped partition(s) %s", ", ".join(dropped))
    return dropped


def partitions_description(db: PostgresDatabase) -> list[tuple[str, int]]:
    return [(name, int(db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])) for name in audit_partitions(db)]


__all__ = ["PostgresDatabase", "migrate", "ensure_audit_partitions", "drop_audit_partitions_before",
           "SCHEMA_VERSION", "close_pools", "StorageError"]
