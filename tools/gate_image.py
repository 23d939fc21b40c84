"""gate-image: build, verify and install signed gate images (field engineers)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from gate.checks import format_table, passed
from gate.image import ImageError, build_bundle, verify_bundle
from gate.image_signing import PRIVATE_NAME, PUBLIC_NAME, SigningKeyError, generate_signing_key


def _selftest_options(args):
    from gate.selftest import SelftestOptions

    return SelftestOptions(camera_timeout_s=args.camera_timeout, min_free_mb=args.min_free_mb)


def cmd_keygen(args) -> int:
    files = generate_signing_key(Path(args.out))
    print(f"private key (keep it off the gates, 0600): {files.private}")
    print(f"public key (install on every gate as --pubkey): {files.public}")
    return 0


def cmd_build(args) -> int:
    from tqdm import tqdm

    with tqdm(total=0, unit="B", unit_scale=True, desc="writing bundle", disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        built = build_bundle(site=args.site, lane=args.lane, config=Path(args.config),
                             central_key=Path(args.central_key), out_dir=Path(args.out),
                             signing_key=Path(args.key), models_dir=Path(args.models) if args.models else None,
                             units_dir=Path(args.units) if args.units else None, progress=progress,
                             image_version=args.image_version, gate_ids=tuple(args.gate_id) if args.gate_id else None)
    m = built.manifest
    print(f"{built.path}: site {m.site}, lane {m.lane}, gate(s) {', '.join(m.gate_ids)}, image version "
          f"{m.image_version}, software {m.software_version}, "
          f"{len(m.files)} files, models {', '.join(d['name'] for d in m.models)}, signed by {m.signer}")
    return 0


def cmd_verify(args) -> int:
    checks = verify_bundle(Path(args.bundle), Path(args.pubkey))
    print(json.dumps([c.to_dict() for c in checks], indent=2) if args.json else format_table(checks))
    return 0 if passed(checks) else 1


def _downgrade(args):
    """--allow-downgrade needs a named engineer and a reason; either alone is a mistake."""
    from gate.image_policy import Downgrade

    if not args.allow_downgrade:
        if args.operator or args.reason:
            raise ImageError("--operator and --reason go with --allow-downgrade")
        return None
    if not args.operator or not args.reason:
        raise ImageError("--allow-downgrade needs --operator ID and --reason TEXT (both are audited)")
    return Downgrade(args.operator, args.reason)


def cmd_install(args) -> int:
    from gate.image_install import install
    from gate.selftest import selftest_config

    root = Path(args.root)
    pubkey = Path(args.pubkey) if args.pubkey else root / PUBLIC_NAME
    opts = _selftest_options(args)
    result = install(Path(args.bundle), root, pubkey, lambda cfg: selftest_config(cfg, opts), _downgrade(args))
    print(format_table(result.checks))
    if result.generated_key:
        print(f"generated this gate's CURVE keypair: {result.generated_key} — register its public key "
              f"with the central (gate-central gate add)")
    if result.rolled_back:
        back = f"rolled back to slot {result.previous}" if result.previous else "no previous slot: nothing active"
        print(f"install FAILED its self-test in slot {result.slot}; {back}", file=sys.stderr)
        return 1
    print(f"installed into slot {result.slot} (previous: {result.previous or 'none'}, kept)")
    return 0


def cmd_rollback(args) -> int:
    from gate.image_install import rollback

    print(f"current → slot {rollback(Path(args.root), _downgrade(args))}")
    return 0


def cmd_status(args) -> int:
    from gate.image_install import status

    rows = status(Path(args.root))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    print(f"{'slot':4s}  {'current':7s}  {'site':8s}  {'lane':10s}  {'version':10s}  {'software':8s}  {'built':25s}  "
          f"{'installed':25s}  selftest")
    for r in rows:
        if not r.installed_at and not r.selftest:
            print(f"{r.name:4s}  {'*' if r.current else '':7s}  (empty)")
            continue
        print(f"{r.name:4s}  {'*' if r.current else '':7s}  {r.site:8s}  {r.lane:10s}  {r.image_version:<10d}  "
              f"{r.software_version:8s}  "
              f"{r.built_at:25s}  {r.installed_at:25s}  {r.selftest}")
    return 0


def _add_downgrade_options(s) -> None:
    s.add_argument("--allow-downgrade", action="store_true",
                   help="permit an image older than the newest installed here (audited)")
    s.add_argument("--operator", help="who allows the downgrade (recorded in the gate's audit log)")
    s.add_argument("--reason", help="why (recorded in the gate's audit log)")


def _add_selftest_options(s) -> None:
    s.add_argument("--camera-timeout", type=float, default=5.0, help="seconds for the camera to deliver frames")
    s.add_argument("--min-free-mb", type=float, default=500.0, help="free space needed for the state directory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate-image", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("keygen", help="create the field-engineering Ed25519 signing key")
    s.add_argument("--out", required=True, help=f"folder for {PRIVATE_NAME} (0600) and {PUBLIC_NAME}")
    s.set_defaults(func=cmd_keygen)
    s = sub.add_parser("build", help="build and sign a bundle for one lane")
    s.add_argument("--site", required=True)
    s.add_argument("--lane", required=True)
    s.add_argument("--config", required=True, help="the lane's config; [models] dir must be \"models\"")
    s.add_argument("--central-key", required=True, help="the central's public CURVE key (NAME.key)")
    s.add_argument("--out", required=True, help="folder to write the bundle into")
    s.add_argument("--key", required=True, help=f"the field-engineering private key ({PRIVATE_NAME})")
    s.add_argument("--models", help="take models from here instead of the config's [models] dir")
    s.add_argument("--units", help="folder of systemd units (default: the repository's systemd/)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.add_argument("--image-version", type=int, help="monotonic image version (default: build time, UTC seconds); "
                                                    "gates refuse to go below the newest they installed")
    s.add_argument("--gate-id", action="append", help="a gate this bundle may be installed on (repeatable; "
                                                       "default: the config's gate id)")
    s.set_defaults(func=cmd_build)
    s = sub.add_parser("verify", help="check signature, every file's hash, config and models")
    s.add_argument("bundle")
    s.add_argument("--pubkey", required=True, help=f"trusted field-engineering public key ({PUBLIC_NAME})")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify)
    s = sub.add_parser("install", help="install into the inactive slot, self-test, roll back on failure")
    s.add_argument("bundle")
    s.add_argument("--root", required=True, help="install root (slots/, current, data/)")
    s.add_argument("--pubkey", help=f"trusted public key (default ROOT/{PUBLIC_NAME})")
    _add_selftest_options(s)
    _add_downgrade_options(s)
    s.set_defaults(func=cmd_install)
    s = sub.add_parser("rollback", help="make the previous slot current again")
    s.add_argument("--root", required=True)
    _add_downgrade_options(s)
    s.set_defaults(func=cmd_rollback)
    s = sub.add_parser("status", help="slots, versions, which one is current")
    s.add_argument("--root", required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ImageError, SigningKeyError) as e:
        print(f"gate-image {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
