"""CURVE keypairs on disk: created owner-only, loaded only if still owner-only.

Files follow the ZeroMQ certificate layout that pyzmq and czmq read (`NAME.key` holds the
public key, `NAME.key_secret` both keys), so operators can use either toolchain. A secret key
that has become readable by group or others is refused: whoever could read it could pose as
this gate (or as the central).

The owner-only file rules for every other secret (the template key, the gate's databases) live
here too, in `require_private` and `create_private_file`, because both rooms need them: the gate
for its stores and keys, the central (which may not import gate) for its template key.
"""
from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"


OWNER_ONLY_MASK = 0o077  # any group/other permission bit makes a file "not private"


class KeyFileError(Exception):
    """A key file that is missing, malformed or too widely readable."""


class InsecureFileError(PermissionError):
    """A store or key file is readable or writable by someone other than its owner."""


def require_private(path: Path) -> None:
    """Refuse a file whose mode grants anything to group or others."""
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & OWNER_ONLY_MASK:
        raise InsecureFileError(
            f"{path} has mode {mode:04o}; it holds sensitive data and must be owner-only "
            f"(chmod 600 {path}) before edgegate will use it"
        )


def create_private_file(path: Path) -> None:
    """Create an empty 0600 file; O_EXCL so an existing file is never silently re-moded.
    The directory is fsynced too, so the new name survives a power cut like its contents."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    fsync_directory(Path(path).parent)


def fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class CurveKeypair:
    public: bytes  # z85, 40 bytes
    secret: bytes  # z85, 40 bytes


@dataclass(frozen=True)
class KeyFiles:
    public: Path
    secret: Path


def key_files(directory: Path, name: str) -> KeyFiles:
    return KeyFiles(public=Path(directory) / f"{name}{PUBLIC_SUFFIX}",
                    secret=Path(directory) / f"{name}{SECRET_SUFFIX}")


def _certificate_text(name: str, public: bytes, secret: bytes | None) -> str:
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ZeroMQ CURVE {kind} Certificate for {name}, "
        f"generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} by edgegate",
        "#   Owner-only permissions (0600) are required; edgegate refuses a wider secret key file.",
        "",
        "metadata",
        f'    name = "{name}"',
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def _write_owner_only(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def generate_keypair_files(directory: Path, name: str, overwrite: bool = False) -> KeyFiles:
    """Create NAME.key and NAME.key_secret (both 0600) in `directory` (created 0700)."""
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name")
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = key_files(directory, name)
    for path in (files.public, files.secret):
        if path.exists():
            if not overwrite:
                raise KeyFileError(f"{path} already exists; refusing to replace a key (use overwrite)")
            path.unlink()
    public, secret = zmq.curve_keypair()
    _write_owner_only(files.secret, _certificate_text(name, public, secret))
    _write_owner_only(files.public, _certificate_text(name, public, None))
    return files


def _check_owner_only(path: Path) -> None:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                           "run chmod 600 on it, and replace the key if it may have leaked")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise KeyFileError(f"{path} is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})")


def _load(path: Path) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"key file {path} does not exist")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a ZeroMQ certificate: {exc}") from exc
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(f"{path} does not hold 40-character Z85 CURVE keys")
    return public, secret


def load_keypair(secret_path: Path) -> CurveKeypair:
    secret_path = Path(secret_path)
    if not secret_path.is_file():
        raise KeyFileError(f"key file {secret_path} does not exist")
    _check_owner_only(secret_path)
    public, secret = _load(secret_path)
    if secret is None:
        raise KeyFileError(f"{secret_path} holds no secret key (is it the public .key file?)")
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{secret_path}: the public key does not belong to the secret key")
    return CurveKeypair(public=public, secret=secret)


def load_public_key(path: Path) -> bytes:
    """Read the public key from a NAME.key (or NAME.key_secret) file."""
    return _load(path)[0]
