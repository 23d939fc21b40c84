"""Model manifests: the one description of every model file edgegate may load.

A manifest says what a model is (kind, format, input rules, alignment template), where its
weights came from (package, version, licence) and the sha256 of each file. The daemon only
loads bytes whose hash matches the manifest, so a truncated copy, a swapped file or a model
from an unvetted source is refused before it can make a decision.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.align_template import AlignTemplate

MANIFEST_SUFFIX = ".manifest.json"
FORMAT_VERSION = 1
KINDS = ("detector", "embedder", "pad")


class ModelError(Exception):
    """A model cannot be used; the message says which file and what to do."""


class ModelIntegrityError(ModelError):
    """A model file does not match the sha256 recorded in its manifest."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelFile:
    role: str  # e.g. "model", "pnet", "rnet", "onet"
    file: str  # relative to the manifest's folder, or absolute
    sha256: str


@dataclass(frozen=True)
class ModelManifest:
    name: str  # the model id templates are tagged with
    kind: str  # detector | embedder | pad
    format: str  # dlib-resnet | mtcnn | scrfd | yunet | arcface | minifasnet
    files: dict[str, ModelFile]
    licence: str
    source: dict[str, Any]
    input: dict[str, Any] = field(default_factory=dict)
    align: AlignTemplate | None = None
    embedding_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # where this manifest was read from; not serialised

    def file_path(self, role: str = "model") -> Path:
        if role not in self.files:
            raise ModelError(f"model {self.name!r} has no file with role {role!r} (has: {', '.join(self.files)})")
        p = Path(self.files[role].file)
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def read_verified(self, role: str = "model") -> bytes:
        """Return the file's bytes only if they hash to the manifest's sha256.

        Hashing the very bytes we hand to the runtime (instead of hashing the path and then
        loading it again) leaves no window for the file to change in between.
        """
        p = self.file_path(role)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ModelError(f"model {self.name!r}: cannot read {p}: {e.strerror}. "
                             f"Run `gate-models build` or reinstall the gate image.") from e
        got = hashlib.sha256(data).hexdigest()
        want = self.files[role].sha256
        if got != want:
            raise ModelIntegrityError(
                f"model {self.name!r}: {p} has sha256 {got[:16]}… but its manifest records {want[:16]}…; "
                f"the file is truncated, corrupted or was swapped. Refusing to load it. "
                f"Rebuild with `gate-models build` or reinstall the gate image.")
        return data

    def verify(self) -> list[str]:
        """All problems with this model's files, empty when every file is present and intact."""
        problems = []
        for role in self.files:
            try:
                self.read_verified(role)
            except ModelError as e:
                problems.append(str(e))
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "kind": self.kind,
            "format": self.format,
            "files": {r: {"file": f.file, "sha256": f.sha256} for r, f in self.files.items()},
            "licence": self.licence,
            "source": self.source,
            "input": self.input,
            "align": self.align.to_dict() if self.align else None,
            "embedding_size": self.embedding_size,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> "ModelManifest":
        where = str(path) if path else "manifest"
        for key in ("name", "kind", "format", "files", "licence", "source"):
            if key not in d:
                raise ModelError(f"{where}: missing required key {key!r}")
        if d["kind"] not in KINDS:
            raise ModelError(f"{where}: kind {d['kind']!r} is not one of {', '.join(KINDS)}")
        if not isinstance(d["files"], dict) or not d["files"]:
            raise ModelError(f"{where}: 'files' must map a role to {{file, sha256}}")
        files = {}
        for role, f in d["files"].items():
            if not isinstance(f, dict) or "file" not in f or "sha256" not in f:
                raise ModelError(f"{where}: files.{role} must have 'file' and 'sha256'")
            files[role] = ModelFile(role=role, file=str(f["file"]), sha256=str(f["sha256"]).lower())
        align = AlignTemplate.from_dict(d["align"]) if d.get("align") else None
        return cls(
            name=str(d["name"]), kind=d["kind"], format=str(d["format"]), files=files,
            licence=str(d["licence"]), source=dict(d["source"]), input=dict(d.get("input") or {}),
            align=align, embedding_size=d.get("embedding_size"), extra=dict(d.get("extra") or {}), path=path,
        )


def manifest_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}{MANIFEST_SUFFIX}"


def write_manifest(m: ModelManifest, directory: Path) -> Path:
    """Write deterministically (sorted keys, fixed indent) so rebuilds are byte-identical."""
    p = manifest_path(directory, m.name)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(m.to_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(p)
    return p


def load_manifest(path: Path) -> ModelManifest:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise ModelError(f"cannot read model manifest {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ModelError(f"model manifest {path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ModelError(f"model manifest {path} must be a JSON object")
    return ModelManifest.from_dict(d, path=path)


def find_manifests(directory: Path) -> dict[str, ModelManifest]:
    """Every manifest in a model folder, by model name."""
    out = {}
    for p in sorted(Path(directory).glob(f"*{MANIFEST_SUFFIX}")):
        m = load_manifest(p)
        out[m.name] = m
    return out


def load_model(directory: Path, name: str) -> ModelManifest:
    p = manifest_path(directory, name)
    if not p.exists():
        have = ", ".join(find_manifests(directory)) if Path(directory).is_dir() else "folder missing"
        raise ModelError(f"no model named {name!r} in {directory} (have: {have or 'none'}). "
                         f"Run `gate-models build --out {directory}` or provision the model's manifest there.")
    return load_manifest(p)
