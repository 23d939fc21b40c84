"""Gate images: a signed tar bundle of everything a lane needs besides the software itself.

A bundle holds the lane's config, its models (ONNX files and manifests with sha256 and
licence), the central's public CURVE key, the systemd units and a known-answer record for
the models, plus MANIFEST.json listing every file's sha256 and MANIFEST.sig, an Ed25519
signature over the manifest's exact bytes by a field-engineering key. Signing the manifest
covers every file, so a gate that checks the signature and then each hash installs exactly
what the field engineer built. The gate's own CURVE keypair is never in a bundle: it is
generated on the device at first install (gate.image_install).

The slot layout is the bundle's layout, so a slot can be re-verified in place at any time.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable

from gate import known_answer
from gate.checks import Check, Status
from gate.image_signing import SigningKeyError, load_private_key, load_public_key, public_fingerprint, signature_valid

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
SIGNATURE_NAME = "MANIFEST.sig"
CONFIG_NAME = "config.toml"
MODELS_DIR = "models"
CENTRAL_KEY_NAME = "keys/central.key"
UNITS_DIR = "systemd"
# Written by the installer beside the bundle's files; not part of what was signed.
INSTALL_RECORD_NAME = "INSTALLED.json"
_NOT_PAYLOAD = {MANIFEST_NAME, SIGNATURE_NAME, INSTALL_RECORD_NAME}

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class ImageError(Exception):
    """A bundle cannot be built, read or installed; the message says what to fix."""


def software_version() -> str:
    """The installed edgegate package's version (the software is not in the bundle)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgegate")
    except PackageNotFoundError:
        from gate.daemon import SOFTWARE_VERSION

        return SOFTWARE_VERSION


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class BundleManifest:
    format_version: int
    software_version: str
    site: str
    lane: str
    gate_id: str
    built_at: str  # ISO 8601 UTC
    signer: str  # fingerprint of the field-engineering key
    files: dict[str, FileEntry]
    models: list[dict]  # name, kind, format, licence, source
    units: list[str]
    # Monotonic: an installer refuses to go below the highest it has installed (gate.image_policy).
    image_version: int = 0
    # The gates this bundle may be installed on; a gate refuses a bundle not built for it.
    gate_ids: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> bytes:
        d = dataclasses.asdict(self)
        return (json.dumps(d, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> "BundleManifest":
        try:
            d = json.loads(data)
            files = {str(k): FileEntry(sha256=str(v["sha256"]), size=int(v["size"])) for k, v in d["files"].items()}
            return cls(format_version=int(d["format_version"]), software_version=str(d["software_version"]),
                       site=str(d["site"]), lane=str(d["lane"]), gate_id=str(d["gate_id"]),
                       built_at=str(d["built_at"]), signer=str(d["signer"]), files=files,
                       models=[dict(m) for m in d["models"]], units=[str(u) for u in d["units"]],
                       image_version=int(d.get("image_version", 0)),
                       gate_ids=[str(g) for g in d.get("gate_ids", [d["gate_id"]])])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ImageError(f"{MANIFEST_NAME} is malformed: {e}") from None

    @property
    def built_at_time(self) -> datetime:
        return datetime.fromisoformat(self.built_at)


@dataclass(frozen=True)
class BuiltBundle:
    path: Path
    manifest: BundleManifest


def _sha256(path: Path) -> str:
    from models.manifest import sha256_file

    return sha256_file(path)


def _payload_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() not in _NOT_PAYLOAD)


def _default_units_dir() -> Path | None:
    d = Path(__file__).resolve().parents[1] / "systemd"
    return d if d.is_dir() else None


# --------------------------------------------------------------------------- build
def _stage_models(cfg, models_src: Path, dest: Path) -> list[dict]:
    """Copy the config's detector, embedder and PAD models with manifests whose file paths
    are relative, so the models folder is valid wherever the slot lands."""
    from models.manifest import ModelError, load_model, write_manifest

    dest.mkdir(parents=True)
    described = []
    names = [cfg.models.detector, cfg.models.embedder, *cfg.models.pad]
    for name in dict.fromkeys(names):
        try:
            m = load_model(models_src, name)
        except ModelError as e:
            raise ImageError(str(e)) from None
        problems = m.verify()
        if problems:
            raise ImageError(f"model {name!r} in {models_src} is not intact: {problems[0]}")
        files = {}
        for role, f in m.files.items():
            src = m.file_path(role)
            target = dest / src.name
            if target.exists() and _sha256(target) != f.sha256:
                raise ImageError(f"two model files are both named {src.name}; rename one before building")
            shutil.copyfile(src, target)
            files[role] = dataclasses.replace(f, file=src.name)
        write_manifest(dataclasses.replace(m, files=files, path=None), dest)
        described.append({"name": m.name, "kind": m.kind, "format": m.format, "licence": m.licence,
                          "source": m.source})
    return described


def _stage_calibration(cfg, config: Path, stage: Path) -> None:
    """Copy the calibration records the config's thresholds refer to into the slot, at the same
    place relative to the config (which the slot uses unchanged), so the installed lane reads the
    record it was checked with. A record outside the config's folder cannot travel: refused."""
    base = config.parent.resolve()
    for c in cfg.calibration.values():
        src = Path(c.record.path).resolve()
        try:
            rel = src.relative_to(base)
        except ValueError:
            raise ImageError(f"config {config}: {c.key} refers to calibration record {src}, outside the config's "
                             "folder; put the record beside the config so the slot carries it") from None
        if rel.as_posix() in _NOT_PAYLOAD or rel.as_posix() == CONFIG_NAME or rel.parts[0] == MODELS_DIR:
            raise ImageError(f"config {config}: calibration record {rel} would overwrite a file of the slot")
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, stage / rel)


