"""The console's settings: table [console] of the central's config file, checked by configschema
and listed in the README's central configuration reference with the [central] keys.

The bind rule (`check_bind`): plain HTTP only on a loopback address. Anything else needs the
console's own TLS certificate and key. `behind_proxy = true` is for a TLS-terminating reverse
proxy on the same machine: the console then still listens on loopback only, marks its cookies
Secure, trusts X-Forwarded-For / X-Forwarded-Proto from `trusted_proxies` alone, and refuses a
request the proxy did not receive over HTTPS. There is no setting that serves plain HTTP to
the network.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

import configschema
from configschema import ConfigError, describe, load_dataclass, read_toml, resolve_paths
from sync.config import CentralConfig, central_config_from_mapping


@dataclass(frozen=True)
class ConsoleConfig:
    bind: str = field(default="127.0.0.1", metadata={
        "help": "address the console listens on; anything but loopback needs tls_cert_file and tls_key_file"})
    port: int = field(default=8443, metadata={"help": "the console's TCP port", "min": 1, "max": 65535})
    tls_cert_file: Path | None = field(default=None, metadata={
        "help": "PEM certificate (chain) the console serves HTTPS with"})
    tls_key_file: Path | None = field(default=None, metadata={
        "help": "PEM private key of tls_cert_file (0600)"})
    behind_proxy: bool = field(default=False, metadata={
        "help": "behind a TLS-terminating reverse proxy on this machine: listen on loopback only, Secure "
                "cookies, requests the proxy did not receive over HTTPS refused (README, 'Operations console')"})
    trusted_proxies: tuple[str, ...] = field(default=("127.0.0.1", "::1"), metadata={
        "help": "addresses whose X-Forwarded-For / X-Forwarded-Proto are believed (behind_proxy only)"})
    session_idle_s: float = field(default=900.0, metadata={
        "help": "a session unused for this long ends (log in again)", "min": 30.0})
    session_max_s: float = field(default=43200.0, metadata={
        "help": "a session ends this long after its login, used or not (a 12-hour shift)", "min": 60.0})
    login_max_failures: int = field(default=5, metadata={
        "help": "wrong passwords in a row that lock an account", "min": 1})
    login_lockout_s: float = field(default=900.0, metadata={
        "help": "how long a locked account is refused (even with the right password); "
                "`gate-central console-user unlock` ends it early", "min": 1.0})
    client_max_failures: int = field(default=20, metadata={
        "help": "failed logins from one address within client_window_s after which that address is refused "
                "for the rest of the window (whatever the account)", "min": 1})
    client_window_s: float = field(default=600.0, metadata={
        "help": "window of client_max_failures", "min": 1.0})
    refresh_s: float = field(default=5.0, metadata={
        "help": "how often the fleet page refreshes itself", "min": 1.0})
    search_limit: int = field(default=500, metadata={
        "help": "audit records an on-screen search shows at most (the export has no limit)", "min": 1})
    db_threads: int = field(default=4, metadata={
        "help": "worker threads that read the database (each holds one connection)", "min": 1, "max": 64})

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("[console] tls_cert_file and tls_key_file go together")

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def secure_cookies(self) -> bool:
        return self.tls or self.behind_proxy


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BindRefused(ConfigError):
    """The console will not listen there with these settings."""


def check_bind(cfg: ConsoleConfig) -> None:
    """Plain HTTP only on loopback; behind a proxy, loopback only (the proxy is on this machine)."""
    if cfg.behind_proxy and not is_loopback(cfg.bind):
        raise BindRefused(f"[console] behind_proxy: the console listens on loopback only (the proxy runs on this "
                          f"machine), not on {cfg.bind!r}; a proxy elsewhere reaches the console over its own TLS "
                          "(tls_cert_file, tls_key_file, behind_proxy = false)")
    if not is_loopback(cfg.bind) and not cfg.tls:
        raise BindRefused(f"[console] refusing to serve plain HTTP on {cfg.bind!r}: set tls_cert_file and "
                          "tls_key_file, or keep bind on loopback (127.0.0.1) behind a TLS reverse proxy")
    for f in (cfg.tls_cert_file, cfg.tls_key_file):
        if f is not None and not Path(f).is_file():
            raise ConfigError(f"[console] {f} does not exist or is not a file")


def console_config_from_mapping(data: dict, base_dir: Path) -> ConsoleConfig:
    cfg = load_dataclass(ConsoleConfig, dict(data), "console")
    for proxy in cfg.trusted_proxies:
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            raise ConfigError(f"console.trusted_proxies: {proxy!r} is not an IP address") from None
    return resolve_paths(cfg, base_dir)


def load_console_config(path: Path) -> tuple[CentralConfig, ConsoleConfig]:
    """The central's [central] table (which database) and its [console] table (optional)."""
    path = Path(path)
    data = read_toml(path)
    if "central" not in data:
        raise ConfigError(f"{path} has no [central] table")
    return (central_config_from_mapping(data["central"], path.parent),
            console_config_from_mapping(data.get("console", {}), path.parent))


def console_reference_rows() -> list[dict]:
    return describe(ConsoleConfig, "console")


def console_reference_markdown() -> str:
    return configschema.reference_markdown(console_reference_rows())
