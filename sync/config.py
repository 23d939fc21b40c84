"""Settings for both ends of the wire, as typed dataclasses checked by `configschema`.

The central reads its own file (`gate-central --config central.toml`, table [central]); the
gate's daemon owns its config file and hands its [sync] table to `agent_config_from_mapping`.
Both go through the same schema as the lane's config, so an unknown key, a wrong type or an
out-of-range value is one ConfigError naming the key, and both tables appear in the README's
generated references. Relative paths are resolved against the config file's folder, so a
config directory can be moved as a whole.
"""
from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import configschema
from configschema import ConfigError, describe, load_dataclass, read_toml, resolve_path, resolve_paths
from sync.central_db import is_postgres
from sync.central_seal import DEFAULT_KEY_NAME, default_template_key_file
from sync.endpoints import Endpoint, EndpointError, parse_endpoint
from sync.scopes import check_id, parse_scope

__all__ = ["AgentConfig", "CentralConfig", "ConfigError", "agent_config_from_mapping",
           "central_config_from_mapping", "central_reference_markdown", "load_central_config"]


@dataclass(frozen=True)
class CentralConfig:
    # A SQLite file (the embedded default) or a PostgreSQL connection string
    # ("postgresql://app@db1,db2/edgegate?target_session_attrs=read-write", libpq multi-host).
    database: str | None = field(default=None, metadata={
        "help": "the central store: a SQLite file (relative to this file's folder) or a PostgreSQL connection "
                "string (postgresql://..., libpq multi-host allowed); required unless the older db_path is given",
        "default_doc": "(required)"})
    db_path: Path | None = field(default=None, metadata={
        "help": "the setting's first name, still read: a SQLite file"})
    node_name: str = field(default_factory=socket.gethostname, metadata={
        "help": "this central node's name, shown per gate in health (several nodes may share one database)",
        "default_doc": "the host name"})
    pool_size: int = field(default=20, metadata={
        "help": "PostgreSQL connections one central process may hold (each thread holds one)", "min": 1})
    audit_retention_days: int = field(default=0, metadata={
        "help": "PostgreSQL: drop monthly audit partitions older than this; 0 keeps all", "min": 0})
    base_port: int = field(default=5556, metadata={
        "help": "snapshot on this port, updates +1, collector +2, audit/health +3", "min": 1, "max": 65532})
    bind_host: str = field(default="*", metadata={
        "help": "address to listen on, or * for all; * is refused with dev_plain_loopback"})
    secret_key_file: Path | None = field(default=None, metadata={
        "help": "the central's CURVE keypair (NAME.key_secret, 0600)"})
    template_key_file: Path | None = field(default=None, metadata={
        "help": "AES-256 key the central seals templates and record bodies with (32 raw bytes, 0600, created on "
                "first start); every node on one database needs the same file; refused if group/other-readable",
        "default_doc": "templates.key beside secret_key_file; without one, beside a SQLite file or "
                       "~/.local/state/edgegate/central-keys/DBNAME.templates.key"})
    dev_plain_loopback: bool = field(default=False, metadata={
        "help": "development only: plain TCP, refuses any non-loopback bind"})
    heartbeat_s: float = field(default=1.0, metadata={"help": "HUGZ interval", "min": 0.001})
    log_poll_s: float = field(default=0.01, metadata={
        "help": "how often changes written by other processes are looked for", "min": 0.001})
    gate_silent_after_s: float = field(default=60.0, metadata={
        "help": "a gate not heard from for this long is flagged silent", "min": 0.001})
    snapshot_send_timeout_s: float = field(default=10.0, metadata={
        "help": "a gate that stops reading for this long loses its snapshot", "min": 0.001})
    log_retention_s: float = field(default=3600.0, metadata={
        "help": "KVSET UUID de-duplication window", "min": 0.0})
    expiry_check_s: float = field(default=1.0, metadata={
        "help": "how often expired subjects are looked for", "min": 0.001})

    @property
    def store(self) -> str:
        """The database to open, a SQLite file or a PostgreSQL URL (always set after validation)."""
        return str(self.database)

    @property
    def template_key_path(self) -> Path:
        """The template key this central uses: `template_key_file`, else `templates.key` in the
        CURVE key's folder (a keys directory, not the database's), else the database's default
        (sync.central_seal.default_template_key_file, what `Central(database)` uses alone)."""
        if self.template_key_file is not None:
            return Path(self.template_key_file)
        if self.secret_key_file is not None:
            return Path(self.secret_key_file).parent / DEFAULT_KEY_NAME
        return default_template_key_file(self.store)

    def __post_init__(self) -> None:
        # `database` is the name code reads; `db_path` is the SQLite file, None on PostgreSQL.
        if not self.database and self.db_path is None:
            raise ConfigError("missing required key central.database (a SQLite file or a postgresql:// URL)")
        if not self.database:
            object.__setattr__(self, "database", str(self.db_path))
        database = str(self.database)
        if is_postgres(database):
            object.__setattr__(self, "db_path", None)
        elif self.db_path is None:
            object.__setattr__(self, "db_path", Path(database))
        elif Path(database) != Path(self.db_path):
            raise ConfigError(f"database = {database!r} and db_path = {str(self.db_path)!r} disagree; "
                              "give only database")
        if self.pool_size < 1:
            raise ConfigError("[central] pool_size must be at least 1")


def _scopes(values: Any) -> tuple[str, ...]:
    return tuple(sorted({parse_scope(s) for s in values}))


def _endpoints(values: Any) -> tuple[str, ...]:
    for text in values:
        parse_endpoint(text)  # an EndpointError (a ValueError) names the bad one
    return tuple(values)


