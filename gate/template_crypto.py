"""Encryption of face templates at rest (AES-256-GCM, key in an owner-only file).

A template is biometric data: a copied watchlist.db must not hand out usable vectors, so
each template blob is sealed with a key that lives in a separate 0600 file (on a gate: under
/var/lib/edgegate/keys/, 0700). The subject id and model id are the GCM associated data: a
blob moved to another subject's row (to make someone match as someone else) or relabelled as
another model fails authentication instead of decrypting.

Blob layout: version byte | 12-byte random nonce | ciphertext + 16-byte tag. Random nonces
are safe far beyond a watchlist's lifetime of writes under one key (the limit is ~2^32).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gate.sqlite_store import create_private_file, require_private

KEY_BYTES = 32
NONCE_BYTES = 12
BLOB_VERSION = 1
_AD_PREFIX = b"edgegate/template/v1"


class TemplateKeyError(RuntimeError):
    """The key is missing, malformed, or not the one the stored templates were sealed with."""


class TemplateIntegrityError(RuntimeError):
    """A stored template failed authentication: altered, truncated, or moved between rows."""


def _associated_data(subject_id: str, model_id: str) -> bytes:
    # Length-prefixed, so ("ab", "c") and ("a", "bc") bind differently.
    parts = [_AD_PREFIX, subject_id.encode("utf-8"), model_id.encode("utf-8")]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


class TemplateCipher:
    """Seals and opens template blobs with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise TemplateKeyError(f"template key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        # Names the key without revealing it (sha256 of a 256-bit random key), so the store
        # can tell "wrong key" apart from "tampered blob".
        self.key_id = hashlib.sha256(b"edgegate template key id\0" + key).hexdigest()[:16]

    @classmethod
    def create_key_file(cls, path: Path) -> "TemplateCipher":
        """Write a new random key to `path` (created 0600; an existing file is never overwritten)."""
        path = Path(path)
        create_private_file(path)
        key = os.urandom(KEY_BYTES)
        with open(path, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        return cls(key)

    @classmethod
    def from_key_file(cls, path: Path) -> "TemplateCipher":
        """Load a key, refusing a file that group or others can access."""
        path = Path(path)
        require_private(path)
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise TemplateKeyError(f"{path} holds {len(key)} bytes; a template key is exactly {KEY_BYTES} raw bytes")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> "TemplateCipher":
        return cls.from_key_file(path) if Path(path).exists() else cls.create_key_file(path)

    def seal(self, plaintext: bytes, subject_id: str, model_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _associated_data(subject_id, model_id))
        return bytes([BLOB_VERSION]) + nonce + sealed

    def open(self, blob: bytes, subject_id: str, model_id: str) -> bytes:
        if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != BLOB_VERSION:
            raise TemplateIntegrityError(f"template blob of subject {subject_id!r} ({model_id}) is malformed")
        nonce, sealed = blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, _associated_data(subject_id, model_id))
        except InvalidTag:
            raise TemplateIntegrityError(
                f"template of subject {subject_id!r} ({model_id}) failed authentication: "
                "altered, or copied from another subject's row") from None
