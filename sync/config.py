"""Settings for both ends of the wire, as typed dataclasses built from TOML-style mappings.

The central reads its own file (`gate-central --config central.toml`, table [central]); the
gate's daemon owns its config file and hands its [sync] table to `agent_config_from_mapping`.
Relative paths are resolved against the config file's folder, so a config directory can be
moved as a whole.
"""
from __future__ import annotations

import dataclasses
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sync.central_db import is_postgres
from sync.endpoints import Endpoint, EndpointError, parse_endpoint
from sync.scopes import ScopeError, check_id, parse_scope


class ConfigError(ValueError):
    """A setting that is missing, unknown or of the wrong kind; names the key."""


@dataclass(frozen=True)
class CentralConfig:
    # A SQLite file (the embedded default) or a PostgreSQL connection string
    # ("postgresql://app@db1,db2/edgegate?target_session_attrs=read-write", libpq multi-host).
    database: str | None = None
    db_path: Path | None = None  # the setting's first name, still read: a SQLite file
    node_name: str = dataclasses.field(default_factory=socket.gethostname)  # shown per gate in health
    pool_size: int = 20  # PostgreSQL connections one central process may hold (each thread holds one)
    audit_retention_days: int = 0  # PostgreSQL: drop monthly audit partitions older than this; 0 keeps all
    base_port: int = 5556  # snapshot P, updates P+1, collector P+2, audit/health P+3
    bind_host: str = "*"
    secret_key_file: Path | None = None  # central's CURVE keypair (NAME.key_secret)
    dev_plain_loopback: bool = False  # plain TCP; refuses any non-loopback bind
    heartbeat_s: float = 1.0  # HUGZ interval
    log_poll_s: float = 0.01  # how often changes written by other processes are looked for
    gate_silent_after_s: float = 60.0
    snapshot_send_timeout_s: float = 10.0  # a gate that stops reading for this long loses its snapshot
    log_retention_s: float = 3600.0  # KVSET UUID de-duplication window
    expiry_check_s: float = 1.0

    def __post_init__(self) -> None:
        if self.database is None and self.db_path is None:
            raise ConfigError("[central] database is required (a SQLite file or a postgresql:// URL)")
        if self.database is None:
            object.__setattr__(self, "database", str(self.db_path))
        if not is_postgres(self.database) and self.db_path is None:
            object.__setattr__(self, "db_path", Path(self.database))
        if is_postgres(self.database):
            object.__setattr__(self, "db_path", None)
        if self.pool_size < 1:
            raise ConfigError("[central] pool_size must be at least 1")


@dataclass(frozen=True)
class AgentConfig:
    gate_id: str
    central_host: str
    base_port: int
    scopes: tuple[str, ...]  # subtrees, e.g. ("/lane/L1/", "/flight/BA123/")
    accepted_models: frozenset[str]  # model ids this gate's matcher runs
    secret_key_file: Path | None = None  # this gate's CURVE keypair
    central_public_key_file: Path | None = None
    dev_plain_loopback: bool = False
    heartbeat_timeout_s: float = 2.5  # no HUGZ (sent every 1 s) for this long: that node is lost, try the next
    snapshot_idle_timeout_s: float = 10.0  # no snapshot message for this long: snapshot aborted
    reply_timeout_s: float = 2.5  # Lazy Pirate reply timeout
    request_retries: int = 3  # tries per batch before backing off
    retry_backoff_max_s: float = 30.0
    audit_batch_rows: int = 500
    audit_idle_poll_s: float = 1.0
    health_interval_s: float = 10.0
    head_grace_s: float = 2.0  # how long a scope may lag the central's head before a re-snapshot
    max_buffered_updates: int = 200_000
    # Several central nodes, preferred first ("tcp://a:5556"); empty = central_host:base_port only.
    central: tuple[str, ...] = ()
    failback_after_s: float = 30.0  # how often a part that moved away tries the preferred node again
    move_after_timeouts: int = 1  # Lazy Pirate timeouts in a row after which audit/health try the next node

    def endpoints(self) -> tuple[Endpoint, ...]:
        if self.central:
            return tuple(parse_endpoint(e) for e in self.central)
        return (Endpoint(self.central_host, self.base_port),)

    def __post_init__(self) -> None:
        try:
            self.endpoints()
        except EndpointError as exc:
            raise ConfigError(f"[sync] central: {exc}") from exc
        if not self.scopes:
            raise ConfigError("sync.scopes: a gate follows at least one lane or flight")
        if not self.accepted_models:
            raise ConfigError("sync.accepted_models: name the model id(s) this gate's matcher runs")


def _coerce(cls: type, data: Mapping[str, Any], base_dir: Path, section: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"[{section}] unknown key(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for name, value in data.items():
        kind = str(fields[name].type)
        if "Path" in kind and value is not None:
            path = Path(value).expanduser()
            out[name] = path if path.is_absolute() else (base_dir / path)
        elif kind.startswith("float"):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"[{section}] {name} must be a number")
            out[name] = float(value)
        elif kind.startswith("int"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"[{section}] {name} must be an integer")
            out[name] = value
        elif kind.startswith("bool"):
            if not isinstance(value, bool):
                raise ConfigError(f"[{section}] {name} must be true or false")
            out[name] = value
        else:
            out[name] = value
    return out


def central_config_from_mapping(data: Mapping[str, Any], base_dir: Path) -> CentralConfig:
    data = dict(data)
    database = data.pop("database", None)
    values = _coerce(CentralConfig, data, base_dir, "central")
    if database is not None:
        if not isinstance(database, str) or not database:
            raise ConfigError("[central] database must be a SQLite file path or a postgresql:// URL")
        if not is_postgres(database):
            path = Path(database).expanduser()
            database = str(path if path.is_absolute() else base_dir / path)
        values["database"] = database
    if "database" not in values and "db_path" not in values:
        raise ConfigError("[central] database is required (a SQLite file or a postgresql:// URL)")
    return CentralConfig(**values)


def load_central_config(path: Path) -> CentralConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if "central" not in data:
        raise ConfigError(f"{path} has no [central] table")
    return central_config_from_mapping(data["central"], path.parent)


def agent_config_from_mapping(data: Mapping[str, Any], base_dir: Path) -> AgentConfig:
    """Build the agent's settings from the gate config's [sync] table.

    `scopes` is a list of "lane:ID" / "flight:NO"; `accepted_models` a list of model ids.
    """
    values = _coerce(AgentConfig, data, base_dir, "sync")
    if "central" in values:
        central = values["central"]
        if isinstance(central, str):
            central = [central]
        if not isinstance(central, list) or not central or not all(isinstance(c, str) for c in central):
            raise ConfigError('[sync] central must be a list of endpoints, e.g. ["tcp://a:5556", "tcp://b:5556"]')
        try:
            first = parse_endpoint(central[0])
        except EndpointError as exc:
            raise ConfigError(f"[sync] central: {exc}") from exc
        values["central"] = tuple(central)
        values.setdefault("central_host", first.host)
        values.setdefault("base_port", first.base_port)
    for required in ("gate_id", "central_host", "base_port", "scopes", "accepted_models"):
        if required not in values:
            raise ConfigError(f"[sync] {required} is required")
    try:
        values["gate_id"] = check_id(values["gate_id"], "gate id")
        values["scopes"] = tuple(sorted({parse_scope(s) for s in values["scopes"]}))
    except ScopeError as exc:
        raise ConfigError(f"[sync] {exc}") from exc
    values["accepted_models"] = frozenset(values["accepted_models"])
    return AgentConfig(**values)