@dataclass(frozen=True)
class AgentConfig:
    gate_id: str = field(metadata={
        "help": "this gate's id on the wire and in the central's allowlist", "parse": lambda v: check_id(v, "gate id"),
        "default_doc": "gate.id"})
    central_host: str = field(metadata={
        "help": "the central's host name or address; default: the first of `central`"})
    base_port: int = field(metadata={"help": "the central's base_port (snapshot; updates +1, collector +2, "
                                             "audit/health +3); default: the first of `central`",
                                     "min": 1, "max": 65532})
    scopes: tuple[str, ...] = field(metadata={
        "help": "what this gate follows, e.g. [\"lane:L1\", \"flight:BA123\"]", "parse": _scopes})
    accepted_models: frozenset[str] = field(metadata={"help": "model ids this gate's matcher runs"})
    secret_key_file: Path | None = field(default=None, metadata={"help": "this gate's CURVE keypair (0600)"})
    central_public_key_file: Path | None = field(default=None, metadata={"help": "the central's CURVE public key"})
    dev_plain_loopback: bool = field(default=False, metadata={
        "help": "development only: plain TCP to a loopback central"})
    heartbeat_timeout_s: float = field(default=2.5, metadata={
        "help": "no HUGZ (sent every 1 s) for this long: that node is lost, try the next", "min": 0.001})
    snapshot_idle_timeout_s: float = field(default=10.0, metadata={
        "help": "no snapshot message for this long: the snapshot is abandoned", "min": 0.001})
    reply_timeout_s: float = field(default=2.5, metadata={"help": "Lazy Pirate reply timeout", "min": 0.001})
    request_retries: int = field(default=3, metadata={"help": "tries per batch before backing off", "min": 1})
    retry_backoff_max_s: float = field(default=30.0, metadata={
        "help": "longest pause between rounds of tries", "min": 0.0})
    audit_batch_rows: int = field(default=500, metadata={"help": "audit records per upload batch", "min": 1})
    audit_idle_poll_s: float = field(default=1.0, metadata={
        "help": "how often an idle uploader looks for new audit records", "min": 0.001})
    health_interval_s: float = field(default=10.0, metadata={"help": "seconds between health reports", "min": 0.001})
    head_grace_s: float = field(default=2.0, metadata={
        "help": "how long a scope may lag the central's head before a re-snapshot", "min": 0.0})
    max_buffered_updates: int = field(default=200_000, metadata={
        "help": "updates held while a snapshot is applied; more means a fresh snapshot", "min": 1})
    boarding_gate: bool = field(default=False, metadata={
        "help": "a boarding gate: `scopes` may be empty, it follows the flights `gate-central assign` gives it "
                "(every gate follows assigned flights on top of `scopes`)"})
    central: tuple[str, ...] = field(default=(), metadata={
        "help": "several central nodes, preferred first, e.g. [\"tcp://a:5556\", \"tcp://b:5556\"]; "
                "empty = central_host:base_port only", "parse": _endpoints})
    failback_after_s: float = field(default=30.0, metadata={
        "help": "how often a part that moved away tries the preferred node again", "min": 0.0})
    move_after_timeouts: int = field(default=1, metadata={
        "help": "Lazy Pirate timeouts in a row after which audit/health try the next node", "min": 1})

    def endpoints(self) -> tuple[Endpoint, ...]:
        if self.central:
            return tuple(parse_endpoint(e) for e in self.central)
        return (Endpoint(self.central_host, self.base_port),)

    def __post_init__(self) -> None:
        try:
            self.endpoints()
        except EndpointError as exc:
            raise ConfigError(f"[sync] central: {exc}") from exc
        if not self.scopes and not self.boarding_gate:
            raise ConfigError("sync.scopes: a gate follows at least one lane or flight (a boarding gate whose "
                              "flights the central assigns sets boarding_gate = true)")
        if not self.accepted_models:
            raise ConfigError("sync.accepted_models: name the model id(s) this gate's matcher runs")


def central_config_from_mapping(data: Mapping[str, Any], base_dir: Path) -> CentralConfig:
    cfg = load_dataclass(CentralConfig, dict(data), "central")
    if cfg.db_path is not None:  # a SQLite file: it follows the config file, under both names
        path = resolve_path(cfg.db_path, base_dir)
        cfg = dataclasses.replace(cfg, database=str(path), db_path=path)
    return resolve_paths(cfg, base_dir)


def load_central_config(path: Path) -> CentralConfig:
    path = Path(path)
    data = read_toml(path)
    if "central" not in data:
        raise ConfigError(f"{path} has no [central] table")
    return central_config_from_mapping(data["central"], path.parent)


def agent_config_from_mapping(data: Mapping[str, Any], base_dir: Path) -> AgentConfig:
    """Build the agent's settings from the gate config's [sync] table.

    `scopes` is a list of "lane:ID" / "flight:NO"; `accepted_models` a list of model ids;
    `central` a list of endpoints (one string is taken as a list of one), whose first gives
    central_host and base_port when those are not set.
    """
    data = dict(data)
    if "central" in data:
        central = [data["central"]] if isinstance(data["central"], str) else data["central"]
        if not isinstance(central, list) or not central or not all(isinstance(c, str) for c in central):
            raise ConfigError('sync.central must be a list of endpoints, e.g. ["tcp://a:5556", "tcp://b:5556"]')
        try:
            first = parse_endpoint(central[0])
        except EndpointError as exc:
            raise ConfigError(f"sync.central: {exc}") from exc
        data["central"] = central
        data.setdefault("central_host", first.host)
        data.setdefault("base_port", first.base_port)
    return resolve_paths(load_dataclass(AgentConfig, data, "sync"), base_dir)


def central_reference_markdown() -> str:
    """The README's central configuration reference (`gate-central config-reference`)."""
    return configschema.reference_markdown(describe(CentralConfig, "central"))
