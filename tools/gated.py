"""gated: run one lane (capture → vision → decision → turnstile, audit, sync)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from configschema import ConfigError


def setup_logging(level: str) -> None:
    """Plain lines without timestamps under systemd (journald adds its own), with them by hand."""
    import os

    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level), format=fmt, force=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gated", description=__doc__)
    p.add_argument("--config", required=True, help="the lane's TOML config file")
    p.add_argument("--check", action="store_true",
                   help="validate the config, then check what can be checked without starting the lane "
                        "(camera source, model files, serial ports, key files, state dir) and exit")
    args = p.parse_args(argv)
    from gate.config import load_config

    try:
        cfg = load_config(Path(args.config))
    except ConfigError as e:
        print(f"gated: configuration error: {e}", file=sys.stderr)
        return 2
    if args.check:
        from gate.checks import format_table, passed
        from gate.preflight import preflight

        checks = preflight(cfg)
        print(f"{args.config}: config valid (gate {cfg.gate.id}, lane {cfg.lane.lane_id}, "
              f"device {type(cfg.device).TYPE})")
        print(format_table(checks))
        policy = cfg.lane.policy
        for key in ("threshold_1n", "threshold_1to1", "deny_threshold"):
            c = cfg.calibration.get(f"lane.policy.{key}")
            print(f"threshold: {c.line()}" if c else
                  f"threshold: lane.policy.{key} = {getattr(policy, key)} (a bare number: no calibration record "
                  f"says at which rate or on which data; see gate-eval calibrate)")
        return 0 if passed(checks) else 1
    setup_logging(cfg.gate.log_level)
    from gate.daemon import LaneDaemon, StartupError
    from gate.process_hardening import disable_core_dumps

    try:  # before any key or template is in memory
        disable_core_dumps()
    except OSError as e:
        logging.getLogger("gated").error("cannot disable core dumps (%s); refusing to hold templates in a "
                                         "process that may dump them", e)
        return 3

    daemon = LaneDaemon(cfg)

    def on_signal(signum, _frame):
        logging.getLogger("gated").info("signal %s: stopping after the current passage", signal.Signals(signum).name)
        daemon.stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.open()
        return daemon.run()
    except StartupError as e:
        logging.getLogger("gated").error("cannot start lane: %s", e)
        return 3
    except PermissionError as e:
        logging.getLogger("gated").error("cannot start lane: permission denied on %s; the state dir and key files "
                                         "must belong to the lane's user (check with gated --check)",
                                         e.filename or e)
        return 3
    except (OSError, ValueError) as e:  # a missing key file, a serial port that is not there, a full disk
        logging.getLogger("gated").error("cannot start lane: %s (check with gated --config FILE --check)", e)
        return 3
    finally:
        daemon.close()


if __name__ == "__main__":
    sys.exit(main())