def _check_config_for_bundle(config_path: Path, site: str, lane: str):
    from configschema import ConfigError
    from gate.config import load_config

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise ImageError(f"config: {e}") from None
    if cfg.lane.lane_id != lane:
        raise ImageError(f"config {config_path} is for lane {cfg.lane.lane_id!r}, not {lane!r}")
    if cfg.gate.site and cfg.gate.site != site:
        raise ImageError(f"config {config_path} is for site {cfg.gate.site!r}, not {site!r}")
    if cfg.models.dir != config_path.parent.resolve() / MODELS_DIR:
        raise ImageError(f"config {config_path}: [models] dir must be \"{MODELS_DIR}\" (relative to the config), "
                         f"so the installed slot loads its own models; it is {cfg.models.dir}")
    return cfg


def build_bundle(*, site: str, lane: str, config: Path, central_key: Path, out_dir: Path, signing_key: Path,
                 models_dir: Path | None = None, units_dir: Path | None = None,
                 progress: Progress | None = None, image_version: int | None = None,
                 gate_ids: tuple[str, ...] | None = None) -> BuiltBundle:
    """Build and sign a bundle in `out_dir`; returns its path and manifest.

    models_dir defaults to the config's own [models] dir (which must be "models" beside the
    config, since the slot uses the config unchanged). image_version defaults to the build
    time in UTC seconds (monotonic as long as builds are not back-dated); gate_ids to the
    config's gate id, which must be among them.
    """
    from sync.keys import KeyFileError
    from sync.keys import load_public_key as load_curve_public

    config = Path(config)
    try:
        key = load_private_key(signing_key)
    except SigningKeyError as e:
        raise ImageError(str(e)) from None
    cfg = _check_config_for_bundle(config, site, lane)
    gate_ids = tuple(gate_ids) if gate_ids else (cfg.gate.id,)
    if cfg.gate.id not in gate_ids:
        raise ImageError(f"config {config} is for gate {cfg.gate.id!r}, which is not among the gates the bundle is "
                         f"built for ({', '.join(gate_ids)})")
    if image_version is not None and (not isinstance(image_version, int) or image_version < 1):
        raise ImageError(f"image version must be a positive integer, got {image_version!r}")
    try:
        load_curve_public(central_key)
    except KeyFileError as e:
        raise ImageError(f"central key: {e}") from None
    units_dir = Path(units_dir) if units_dir else _default_units_dir()
    units = sorted(units_dir.glob("*.service")) if units_dir else []
    if not units:
        raise ImageError(f"no systemd units (*.service) found in {units_dir}; give --units DIR")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        stage = Path(tmp)
        shutil.copyfile(config, stage / CONFIG_NAME)
        models = _stage_models(cfg, Path(models_dir) if models_dir else cfg.models.dir, stage / MODELS_DIR)
        _stage_calibration(cfg, config, stage)
        (stage / CENTRAL_KEY_NAME).parent.mkdir()
        shutil.copyfile(central_key, stage / CENTRAL_KEY_NAME)
        (stage / UNITS_DIR).mkdir()
        for u in units:
            shutil.copyfile(u, stage / UNITS_DIR / u.name)
        staged_cfg = _check_config_for_bundle(stage / CONFIG_NAME, site, lane)
        try:
            answer = known_answer.record(stage / MODELS_DIR, staged_cfg.models.detector, staged_cfg.models.embedder,
                                         staged_cfg.models.flip)
        except known_answer.KnownAnswerError as e:
            raise ImageError(f"known-answer record: {e}") from None
        known_answer.write(answer, stage / known_answer.FILE_NAME)
        built_at = datetime.now(timezone.utc).replace(microsecond=0)
        files = {name: FileEntry(_sha256(stage / name), (stage / name).stat().st_size)
                 for name in _payload_files(stage)}
        manifest = BundleManifest(
            format_version=FORMAT_VERSION, software_version=software_version(), site=site, lane=lane,
            gate_id=cfg.gate.id, built_at=built_at.isoformat(), signer=public_fingerprint(key.public_key()),
            files=files, models=models, units=[f"{UNITS_DIR}/{u.name}" for u in units],
            image_version=image_version or int(built_at.timestamp()), gate_ids=list(gate_ids))
        manifest_bytes = manifest.to_json()
        (stage / MANIFEST_NAME).write_bytes(manifest_bytes)
        (stage / SIGNATURE_NAME).write_bytes(key.sign(manifest_bytes))
        name = f"edgegate-{site}-{lane}-{built_at:%Y%m%dT%H%M%SZ}.tar"
        path = out_dir / name
        _write_tar(stage, [MANIFEST_NAME, SIGNATURE_NAME, *files], path, progress)
    log.info("built %s: %d files, %d models, signed by %s", path, len(files), len(models), manifest.signer)
    return BuiltBundle(path, manifest)


