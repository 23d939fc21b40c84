"""Serving the console: the bind rule first, then uvicorn (`gate-central --config F console`).

uvicorn's access log is off: its lines would carry query strings (subject ids of audit searches)
into the journal; the console's own ops audit log records who searched for what instead.
"""
from __future__ import annotations

import logging

from configschema import ConfigError
from console.config import ConsoleConfig, check_bind
from sync.central_db import open_central_db, redact_dsn
from sync.config import CentralConfig

log = logging.getLogger(__name__)


def console_url(cfg: ConsoleConfig) -> str:
    host = f"[{cfg.bind}]" if ":" in cfg.bind else cfg.bind
    return f"{'https' if cfg.tls else 'http'}://{host}:{cfg.port}/"


def run_console(central_cfg: CentralConfig, cfg: ConsoleConfig) -> int:
    """Refuse a bind the rules forbid (BindRefused, a ConfigError), check the database has the
    console's schema (a PostgreSQL central older than version 6 needs `gate-central migrate`),
    then serve until SIGTERM / SIGINT."""
    import uvicorn

    from console.app import MAX_EXPORTS, build_app

    check_bind(cfg)
    need = cfg.db_threads + MAX_EXPORTS + 1
    if central_cfg.pool_size < need:
        raise ConfigError(f"[central] pool_size = {central_cfg.pool_size} is too small for the console: its "
                          f"{cfg.db_threads} db_threads, {MAX_EXPORTS} exports and one more need {need}")
    # SchemaMissing early, in one line (and the process's one pool made at its configured size)
    open_central_db(str(central_cfg.database), pool_size=central_cfg.pool_size).close()
    console = build_app(central_cfg, cfg)
    config = uvicorn.Config(console.app, host=cfg.bind, port=cfg.port, ssl_certfile=cfg.tls_cert_file,
                            ssl_keyfile=cfg.tls_key_file, access_log=False, server_header=False,
                            proxy_headers=False, log_config=None, lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    where = "behind a TLS reverse proxy" if cfg.behind_proxy else ("with TLS" if cfg.tls else "loopback only")
    log.info("operations console on %s (%s), database %s", console_url(cfg), where,
             redact_dsn(str(central_cfg.database)))
    try:
        server.run()
    finally:
        console.close()
    return 0
