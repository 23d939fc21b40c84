"""The gate's sync agent: watchlist follower, audit uploader and health reporter, each in its
own daemon thread with its own sockets. The gate's main loop never waits on the network:
it hands over a sink, an audit source and a health callable, and may call `notify_audit()`
after writing records.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import zmq

from sync.config import AgentConfig
from sync.follower import FollowerStatus, WatchlistFollower
from sync.health_reporter import HealthReporter
from sync.interfaces import AuditSource, HealthProvider, WatchlistSink
from sync.keys import load_keypair, load_public_key
from sync.transport import InsecureTransportError, Security, is_loopback_host
from sync.uploader import AlarmCallback, AuditUploader, UploaderStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentStatus:
    watchlist: FollowerStatus
    audit: UploaderStatus
    health_reports_acked: int


def agent_security(config: AgentConfig) -> Security:
    """Load this gate's keypair and the central's public key (raises KeyFileError early)."""
    if config.dev_plain_loopback:
        if not is_loopback_host(config.central_host):
            raise InsecureTransportError(
                f"refusing plain TCP to {config.central_host!r}: the development flag only allows loopback")
        return Security(dev_plain_loopback=True)
    if config.secret_key_file is None or config.central_public_key_file is None:
        raise ValueError("sync.secret_key_file and sync.central_public_key_file are required "
                         "unless dev_plain_loopback is set")
    return Security(keypair=load_keypair(config.secret_key_file),
                    server_public=load_public_key(config.central_public_key_file))


class GateAgent:
    def __init__(self, config: AgentConfig, sink: WatchlistSink, audit_source: AuditSource,
                 health_provider: HealthProvider, on_audit_alarm: AlarmCallback | None = None):
        self.config = config
        self._on_audit_alarm = on_audit_alarm
        self._sink = sink
        self._source = audit_source
        self._provider = health_provider
        self._stop = threading.Event()
        self._ctx: zmq.Context | None = None
        self._threads: list[threading.Thread] = []
        self._follower: WatchlistFollower | None = None
        self._uploader: AuditUploader | None = None
        self._health: HealthReporter | None = None

    def start(self) -> None:
        """Start the threads and return at once; key problems raise here, in the caller."""
        security = agent_security(self.config)
        if self.config.dev_plain_loopback:
            log.warning("sync agent in DEVELOPMENT MODE: plain TCP to %s, no encryption", self.config.central_host)
        self._ctx = zmq.Context()
        self._follower = WatchlistFollower(self.config, security, self._sink, self._ctx)
        self._uploader = AuditUploader(self.config, security, self._source, self._ctx, self._on_audit_alarm)
        self._health = HealthReporter(self.config, security, self._ctx, self._provider, self._sink, self._source,
                                      self._follower.note_central_heads, scopes=self._follower.scopes,
                                      on_assigned=self._follower.set_assigned)
        for name, part in (("watchlist", self._follower), ("audit", self._uploader), ("health", self._health)):
            t = threading.Thread(target=self._guard, args=(name, part), name=f"sync-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        log.info("sync agent for gate %s started: central %s:%d, scopes %s", self.config.gate_id,
                 self.config.central_host, self.config.base_port, ", ".join(self.config.scopes))

    def _guard(self, name: str, part) -> None:
        """A failing part is restarted after a pause: the agent must outlive any bug it meets."""
        while not self._stop.is_set():
            try:
                part.run(self._stop)
                return
            except Exception:
                log.exception("sync %s thread failed; restarting it in 1s", name)
                self._stop.wait(1.0)

    def notify_audit(self) -> None:
        if self._uploader is not None:
            self._uploader.wake()

    def status(self) -> AgentStatus:
        if self._follower is None or self._uploader is None or self._health is None:
            raise RuntimeError("the sync agent has not been started")
        return AgentStatus(self._follower.status(), self._uploader.status(), self._health.reports_acked)

    def scopes(self) -> tuple[str, ...]:
        """What the gate follows now: its configured scopes and the flights assigned to it."""
        return self._follower.scopes() if self._follower is not None else tuple(self.config.scopes)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.notify_audit()
        stuck = []
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                stuck.append(t.name)
        self._threads = []
        if self._ctx is not None:
            if stuck:
                log.error("sync threads %s did not stop within %.1fs; abandoning their sockets", stuck, timeout)
            else:
                self._ctx.term()
            self._ctx = None
        log.info("sync agent for gate %s stopped", self.config.gate_id)
