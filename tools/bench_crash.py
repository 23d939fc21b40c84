"""`gate-bench crash`: kill -9 the gate and the central at random moments during traffic, many
times over, then check that nothing acknowledged was lost or doubled and nothing is corrupt.

Two real processes on loopback with CURVE: the central (`python -m tools.gate_central`) and a
gate side (this module run as `python -m tools.bench_crash gate SPEC`) that appends audit
records through the real AuditLog and runs the real GateAgent into the real WatchlistStore.
Meanwhile this process enrols and revokes subjects in the central's database, as an admin
tool would, so the watchlist keeps moving while the central comes and goes.

Each cycle lets traffic flow for a random short time, SIGKILLs one of the two (chosen at
random) and restarts it. Afterwards appends stop, the gate drains, and:

  lost        records the gate had marked acknowledged that the central does not hold
  duplicated  (gate, seq) rows the central holds more than once
  mismatched  records whose hash at the central differs from the gate's
  chain_ok    the gate's chain (AuditLog.verify) and the central's copy (verify_chain) verify
  integrity_ok  PRAGMA integrity_check is "ok" on every SQLite file
  watchlist_converged  the gate's store sequence equals the central's head for its scope,
              and both hold the same active subjects
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
GATE_ID = "CRASH1"
SCOPE = "lane:CRASH"
SUBTREE = "/lane/CRASH/"
MODEL = "crash-model"
DIM = 16
_STOP_APPENDING = "stop-appending"


@dataclass(frozen=True)
class GateSpec:
    """What the gate-side process needs, written as JSON by the driver."""
    gate_dir: str
    base_port: int
    secret_key_file: str
    central_public_key_file: str
    append_interval_s: float

    def agent_config(self):
        from sync.config import AgentConfig

        # Short timeouts so a restarted central is noticed within a cycle.
        return AgentConfig(
            gate_id=GATE_ID, central_host="127.0.0.1", base_port=self.base_port, scopes=(SUBTREE,),
            accepted_models=frozenset({MODEL}), secret_key_file=Path(self.secret_key_file),
            central_public_key_file=Path(self.central_public_key_file), heartbeat_timeout_s=0.6,
            snapshot_idle_timeout_s=1.0, reply_timeout_s=0.4, request_retries=2, retry_backoff_max_s=0.3,
            audit_batch_rows=200, audit_idle_poll_s=0.05, health_interval_s=0.2, head_grace_s=0.5)


def run_gate_side(spec_path: Path) -> None:
    """The gate-side process: append decisions to the audit log until told to stop appending,
    keep syncing until SIGTERM (or until killed)."""
    from gate.audit import AuditLog
    from gate.watchlist import WatchlistStore
    from gate.watchlist_sync import WatchlistSyncSink
    from sync.agent import GateAgent

    spec = GateSpec(**json.loads(Path(spec_path).read_text()))
    gate_dir = Path(spec.gate_dir)
    audit = AuditLog(gate_dir)
    store = WatchlistStore(gate_dir)
    agent = GateAgent(spec.agent_config(), WatchlistSyncSink(store), audit,
                      lambda: {"status": "ok", "software_version": "crash-bench", "model_versions": {MODEL: "1"}})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent.start()
    n = 0
    while not stop.is_set():
        if (gate_dir / _STOP_APPENDING).exists():
            stop.wait(0.05)
            continue
        n += 1
        audit.append({"event": "decision", "outcome": "allow" if n % 3 else "deny", "score": 0.9, "n": n,
                      "pid": os.getpid()})
        agent.notify_audit()
        stop.wait(spec.append_interval_s)
    agent.stop()
    audit.close()
    store.close()


class _Process:
    """One restartable child process, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name = name
        self._argv = argv
        self._log_path = log_path
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(self._log_path, "ab") as out:
            self._proc = subprocess.Popen(self._argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill9(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0fs of SIGTERM; killing it", self.name, timeout)
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait(predicate: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"crash bench: {what} did not happen within {timeout:.0f}s\n{logs()}")
        time.sleep(0.01)
    return time.monotonic() - start


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _integrity_ok(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


class _WatchlistTraffic:
    """Enrols and revokes subjects in the central's database on a thread, as an admin tool
    would; the central process (when alive) publishes whatever it finds in the change log."""

    def __init__(self, db_path: Path, rng: random.Random):
        self._db_path = db_path
        self._rng = rng
        self._np_rng = np.random.default_rng(rng.randrange(2**32))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crash-bench-traffic", daemon=True)
        self.enrolled = 0
        self.revoked = 0
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop and join (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        from sync.central import Central

        central = Central(self._db_path)
        active: list[str] = []
        try:
            while not self._stop.wait(self._rng.uniform(0.01, 0.05)):
                if active and self._rng.random() < 0.25:
                    central.revoke(active.pop(self._rng.randrange(len(active))), reason="crash bench")
                    self.revoked += 1
                else:
                    sid = f"p-{self.enrolled:06d}"
                    v = self._np_rng.standard_normal((1, DIM)).astype(np.float32)
                    central.enrol_subject(sid, "allow", [SCOPE], None, None, MODEL, v / np.linalg.norm(v))
                    active.append(sid)
                    self.enrolled += 1
        except BaseException as exc:  # reported by stop(), in the driver's thread
            self.error = exc
        finally:
            central.close()


def _central_toml(root: Path, db_path: Path, base_port: int, secret: Path) -> Path:
    from sync.central_seal import default_template_key_file

    values = {"db_path": str(db_path), "base_port": base_port, "bind_host": "127.0.0.1",
              "secret_key_file": str(secret), "heartbeat_s": 0.1, "log_poll_s": 0.02, "gate_silent_after_s": 5.0,
              "snapshot_send_timeout_s": 2.0, "expiry_check_s": 0.5,
              "template_key_file": str(default_template_key_file(db_path))}  # what Central(db_path) uses
    path = root / "central.toml"
    path.write_text("[central]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def crash_bench(cycles: int = 100, *, seed: int = 0, workdir: Path | None = None, min_traffic_s: float = 0.15,
                max_traffic_s: float = 0.6, append_interval_s: float = 0.004, settle_timeout_s: float = 60.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgegate-crash-bench-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        return _run(root, cycles, random.Random(seed), min_traffic_s, max_traffic_s, append_interval_s,
                    settle_timeout_s)


def _run(root: Path, cycles: int, rng: random.Random, min_traffic_s: float, max_traffic_s: float,
         append_interval_s: float, settle_timeout_s: float) -> dict:
    from gate.audit import AuditLog
    from sync.audit_chain import verify_chain
    from sync.bench import _free_base_port
    from sync.central import Central
    from sync.keys import generate_keypair_files, load_public_key
    from sync.transport import SERVICE_OFFSET

    keys = generate_keypair_files(root / "keys", "central", overwrite=True)
    gate_keys = generate_keypair_files(root / "keys", "gate-crash", overwrite=True)
    db_path = root / "central.db"
    central = Central(db_path)
    central.register_gate(GATE_ID, load_public_key(gate_keys.public), [SCOPE])
    central.close()
    base_port = _free_base_port()
    gate_dir = root / "gate"
    gate_dir.mkdir(exist_ok=True)
    spec_path = root / "gate-spec.json"
    spec_path.write_text(json.dumps(GateSpec(str(gate_dir), base_port, str(gate_keys.secret), str(keys.public),
                                             append_interval_s).__dict__))
    central_proc = _Process("central", [sys.executable, "-m", "tools.gate_central", "--config",
                                        str(_central_toml(root, db_path, base_port, keys.secret))],
                            root / "central.log")
    gate_proc = _Process("gate", [sys.executable, "-m", "tools.bench_crash", "gate", str(spec_path)], root / "gate.log")

    def logs() -> str:
        return f"--- central log ---\n{central_proc.log_tail()}\n--- gate log ---\n{gate_proc.log_tail()}"

    def start_central() -> float:
        central_proc.start()
        return _wait(lambda: _port_open(base_port + SERVICE_OFFSET), 30, "the central to listen", logs)

    readers: list[AuditLog] = []  # the gate's audit log, read-only, once the gate has created it

    def appended_past(seq: int) -> bool:
        if not readers:
            try:
                readers.append(AuditLog(gate_dir, read_only=True))
            except (OSError, ValueError, sqlite3.Error):  # not created yet
                return False
        return readers[0].last_seq() > seq

    def start_gate() -> float:
        before = readers[0].last_seq() if readers else 0
        gate_proc.start()
        return _wait(lambda: appended_past(before), 30, "the gate to append", logs)

    traffic = _WatchlistTraffic(db_path, rng)
    kills = {"gate": 0, "central": 0}
    restart_s: dict[str, list[float]] = {"gate": [], "central": []}
    acked_at_kill: list[int] = []
    started = time.monotonic()
    try:
        start_central()
        start_gate()
        audit_reader = readers[0]
        traffic.start()
        for _ in range(cycles):
            time.sleep(rng.uniform(min_traffic_s, max_traffic_s))
            victim = rng.choice(("gate", "central"))
            acked_at_kill.append(audit_reader.acked_seq())
            (gate_proc if victim == "gate" else central_proc).kill9()
            kills[victim] += 1
            restart_s[victim].append(start_gate() if victim == "gate" else start_central())
        traffic.stop()
        if traffic.error is not None:
            raise RuntimeError("crash bench: enrolling at the central failed") from traffic.error
        (gate_dir / _STOP_APPENDING).touch()
        settle_started = time.monotonic()
        _wait(lambda: audit_reader.unsent_count() == 0, settle_timeout_s, "the gate's audit drain", logs)
        drain_s = time.monotonic() - settle_started
        converged = _converge(db_path, gate_dir, settle_timeout_s)
        converge_s = time.monotonic() - settle_started
        gate_exit, central_exit = gate_proc.stop(), central_proc.stop()
    finally:
        for proc in (gate_proc, central_proc):
            if proc.alive():
                proc.kill9()
        traffic.stop()

    acked = audit_reader.acked_seq()
    gate_check = audit_reader.verify()
    gate_rows = {r.seq: r.hash for r in audit_reader.iter_since(0)}
    appended = audit_reader.last_seq()
    audit_reader.close()
    central = Central(db_path)
    try:
        counts = dict(central.conn.execute("SELECT seq, COUNT(*) FROM audit WHERE gate_id = ? GROUP BY seq",
                                           (GATE_ID,)).fetchall())
        central_hashes = dict(central.conn.execute("SELECT seq, hash FROM audit WHERE gate_id = ?", (GATE_ID,)))
        central_check = verify_chain(central.audit.rows(GATE_ID))
    finally:
        central.close()
    files = [db_path, gate_dir / "audit.db", gate_dir / "watchlist.db"]
    integrity = {f.name if f.parent == root else f"gate/{f.name}": _integrity_ok(f) for f in files}
    return {
        "cycles": cycles, "kills_gate": kills["gate"], "kills_central": kills["central"],
        "appended": appended, "acked": acked, "acked_at_kill_max": max(acked_at_kill, default=0),
        "lost": sum(1 for seq in range(1, acked + 1) if seq not in counts),
        "duplicated": sum(n - 1 for n in counts.values() if n > 1),
        "mismatched": sum(1 for seq, h in central_hashes.items() if gate_rows.get(seq) not in (None, h)),
        "central_records": sum(counts.values()),
        "gate_chain_ok": gate_check.ok, "central_chain_ok": central_check.ok,
        "chain_ok": gate_check.ok and central_check.ok,
        "integrity": integrity, "integrity_ok": all(integrity.values()),
        "watchlist_converged": converged["converged"], "watchlist_seq": converged["store_seq"],
        "central_scope_seq": converged["central_seq"], "watchlist_subjects": converged["store_subjects"],
        "central_subjects": converged["central_subjects"],
        "enrolled": traffic.enrolled, "revoked": traffic.revoked,
        "restart_gate_s_median": round(statistics.median(restart_s["gate"]), 3) if restart_s["gate"] else None,
        "restart_central_s_median": (round(statistics.median(restart_s["central"]), 3)
                                     if restart_s["central"] else None),
        "drain_s": round(drain_s, 3), "converge_s": round(converge_s, 3),
        "clean_exit": gate_exit == 0 and central_exit == 0,
        "seconds": round(time.monotonic() - started, 1),
    }


def _converge(db_path: Path, gate_dir: Path, timeout: float) -> dict:
    """Wait until the gate's watchlist equals the central's scope: same sequence, same active
    subjects. Returns the last observed state either way (the caller reports it)."""
    from gate.watchlist import WatchlistStore
    from sync.central import Central

    central = Central(db_path)
    store = WatchlistStore(gate_dir, read_only=True)
    state: dict = {}
    try:
        deadline = time.monotonic() + timeout
        while True:
            central_seq = central.hashmap.scope_heads([SUBTREE])[SUBTREE]
            central_subjects = {s.subject_id for s in central.list_subjects(SCOPE, "active")}
            store_seq = store.sequence()
            store_subjects = {s.subject_id for s in store.iter_active(datetime.now(timezone.utc), MODEL)}
            done = store_seq == central_seq and store_subjects == central_subjects
            state = {"converged": done, "store_seq": store_seq, "central_seq": central_seq,
                     "store_subjects": len(store_subjects), "central_subjects": len(central_subjects)}
            if done or time.monotonic() > deadline:
                return state
            time.sleep(0.05)
    finally:
        store.close()
        central.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "gate":
        sys.exit("usage: python -m tools.bench_crash gate SPEC.json (started by gate-bench crash)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s gate %(levelname)s %(name)s: %(message)s")
    run_gate_side(Path(sys.argv[2]))
