"""The gate's name for the template cipher, which lives in sync.template_crypto.

The central seals its templates and record bodies with the same class, and `sync` may not
import `gate` (tests/test_import_rules.py), so the one cipher moved there; the gate's modules
and any code written against this name keep working.
"""
from __future__ import annotations

from sync.template_crypto import (
    BLOB_VERSION,
    KEY_BYTES,
    NONCE_BYTES,
    TemplateCipher,
    TemplateIntegrityError,
    TemplateKeyError,
)

__all__ = ["BLOB_VERSION", "KEY_BYTES", "NONCE_BYTES", "TemplateCipher", "TemplateIntegrityError", "TemplateKeyError"]
