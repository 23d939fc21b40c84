"""OSDP secure channel base key (SCBK) files.

Whoever holds the SCBK can open the turnstile, so the file must be readable by the gate's
user only; a key file that others can read is refused rather than used, so a provisioning
mistake shows up at start-up instead of in an audit.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

SCBK_LEN = 16


class KeyFileError(ValueError):
    """The key file is missing, malformed or too widely readable."""


def load_scbk(path: str | os.PathLike[str]) -> bytes:
    """Read a 16-byte key stored as 32 hex digits (surrounding whitespace allowed)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"SCBK file {path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise KeyFileError(f"SCBK file {path} is not a regular file")
    if mode & 0o077:
        raise KeyFileError(
            f"SCBK file {path} has mode {stat.S_IMODE(mode):04o}; it must not be readable "
            f"by group or others (chmod 600)")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"SCBK file {path} must hold {SCBK_LEN * 2} hex digits") from None
    if len(key) != SCBK_LEN:
        raise KeyFileError(f"SCBK file {path} holds {len(key)} bytes, expected {SCBK_LEN}")
    return key


def write_scbk(path: str | os.PathLike[str], key: bytes | None = None) -> bytes:
    """Create a key file with mode 0600 (a fresh random key unless one is given).

    The file is created with its final mode, never widened and then narrowed, and an
    existing file is not overwritten: replacing a PD's key is a deliberate act.
    """
    key = secrets.token_bytes(SCBK_LEN) if key is None else key
    if len(key) != SCBK_LEN:
        raise KeyFileError(f"an SCBK is {SCBK_LEN} bytes, got {len(key)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
    return key
