"""gate-kiosk: the enrolment station (check-in kiosk or counter camera) and its staff commands.

    gate-kiosk --config kiosk.toml                 run the station
    gate-kiosk --config kiosk.toml --check         load config, models and trust anchors, then exit
    gate-kiosk --config F status                   what the station is doing now
    gate-kiosk --config F scan CODE                the agent types a boarding pass the scanner cannot read
    gate-kiosk --config F approve --operator ID --reason TEXT    enrol a referred traveller (audited)
    gate-kiosk --config F decline --operator ID --reason TEXT    close a referral without enrolling (audited)
    gate-kiosk parse-bcbp CODE [--today YYYY-MM-DD]             read a boarding pass, for staff

A thin layer over kiosk.daemon, kiosk.config and devices.bcbp.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import threading
from pathlib import Path

from configschema import ConfigError
from gate.control import ControlError, call
from tools.cli import config_parser_class, run_command


def _config(args):
    from kiosk.config import load_config

    if args.config is None:
        raise ConfigError("this command needs --config FILE (the station's config)")
    return load_config(args.config)


def cmd_run(args) -> int:
    from kiosk.daemon import StationDaemon

    cfg = _config(args)
    daemon = StationDaemon(cfg)
    if args.check:
        daemon_check(daemon)
        return 0
    daemon.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        daemon.run(stop)
    finally:
        daemon.close()
    return 0


def daemon_check(daemon) -> None:
    """What --check proves: the config parses, the models load and verify, the trust anchors load."""
    from vision.loading import load_pipeline

    cfg = daemon.cfg
    m = cfg.models
    pipeline = load_pipeline(m.dir, m.detector, m.embedder, flip=m.flip, detector_opts={"min_face": m.min_face_px})
    from kiosk.icao9303 import load_csca_list
    from kiosk.identity import load_provider_key

    cscas = load_csca_list(cfg.identity.csca) if cfg.identity.csca else []
    providers = [load_provider_key(p) for p in cfg.identity.providers.values()]
    print(f"station {cfg.station.id} at {cfg.station.airport}: config ok; model {pipeline.model_id}; "
          f"PAD {', '.join(m.pad) or 'none'}; 1:1 threshold {cfg.verify.threshold_1to1:.4f}; "
          f"{len(cscas)} CSCA certificate(s); {len(providers)} identity provider key(s); "
          f"central {cfg.central.host}:{cfg.central.base_port + 3}")
    from vision.calibrate import check_models

    check_models(cfg.calibration, detector=pipeline.detector.name, embedder=pipeline.model_id, flip=m.flip)
    c = cfg.calibration.get("verify.threshold_1to1")
    print(f"threshold: {c.line()}" if c else f"threshold: verify.threshold_1to1 = {cfg.verify.threshold_1to1} "
          f"(a bare number: no calibration record says at which FMR or on which data; see gate-eval verify)")


def cmd_status(args) -> int:
    r = call(_config(args).station.control_socket, "status")
    print(json.dumps(r, indent=2, ensure_ascii=False))
    return 0 if r.get("ok") else 1


def cmd_scan(args) -> int:
    r = call(_config(args).station.control_socket, "scan", code=args.code)
    if not r.get("ok"):
        print(f"gate-kiosk scan: refused: {r.get('error')}", file=sys.stderr)
        return 1
    print(f"pass accepted; station now {r.get('state')}")
    return 0


def cmd_decide(args) -> int:
    r = call(_config(args).station.control_socket, args.cmd, operator=args.operator, reason=args.reason)
    if not r.get("ok"):
        print(f"gate-kiosk {args.cmd}: {r.get('error') or r.get('outcome')}", file=sys.stderr)
        return 1
    print(f"{args.cmd}: {r.get('outcome')}")
    return 0


def cmd_parse_bcbp(args) -> int:
    from devices.bcbp import parse_bcbp

    today = dt.date.fromisoformat(args.today) if args.today else dt.date.today()
    bp = parse_bcbp(args.code)
    print(f"passenger   {bp.passenger_name}  (e-ticket: {'yes' if bp.electronic_ticket else 'no'})")
    for i, leg in enumerate(bp.legs, 1):
        print(f"leg {i}       {leg.flight} {leg.from_airport}->{leg.to_airport} on {leg.flight_date(today)} "
              f"(day {leg.julian_date:03d}); PNR {leg.pnr}; class {leg.compartment}; seat {leg.seat}; "
              f"sequence {leg.sequence}; status {leg.passenger_status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate-kiosk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="station config (TOML)")
    p.add_argument("--check", action="store_true", help="load everything, report, exit")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_run)
    sub = p.add_subparsers(dest="cmd", parser_class=config_parser_class("station config (TOML)"))
    sub.add_parser("status", help="the station's current session").set_defaults(func=cmd_status)
    sc = sub.add_parser("scan", help="enter a boarding pass by hand")
    sc.add_argument("code")
    sc.set_defaults(func=cmd_scan)
    for name, what in (("approve", "enrol the referred traveller"), ("decline", "close the referral")):
        d = sub.add_parser(name, help=f"{what} (operator id and reason are audited)")
        d.add_argument("--operator", required=True)
        d.add_argument("--reason", required=True)
        d.set_defaults(func=cmd_decide)
    pb = sub.add_parser("parse-bcbp", help="read a boarding pass barcode's text")
    pb.add_argument("code")
    pb.add_argument("--today", help="reference date for the Julian day (default: today)")
    pb.set_defaults(func=cmd_parse_bcbp)
    return p


def main(argv=None) -> int:
    from kiosk.daemon import StartupError

    return run_command("gate-kiosk", build_parser(), argv,
                       (ConfigError, StartupError, ControlError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
