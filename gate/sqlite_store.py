"""Opening the gate's private SQLite files: owner-only permissions, WAL, one writer, many readers.

Both gate stores (audit log, watchlist) hold data about people, so their files are created
0600 and a file that anyone else can read is refused rather than silently used: a loose mode
usually means a restore or a copy went wrong, and the operator has to know. SQLite gives its
-wal and -shm files the mode of the main file, so creating the main file 0600 before SQLite
touches it covers all three.

Threads: the daemon writes from more than one thread (main loop, device and sync threads) and
reads from others (the sync agent, gatectl requests). WAL lets readers run beside a writer, so
writes share one connection behind a lock and every reading thread gets its own connection;
a reader therefore never waits for a writer's fsync.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlite_utils import Database

# The owner-only rules are sync's (sync.keys), shared with the central's template key; the gate's
# modules keep importing them from here.
from sync.keys import OWNER_ONLY_MASK, InsecureFileError, create_private_file, require_private

__all__ = ["OWNER_ONLY_MASK", "InsecureFileError", "PrivateSqliteFile", "create_private_file", "parse_utc_iso",
           "require_private", "utc_iso", "utc_now"]

log = logging.getLogger(__name__)

SQLITE_SIDE_FILES = ("-wal", "-shm")
SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")


def utc_iso(moment: datetime) -> str:
    """Fixed-width ISO-8601 UTC with microseconds, so stored timestamps sort as text in SQL."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass a timezone-aware (UTC) datetime")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc_iso(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class PrivateSqliteFile:
    """A 0600 SQLite file in WAL mode with a lock-guarded writer and per-thread readers.

    `read_only=True` opens an existing file without ever creating or writing it (for
    inspection tools); writes then fail inside SQLite with "readonly database".
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        secure_delete: bool = False,
        read_only: bool = False,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._busy_timeout_s = busy_timeout_s
        self._secure_delete = secure_delete
        if read_only:
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path} does not exist (opened read-only, so not created)")
        elif not self.path.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            create_private_file(self.path)
        self.check_permissions()
        self._write_lock = threading.Lock()
        self._local = threading.local()
        # Weak, so a finished thread's connection is closed when its thread-local goes away
        # (short-lived request threads must not leak file descriptors).
        self._readers: weakref.WeakSet[Database] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._closed = False
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}, got {synchronous!r}")
        self.writer = Database(self._connect(), execute_plugins=False)
        try:
            if not read_only:
                self.writer.enable_wal()
                self.writer.execute(f"PRAGMA synchronous={synchronous}")
            self.check_permissions()  # the -wal/-shm files now exist too
        except BaseException:
            self.writer.close()
            raise

    def check_permissions(self) -> None:
        require_private(self.path)
        for suffix in SQLITE_SIDE_FILES:
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                require_private(side)

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                   timeout=self._busy_timeout_s)
        else:
            # check_same_thread=False: the writer is shared between threads (under the write lock)
            # and close() may run on a thread other than the one that opened a reader.
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=self._busy_timeout_s)
        if self._secure_delete:
            conn.execute("PRAGMA secure_delete=ON")
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Database]:
        """One write transaction: BEGIN IMMEDIATE (takes SQLite's write lock up front, so a
        second process writing the same file waits instead of failing mid-transaction),
        COMMIT on success, ROLLBACK on any error."""
        with self._write_lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self.path} is closed")
            db = self.writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                self._rollback_quietly()
                raise

    def _rollback_quietly(self) -> None:
        """Roll back after a failed write; SQLite may already have rolled back (e.g. on
        SQLITE_FULL during COMMIT), and a second error here must not hide the first."""
        try:
            if self.writer.conn.in_transaction:
                self.writer.conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("rollback of %s failed", self.path)

    def set_writer_pragma(self, pragma: str) -> None:
        with self._write_lock:
            self.writer.execute(f"PRAGMA {pragma}")

    def reader(self) -> Database:
        """This thread's read-only connection (query_only guards against a stray write)."""
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self.path} is closed")
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            db = Database(conn, execute_plugins=False)
            with self._readers_lock:
                self._readers.add(db)
            self._local.db = db
        return db

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Database]:
        """This thread's reader inside one read transaction, so several queries see the same
        committed state. Ended with COMMIT (nothing to undo), which unlike ROLLBACK leaves
        any other statement still stepping on this connection alone."""
        db = self.reader()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def checkpoint_truncate(self) -> bool:
        """Fold the WAL into the main file and truncate it, so deleted rows are gone from the
        WAL too. Returns False when a reader kept the checkpoint from completing."""
        with self._write_lock:
            busy, _, _ = self.writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning("WAL checkpoint of %s did not complete: a reader is active", self.path)
        return not busy

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                for db in list(self._readers):
                    db.close()
                self._readers.clear()
            self.writer.close()
