"""Gate side of audit upload: the zguide's Lazy Pirate over a REQ socket.

A batch is marked uploaded only after the central replies with the sequence it holds
durably. No reply within the timeout means the REQ socket may be stuck mid-exchange, so it
is closed and reopened before the same batch is sent again; after a few tries the uploader
backs off and starts over. A record therefore leaves the queue only once the central has it,
and a repeat (reply lost, gate killed before marking) is absorbed by the central's
idempotent store.
"""
from __future__ import annotations

import enum
import logging
import secrets
import threading
import time
from dataclasses import dataclass, replace

import zmq

from sync.audit_chain import AuditRow
from sync.config import AgentConfig
from sync.interfaces import AuditSource
from sync.service_messages import AuditBatch, MalformedRequest, Reply, decode_reply, encode_audit_batch
from sync.endpoints import EndpointChoice
from sync.transport import MAX_CONTROL_FRAME, MAX_SERVICE_FRAME, SERVICE_OFFSET, HandshakeWatch, Security, connect_socket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploaderStatus:
    acked_seq: int = 0  # highest seq the central has confirmed
    batches: int = 0  # batches confirmed
    timeouts: int = 0  # requests that got no reply in time
    reachable: bool = False
    last_ack_at: float | None = None
    last_error: str = ""
    central: str = ""  # the central endpoint the uploader uses now (host:base_port)


class _Outcome(enum.Enum):
    ACKED = 1
    REFUSED = 2
    UNREACHABLE = 3
    STOPPED = 4


class LazyPirateClient:
    """One REQ socket to the central's service port, replaced after every timeout."""

    def __init__(self, config: AgentConfig, security: Security, ctx: zmq.Context, label: str):
        self._cfg = config
        self._security = security
        self._ctx = ctx
        self._label = label
        self._sock: zmq.Socket | None = None
        self._watch: HandshakeWatch | None = None
        # Several central nodes: after move_after_timeouts timeouts in a row, the next one (the
        # freelance pattern: a timeout on one node is a reason to ask another at once).
        self.choice = EndpointChoice(config.endpoints(), label, retries=config.move_after_timeouts,
                                     failback_after_s=config.failback_after_s)

    @property
    def endpoint(self) -> str:
        return str(self.choice.current)

    def _open(self) -> zmq.Socket:
        if self._sock is None:
            where = self.choice.current
            self._sock = connect_socket(self._ctx, zmq.REQ, self._security, where.host,
                                        where.base_port + SERVICE_OFFSET, MAX_CONTROL_FRAME)
            if self._watch is None:
                self._watch = HandshakeWatch(self._sock, self._label, log)
            else:  # keeps what it already reported, so a refused key is logged once, not per retry
                self._watch.attach(self._sock)
        return self._sock

    def close(self) -> None:
        if self._watch is not None:
            self._watch.detach()
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def request(self, payload: bytes, request_id: int, stop: threading.Event) -> Reply | None:
        """Send once and wait for the matching reply; None after a timeout (socket reopened,
        and after `request_retries` of them the next central endpoint)."""
        if self.choice.time_to_try_preferred():
            self.close()
            self.choice.try_preferred()
        sock = self._open()
        sock.send(payload)
        deadline = time.monotonic() + self._cfg.reply_timeout_s
        while not stop.is_set():
            self._watch.poll()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if sock.poll(min(100, max(1, int(remaining * 1000)))):
                try:
                    reply = decode_reply(sock.recv())
                except MalformedRequest as exc:
                    log.warning("%s: unreadable reply from the central: %s", self._label, exc)
                    break
                if reply.request_id != request_id:
                    log.warning("%s: reply to request %d while waiting for %d; dropped", self._label,
                                reply.request_id, request_id)
                    break
                self.choice.succeeded()
                return reply
        self.close()
        if not stop.is_set():
            self.choice.failed()
        return None


