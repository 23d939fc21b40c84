"""Per-person PINs for the commands that change the lane, checked by the daemon.

The Unix account behind the control socket is often one shared account at a lane, and an
operator id typed on the command line is a claim. With `control.staff_file` set, every
command that changes the lane needs that person's PIN, the daemon checks it, and the audit
record says the id was verified. The file (JSON, 0600, owned by the daemon's user) holds one
scrypt hash per staff id, never a PIN; it is written by `gatectl staff-pin`.

Guessing: after `MAX_FAILURES` wrong PINs for one id, that id is refused for `LOCKOUT_S`
(a 6-digit PIN then takes years to guess on one lane); the failures are logged.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path

from gate.sqlite_store import require_private

log = logging.getLogger(__name__)

MAX_FAILURES = 5
LOCKOUT_S = 300.0
MIN_PIN_LEN = 4
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}  # ~50 ms per check on a small gate CPU


class StaffAuthError(ValueError):
    """A staff file that cannot be used, or a PIN that cannot be set; the message says why."""


def _hash(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, dklen=32, **_SCRYPT)


def set_pin(path: Path, operator: str, pin: str) -> None:
    """Add or replace `operator`'s PIN in the staff file (created 0600)."""
    if not operator.strip() or len(operator) > 128:
        raise StaffAuthError("a staff id is 1 to 128 characters")
    if len(pin) < MIN_PIN_LEN or not pin.isdigit():
        raise StaffAuthError(f"a PIN is at least {MIN_PIN_LEN} digits")
    path = Path(path)
    entries = StaffRegistry(path).entries if path.exists() else {}
    salt = secrets.token_bytes(16)
    entries[operator] = {"salt": salt.hex(), "scrypt": _hash(pin, salt).hex()}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class StaffRegistry:
    def __init__(self, path: Path, clock=time.monotonic) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StaffAuthError(f"control.staff_file {self.path} does not exist (create it with gatectl staff-pin)")
        require_private(self.path)
        try:
            self.entries: dict[str, dict[str, str]] = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise StaffAuthError(f"control.staff_file {self.path} is not a staff file: {e}") from None
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def verify(self, operator: str, pin: str | None) -> str | None:
        """None when `pin` is `operator`'s PIN, else the reason for refusing (for the reply)."""
        now = self._clock()
        recent = [t for t in self._failures.get(operator, []) if now - t < LOCKOUT_S]
        self._failures[operator] = recent
        if len(recent) >= MAX_FAILURES:
            return f"{operator}: too many wrong PINs; try again in {LOCKOUT_S - (now - recent[0]):.0f} s"
        entry = self.entries.get(operator)
        if not pin:
            return f"{operator}: this lane needs your PIN (--pin)"
        salt = bytes.fromhex(entry["salt"]) if entry else b"\0" * 16  # an unknown id costs the same time
        digest = _hash(pin, salt)
        ok = entry is not None and hmac.compare_digest(digest, bytes.fromhex(entry["scrypt"]))
        if ok:
            self._failures.pop(operator, None)
            return None
        recent.append(now)
        log.warning("wrong PIN or unknown staff id %r (%d recent failures)", operator, len(recent))
        return f"{operator}: staff id or PIN not accepted"
