"""`gate-central migrate`: create or upgrade the central's schema, and move a SQLite central
into PostgreSQL without changing any sequence number, key or audit hash.

The copy is table by table, rows as they are: subjects, templates, the hashmap and its change
log (with every sequence, UUID and `prev`), scope heads, principals (the same CURVE keys, so
gates reconnect without re-registration), gate health and every received audit record with
its hash. The global sequence is carried over, so a gate that synced from the SQLite central
continues from its stored sequence against the PostgreSQL one. The target must be empty: a
copy never merges into a live central.

Templates and record bodies are sealed on the way in (sync.central_seal.reseal_row): each is
opened with the SQLite central's key (or taken in clear from a central of an earlier release)
and sealed with the target's, bound to the same subject, model, key and sequence, and the
target records its key. So the target never holds a clear template, even for a moment.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sync.central_db import StorageError, is_postgres, open_central_db
from sync.central_seal import load_key, record_key, recorded_key_id, reseal_row
from sync.template_crypto import TemplateCipher, TemplateKeyError

log = logging.getLogger(__name__)

# Table -> columns, in an order that respects nothing but clarity (there are no foreign keys).
TABLES: dict[str, tuple[str, ...]] = {
    "subjects": ("subject_id", "list_type", "model_id", "dim", "n_templates", "valid_from", "valid_until", "status",
                 "reason", "created_at", "updated_at", "display_name"),
    "templates": ("subject_id", "idx", "model_id", "vector"),
    "scope_models": ("scope", "model_id"),
    "kv": ("key", "scope", "subject_id", "seq", "uuid", "body", "expires_at"),
    "kv_log": ("seq", "key", "scope", "uuid", "props", "body", "logged_at"),
    "scope_heads": ("scope", "seq"),
    "principals": ("name", "kind", "ident", "public_key", "scopes", "created_at"),
    "gate_health": ("gate_id", "last_seen", "status", "software_version", "model_versions", "watchlist_seq",
                    "queue_depth", "last_decision_at", "report", "silent", "node"),
    "audit": ("gate_id", "epoch", "seq", "ts", "prev_hash", "hash", "body", "received_at"),
    "audit_epochs": ("gate_id", "epoch", "parent", "base_seq", "base_hash", "public_key", "created", "nonce",
                     "vouched", "registered_at"),
    "audit_alarms": ("gate_id", "epoch", "kind", "seq", "detail", "detected_at", "resolved_by"),
    "gate_assignments": ("gate_id", "scope", "assigned_at"),
    "erasures": ("subject_sha256", "operator", "reason", "erased_at", "templates", "log_entries"),
    # The console's accounts, its hash-chained ops audit log and acknowledgements (sessions are not
    # copied: everyone logs in again on the new store).
    "ops_accounts": ("username", "role", "password_hash", "created_at", "created_by", "updated_at", "disabled",
                     "failed_logins", "locked_until"),
    "ops_audit": ("seq", "ts", "prev_hash", "hash", "body"),
    "ops_acks": ("gate_id", "alarm", "username", "note", "acked_at"),
}
BATCH = 5000


@dataclass(frozen=True)
class MigrateReport:
    schema_from: int
    schema_to: int
    copied: dict[str, int]
    sequence: int | None
    key_id: str | None = None

    def summary(self) -> str:
        text = f"schema {self.schema_from} -> {self.schema_to}"
        if self.copied:
            text += "; copied " + ", ".join(f"{n} {t}" for t, n in self.copied.items())
            text += f"; sequence {self.sequence}"
        if self.key_id:
            text += f"; templates sealed with key id {self.key_id}"
        return text


def migrate_schema(database: str | Path) -> tuple[int, int]:
    """Create or upgrade the schema at `database`. SQLite files upgrade on open."""
    if not is_postgres(database):
        db = open_central_db(database)
        try:
            version = int(db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0])
        finally:
            db.close()
        return version, version
    from sync.central_pg import migrate

    db = open_central_db(database, create=False)
    try:
        return migrate(db)  # type: ignore[arg-type]
    finally:
        db.close()


def copy_sqlite_central(source: Path, target: str,
                        progress: Callable[[str, int], None] | None = None,
                        template_key: TemplateCipher | str | Path | None = None,
                        source_key: TemplateCipher | str | Path | None = None) -> MigrateReport:
    """Copy the SQLite central at `source` into the (migrated, empty) PostgreSQL central at
    `target`, in one transaction: a failure leaves the target as empty as it was.

    `template_key`: the target's key (None: its default, sync.central_seal). `source_key`: the
    key the source was sealed with (None: the file beside it, needed only if the source records
    a key; a source of an earlier release is read in clear)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: give the SQLite central's database file")
    if not is_postgres(target):
        raise ValueError("the migration target must be a PostgreSQL central (postgresql://...)")
    schema_from, schema_to = migrate_schema(target)
    src = open_central_db(source)
    dst = open_central_db(target)
    copied: dict[str, int] = {}
    try:
        for table in TABLES:
            if dst.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                raise StorageError(f"the target already holds {table} rows: migrate only into an empty central")
        recorded = recorded_key_id(src)
        opener: TemplateCipher | None = None
        if isinstance(source_key, TemplateCipher):
            opener = source_key
        elif source_key is not None:
            opener = TemplateCipher.from_key_file(Path(source_key))
        elif recorded is not None:
            opener = load_key(None, source, recorded)
        if recorded is not None and opener is not None and opener.key_id != recorded:
            raise TemplateKeyError(f"{source} was sealed with key id {recorded}, not with {opener.describe()}")
        target_recorded = recorded_key_id(dst)
        sealer = load_key(template_key, target, target_recorded)
        if target_recorded is not None and target_recorded != sealer.key_id:
            raise TemplateKeyError(f"{dst.description} is sealed with key id {target_recorded}, not with "
                                   f"{sealer.describe()}")
        with dst.write_transaction():
            for table, columns in TABLES.items():
                cols = ", ".join(columns)
                marks = ", ".join("?" * len(columns))
                rows = src.execute(f"SELECT {cols} FROM {table}")
                n = 0
                sealed = table in ("templates", "kv", "kv_log")
                while batch := rows.fetchmany(BATCH):
                    if sealed:
                        batch = [reseal_row(table, tuple(r), opener, sealer) for r in batch]
                    dst.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", batch)
                    n += len(batch)
                    if progress:
                        progress(table, n)
                copied[table] = n
            seq = int(src.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()[0])
            dst.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (seq,))
            record_key(dst, sealer)
        import datetime as dt

        from sync.central_pg import ensure_audit_partitions

        ensure_audit_partitions(dst, dt.datetime.now(dt.timezone.utc))  # type: ignore[arg-type]
        dst.after_bulk_load(copied)
    finally:
        src.close()
        dst.close()
    log.info("copied %s into %s at sequence %d", source, dst.description, seq)
    return MigrateReport(schema_from, schema_to, copied, seq, sealer.key_id)
