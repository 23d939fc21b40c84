"""gatectl: ground staff's view of and control over the running lane (and offline checks)."""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

from gate.control import ControlError, call

DEFAULT_SOCKET = "/var/lib/edgegate/control.sock"


def _socket(args) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        from gate.config import load_config

        return load_config(Path(args.config)).control_socket
    return Path(DEFAULT_SOCKET)


def _print_status(r: dict) -> None:
    from gate.event_text import mode_name

    keys = ["gate", "lane", "mode", "faults", "alarm", "camera", "device_online", "central", "pad", "model",
            "watchlist_size", "watchlist_sequence", "audit_unsent", "audit_chain_epoch", "audit_chain_alarm",
            "frames", "decisions", "last_decision_at", "out_of_service_by"]
    for k in keys:
        if k in r:
            v = r[k]
            if k == "pad" and v == "not provisioned":
                v = "NOT PROVISIONED (no presentation-attack detection)"
            elif k == "mode":
                v = mode_name(v)
            elif k == "faults":
                v = ", ".join(v) if v else "none"
            elif k == "central":
                v = _central_text(v)
            print(f"{k:20s} {v}")
    for key, c in (r.get("calibration") or {}).items():
        print(f"{'threshold':20s} {calibration_text(key, c)}")
    for key in ("threshold_1n", "threshold_1to1", "deny_threshold"):
        if f"lane.policy.{key}" not in (r.get("calibration") or {}) and key in r:
            print(f"{'threshold':20s} lane.policy.{key} = {r[key]} (a bare number: no calibration record)")


def calibration_text(key: str, c: dict) -> str:
    """A threshold's record as the status reports it: target, bound, data, models."""
    rate = "FAR" if c["mode"] == "1:1" else "FPIR"
    miss = "FNMR" if c["mode"] == "1:1" else "FNIR"
    lo, hi = c.get("miss_interval_95") or (0.0, 1.0)
    return (f"{key} = {c['threshold']:.4f} at {c['mode']} {rate} {c['target']:g} (95 % upper bound "
            f"{c['rate_upper_95']:.2e} over {c['impostor_comparisons']} impostor comparisons; {miss} "
            f"{c['miss_rate']:.1%} [{lo:.1%}, {hi:.1%}]) on \"{c['data']}\"; models {c['detector']} + "
            f"{c['embedder']}; record {c['record']}")


def _central_text(c: dict | None) -> str:
    if not c:
        return "standalone (no [sync] section)"
    last = c.get("last_contact") or "never"
    state = "reachable" if c.get("reachable") else "NOT REACHABLE"
    return f"{state}, last contact {last}" + (f" ({c['last_error']})" if c.get("last_error") else "")


def cmd_lane(args) -> int:
    extra = {"direction": args.direction} if getattr(args, "direction", None) else {}
    if args.pin:
        import getpass

        extra["pin"] = getpass.getpass(f"PIN for {args.operator}: ") if args.pin == "-" else args.pin
    r = call(_socket(args), args.cmd, operator=args.operator, reason=args.reason, **extra)
    if not r.get("ok"):
        print(f"gatectl {args.cmd}: refused: {r.get('error')}", file=sys.stderr)
        return 1
    from gate.event_text import mode_name

    print(f"{args.cmd}: done (lane {mode_name(r.get('mode_before'))} → {mode_name(r.get('mode'))})")
    return 0


def cmd_status(args) -> int:
    r = call(_socket(args), "status")
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print_status(r)
    return 0 if r.get("ok") else 1


def cmd_events(args) -> int:
    from gate.event_text import event_line

    def show(e: dict) -> None:
        print(json.dumps(e, sort_keys=True) if args.json else event_line(e))

    if args.follow:
        try:
            for e in call(_socket(args), "events", stream=True, last=args.last, follow=True):
                show(e)
                sys.stdout.flush()
        except KeyboardInterrupt:
            return 0
        return 0
    r = call(_socket(args), "events", last=args.last)
    for e in r.get("events", []):
        show(e)
    return 0


def cmd_watchlist(args) -> int:
    r = call(_socket(args), "watchlist-stats")
    print(json.dumps(r, indent=2, default=str))
    return 0


def cmd_watchlist_gone(args) -> int:
    """Offline: reads watchlist.db and audit.db directly; stop the daemon for a final proof
    (its WAL may hold the id until the next checkpoint)."""
    from gate.forget import subject_presence
    from sync.forget import all_gone

    state_dir = Path(args.state_dir) if args.state_dir else None
    if state_dir is None and args.config:
        from gate.config import load_config

        state_dir = load_config(Path(args.config)).gate.state_dir
    if state_dir is None:
        print("gatectl watchlist gone: give --state-dir or --config", file=sys.stderr)
        return 2
    try:
        checks = subject_presence(state_dir, args.subject_id)
    except (OSError, sqlite3.Error) as e:
        print(f"gatectl watchlist gone: {e}", file=sys.stderr)
        return 2
    for c in checks:
        print(c.line())
    gone = all_gone(checks)
    print(f"{'PASS' if gone else 'FAIL'} subject {args.subject_id} is {'gone' if gone else 'still on this gate'}")
    return 0 if gone else 1


