"""`gate-bench sync`: the sync path measured end to end on loopback with CURVE.

The central runs in its own process (as in production it runs on its own machine), the gate
agent in this one with whatever watchlist store and audit log the caller provides, so the
numbers include the gate's real storage work:

  snapshot_100k_s          central -> gate: snapshot served, decoded, stored, searchable
  update_latency_ms_median central change committed -> subject findable at the gate
  audit_events_per_s       a backlog of audit records uploaded, first ack to last
  outage_drain_s           central restarted -> all records queued during its outage acked
  lost, duplicated         audit records missing at / repeated by the central (must be 0)
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import socket
import statistics
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Callable

import numpy as np

from sync.agent import GateAgent
from sync.audit_chain import verify_chain
from sync.central import Central, Enrolment
from sync.central_seal import default_template_key_file
from sync.config import AgentConfig, CentralConfig
from sync.interfaces import AuditSource, WatchlistSink
from sync.keys import generate_keypair_files, load_public_key

log = logging.getLogger(__name__)

TARGETS = {"snapshot_100k_s": 10.0, "update_latency_ms_median": 100.0, "audit_events_per_s": 5000.0}
BENCH_MODEL = "bench-model"
BENCH_SCOPE = "lane:BENCH"

# Builds the gate's watchlist store in a folder.
SinkFactory = Callable[[Path], WatchlistSink]
# True once `subject_id` is found by the gate's matcher when searching with `vector`.
Probe = Callable[[WatchlistSink, str, np.ndarray], bool]
# Builds the gate's audit log in a folder: the source the uploader reads, and a writer that
# appends a list of record bodies (as the gate's decision loop would).
AuditFactory = Callable[[Path], tuple[AuditSource, Callable[[list[dict]], object]]]


def _free_base_port(count: int = 4) -> int:
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no run of free loopback ports found")


def _serve_central(config: CentralConfig) -> None:
    from sync.central_server import run_central

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s central %(levelname)s %(name)s: %(message)s")
    run_central(config)


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.001) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"sync bench: {what} did not happen within {timeout:.0f}s")
        time.sleep(interval)
    return time.perf_counter() - start


class _CentralProcess:
    def __init__(self, config: CentralConfig):
        self._config = config
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None

    def start(self) -> None:
        self._proc = self._ctx.Process(target=_serve_central, args=(self._config,), daemon=True)
        self._proc.start()

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._proc = None


def sync_bench(sink_factory: SinkFactory, probe: Probe, audit_factory: AuditFactory, *,
               subjects: int = 100_000, dim: int = 128, updates: int = 30, audit_events: int = 20_000,
               outage_events: int = 10_000, workdir: Path | None = None, timeout_s: float = 300.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgegate-sync-bench-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        return _run(root, sink_factory, probe, audit_factory, subjects, dim, updates, audit_events, outage_events,
                    timeout_s)


def _run(root: Path, sink_factory: SinkFactory, probe: Probe, audit_factory: AuditFactory, subjects: int, dim: int,
         updates: int, audit_events: int, outage_events: int, timeout_s: float) -> dict:
    rng = np.random.default_rng(20)
    keys = root / "keys"
    central_keys = generate_keypair_files(keys, "central", overwrite=True)
    gate_keys = generate_keypair_files(keys, "gate-bench", overwrite=True)
    db_path = root / "central.db"
    central = Central(db_path)
    central.register_gate("bench", load_public_key(gate_keys.public), [BENCH_SCOPE])

    started = time.perf_counter()
    vectors = _unit_rows(rng, subjects, dim)
    for lo in range(0, subjects, 5000):
        central.enrol_subjects([Enrolment(f"s{i:07d}", "allow", [BENCH_SCOPE], None, None, BENCH_MODEL,
                                            vectors[i:i + 1]) for i in range(lo, min(lo + 5000, subjects))])
    enrol_s = time.perf_counter() - started

    base_port = _free_base_port()
    central_cfg = CentralConfig(db_path=db_path, base_port=base_port, bind_host="127.0.0.1",
                                secret_key_file=central_keys.secret,
                                template_key_file=default_template_key_file(db_path))  # Central(db_path)'s
    agent_cfg = AgentConfig(gate_id="bench", central_host="127.0.0.1", base_port=base_port,
                            scopes=("/lane/BENCH/",), accepted_models=frozenset({BENCH_MODEL}),
                            secret_key_file=gate_keys.secret, central_public_key_file=central_keys.public,
                            # The central's outages below are audit outages only (nothing changes
                            # in the watchlist meanwhile): a long heartbeat timeout keeps the
                            # follower from re-snapshotting and muddying the audit figures.
                            heartbeat_timeout_s=600.0, reply_timeout_s=1.0, retry_backoff_max_s=1.0,
                            audit_batch_rows=1000, audit_idle_poll_s=0.05, health_interval_s=1.0)
    (root / "gate").mkdir(exist_ok=True)
    sink = sink_factory(root / "gate")
    source, append = audit_factory(root / "gate")
    server = _CentralProcess(central_cfg)
    server.start()
    agent = GateAgent(agent_cfg, sink, source, lambda: {"status": "ok", "software_version": "bench",
                                                         "model_versions": {BENCH_MODEL: "1"}})
    try:
        # Snapshot: from the agent's start to a random enrolled subject being found.
        target = int(rng.integers(subjects))
        t0 = time.perf_counter()
        agent.start()
        _wait(lambda: agent.status().watchlist.snapshots >= 1, timeout_s, "the snapshot", 0.005)
        _wait(lambda: probe(sink, f"s{target:07d}", vectors[target]), timeout_s, "search after the snapshot")
        snapshot_s = time.perf_counter() - t0

        # Update latency: one enrolment at a time, from commit to findable.
        latencies = []
        for i in range(updates):
            v = _unit_rows(rng, 1, dim)
            sid = f"u{i:05d}"
            time.sleep(float(rng.uniform(0.0, 0.05)))  # changes arrive at random moments, not in step
            t0 = time.perf_counter()
            central.enrol_subject(sid, "allow", [BENCH_SCOPE], None, None, BENCH_MODEL, v)
            _wait(functools.partial(probe, sink, sid, v[0]), 30, f"update {sid}")
            latencies.append((time.perf_counter() - t0) * 1000)

        def write(n: int) -> None:
            for lo in range(0, n, 100):
                append([{"event": "decision", "outcome": "allow", "score": 0.91, "n": lo + k}
                        for k in range(min(100, n - lo))])
                agent.notify_audit()

        def outage(n: int) -> None:
            """The central dies, the gate keeps deciding, and notices; the central comes back."""
            timeouts_before = agent.status().audit.timeouts
            server.kill()
            write(n)
            _wait(lambda: agent.status().audit.timeouts > timeouts_before, 60, "the gate noticing the outage", 0.01)
            server.start()

        # Sustained upload: a backlog drained at full speed, timed from the first ack to the
        # last, so the gate's own write speed does not enter the figure.
        outage(audit_events)
        batches_before = agent.status().audit.batches
        _wait(lambda: agent.status().audit.batches > batches_before, timeout_s, "the first audit ack", 0.002)
        t0, backlog = time.perf_counter(), source.unsent_count()
        _wait(lambda: source.unsent_count() == 0, timeout_s, "the audit upload", 0.005)
        audit_rate = backlog / max(time.perf_counter() - t0, 1e-6)

        # Outage drain: from the central's restart until every queued record is acked.
        outage(outage_events)
        t0 = time.perf_counter()
        _wait(lambda: source.unsent_count() == 0, timeout_s, "the outage drain", 0.005)
        drain_s = time.perf_counter() - t0
    finally:
        agent.stop()
        server.kill()

    written = source.last_seq()
    rows = list(central.audit.rows("bench"))
    distinct = len({r.seq for r in rows})
    result = {
        "snapshot_100k_s": round(snapshot_s, 3),
        "update_latency_ms_median": round(statistics.median(latencies), 2) if latencies else None,
        "update_latency_ms_p95": round(float(np.percentile(latencies, 95)), 2) if latencies else None,
        "audit_events_per_s": round(audit_rate, 1),
        "outage_drain_s": round(drain_s, 3),
        "lost": written - len({r.seq for r in rows if 1 <= r.seq <= written}),
        "duplicated": len(rows) - distinct,
        "audit_chain_ok": verify_chain(rows).ok,
        "subjects": subjects, "dim": dim, "updates": updates, "audit_events": audit_events,
        "outage_events": outage_events, "central_enrol_s": round(enrol_s, 2), "targets": TARGETS,
    }
    central.close()
    return result
