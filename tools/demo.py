"""`make demo`: an airport journey on one machine — check-in kiosk, security lane, boarding gate.

Travellers enrol once at the kiosk (a boarding pass on the scanner, their chip ID card's photo,
a live capture, a 1:1 against the card photo), pass the security lane that follows
checkpoint:SGN, then board their flight at the gate that follows flight:<flight>-<date>. One
goes to the wrong gate first and is refused; one whose 1:1 falls below the kiosk's operating
point is referred and approved by the counter agent; a gate change moves a flight to the other
gate while its last passenger is airside, and they board there. Someone who never enrolled
tries the security lane. Everything runs as the real daemons (gate-central on SQLite, gate-kiosk,
three gated lanes with simulated turnstiles) over CURVE on loopback, with the default models
on real photos. At the end the central's copy of every place's audit log rebuilds each
passenger's journey, which is printed and written to out/demo/report.html.

The phases, one job each:
    prepare   working folder, models, operating points        (this module)
    cast      who travels, in which role                      tools/demo_cast.py
    site      keys, configs, principals, flight assignments   tools/demo_site.py
    start     the central, the kiosk and the lanes            tools/demo_site.py
    journey   kiosk -> security -> boarding, the gate change  tools/demo_journey.py
    close     the kiosk and lanes stop (last audit uploaded)  (this module)
    results   the journey as the central holds it; verdict    tools/demo_results.py
    report    out/demo/report.html                            tools/demo_report.py
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.registry import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
from tools.demo_cast import AIRPORT_TZ, ROLES_FULL, ROLES_SMALL, Cast
from tools.demo_journey import Journey
from tools.demo_results import Results
from tools.demo_site import Procs, Site

log = logging.getLogger("demo")


@dataclass
class DemoRun:
    """What the phases share: each reads what earlier phases set and adds its own part."""

    models: Path
    shared: Path
    work: Path
    seed: int
    small: bool = False
    detector: str = DEFAULT_DETECTOR  # a model name in `models`, or a manifest path
    embedder: str = DEFAULT_EMBEDDER
    t_start: float = field(default_factory=time.monotonic)
    pipeline: Any = None
    pad: Any = None  # the PAD pair loaded in the demo itself (casting)
    pad_manifests: list[str] = field(default_factory=list)
    kiosk_threshold: float = 0.0
    lane_threshold: float = 0.0
    cast: Cast | None = None
    site: Site | None = None
    procs: Procs = field(default_factory=Procs)
    journey: Journey | None = None
    results: Results | None = None

    @property
    def central_cfg(self) -> Path:
        assert self.site is not None
        return self.site.central_cfg

    @property
    def ccfg(self):
        from sync.config import load_central_config

        return load_central_config(self.central_cfg)


def phase_prepare(run: DemoRun) -> None:
    """Working folder, the default models, the PAD pair (when ../shared has it) provisioned into
    the working folder, and the operating points from the calibration file."""
    from tools.demo_site import REFERENCE_CALIBRATION, operating_point
    from vision.loading import load_pipeline

    if run.work.exists():
        shutil.rmtree(run.work)
    run.work.mkdir(parents=True)
    print(f"edgegate airport demo — working folder {run.work}")
    run.pipeline = load_pipeline(run.models, run.detector, run.embedder, flip=True, threads=1,
                                 detector_opts={"min_face": 40})
    shared_models = run.shared / "models"
    if (shared_models / "2.7_80x80_MiniFASNetV2.onnx").exists():
        from models.provision import provision_minifasnet_pair
        from vision.pad import load_pad

        manifests = provision_minifasnet_pair(shared_models, run.work / "models")
        run.pad_manifests = [str(m.path) for m in manifests]
        run.pad = load_pad(manifests, threads=1)
        print("liveness: MiniFASNet pair provisioned from ../shared/models (kiosk and lanes)")
    else:
        print("liveness: NOT PROVISIONED (../shared/models missing): pad_required = false, every record says so")
    run.kiosk_threshold = operating_point(1e-4, REFERENCE_CALIBRATION)
    run.lane_threshold = operating_point(1e-3)
    print(f"operating points: kiosk 1:1 {run.kiosk_threshold:.3f} at FMR 1e-4 (config/{REFERENCE_CALIBRATION.name}), "
          f"lanes {run.lane_threshold:.3f} at FMR 1e-3 (config/calibration-lfw-dev-default.json)")


def phase_cast(run: DemoRun) -> None:
    from tools.demo_cast import STORIES, insightface_cast, lfw_cast

    roles = ROLES_SMALL if run.small else ROLES_FULL
    day = dt.datetime.now(AIRPORT_TZ).date()
    lfw = run.shared / "faces" / "lfw-dev" / "images"
    if lfw.is_dir():
        run.cast = lfw_cast(lfw, run.pipeline, run.pad, run.kiosk_threshold, roles, run.seed, day)
    else:
        run.cast = insightface_cast(run.work, run.pipeline, run.pad, run.kiosk_threshold, roles, day)
    print(f"travellers: {run.cast.source}")
    for t in run.cast.travellers:
        flight = f"{t.flight.code} to {t.flight.to}" if t.flight else "no flight"
        print(f"  {t.name:26s} {flight:14s} {STORIES[t.role]}")


def phase_site(run: DemoRun) -> None:
    from tools import demo_site

    assert run.cast is not None
    run.site = Site(run.work, run.models, run.pad_manifests, run.kiosk_threshold, run.lane_threshold,
                    detector=run.detector, embedder=run.embedder, model_id=run.pipeline.model_id)
    demo_site.build(run.site, run.cast)
    boards = ", ".join(f"{f.first_gate} boards {f.code}" for f in run.cast.flights)
    print(f"airport SGN: kiosk {demo_site.KIOSK}, security {demo_site.SECURITY} (checkpoint:SGN), {boards}")


def phase_start(run: DemoRun) -> None:
    from tools import demo_site

    assert run.site is not None
    t0 = time.monotonic()
    demo_site.start(run.site, run.procs)
    print(f"central, kiosk and {len(run.site.lanes)} lanes up in {time.monotonic() - t0:.0f} s "
          f"(central on 127.0.0.1:{run.site.base_port}, CURVE)\n")


def phase_journey(run: DemoRun) -> None:
    from tools.demo_journey import Airport

    assert run.site is not None and run.cast is not None
    run.journey = Journey()
    Airport(run.site, run.cast, run.journey).run()


def phase_close(run: DemoRun) -> None:
    """Stop the kiosk and the lanes; each uploads its last audit records on the way out. The
    central keeps running: it is where the results are read from."""
    assert run.site is not None
    for name in [n for n in run.procs.procs if n != "central"]:
        code = run.procs.stop(name)
        if code not in (0, None):
            log.warning("%s exited with %s", name, code)


def phase_results(run: DemoRun) -> None:
    from tools.demo_results import collect, print_results

    assert run.site is not None and run.cast is not None and run.journey is not None
    run.results = collect(run.site, run.cast, run.journey, time.monotonic() - run.t_start)
    print_results(run.results)


def phase_report(run: DemoRun) -> None:
    from tools.demo_report import write_report

    assert run.results is not None and run.cast is not None
    path = write_report(run.work / "report.html", run.results, run.cast)
    print(f"\nreport: {path}   (total {time.monotonic() - run.t_start:.0f} s)")


PHASES = (phase_prepare, phase_cast, phase_site, phase_start, phase_journey, phase_close, phase_results,
          phase_report)


def run_demo(models: Path, shared: Path, out: Path, seed: int = 7, small: bool = False,
             detector: str = DEFAULT_DETECTOR, embedder: str = DEFAULT_EMBEDDER, keep_console: bool = False) -> int:
    run = DemoRun(models=Path(models).resolve(), shared=Path(shared), work=Path(out).resolve(), seed=seed,
                  small=small, detector=detector, embedder=embedder)
    kept = ""
    try:
        for phase in PHASES:
            phase(run)
        # The one place an operations console attaches: every phase has run, the kiosk and the
        # lanes have stopped, and the central still runs holding the whole journey.
        if keep_console:  # the central and its console outlive the demo (tools/demo_console.py)
            from tools.demo_console import keep_running

            kept = keep_running(run)
    finally:
        run.procs.stop_all()
        if run.site is not None:
            for fd in (run.site.scanner_master, run.site.scanner_slave):
                if fd is not None:
                    os.close(fd)
    if kept:
        print(kept)
    return 0 if run.results is not None and not run.results.failures else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="edgegate-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=os.environ.get("EDGEGATE_MODEL_DIR", ".models"))
    p.add_argument("--shared", default="../shared")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--seed", type=int, default=7, help="which LFW people are cast")
    p.add_argument("--small", action="store_true", help="three travellers (referral, wrong gate, gate change)")
    p.add_argument("--keep-console", action="store_true",
                   help="leave the central and its operations console running afterwards; "
                        "prints the address and a login")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_demo(Path(args.models), Path(args.shared), Path(args.out), seed=args.seed, small=args.small,
                        keep_console=args.keep_console)
    except KeyboardInterrupt:
        print("\ndemo interrupted; child processes stopped")
        return 130
    except RuntimeError as exc:  # a phase that cannot go on says why in one line (the logs hold the rest)
        print(f"demo: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
