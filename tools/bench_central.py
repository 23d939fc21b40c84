"""`gate-bench central`: the SQLite central and a 2-node PostgreSQL central, side by side in one run.

For each store, on this machine, with the central nodes in their own processes and gates on
real CURVE sockets:

  load_s, db_mb            N subjects (128-d) bulk-imported (`Central.enrol_new_subjects`), and
                           the database's size on disk afterwards
  snapshot_s[node]         one scope of `scope_size` subjects: agent start -> a random subject
                           findable in the gate's real watchlist store and matcher, through each node
  update_ms_median/p95     an enrolment committed by a writer (as an enrolment station on another
                           node would) -> findable at a gate following the *other* node
  audit_records_per_s      `gates` simulated gates uploading chained audit batches at once, spread
                           over the nodes: records stored / wall time
  lost, duplicated, chains every record checked at the central afterwards (must be 0, 0, ok)

PostgreSQL runs durable here (fsync and synchronous_commit on, as in production); the SQLite
central is synchronous=FULL. Both share the machine's 2 cores with the gates' side.
"""
from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

from sync.agent import GateAgent
from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash, verify_chain
from sync.central import Central, Enrolment
from sync.central_seal import default_template_key_file
from sync.config import AgentConfig, CentralConfig
from sync.keys import generate_keypair_files, load_keypair, load_public_key
from sync.service_messages import AuditBatch, decode_reply, encode_audit_batch
from sync.transport import SERVICE_OFFSET, Security, connect_socket

MODEL = "bench-model"
TARGETS = {"snapshot_s": 10.0, "update_ms_median": 100.0, "audit_records_per_s": 10_000.0}
Progress = Callable[[str], None]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _wait(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.002) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"central bench: {what} did not happen within {timeout:.0f}s")
        time.sleep(interval)
    return time.perf_counter() - t0


def _scope(i: int, scope_size: int) -> str:
    return f"lane:BENCH-{i // scope_size}"


def _load(database: str, subjects: int, scope_size: int, dim: int, progress: Progress) -> float:
    rng = np.random.default_rng(1)
    central = Central(database)
    t0 = time.perf_counter()
    chunk = 20_000
    for lo in range(0, subjects, chunk):
        hi = min(lo + chunk, subjects)
        vectors = _unit(rng, hi - lo, dim)
        central.enrol_new_subjects([Enrolment(f"s{i:07d}", "allow", [_scope(i, scope_size)], None, None, MODEL,
                                                vectors[i - lo:i - lo + 1]) for i in range(lo, hi)])
        progress(f"loaded {hi:,}/{subjects:,} subjects")
    elapsed = time.perf_counter() - t0
    central.close()
    return elapsed


def _db_mb(database: str, sqlite_path: Path | None) -> float:
    if sqlite_path is not None:
        return sum(p.stat().st_size for p in (sqlite_path, sqlite_path.with_name(sqlite_path.name + "-wal"))
                   if p.exists()) / 2**20
    central = Central(database)
    size = central.conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    central.close()
    return size / 2**20


