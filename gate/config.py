"""The gate's configuration file (TOML), validated once at start-up.

One typed dataclass per section. `load_config` refuses unknown keys, wrong types and
out-of-range values with a message naming the key, and resolves relative paths against the
config file's folder so a gate image's config directory can move as a whole. The README's
configuration reference is generated from these classes (`gatectl config-reference`).

A score threshold may be given as the calibration record it came from (`{ record = "FILE.json",
far = 0.001 }`, vision.calibrate.RecordRef): the record is read at load time, its threshold goes
into the policy, and `GateConfig.calibration` keeps which record and operating point each such
threshold came from. A record measured with other models than [models] names is refused here,
so `gated --check` and the start-up both say so in one line.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import configschema
from configschema import ConfigError, describe, load_dataclass, read_toml, resolve_paths
from devices.barcode import ScannerConfig
from devices.config import CONFIG_TYPES as DEVICE_TYPES
from devices.config import DriverConfig, SimConfig
from gate.lane import LaneConfig
from sync.config import AgentConfig, agent_config_from_mapping
from vision.calibrate import CalibratedThreshold, RecordResolver, check_models, model_name
from vision.config import CameraSection, ModelsSection
from vision.quality import QualityThresholds


@dataclass(frozen=True)
class GateSection:
    id: str = field(metadata={"help": "this gate's id (audit records, sync, health)"})
    site: str = field(default="", metadata={"help": "airport / station code, for operators"})
    state_dir: Path = field(default=Path("/var/lib/edgegate"), metadata={
        "help": "watchlist.db, audit.db and keys/ live here (systemd StateDirectory)"})
    log_level: str = field(default="INFO", metadata={"choices": ("DEBUG", "INFO", "WARNING", "ERROR")})
    min_free_mb: float = field(default=20.0, metadata={
        "help": "free space the state dir's disk needs for the lane to start (SQLite on a full disk fails "
                "in ways that are hard to read: the lane refuses to start with a clear message instead)",
        "min": 0.0})


@dataclass(frozen=True)
class LaneCameraSection(CameraSection):
    stale_after_s: float = field(default=2.0, metadata={
        "help": "no new frame for this long = camera fault (lane refuses to decide)", "min": 0.1})


@dataclass(frozen=True)
class AuditSection:
    retention_days: int = field(default=90, metadata={
        "help": "acknowledged records older than this are pruned from the gate", "min": 1})
    max_db_mb: float | None = field(default=None, metadata={
        "help": "cap the audit database size (testing disk-full behaviour)", "min": 0.1})


@dataclass(frozen=True)
class WatchlistSection:
    encrypt_templates: bool = field(default=True, metadata={"help": "AES-GCM templates at rest"})
    key_file: Path | None = field(default=None, metadata={
        "help": "32-byte template key (0600); default <state_dir>/keys/templates.key"})
    purge_interval_s: float = field(default=60.0, metadata={
        "help": "how often expired subjects are purged from disk and memory", "min": 1.0})
    exact_on_disk: bool = field(default=False, metadata={
        "help": "keep the float32 copies used for exact rescoring in an unlinked 0600 file in state_dir "
                "(memory-mapped, AES-256-CTR under a key held only in memory) instead of RAM: ~184 instead "
                "of ~700 resident bytes per template, for line-wide galleries of millions"})
    scan_threads: int = field(default=2, metadata={
        "help": "cores one 1:N search may use (capped at the cores the daemon may run on): 2 takes a "
                "million-template search from ~5.5 to ~3.9 ms on a 2-core gate", "min": 1, "max": 64})


@dataclass(frozen=True)
class PrivacySection:
    keep_refer_crops: bool = field(default=False, metadata={
        "help": "keep an encrypted face crop of each REFER decision for staff review (opt-in; "
                "no face image is stored otherwise)"})
    refer_crop_retention_days: int = field(default=7, metadata={
        "help": "kept crops older than this are deleted (checked with the watchlist purge)", "min": 1, "max": 365})


@dataclass(frozen=True)
class ControlSection:
    socket: Path | None = field(default=None, metadata={
        "help": "gatectl's Unix socket; default <state_dir>/control.sock"})
    group: str | None = field(default=None, metadata={
        "help": "group allowed to use gatectl (socket mode 0660)"})
    staff_file: Path | None = field(default=None, metadata={
        "help": "per-person PINs (scrypt hashes, 0600; written by gatectl staff-pin): when set, every command "
                "that changes the lane needs the operator's PIN and the audit record says it was verified"})


@dataclass(frozen=True)
class GateConfig:
    gate: GateSection
    camera: LaneCameraSection
    models: ModelsSection
    lane: LaneConfig
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    device: DriverConfig = field(default_factory=SimConfig)
    audit: AuditSection = field(default_factory=AuditSection)
    watchlist: WatchlistSection = field(default_factory=WatchlistSection)
    control: ControlSection = field(default_factory=ControlSection)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    sync: AgentConfig | None = None  # None for a standalone gate
    scanner: ScannerConfig | None = None  # a serial boarding-pass / ID barcode scanner (1:1 mode)
    path: Path | None = None
    # config key -> the calibration record a threshold was taken from (empty: bare numbers only)
    calibration: dict[str, CalibratedThreshold] = field(default_factory=dict)

    @property
    def control_socket(self) -> Path:
        return self.control.socket or self.gate.state_dir / "control.sock"

    @property
    def template_key_file(self) -> Path:
        return self.watchlist.key_file or self.gate.state_dir / "keys" / "templates.key"


_SECTIONS = {"gate": GateSection, "camera": LaneCameraSection, "models": ModelsSection, "lane": LaneConfig,
             "quality": QualityThresholds, "audit": AuditSection, "watchlist": WatchlistSection,
             "control": ControlSection, "privacy": PrivacySection}


def parse_config(data: dict, base_dir: Path = Path("."), path: Path | None = None) -> GateConfig:
    known = set(_SECTIONS) | {"device", "sync", "scanner"}
    for k in data:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            raise ConfigError(f"unknown section [{k}]" + (f" — did you mean [{close[0]}]?" if close else
                                                          f" (sections: {', '.join(sorted(known))})"))
    sections = {}
    records = RecordResolver(base_dir)
    for name, cls in _SECTIONS.items():
        if name in data:
            try:
                sections[name] = load_dataclass(cls, data[name], name, resolve=records)
            except (ValueError, TypeError) as e:  # a dataclass's own __post_init__ check
                raise ConfigError(str(e) if isinstance(e, ConfigError) else f"[{name}] {e}") from None
        elif name in ("gate", "camera", "models", "lane"):
            raise ConfigError(f"missing section [{name}]")
    for name in ("gate", "camera", "models", "watchlist", "control"):
        if name in sections:
            sections[name] = resolve_paths(sections[name], base_dir)
    dev = data.get("device", {"type": "sim"})
    if not isinstance(dev, dict) or dev.get("type") not in DEVICE_TYPES:
        raise ConfigError(f"device.type = {dev.get('type') if isinstance(dev, dict) else dev!r} is not allowed; "
                          f"choose one of: {', '.join(map(repr, DEVICE_TYPES))}")
    dev = dict(dev)
    cls = DEVICE_TYPES[dev.pop("type")]
    try:
        sections["device"] = load_dataclass(cls, dev, "device")
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e) if isinstance(e, ConfigError) else f"[device] {e}") from None
    sync_cfg = None
    if "sync" in data:
        if not isinstance(data["sync"], dict):
            raise ConfigError("[sync] must be a table")
        s = dict(data["sync"])
        s.setdefault("gate_id", sections["gate"].id)
        sync_cfg = agent_config_from_mapping(s, base_dir)
    scanner = load_dataclass(ScannerConfig, data["scanner"], "scanner") if "scanner" in data else None
    m = sections["models"]
    check_models(records.used, detector=model_name(m.dir, m.detector), embedder=model_name(m.dir, m.embedder),
                 flip=m.flip)
    return GateConfig(**sections, sync=sync_cfg, scanner=scanner, path=path, calibration=dict(records.used))


def load_config(path: Path) -> GateConfig:
    path = Path(path)
    data = read_toml(path)
    try:
        return parse_config(data, path.parent.resolve(), path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def reference_rows() -> list[dict]:
    """Every key with type, default, allowed values and help, for the README."""
    rows = []
    for name, cls in _SECTIONS.items():
        rows += describe(cls, name)
    rows += describe(ScannerConfig, "scanner")
    rows += describe(AgentConfig, "sync")
    for tname, cls in DEVICE_TYPES.items():
        rows.append({"key": "device.type", "type": "string", "default": "sim", "allowed": tname,
                     "help": f"settings below apply when type = {tname!r}"})
        rows += [dict(r, key=r["key"].replace("device.", f"device.({tname}).", 1)) for r in describe(cls, "device")]
    return rows


def reference_markdown() -> str:
    return configschema.reference_markdown(reference_rows())