class _CountingReader:
    """Wraps a file so tarfile's reads advance the progress display."""

    def __init__(self, f: BinaryIO, advance: Callable[[int], None]):
        self._f, self._advance = f, advance

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._advance(len(data))
        return data


def _write_tar(stage: Path, names: list[str], path: Path, progress: Progress | None) -> None:
    total = sum((stage / n).stat().st_size for n in names)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for n in names:
            info = tar.gettarinfo(str(stage / n), arcname=n)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(stage / n, "rb") as f:
                tar.addfile(info, _CountingReader(f, advance))
    partial.replace(path)


# --------------------------------------------------------------------------- verify
def extract_bundle(bundle: Path, dest: Path) -> None:
    """Unpack into `dest` (which must not exist), refusing links, devices, absolute paths
    and paths that climb out of it."""
    dest = Path(dest)
    try:
        with tarfile.open(bundle, "r:") as tar:
            for m in tar.getmembers():
                if not (m.isfile() or m.isdir()):
                    raise ImageError(f"{bundle}: member {m.name!r} is not a regular file")
            dest.mkdir(parents=True)
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise ImageError(f"{bundle} is not a readable bundle: {e}") from None


def verify_tree(root: Path, public_key_path: Path) -> list[Check]:
    """Every check on an unpacked bundle or an installed slot, one row each."""
    root = Path(root)
    checks: list[Check] = []
    try:
        pub = load_public_key(public_key_path)
    except SigningKeyError as e:
        return [Check("signature", Status.FAIL, str(e))]
    try:
        manifest_bytes = (root / MANIFEST_NAME).read_bytes()
        signature = (root / SIGNATURE_NAME).read_bytes()
    except OSError as e:
        return [Check("signature", Status.FAIL, f"{e.filename}: {e.strerror}")]
    if signature_valid(pub, signature, manifest_bytes):
        checks.append(Check("signature", Status.PASS, f"Ed25519, key {public_fingerprint(pub)}"))
    else:
        checks.append(Check("signature", Status.FAIL, f"does not verify with key {public_fingerprint(pub)} "
                                                       "(wrong key, or the manifest was altered)"))
    try:
        manifest = BundleManifest.from_json(manifest_bytes)
    except ImageError as e:
        return checks + [Check("manifest", Status.FAIL, str(e))]
    if manifest.format_version != FORMAT_VERSION:
        return checks + [Check("format version", Status.FAIL, f"{manifest.format_version}; this software reads "
                                                               f"{FORMAT_VERSION}")]
    checks.append(Check("format version", Status.PASS, str(FORMAT_VERSION)))
    installed = software_version()
    checks.append(Check("software version", Status.PASS if installed == manifest.software_version else Status.WARN,
                        f"bundle built with {manifest.software_version}, installed {installed}"))
    checks += _file_checks(root, manifest)
    checks += _content_checks(root, manifest)
    return checks


