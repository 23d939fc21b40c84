"""What sealing templates at rest costs the central (sync.central_seal), measured, not guessed.

    python -m tools.bench_seal [--subjects 100000] [--dim 128] [--database DSN_OR_FILE] [--json]

- bulk import: `enrol_new_subjects` of N one-template subjects in one scope (the path
  `gate-bench central` times), and the sealing inside it measured alone: one template seal and
  one body seal per subject, in µs, and what that comes to for 1M subjects;
- snapshot: the central's snapshot read of the scope (`Hashmap.snapshot`, what the snapshot
  thread streams to a gate) against the same rows read without opening them; the difference per
  row is the cost of opening a body, and the open alone is timed on the stored blobs too.

A SQLite file in a temporary folder unless --database names a (migrated, empty) PostgreSQL one.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sync.central import Central, Enrolment
from sync.subject_record import SubjectRecord, encode_record

MODEL = "bench-seal"
SCOPE = "lane:SEAL"
SUBTREE = "/lane/SEAL/"


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run(subjects: int, dim: int, database: str | None = None) -> dict:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, subjects, dim)
    with tempfile.TemporaryDirectory(prefix="bench-seal-") as tmp:
        db = database or str(Path(tmp) / "central.db")
        central = Central(db)
        cipher = central.cipher
        started = time.perf_counter()
        for lo in range(0, subjects, 50_000):
            central.enrol_new_subjects([Enrolment(f"s{i:07d}", "allow", [SCOPE], None, None, MODEL, vectors[i:i + 1])
                                         for i in range(lo, min(lo + 50_000, subjects))])
        import_s = time.perf_counter() - started

        # the sealing inside that import, alone: the same work on the same data
        sample = min(subjects, 100_000)
        blocks = [vectors[i].astype("<f4").tobytes() for i in range(sample)]
        bodies = [encode_record(SubjectRecord(f"s{i:07d}", "allow", MODEL, vectors[i:i + 1])) for i in range(sample)]
        t0 = time.perf_counter()
        for i, b in enumerate(blocks):
            cipher.seal(b, f"s{i:07d}", MODEL)
        seal_template_us = (time.perf_counter() - t0) / sample * 1e6
        t0 = time.perf_counter()
        sealed = [cipher.seal_record(b, SUBTREE + f"s{i:07d}", i + 1) for i, b in enumerate(bodies)]
        seal_body_us = (time.perf_counter() - t0) / sample * 1e6
        t0 = time.perf_counter()
        for i, b in enumerate(sealed):
            cipher.open_record(b, SUBTREE + f"s{i:07d}", i + 1)
        open_body_us = (time.perf_counter() - t0) / sample * 1e6

        # the snapshot read, opened (as served) and raw (what it cost before sealing)
        def snapshot_opened() -> int:
            with central.hashmap.snapshot(SUBTREE) as (_, msgs):
                return sum(1 for _ in msgs)

        def snapshot_raw() -> int:
            from sync.kvmsg import KVMsg

            with central.db.read_snapshot():
                rows = central.db.stream("SELECT key, seq, body FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                                         (SUBTREE, SUBTREE[:-1] + "0"))
                return sum(1 for k, s, b in rows if KVMsg(key=k, seq=s, body=bytes(b)))

        timings: dict[str, list[float]] = {"opened": [], "raw": []}
        for _ in range(3):  # interleaved, best of three: the machine is shared
            for name, fn in (("raw", snapshot_raw), ("opened", snapshot_opened)):
                t0 = time.perf_counter()
                n = fn()
                timings[name].append(time.perf_counter() - t0)
                assert n == subjects, (name, n)
        central.close()
    raw_s, opened_s = min(timings["raw"]), min(timings["opened"])
    return {
        "subjects": subjects, "dim": dim, "store": "postgresql" if database else "sqlite",
        "bulk_import_s": round(import_s, 2),
        "seal_template_us": round(seal_template_us, 2), "seal_body_us": round(seal_body_us, 2),
        "sealing_for_1M_subjects_s": round(seal_template_us + seal_body_us, 2),  # µs each x 1e6 subjects = s
        "open_body_us": round(open_body_us, 2),
        "snapshot_read_raw_s": round(raw_s, 3), "snapshot_read_opened_s": round(opened_s, 3),
        "snapshot_open_cost_us_per_body": round((opened_s - raw_s) / subjects * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_seal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--database", help="a migrated, empty PostgreSQL central (default: a temporary SQLite file)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args.subjects, args.dim, args.database)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:34s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
