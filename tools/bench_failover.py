"""`gate-bench failover`, the database part: kill -9 the PostgreSQL primary during audit traffic
from many simulated gates, promote the synchronous standby, and measure how the central rides it.

On this machine: a primary + synchronous hot standby (`tools/pg_cluster.replicated_pair`, fsync
on), two `gate-central` nodes in their own processes on the libpq multi-host string, and `gates`
simulated gates on real CURVE sockets (DEALER, one poller: a gate's REQ/REP exchange on the
wire), each uploading its own hash chain batch after batch, the next once the previous is acked,
the same batch again after an error reply or `reply_timeout_s` of silence (Lazy Pirate).

  promote_s               SIGKILL of the primary -> `pg_ctl promote` returned (Patroni's part
                          in production, where it takes the leader key's ttl)
  resume_s median/worst   SIGKILL -> first audit ack after it, per gate
  after_promote_s         the same from the promotion: the central's own share of the outage
  lost, duplicated        records a gate saw acked and the central lacks / holds twice (0, 0)
  chains_ok               every gate's chain verifies at the central and equals what it sent
"""
from __future__ import annotations

import datetime as dt
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import zmq

from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash, verify_chain
from sync.central import Central
from sync.central_seal import default_template_key_file
from sync.config import CentralConfig
from sync.keys import generate_keypair_files, load_keypair, load_public_key
from sync.service_messages import AuditBatch, decode_reply, encode_audit_batch
from sync.transport import SERVICE_OFFSET, Security, connect_socket

Progress = Callable[[str], None]
SCOPE = "lane:FAILOVER"


class _Gate:
    """One simulated gate's upload state: its chain, what is acked, the batch in flight."""

    def __init__(self, gate_id: str, batch: int):
        self.gate_id = gate_id
        self.batch = batch
        self.rows: list[AuditRow] = []
        self.acked = 0  # highest seq the central confirmed
        self.ack_times: list[float] = []
        self.in_flight: tuple[int, int, float] | None = None  # (request id, last seq, sent at)
        self.not_before = 0.0  # after an error reply: a short pause before the retry

    def extend(self, n: int) -> None:
        prev = self.rows[-1].hash if self.rows else GENESIS_HASH
        for _ in range(n):
            seq = len(self.rows) + 1
            ts = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = {"event": "decision", "outcome": "allow", "gate": self.gate_id, "n": seq}
            digest = record_hash(seq, ts, prev, body)
            self.rows.append(AuditRow(seq, ts, prev, digest, body))
            prev = digest

    def next_request(self) -> bytes | None:
        rows = self.rows[self.acked:self.acked + self.batch]
        if not rows:
            return None
        request_id = secrets.randbits(63)
        self.in_flight = (request_id, rows[-1].seq, time.monotonic())
        return encode_audit_batch(AuditBatch(self.gate_id, request_id, tuple(rows)))


def _drive(gates: dict[zmq.Socket, _Gate], until: Callable[[], bool], reply_timeout_s: float, produce_every_s: float,
           records_per_tick: int, producing: Callable[[], bool], deadline: float) -> None:
    poller = zmq.Poller()
    for s in gates:
        poller.register(s, zmq.POLLIN)
    next_produce = time.monotonic()
    while not until():
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError("failover bench: the gates did not finish uploading")
        if producing() and now >= next_produce:
            for g in gates.values():
                g.extend(records_per_tick)
            next_produce = now + produce_every_s
        for s, g in gates.items():  # idle gates with records waiting, and timed-out requests
            if (g.in_flight is None and now >= g.not_before) or (
                    g.in_flight is not None and now - g.in_flight[2] > reply_timeout_s):
                payload = g.next_request()
                if payload is not None:
                    s.send_multipart([b"", payload])
        for s, _ in poller.poll(20):
            g = gates[s]
            _, raw = s.recv_multipart()
            reply = decode_reply(raw)
            if g.in_flight is None or reply.request_id != g.in_flight[0]:
                continue  # the answer to a request already given up on
            last = g.in_flight[1]
            g.in_flight = None
            if reply.ok and reply.durable_seq >= last:
                g.acked = last
                g.ack_times.append(time.monotonic())
            else:
                g.not_before = time.monotonic() + 0.1


