"""Templates sealed at rest on the central: which key, whether it is the right one, and sealing
a central that stored them in clear.

Every template the central stores is biometric data in three places on both stores: the
`templates` table and the record bodies (msgpack with the float32 template block) in `kv.body`
and `kv_log.body`. Each is sealed with AES-256-GCM (sync.template_crypto.TemplateCipher) and
bound to its row: a template to its subject and model id, a body to its hashmap key and
sequence. A body moved to another key, an older body put back under a newer sequence, or a row
written in clear is refused on every read path (snapshot, catch-up, publisher, templates read)
and never sent to a gate.

Which key (the rule, and why it is one rule per database):

- `[central] template_key_file` when set. Unset, a central with a CURVE `secret_key_file` keeps
  `templates.key` beside it in its keys directory (sync.config.CentralConfig.template_key_path),
  out of the database's own directory, so a copy of the database folder or a PostgreSQL dump
  does not carry its key.
- `Central(database)` with no key (the tools, benchmarks and tests that open a database by its
  name alone) uses `default_template_key_file(database)`: for a SQLite file, `<file>.templates.key`
  beside it (a demo folder moved as a whole keeps working); for PostgreSQL, a per-database file
  `<dbname>.templates.key` under `$XDG_STATE_HOME/edgegate/central-keys/` (default
  `~/.local/state/...`), on the machine that opens it, never in the database. Both are created
  0600 on first use.

The database records the id of the key that sealed it (meta `template_key`, the key id as a
signed 64-bit number); a process that comes with another key is refused at once with one line
naming both ids, before it reads or writes a row, so two processes (or two nodes) can never
seal one database with two keys, and a wrong default is an error, not a silent second key.
A database that holds rows but records no key was written by a release that stored templates
in clear: it is refused until `gate-central migrate` seals it (`seal_existing`).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sync.central_db import CentralDatabase, is_postgres, open_central_db
from sync.subject_record import MalformedRecord, decode_record
from sync.template_crypto import TemplateCipher, TemplateIntegrityError, TemplateKeyError

log = logging.getLogger(__name__)

KEY_META = "template_key"
DEFAULT_KEY_NAME = "templates.key"
_BATCH = 5000


class SealedRowRefused(TemplateIntegrityError):
    """A stored template or record body that is in clear or fails authentication: the central
    refuses to use it, and never sends it to a gate."""


# ----- which key -----------------------------------------------------------------------------

def central_key_dir() -> Path:
    """Where per-database default keys live on this machine (PostgreSQL without a configured key)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgegate" / "central-keys"


def default_template_key_file(database: str | Path) -> Path:
    """The key `Central(database)` uses when it is given none (see the module docstring)."""
    if not is_postgres(database):
        path = Path(database)
        return path.with_name(path.name + ".templates.key")
    from psycopg.conninfo import conninfo_to_dict

    dbname = str(conninfo_to_dict(str(database)).get("dbname") or os.environ.get("PGDATABASE") or "postgres")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dbname).lstrip(".") or "postgres"
    return central_key_dir() / f"{safe}.templates.key"


def _id_to_int(key_id: str) -> int:
    return int.from_bytes(bytes.fromhex(key_id), "big", signed=True)  # fits meta.value (64-bit)


def _int_to_id(value: int) -> str:
    return int(value).to_bytes(8, "big", signed=True).hex()


def recorded_key_id(db: CentralDatabase) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE name = ?", (KEY_META,)).fetchone()
    return None if row is None else _int_to_id(row[0])


def _holds_rows(db: CentralDatabase) -> bool:
    return any(db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() is not None for t in ("templates", "kv", "kv_log"))


def load_key(template_key: TemplateCipher | str | Path | None, database: str | Path,
             recorded: str | None = None) -> TemplateCipher:
    """The cipher for `template_key` (a cipher, a key file, or None for the database's
    default file). A missing file is created 0600, unless the database already records a key:
    then the file that sealed it has to be found, not replaced by a new one."""
    if isinstance(template_key, TemplateCipher):
        return template_key
    path = Path(template_key) if template_key is not None else default_template_key_file(database)
    if not path.exists():
        if recorded is not None:
            raise TemplateKeyError(f"template key file {path} does not exist, and the central database was sealed "
                                   f"with key id {recorded}: give that key ([central] template_key_file)")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return TemplateCipher.load_or_create(path)


