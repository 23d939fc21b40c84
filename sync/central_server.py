"""The reference central service: CHP snapshot/publisher/collector plus the audit and health
service, all behind CURVE with a ZAP allowlist of registered gate and admin keys.

Threads, each owning its sockets and its own database connection:
  snapshot  ROUTER P    ICANHAZ? -> KVSYNC... KTHXBAI, one client at a time
  publisher PUB    P+1  tails the change log in sequence order, HUGZ, validity expiry
  service   SUB    P+2  KVSET from admin tools (the CHP collector)
            ROUTER P+3  audit batches and health reports (request-reply)
  ZAP       pyzmq's ThreadAuthenticator, consulting the database on every handshake
"""
from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, cast

import msgpack
import zmq
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from sync.audit_store import EpochRefused, UnknownEpoch
from sync.central import Central, EnrolmentError, Principal
from sync.central_db import StorageError
from sync.central_seal import SealedRowRefused
from sync.config import CentralConfig
from sync.forget import forget_withdrawn
from sync.keys import load_keypair
from sync.kvmsg import KVMsg, MalformedMessage, hugz, kthxbai, parse_icanhaz_request
from sync.scopes import ScopeError
from sync.service_messages import (
    AuditBatch,
    EnrolRequest,
    EpochRegistration,
    HeadRequest,
    MalformedRequest,
    Reply,
    decode_request,
    encode_reply,
)
from sync.station_service import answer_enrolment
from sync.subject_record import MalformedRecord
from sync.transport import (
    COLLECTOR_OFFSET,
    MAX_CONTROL_FRAME,
    MAX_KV_FRAME,
    MAX_SERVICE_FRAME,
    PUBLISHER_OFFSET,
    SERVICE_OFFSET,
    SNAPSHOT_OFFSET,
    ZAP_DOMAIN,
    Security,
    bind_socket,
)

if TYPE_CHECKING:
    from sync.central_pg import PostgresDatabase

log = logging.getLogger(__name__)

_POLL_MS = 200
_GROUP_MAX = 64  # requests answered in one group transaction


