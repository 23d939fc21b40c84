"""gate-bench: speed and robustness measurements, printed as tables or one JSON object.

Each subcommand is a thin wrapper over a library function so benchmarks are reproducible from
Python too. Targets live here, never in timed unit tests.
"""
from __future__ import annotations

import argparse
import json
import sys


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=float)
    sys.stdout.write("\n")


def _table(rows: list[tuple[str, str]]) -> None:
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def cmd_vision(args) -> int:
    import os
    import tempfile
    from pathlib import Path

    from tools.bench_vision import vision_bench
    from vision.loading import load_pipeline

    pipe = load_pipeline(Path(args.models), args.detector, args.embedder, flip=not args.no_flip,
                         threads=args.threads, detector_opts={"min_face": args.min_face})
    pad = None
    if args.pad_from:
        from models.provision import provision_minifasnet_pair
        from vision.pad import load_pad

        tmp = Path(tempfile.mkdtemp(prefix="edgegate-pad-"))
        pad = load_pad(provision_minifasnet_pair(Path(args.pad_from), tmp), threads=1)
    images = Path(args.images)
    photos = sorted(images.rglob("*.jpg"))[: max(args.frames, 50)]
    if not photos:
        print(f"gate-bench vision: no .jpg photos under {images}", file=sys.stderr)
        return 2
    r = vision_bench(pipe, photos, n_frames=args.frames, gallery=args.gallery, reference=not args.no_reference,
                     pad=pad)
    r.update({"detector": args.detector, "embedder": args.embedder, "flip": not args.no_flip, "threads": args.threads,
              "pad": bool(pad), "cpu_count": os.cpu_count()})
    if args.json:
        _print_json(r)
        return 0
    print(f"{r['frames']} frames 640x480, one real face each; gallery {r['gallery']}; threads {args.threads}")
    stages = [k[:-10] for k in r if k.endswith("_ms_median") and not k.startswith("reference")]
    rows = [(s, f"median {r[s + '_ms_median']:7.2f} ms   p95 {r[s + '_ms_p95']:7.2f} ms") for s in stages]
    if "reference_frame_ms_median" in r:
        rows.append(("dlib reference", f"median {r['reference_frame_ms_median']:7.2f} ms   "
                                       f"p95 {r['reference_frame_ms_p95']:7.2f} ms"))
        rows.append(("speedup", f"{r['speedup']:.1f}x (reference median / ours, same frames, same run)"))
    _table(rows)
    return 0


def cmd_detect(args) -> int:
    import os
    import tempfile
    from pathlib import Path

    import cv2

    from models.manifest import ModelError, load_model
    from tools.bench_detect import band_detectors, format_bands, lfw_sample, locate_faces, size_bands
    from vision.detect import load_detector

    cv2.setNumThreads(1)  # every detector on one thread, so their times compare
    try:
        parsed = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
        if any(len(s) != 2 or min(s) < 64 for s in parsed):
            raise ValueError(f"--sizes takes WxH frame sizes of at least 64x64, got {' '.join(args.sizes)}")
        sizes = [(s[0], s[1]) for s in parsed]
        with tempfile.TemporaryDirectory(prefix="edgegate-detect-") as tmp:
            dets = band_detectors(Path(args.models), args.detector, Path(args.provision_from)
                                  if args.provision_from else None, args.min_face, Path(tmp))
            locator = load_detector(load_model(Path(args.models), "mtcnn-v1"), min_face=40, threads=1)
            photos = lfw_sample(Path(args.images), args.photos)
            if not photos:
                raise ValueError(f"no .jpg photos in the person folders of {args.images}")
            r = size_bands(dets, locate_faces(photos, locator), sizes, args.min_face, seed=args.seed)
    except (ModelError, ValueError) as e:
        print(f"gate-bench detect: {e}", file=sys.stderr)
        return 2
    r["load_average"] = os.getloadavg()
    if args.json:
        _print_json(r)
    else:
        print(format_bands(r))
    return 0


