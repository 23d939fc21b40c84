"""The central's SQLite file: schema, connection settings and write transactions.

Every process that touches the central (the server's threads, `gate-central revoke`,
`gate-ops audit pull`) opens its own connection to the same WAL database, so the file, not
a process, is the source of truth: an enrollment written while the server is down is
published (or served in a snapshot) once it runs.
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlite_utils

SCHEMA_VERSION = 1


def _create_schema(db: sqlite_utils.Database) -> None:
    db["meta"].create({"name": str, "value": int}, pk="name", if_not_exists=True)
    # The replicated hashmap as it stands, one row per key (/<kind>/<scope>/<subject>).
    db["kv"].create(
        {"key": str, "scope": str, "subject_id": str, "seq": int, "uuid": bytes, "body": bytes, "expires_at": float},
        pk="key", not_null=["scope", "subject_id", "seq", "body"], if_not_exists=True)
    db["kv"].create_index(["scope"], if_not_exists=True)
    db["kv"].create_index(["subject_id"], if_not_exists=True)
    # Every change in sequence order; the publisher tails it, KVSET UUIDs are de-duplicated
    # against it. `props` are the KVPUB properties as sent (ttl, prev).
    db["kv_log"].create(
        {"seq": int, "key": str, "scope": str, "uuid": bytes, "props": str, "body": bytes, "logged_at": float},
        pk="seq", not_null=["key", "scope", "props", "body", "logged_at"], if_not_exists=True)
    db["kv_log"].create_index(["uuid"], if_not_exists=True)
    db["scope_heads"].create({"scope": str, "seq": int}, pk="scope", not_null=["seq"], if_not_exists=True)
    db["subjects"].create(
        {"subject_id": str, "list_type": str, "model_id": str, "dim": int, "n_templates": int,
         "valid_from": float, "valid_until": float, "status": str, "reason": str,
         "created_at": float, "updated_at": float, "display_name": str},
        pk="subject_id", not_null=["list_type", "model_id", "dim", "n_templates", "status", "created_at", "updated_at"],
        if_not_exists=True)
    if "display_name" not in db["subjects"].columns_dict:  # a central created before display names
        db["subjects"].add_column("display_name", str)
    db["subjects"].create_index(["status", "valid_until"], if_not_exists=True)
    db["subjects"].create_index(["model_id"], if_not_exists=True)
    # The one model id each non-empty scope holds, so "refuse to mix models" is one lookup.
    db["scope_models"].create({"scope": str, "model_id": str}, pk="scope", not_null=["model_id"], if_not_exists=True)
    db["templates"].create(
        {"subject_id": str, "idx": int, "model_id": str, "vector": bytes},
        pk=("subject_id", "idx"), not_null=["model_id", "vector"], if_not_exists=True)
    # Who may connect: gates (with the scopes they may snapshot) and admin tools.
    db["principals"].create(
        {"name": str, "kind": str, "ident": str, "public_key": str, "scopes": str, "created_at": float},
        pk="name", not_null=["kind", "ident", "public_key", "scopes", "created_at"], if_not_exists=True)
    db["principals"].create_index(["public_key"], unique=True, if_not_exists=True)
    db["gate_health"].create(
        {"gate_id": str, "last_seen": float, "status": str, "software_version": str, "model_versions": str,
         "watchlist_seq": int, "queue_depth": int, "last_decision_at": str, "report": str, "silent": int},
        pk="gate_id", not_null=["last_seen", "silent"], if_not_exists=True)
    db["audit"].create(
        {"gate_id": str, "seq": int, "ts": str, "prev_hash": str, "hash": str, "body": str, "received_at": float},
        pk=("gate_id", "seq"), not_null=["ts", "prev_hash", "hash", "body", "received_at"], if_not_exists=True)
    db["audit"].create_index(["gate_id", "ts"], if_not_exists=True)
    db.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', ?), ('seq', 0)", [SCHEMA_VERSION])


def open_central_db(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the central database for use by the calling thread."""
    path = Path(path)
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
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=True)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a reply that says "durable" to a gate must survive a power cut of the central.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    # Deleted templates and ids are overwritten, not left in free pages (sync.forget proves it).
    conn.execute("PRAGMA secure_delete=ON")
    db = sqlite_utils.Database(conn)
    _create_schema(db)
    return db


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so sequence numbers are handed out in
    commit order even when several processes write."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: in WAL mode every query inside sees one consistent state."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")