def _request_kind(payload: bytes) -> str | None:
    """The request's type tag without validating the rest (decode_request does that)."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_buffer_size=len(payload))
    except Exception:
        return None
    return obj.get("t") if isinstance(obj, dict) else None
_DEV_PRINCIPAL = Principal("admin", "dev-plain-loopback", "-" * 40)


class _AllowlistAuthenticator(ThreadAuthenticator):
    """ZAP handler that admits only keys registered in the central's database and names the
    connection after its owner ("gate:G1"), which every received message then carries as
    its User-Id. Each refusal is logged with the key and the peer address."""

    def __init__(self, context: zmq.Context, config: CentralConfig):
        super().__init__(context, log=logging.getLogger("sync.central_server.zap"))
        self._config = config
        self._central: Central | None = None
        self._peer = "?"
        self._admitted: tuple[bytes, str] | None = None  # (z85 key, principal name) of the last handshake

    def _db(self) -> Central:
        if self._central is None:  # created in the authenticator's own thread
            self._central = Central(self._config.store, node=self._config.node_name, pool_size=self._config.pool_size,
                                    template_key=self._config.template_key_path)
        return self._central

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) > 3:
            self._peer = msg[3].decode("utf-8", "replace")
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            principal = self._db().principal_for_key(key)
        except StorageError as exc:  # a failover: the gate's socket retries the handshake by itself
            log.error("could not look up a CURVE key, database unavailable (%s); refusing the connection from %s "
                      "for now", str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self._peer)
            return False
        except Exception:
            log.exception("could not look up a CURVE key; refusing the connection from %s", self._peer)
            return False
        if principal is None:
            log.warning("refused connection from %s: CURVE key %s is not registered", self._peer, key.decode("ascii"))
            return False
        self._admitted = (key, principal.name)
        return True

    def curve_user_id(self, client_public_key: bytes) -> str:
        # pyzmq calls this right after an admitting callback() for the same key: name the
        # connection from that lookup. A second query could fail (a database failover between
        # the two) and name a registered gate "unknown" for the life of its connection.
        key = zmq.utils.z85.encode(client_public_key)
        if self._admitted is not None and self._admitted[0] == key:
            return self._admitted[1]
        try:
            principal = self._db().principal_for_key(zmq.utils.z85.encode(client_public_key))
        except Exception:
            log.exception("could not name a CURVE key; its requests will be refused")
            return "unknown"
        return principal.name if principal else "unknown"


@dataclass(frozen=True)
class Endpoints:
    snapshot: int
    publisher: int
    collector: int
    service: int


class _Publisher:
    """Tails the change log in sequence order onto the PUB socket, with heartbeats, validity
    expiry and log pruning on their own clocks. Starts at the current sequence: gates take a
    snapshot when they (re)connect, and catch anything older through `prev` or health heads."""

    def __init__(self, config: CentralConfig, central: Central, sock: zmq.Socket, wake: threading.Event):
        self._cfg = config
        self._central = central
        self._sock = sock
        self._wake = wake
        self.published = central.hashmap.current_seq()
        self.database_lost = False  # set after a storage error: check the sequence did not go back
        now = time.monotonic()
        self._next_hugz, self._next_expiry, self._next_prune = now, now, now + 60.0

    def seconds_to_heartbeat(self) -> float:
        return min(self._cfg.log_poll_s, max(0.0, self._next_hugz - time.monotonic()))

    def heartbeat(self) -> None:
        """HUGZ when due. Also sent while the database is unreachable (`step` failing during a
        failover): the sequence it carries is still what this node has published, and a gate
        that heard nothing would drop its live state and snapshot again, every gate at once,
        onto a freshly promoted primary."""
        now = time.monotonic()
        if now >= self._next_hugz:
            self._sock.send_multipart(hugz(self.published).frames())
            self._next_hugz = now + self._cfg.heartbeat_s

    def _resume_sequence(self) -> None:
        """After losing the database: if it is now behind what this node published, a failover
        lost commits (PostgreSQL shows a commit on the primary once its wait for the synchronous
        standby is cut short, so a publisher can read a change the standby never got). The next
        change would reuse a published number and every gate that saw it would discard the new
        change as a repeat; so move the sequence past what was published first."""
        held = self._central.hashmap.current_seq()
        if held < self.published:
            log.error("the database is at sequence %d but this node published up to %d: changes were lost in a "
                      "failover; moving the sequence past them (gates keep the lost ones until their next snapshot)",
                      held, self.published)
            with self._central.db.write_transaction():
                self._central.db.execute("UPDATE meta SET value = ? WHERE name = 'seq' AND value < ?",
                                         (self.published, self.published))
        self.database_lost = False

    def step(self) -> None:
        if self.database_lost:
            self._resume_sequence()
        while True:
            changes = self._central.hashmap.changes_after(self.published, 1000)
            for msg in changes:
                self._sock.send_multipart(msg.frames(), copy=False)
                self.published = msg.seq
            self.published = max(self.published, changes.read_to)  # past a row refused (sealing)
            if changes.rows < 1000:
                break
        self.heartbeat()
        now = time.monotonic()
        # Expiry and retention run on one node at a time (the maintenance lock), so two nodes
        # never withdraw the same subject twice; the others take over when that node dies.
        if now >= self._next_expiry:
            self._next_expiry = now + self._cfg.expiry_check_s
            if self._central.db.try_maintenance_lock() and self._central.expire():
                self._wake.set()  # publish the deletions without waiting for the next poll
        if now >= self._next_prune:
            self._next_prune = now + 60.0
            if self._central.db.try_maintenance_lock():
                self.maintain()

    def maintain(self) -> None:
        cutoff = time.time() - self._cfg.log_retention_s
        self._central.hashmap.prune_log(self.published, cutoff)
        forget_withdrawn(self._central, self.published, cutoff)
        if self._central.db.dialect == "postgresql":
            from sync.central_pg import drop_audit_partitions_before, ensure_audit_partitions

            now = dt.datetime.now(dt.timezone.utc)
            pg = cast("PostgresDatabase", self._central.db)
            ensure_audit_partitions(pg, now)
            if self._cfg.audit_retention_days > 0:
                drop_audit_partitions_before(pg, now - dt.timedelta(days=self._cfg.audit_retention_days))


class CentralServer:
    def __init__(self, config: CentralConfig):
        self.config = config
        self.ports = Endpoints(*(config.base_port + off for off in
                                 (SNAPSHOT_OFFSET, PUBLISHER_OFFSET, COLLECTOR_OFFSET, SERVICE_OFFSET)))
        self._stop = threading.Event()
        self._failed = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ctx: zmq.Context | None = None
        self._auth: _AllowlistAuthenticator | None = None

    # ----- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Bind every socket (raising on a port in use or a bad key) and start serving."""
        cfg = self.config
        if cfg.dev_plain_loopback:
            security = Security(dev_plain_loopback=True)
            log.warning("DEVELOPMENT MODE: plain TCP, no encryption, no authentication (loopback only)")
        else:
            if cfg.secret_key_file is None:
                raise ValueError("central.secret_key_file is required unless dev_plain_loopback is set")
            security = Security(keypair=load_keypair(cfg.secret_key_file))
        # creates the schema before any thread needs it; a wrong template key stops here, in one line
        central = Central(cfg.store, pool_size=cfg.pool_size, template_key=cfg.template_key_path)
        seq, gates = central.hashmap.current_seq(), sum(p.kind == "gate" for p in central.principals())
        central.close()
        self._ctx = zmq.Context()
        try:
            if not cfg.dev_plain_loopback:
                self._auth = _AllowlistAuthenticator(self._ctx, cfg)
                self._auth.start()
                self._auth.configure_curve_callback(ZAP_DOMAIN, self._auth)
            host = cfg.bind_host
            snapshot = bind_socket(self._ctx, zmq.ROUTER, security, host, self.ports.snapshot, MAX_CONTROL_FRAME)
            snapshot.router_mandatory = 1
            snapshot.sndhwm = 10_000
            snapshot.sndtimeo = int(cfg.snapshot_send_timeout_s * 1000)
            publisher = bind_socket(self._ctx, zmq.PUB, security, host, self.ports.publisher, MAX_CONTROL_FRAME)
            publisher.sndhwm = 50_000
            collector = bind_socket(self._ctx, zmq.SUB, security, host, self.ports.collector, MAX_KV_FRAME)
            collector.setsockopt(zmq.SUBSCRIBE, b"")
            service = bind_socket(self._ctx, zmq.ROUTER, security, host, self.ports.service, MAX_SERVICE_FRAME)
        except BaseException:
            self._shutdown_context()
            raise
        self._threads = [
            threading.Thread(target=self._guard, args=("snapshot", self._serve_snapshots, snapshot), daemon=True),
            threading.Thread(target=self._guard, args=("publisher", self._publish, publisher), daemon=True),
            threading.Thread(target=self._guard, args=("service", self._serve_requests, collector, service),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()
        p = self.ports
        log.info("central serving on %s: snapshot %d, updates %d, collector %d, audit/health %d; "
                 "sequence %d, %d gate(s) registered", host, p.snapshot, p.publisher, p.collector, p.service, seq,
                 gates)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        self._shutdown_context()
        log.info("central stopped")

    def _shutdown_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def request_stop(self) -> None:
        """Safe from a signal handler: serve_forever notices and shuts down in order."""
        self._stop.set()
        self._wake.set()

    def serve_forever(self) -> int:
        """Run until request_stop() (e.g. on SIGTERM): returns 0. If a service thread dies,
        stop and return 1, so systemd (Restart=on-failure) brings the node back."""
        code = 0
        while not self._stop.wait(1.0):
            pass
        if self._failed.is_set() or (self._threads and not all(t.is_alive() for t in self._threads)):
            log.error("a central thread has died; stopping with an error so the service is restarted")
            code = 1
        self.stop()
        return code

    def _guard(self, name: str, target: Callable, *sockets: zmq.Socket) -> None:
        try:
            target(*sockets)
        except Exception:
            log.exception("central %s thread failed", name)
            self._failed.set()
            self._stop.set()
        finally:
            for s in sockets:
                s.close(0)

    def _principal(self, central: Central, frame: zmq.Frame) -> Principal | None:
        if self.config.dev_plain_loopback:
            return _DEV_PRINCIPAL
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            return None
        return central.principal(str(user)) if user else None

    # ----- snapshot ----------------------------------------------------------------------

    def _serve_snapshots(self, sock: zmq.Socket) -> None:
        central = self._open_until_available("snapshot")
        if central is None:
            return
        while not self._stop.is_set():
            if not sock.poll(_POLL_MS):
                continue
            frames = sock.recv_multipart(copy=False)
            identity = frames[0].bytes
            try:
                principal = self._principal(central, frames[0])
            except StorageError:
                log.exception("snapshot: could not look up the requesting peer")
                continue
            try:
                subtree, since = parse_icanhaz_request([f.bytes for f in frames[1:]])
            except MalformedMessage as exc:
                log.warning("snapshot: malformed request from %s: %s", principal.name if principal else "?", exc)
                continue
            if principal is None or not principal.may_snapshot(subtree):
                log.warning("snapshot: refused %r to %s, which may read only %s", subtree,
                            principal.name if principal else "an unknown peer",
                            ", ".join(principal.scopes) if principal else "nothing")
                continue
            try:
                if since is not None:
                    self._send_catch_up(central, sock, identity, subtree, since, principal)
                    continue
                self._send_snapshot(central, sock, identity, subtree, principal)
            except StorageError:
                log.exception("snapshot of %r to %s failed reading the database", subtree, principal.name)
        central.close()

    def _send_catch_up(self, central: Central, sock: zmq.Socket, identity: bytes, subtree: str, since: int,
                       who: Principal) -> None:
        """The changes in one scope after `since` (a gate moving between nodes, or back after an
        outage), or a refusal that sends the gate to a snapshot when the log cannot prove it has
        them all. Every node answers the same: the log is the database's."""
        try:
            seq, changes = central.hashmap.changes_since(subtree, since)
        except SealedRowRefused as exc:  # never a tampered body: the gate takes a snapshot instead
            log.error("catch-up of %r for %s refused, the gate takes a snapshot: %s", subtree, who.name, exc)
            try:
                sock.send_multipart([identity, *kthxbai(central.hashmap.current_seq(), subtree,
                                                        delta="refused").frames()])
            except zmq.ZMQError:
                pass
            return
        try:
            if changes is None:
                sock.send_multipart([identity, *kthxbai(seq, subtree, delta="refused").frames()])
                log.info("catch-up of %r for %s from %d refused: the change log no longer holds it all; "
                         "the gate takes a snapshot", subtree, who.name, since)
                return
            for msg in changes:
                sock.send_multipart([identity, *msg.frames()], copy=False)
            sock.send_multipart([identity, *kthxbai(seq, subtree, delta="1").frames()])
        except zmq.ZMQError as exc:
            log.warning("catch-up of %r to %s aborted: %s", subtree, who.name, exc)
            return
        log.info("catch-up of %r to %s: %d change(s) after %d, at sequence %d", subtree, who.name, len(changes),
                 since, seq)

    def _send_snapshot(self, central: Central, sock: zmq.Socket, identity: bytes, subtree: str, who: Principal) -> None:
        sent = 0
        started = time.monotonic()
        try:
            with central.hashmap.snapshot(subtree) as (seq, messages):
                for msg in messages:
                    sock.send_multipart([identity, *msg.frames()], copy=False)
                    sent += 1
                    if self._stop.is_set():
                        log.info("snapshot to %s abandoned at shutdown after %d key(s)", who.name, sent)
                        return
                sock.send_multipart([identity, *kthxbai(seq, subtree).frames()])
        except zmq.ZMQError as exc:
            reason = "it stopped reading" if exc.errno == zmq.EAGAIN else "it disconnected"
            log.warning("snapshot of %r to %s aborted after %d key(s): %s", subtree or "/", who.name, sent, reason)
            return
        except SealedRowRefused as exc:
            # No KTHXBAI: a gate takes one for the whole state, so a snapshot missing a row (a
            # deny-list entry) must not end like one. The gate keeps its cache and asks again.
            log.error("snapshot of %r to %s stopped after %d key(s), no end sent: %s", subtree or "/", who.name,
                      sent, exc)
            return
        log.info("snapshot of %r to %s: %d key(s) at sequence %d in %.2fs", subtree or "/", who.name, sent, seq,
                 time.monotonic() - started)

    # ----- publisher ---------------------------------------------------------------------

    def _publish(self, sock: zmq.Socket) -> None:
        central = self._open_until_available("publisher")
        if central is None:
            return
        if hasattr(central.db, "connect_wait_s"):  # PostgreSQL: never wait past a heartbeat for a connection
            central.db.connect_wait_s = min(central.db.connect_wait_s, self.config.heartbeat_s / 2)
        publisher = _Publisher(self.config, central, sock, self._wake)
        # On PostgreSQL the publisher learns of other nodes' (and other processes') changes by
        # LISTEN/NOTIFY and polls by sequence as well, so a missed notification never loses an
        # update; on SQLite it polls, and in-process writes wake it at once.
        listens = central.db.dialect == "postgresql"
        while not self._stop.is_set():
            if listens:
                if not self._wake.is_set():
                    central.db.wait_for_change(publisher.seconds_to_heartbeat())
            else:
                self._wake.wait(timeout=publisher.seconds_to_heartbeat())
            self._wake.clear()
            try:
                publisher.step()
            except StorageError as exc:
                log.error("publisher: database error (%s); retrying", exc)
                publisher.database_lost = True
                publisher.heartbeat()
                self._stop.wait(min(0.5, self.config.heartbeat_s))
        central.close()

    def _open_until_available(self, who: str) -> Central | None:
        """A thread's own connection, retried while the database is unreachable (a failover in
        progress) instead of killing the thread."""
        while not self._stop.is_set():
            try:
                return Central(self.config.store, node=self.config.node_name, pool_size=self.config.pool_size,
                               template_key=self.config.template_key_path,
                               on_change=self._wake.set if who == "service" else None)
            except StorageError as exc:
                log.error("%s: cannot open the central database (%s); retrying", who, exc)
                self._stop.wait(1.0)
        return None

    # ----- collector and service ---------------------------------------------------------

    def _serve_requests(self, collector: zmq.Socket, service: zmq.Socket) -> None:
        central = self._open_until_available("service")
        if central is None:
            return
        poller = zmq.Poller()
        poller.register(collector, zmq.POLLIN)
        poller.register(service, zmq.POLLIN)
        next_silence_check = time.monotonic()
        while not self._stop.is_set():
            ready = dict(poller.poll(_POLL_MS))
            if collector in ready:
                frames = collector.recv_multipart(copy=False)
                try:
                    self._collect(central, frames)
                except StorageError:
                    log.exception("collector: database error; the KVSET was not applied")
            if service in ready:
                burst: list[list[zmq.Frame]] = []
                while len(burst) < _GROUP_MAX:  # what has arrived meanwhile: one commit for all of it
                    try:
                        frames = service.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(frames) != 3 or frames[1].bytes != b"":
                        log.warning("service: dropped a message that is not a REQ envelope (%d frames)", len(frames))
                        continue
                    burst.append(frames)
                for frames, reply in zip(burst, self._answer_burst(central, burst), strict=True):
                    service.send_multipart([frames[0].bytes, b"", encode_reply(reply)])
            if time.monotonic() >= next_silence_check:
                next_silence_check = time.monotonic() + 1.0
                try:
                    silent = central.flag_silent_gates(self.config.gate_silent_after_s)
                except StorageError as exc:
                    log.warning("could not check for silent gates: %s", str(exc).splitlines()[0] if str(exc) else exc)
                    silent = []
                for gate_id in silent:
                    log.warning("gate %s is silent: no health report for %.0fs", gate_id,
                                self.config.gate_silent_after_s)
        central.close()

    def _collect(self, central: Central, frames: list[zmq.Frame]) -> None:
        principal = self._principal(central, frames[0])
        if principal is None or principal.kind != "admin":
            log.warning("collector: refused KVSET from %s: only admin tools may publish",
                        principal.name if principal else "an unknown peer")
            return
        try:
            msg = KVMsg.from_frames([f.bytes for f in frames])
            keys = central.apply_kvset(msg)
        except (MalformedMessage, MalformedRecord, EnrolmentError, ScopeError) as exc:
            log.warning("collector: rejected KVSET from %s: %s", principal.name, exc)
            return
        except StorageError:
            raise
        except Exception:  # a value no check foresaw costs that one message, never the service
            log.exception("collector: dropped a KVSET from %s that could not be applied", principal.name)
            return
        if keys:
            log.info("collector: %s set %s (%s)", principal.name, msg.key, "delete" if msg.is_delete else "upsert")

    def _answer_burst(self, central: Central, burst: list) -> list[Reply]:
        """Answer a burst of requests. Audit batches and health reports that arrived together are
        stored in one group transaction, so 200 gates uploading cost one disk flush per burst,
        not one per batch (PostgreSQL with synchronous_commit: a flush is a round trip to the
        synchronous standby). Replies go out only after the group committed; if anything in the
        group fails, it is rolled back whole and every request is answered on its own, so no
        reply ever says "held" for a record that was rolled back."""
        groupable = len(burst) > 1 and all(_request_kind(f[2].bytes) in ("audit", "health") for f in burst)
        if groupable:
            try:
                with central.db.group_transaction():
                    return [self._answer(central, f[0], f[2].bytes, strict=True) for f in burst]
            except Exception as exc:
                log.info("service: a group of %d requests was rolled back (%s); answering each on its own",
                         len(burst), exc)
        replies = []
        for f in burst:
            try:
                replies.append(self._answer(central, f[0], f[2].bytes))
            except StorageError:
                log.exception("service: database error")
                replies.append(Reply(request_id=0, ok=False, error="central storage error"))
        return replies

    def _answer(self, central: Central, envelope: zmq.Frame, payload: bytes, strict: bool = False) -> Reply:
        """One request's reply. `strict` (inside a group transaction): any error raises, so the
        group is rolled back instead of committing around a failed part.

        Decoded before any database work, so a request that meets a failover is answered with
        its own request id and an error: its gate retries at once (a reply to id 0 would be
        dropped as a stray and cost the gate a timeout and a new socket)."""
        try:
            request = decode_request(payload)
        except MalformedRequest as exc:
            log.warning("service: malformed request from %s: %s", self._peer_name(envelope), exc)
            return Reply(request_id=0, ok=False, error=f"malformed request: {exc}")
        sender = request.station_id if isinstance(request, EnrolRequest) else request.gate_id
        try:
            principal = self._principal(central, envelope)
            if self.config.dev_plain_loopback and isinstance(request, EnrolRequest):
                principal = central.principal(f"station:{request.station_id}")
            elif self.config.dev_plain_loopback:
                principal = (central.principal(f"gate:{request.gate_id}")
                             or central.principal(f"station:{request.gate_id}"))
        except StorageError as exc:
            if strict:
                raise
            return self._storage_failed(request.request_id, sender, exc)
        if isinstance(request, EnrolRequest):
            return answer_enrolment(central, principal, request)
        # An enrolment station uploads its own audit log too (with its chain head and epochs);
        # health reports are for gates.
        kinds = ("gate", "station") if isinstance(request, (AuditBatch, HeadRequest, EpochRegistration)) else ("gate",)
        if principal is None or principal.kind not in kinds or principal.ident != request.gate_id:
            log.warning("service: refused a request for gate %s from %s", request.gate_id,
                        principal.name if principal else "an unregistered peer")
            return Reply(request_id=request.request_id, ok=False, error=f"not authorised for gate {request.gate_id}")
        try:
            if isinstance(request, AuditBatch):
                result = central.audit.store_batch(request.gate_id, request.rows, time.time(), request.epoch)
                log.debug("audit from %s: %d..%d, %d new, %d already held", request.gate_id, request.first_seq,
                          request.last_seq, result.inserted, result.duplicates)
                return Reply(request_id=request.request_id, ok=True, durable_seq=result.durable_seq,
                             conflicts=result.conflicts)
            if isinstance(request, HeadRequest):
                known, seq, digest = central.audit.head(request.gate_id, request.epoch)
                return Reply(request_id=request.request_id, ok=True, head_seq=seq, head_hash=digest, epoch_known=known)
            if isinstance(request, EpochRegistration):
                key = None if self.config.dev_plain_loopback else principal.public_key
                central.audit.register_epoch(request.gate_id, request.chain, key, time.time())
                return Reply(request_id=request.request_id, ok=True)
            if central.record_health(request):
                log.info("gate %s reports again (status %s)", request.gate_id, request.status)
            if request.audit_last_seq is not None:
                alarm = central.audit.note_reported_head(request.gate_id, request.audit_epoch, request.audit_last_seq,
                                                         request.audit_head_hash, time.time())
                if alarm:
                    log.error("gate %s audit chain %s: %s", request.gate_id, request.audit_epoch or "(first)", alarm)
            heads = central.hashmap.scope_heads(s for s in request.scopes if principal.may_snapshot(s))
            return Reply(request_id=request.request_id, ok=True, scope_heads=heads,
                         assigned_scopes=principal.assigned)
        except (UnknownEpoch, EpochRefused) as exc:
            if strict:
                raise
            log.warning("service: audit chain request from %s refused: %s", request.gate_id, exc)
            return Reply(request_id=request.request_id, ok=False, error=str(exc), epoch_known=False)
        except StorageError as exc:
            if strict:
                raise
            return self._storage_failed(request.request_id, request.gate_id, exc)
        except Exception as exc:  # any other trouble must cost a retry, never the service thread
            if strict:
                raise
            log.exception("service: could not handle a request from %s", request.gate_id)
            return Reply(request_id=request.request_id, ok=False, error=f"central error: {type(exc).__name__}")


    @staticmethod
    def _storage_failed(request_id: int, sender: str, exc: StorageError) -> Reply:
        """Never an ack: the batch may or may not have committed (a COMMIT cut off by the
        primary's death), so the gate sends it again and the idempotent store sorts it out.
        One line per request, not a traceback: during a failover there are hundreds."""
        log.error("service: request from %s not served, database unavailable (%s); it will retry",
                  sender, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return Reply(request_id=request_id, ok=False, error=f"central storage unavailable: {type(exc).__name__}")

    @staticmethod
    def _peer_name(frame: zmq.Frame) -> str:
        try:
            return str(frame.get("User-Id") or "?")
        except zmq.ZMQError:
            return "?"


def run_central(config: CentralConfig) -> int:
    """Serve until SIGTERM or SIGINT: the body of `gate-central --config FILE`. Returns the
    process exit code (non-zero when a service thread died)."""
    server = CentralServer(config)
    server.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.request_stop())
    return server.serve_forever()
