"""`gate-bench central` runs end to end on both stores at a small size and reports every figure
(the figures themselves live in the README, measured at full size, never asserted here)."""
from __future__ import annotations

from tools.bench_central import central_bench, format_table


def test_central_bench_small_run_reports_every_metric_on_both_stores():
    r = central_bench(subjects=3000, scope_size=1000, updates=3, gates=6, records=120, batch=50)
    assert [s["store"] for s in r["stores"]] == ["sqlite", "postgresql"]
    for s in r["stores"]:
        assert s["lost"] == 0 and s["duplicated"] == 0 and s["chains_ok"]
        assert s["audit_records"] == 720 and s["audit_records_per_s"] > 0
        assert s["load_s"] > 0 and s["db_mb"] > 0 and s["update_ms_median"] > 0
    assert set(r["stores"][1]["snapshot_s"]) == {"node-a", "node-b"}
    table = format_table(r)
    assert "snapshot via node-b" in table and "postgresql (2 nodes)" in table
