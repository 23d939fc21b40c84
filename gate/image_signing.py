"""The field-engineering signing key: Ed25519, PEM files, the private half owner-only.

A gate installs only bundles signed by a key it trusts, so whoever can read the private key
can put software-adjacent files (config, models, the central's key) on every lane. The
private key is therefore written 0600 and refused when it has become readable by others,
the same rule sync.keys applies to CURVE secrets.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME = "field-engineering.key"
PUBLIC_NAME = "field-engineering.pub"


class SigningKeyError(Exception):
    """A signing key file that is missing, malformed, the wrong kind or too widely readable."""


@dataclass(frozen=True)
class SigningKeyFiles:
    private: Path
    public: Path


def generate_signing_key(directory: Path) -> SigningKeyFiles:
    """Create field-engineering.key (0600) and field-engineering.pub; never overwrites."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = SigningKeyFiles(directory / PRIVATE_NAME, directory / PUBLIC_NAME)
    for p in (files.private, files.public):
        if p.exists():
            raise SigningKeyError(f"{p} already exists; refusing to replace a signing key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(files.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    files.public.write_bytes(public_pem)
    return files


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"cannot read signing key {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                              "run chmod 600 on it, and replace the key if it may have leaked")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"cannot read public key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise SigningKeyError(f"{path} is not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def public_fingerprint(key: Ed25519PublicKey) -> str:
    """Short hex id of a public key, for tables and logs (the raw 32 bytes, hex, first 16)."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()[:16]


def signature_valid(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
