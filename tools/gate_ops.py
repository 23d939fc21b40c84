"""gate-ops: operations views over the central's database.

    gate-ops --config central.toml gates
    gate-ops --config central.toml audit pull --gate ID --since T [--until T] --format jsonl|csv --out FILE
    gate-ops --config central.toml subject-gone SUBJECT_ID
    gate-ops --config central.toml erase SUBJECT_ID --operator ID --reason TEXT

`audit pull` verifies the gate's hash chain while exporting and exits 3 if it is broken
(the file is still written in full). Times are ISO-8601; a time without offset is UTC.
`subject-gone` prints PASS/FAIL for every place at the central that could hold the id
(tables, change log, raw database bytes) and exits 1 unless all pass.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sync.audit_export import FORMATS, pull_audit
from sync.central import Central
from sync.central_db import StorageError
from sync.config import CentralConfig, ConfigError, load_central_config
from sync.forget import EraseRefused, all_gone, erase_subject, subject_presence
from sync.ops import gates_table, parse_time
from sync.template_crypto import TemplateIntegrityError, TemplateKeyError

EXIT_CHAIN_BROKEN = 3


def _central(cfg: CentralConfig) -> Central:
    return Central(cfg.database, template_key=cfg.template_key_path)


def cmd_gates(args) -> int:
    cfg = load_central_config(args.config)
    print(gates_table(_central(cfg).gate_statuses(cfg.gate_silent_after_s)))
    return 0


def cmd_audit_pull(args) -> int:
    cfg = load_central_config(args.config)
    report = pull_audit(_central(cfg), args.gate, parse_time(args.since),
                        parse_time(args.until) if args.until else None, args.format, Path(args.out))
    print(report.summary())
    return 0 if report.check.ok else EXIT_CHAIN_BROKEN


def cmd_subject_gone(args) -> int:
    central = _central(load_central_config(args.config))
    try:
        checks = subject_presence(central, args.subject_id)
    finally:
        central.close()
    for c in checks:
        print(c.line())
    gone = all_gone(checks)
    print(f"{'PASS' if gone else 'FAIL'} subject {args.subject_id} is {'gone' if gone else 'still present'}")
    return 0 if gone else 1


def cmd_erase(args) -> int:
    central = _central(load_central_config(args.config))
    try:
        r = erase_subject(central, args.subject_id, args.operator, args.reason, settle_s=args.settle_s)
    except EraseRefused as e:
        print(f"gate-ops erase: {e}", file=sys.stderr)
        return 1
    finally:
        central.close()
    if not r.found:
        print(f"subject {args.subject_id}: nothing at the central to erase")
        return 0
    print(f"subject {args.subject_id}: erased now (audited): {r.templates} template rows, "
          f"{r.log_bodies} enrolment records and {r.log_deletes} deletion entries of the change log"
          + (f"; {r.log_kept} recent deletion entries kept for the publisher (no templates)" if r.log_kept else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate-ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="central config (TOML with a [central] table)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("gates", help="every registered gate: last seen, versions, queue depth").set_defaults(func=cmd_gates)
    audit = sub.add_parser("audit", help="received audit").add_subparsers(dest="audit_cmd", required=True)
    pull = audit.add_parser("pull", help="export one gate's audit and verify its hash chain")
    pull.add_argument("--gate", required=True)
    pull.add_argument("--since", required=True)
    pull.add_argument("--until")
    pull.add_argument("--format", choices=FORMATS, default="jsonl")
    pull.add_argument("--out", required=True)
    pull.set_defaults(func=cmd_audit_pull)
    erase = sub.add_parser("erase", help="erase a withdrawn subject now (tombstone, change-log templates), audited")
    erase.add_argument("subject_id")
    erase.add_argument("--operator", required=True, help="who erases (recorded with the erasure)")
    erase.add_argument("--reason", required=True, help="why, e.g. the withdrawal request's reference")
    erase.add_argument("--settle-s", type=float, default=60.0,
                       help="keep deletion entries younger than this for the publisher (default 60)")
    erase.set_defaults(func=cmd_erase)
    gone = sub.add_parser("subject-gone", help="prove a subject id has left the central's database")
    gone.add_argument("subject_id")
    gone.set_defaults(func=cmd_subject_gone)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, StorageError, TemplateKeyError, TemplateIntegrityError, ValueError, OSError) as exc:
        print(f"gate-ops: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
