"""Gate side of health: a report at a steady interval, and in return the central's per-scope
heads (handed to the watchlist follower, which uses them to notice a missed last update) and
the flights the central assigned to this gate (the follower starts following them)."""
from __future__ import annotations

import logging
import secrets
import threading
from typing import Callable

import zmq

from sync.config import AgentConfig
from sync.interfaces import AuditSource, HealthProvider, WatchlistSink
from sync.service_messages import HealthReport, encode_health
from sync.transport import Security
from sync.uploader import LazyPirateClient

log = logging.getLogger(__name__)

_PROVIDER_KEYS = ("status", "software_version", "model_versions", "last_decision_at")


class HealthReporter:
    def __init__(self, config: AgentConfig, security: Security, ctx: zmq.Context, provider: HealthProvider,
                 sink: WatchlistSink, source: AuditSource, on_heads: Callable[[dict[str, int]], None],
                 scopes: Callable[[], tuple[str, ...]] | None = None,
                 on_assigned: Callable[[tuple[str, ...]], None] | None = None):
        self._cfg = config
        self._client = LazyPirateClient(config, security, ctx, "health report")
        self._provider = provider
        self._sink = sink
        self._source = source
        self._on_heads = on_heads
        self._scopes = scopes or (lambda: tuple(config.scopes))
        self._on_assigned = on_assigned
        self._provider_failed = False
        self._refused_logged: list[str] = []
        self.reports_acked = 0

    def build_report(self) -> HealthReport:
        try:
            own = dict(self._provider())
            self._provider_failed = False
        except Exception:
            if not self._provider_failed:
                log.exception("the gate's health provider failed; reporting status 'unknown'")
            self._provider_failed = True
            own = {"status": "unknown"}
        extra = {k: v for k, v in own.items() if k not in _PROVIDER_KEYS}
        last_decision = own.get("last_decision_at")
        if last_decision is not None and not isinstance(last_decision, str):
            last_decision = last_decision.isoformat() if hasattr(last_decision, "isoformat") else str(last_decision)
        return HealthReport(
            gate_id=self._cfg.gate_id, request_id=secrets.randbits(63),
            status=str(own.get("status", "unknown")),
            software_version=str(own.get("software_version", "")),
            model_versions={str(k): str(v) for k, v in dict(own.get("model_versions") or {}).items()},
            watchlist_seq=self._sink.stored_seq(), queue_depth=self._source.unsent_count(),
            last_decision_at=last_decision, scopes=tuple(self._scopes()), extra=extra, **self._audit_head())

    def _audit_head(self) -> dict:
        """The log's epoch, last seq and its hash, so the central can tell a log that went back."""
        try:
            last = self._source.last_seq()
            return {"audit_epoch": self._source.chain_epoch().epoch, "audit_last_seq": last,
                    "audit_head_hash": self._source.link_at(last) or ""}
        except Exception:
            log.exception("could not read the audit log's head for the health report")
            return {}

    def _check_scopes(self, asked: tuple[str, ...], heads: dict[str, int]) -> None:
        """The central answers heads only for scopes this gate is registered or assigned for; a
        scope missing from the answer is one the central will not serve it."""
        refused = sorted(set(asked) - set(heads))
        if refused and refused != self._refused_logged:
            log.error("the central does not serve %s to gate %s (not among its registered scopes); "
                      "the watchlist cannot be refreshed until that is fixed", ", ".join(refused), self._cfg.gate_id)
        self._refused_logged = refused

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    report = self.build_report()
                    reply = self._client.request(encode_health(report), report.request_id, stop)
                except Exception:
                    log.exception("could not send a health report")
                    reply = None
                if reply is not None:
                    if reply.ok:
                        self.reports_acked += 1
                        if self._on_assigned is not None:
                            self._on_assigned(reply.assigned_scopes)
                        self._on_heads(reply.scope_heads)
                        self._check_scopes(report.scopes, reply.scope_heads)
                    else:
                        log.error("central refused our health report: %s", reply.error)
                # after a timeout, try again soon (on the next node once the retries are used up)
                stop.wait(self._cfg.health_interval_s if reply is not None
                          else min(self._cfg.health_interval_s, self._cfg.reply_timeout_s))
        finally:
            self._client.close()
