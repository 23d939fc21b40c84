"""The enrolment station's configuration file (TOML), validated once at start-up.

Sections: [station] (who and where), [camera] and [models] (the lane's keys, minus what only a
lane uses), [verify] (the 1:1 operating point and capture rules), [identity] (trusted CSCAs and
identity providers), [central] (where to enrol, with the station's own CURVE key) and
optionally [scanner] (the serial boarding-pass scanner). Unknown keys, wrong types and
out-of-range values are refused naming the key (configschema does the checking).

`verify.threshold_1to1` may be given as the calibration record it came from (`{ record =
"FILE.json", far = 0.0001 }`, vision.calibrate.RecordRef), like a lane's thresholds: the
station's check of a live face against the ID photo has its own operating point (FMR 1e-4, a
stricter one than a lane's 1:1, since an enrolment is what every later lane trusts), and a record
measured with other models than [models] is refused at load.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import configschema
from configschema import ConfigError, describe, load_dataclass
from devices.barcode import ScannerConfig
from kiosk.session import StationRules
from models.registry import KNOWN_LIMITS
from sync.scopes import ScopeError, check_id, checkpoint_scope
from sync.station_client import StationLink
from vision.calibrate import CalibratedThreshold, RecordRef, RecordResolver, check_models, model_name
from vision.config import CameraSection, ModelsSection


@dataclass(frozen=True)
class StationSection:
    id: str = field(metadata={"help": "this station's id, as registered with `gate-central station add`"})
    airport: str = field(metadata={"help": "IATA code of the airport the station serves, e.g. SGN"})
    timezone: str = field(default="Asia/Ho_Chi_Minh", metadata={"help": "the airport's IANA time zone"})
    departure_grace_h: float = field(default=3.0, metadata={
        "help": "templates stay valid this long after the end of the flight's local day (late departures)",
        "min": 0.0, "max": 48.0})
    max_days_ahead: int = field(default=1, metadata={"help": "refuse passes for flights later than this", "min": 0,
                                                     "max": 2})
    state_dir: Path = field(default=Path("/var/lib/edgegate-kiosk"), metadata={"help": "audit.db lives here"})
    control_socket: Path = field(default=Path("/run/edgegate-kiosk/control.sock"), metadata={
        "help": "Unix socket for `gate-kiosk approve|decline|status`"})
    control_group: str | None = field(default=None, metadata={"help": "group allowed to use the control socket"})
    inbox: Path = field(default=Path("/run/edgegate-kiosk/inbox"), metadata={
        "help": "where the chip reader / identity provider adapter hands over one reference per folder"})
    session_timeout_s: float = field(default=180.0, metadata={
        "help": "a session waiting for a pass step (identity, agent) this long is abandoned", "min": 5.0})

    def check(self) -> None:
        try:
            check_id(self.id, "station.id")
            checkpoint_scope(self.airport)
            ZoneInfo(self.timezone)
        except (ScopeError, ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"station: {exc}") from None


@dataclass(frozen=True)
class VerifySection:
    # Must come from `gate-eval verify` at FMR 1e-4 on calibration data for the deployed models
    # and camera (the 1:1 reference check); the shipped example refers to the record computed
    # from the LFW dev split, labelled as such.
    threshold_1to1: float = field(metadata={
        "help": "1:1 live-vs-reference cosine threshold: a number, or the calibration record it came from at "
                "FMR 1e-4: { record = \"FILE.json\", far = 0.0001 } (gate-eval verify --out)",
        "min": 0.0, "max": 1.0, "or_table": RecordRef, "calibration_mode": "1:1"})
    ambiguous_margin: float = field(default=0.03, metadata={
        "help": "a median score this close below the threshold is referred as ambiguous, not failed", "min": 0.0})
    frames_needed: int = field(default=5, metadata={"help": "quality-passing frames before deciding", "min": 1,
                                                    "max": 30})
    enrol_frames: int = field(default=3, metadata={"help": "best live frames enrolled beside the reference",
                                                   "min": 1, "max": 10})
    target_inter_eye_px: float = field(default=40.0, metadata={"help": "guidance asks to step closer below this",
                                                               "min": 10.0})
    pad_threshold: float = field(default=0.5, metadata={"help": "mean live probability over the frames",
                                                        "min": 0.0, "max": 1.0})
    capture_timeout_s: float = field(default=30.0, metadata={"min": 1.0})


@dataclass(frozen=True)
class IdentitySection:
    csca: list[Path] = field(default_factory=list, metadata={
        "help": "CSCA certificates (files or folders of PEM/DER) that chip documents must chain to"})
    providers: dict[str, str] = field(default_factory=dict, metadata={
        "help": "identity provider name -> its Ed25519 public key (PEM), e.g. {vneid = \"vneid.pub.pem\"}"})


@dataclass(frozen=True)
class CentralSection:
    host: str = field(metadata={"help": "central host"})
    base_port: int = field(default=5556, metadata={"min": 1, "max": 65532})
    secret_key_file: Path | None = field(default=None, metadata={"help": "this station's CURVE keypair"})
    central_public_key_file: Path | None = field(default=None)
    dev_plain_loopback: bool = field(default=False, metadata={"help": "plain TCP on loopback (development)"})
    nodes: list[str] = field(default_factory=list, metadata={
        "help": "several central nodes, preferred first (\"tcp://host:5556\"); empty = host:base_port"})
    reply_timeout_s: float = field(default=2.5, metadata={"min": 0.1})
    request_retries: int = field(default=3, metadata={"min": 1, "max": 20})


@dataclass(frozen=True)
class KioskConfig:
    station: StationSection
    camera: CameraSection
    models: ModelsSection
    verify: VerifySection
    identity: IdentitySection
    central: CentralSection
    scanner: ScannerConfig | None = None
    path: Path | None = None
    # config key -> the calibration record a threshold was taken from (empty: a bare number)
    calibration: dict[str, CalibratedThreshold] = dataclasses.field(default_factory=dict)

    def rules(self) -> StationRules:
        v = self.verify
        return StationRules(
            airport=self.station.airport, airport_tz=ZoneInfo(self.station.timezone),
            departure_grace=dt.timedelta(hours=self.station.departure_grace_h), threshold_1to1=v.threshold_1to1,
            ambiguous_margin=v.ambiguous_margin, frames_needed=v.frames_needed, enrol_frames=v.enrol_frames,
            target_inter_eye_px=v.target_inter_eye_px, pad_threshold=v.pad_threshold,
            pad_required=self.models.pad_required, capture_timeout_s=v.capture_timeout_s,
            max_days_ahead=self.station.max_days_ahead,
            verify_limit=KNOWN_LIMITS.get(model_name(self.models.dir, self.models.embedder), ""),
            operating_point=self._operating_point())

    def _operating_point(self) -> str:
        c = self.calibration.get("verify.threshold_1to1")
        if c is None:
            return "a bare number, no calibration record"
        return f"FMR {c.point.target:g} on \"{c.record.description}\""

    def link(self) -> StationLink:
        c = self.central
        return StationLink(self.station.id, c.host, c.base_port, c.secret_key_file, c.central_public_key_file,
                           c.dev_plain_loopback, c.reply_timeout_s, c.request_retries, tuple(c.nodes))


_SECTIONS = {"station": StationSection, "camera": CameraSection, "models": ModelsSection, "verify": VerifySection,
             "identity": IdentitySection, "central": CentralSection}


def _resolve(obj, base: Path):
    changes: dict[str, object] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, Path) and not v.is_absolute():
            changes[f.name] = (base / v).resolve()
        elif isinstance(v, list) and v and all(isinstance(p, Path) for p in v):
            changes[f.name] = [p if p.is_absolute() else (base / p).resolve() for p in v]
        elif f.name == "providers":
            changes[f.name] = {str(k): (Path(p) if Path(p).is_absolute() else (base / p).resolve())
                               for k, p in v.items()}
    return dataclasses.replace(obj, **changes) if changes else obj


def parse_config(data: dict, base_dir: Path, path: Path | None = None) -> KioskConfig:
    unknown = set(data) - set(_SECTIONS) - {"scanner"}
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))} "
                          f"(sections: {', '.join(_SECTIONS)}, scanner)")
    sections = {}
    records = RecordResolver(base_dir)
    for name, cls in _SECTIONS.items():
        if name not in data and name != "identity":
            raise ConfigError(f"missing section [{name}]")
        try:
            sections[name] = _resolve(load_dataclass(cls, data.get(name, {}), name, resolve=records), base_dir)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(exc) if isinstance(exc, ConfigError) else f"[{name}] {exc}") from None
    if not all(isinstance(k, str) and isinstance(v, Path) for k, v in sections["identity"].providers.items()):
        raise ConfigError("identity.providers must map provider names to public key files")
    scanner = load_dataclass(ScannerConfig, data["scanner"], "scanner") if "scanner" in data else None
    m = sections["models"]
    check_models(records.used, detector=model_name(m.dir, m.detector), embedder=model_name(m.dir, m.embedder),
                 flip=m.flip)
    return KioskConfig(**sections, scanner=scanner, path=path, calibration=dict(records.used))


def load_config(path: Path) -> KioskConfig:
    path = Path(path)
    data = configschema.read_toml(path)
    try:
        return parse_config(data, path.parent.resolve(), path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def reference_markdown() -> str:
    """The README's enrolment-station configuration reference, generated like the lane's."""
    rows = []
    for name, cls in _SECTIONS.items():
        rows += describe(cls, name)
    rows += describe(ScannerConfig, "scanner")
    return configschema.reference_markdown(rows)