def _state_dir(args, what: str) -> Path | None:
    state_dir = Path(args.state_dir) if args.state_dir else None
    if state_dir is None and args.config:
        from gate.config import load_config

        state_dir = load_config(Path(args.config)).gate.state_dir
    if state_dir is None:
        print(f"gatectl {what}: give --state-dir or --config", file=sys.stderr)
    return state_dir


def cmd_watchlist_erase(args) -> int:
    """Offline (beside a running daemon too: a withdrawn subject is no longer in its matcher):
    remove a withdrawn subject's tombstone now, audited first."""
    from gate.audit import AuditLog, AuditWriteError
    from gate.watchlist import WatchlistStore

    state_dir = _state_dir(args, "watchlist erase")
    if state_dir is None:
        return 2
    for name, value in (("--operator", args.operator), ("--reason", args.reason)):
        if not value or not value.strip() or len(value) > 256:
            print(f"gatectl watchlist erase: {name} must be 1-256 characters", file=sys.stderr)
            return 2
    if not (state_dir / "watchlist.db").exists():
        print(f"gatectl watchlist erase: {state_dir / 'watchlist.db'} does not exist", file=sys.stderr)
        return 2
    with WatchlistStore(state_dir) as store:
        entry = store.get(args.subject_id, with_templates=False)
        if entry is None:
            print(f"subject {args.subject_id}: nothing on this gate to erase")
            return 0
        if not entry.revoked:
            print(f"gatectl watchlist erase: subject {args.subject_id} is active on this gate; revoke it at the "
                  "central first", file=sys.stderr)
            return 2
        try:
            with AuditLog(state_dir) as audit:
                audit.append({"event": "watchlist_erase", "subject_id": args.subject_id, "operator": args.operator,
                              "reason": args.reason, "uid": os.getuid()})
        except (AuditWriteError, ValueError) as e:
            print(f"gatectl watchlist erase: not erased, the audit record could not be written: {e}", file=sys.stderr)
            return 2
        store.erase(args.subject_id)
    print(f"subject {args.subject_id}: tombstone erased (audited); check with `gatectl watchlist gone`")
    return 0


def cmd_audit_verify(args) -> int:
    """Offline: reads the audit database directly (works with the daemon stopped)."""
    from gate.audit import AuditLog

    state_dir = Path(args.state_dir) if args.state_dir else None
    if state_dir is None and args.config:
        from gate.config import load_config

        state_dir = load_config(Path(args.config)).gate.state_dir
    if state_dir is None:
        print("gatectl audit verify: give --state-dir or --config", file=sys.stderr)
        return 2
    from gate.audit import AUDIT_DB_NAME

    if not (state_dir / AUDIT_DB_NAME).is_file():
        print(f"gatectl audit verify: no audit log at {state_dir / AUDIT_DB_NAME}; give the lane's state_dir "
              "(see [gate] state_dir in its config) or --config FILE", file=sys.stderr)
        return 2
    with AuditLog(state_dir, read_only=True) as log:
        c = log.verify()
    if c.ok:
        print(f"PASS audit chain intact: {c.records} records")
        return 0
    print(f"FAIL audit chain broken at seq {c.first_broken_seq}: {c.reason} ({c.records} records checked)")
    return 1


def cmd_selftest(args) -> int:
    """Offline: opens the camera and the turnstile itself, so run it with the lane's daemon stopped."""
    from gate.checks import format_table, passed
    from gate.selftest import SelftestOptions, selftest_config

    config = args.selftest_config or args.config
    if config is None and args.root:
        config = Path(args.root) / "current" / "config.toml"
    if config is None:
        print("gatectl selftest: give --config FILE or --root DIR", file=sys.stderr)
        return 2
    opts = SelftestOptions(camera_timeout_s=args.camera_timeout, central_timeout_s=args.central_timeout,
                           min_free_mb=args.min_free_mb)
    checks = selftest_config(Path(config), opts)
    print(json.dumps([c.to_dict() for c in checks], indent=2) if args.json else format_table(checks))
    return 0 if passed(checks) else 1