def db_failover_bench(gates: int = 50, *, batch: int = 20, warmup_s: float = 3.0, after_s: float = 4.0,
                      records_per_tick: int = 2, produce_every_s: float = 0.1, reply_timeout_s: float = 2.0,
                      progress: Progress = lambda _: None, timeout_s: float = 120.0) -> dict:
    from sync.bench import _CentralProcess, _free_base_port
    from sync.central_migrate import migrate_schema
    from sync.central_pg import close_pool
    from tools.pg_cluster import create_database, replicated_pair

    progress("starting a primary + synchronous standby (fsync on)")
    pair = replicated_pair()
    database = pair.multi_host_dsn("edgegate_failover_bench")
    servers: list[_CentralProcess] = []
    ctx = zmq.Context()
    try:
        create_database(pair.primary.dsn(), "edgegate_failover_bench")
        migrate_schema(database)
        with tempfile.TemporaryDirectory(prefix="edgegate-failover-bench-") as tmp:
            keys = Path(tmp) / "keys"
            central_keys = generate_keypair_files(keys, "central", overwrite=True)
            central = Central(database)
            secrets_of = {}
            for g in range(gates):
                files = generate_keypair_files(keys, f"gate-FG{g:03d}", overwrite=True)
                central.register_gate(f"FG{g:03d}", load_public_key(files.public), [SCOPE])
                secrets_of[f"FG{g:03d}"] = files.secret
            central.close()
            ports = []
            for n in range(2):
                port = _free_base_port()
                srv = _CentralProcess(CentralConfig(database=database, base_port=port, bind_host="127.0.0.1",
                                                    secret_key_file=central_keys.secret,
                                                    template_key_file=default_template_key_file(database),
                                                    node_name=f"node-{chr(97 + n)}"))
                srv.start()
                servers.append(srv)
                ports.append(port)
            server_public = load_public_key(central_keys.public)
            socks: dict[zmq.Socket, _Gate] = {}
            for i, (gate_id, secret) in enumerate(secrets_of.items()):
                security = Security(keypair=load_keypair(secret), server_public=server_public)
                s = connect_socket(ctx, zmq.DEALER, security, "127.0.0.1", ports[i % 2] + SERVICE_OFFSET, 1 << 24)
                socks[s] = _Gate(gate_id, batch)
            all_gates = list(socks.values())
            deadline = time.monotonic() + timeout_s

            progress(f"{gates} gates connecting to 2 nodes")
            _drive(socks, lambda: all(g.acked for g in all_gates), reply_timeout_s, produce_every_s,
                   records_per_tick, lambda: True, deadline)
            progress(f"{gates} gates uploading for {warmup_s:.0f}s")
            t0 = time.monotonic()
            _drive(socks, lambda: time.monotonic() - t0 > warmup_s, reply_timeout_s, produce_every_s,
                   records_per_tick, lambda: True, deadline)
            replication = pair.primary.replication_state()
            progress("kill -9 of the primary, then pg_ctl promote of the standby")
            killed_at = time.monotonic()
            pair.primary.kill9()
            pair.standby.promote()
            promoted_at = time.monotonic()
            _drive(socks, lambda: time.monotonic() - promoted_at > after_s, reply_timeout_s, produce_every_s,
                   records_per_tick, lambda: True, deadline)
            progress("traffic stopped; draining every gate's queue")
            _drive(socks, lambda: all(g.acked == len(g.rows) for g in all_gates), reply_timeout_s, produce_every_s,
                   records_per_tick, lambda: False, deadline)

            resume, resume_promoted = [], []
            for g in all_gates:
                after = [t for t in g.ack_times if t > killed_at]
                resume.append(after[0] - killed_at if after else float("inf"))
                resume_promoted.append(max(0.0, resume[-1] - (promoted_at - killed_at)))
            central = Central(database)
            lost = duplicated = 0
            chains_ok = True
            for g in all_gates:
                total, distinct = central.conn.execute(
                    "SELECT COUNT(*), COUNT(DISTINCT seq) FROM audit WHERE gate_id = ?", (g.gate_id,)).fetchone()
                duplicated += int(total) - int(distinct)
                held = list(central.audit.rows(g.gate_id))
                held_seqs = {r.seq for r in held}
                # every record ends acked (the drain), so any one missing is an acked record lost
                lost += sum(1 for r in g.rows if r.seq not in held_seqs)
                chains_ok &= verify_chain(held).ok and [r.hash for r in held] == [r.hash for r in g.rows]
            central.close()
            return {
                "gates": gates, "nodes": 2, "records": sum(len(g.rows) for g in all_gates),
                "replication_before_kill": [list(r) for r in replication],
                "promote_s": round(promoted_at - killed_at, 2),
                "resume_s_median": round(statistics.median(resume), 2), "resume_s_worst": round(max(resume), 2),
                "resume_s_p90": round(sorted(resume)[int(0.9 * (len(resume) - 1))], 2),
                "after_promote_s_median": round(statistics.median(resume_promoted), 2),
                "after_promote_s_worst": round(max(resume_promoted), 2),
                "lost": lost, "duplicated": duplicated, "chains_ok": chains_ok,
            }
    finally:
        ctx.destroy(0)
        for srv in servers:
            srv.kill()
        close_pool(database)
        pair.remove()


def format_table(r: dict) -> str:
    rows = [
        ["gates / central nodes", f"{r['gates']} / {r['nodes']}"],
        ["audit records uploaded", f"{r['records']:,}"],
        ["standby before the kill", ", ".join(f"{a} {s} {m}" for a, s, m in r["replication_before_kill"])],
        ["kill -9 primary -> standby promoted (s)", f"{r['promote_s']:.2f}"],
        ["kill -> audit acks resume, median gate (s)", f"{r['resume_s_median']:.2f}"],
        ["kill -> audit acks resume, worst gate (s)", f"{r['resume_s_worst']:.2f}"],
        ["promoted -> audit acks resume, median / worst (s)",
         f"{r['after_promote_s_median']:.2f} / {r['after_promote_s_worst']:.2f}"],
        ["acked records lost / duplicated (must be 0 / 0)", f"{r['lost']} / {r['duplicated']}"],
        ["audit chains verify", "yes" if r["chains_ok"] else "NO"],
    ]
    width = max(len(a) for a, _ in rows)
    return "\n".join(["PostgreSQL primary failover under audit traffic",
                      *(f"{a.ljust(width)}  {b}" for a, b in rows)])
