"""Small real implementations of the sync interfaces, and set-up helpers, for the sync tests.

MemoryWatchlist and SqliteAuditLog are working stores (not call recorders): the tests check
what ended up in them. Run as a script, this module hosts a gate agent in its own process so
a test can kill it with SIGKILL mid-upload.
"""
from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sync.audit_chain import GENESIS_HASH, AuditRow, ChainEpoch, record_hash  # noqa: E402
from sync.central import Central  # noqa: E402
from sync.central_seal import default_template_key_file  # noqa: E402
from sync.config import AgentConfig, CentralConfig  # noqa: E402
from sync.keys import generate_keypair_files, load_keypair, load_public_key  # noqa: E402
from sync.service_messages import Reply, decode_request, encode_reply  # noqa: E402
from sync.subject_record import SubjectRecord  # noqa: E402
from sync.transport import SERVICE_OFFSET, Security, bind_socket  # noqa: E402


class Clock:
    """A settable clock in Unix seconds, for code that takes `clock=` (the central, the console)."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

MODEL = "mobilefacenet-test"


class MemoryWatchlist:
    """An in-memory watchlist cache with an incremental cosine index, safe across threads."""

    def __init__(self, seq: int = 0, entries: dict[str, SubjectRecord] | None = None):
        self._lock = threading.Lock()
        self._seq = seq
        self.replacements = 0
        self._load(dict(entries or {}))

    def _load(self, entries: dict[str, SubjectRecord]) -> None:
        self._entries = entries
        recs = list(entries.items())
        self._rows_of: dict[str, list[int]] = {}
        self._owners: list[str | None] = []
        for key, rec in recs:
            self._rows_of[key] = list(range(len(self._owners), len(self._owners) + len(rec.templates)))
            self._owners.extend([rec.subject_id] * len(rec.templates))
        self._matrix = (np.concatenate([r.templates for _, r in recs]) if recs else np.zeros((0, 1), np.float32))
        self._used = len(self._owners)

    def _drop(self, key: str) -> None:
        for row in self._rows_of.pop(key, []):
            self._owners[row] = None
            self._matrix[row] = 0.0
        self._entries.pop(key, None)

    def apply_upsert(self, key: str, record: SubjectRecord, seq: int) -> None:
        with self._lock:
            self._drop(key)
            n = len(record.templates)
            if self._used == 0:
                self._matrix = np.zeros((max(64, n), record.templates.shape[1]), np.float32)
            while self._used + n > len(self._matrix):
                self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
            self._matrix[self._used:self._used + n] = record.templates
            self._rows_of[key] = list(range(self._used, self._used + n))
            self._owners.extend([record.subject_id] * n)
            self._used += n
            self._entries[key] = record
            self._seq = max(self._seq, seq)

    def apply_delete(self, key: str, seq: int) -> None:
        with self._lock:
            self._drop(key)
            self._seq = max(self._seq, seq)

    def replace_all(self, entries: Sequence[tuple[str, SubjectRecord]], seq: int) -> None:
        with self._lock:
            self._load(dict(entries))
            self._seq = seq
            self.replacements += 1

    def stored_seq(self) -> int:
        with self._lock:
            return self._seq

    def snapshot(self) -> dict[str, SubjectRecord]:
        with self._lock:
            return dict(self._entries)

    def search(self, vector: np.ndarray) -> str | None:
        """The subject whose best template is closest to `vector` (cosine), or None if empty."""
        with self._lock:
            if not self._entries:
                return None
            scores = self._matrix[:self._used] @ np.asarray(vector, np.float32)
            best = int(np.argmax(scores))
            if self._owners[best] is None:  # a deleted row (zeroed) won over negative scores
                scores[[i for i, o in enumerate(self._owners) if o is None]] = -np.inf
                best = int(np.argmax(scores))
            return self._owners[best]


class SqliteAuditLog:
    """A hash-chained audit log in SQLite with the AuditSource methods the uploader uses."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        conn = self._conn()
        conn.execute("CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, prev TEXT NOT NULL, "
                     "hash TEXT NOT NULL, body TEXT NOT NULL, acked INTEGER NOT NULL DEFAULT 0)")
        conn.execute("CREATE INDEX IF NOT EXISTS audit_unacked ON audit(acked, seq)")
        conn.execute("CREATE TABLE IF NOT EXISTS chain (id INTEGER PRIMARY KEY, epoch TEXT, parent TEXT, "
                     "base_seq INTEGER, base_hash TEXT, created TEXT, nonce TEXT, public_key TEXT)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def append_many(self, bodies: Sequence[dict]) -> list[AuditRow]:
        conn = self._conn()
        rows = []
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0], last[1]) if last else (0, GENESIS_HASH)
            for body in bodies:
                seq += 1
                ts = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                digest = record_hash(seq, ts, prev, body)
                conn.execute("INSERT INTO audit(seq, ts, prev, hash, body) VALUES (?,?,?,?,?)",
                             (seq, ts, prev, digest, json.dumps(body)))
                rows.append(AuditRow(seq, ts, prev, digest, body))
                prev = digest
            conn.execute("COMMIT")
        return rows

    def append(self, body: dict) -> AuditRow:
        return self.append_many([body])[0]

    def read_unsent(self, limit: int) -> list[AuditRow]:
        return [AuditRow(s, t, p, h, json.loads(b)) for s, t, p, h, b in self._conn().execute(
            "SELECT seq, ts, prev, hash, body FROM audit WHERE acked = 0 ORDER BY seq LIMIT ?", (limit,))]

    def mark_acked(self, upto_seq: int) -> None:
        with self._write_lock:
            self._conn().execute("UPDATE audit SET acked = 1 WHERE seq <= ? AND acked = 0", (upto_seq,))

    def unsent_count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM audit WHERE acked = 0").fetchone()[0])

    def last_seq(self) -> int:
        return int(self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0])

    def link_at(self, seq: int) -> str | None:
        if seq == 0:
            return GENESIS_HASH
        row = self._conn().execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def chain_epoch(self) -> ChainEpoch:
        row = self._conn().execute("SELECT epoch, parent, base_seq, base_hash, created, nonce, public_key "
                                   "FROM chain WHERE id = 1").fetchone()
        return ChainEpoch(*row) if row else ChainEpoch()

    def start_epoch(self, chain: ChainEpoch) -> None:
        with self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT OR REPLACE INTO chain VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                         (chain.epoch, chain.parent, chain.base_seq, chain.base_hash, chain.created, chain.nonce,
                          chain.public_key))
            conn.execute("UPDATE audit SET acked = 0 WHERE seq > ?", (chain.base_seq,))
            conn.execute("COMMIT")

    def all_rows(self) -> list[AuditRow]:
        return [AuditRow(s, t, p, h, json.loads(b)) for s, t, p, h, b in self._conn().execute(
            "SELECT seq, ts, prev, hash, body FROM audit ORDER BY seq")]


