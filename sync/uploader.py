"""Gate side of audit upload: the zguide's Lazy Pirate over a REQ socket.

A batch is marked uploaded only after the central replies with the sequence it holds
durably. No reply within the timeout means the REQ socket may be stuck mid-exchange, so it
is closed and reopened before the same batch is sent again; after a few tries the uploader
backs off and starts over. A record therefore leaves the queue only once the central has it,
and a repeat (reply lost, gate killed before marking) is absorbed by the central's
idempotent store.

"Has it" means *holds it identically*: the reply's durable_seq stops before any record the
central holds with different content. On every connect the uploader first asks the central
for its head of this gate's chain (a log that went backwards or forked is alarmed at once); a
conflict in a batch moves the log to a new chain epoch forking from the last shared record
(sync.audit_chain.ChainEpoch), raises an alarm (callback: the gate writes an audit record and
shows it in its status), backs off, registers the epoch and uploads the records under it.
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import zmq

from sync.audit_chain import AuditRow, ChainEpoch
from sync.config import AgentConfig
from sync.endpoints import EndpointChoice
from sync.interfaces import AuditSource
from sync.service_messages import (
    AuditBatch,
    EpochRegistration,
    HeadRequest,
    MalformedRequest,
    Reply,
    decode_reply,
    encode_audit_batch,
    encode_epoch_registration,
    encode_head_request,
)
from sync.transport import (
    MAX_CONTROL_FRAME,
    MAX_SERVICE_FRAME,
    SERVICE_OFFSET,
    HandshakeWatch,
    Security,
    connect_socket,
)

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
    chain_epoch: str = ""  # the audit chain being uploaded ("" = the first)
    chain_alarm: str = ""  # the last audit-chain alarm (conflict, log behind the central); "" if none
    forks: int = 0  # new chain epochs started by this uploader


# Called with (kind, details) on an audit-chain alarm; the gate records it (audit + status).
AlarmCallback = Callable[[str, dict[str, Any]], None]


class _Outcome(enum.Enum):
    ACKED = 1
    REFUSED = 2
    UNREACHABLE = 3
    STOPPED = 4
    CONFLICT = 5


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
        watch = self._watch
        assert watch is not None  # _open made it
        sock.send(payload)
        deadline = time.monotonic() + self._cfg.reply_timeout_s
        while not stop.is_set():
            watch.poll()
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
    def __init__(self, config: AgentConfig, security: Security, source: AuditSource, ctx: zmq.Context,
                 on_alarm: AlarmCallback | None = None):
        self._cfg = config
        self._source = source
        self._client = LazyPirateClient(config, security, ctx, "audit upload")
        self._public_key = security.keypair.public.decode("ascii") if security.keypair is not None else ""
        self._on_alarm = on_alarm
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._status = UploaderStatus(central=self._client.endpoint)
        self._unreachable_logged = False
        self._head_checked = False  # asked the central for its head since the last (re)connect
        self._registered = ""  # the epoch this uploader last registered

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
                where = self._client.choice.index
                if not self._head_checked:
                    outcome = self._check_head(stop)
                else:
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
                    outcome = self._upload(rows, stop)
                self._set(central=self._client.endpoint)
                if outcome is _Outcome.ACKED:
                    backoff = cfg.reply_timeout_s
                elif outcome is _Outcome.UNREACHABLE and self._client.choice.index != where:
                    self._head_checked = False  # another node: ask for the central's head there too
                    continue  # moved to another central node: try it now, not after a back-off
                elif outcome is not _Outcome.STOPPED:
                    if outcome is _Outcome.UNREACHABLE:
                        self._head_checked = False  # a reconnect: ask for the central's head again
                    stop.wait(backoff)
                    backoff = min(backoff * 2, cfg.retry_backoff_max_s)
        finally:
            self._client.close()

    def _alarm(self, kind: str, message: str, **details: Any) -> None:
        log.error("audit chain alarm (%s): %s", kind, message)
        self._set(chain_alarm=message)
        if self._on_alarm is not None:
            try:
                self._on_alarm(kind, {"message": message, **details})
            except Exception:
                log.exception("the gate's audit alarm handler failed")

    def _ask(self, payload: bytes, request_id: int, stop: threading.Event, what: str) -> Reply | _Outcome:
        """One request with the Lazy Pirate retries; an outcome when it got no usable reply."""
        cfg = self._cfg
        for attempt in range(1, cfg.request_retries + 1):
            reply = self._client.request(payload, request_id, stop)
            if stop.is_set():
                return _Outcome.STOPPED
            if reply is not None:
                if self._unreachable_logged:
                    self._unreachable_logged = False
                    log.info("central reachable again; uploading %d queued audit record(s)",
                             self._source.unsent_count())
                return reply
            with self._lock:
                self._status = replace(self._status, timeouts=self._status.timeouts + 1)
            log.debug("%s: no reply within %.1fs (try %d of %d); socket reopened", what, cfg.reply_timeout_s,
                      attempt, cfg.request_retries)
        self._set(reachable=False, last_error="no reply from the central")
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("central unreachable: no reply to %s after %d tries of %.1fs; "
                        "%d record(s) queued, nothing lost, retrying", what, cfg.request_retries,
                        cfg.reply_timeout_s, self._source.unsent_count())
        return _Outcome.UNREACHABLE

    def _check_head(self, stop: threading.Event) -> _Outcome:
        """On connect: register this log's epoch if the central does not know it, and compare
        the central's head of the chain with this log (a log behind or beside it is an alarm;
        the records that differ are moved to a new epoch when their upload conflicts)."""
        chain = self._source.chain_epoch()
        self._set(chain_epoch=chain.epoch)
        rid = secrets.randbits(63)
        reply = self._ask(encode_head_request(HeadRequest(self._cfg.gate_id, rid, chain.epoch)), rid, stop,
                          "audit head request")
        if isinstance(reply, _Outcome):
            return reply
        if chain.epoch and (not reply.epoch_known or not reply.ok):
            if self._registered == chain.epoch:  # registered, yet unknown: do not loop on it
                self._registered = ""
                self._set(reachable=True, last_error=f"central lost audit epoch {chain.epoch}")
                log.error("central says audit epoch %s is unknown right after registering it; will retry",
                          chain.epoch)
                return _Outcome.REFUSED
            return self._register(chain, stop)
        if not reply.ok:
            self._set(reachable=True, last_error=reply.error)
            hint = (" (a central older than this gate cannot confirm records identically: upgrade the central first)"
                    if "unknown request type" in reply.error else "")
            log.error("central refused to tell its audit head: %s; records stay queued, will retry%s", reply.error,
                      hint)
            return _Outcome.REFUSED
        self._head_checked = True
        self._set(reachable=True)
        last = self._source.last_seq()
        if reply.head_seq > last:
            self._alarm("audit_log_behind_central",
                        f"this audit log ends at seq {last} but the central holds chain "
                        f"{chain.epoch or '(first)'} up to {reply.head_seq}: the log was wiped, truncated or "
                        "restored from an old backup; new records will go to a new chain epoch",
                        epoch=chain.epoch, last_seq=last, central_seq=reply.head_seq)
        else:
            mine = self._source.link_at(reply.head_seq)
            if mine is not None and mine != reply.head_hash:
                self._alarm("audit_chain_diverges",
                            f"record {reply.head_seq} of this audit log differs from the central's copy: "
                            "the records that differ will go to a new chain epoch",
                            epoch=chain.epoch, seq=reply.head_seq)
        return _Outcome.ACKED

    def _register(self, chain: ChainEpoch, stop: threading.Event) -> _Outcome:
        rid = secrets.randbits(63)
        reply = self._ask(encode_epoch_registration(EpochRegistration(self._cfg.gate_id, rid, chain)), rid, stop,
                          f"audit epoch {chain.epoch} registration")
        if isinstance(reply, _Outcome):
            return reply
        if not reply.ok:
            self._set(reachable=True, last_error=f"epoch registration refused: {reply.error}")
            log.error("central refused audit chain epoch %s: %s; records stay queued, will retry", chain.epoch,
                      reply.error)
            return _Outcome.REFUSED
        self._registered = chain.epoch
        log.warning("audit chain epoch %s registered at the central (forks at seq %d)", chain.epoch, chain.base_seq)
        return _Outcome.ACKED  # the head is asked again, now for the registered epoch

    def _fork(self, batch: AuditBatch, reply: Reply) -> _Outcome:
        """The central holds different records under this chain from `first conflict`: keep
        ours, move them (and everything after) to a new epoch forking at the last shared one."""
        first = reply.conflicts[0]
        base_seq = max(reply.durable_seq, batch.first_seq - 1)  # the last record confirmed identical
        base_hash = self._source.link_at(base_seq)
        if base_hash is None:
            self._alarm("audit_chain_conflict", f"central holds different records from seq {first} and this log "
                        f"no longer holds seq {base_seq} to fork from; records stay queued", seq=first)
            return _Outcome.CONFLICT
        old = batch.epoch
        created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        chain = ChainEpoch.fork(self._cfg.gate_id, self._public_key, old, base_seq, base_hash, created,
                                secrets.token_hex(16))
        self._source.start_epoch(chain)
        with self._lock:
            self._status = replace(self._status, forks=self._status.forks + 1, chain_epoch=chain.epoch)
        self._alarm("audit_chain_conflict",
                    f"the central holds different audit records of chain {old or '(first)'} from seq {first} "
                    f"({len(reply.conflicts)} in this batch); nothing of them was acknowledged; records after seq "
                    f"{base_seq} are kept and move to new chain epoch {chain.epoch}",
                    epoch=old, seq=first, conflicts=len(reply.conflicts), new_epoch=chain.epoch, base_seq=base_seq)
        self._head_checked = False  # register the new epoch before the next batch
        return _Outcome.CONFLICT

    def _upload(self, rows: list[AuditRow], stop: threading.Event) -> _Outcome:
        cfg = self._cfg
        while True:
            batch = AuditBatch(gate_id=cfg.gate_id, request_id=secrets.randbits(63), rows=tuple(rows),
                               epoch=self._status.chain_epoch)
            payload = encode_audit_batch(batch)
            if len(payload) <= MAX_SERVICE_FRAME or len(rows) == 1:
                break
            rows = rows[: len(rows) // 2]  # the central would drop an oversized frame
        if len(payload) > MAX_SERVICE_FRAME:
            log.error("audit record %d is %d bytes, over the %d-byte message limit; it cannot be uploaded",
                      rows[0].seq, len(payload), MAX_SERVICE_FRAME)
            self._set(last_error=f"audit record {rows[0].seq} too large")
            return _Outcome.REFUSED
        reply = self._ask(payload, batch.request_id, stop, f"audit batch {batch.first_seq}..{batch.last_seq}")
        return reply if isinstance(reply, _Outcome) else self._handle_reply(batch, reply)

    def _handle_reply(self, batch: AuditBatch, reply: Reply) -> _Outcome:
        if not reply.ok:
            self._set(reachable=True, last_error=reply.error)
            log.error("central refused audit batch %d..%d: %s; will retry", batch.first_seq, batch.last_seq,
                      reply.error)
            if not reply.epoch_known:
                self._head_checked = False  # register the epoch again
            return _Outcome.REFUSED
        upto = min(reply.durable_seq, batch.last_seq)
        conflicts = [c for c in reply.conflicts if batch.first_seq <= c <= batch.last_seq]
        if conflicts:
            upto = min(upto, conflicts[0] - 1)  # never acknowledge a conflicting record, whatever else it says
            if upto >= batch.first_seq:
                self._source.mark_acked(upto)
            return self._fork(batch, replace(reply, conflicts=tuple(conflicts), durable_seq=upto))
        if upto < batch.first_seq:
            self._set(reachable=True, last_error=f"central holds only up to {reply.durable_seq}")
            log.error("central acknowledged audit batch %d..%d but holds only up to %d; will retry",
                      batch.first_seq, batch.last_seq, reply.durable_seq)
            return _Outcome.REFUSED
        self._source.mark_acked(upto)
        with self._lock:
            self._status = replace(self._status, acked_seq=upto, batches=self._status.batches + 1, reachable=True,
                                   last_ack_at=time.time(), last_error="")
        log.debug("audit %d..%d held by the central", batch.first_seq, upto)
        return _Outcome.ACKED
