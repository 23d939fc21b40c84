"""Where the reference photo a traveller is verified against comes from, and what vouches for it.

The station only sees `IdentityReference`: an opaque subject id (a document number or an
identity provider's id, never derived from a name), the display name as the person writes it
(with diacritics; kept at the central for staff, never sent to a gate), the decoded photo, its
source, and the list of checks that passed. Two sources exist:

- `ChipDocumentSource`: DG1 + DG2 + EF.SOD read from an ICAO 9303 chip (CCCD or passport),
  passively authenticated against the configured CSCA list;
- `ProviderFileSource`: what an identity-provider integration (VNeID) hands over: a photo file
  and a small JSON statement naming the subject, the display name and the photo's sha256,
  signed with the provider's Ed25519 key that the station is configured to trust.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kiosk.icao9303 import DocumentError, parse_dg1, parse_dg2, passive_authentication
from sync.scopes import ScopeError, check_id
from vision.image_io import ImageError, decode_image

MAX_PHOTO_BYTES = 2 << 20
MAX_STATEMENT_BYTES = 4096
MAX_DISPLAY_NAME = 128


class IdentityError(ValueError):
    """A reference that cannot be trusted or read; the message says which check failed."""


@dataclass(frozen=True)
class IdentityReference:
    subject_id: str  # opaque: document number or provider id
    display_name: str  # as the person writes it, NFC-normalised ("Nguyễn Văn An")
    image: np.ndarray  # decoded BGR reference photo, in memory only
    source: str  # "icao9303:VNM" | "provider:vneid"
    verified: tuple[str, ...]  # the checks that passed, for the audit record


class IdentitySource(Protocol):
    def reference(self) -> IdentityReference: ...


def clean_display_name(name: object) -> str:
    """NFC, trimmed, printable, bounded; diacritics kept as written."""
    if not isinstance(name, str):
        raise IdentityError("display name must be text")
    text = unicodedata.normalize("NFC", " ".join(name.split()))
    if not text or len(text) > MAX_DISPLAY_NAME or not text.isprintable():
        raise IdentityError(f"display name must be 1-{MAX_DISPLAY_NAME} printable characters")
    return text


def _subject(value: object, what: str) -> str:
    try:
        return check_id(value, what)
    except ScopeError as exc:
        raise IdentityError(str(exc)) from exc


@dataclass(frozen=True)
class ChipDocumentSource:
    dg1: bytes
    dg2: bytes
    sod: bytes
    cscas: tuple[x509.Certificate, ...]
    display_name: str | None = None  # e.g. from the card's own Vietnamese-name data group
    now: dt.datetime | None = None

    def reference(self) -> IdentityReference:
        try:
            pa = passive_authentication(self.sod, {1: self.dg1, 2: self.dg2}, list(self.cscas), self.now)
            mrz = parse_dg1(self.dg1)
            face = parse_dg2(self.dg2)
            image = face.decode()
        except DocumentError as exc:
            raise IdentityError(str(exc)) from exc
        return IdentityReference(
            subject_id=_subject(f"{mrz.issuing_state}-{mrz.document_number}", "document number"),
            display_name=clean_display_name(self.display_name or mrz.name.title()), image=image,
            source=f"icao9303:{mrz.issuing_state}",
            verified=(f"sod_hashes:{pa.hash_algorithm}:DG1,DG2", f"sod_signature:{pa.signature_algorithm}",
                      f"ds_chain:{pa.csca}", f"dg2:{face.image_format}:{face.width}x{face.height}"))


def _canonical(statement: dict) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_statement(key: Ed25519PrivateKey, provider: str, subject_id: str, display_name: str, photo: bytes) -> dict:
    """What a provider hands over with the photo (used by tests and the demo as the provider)."""
    body = {"provider": provider, "subject_id": subject_id, "display_name": display_name,
            "photo_sha256": hashlib.sha256(photo).hexdigest()}
    return {**body, "signature": base64.b64encode(key.sign(_canonical(body))).decode("ascii")}


def load_provider_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"provider key {path}: not a readable PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError(f"provider key {path}: must be an Ed25519 public key")
    return key


@dataclass(frozen=True)
class ProviderFileSource:
    photo_path: Path
    statement_path: Path
    provider_key: Ed25519PublicKey

    def reference(self) -> IdentityReference:
        try:
            raw = Path(self.statement_path).read_bytes()
            photo = Path(self.photo_path).read_bytes()
        except OSError as exc:
            raise IdentityError(f"provider hand-over: cannot read {exc.filename}: {exc.strerror}") from exc
        if len(raw) > MAX_STATEMENT_BYTES or len(photo) > MAX_PHOTO_BYTES:
            raise IdentityError(f"provider hand-over: statement over {MAX_STATEMENT_BYTES} bytes or photo over "
                                f"{MAX_PHOTO_BYTES} bytes")
        try:
            statement = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise IdentityError(f"provider statement {self.statement_path} is not JSON: {exc}") from exc
        fields = ("provider", "subject_id", "display_name", "photo_sha256", "signature")
        if not isinstance(statement, dict) or set(statement) != set(fields) or \
                not all(isinstance(statement[f], str) for f in fields):
            raise IdentityError(f"provider statement must hold exactly the text fields {', '.join(fields)}")
        body = {k: v for k, v in statement.items() if k != "signature"}
        try:
            self.provider_key.verify(base64.b64decode(statement["signature"], validate=True), _canonical(body))
        except (InvalidSignature, ValueError) as exc:
            raise IdentityError("provider statement: signature does not verify with the configured provider key") \
                from exc
        if hashlib.sha256(photo).hexdigest() != body["photo_sha256"]:
            raise IdentityError("provider hand-over: the photo is not the one the statement signs (sha256 differs)")
        try:
            image = decode_image(photo, "provider photo")
        except ImageError as exc:
            raise IdentityError(str(exc)) from exc
        return IdentityReference(
            subject_id=_subject(body["subject_id"], "provider subject id"),
            display_name=clean_display_name(body["display_name"]), image=image,
            source=f"provider:{_subject(body['provider'], 'provider name')}",
            verified=("provider_signature:ed25519", "photo_sha256"))
