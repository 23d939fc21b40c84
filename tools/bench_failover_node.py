"""`gate-bench failover`, part 1: kill -9 one central node while a fleet of gates runs traffic.

Two `gate-central` processes (node-a, node-b) on one PostgreSQL database; `gates` real gate
agents (each with its three sync threads, its own CURVE key, a watchlist and a SQLite audit log)
list both nodes, node-a first. A writer enrols a subject every 100 ms and every gate writes audit
records all along. node-a is killed with SIGKILL; measured per gate:

  updates_resume_s   kill -> the gate's matcher has the first enrolment committed after the kill
  audit_resume_s     kill -> the first audit acknowledgement after the kill
  snapshots_forced   snapshots taken because of the move (should be 0: the gate catches up)
  lost, duplicated   audit records missing at / repeated by the central once drained (must be 0)

Gate settings are the shipped defaults (heartbeat timeout 2.5 s against HUGZ every 1 s; Lazy
Pirate 3 tries of 2.5 s), so the figures are what a site would see.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from sync.agent import GateAgent
from sync.audit_chain import verify_chain
from sync.central import Central
from sync.central_seal import default_template_key_file
from sync.config import AgentConfig, CentralConfig
from sync.keys import generate_keypair_files, load_public_key

MODEL = "bench-model"
SCOPE = "lane:FLEET"
TARGETS = {"updates_resume_s_median": 3.0, "updates_resume_s_worst": 10.0}
REPO = Path(__file__).resolve().parents[1]


def _unit(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"failover bench: {what} did not happen within {timeout:.0f}s")
        time.sleep(0.02)


def start_node(cfg: CentralConfig, folder: Path) -> subprocess.Popen:
    """A `gate-central` process for one node, with its own config file."""
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items() if v is not None}
    toml = folder / f"{cfg.node_name}.toml"
    toml.write_text("[central]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    log = folder / f"{cfg.node_name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "tools.gate_central", "--config", str(toml)], cwd=REPO,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    _wait(lambda: "central serving" in log.read_text(errors="replace") or proc.poll() is not None, 60,
          f"{cfg.node_name} start")
    if proc.poll() is not None:
        raise RuntimeError(f"{cfg.node_name} exited: {log.read_text()[-500:]}")
    return proc


class _Gate:
    def __init__(self, agent: GateAgent, sink, audit):
        self.agent, self.sink, self.audit = agent, sink, audit


def node_failover_bench(gates: int = 50, progress: Callable[[str], None] = lambda _: None,
                        settle_s: float = 60.0) -> dict:
    import logging

    from sync.bench import _free_base_port
    from sync.central_migrate import migrate_schema
    from sync.central_pg import close_pools
    from tools.gate_bench import gate_side_factories
    from tools.pg_cluster import create_database, temp_cluster

    logging.getLogger("sync").setLevel(logging.ERROR)  # every gate's "moving to" line would flood the table
    with tempfile.TemporaryDirectory(prefix="edgegate-failover-bench-") as tmp:
        root = Path(tmp)
        progress("starting a durable PostgreSQL cluster and two central nodes")
        cluster = temp_cluster(fast=False)
        procs: dict[str, subprocess.Popen] = {}
        fleet: list[_Gate] = []
        try:
            dsn = create_database(cluster.dsn(), "edgegate_failover")
            migrate_schema(dsn)
            keys = root / "keys"
            central_keys = generate_keypair_files(keys, "central")
            central = Central(dsn)
            rng = np.random.default_rng(0)
            from sync.central import Enrolment

            central.enrol_new_subjects([Enrolment(f"s{i:05d}", "allow", [SCOPE], None, None, MODEL, v[None])
                                         for i, v in enumerate(_unit(rng, 2000))])
            ports = {"node-a": _free_base_port(), "node-b": _free_base_port()}
            for node, port in ports.items():
                procs[node] = start_node(CentralConfig(database=dsn, base_port=port, bind_host="127.0.0.1",
                                                       secret_key_file=central_keys.secret, node_name=node,
                                                       template_key_file=default_template_key_file(dsn)), root)
            endpoints = tuple(f"tcp://127.0.0.1:{ports[n]}" for n in ("node-a", "node-b"))
            sink_factory, probe, audit_factory = gate_side_factories(model_id=MODEL)
            progress(f"starting {gates} gates following {SCOPE} through node-a (node-b second)")
            for g in range(gates):
                gid = f"FG{g:03d}"
                files = generate_keypair_files(keys, f"gate-{gid}")
                central.register_gate(gid, load_public_key(files.public), [SCOPE])
                folder = root / gid
                folder.mkdir()
                cfg = AgentConfig(gate_id=gid, central_host="127.0.0.1", base_port=ports["node-a"],
                                  central=endpoints, scopes=("/lane/FLEET/",), accepted_models=frozenset({MODEL}),
                                  secret_key_file=files.secret, central_public_key_file=central_keys.public)
                sink = sink_factory(folder)
                audit, _ = audit_factory(folder)
                agent = GateAgent(cfg, sink, audit, lambda: {"status": "ok", "software_version": "bench",
                                                              "model_versions": {MODEL: "1"}})
                agent.start()
                fleet.append(_Gate(agent, sink, audit))
            _wait(lambda: all(g.agent.status().watchlist.state == "live" and
                              g.agent.status().watchlist.central.endswith(str(ports["node-a"])) for g in fleet),
                  180, "every gate live on node-a")

            stop = threading.Event()
            written_after_kill: list[tuple[str, np.ndarray]] = []

            def audit_traffic() -> None:
                while not stop.is_set():
                    for g in fleet:
                        for _ in range(2):
                            g.audit.append({"event": "decision", "outcome": "allow"})
                        g.agent.notify_audit()
                    stop.wait(0.5)

            def enrolments(after: threading.Event) -> None:
                writer = Central(dsn)
                k = 0
                while not stop.is_set():
                    sid, vec = f"u{k:05d}", _unit(rng, 1)
                    writer.enrol_subject(sid, "allow", [SCOPE], None, None, MODEL, vec)
                    if after.is_set():
                        written_after_kill.append((sid, vec[0]))
                    k += 1
                    stop.wait(0.1)
                writer.close()

            killed = threading.Event()
            threads = [threading.Thread(target=audit_traffic, daemon=True),
                       threading.Thread(target=enrolments, args=(killed,), daemon=True)]
            for t in threads:
                t.start()
            time.sleep(3.0)
            acks_before = [g.agent.status().audit.batches for g in fleet]
            snapshots_before = [g.agent.status().watchlist.snapshots for g in fleet]
            progress("kill -9 node-a")
            procs["node-a"].kill()
            t_kill = time.monotonic()
            killed.set()
            procs["node-a"].wait()
            update_resume: list[float | None] = [None] * len(fleet)
            audit_resume: list[float | None] = [None] * len(fleet)
            deadline = t_kill + settle_s
            while time.monotonic() < deadline and (None in update_resume or None in audit_resume):
                first_after = written_after_kill[0] if written_after_kill else None
                now = time.monotonic()
                for i, g in enumerate(fleet):
                    if update_resume[i] is None and first_after and probe(g.sink, *first_after):
                        update_resume[i] = now - t_kill
                    if audit_resume[i] is None and g.agent.status().audit.batches > acks_before[i] + 1:
                        audit_resume[i] = now - t_kill
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join(10)
            progress("draining audit and checking every record at the central")
            _wait(lambda: all(g.audit.unsent_count() == 0 for g in fleet), 120, "the audit drain")
            lost = duplicated = 0
            chains_ok = True
            for i, g in enumerate(fleet):
                gid = f"FG{i:03d}"
                held = list(central.audit.rows(gid))
                seqs = [r.seq for r in held]
                duplicated += len(seqs) - len(set(seqs))
                lost += g.audit.last_seq() - len(set(seqs) & set(range(1, g.audit.last_seq() + 1)))
                chains_ok &= verify_chain(held).ok
            snapshots_forced = sum(g.agent.status().watchlist.snapshots - b
                                   for g, b in zip(fleet, snapshots_before, strict=True))
            resumes = sum(g.agent.status().watchlist.resumes for g in fleet)
            central.close()
        finally:
            for g in fleet:
                g.agent.stop(timeout=2)
            for p in procs.values():
                p.kill()
                p.wait()
            close_pools()
            cluster.remove()

    def stats(xs: list[float | None]) -> dict:
        got = [x for x in xs if x is not None]
        return {"median": round(statistics.median(got), 2) if got else None,
                "worst": round(max(got), 2) if got else None, "never": len(xs) - len(got)}

    return {"gates": gates, "updates_resume_s": stats(update_resume), "audit_resume_s": stats(audit_resume),
            "snapshots_forced": snapshots_forced, "catch_ups": resumes, "lost": lost, "duplicated": duplicated,
            "chains_ok": chains_ok, "targets": TARGETS}