def free_base_port(count: int = 4) -> int:
    """A base port P with P..P+count-1 all free on loopback right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                held.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no run of free ports found")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def in_days(days: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=days)


class Deployment:
    """Keys, a central database and configs for one central and any number of gates."""

    def __init__(self, root: Path, database: str | None = None, fast: bool = True):
        """`database`: the central's store (a SQLite path or a PostgreSQL URL, the
        `central_database` fixture); a SQLite file in `root` when not given."""
        self.root = Path(root)
        self.keys = self.root / "keys"
        self.database = database or str(self.root / "central.db")
        self.db_path = None if self.database.startswith("postgresql") or "dbname=" in self.database \
            else Path(self.database)
        self.base_port = free_base_port()
        central_files = generate_keypair_files(self.keys, "central")
        self.central_secret = central_files.secret
        self.central_public = central_files.public
        self.fast = fast

    def central_config(self, **overrides) -> CentralConfig:
        # The database's default template key, the one `Central(self.database)` in the tests uses
        # (a production config keeps it beside secret_key_file: tests/test_central_seal.py).
        values = dict(database=self.database, base_port=self.base_port, bind_host="127.0.0.1",
                      secret_key_file=self.central_secret, heartbeat_s=0.1, log_poll_s=0.02,
                      template_key_file=default_template_key_file(self.database),
                      gate_silent_after_s=1.0, snapshot_send_timeout_s=2.0, expiry_check_s=0.2)
        values.update(overrides)
        return CentralConfig(**values)

    def central_toml(self, **overrides) -> Path:
        cfg = self.central_config(**overrides)
        lines = ["[central]"]
        for name, value in cfg.__dict__.items():
            if value is None:
                continue
            lines.append(f"{name} = {json.dumps(str(value) if isinstance(value, Path) else value)}")
        path = self.root / "central.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def add_gate(self, gate_id: str, scopes: Sequence[str], register: bool = True) -> Path:
        files = generate_keypair_files(self.keys, f"gate-{gate_id}")
        if register:
            central = Central(self.database)
            central.register_gate(gate_id, load_public_key(files.public), scopes)
            central.close()
        return files.secret

    def add_admin(self, name: str) -> Path:
        files = generate_keypair_files(self.keys, f"admin-{name}")
        central = Central(self.database)
        central.register_admin(name, load_public_key(files.public))
        central.close()
        return files.secret

    def agent_config(self, gate_id: str, secret: Path, scopes: Sequence[str], **overrides) -> AgentConfig:
        from sync.scopes import parse_scope

        values = dict(gate_id=gate_id, central_host="127.0.0.1", base_port=self.base_port,
                      scopes=tuple(sorted(parse_scope(s) for s in scopes)), accepted_models=frozenset({MODEL}),
                      secret_key_file=secret, central_public_key_file=self.central_public,
                      heartbeat_timeout_s=0.6, snapshot_idle_timeout_s=0.8, reply_timeout_s=0.4,
                      request_retries=2, retry_backoff_max_s=0.4, audit_batch_rows=200, audit_idle_poll_s=0.05,
                      health_interval_s=0.2, head_grace_s=0.5)
        values.update(overrides)
        return AgentConfig(**values)


class FakeService:
    """The central's audit/health port on real CURVE sockets, answering each request with
    `reply_to(request)`: a Reply, or None to leave it unanswered (the gate's Lazy Pirate client
    then times out). For what a real central never says: a lost reply, a lie, a refusal."""

    def __init__(self, dep: "Deployment", reply_to: Callable[[object], Reply | None]):
        self.ctx = zmq.Context()
        self.sock = bind_socket(self.ctx, zmq.ROUTER, Security(keypair=load_keypair(dep.central_secret)),
                                "127.0.0.1", dep.base_port + SERVICE_OFFSET, 1 << 23)
        self._reply_to = reply_to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, empty, payload = self.sock.recv_multipart()
            reply = self._reply_to(decode_request(payload))
            if reply is not None:
                self.sock.send_multipart([ident, empty, encode_reply(reply)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close(0)
        self.ctx.term()


def _run_gate_process(spec_path: str) -> None:
    """Host one gate agent until killed; spec is JSON written by the test."""
    import logging

    from sync.agent import GateAgent

    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gate %(levelname)s %(name)s: %(message)s")
    cfg = AgentConfig(
        gate_id=spec["gate_id"], central_host="127.0.0.1", base_port=spec["base_port"], scopes=tuple(spec["scopes"]),
        accepted_models=frozenset({MODEL}), secret_key_file=Path(spec["secret"]),
        central_public_key_file=Path(spec["central_public"]), heartbeat_timeout_s=0.6, reply_timeout_s=0.5,
        request_retries=2, retry_backoff_max_s=0.3, audit_batch_rows=spec["batch"], audit_idle_poll_s=0.05,
        health_interval_s=0.3)
    if spec.get("state_dir"):  # the gate's own audit log in a state directory
        from gate.audit import AuditLog

        audit = AuditLog(Path(spec["state_dir"]))
    else:
        audit = SqliteAuditLog(Path(spec["audit_db"]))
    agent = GateAgent(cfg, MemoryWatchlist(), audit,
                      lambda: {"status": "ok", "software_version": "test", "model_versions": {MODEL: "1"}},
                      on_audit_alarm=lambda kind, details: audit.append({"event": "audit_chain_alarm", "kind": kind}))
    agent.start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    _run_gate_process(sys.argv[1])