def _file_checks(root: Path, manifest: BundleManifest) -> list[Check]:
    checks = []
    for name, entry in sorted(manifest.files.items()):
        p = root / name
        if not p.is_file():
            checks.append(Check(f"file {name}", Status.FAIL, "missing"))
            continue
        got = _sha256(p)
        if got != entry.sha256:
            checks.append(Check(f"file {name}", Status.FAIL,
                                f"sha256 {got[:16]}…, manifest says {entry.sha256[:16]}…"))
        else:
            checks.append(Check(f"file {name}", Status.PASS, f"sha256 {got[:16]}…"))
    for name in _payload_files(root):
        if name not in manifest.files:
            checks.append(Check(f"file {name}", Status.FAIL, "not listed in the signed manifest"))
    return checks


def _content_checks(root: Path, manifest: BundleManifest) -> list[Check]:
    from configschema import ConfigError
    from gate.config import load_config
    from models.manifest import ModelError, load_model
    from sync.keys import KeyFileError
    from sync.keys import load_public_key as load_curve_public

    checks = []
    cfg = None
    try:
        cfg = load_config(root / CONFIG_NAME)
        if cfg.models.dir != (root / MODELS_DIR).resolve():
            checks.append(Check("config", Status.FAIL, f"[models] dir is {cfg.models.dir}, not the bundle's own "
                                                        f"\"{MODELS_DIR}\""))
        elif cfg.lane.lane_id != manifest.lane:
            checks.append(Check("config", Status.FAIL, f"lane {cfg.lane.lane_id!r}, manifest says {manifest.lane!r}"))
        elif cfg.gate.id not in manifest.gate_ids:
            checks.append(Check("config", Status.FAIL, f"gate {cfg.gate.id!r} is not among the gates the manifest "
                                                        f"binds the bundle to ({', '.join(manifest.gate_ids)})"))
        else:
            device = type(cfg.device).__name__.removesuffix("Config").lower()
            checks.append(Check("config", Status.PASS, f"gate {cfg.gate.id}, lane {cfg.lane.lane_id}, device {device}"))
    except ConfigError as e:
        checks.append(Check("config", Status.FAIL, str(e)))
    for described in manifest.models:
        name = described.get("name", "?")
        try:
            m = load_model(root / MODELS_DIR, name)
        except ModelError as e:
            checks.append(Check(f"model {name}", Status.FAIL, str(e)))
            continue
        problems = m.verify()
        if problems:
            checks.append(Check(f"model {name}", Status.FAIL, problems[0]))
        elif m.licence != described.get("licence"):
            checks.append(Check(f"model {name}", Status.FAIL, f"licence {m.licence!r} differs from the signed "
                                                               f"manifest's {described.get('licence')!r}"))
        else:
            checks.append(Check(f"model {name}", Status.PASS, f"{m.kind}, {m.format}, licence {m.licence}"))
    if cfg is not None:
        bundled = {d.get("name") for d in manifest.models}
        wanted = [cfg.models.detector, cfg.models.embedder, *cfg.models.pad]
        missing = [n for n in wanted if n not in bundled]
        checks.append(Check("config models bundled", Status.FAIL if missing else Status.PASS,
                            f"missing: {', '.join(missing)}" if missing else ", ".join(wanted)))
    try:
        load_curve_public(root / CENTRAL_KEY_NAME)
        checks.append(Check("central key", Status.PASS, CENTRAL_KEY_NAME))
    except KeyFileError as e:
        checks.append(Check("central key", Status.FAIL, str(e)))
    try:
        answer = known_answer.load(root / known_answer.FILE_NAME)
        checks.append(Check("known-answer record", Status.PASS,
                            f"{answer.embedder}, {len(answer.embedding)}-d, photo {answer.photo_sha256[:12]}…"))
    except known_answer.KnownAnswerError as e:
        checks.append(Check("known-answer record", Status.FAIL, str(e)))
    return checks


def verify_bundle(bundle: Path, public_key_path: Path) -> list[Check]:
    """Unpack into a temporary folder and run every check (see verify_tree)."""
    with tempfile.TemporaryDirectory(prefix="gate-image-verify-") as tmp:
        try:
            extract_bundle(bundle, Path(tmp) / "bundle")
        except ImageError as e:
            return [Check("bundle", Status.FAIL, str(e))]
        return [Check("bundle", Status.PASS, str(bundle))] + verify_tree(Path(tmp) / "bundle", public_key_path)


def read_manifest(root: Path) -> BundleManifest:
    try:
        return BundleManifest.from_json((Path(root) / MANIFEST_NAME).read_bytes())
    except OSError as e:
        raise ImageError(f"cannot read {Path(root) / MANIFEST_NAME}: {e.strerror}") from None
