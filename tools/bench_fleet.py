"""`gate-bench fleet`: one refresh of the console's fleet view (`console.views.fleet`) at fleet size.

For each gate count and each store (a SQLite file; a throwaway PostgreSQL cluster over
loopback), a central is filled with a fleet that looks like a national one in the ways the
fleet view reads it:

  - gates spread over 20 sites; 9 in 10 are security lanes (one lane scope each), 1 in 10
    boarding gates registered for no scope and assigned a flight of the day (50 flights);
  - two enrolments per scope, so every scope has a head;
  - a health report from every gate but 1 in 50 (never heard from: offline); 1 in 20 reports a
    watchlist sequence from before its scope's changes (behind), 1 in 30 a latched lane alarm;
  - `records` chained audit records per gate; 1 in 25 gates forked its log (a second chain
    epoch with records of its own, the first chain's conflict alarm resolved), 1 in 40 holds an
    unresolved conflict.

Timed: `views.fleet(central, ...)`, the whole refresh as a fleet page asks for it, median and
p95 over `refreshes` runs after one warm-up, plus the number of SQL statements one refresh sends
(`count_statements`: every `execute`/`stream` through the store's connection wrapper); and, in
the same run, one gate's row as its own page and an alarm acknowledgement read it
(`gate_id=`), which used to be the whole refresh filtered afterwards.
PostgreSQL runs with fsync off here (a read benchmark: nothing it times waits for a flush).
"""
from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from sync.audit_chain import GENESIS_HASH, AuditRow, ChainEpoch, record_hash
from sync.central import Central, Enrolment
from sync.central_db import CentralDatabase
from sync.service_messages import HealthReport
from sync.template_crypto import TemplateCipher

MODEL = "bench-model"
SITES = 20
FLIGHTS = 50
Progress = Callable[[str], None]


@contextmanager
def count_statements(db: CentralDatabase) -> Iterator[list[str]]:
    """Every SQL statement sent through `db` inside the block, in order (its text). Works on
    both stores: the parts of a `Central` share this one object, so wrapping its `execute`,
    `executemany` and `stream` sees every statement they send."""
    seen: list[str] = []
    execute, executemany, stream = db.execute, db.executemany, db.stream

    def counted_execute(sql: str, params: Any = ()):
        seen.append(sql)
        return execute(sql, params)

    def counted_executemany(sql: str, rows: Any) -> None:
        seen.append(sql)
        executemany(sql, rows)

    def counted_stream(sql: str, params: Any = (), batch: int = 2000):
        seen.append(sql)
        yield from stream(sql, params, batch)

    for name, fn in (("execute", counted_execute), ("executemany", counted_executemany), ("stream", counted_stream)):
        setattr(db, name, fn)
    try:
        yield seen
    finally:
        for name in ("execute", "executemany", "stream"):
            delattr(db, name)


