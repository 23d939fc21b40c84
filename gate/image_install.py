"""A/B install of gate images: ROOT/slots/{a,b}, ROOT/current → the active slot.

A new bundle goes into the slot that is not running, is verified there, and only then does
`current` move, by renaming a fresh symlink over the old one (one atomic rename: a power cut
leaves either the old or the new slot active, never neither). The self-test then runs against
the new slot; if it fails, `current` moves back. The previous slot is kept until the next
install overwrites it, so a rollback needs nothing from the network.

ROOT/data (watchlist, audit, keys) belongs to the running lane and is never written,
removed or moved here. The exceptions: the gate's CURVE keypair, which must come into
being on the device (created at first install when the config's [sync] names a secret key
file that does not yet exist, and never replaced), and the audit record of a deliberate
downgrade, appended to the gate's audit log before the older image is installed.

Beyond the signature, gate.image_policy refuses a bundle built for another gate and one older
than the newest image installed here (ROOT/IMAGE_STATE.json).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from gate.checks import Check, Status, passed
from gate.image import (
    CONFIG_NAME,
    INSTALL_RECORD_NAME,
    BundleManifest,
    ImageError,
    extract_bundle,
    read_manifest,
    software_version,
    verify_tree,
)
from gate.image_policy import Downgrade, ImageState, check_bundle, initial_state, load_state, save_state

log = logging.getLogger(__name__)

SLOTS = ("a", "b")
CURRENT = "current"
SelfTest = Callable[[Path], list[Check]]  # config path of the new slot → rows


@dataclass(frozen=True)
class InstallResult:
    slot: str
    previous: str | None
    active: str | None  # the slot `current` points at after install (and any rollback)
    checks: list[Check]
    rolled_back: bool
    generated_key: Path | None  # the gate's new CURVE secret key file, at first install


@dataclass(frozen=True)
class SlotStatus:
    name: str
    current: bool
    software_version: str = ""
    site: str = ""
    lane: str = ""
    built_at: str = ""
    installed_at: str = ""
    selftest: str = ""  # PASS / FAIL / "" (not installed)
    installed_software: str = ""
    image_version: int = 0


def slot_dir(root: Path, name: str) -> Path:
    return Path(root) / "slots" / name


def current_slot(root: Path) -> str | None:
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link)).name
    return target if target in SLOTS else None


def _switch(root: Path, slot: str | None) -> None:
    """Point `current` at `slot` (or remove it) with a single rename."""
    root = Path(root)
    link = root / CURRENT
    if slot is None:
        if link.is_symlink():
            link.unlink()
        return
    tmp = root / f".{CURRENT}.new"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(f"slots/{slot}", tmp)
    os.replace(tmp, link)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_gate_keypair(config_path: Path) -> Path | None:
    from gate.config import load_config
    from sync.keys import generate_keypair_files

    cfg = load_config(config_path)
    if cfg.sync is None or cfg.sync.dev_plain_loopback or cfg.sync.secret_key_file is None:
        return None
    secret = Path(cfg.sync.secret_key_file)
    if secret.exists():
        return None
    suffix = ".key_secret"
    if not secret.name.endswith(suffix):
        raise ImageError(f"[sync] secret_key_file {secret} must end in {suffix} to be generated at install")
    files = generate_keypair_files(secret.parent, secret.name[: -len(suffix)])
    log.warning("generated this gate's CURVE keypair at %s; register %s with the central "
                "(gate-central gate add)", files.secret, files.public)
    return files.secret


def _pending_registration(check: Check, secret: Path) -> Check:
    """A key made a moment ago cannot be on the central's allowlist yet, so at first install
    an unanswered central is expected; every other check still has to pass."""
    if check.name != "central" or check.status is not Status.FAIL:
        return check
    public = secret.with_name(secret.name.removesuffix(".key_secret") + ".key")
    return Check("central", Status.WARN, f"{check.detail} — expected at first install: register {public} with the "
                                          "central (gate-central gate add), then run gatectl selftest")


def _write_record(slot_path: Path, bundle: Path, selftest: str) -> None:
    record = {"installed_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
              "bundle": Path(bundle).name, "selftest": selftest, "installed_software": software_version()}
    (slot_path / INSTALL_RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _config_gate(config_path: Path) -> tuple[str, Path]:
    from configschema import ConfigError
    from gate.config import load_config

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise ImageError(f"config: {e}") from None
    return cfg.gate.id, cfg.gate.state_dir


def _root_state(root: Path, previous: str | None) -> ImageState:
    """IMAGE_STATE.json, or for a root set up before it existed, what the running slot says."""
    state = load_state(root)
    if state.gate_id is None and previous is not None:
        try:
            manifest = read_manifest(slot_dir(root, previous))
            gate_id, _ = _config_gate(slot_dir(root, previous) / CONFIG_NAME)
        except ImageError:
            return state
        state = ImageState(gate_id=gate_id, floor=max(state.floor, manifest.image_version))
    return state


def _record_downgrade(state_dir: Path, manifest: BundleManifest, floor: int, downgrade: Downgrade, what: str) -> None:
    """Audit first: the older image goes on only once its record is committed."""
    from gate.audit import AuditLog, AuditWriteError

    try:
        with AuditLog(state_dir) as audit:
            audit.append({"event": "image_downgrade", "gate": manifest.gate_id, "lane": manifest.lane,
                          "operator": downgrade.operator, "reason": downgrade.reason, "what": what,
                          "from_version": floor, "to_version": manifest.image_version,
                          "software_version": manifest.software_version})
    except (AuditWriteError, OSError, ValueError) as e:
        raise ImageError(f"the downgrade could not be recorded in the audit log in {state_dir} ({e}); "
                         "nothing installed") from None
    log.warning("image downgrade from version %d to %d (%s) allowed by %s: %s", floor, manifest.image_version, what,
                downgrade.operator, downgrade.reason)


def install(bundle: Path, root: Path, public_key: Path, selftest: SelfTest,
            downgrade: Downgrade | None = None) -> InstallResult:
    """Install into the inactive slot, switch, self-test, roll back on failure.

    Raises ImageError (with nothing changed) when the bundle does not verify, is built for
    another gate, or is older than the newest image installed here (unless `downgrade`).
    """
    root = Path(root)
    (root / "slots").mkdir(parents=True, exist_ok=True)
    previous = current_slot(root)
    target = "b" if previous == "a" else "a"
    staging = root / "slots" / f".staging-{target}"
    if staging.exists():
        shutil.rmtree(staging)
    extract_bundle(bundle, staging)
    try:
        checks = verify_tree(staging, public_key)
        if not passed(checks):
            bad = "; ".join(f"{c.name}: {c.detail}" for c in checks if c.status is Status.FAIL)
            raise ImageError(f"{bundle} does not verify, nothing installed: {bad}")
        manifest = read_manifest(staging)
        config_gate, state_dir = _config_gate(staging / CONFIG_NAME)
        state = _root_state(root, previous)
        if permitted := check_bundle(state, manifest, config_gate, downgrade):
            _record_downgrade(state_dir, manifest, state.floor, permitted, f"install {Path(bundle).name}")
        state = initial_state(state, manifest, config_gate)
    except BaseException:
        shutil.rmtree(staging)
        raise
    dest = slot_dir(root, target)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    generated = _ensure_gate_keypair(dest / CONFIG_NAME)
    _switch(root, target)
    log.info("slot %s active (was %s); running the self-test", target, previous or "none")
    rows = selftest(root / CURRENT / CONFIG_NAME)
    if generated:
        rows = [_pending_registration(c, generated) for c in rows]
    ok = passed(rows)
    _write_record(dest, bundle, "PASS" if ok else "FAIL")
    if ok:
        save_state(root, ImageState(gate_id=state.gate_id, floor=max(state.floor, manifest.image_version)))
    else:
        _switch(root, previous)
        log.error("self-test of slot %s failed; %s", target,
                  f"rolled back to slot {previous}" if previous else "no previous slot, nothing active")
    return InstallResult(slot=target, previous=previous, active=target if ok else previous, checks=rows,
                         rolled_back=not ok, generated_key=generated)


def rollback(root: Path, downgrade: Downgrade | None = None) -> str:
    """Make the other slot current again, if it holds an install whose self-test passed. Going
    back to an older image version is a downgrade like any other: it needs `downgrade`."""
    root = Path(root)
    now = current_slot(root)
    if now is None:
        raise ImageError(f"{root}: no active slot to roll back from")
    other = "b" if now == "a" else "a"
    st = _slot_status(root, other, False)
    if st.selftest != "PASS":
        raise ImageError(f"{root}: slot {other} holds no install that passed its self-test; nothing to roll back to")
    manifest = read_manifest(slot_dir(root, other))
    config_gate, state_dir = _config_gate(slot_dir(root, other) / CONFIG_NAME)
    state = _root_state(root, now)
    if permitted := check_bundle(state, manifest, config_gate, downgrade):
        _record_downgrade(state_dir, manifest, state.floor, permitted, f"rollback to slot {other}")
    _switch(root, other)
    return other


def _slot_status(root: Path, name: str, is_current: bool) -> SlotStatus:
    path = slot_dir(root, name)
    if not path.is_dir():
        return SlotStatus(name, is_current)
    try:
        m = read_manifest(path)
        record = json.loads((path / INSTALL_RECORD_NAME).read_text())
    except (ImageError, OSError, ValueError):
        return SlotStatus(name, is_current, selftest="unreadable")
    return SlotStatus(name, is_current, software_version=m.software_version, site=m.site, lane=m.lane,
                      built_at=m.built_at, installed_at=str(record.get("installed_at", "")),
                      selftest=str(record.get("selftest", "")),
                      installed_software=str(record.get("installed_software", "")), image_version=m.image_version)


def status(root: Path) -> list[SlotStatus]:
    now = current_slot(root)
    return [_slot_status(root, name, name == now) for name in SLOTS]
