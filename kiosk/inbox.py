"""Identity hand-overs: what a chip reader or an identity-provider adapter gives the station.

One folder per hand-over under the station's inbox, complete when its `READY` file exists
(written last, so a half-copied folder is never read):

    chip document     dg1.bin, dg2.bin, sod.bin (raw EF contents), optional name.txt (the
                      holder's name with diacritics, e.g. from the card's own data group)
    identity provider photo.jpg (or .png) and statement.json signed by the provider

The folder is deleted as soon as it is read, whatever the outcome: the reference photo
exists in memory for one session only, never on the station's disk afterwards.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kiosk.identity import MAX_PHOTO_BYTES, ChipDocumentSource, IdentityError, IdentityReference, ProviderFileSource

READY = "READY"


@dataclass(frozen=True)
class Trust:
    cscas: tuple[x509.Certificate, ...]
    providers: dict[str, Ed25519PublicKey]


def _read(folder: Path, name: str) -> bytes:
    p = folder / name
    if p.stat().st_size > MAX_PHOTO_BYTES:
        raise IdentityError(f"hand-over {folder.name}: {name} is over {MAX_PHOTO_BYTES} bytes")
    return p.read_bytes()


def read_handover(folder: Path, trust: Trust) -> IdentityReference:
    """Verify one hand-over folder (IdentityError says why not)."""
    try:
        if (folder / "sod.bin").exists():
            name = (folder / "name.txt").read_text(encoding="utf-8").strip() if (folder / "name.txt").exists() else None
            return ChipDocumentSource(_read(folder, "dg1.bin"), _read(folder, "dg2.bin"), _read(folder, "sod.bin"),
                                      trust.cscas, display_name=name or None).reference()
        photo = next((folder / n for n in ("photo.jpg", "photo.jpeg", "photo.png") if (folder / n).exists()), None)
        if photo is None or not (folder / "statement.json").exists():
            raise IdentityError(f"hand-over {folder.name}: neither dg1/dg2/sod.bin nor photo + statement.json")
        provider = json.loads((folder / "statement.json").read_text(encoding="utf-8")).get("provider")
        key = trust.providers.get(provider) if isinstance(provider, str) else None
        if key is None:
            raise IdentityError(f"hand-over {folder.name}: identity provider {provider!r} is not trusted here")
        return ProviderFileSource(photo, folder / "statement.json", key).reference()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, IdentityError):
            raise
        raise IdentityError(f"hand-over {folder.name}: {exc}") from exc


def next_handover(inbox: Path, trust: Trust) -> IdentityReference | IdentityError | None:
    """The oldest complete hand-over, read and deleted; None if there is none."""
    try:
        ready = sorted((p for p in Path(inbox).iterdir() if p.is_dir() and (p / READY).exists()),
                       key=lambda p: (p / READY).stat().st_mtime)
    except FileNotFoundError:
        return None
    if not ready:
        return None
    folder = ready[0]
    try:
        return read_handover(folder, trust)
    except IdentityError as exc:
        return exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
