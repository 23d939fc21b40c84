"""The sync benchmark runs end to end at a small size and reports nothing lost or doubled.
(Speed targets are checked by `gate-bench sync`, never here.)"""
from __future__ import annotations

from sync.bench import TARGETS, sync_bench
from tests.sync_helpers import MemoryWatchlist, SqliteAuditLog


def _audit(folder):
    log = SqliteAuditLog(folder / "audit.db")
    return log, log.append_many


def test_sync_bench_small_run_reports_every_metric(tmp_path):
    result = sync_bench(lambda folder: MemoryWatchlist(), lambda sink, sid, v: sink.search(v) == sid, _audit,
                        subjects=500, dim=32, updates=3, audit_events=2500, outage_events=400, workdir=tmp_path)
    # more records than the bench's 1000-row batch: the drain rate is timed from the first ack to the last
    for key in TARGETS:
        assert result[key] > 0
    assert result["outage_drain_s"] > 0
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["audit_chain_ok"]
    assert result["subjects"] == 500 and result["outage_events"] == 400