def _chains(gates: int, records: int) -> dict[str, list[AuditRow]]:
    t0 = dt.datetime.now(dt.timezone.utc)
    out = {}
    for g in range(gates):
        prev, rows = GENESIS_HASH, []
        for seq in range(1, records + 1):
            ts = (t0 + dt.timedelta(milliseconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = {"event": "decision", "outcome": "allow", "score": 0.93, "lane": f"L{g}"}
            digest = record_hash(seq, ts, prev, body)
            rows.append(AuditRow(seq, ts, prev, digest, body))
            prev = digest
        out[f"AG{g:03d}"] = rows
    return out


def _audit_ingest(chains: dict[str, list[AuditRow]], secrets: dict[str, Path], central_public: Path,
                  ports: list[int], batch: int, timeout_s: float) -> float:
    """Every gate sends its chain batch after batch (the next once the previous is acked), all
    gates at once, over DEALER sockets in one poller (a gate's REQ/REP exchange on the wire)."""
    ctx = zmq.Context()
    server_public = load_public_key(central_public)
    socks, pending = {}, {}
    try:
        for i, (gate, rows) in enumerate(chains.items()):
            security = Security(keypair=load_keypair(secrets[gate]), server_public=server_public)
            s = connect_socket(ctx, zmq.DEALER, security, "127.0.0.1", ports[i % len(ports)] + SERVICE_OFFSET, 1 << 24)
            socks[s] = gate
            pending[gate] = [encode_audit_batch(AuditBatch(gate, k, tuple(rows[lo:lo + batch])))
                             for k, lo in enumerate(range(0, len(rows), batch), start=1)]
        time.sleep(1.0)  # CURVE handshakes done before the clock starts
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        t0 = time.perf_counter()
        for s, gate in socks.items():
            s.send_multipart([b"", pending[gate][0]])
        left = len(socks)
        while left:
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError("central bench: audit ingest did not finish")
            for s, _ in poller.poll(1000):
                gate = socks[s]
                _, reply = s.recv_multipart()
                r = decode_reply(reply)
                if r.ok:
                    pending[gate].pop(0)
                if pending[gate]:
                    s.send_multipart([b"", pending[gate][0]])  # next batch, or the same again if refused
                else:
                    left -= 1
        return time.perf_counter() - t0
    finally:
        ctx.destroy(0)


def _bench_store(name: str, database: str, sqlite_path: Path | None, nodes: int, root: Path, *, subjects: int,
                 scope_size: int, updates: int, gates: int, records: int, batch: int, dim: int,
                 progress: Progress, timeout_s: float) -> dict:
    from sync.bench import _CentralProcess, _free_base_port
    from tools.gate_bench import gate_side_factories

    progress(f"{name}: bulk import of {subjects:,} subjects")
    load_s = _load(database, subjects, scope_size, dim, progress)
    db_mb = _db_mb(database, sqlite_path)

    keys = root / "keys"
    central_keys = generate_keypair_files(keys, "central", overwrite=True)
    central = Central(database)
    gate_secrets = {}
    for gate in ["bench-gate", *[f"AG{g:03d}" for g in range(gates)]]:
        files = generate_keypair_files(keys, f"gate-{gate}", overwrite=True)
        central.register_gate(gate, load_public_key(files.public), [_scope(0, scope_size)])
        gate_secrets[gate] = files.secret
    ports = []
    servers = []
    for n in range(nodes):
        port = _free_base_port()
        cfg = CentralConfig(database=database, base_port=port, bind_host="127.0.0.1",
                            secret_key_file=central_keys.secret, node_name=f"node-{chr(97 + n)}",
                            template_key_file=default_template_key_file(database))  # what Central(database) uses
        srv = _CentralProcess(cfg)
        srv.start()
        servers.append(srv)
        ports.append(port)
    sink_factory, probe, audit_factory = gate_side_factories(dim=dim, model_id=MODEL)
    rng = np.random.default_rng(5)
    result: dict = {"store": name, "nodes": nodes, "load_s": round(load_s, 2), "db_mb": round(db_mb, 1),
                    "snapshot_s": {}}
    try:
        time.sleep(1.0)
        scope0 = ["/lane/BENCH-0/"]
        target = int(rng.integers(min(scope_size, subjects)))
        target_vec = np.random.default_rng(1)  # regenerate the target's vector as the load did
        vectors = _unit(target_vec, min(20_000, subjects), dim)
        if target >= len(vectors):
            target = int(rng.integers(len(vectors)))
        agents = []
        for n, port in enumerate(ports):
            node = f"node-{chr(97 + n)}"
            progress(f"{name}: snapshot of {min(scope_size, subjects):,} subjects through {node}")
            folder = root / f"gate-{node}"
            folder.mkdir(parents=True, exist_ok=True)
            sink = sink_factory(folder)
            source, _ = audit_factory(folder)
            cfg = AgentConfig(gate_id="bench-gate", central_host="127.0.0.1", base_port=port, scopes=tuple(scope0),
                              accepted_models=frozenset({MODEL}), secret_key_file=gate_secrets["bench-gate"],
                              central_public_key_file=central_keys.public, heartbeat_timeout_s=600.0,
                              reply_timeout_s=2.0, health_interval_s=1.0)
            agent = GateAgent(cfg, sink, source, lambda: {"status": "ok", "software_version": "bench",
                                                           "model_versions": {MODEL: "1"}})
            t0 = time.perf_counter()
            agent.start()
            _wait(lambda agent=agent: agent.status().watchlist.snapshots >= 1, timeout_s, "the snapshot", 0.005)
            _wait(lambda sink=sink: probe(sink, f"s{target:07d}", vectors[target]), timeout_s,
                  "search after the snapshot")
            result["snapshot_s"][node] = round(time.perf_counter() - t0, 2)
            agents.append((agent, sink))

        # Updates: written straight into the database (as another node's enrolment station
        # would), followed by a gate on the last node.
        progress(f"{name}: {updates} updates, central change -> gate matcher")
        agent, sink = agents[-1]
        latencies = []
        for i in range(updates):
            v = _unit(rng, 1, dim)
            sid = f"u{i:05d}"
            time.sleep(float(rng.uniform(0.0, 0.05)))
            t0 = time.perf_counter()
            central.enrol_subject(sid, "allow", ["lane:BENCH-0"], None, None, MODEL, v)
            _wait(lambda sid=sid, v=v: probe(sink, sid, v[0]), 30, f"update {sid}")
            latencies.append((time.perf_counter() - t0) * 1000)
        for agent, _ in agents:
            agent.stop()
        result["update_ms_median"] = round(statistics.median(latencies), 1)
        result["update_ms_p95"] = round(float(np.percentile(latencies, 95)), 1)

        progress(f"{name}: audit ingest from {gates} gates x {records} records")
        chains = _chains(gates, records)
        elapsed = _audit_ingest(chains, gate_secrets, central_keys.public, ports, batch, timeout_s)
        total = gates * records
        result["audit_records"] = total
        result["audit_records_per_s"] = round(total / elapsed, 0)
        lost = duplicated = 0
        chains_ok = True
        for gate, rows in chains.items():
            held = list(central.audit.rows(gate))
            seqs = [r.seq for r in held]
            duplicated += len(seqs) - len(set(seqs))
            lost += len({r.seq for r in rows} - set(seqs))
            chains_ok &= verify_chain(held).ok and [r.hash for r in held] == [r.hash for r in rows]
        result.update(lost=lost, duplicated=duplicated, chains_ok=chains_ok)
    finally:
        for srv in servers:
            srv.kill()
        central.close()
    return result


def central_bench(*, subjects: int = 1_000_000, scope_size: int = 100_000, updates: int = 30, gates: int = 200,
                  records: int = 1000, batch: int = 500, dim: int = 128,
                  stores: tuple[str, ...] = ("sqlite", "postgresql"),
                  progress: Progress = lambda _: None, timeout_s: float = 600.0) -> dict:
    from tools.pg_cluster import create_database, temp_cluster

    results = []
    with tempfile.TemporaryDirectory(prefix="edgegate-central-bench-") as tmp:
        root = Path(tmp)
        if "sqlite" in stores:
            path = root / "sqlite" / "central.db"
            path.parent.mkdir()
            results.append(_bench_store("sqlite", str(path), path, 1, root / "sqlite", subjects=subjects,
                                        scope_size=scope_size, updates=updates, gates=gates, records=records,
                                        batch=batch, dim=dim, progress=progress, timeout_s=timeout_s))
        if "postgresql" in stores:
            progress("postgresql: starting a durable throwaway cluster (fsync on)")
            cluster = temp_cluster(fast=False)
            try:
                dsn = create_database(cluster.dsn(), "edgegate_bench")
                from sync.central_migrate import migrate_schema

                migrate_schema(dsn)
                results.append(_bench_store("postgresql", dsn, None, 2, root / "pg", subjects=subjects,
                                            scope_size=scope_size, updates=updates, gates=gates, records=records,
                                            batch=batch, dim=dim, progress=progress, timeout_s=timeout_s))
            finally:
                from sync.central_pg import close_pools

                close_pools()
                cluster.remove()
    return {"subjects": subjects, "scope_size": scope_size, "gates": gates, "records_per_gate": records,
            "dim": dim, "targets": TARGETS, "stores": results}


def format_table(r: dict) -> str:
    stores = r["stores"]
    lines = [f"{r['subjects']:,} subjects x {r['dim']}-d; snapshot scope {r['scope_size']:,}; "
             f"{r['gates']} gates x {r['records_per_gate']:,} audit records"]
    header = ["metric"] + [f"{s['store']} ({s['nodes']} node{'s' if s['nodes'] > 1 else ''})" for s in stores]
    rows = [
        ["bulk import (s)"] + [f"{s['load_s']:.1f}" for s in stores],
        ["database size (MB)"] + [f"{s['db_mb']:.0f}" for s in stores],
    ]
    nodes = sorted({n for s in stores for n in s["snapshot_s"]})
    for n in nodes:
        rows.append([f"snapshot via {n} (s, target <= 10)"] + [str(s["snapshot_s"].get(n, "-")) for s in stores])
    rows += [
        ["update latency median (ms, target <= 100)"] + [f"{s['update_ms_median']:.1f}" for s in stores],
        ["update latency p95 (ms)"] + [f"{s['update_ms_p95']:.1f}" for s in stores],
        ["audit ingest (records/s, target >= 10,000)"] + [f"{s['audit_records_per_s']:,.0f}" for s in stores],
        ["audit lost / duplicated"] + [f"{s['lost']} / {s['duplicated']}" for s in stores],
        ["audit chains verify"] + ["yes" if s["chains_ok"] else "NO" for s in stores],
    ]
    if len(stores) == 2 and stores[0]["audit_records_per_s"]:
        ratio = stores[1]["audit_records_per_s"] / stores[0]["audit_records_per_s"]
        rows.append(["ingest ratio postgresql / sqlite", "", f"{ratio:.2f}x"])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join(lines + [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])
