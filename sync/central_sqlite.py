"""The central's SQLite file: the embedded default store (one process, one file).

Every process that touches the central (the server's threads, `gate-central revoke`,
`gate-ops audit pull`) opens its own connection to the same WAL database, so the file, not
a process, is the source of truth: an enrolment written while the server is down is
published (or served in a snapshot) once it runs.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import sqlite_utils

from sync.central_db import StorageError

SCHEMA_VERSION = 7  # the versions are listed in sync.central_pg
SIDE_FILES = ("-wal",)


def _create_schema(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"name": str, "value": int}, pk="name", if_not_exists=True)
    # The replicated hashmap as it stands, one row per key (/<kind>/<scope>/<subject>).
    db.table("kv").create(
        {"key": str, "scope": str, "subject_id": str, "seq": int, "uuid": bytes, "body": bytes, "expires_at": float},
        pk="key", not_null=["scope", "subject_id", "seq", "body"], if_not_exists=True)
    db.table("kv").create_index(["scope"], if_not_exists=True)
    db.table("kv").create_index(["subject_id"], if_not_exists=True)
    # Every change in sequence order; the publisher tails it, KVSET UUIDs are de-duplicated
    # against it. `props` are the KVPUB properties as sent (ttl, prev).
    db.table("kv_log").create(
        {"seq": int, "key": str, "scope": str, "uuid": bytes, "props": str, "body": bytes, "logged_at": float},
        pk="seq", not_null=["key", "scope", "props", "body", "logged_at"], if_not_exists=True)
    db.table("kv_log").create_index(["uuid"], if_not_exists=True)
    # a gate's catch-up reads one scope's changes after its sequence (sync.hashmap.changes_since):
    # 101 -> 2.3 ms on a 1M-row log of 1,000 scopes (it walked the log from that sequence)
    db.table("kv_log").create_index(["scope", "seq"], index_name="kv_log_scope_seq", if_not_exists=True)
    db.table("scope_heads").create({"scope": str, "seq": int}, pk="scope", not_null=["seq"], if_not_exists=True)
    db.table("subjects").create(
        {"subject_id": str, "list_type": str, "model_id": str, "dim": int, "n_templates": int,
         "valid_from": float, "valid_until": float, "status": str, "reason": str,
         "created_at": float, "updated_at": float},
        pk="subject_id", not_null=["list_type", "model_id", "dim", "n_templates", "status", "created_at", "updated_at"],
        if_not_exists=True)
    db.table("subjects").create_index(["status", "valid_until"], if_not_exists=True)
    db.table("subjects").create_index(["model_id"], if_not_exists=True)
    # The one model id each non-empty scope holds, so "refuse to mix models" is one lookup.
    db.table("scope_models").create({"scope": str, "model_id": str}, pk="scope", not_null=["model_id"],
                                    if_not_exists=True)
    db.table("templates").create(
        {"subject_id": str, "idx": int, "model_id": str, "vector": bytes},
        pk=("subject_id", "idx"), not_null=["model_id", "vector"], if_not_exists=True)
    # Who may connect: gates (with the scopes they may snapshot) and admin tools.
    db.table("principals").create(
        {"name": str, "kind": str, "ident": str, "public_key": str, "scopes": str, "created_at": float},
        pk="name", not_null=["kind", "ident", "public_key", "scopes", "created_at"], if_not_exists=True)
    db.table("principals").create_index(["public_key"], unique=True, if_not_exists=True)
    db.table("gate_health").create(
        {"gate_id": str, "last_seen": float, "status": str, "software_version": str, "model_versions": str,
         "watchlist_seq": int, "queue_depth": int, "last_decision_at": str, "report": str, "silent": int},
        pk="gate_id", not_null=["last_seen", "silent"], if_not_exists=True)
    # One row per audit record; a gate's chain is (gate_id, epoch), epoch '' being every gate's first.
    db.table("audit").create(
        {"gate_id": str, "epoch": str, "seq": int, "ts": str, "prev_hash": str, "hash": str, "body": str,
         "received_at": float},
        pk=("gate_id", "epoch", "seq"), not_null=["epoch", "ts", "prev_hash", "hash", "body", "received_at"],
        defaults={"epoch": ""}, if_not_exists=True)
    db.table("audit").create_index(["gate_id", "ts"], if_not_exists=True)
    # Version 2: the node a gate reports through (several central nodes).
    if "node" not in db.table("gate_health").columns_dict:
        db.table("gate_health").add_column("node", str)
    # Version 3: audit chain epochs (sync.audit_chain.ChainEpoch): the chain is part of the key.
    if "epoch" not in db.table("audit").columns_dict:
        db.table("audit").add_column("epoch", str, not_null_default="")
        db.table("audit").transform(pk=("gate_id", "epoch", "seq"))
    # Chains after the first, each forking from a record of its parent.
    db.table("audit_epochs").create(
        {"gate_id": str, "epoch": str, "parent": str, "base_seq": int, "base_hash": str, "public_key": str,
         "created": str, "nonce": str, "vouched": int, "registered_at": float},
        pk=("gate_id", "epoch"), not_null=["parent", "base_seq", "base_hash", "public_key", "created", "nonce",
                                           "vouched", "registered_at"], if_not_exists=True)
    # Who erased a withdrawn subject at once (sync.forget.erase_subject); the id only as its sha256.
    db.table("erasures").create(
        {"subject_sha256": str, "operator": str, "reason": str, "erased_at": float, "templates": int,
         "log_entries": int}, pk=("subject_sha256", "erased_at"),
        not_null=["operator", "reason", "templates", "log_entries"], if_not_exists=True)
    # What the central noticed about a gate's audit log: a conflicting record, a log gone backwards.
    db.table("audit_alarms").create(
        {"gate_id": str, "epoch": str, "kind": str, "seq": int, "detail": str, "detected_at": float,
         "resolved_by": str},
        pk=("gate_id", "epoch", "kind", "seq"), not_null=["detail", "detected_at"], if_not_exists=True)
    # Version 4: the subject's name as the person writes it, for staff; never published to gates.
    if "display_name" not in db.table("subjects").columns_dict:
        db.table("subjects").add_column("display_name", str)
    # Version 5: the flights the central assigned to a boarding gate (Central.assign_flights),
    # served to it on top of its registered scopes and told to it in each health reply.
    db.table("gate_assignments").create({"gate_id": str, "scope": str, "assigned_at": float},
                                  pk=("gate_id", "scope"), not_null=["assigned_at"], if_not_exists=True)
    # Version 6: the operations console (console.store): accounts (argon2id hashes), sessions
    # (by the sha256 of their cookie), the hash-chained ops audit log and alarm acknowledgements.
    db.table("ops_accounts").create(
        {"username": str, "role": str, "password_hash": str, "created_at": float, "created_by": str,
         "updated_at": float, "disabled": int, "failed_logins": int, "locked_until": float},
        pk="username", not_null=["role", "password_hash", "created_at", "created_by", "updated_at", "disabled",
                                 "failed_logins"], defaults={"disabled": 0, "failed_logins": 0}, if_not_exists=True)
    db.table("ops_sessions").create(
        {"token_sha256": str, "username": str, "csrf": str, "created_at": float, "last_seen": float, "client": str},
        pk="token_sha256", not_null=["username", "csrf", "created_at", "last_seen", "client"], if_not_exists=True)
    db.table("ops_sessions").create_index(["username"], if_not_exists=True)
    db.table("ops_audit").create({"seq": int, "ts": str, "prev_hash": str, "hash": str, "body": str}, pk="seq",
                           not_null=["ts", "prev_hash", "hash", "body"], if_not_exists=True)
    db.table("ops_acks").create({"gate_id": str, "alarm": str, "username": str, "note": str, "acked_at": float},
                          pk=("gate_id", "alarm"), not_null=["username", "note", "acked_at"], if_not_exists=True)
    db.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', ?), ('seq', 0)", [SCHEMA_VERSION])
    db.execute("UPDATE meta SET value = ? WHERE name = 'schema' AND value < ?", [SCHEMA_VERSION, SCHEMA_VERSION])


class SqliteDatabase:
    """One connection to the central's SQLite file, for the calling thread only."""

    dialect = "sqlite"

    def __init__(self, path: Path):
        path = Path(path)
        self.path = path
        self._depth = 0
        self.description = f"sqlite:{path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Templates are biometric data: the file (and the -wal/-shm files SQLite derives from
        # its mode) is owner-only from the first byte. Only a missing file is touched: closing
        # any descriptor of a database file drops every POSIX lock this process holds on it, so
        # another process could then take the database for unused and delete the WAL under this
        # process's open connections, losing commits already acknowledged (found by gate-bench crash).
        if not path.exists():
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            except FileExistsError:  # another process created it first
                pass
        try:
            conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a reply that says "durable" to a gate must survive a power cut of the central.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            # Deleted templates and ids are overwritten, not left in free pages (sync.forget proves it).
            conn.execute("PRAGMA secure_delete=ON")
            self.conn = conn
            _create_schema(sqlite_utils.Database(conn))
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: {exc}") from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    def bulk_insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)

    def stream(self, sql: str, params: Sequence[Any] = (), batch: int = 2000) -> Iterator[tuple]:
        yield from self.execute(sql, params)  # SQLite cursors step through the file lazily

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[None]:
        if self._depth:  # inside group_transaction(): its one commit covers this too
            yield
            return
        self.execute(begin)
        self._depth += 1
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth -= 1
        self.execute("COMMIT")

    def group_transaction(self):
        """One transaction (one fsync) around several requests' own transactions."""
        return self._transaction("BEGIN IMMEDIATE")

    def write_transaction(self):
        """BEGIN IMMEDIATE takes the write lock up front, so sequence numbers are handed out in
        commit order even when several processes write."""
        return self._transaction("BEGIN IMMEDIATE")

    def audit_transaction(self, gate_id: str):
        return self._transaction("BEGIN IMMEDIATE")

    def read_snapshot(self):
        """In WAL mode every query inside sees one consistent state."""
        return self._transaction("BEGIN")

    def notify_change(self, seq: int) -> None:
        pass

    def wait_for_change(self, timeout: float) -> bool:
        time.sleep(max(0.0, timeout))
        return False

    def try_maintenance_lock(self) -> bool:
        return True

    def group_concat(self, expr: str) -> str:
        return f"group_concat({expr}, ' ')"

    def contains(self, column: str) -> str:
        return f"instr({column}, ?) > 0"

    def files(self) -> list[Path]:
        return [self.path] + [self.path.with_name(self.path.name + s) for s in SIDE_FILES]

    def after_forget(self) -> None:
        self.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def after_bulk_load(self, rows_by_table: dict[str, int]) -> None:
        # SQLite plans without statistics unless ANALYZE has stored some (sqlite_stat1), and its
        # heuristics pick the indexed plans at any size: `gate-bench central` enrols into a
        # 1M-subject SQLite central in 14 ms with no ANALYZE ever run.
        pass

    def close(self) -> None:
        self.conn.close()