class AuditUploader:
    def __init__(self, config: AgentConfig, security: Security, source: AuditSource, ctx: zmq.Context):
        self._cfg = config
        self._source = source
        self._client = LazyPirateClient(config, security, ctx, "audit upload")
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._status = UploaderStatus(central=self._client.endpoint)
        self._unreachable_logged = False

    def wake(self) -> None:
        """New records were written; upload now rather than at the next idle poll."""
        self._wake.set()

    def status(self) -> UploaderStatus:
        with self._lock:
            return self._status

    def _set(self, **changes) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    def run(self, stop: threading.Event) -> None:
        cfg = self._cfg
        backoff = cfg.reply_timeout_s
        try:
            while not stop.is_set():
                try:
                    rows = self._source.read_unsent(cfg.audit_batch_rows)
                except Exception:
                    log.exception("could not read unsent audit records; retrying")
                    stop.wait(cfg.audit_idle_poll_s)
                    continue
                if not rows:
                    self._wake.wait(cfg.audit_idle_poll_s)
                    self._wake.clear()
                    continue
                where = self._client.choice.index
                outcome = self._upload(rows, stop)
                self._set(central=self._client.endpoint)
                if outcome is _Outcome.ACKED:
                    backoff = cfg.reply_timeout_s
                elif outcome is _Outcome.UNREACHABLE and self._client.choice.index != where:
                    continue  # moved to another central node: try it now, not after a back-off
                elif outcome is not _Outcome.STOPPED:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, cfg.retry_backoff_max_s)
        finally:
            self._client.close()

    def _upload(self, rows: list[AuditRow], stop: threading.Event) -> _Outcome:
        cfg = self._cfg
        while True:
            batch = AuditBatch(gate_id=cfg.gate_id, request_id=secrets.randbits(63), rows=tuple(rows))
            payload = encode_audit_batch(batch)
            if len(payload) <= MAX_SERVICE_FRAME or len(rows) == 1:
                break
            rows = rows[: len(rows) // 2]  # the central would drop an oversized frame
        if len(payload) > MAX_SERVICE_FRAME:
            log.error("audit record %d is %d bytes, over the %d-byte message limit; it cannot be uploaded",
                      rows[0].seq, len(payload), MAX_SERVICE_FRAME)
            self._set(last_error=f"audit record {rows[0].seq} too large")
            return _Outcome.REFUSED
        for attempt in range(1, cfg.request_retries + 1):
            reply = self._client.request(payload, batch.request_id, stop)
            if stop.is_set():
                return _Outcome.STOPPED
            if reply is None:
                with self._lock:
                    self._status = replace(self._status, timeouts=self._status.timeouts + 1)
                log.debug("audit batch %d..%d: no reply within %.1fs (try %d of %d); socket reopened",
                          batch.first_seq, batch.last_seq, cfg.reply_timeout_s, attempt, cfg.request_retries)
                continue
            return self._handle_reply(batch, reply)
        self._set(reachable=False, last_error="no reply from the central")
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("central unreachable: no reply to audit batch %d..%d after %d tries of %.1fs; "
                        "%d record(s) queued, nothing lost, retrying", batch.first_seq, batch.last_seq,
                        cfg.request_retries, cfg.reply_timeout_s, self._source.unsent_count())
        return _Outcome.UNREACHABLE

    def _handle_reply(self, batch: AuditBatch, reply: Reply) -> _Outcome:
        if not reply.ok:
            self._set(reachable=True, last_error=reply.error)
            log.error("central refused audit batch %d..%d: %s; will retry", batch.first_seq, batch.last_seq,
                      reply.error)
            return _Outcome.REFUSED
        upto = min(reply.durable_seq, batch.last_seq)
        if upto < batch.first_seq:
            self._set(reachable=True, last_error=f"central holds only up to {reply.durable_seq}")
            log.error("central acknowledged audit batch %d..%d but holds only up to %d; will retry",
                      batch.first_seq, batch.last_seq, reply.durable_seq)
            return _Outcome.REFUSED
        self._source.mark_acked(upto)
        if self._unreachable_logged:
            self._unreachable_logged = False
            log.info("central reachable again; uploading %d queued audit record(s)", self._source.unsent_count())
        with self._lock:
            self._status = replace(self._status, acked_seq=upto, batches=self._status.batches + 1, reachable=True,
                                   last_ack_at=time.time(), last_error="")
        log.debug("audit %d..%d held by the central", batch.first_seq, upto)
        return _Outcome.ACKED