def _chain(n: int, start_seq: int = 1, prev: str = GENESIS_HASH, tag: str = "") -> list[AuditRow]:
    rows = []
    t0 = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.timezone.utc)
    for i in range(n):
        seq = start_seq + i
        ts = (t0 + dt.timedelta(seconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"event": "decision", "lane": "L", "n": seq, "tag": tag,
                "decision": {"outcome": "allow", "reason": "match", "track_id": seq}}
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return rows


def gate_id(i: int) -> str:
    return f"G{i:05d}"


def fill_fleet(central: Central, gates: int, records: int = 20, now: float | None = None) -> None:
    """Register `gates` gates with the mix described in the module docstring."""
    now = time.time() if now is None else now
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date().isoformat()
    rng = np.random.default_rng(0)
    flights = [f"flight:VN{100 + f}-{today}" for f in range(FLIGHTS)]
    lane_scopes: dict[int, str] = {}
    for i in range(gates):
        if i % 10 == 9:
            central.register_gate(gate_id(i), f"{i:040d}", [])
            central.assign_flights(gate_id(i), [flights[i // 10 % FLIGHTS]])
        else:
            lane_scopes[i] = f"lane:L{i:05d}"
            central.register_gate(gate_id(i), f"{i:040d}", [lane_scopes[i]])
    scopes = sorted(set(lane_scopes.values()) | set(flights[:max(1, min(FLIGHTS, gates // 10))]))
    central.enrol_subjects([Enrolment(f"S{k}-{j}", "allow", [s], None, None, MODEL, _unit(rng))
                            for k, s in enumerate(scopes) for j in range(2)])
    head = central.hashmap.current_seq()
    for i in range(gates):
        g = gate_id(i)
        rows = _chain(records)
        central.audit.store_batch(g, rows, now)
        if i % 25 == 3:  # a forked log: conflict at the end of the first chain, then a second epoch
            central.audit.store_batch(g, _chain(1, records, rows[-2].hash, tag="theirs"), now)
            chain = ChainEpoch.fork(g, f"{i:040d}", "", records - 1, rows[-2].hash,
                                    "2026-12-02T07:00:00.000000Z", f"{i:032x}")
            central.audit.register_epoch(g, chain, f"{i:040d}", now)
            central.audit.store_batch(g, _chain(5, records, rows[-2].hash, tag="second"), now, epoch=chain.epoch)
        elif i % 40 == 7:
            central.audit.store_batch(g, _chain(1, records, rows[-2].hash, tag="theirs"), now)
        if i % 50 == 49:
            continue  # never reported
        extra: dict[str, Any] = {"site": f"S{i % SITES:02d}", "lane": f"L{i:05d}", "faults": [],
                                 "mode": "in_service", "mode_since": now - 3600}
        if i % 30 == 11:
            extra.update(mode="alarm", alarm="tailgating")
        seq = 1 if i % 20 == 5 else head
        central.record_health(HealthReport(g, 1, "ok", "1.0.0", {}, seq, i % 7, None, (), extra))


def _unit(rng: np.random.Generator, dim: int = 128) -> np.ndarray:
    v = rng.standard_normal((1, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _times_ms(call: Callable[[], Any], n: int) -> list[float]:
    """`n` timings of `call` in milliseconds, sorted."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def _time_store(database: str, gates: int, refreshes: int, records: int, progress: Progress) -> dict:
    from console import views

    cipher = TemplateCipher(bytes(32))
    central = Central(database, template_key=cipher)
    try:
        t0 = time.perf_counter()
        fill_fleet(central, gates, records)
        progress(f"{gates} gates filled in {time.perf_counter() - t0:.1f} s")
        with count_statements(central.db) as seen:
            rows = views.fleet(central, 600.0)
        assert len(rows) == gates, (len(rows), gates)
        times = _times_ms(lambda: views.fleet(central, 600.0), refreshes)
        mine = next((r for r in rows[len(rows) // 2:] if r.state == "alarm"), rows[-1])  # a lane in alarm
        page, = views.fleet(central, 600.0, gate_id=mine.gate_id)
        assert page == mine, (page, mine)
        page_times = _times_ms(lambda: views.fleet(central, 600.0, gate_id=mine.gate_id), refreshes)
        return {"gates": gates, "statements": len(seen), "ms_median": round(statistics.median(times), 2),
                "gate_page_ms_median": round(statistics.median(page_times), 2),
                "ms_p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2), "refreshes": refreshes,
                "states": {s: sum(1 for r in rows if r.state == s) for s in views.STATES},
                "behind": sum(1 for r in rows if r.watchlist_behind)}
    finally:
        central.close()


def fleet_bench(gates: tuple[int, ...] = (200, 2000), refreshes: int = 10, records: int = 20,
                stores: tuple[str, ...] = ("sqlite", "postgresql"), progress: Progress = lambda _: None) -> dict:
    from tools.pg_cluster import create_database, temp_cluster

    out: dict[str, list[dict]] = {s: [] for s in stores}
    with tempfile.TemporaryDirectory(prefix="edgegate-fleet-bench-") as tmp:
        if "sqlite" in stores:
            for n in gates:
                progress(f"sqlite: {n} gates")
                out["sqlite"].append(_time_store(str(Path(tmp) / f"central-{n}.db"), n, refreshes, records, progress))
        if "postgresql" in stores:
            progress("postgresql: starting a throwaway cluster")
            cluster = temp_cluster()
            try:
                from sync.central_migrate import migrate_schema
                from sync.central_pg import close_pools

                for n in gates:
                    progress(f"postgresql: {n} gates")
                    dsn = create_database(cluster.dsn(), f"edgegate_fleet_{n}")
                    migrate_schema(dsn)
                    out["postgresql"].append(_time_store(dsn, n, refreshes, records, progress))
            finally:
                close_pools()
                cluster.remove()
    return {"refreshes": refreshes, "records_per_gate": records, "stores": out}


def format_table(r: dict) -> str:
    lines = [f"console.views.fleet(): one refresh, median (p95) over {r['refreshes']} runs; "
             f"{r['records_per_gate']} audit records per gate"]
    stores = list(r["stores"])
    lines.append(f"{'gates':>6}  " + "  ".join(f"{s + ': fleet | one gate page':>52}" for s in stores))
    for i, g in enumerate(x["gates"] for x in r["stores"][stores[0]]):
        cells = []
        for s in stores:
            x = r["stores"][s][i]
            cells.append(f"{x['ms_median']:9.1f} ms ({x['ms_p95']:.1f})  {x['statements']:6d} stmts"
                         f" | {x['gate_page_ms_median']:7.2f} ms")
        lines.append(f"{g:>6}  " + "  ".join(f"{c:>52}" for c in cells))
    return "\n".join(lines)