def cmd_lane(args) -> int:
    import logging
    from pathlib import Path

    from tools.bench_lane import CALIBRATION, DETECTOR, EMBEDDER, format_table, lane_bench
    from vision.calibrate import CalibrationError

    logging.basicConfig(level=logging.ERROR)  # the lanes' alerts are counted in the table, not printed

    pad_from = Path(args.pad_from)
    if not (pad_from / "2.7_80x80_MiniFASNetV2.onnx").is_file():
        print(f"gate-bench lane: no MiniFASNet pair in {pad_from}; give --pad-from FOLDER (liveness ON is "
              "measured as the lane runs in the field)", file=sys.stderr)
        return 2
    models = (args.detector, args.embedder)
    if models != (DETECTOR, EMBEDDER) and args.calibration is None:
        print(f"gate-bench lane: {' + '.join(models)} need their own calibration record (gate-eval calibrate "
              "with these models, as config/calibration-lfw-dev-default.json was made): give --calibration FILE",
              file=sys.stderr)
        return 2
    try:
        r = lane_bench(Path(args.models), Path(args.images), pad_from, enrolled=args.enrolled,
                       strangers=args.strangers, idle_s=args.idle_seconds, takes=args.takes, seed=args.seed,
                       capture_px=args.capture_zone, detector=args.detector, embedder=args.embedder,
                       calibration=Path(args.calibration) if args.calibration else CALIBRATION,
                       min_detector_score=args.min_detector_score, fpir=args.fpir)
    except CalibrationError as e:
        print(f"gate-bench lane: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=2, sort_keys=True, default=float) if args.json else format_table(r))
    return 0


def gate_side_factories(dim: int = 128, model_id: str = "bench-model"):
    """The gate's real watchlist store, matcher and audit log, as the sync benchmark's sink,
    probe and audit source."""
    from gate.audit import AuditLog
    from gate.watchlist import WatchlistStore
    from gate.watchlist_sync import WatchlistSyncSink
    from vision.match import Matcher

    def sink_factory(folder):
        store = WatchlistStore(folder)
        matcher = Matcher(dim, model_id)
        store.set_listener(matcher, model_id)
        sink = WatchlistSyncSink(store)
        sink.matcher = matcher
        return sink

    def probe(sink, subject_id, vector) -> bool:
        found = sink.matcher.search(vector, 1)
        return bool(found) and found[0].subject_id == subject_id

    def audit_factory(folder):
        log = AuditLog(folder)
        return log, lambda bodies: [log.append(b) for b in bodies]

    return sink_factory, probe, audit_factory


def cmd_sync(args) -> int:
    from sync.bench import sync_bench

    r = sync_bench(*gate_side_factories(), subjects=args.subjects, audit_events=args.audit_events,
                   outage_events=args.outage_events)
    if args.json:
        _print_json(r)
    else:
        _table([(k, f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in r.items()])
    return 0


def cmd_central(args) -> int:
    from tools.bench_central import central_bench, format_table

    r = central_bench(subjects=args.subjects, scope_size=args.scope_size, updates=args.updates, gates=args.gates,
                      records=args.records, stores=tuple(args.stores),
                      progress=lambda msg: print(f"[central] {msg}", file=sys.stderr, flush=True))
    if args.json:
        _print_json(r)
    else:
        print(format_table(r))
    return 0


def cmd_fleet(args) -> int:
    import logging

    from tools.bench_fleet import fleet_bench, format_table

    logging.getLogger("sync").setLevel(logging.CRITICAL)  # the fleet's made-up forks and conflicts

    say = lambda msg: print(f"[fleet] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    r = fleet_bench(gates=tuple(args.gates), refreshes=args.refreshes, records=args.records,
                    stores=tuple(args.stores), progress=say)
    if args.json:
        _print_json(r)
    else:
        print(format_table(r))
    return 0


def cmd_failover(args) -> int:
    """Both failovers in one run, one after the other (never concurrently: they share 2 cores):
    a central node killed under a fleet of gates, and the PostgreSQL primary killed under audit
    traffic with its synchronous standby promoted."""
    say = lambda msg: print(f"[failover] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    r: dict = {}
    if "node" in args.parts:
        from tools.bench_failover_node import node_failover_bench

        r["node"] = node_failover_bench(gates=args.gates, progress=say)
    if "database" in args.parts:
        from tools.bench_failover import db_failover_bench

        r["database"] = db_failover_bench(gates=args.gates, progress=say)
    if args.json:
        _print_json(r)
        return 0
    if "node" in r:
        n = r["node"]
        print("Central node failover (kill -9 of node-a)")
        _table([("gates (all on node-a, node-b second)", str(n["gates"])),
                ("kill -9 node-a: updates resume, median s (target <= 3)", str(n["updates_resume_s"]["median"])),
                ("kill -9 node-a: updates resume, worst s (target <= 10)", str(n["updates_resume_s"]["worst"])),
                ("kill -9 node-a: audit acks resume, median s", str(n["audit_resume_s"]["median"])),
                ("kill -9 node-a: audit acks resume, worst s", str(n["audit_resume_s"]["worst"])),
                ("gates that never resumed", str(n["updates_resume_s"]["never"])),
                ("snapshots forced by the move (should be 0)", str(n["snapshots_forced"])),
                ("audit lost / duplicated", f"{n['lost']} / {n['duplicated']}"),
                ("audit chains verify", "yes" if n["chains_ok"] else "NO")])
    if "database" in r:
        from tools.bench_failover import format_table

        if "node" in r:
            print()
        print(format_table(r["database"]))
    return 0


def cmd_fuzz(args) -> int:
    from sync.fuzz import run_fuzz

    r = run_fuzz(frames=args.frames, seed=args.seed).as_dict()
    if args.json:
        _print_json(r)
    else:
        _table([(k, str(r[k])) for k in ("frames", "accepted", "rejected", "crashes", "roundtrip_failures",
                                         "frames_per_s", "seconds")])
        print()
        _table([(reason, str(n)) for reason, n in r["rejected_by_reason"].items()])
        for finding in r["findings"]:
            print(f"FINDING {finding['kind']} in {finding['target']} ({finding['mutation']}, "
                  f"seed {args.seed} index {finding['index']}): {finding['error']}")
    return 0 if r["crashes"] == 0 and r["roundtrip_failures"] == 0 else 1


def cmd_crash(args) -> int:
    from tools.bench_crash import crash_bench

    r = crash_bench(cycles=args.cycles, seed=args.seed)
    if args.json:
        _print_json(r)
    else:
        _table([(k, str(v)) for k, v in r.items()])
    ok = (r["lost"] == 0 and r["duplicated"] == 0 and r["mismatched"] == 0 and r["chain_ok"] and r["integrity_ok"]
          and r["watchlist_converged"])
    return 0 if ok else 1


def cmd_kiosk(args) -> int:
    from pathlib import Path

    from tools.bench_kiosk import kiosk_bench

    r = kiosk_bench(Path(args.models), Path(args.images), travellers=args.travellers, fps=args.fps,
                    pad_from=Path(args.pad_from) if args.pad_from else None, frames_needed=args.frames_needed)
    if args.json:
        _print_json(r)
        return 0
    print(f"{r['travellers']} travellers, camera {r['fps']:g} fps, {r['frames_needed']} good frames per decision, "
          f"PAD {'on' if r['pad'] else 'off'}, 1:1 threshold {r['threshold_1to1']}; outcomes {r['outcomes']}")
    _table([("first face -> enrolment acknowledged", f"median {r['face_to_ack_s_median']:.2f} s   "
                                                     f"p95 {r['face_to_ack_s_p95']:.2f} s   (n={r['timed']})"),
            ("first face -> security lane can match", f"median {r['face_to_lane_match_s_median']:.2f} s   "
                                                      f"p95 {r['face_to_lane_match_s_p95']:.2f} s")])
    return 0 if r["timed"] else 1


def build_parser() -> argparse.ArgumentParser:
    from models.registry import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
    from tools.gate_models import default_model_dir

    p = argparse.ArgumentParser(prog="gate-bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("vision", help="per-stage latency on 640x480 frames, side by side with dlib's pipeline")
    s.add_argument("--images", default="../shared/faces/lfw-dev/images", help="folder of face photos (.jpg)")
    s.add_argument("--models", default=str(default_model_dir()))
    s.add_argument("--detector", default=DEFAULT_DETECTOR)
    s.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    s.add_argument("--no-flip", action="store_true")
    s.add_argument("--min-face", type=int, default=60)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--frames", type=int, default=100)
    s.add_argument("--gallery", type=int, default=10_000)
    s.add_argument("--pad-from", help="folder with the MiniFASNet pair (e.g. ../shared/models) to time PAD too")
    s.add_argument("--no-reference", action="store_true", help="skip the dlib reference pipeline")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_vision)
    s = sub.add_parser("detect", help="recall per face-size band (small, normal, close, very close) for every "
                                      "detector side by side on the same LFW-derived frames")
    s.add_argument("--images", default="../shared/faces/lfw-dev/images", help="LFW-layout folder (one per person)")
    s.add_argument("--models", default=str(default_model_dir()), help="detectors: every detector manifest here")
    s.add_argument("--detector", action="append", help="only these detector names from --models (repeatable)")
    s.add_argument("--provision-from", default="../shared/models",
                   help="also provision SCRFD-500M and YuNet from this folder when their files are there "
                        "('' to skip)")
    s.add_argument("--photos", type=int, default=100, help="LFW photos (each shown once per band and size)")
    s.add_argument("--sizes", nargs="+", default=["640x480", "480x640"],
                   help="frame sizes WxH: a gate camera, a kiosk camera upright")
    s.add_argument("--min-face", type=float, default=60.0, help="every detector's min_face; the small band is "
                                                                "1-1.5x this")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_detect)
    s = sub.add_parser("lane", help="the real daemon on a 15 fps feed of passengers, liveness on and off: pass "
                                    "rates, transaction time, throughput, false opens, idle CPU")
    s.add_argument("--pad-from", default="../shared/models", help="folder with the MiniFASNet pair (liveness ON)")
    s.add_argument("--images", default="../shared/faces/lfw-dev/images")
    s.add_argument("--models", default=str(default_model_dir()))
    s.add_argument("--enrolled", type=int, default=30, help="genuine travellers (30: one miss is 3.3 %%, "
                                                           "so a 95 %% rate means at most one)")
    s.add_argument("--strangers", type=int, default=10)
    s.add_argument("--idle-seconds", type=float, default=10.0)
    s.add_argument("--takes", type=int, default=3, help="photos per passenger: each prompt to look at the camera "
                                                        "shows the next (1 = a passenger who can only move)")
    s.add_argument("--seed", type=int, default=3, help="which passengers, in which order, how they move")
    s.add_argument("--capture-zone", type=float, default=150.0,
                   help="lane.tracking.capture_min_face_px (the feed's mark gives ~205-px faces)")
    s.add_argument("--detector", default="mtcnn-v1", help="detector name in --models (e.g. a provisioned scrfd-500m)")
    s.add_argument("--embedder", default="dlib-resnet-v1",
                   help="embedder name in --models (e.g. a provisioned mobilefacenet)")
    s.add_argument("--calibration", help="calibration record of --detector + --embedder (gate-eval calibrate); "
                                         "threshold_1n is its 1:1 point at FAR 1e-3 and min_margin the default's "
                                         "0.03 carried to its score scale (tools.bench_lane.scaled_margin); default: "
                                         "config/calibration-lfw-dev-default.json, for the default models")
    s.add_argument("--fpir", type=float, help="threshold_1n from the calibration record's 1:N point at this FPIR "
                                              "(default: its 1:1 point at FAR 1e-3)")
    s.add_argument("--min-detector-score", type=float,
                   help="quality.min_detector_score on --detector's confidence scale (default 0.8, set for MTCNN, "
                        "below its lowest LFW face 0.821; SCRFD-500M's lowest is 0.675: give 0.6)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_lane)
    s = sub.add_parser("sync", help="central -> gate snapshot and update latency, audit upload rate, outage drain")
    s.add_argument("--subjects", type=int, default=100_000)
    s.add_argument("--audit-events", type=int, default=20_000)
    s.add_argument("--outage-events", type=int, default=10_000)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sync)
    s = sub.add_parser("central", help="SQLite central vs a 2-node PostgreSQL central: bulk import, snapshot per node, "
                                       "update latency, audit ingest from many gates")
    s.add_argument("--subjects", type=int, default=1_000_000)
    s.add_argument("--scope-size", type=int, default=100_000, help="subjects in the scope a gate snapshots")
    s.add_argument("--updates", type=int, default=30)
    s.add_argument("--gates", type=int, default=200)
    s.add_argument("--records", type=int, default=1000, help="audit records per simulated gate")
    s.add_argument("--stores", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_central)
    s = sub.add_parser("fleet", help="one refresh of the console's fleet view (console.views.fleet) per fleet size, "
                                     "SQLite and PostgreSQL side by side: time and SQL statements")
    s.add_argument("--gates", type=int, nargs="+", default=[200, 2000])
    s.add_argument("--refreshes", type=int, default=10, help="timed refreshes per fleet size (after one warm-up)")
    s.add_argument("--records", type=int, default=20, help="audit records per gate")
    s.add_argument("--stores", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_fleet)
    s = sub.add_parser("failover", help="kill -9 a central node under a fleet of gates: time until updates and "
                                        "audit acks resume, snapshots forced, records lost")
    s.add_argument("--gates", type=int, default=50)
    s.add_argument("--parts", nargs="+", choices=["node", "database"], default=["node", "database"],
                   help="node: kill -9 of a central node; database: kill -9 of the PostgreSQL primary")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_failover)
    s = sub.add_parser("fuzz", help="mutated and random frames through every sync decoder: crashes (must be 0), "
                                    "rejections by reason")
    s.add_argument("--frames", type=int, default=100_000)
    s.add_argument("--seed", type=int, default=0, help="a finding is reproduced by sync.fuzz.fuzz_one(seed, index)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_fuzz)
    s = sub.add_parser("crash", help="kill -9 of the gate side and the central during traffic, then check audit "
                                     "loss/duplicates, hash chains, SQLite integrity and watchlist convergence")
    s.add_argument("--cycles", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_crash)
    s = sub.add_parser("kiosk", help="enrolment station: first face -> enrolment acknowledged by a real central over "
                                     "CURVE, and -> a security lane able to match")
    s.add_argument("--images", default="../shared/faces/lfw-dev/images")
    s.add_argument("--models", default=str(default_model_dir()))
    s.add_argument("--travellers", type=int, default=12)
    s.add_argument("--fps", type=float, default=15.0, help="the camera's frame rate the photos are played at")
    s.add_argument("--frames-needed", type=int, default=5)
    s.add_argument("--pad-from", help="folder with the MiniFASNet pair (e.g. ../shared/models)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_kiosk)
    from tools.bench_search import add_search_args, run_search_cli

    s = sub.add_parser("search", help="1:N latency, memory and exactness per gallery size, dim and precision, "
                                      "side by side with faiss IndexFlatIP")
    add_search_args(s)
    s.set_defaults(func=run_search_cli)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