def cmd_staff_pin(args) -> int:
    """Reads the PIN twice without echo (or one line from stdin when it is not a terminal)."""
    import getpass

    from gate.staff_auth import StaffAuthError, set_pin

    if sys.stdin.isatty():
        pin = getpass.getpass(f"new PIN for {args.operator}: ")
        if getpass.getpass("again: ") != pin:
            print("gatectl staff-pin: the two PINs differ; nothing changed", file=sys.stderr)
            return 2
    else:
        pin = sys.stdin.readline().strip()
    try:
        set_pin(Path(args.file), args.operator, pin)
    except StaffAuthError as e:
        print(f"gatectl staff-pin: {e}", file=sys.stderr)
        return 2
    print(f"PIN set for {args.operator} in {args.file}; the lane reads the file at start-up (restart gated)")
    return 0


def cmd_config_reference(args) -> int:
    from gate.config import reference_markdown

    print(reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatectl", description=__doc__)
    p.add_argument("--socket", help=f"control socket (default from --config, else {DEFAULT_SOCKET})")
    p.add_argument("--config", help="the lane's config file (to find its socket / state dir)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status", help="lane mode, faults, camera, device, PAD, watchlist, audit queue")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    for name, hlp in (("open", "let one passenger through (audited)"), ("unlock", "hold the gate open until lock"),
                      ("lock", "lock the gate"), ("out-of-service", "take the lane out of service"),
                      ("in-service", "return the lane to service"),
                      ("emergency-reset", "clear a latched alarm or emergency (fire input must be off)")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--operator", required=True, help="your staff id (audited)")
        s.add_argument("--reason", required=True, help="why (audited)")
        s.add_argument("--pin", metavar="PIN", help="your PIN, where the lane has control.staff_file; "
                                                    "'-' asks for it without echo")
        if name in ("open", "unlock"):
            s.add_argument("--direction", choices=["entry", "exit", "both"])
        s.set_defaults(func=cmd_lane)
    s = sub.add_parser("events", help="recent audit events, one readable line each")
    s.add_argument("--last", type=int, default=20)
    s.add_argument("--follow", action="store_true")
    s.add_argument("--json", action="store_true", help="the raw audit records, one JSON object per line")
    s.set_defaults(func=cmd_events)
    s = sub.add_parser("watchlist", help="watchlist statistics; `gone ID`: prove a subject left this gate")
    wl = s.add_subparsers(dest="what", required=True)
    wl.add_parser("stats", help="watchlist statistics (from the running lane)").set_defaults(func=cmd_watchlist)
    g = wl.add_parser("gone", help="offline: PASS/FAIL per place a subject id could still be on disk")
    g.add_argument("subject_id")
    g.add_argument("--state-dir")
    g.set_defaults(func=cmd_watchlist_gone)
    e = wl.add_parser("erase", help="offline: erase a withdrawn subject's tombstone now, not at expiry (audited)")
    e.add_argument("subject_id")
    e.add_argument("--operator", required=True, help="who erases (recorded in the audit log)")
    e.add_argument("--reason", required=True, help="why, e.g. the withdrawal request's reference")
    e.add_argument("--state-dir")
    e.set_defaults(func=cmd_watchlist_erase)
    s = sub.add_parser("audit", help="offline audit checks")
    s.add_argument("what", choices=["verify"])
    s.add_argument("--state-dir")
    s.set_defaults(func=cmd_audit_verify)
    s = sub.add_parser("selftest", help="camera, models (known answer), PAD, turnstile, central, disk, clock; "
                                        "run with the daemon stopped")
    s.add_argument("--config", dest="selftest_config", metavar="FILE",
                   help="the config to test (e.g. SLOT/config.toml)")
    s.add_argument("--root", help="gate-image install root: test ROOT/current/config.toml")
    s.add_argument("--camera-timeout", type=float, default=5.0, help="seconds for the camera to deliver frames")
    s.add_argument("--central-timeout", type=float, default=3.0, help="seconds to wait for the central's reply")
    s.add_argument("--min-free-mb", type=float, default=500.0, help="free space needed for the state directory")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_selftest)
    s = sub.add_parser("staff-pin", help="set a staff member's PIN in the lane's staff file (control.staff_file)")
    s.add_argument("--file", required=True, help="the staff file (created 0600)")
    s.add_argument("--operator", required=True, help="the staff id")
    s.set_defaults(func=cmd_staff_pin)
    s = sub.add_parser("config-reference", help="print the configuration reference (markdown)")
    s.set_defaults(func=cmd_config_reference)
    return p


def main(argv=None) -> int:
    """Every failure is one line saying what to do; no traceback reaches staff."""
    from configschema import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `gatectl events | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ControlError as e:
        print(f"gatectl: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"gatectl: configuration error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"gatectl: permission denied: {e.filename or e}; run as the lane's user or a member of its "
              "control group", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error, ValueError) as e:
        print(f"gatectl: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
