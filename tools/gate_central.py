"""gate-central: the reference central service and its admin commands.

    gate-central --config central.toml                  serve (CHP, audit collector, health)
    gate-central keys gen --name NAME --out DIR         CURVE keypair, files 0600
    gate-central config-reference                       the [central] keys (markdown)
    gate-central --config F gate add ID --public-key FILE --scope lane:L1 [--scope flight:BA1]
    gate-central --config F gate remove ID | gate list
    gate-central --config F assign --gate G12 --flight VN123-2026-12-02 [--flight ...] | --none
    gate-central --config F admin add NAME --public-key FILE
    gate-central --config F station add ID --public-key FILE --airport SGN | station remove ID
    gate-central --config F show SUBJECT                 one subject, with its display name (staff only)
    gate-central --config F revoke SUBJECT [--scope lane:L1] [--reason TEXT]
    gate-central --config F expire
    gate-central --config F list [--scope lane:L1] [--status active|revoked|expired]
    gate-central --config F enrol --from DIR --scope lane:L1 [--list deny] [--valid-until T]  (alias: enroll)
    gate-central --config F migrate [--from OLD_SQLITE_FILE]   create/upgrade the schema; copy a SQLite central
    gate-central --config F console                      the operations console (web; table [console])
    gate-central --config F console-user add NAME --role viewer|supervisor --operator ID [--password-stdin]
    gate-central --config F console-user passwd|role|disable|enable|unlock NAME --operator ID | list
    gate-central --config F console-log [--last N]       the console's ops audit log, its chain verified

`migrate` also seals templates an earlier release stored in clear; `migrate --from F --from-key K`
names the key the SQLite central was sealed with (default: F.templates.key beside it).

Every command is a thin wrapper over sync.central / sync.central_server / sync.keys.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from models.manifest import ModelError
from sync.central import Central, EnrolmentError
from sync.central_db import StorageError, redact_dsn
from sync.config import ConfigError, load_central_config
from sync.keys import KeyFileError, generate_keypair_files, load_public_key
from sync.template_crypto import TemplateIntegrityError, TemplateKeyError
from tools.cli import config_parser_class, run_command


def _central(args) -> Central:
    if args.config is None:
        raise ConfigError("this command needs --config FILE (the central's config)")
    cfg = load_central_config(args.config)
    return Central(cfg.database, template_key=cfg.template_key_path)


def cmd_serve(args) -> int:
    from sync.central_server import run_central

    if args.config is None:
        raise ConfigError("serving needs --config FILE")
    return run_central(load_central_config(args.config))


def cmd_config_reference(args) -> int:
    from tools.readme_config import central_reference_markdown as with_console

    print(with_console())
    return 0


def cmd_keys_gen(args) -> int:
    files = generate_keypair_files(Path(args.out), args.name, overwrite=args.force)
    print(f"public key: {files.public}\nsecret key: {files.secret} (0600; keep it on this machine only)")
    return 0


def cmd_gate_add(args) -> int:
    p = _central(args).register_gate(args.gate_id, load_public_key(Path(args.public_key)), args.scope)
    print(f"gate {p.ident} allowed; scopes: {', '.join(p.scopes)}")
    return 0


def _remove(args, kind: str, ident: str) -> int:
    if not _central(args).remove_principal(kind, ident):
        print(f"no {kind} {ident} registered", file=sys.stderr)
        return 1
    print(f"{kind} {ident} removed; its key is refused from its next connection")
    return 0


def cmd_gate_remove(args) -> int:
    return _remove(args, "gate", args.gate_id)


def cmd_gate_list(args) -> int:
    for p in _central(args).principals():
        boards = f"\tassigned {' '.join(p.assigned)}" if p.assigned else ""
        print(f"{p.name}\t{p.public_key}\t{' '.join(p.scopes)}{boards}")
    return 0


def cmd_assign(args) -> int:
    if bool(args.flight) == args.none:
        raise ValueError("assign needs --flight CARRIERNUMBER-YYYY-MM-DD (repeatable) or --none")
    scopes = _central(args).assign_flights(args.gate, [] if args.none else args.flight)
    from sync.scopes import scope_label

    print(f"gate {args.gate} boards {', '.join(scope_label(s) for s in scopes) or 'no flight'} "
          "(it follows the change from its next health report)")
    return 0


def cmd_admin_add(args) -> int:
    p = _central(args).register_admin(args.name, load_public_key(Path(args.public_key)))
    print(f"admin tool {p.ident} allowed")
    return 0


def cmd_show(args) -> int:
    """One subject for staff: list type, where it is published and the name as the person writes it
    (kept at the central only; gates never receive it)."""
    from sync.scopes import scope_label

    standing = _central(args).subject_standing(args.subject_id)
    if standing is None:
        print(f"no subject {args.subject_id} at this central", file=sys.stderr)
        return 1
    list_type, scopes, name = standing
    print(f"subject      {args.subject_id}\nname         {name or '-'}\nlist         {list_type}\n"
          f"published in {', '.join(scope_label(s) for s in scopes) or '- (withdrawn)'}")
    return 0


def cmd_station_add(args) -> int:
    p = _central(args).register_station(args.station_id, load_public_key(Path(args.public_key)), args.airport)
    print(f"enrolment station {p.ident} allowed for airport {p.scopes[0]}: it may enrol departing travellers "
          f"into that airport's flight: and checkpoint: scopes only")
    return 0


def cmd_station_remove(args) -> int:
    return _remove(args, "station", args.station_id)


def cmd_revoke(args) -> int:
    keys = _central(args).revoke(args.subject_id, args.scope or None, args.reason)
    print(f"revoked {args.subject_id}: {len(keys)} key(s) deleted" + (f" ({', '.join(keys)})" if keys else ""))
    return 0


def cmd_expire(args) -> int:
    expired = _central(args).expire()
    print(f"expired {len(expired)} subject(s)" + (f": {', '.join(expired)}" if expired else ""))
    return 0


def cmd_list(args) -> int:
    from sync.ops import subjects_table

    print(subjects_table(_central(args).list_subjects(args.scope, args.status)))
    return 0


def cmd_enrol(args) -> int:
    """Photos → templates with the configured models → stored and published in the scope."""
    import datetime as dt

    from tqdm import tqdm

    from tools.enrolment import enrol_folder
    from vision.loading import load_pipeline

    central = _central(args)
    pipeline = load_pipeline(Path(args.models), args.detector, args.embedder, flip=not args.no_flip)
    until = dt.datetime.fromisoformat(args.valid_until) if args.valid_until else None
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=dt.timezone.utc)
    bar = tqdm(desc="enrolling", unit="person", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        r = enrol_folder(central, pipeline, Path(args.from_dir), args.scope, args.list, valid_until=until,
                         progress=progress)
    finally:
        bar.close()
    for v in r.rejects:
        print(f"REJECT {v.photo}: {v.reason}")
    for sid, why in r.skipped.items():
        print(f"SKIP   {sid}: {why}")
    print(f"enrolled {len(r.enrolled)} subject(s) as {args.list} in {', '.join(args.scope)} "
          f"with model {pipeline.model_id}; {len(r.rejects)} photo(s) rejected, {len(r.skipped)} subject(s) skipped")
    return 0 if r.enrolled else 1


def cmd_migrate(args) -> int:
    """Schema first, then the templates: every row an earlier release stored in clear is sealed
    with the configured key (again: nothing to do). With --from, rows are sealed on the way in."""
    from sync.central_migrate import copy_sqlite_central, migrate_schema
    from sync.central_seal import seal_existing

    if args.config is None:
        raise ConfigError("migrate needs --config FILE (the central whose database to create or fill)")
    cfg = load_central_config(args.config)
    database = cfg.database
    if args.from_file:
        report = copy_sqlite_central(Path(args.from_file), database, template_key=cfg.template_key_path,
                                     source_key=Path(args.from_key) if args.from_key else None)
        print(f"migrated {args.from_file} into {redact_dsn(database)}: {report.summary()}")
    else:
        before, after = migrate_schema(database)
        print(f"{redact_dsn(database)}: schema " + (f"{before} -> {after}" if before != after else f"{after}, current"))
        print(f"{redact_dsn(database)}: {seal_existing(database, cfg.template_key_path).summary()}")
    return 0


# ----- the operations console ----------------------------------------------------------------

def cmd_console(args) -> int:
    from console.config import load_console_config
    from console.server import run_console

    if args.config is None:
        raise ConfigError("the console needs --config FILE (the central's config, with an optional [console] table)")
    central_cfg, console_cfg = load_console_config(args.config)
    return run_console(central_cfg, console_cfg)


def _console_store(args):
    from console.store import ConsoleStore

    central = _central(args)
    return central, ConsoleStore(central.db)


def _actor(args) -> str:
    """Who ran the command: the operator id given and the kernel-reported Unix account."""
    import os
    import pwd

    try:
        unix = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        unix = str(os.getuid())
    return f"{args.operator} (unix {unix})"


def _read_password(args) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    import getpass

    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password: pipe it in with --password-stdin")
    first = getpass.getpass("new console password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ; nothing changed")
    return first


def cmd_console_user(args) -> int:
    central, store = _console_store(args)
    try:
        if args.user_cmd == "list":
            for a in store.accounts():
                locked = a.locked_until is not None and a.locked_until > time.time()
                state = "disabled" if a.disabled else ("locked" if locked else "active")
                print(f"{a.username}\t{a.role}\t{state}\tcreated by {a.created_by}")
            return 0
        name, by = args.username, _actor(args)
        if args.user_cmd == "add":
            a = store.add_account(name, args.role, _read_password(args), by)
            print(f"console account {a.username} ({a.role}) created by {by}")
        elif args.user_cmd == "passwd":
            store.set_password(name, _read_password(args), by)
            print(f"password of {name} changed by {by}; its sessions ended")
        elif args.user_cmd == "role":
            store.set_role(name, args.role, by)
            print(f"{name} is now {args.role} (changed by {by}); its sessions ended")
        elif args.user_cmd in ("disable", "enable"):
            store.set_disabled(name, args.user_cmd == "disable", by)
            print(f"{name} {args.user_cmd}d by {by}" + ("; its sessions ended" if args.user_cmd == "disable" else ""))
        elif args.user_cmd == "unlock":
            store.unlock(name, by)
            print(f"{name} unlocked by {by}")
        return 0
    finally:
        central.close()


def cmd_console_log(args) -> int:
    central, store = _console_store(args)
    try:
        for e in reversed(store.ops_log(args.last)):
            detail = "; ".join(f"{k}={v}" for k, v in e.detail.items() if v not in (None, "", []))
            print(f"{e.seq}\t{e.ts}\t{e.actor}\t{e.action}\t{e.outcome}\t{e.target}\t{e.client}\t{detail}")
        check = store.verify_ops_log()
        print(f"ops log chain: {'intact' if check.ok else 'BROKEN at entry ' + str(check.first_broken_seq)}, "
              f"{check.records} entries checked" + ("" if check.ok else f": {check.reason}"))
        return 0 if check.ok else 3
    finally:
        central.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate-central", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="central config (TOML with a [central] table)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_serve)
    with_config = config_parser_class("central config")
    sub = p.add_subparsers(dest="cmd", parser_class=with_config)
    sub.add_parser("serve", help="run the central service (the default)").set_defaults(func=cmd_serve)
    sub.add_parser("config-reference", help="print the [central] configuration reference (markdown)").set_defaults(
        func=cmd_config_reference)

    keys = sub.add_parser("keys", help="CURVE keys").add_subparsers(dest="keys_cmd", required=True,
                                                                          parser_class=with_config)
    gen = keys.add_parser("gen", help="generate NAME.key and NAME.key_secret, both 0600")
    gen.add_argument("--name", required=True)
    gen.add_argument("--out", required=True, help="directory (created 0700)")
    gen.add_argument("--force", action="store_true", help="replace existing files")
    gen.set_defaults(func=cmd_keys_gen)

    gate = sub.add_parser("gate", help="gates allowed to connect").add_subparsers(dest="gate_cmd", required=True,
                                                                                        parser_class=with_config)
    add = gate.add_parser("add", help="allow a gate's public key and set its scopes")
    add.add_argument("gate_id")
    add.add_argument("--public-key", required=True, help="the gate's NAME.key file")
    add.add_argument("--scope", action="append", required=True, help="lane:ID or flight:NO (repeatable)")
    add.set_defaults(func=cmd_gate_add)
    rm = gate.add_parser("remove", help="refuse a gate's key from now on")
    rm.add_argument("gate_id")
    rm.set_defaults(func=cmd_gate_remove)
    gate.add_parser("list", help="registered gates and admin tools").set_defaults(func=cmd_gate_list)

    asg = sub.add_parser("assign", help="the flight(s) a boarding gate boards now, replacing the previous ones")
    asg.add_argument("--gate", required=True, help="the boarding gate's id, e.g. G12")
    asg.add_argument("--flight", action="append", default=[], help="VN123-2026-12-02 or flight:VN123-2026-12-02")
    asg.add_argument("--none", action="store_true", help="the gate boards no flight now")
    asg.set_defaults(func=cmd_assign)

    admin = sub.add_parser("admin", help="admin tools allowed to send KVSET").add_subparsers(
        dest="admin_cmd", required=True, parser_class=with_config)
    aadd = admin.add_parser("add")
    aadd.add_argument("name")
    aadd.add_argument("--public-key", required=True)
    aadd.set_defaults(func=cmd_admin_add)

    sh = sub.add_parser("show", help="one subject for staff, with its display name")
    sh.add_argument("subject_id")
    sh.set_defaults(func=cmd_show)

    station = sub.add_parser("station", help="enrolment stations (check-in kiosks, counters)").add_subparsers(
        dest="station_cmd", required=True, parser_class=with_config)
    sadd = station.add_parser("add", help="allow a station's public key, bound to one airport")
    sadd.add_argument("station_id")
    sadd.add_argument("--public-key", required=True, help="the station's NAME.key file")
    sadd.add_argument("--airport", required=True, help="IATA code of the airport the station serves, e.g. SGN")
    sadd.set_defaults(func=cmd_station_add)
    srm = station.add_parser("remove", help="refuse a station's key from now on")
    srm.add_argument("station_id")
    srm.set_defaults(func=cmd_station_remove)

    rv = sub.add_parser("revoke", help="withdraw a subject (from all scopes unless --scope)")
    rv.add_argument("subject_id")
    rv.add_argument("--scope", action="append", help="lane:ID or flight:NO (repeatable)")
    rv.add_argument("--reason", default="")
    rv.set_defaults(func=cmd_revoke)

    sub.add_parser("expire", help="withdraw subjects whose validity has ended").set_defaults(func=cmd_expire)

    from models.registry import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
    from tools.gate_models import default_model_dir

    # "enroll" kept as an alias so scripts written for the first spelling keep working
    en = sub.add_parser("enrol", aliases=["enroll"],
                        help="enrol people from photos: one sub-folder per person, named by subject id")
    en.add_argument("--from", dest="from_dir", required=True, help="folder of per-person photo folders")
    en.add_argument("--scope", action="append", required=True, help="lane:ID or flight:NO (repeatable)")
    en.add_argument("--list", choices=["allow", "deny"], default="allow")
    en.add_argument("--valid-until", help="ISO-8601 end of validity, e.g. 2026-11-23T18:00Z (UTC if no offset)")
    en.add_argument("--models", default=str(default_model_dir()))
    en.add_argument("--detector", default=DEFAULT_DETECTOR)
    en.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    en.add_argument("--no-flip", action="store_true")
    en.set_defaults(func=cmd_enrol)

    mg = sub.add_parser("migrate", help="create or upgrade the central's schema (PostgreSQL) and seal templates "
                                        "stored in clear; --from copies a SQLite central into it")
    mg.add_argument("--from", dest="from_file", help="the SQLite central database file to copy")
    mg.add_argument("--from-key", help="the template key the SQLite central was sealed with "
                                       "(default: FILE.templates.key beside it; none needed if it is in clear)")
    mg.set_defaults(func=cmd_migrate)

    sub.add_parser("console", help="serve the operations console (web pages; settings in [console])").set_defaults(
        func=cmd_console)
    cu = sub.add_parser("console-user", help="operations console accounts (recorded in the ops audit log)")
    cus = cu.add_subparsers(dest="user_cmd", required=True, parser_class=with_config)
    for verb, help_ in (("add", "create an account"), ("passwd", "set a new password (ends its sessions)"),
                        ("role", "change the role (ends its sessions)"),
                        ("disable", "refuse its logins, end its sessions"),
                        ("enable", "allow its logins again"), ("unlock", "end a lock-out after failed logins")):
        c = cus.add_parser(verb, help=help_)
        c.add_argument("username")
        c.add_argument("--operator", required=True, help="who makes the change (recorded with the Unix account)")
        if verb in ("add", "role"):
            c.add_argument("--role", required=True, choices=["viewer", "supervisor"])
        if verb in ("add", "passwd"):
            c.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        c.set_defaults(func=cmd_console_user)
    cus.add_parser("list", help="every account, its role and state").set_defaults(func=cmd_console_user)
    cl = sub.add_parser("console-log", help="the console's ops audit log, its hash chain verified")
    cl.add_argument("--last", type=int, default=50)
    cl.set_defaults(func=cmd_console_log)

    ls = sub.add_parser("list", help="enrolled subjects")
    ls.add_argument("--scope")
    ls.add_argument("--status", choices=["active", "revoked", "expired"])
    ls.set_defaults(func=cmd_list)
    return p


def main(argv=None) -> int:
    return run_command("gate-central", build_parser(), argv,
                       (ConfigError, KeyFileError, EnrolmentError, ModelError, StorageError, TemplateKeyError,
                        TemplateIntegrityError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