def open_central_cipher(db: CentralDatabase, database: str | Path,
                        template_key: TemplateCipher | str | Path | None) -> TemplateCipher:
    """The key this central seals and opens with, checked against the one the database
    records (and recorded, for a database that has none and holds nothing yet)."""
    recorded = recorded_key_id(db)
    cipher = load_key(template_key, database, recorded)
    if recorded is None:
        with db.write_transaction():
            recorded = recorded_key_id(db)
            if recorded is None:
                if _holds_rows(db):
                    raise TemplateKeyError(f"{db.description} holds subjects stored in clear by an earlier release: "
                                           "run `gate-central migrate` to seal them")
                db.execute("INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                           (KEY_META, _id_to_int(cipher.key_id)))
                recorded = cipher.key_id
                log.info("%s: templates sealed with %s", db.description, cipher.describe())
    if recorded != cipher.key_id:
        raise TemplateKeyError(f"template {cipher.describe()} is not the key {db.description} was sealed with "
                               f"(key id {recorded}); give that key ([central] template_key_file)")
    return cipher


# ----- opening one stored row, clear or sealed --------------------------------------------

def plain_template(blob: bytes, subject_id: str, model_id: str, cipher: TemplateCipher | None) -> tuple[bytes, bool]:
    """(clear float32 block, whether it was sealed) of a stored template. A sealed blob is
    1 + 12 + 4·dim + 16 bytes, never a multiple of 4, so it is never mistaken for a clear one."""
    blob = bytes(blob)
    if cipher is not None:
        try:
            return cipher.open(blob, subject_id, model_id), True
        except TemplateIntegrityError:
            pass
    if blob and len(blob) % 4 == 0:
        return blob, False
    raise SealedRowRefused(f"template {subject_id}/{model_id} is neither in clear nor sealed with "
                           f"{cipher.describe() if cipher else 'no key'}")


def plain_body(blob: bytes, key: str, seq: int, cipher: TemplateCipher | None) -> tuple[bytes, bool]:
    """(clear record body, whether it was sealed) of a kv / kv_log body; b"" (a deletion)
    stays b"". A clear body must decode as the record of the key's subject."""
    blob = bytes(blob)
    if not blob:
        return b"", False
    if cipher is not None:
        try:
            return cipher.open_record(blob, key, seq), True
        except TemplateIntegrityError:
            pass
    try:
        rec = decode_record(blob)
    except MalformedRecord:
        rec = None
    if rec is not None and key.endswith("/" + rec.subject_id):
        return blob, False
    raise SealedRowRefused(f"record {key} (seq {seq}) is neither a clear subject record nor sealed with "
                           f"{cipher.describe() if cipher else 'no key'}")


def reseal_row(table: str, row: tuple, source: TemplateCipher | None, target: TemplateCipher) -> tuple:
    """A row of `templates`, `kv` or `kv_log` (columns as in sync.central_migrate.TABLES),
    opened with `source` (or taken in clear) and sealed with `target`; other tables' rows as
    they are."""
    if table == "templates":
        subject_id, idx, model_id, vector = row
        plain, _ = plain_template(vector, subject_id, model_id, source)
        return subject_id, idx, model_id, target.seal(plain, subject_id, model_id)
    if table == "kv":
        key, scope, subject_id, seq, uuid, body, expires_at = row
        plain, _ = plain_body(body, key, seq, source)
        return key, scope, subject_id, seq, uuid, target.seal_record(plain, key, seq), expires_at
    if table == "kv_log":
        seq, key, scope, uuid, props, body, logged_at = row
        plain, _ = plain_body(body, key, seq, source)
        return seq, key, scope, uuid, props, target.seal_record(plain, key, seq) if plain else b"", logged_at
    return row


# ----- gate-central migrate: seal what an earlier release stored in clear ------------------

@dataclass(frozen=True)
class SealReport:
    key_id: str
    sealed: dict[str, int]  # table -> rows sealed now
    already: dict[str, int]  # table -> rows that were sealed with this key before

    def summary(self) -> str:
        done = ", ".join(f"{n} {t}" for t, n in self.sealed.items())
        kept = sum(self.already.values())
        return f"templates sealed with key id {self.key_id}: {done} sealed now, {kept} row(s) already sealed"


def seal_existing(database: str | Path, template_key: TemplateCipher | str | Path | None,
                  progress: Callable[[str, int], None] | None = None) -> SealReport:
    """Seal every template and record body stored in clear, then record the key; rows already
    sealed with this key are left as they are, so running it again changes nothing. A row that
    is neither clear nor sealed with this key (another key, or damage) stops it, naming the
    row: it is then not known which key the database belongs to. One transaction: a failure
    leaves the database as it was (and still refused until it succeeds)."""
    db = open_central_db(database)
    try:
        recorded = recorded_key_id(db)
        cipher = load_key(template_key, database, recorded)
        if recorded is not None and recorded != cipher.key_id:
            raise TemplateKeyError(f"template {cipher.describe()} is not the key {db.description} was sealed with "
                                   f"(key id {recorded})")
        sealed = {"templates": 0, "kv": 0, "kv_log": 0}
        already = dict(sealed)
        updates: list[tuple]
        with db.write_transaction():
            last: tuple = ("", -1)
            page = ("SELECT subject_id, idx, model_id, vector FROM templates WHERE subject_id > ? "
                    "OR (subject_id = ? AND idx > ?) ORDER BY subject_id, idx LIMIT ?")
            while rows := db.execute(page, (last[0], last[0], last[1], _BATCH)).fetchall():
                updates = []
                for subject_id, idx, model_id, vector in rows:
                    plain, was = plain_template(vector, subject_id, model_id, cipher)
                    if was:
                        already["templates"] += 1
                    else:
                        updates.append((cipher.seal(plain, subject_id, model_id), subject_id, idx))
                db.executemany("UPDATE templates SET vector = ? WHERE subject_id = ? AND idx = ?", updates)
                sealed["templates"] += len(updates)
                last = (rows[-1][0], rows[-1][1])
                if progress:
                    progress("templates", sealed["templates"] + already["templates"])
            last_key = ""
            while rows := db.execute("SELECT key, seq, body FROM kv WHERE key > ? ORDER BY key LIMIT ?",
                                     (last_key, _BATCH)).fetchall():
                updates = []
                for key, seq, body in rows:
                    plain, was = plain_body(body, key, seq, cipher)
                    if was:
                        already["kv"] += 1
                    else:
                        updates.append((cipher.seal_record(plain, key, seq), key))
                db.executemany("UPDATE kv SET body = ? WHERE key = ?", updates)
                sealed["kv"] += len(updates)
                last_key = rows[-1][0]
                if progress:
                    progress("kv", sealed["kv"] + already["kv"])
            last_seq = -1
            while rows := db.execute("SELECT seq, key, body FROM kv_log WHERE seq > ? ORDER BY seq LIMIT ?",
                                     (last_seq, _BATCH)).fetchall():
                updates = []
                for seq, key, body in rows:
                    plain, was = plain_body(body, key, seq, cipher)
                    if was:
                        already["kv_log"] += 1
                    elif plain:  # a deletion's empty body holds nothing to seal
                        updates.append((cipher.seal_record(plain, key, seq), seq))
                db.executemany("UPDATE kv_log SET body = ? WHERE seq = ?", updates)
                sealed["kv_log"] += len(updates)
                last_seq = rows[-1][0]
                if progress:
                    progress("kv_log", sealed["kv_log"] + already["kv_log"])
            db.execute("INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                       (KEY_META, _id_to_int(cipher.key_id)))
        if any(sealed.values()):
            # SQLite: secure_delete overwrote the clear cells; checkpoint so no clear page is
            # left in the WAL. PostgreSQL keeps the old tuples until VACUUM (docs/security.md).
            db.after_forget()
            log.info("%s: sealed %s with %s", db.description, sealed, cipher.describe())
        return SealReport(cipher.key_id, sealed, already)
    finally:
        db.close()


def record_key(db: CentralDatabase, cipher: TemplateCipher) -> None:
    """Inside the caller's transaction: the database is sealed with `cipher` (a copy that
    sealed every row on the way in)."""
    db.execute("INSERT INTO meta(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
               (KEY_META, _id_to_int(cipher.key_id)))
