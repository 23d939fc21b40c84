"""`gated --check`: what can be checked without starting the lane, each row naming its config key.

`gatectl selftest` opens the camera and the turnstile (so the daemon must be stopped); this
is the quick check a field engineer runs after editing a config, before a restart: do the
files and devices the config names exist, are the models intact, are the keys private, can
the state dir be written. Nothing is opened beyond reading files and listing device nodes.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from gate.checks import Check, Status
from gate.config import GateConfig


def _camera(cfg: GateConfig) -> Check:
    src = cfg.camera.source
    if src.isdigit():
        dev = Path(f"/dev/video{src}")
        ok = dev.exists()
        return Check("camera.source", Status.PASS if ok else Status.FAIL,
                     f"{dev} {'exists' if ok else 'does not exist (is the camera plugged in?)'}")
    if "://" in src:
        return Check("camera.source", Status.SKIP, f"{src.split('://')[0]} stream: reachable only at run time")
    p = Path(src) if Path(src).is_absolute() else (cfg.path.parent if cfg.path else Path(".")) / src
    return Check("camera.source", Status.PASS if p.exists() else Status.FAIL,
                 f"{p} {'exists' if p.exists() else 'does not exist'}")


def _models(cfg: GateConfig) -> list[Check]:
    from models.manifest import ModelError, load_model

    m = cfg.models
    rows = []
    for key, names in (("models.detector", [m.detector]), ("models.embedder", [m.embedder]), ("models.pad", m.pad)):
        for name in names:
            try:
                problems = load_model(m.dir, name).verify()
            except ModelError as e:
                problems = [str(e)]
            rows.append(Check(key, Status.FAIL if problems else Status.PASS,
                              problems[0] if problems else f"{name}: files present, sha256 intact"))
    if not m.pad:
        rows.append(Check("models.pad", Status.FAIL if m.pad_required else Status.WARN,
                          "none provisioned" + (" and models.pad_required = true: the lane will not start"
                                                if m.pad_required else " (no presentation-attack detection)")))
    return rows


def _port(key: str, port: str) -> Check:
    ok = Path(port).exists()
    return Check(key, Status.PASS if ok else Status.FAIL, f"{port} {'exists' if ok else 'does not exist'}")


def _private_key(key: str, path: Path | None, must_exist: bool = True) -> Check:
    if path is None:
        return Check(key, Status.SKIP, "not configured")
    if not path.exists():
        return Check(key, Status.FAIL if must_exist else Status.PASS,
                     f"{path} does not exist" + ("" if must_exist else " (created 0600 at first start)"))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check(key, Status.FAIL, f"{path} has mode {mode:04o}; it must be owner-only (chmod 600 {path})")
    if not os.access(path, os.R_OK):
        return Check(key, Status.FAIL, f"{path} is not readable by this user")
    return Check(key, Status.PASS, f"{path}: readable, mode {mode:04o}")


def _state_dir(cfg: GateConfig) -> Check:
    d = cfg.gate.state_dir
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("/"))
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".gated-check-"):
            pass
    except OSError as e:
        return Check("gate.state_dir", Status.FAIL, f"{probe} is not writable: {e.strerror}")
    free_mb = os.statvfs(probe).f_bavail * os.statvfs(probe).f_frsize / 2 ** 20
    if free_mb < 50:
        return Check("gate.state_dir", Status.FAIL, f"{probe}: only {free_mb:.0f} MB free (audit records need room)")
    return Check("gate.state_dir", Status.PASS, f"{d}{'' if d.exists() else ' (will be created)'}: writable, "
                                               f"{free_mb:.0f} MB free")


def preflight(cfg: GateConfig) -> list[Check]:
    rows = [_camera(cfg), *_models(cfg), _state_dir(cfg)]
    port, scbk = getattr(cfg.device, "port", None), getattr(cfg.device, "scbk_file", None)
    if port:
        rows.append(_port("device.port", port))
    if scbk:
        rows.append(_private_key("device.scbk_file", Path(scbk)))
    if cfg.scanner is not None:
        rows.append(_port("scanner.port", cfg.scanner.port))
    if cfg.watchlist.encrypt_templates or cfg.privacy.keep_refer_crops:
        rows.append(_private_key("watchlist.key_file", cfg.template_key_file, must_exist=False))
    if cfg.sync is not None:
        rows.append(_private_key("sync.secret_key_file", cfg.sync.secret_key_file,
                                 must_exist=not cfg.sync.dev_plain_loopback))
        pub = cfg.sync.central_public_key_file
        if pub is not None:
            rows.append(Check("sync.central_public_key_file", Status.PASS if pub.is_file() else Status.FAIL,
                              f"{pub} {'exists' if pub.is_file() else 'does not exist'}"))
    return rows
