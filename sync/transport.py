"""Socket setup shared by both ends: CURVE everywhere, plain TCP only on loopback for
development, inbound size limits, and a monitor that says why a handshake failed.

Keeping this in one module means no socket in sync/ can be created without deciding how it
authenticates and how big a frame it will accept.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from sync.keys import CurveKeypair

log = logging.getLogger(__name__)

ZAP_DOMAIN = "edgegate"

# Inbound limits per frame (ZMQ_MAXMSGSIZE): a peer that sends more is disconnected by libzmq
# before a byte reaches Python.
MAX_KV_FRAME = 1 << 20  # one subject record (64 x 4096-d templates would not fit; 64 x 1024 does)
MAX_SERVICE_FRAME = 8 << 20  # one audit batch
MAX_CONTROL_FRAME = 64 << 10  # replies, ICANHAZ, heartbeats

# Port offsets from the base port P: RFC 12 fixes the first three.
SNAPSHOT_OFFSET, PUBLISHER_OFFSET, COLLECTOR_OFFSET, SERVICE_OFFSET = 0, 1, 2, 3


class InsecureTransportError(ValueError):
    """Plain TCP was asked for beyond loopback, or CURVE keys are missing."""


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tcp_endpoint(host: str, port: int) -> str:
    bare = host.strip("[]")
    if ":" in bare:
        return f"tcp://[{bare}]:{port}"
    return f"tcp://{host}:{port}"


@dataclass(frozen=True)
class Security:
    """How one end authenticates. `keypair` is this end's CURVE keypair; a client also names
    the server's public key. With `dev_plain_loopback` there is no encryption and no
    authentication at all, which is why it refuses every non-loopback address."""

    keypair: CurveKeypair | None = None
    server_public: bytes | None = None
    dev_plain_loopback: bool = False

    def _check_plain(self, host: str, action: str) -> None:
        if not is_loopback_host(host):
            raise InsecureTransportError(
                f"refusing to {action} {host!r} over plain TCP: the development flag only allows loopback "
                "(127.0.0.0/8, ::1, localhost); configure CURVE keys for anything else")

    def apply_server(self, sock: zmq.Socket, bind_host: str) -> None:
        if self.dev_plain_loopback:
            self._check_plain(bind_host, "bind")
            return
        if self.keypair is None:
            raise InsecureTransportError("a CURVE server needs its secret key (or the explicit development flag)")
        sock.curve_server = True
        sock.curve_secretkey = self.keypair.secret
        sock.curve_publickey = self.keypair.public
        sock.zap_domain = ZAP_DOMAIN.encode()

    def apply_client(self, sock: zmq.Socket, host: str) -> None:
        if self.dev_plain_loopback:
            self._check_plain(host, "connect to")
            return
        if self.keypair is None or self.server_public is None:
            raise InsecureTransportError("a CURVE client needs its own keypair and the server's public key "
                                         "(or the explicit development flag)")
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.keypair.public
        sock.curve_secretkey = self.keypair.secret


def bind_socket(ctx: zmq.Context, kind: int, security: Security, host: str, port: int, max_frame: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    try:
        sock.linger = 0
        sock.maxmsgsize = max_frame
        if ":" in host.strip("[]"):
            sock.ipv6 = True
        security.apply_server(sock, host)
        sock.bind(tcp_endpoint(host, port))
    except BaseException:
        sock.close(0)
        raise
    return sock


def connect_socket(ctx: zmq.Context, kind: int, security: Security, host: str, port: int, max_frame: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    try:
        sock.linger = 0
        sock.maxmsgsize = max_frame
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 2000
        if ":" in host.strip("[]"):
            sock.ipv6 = True
        security.apply_client(sock, host)
        sock.connect(tcp_endpoint(host, port))
    except BaseException:
        sock.close(0)
        raise
    return sock


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """recv_multipart without its per-frame socket-option lookups: a snapshot receives 100k
    five-frame messages, and this is a third faster. With `zmq.NOBLOCK` it raises zmq.Again
    when no message is waiting (the later frames of a message are always there with the first)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(copy=False)
        frames.append(frame.bytes)
    return frames


class HandshakeWatch:
    """Turns a client socket's monitor events into state and log lines, so 'the central is
    silent' can be told apart from 'the central refused our key'. Logs each change once.
    `connected_at` is when the current connection's handshake succeeded (None while down)."""

    _EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)

    def __init__(self, sock: zmq.Socket, label: str, logger: logging.Logger):
        self._label = label
        self._log = logger
        self._failing = False
        self.connected_at: float | None = None
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self.attach(sock)

    def attach(self, sock: zmq.Socket) -> None:
        """Watch a replacement socket, remembering whether we already reported a failure."""
        self.detach()
        self._sock = sock
        self._monitor = sock.get_monitor_socket(self._EVENTS)

    def poll(self) -> None:
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected_at = time.monotonic()
                if self._failing:
                    self._log.info("%s: CURVE handshake with the central succeeded again", self._label)
                self._failing = False
                continue
            self.connected_at = None
            if kind == zmq.EVENT_DISCONNECTED or self._failing:
                continue
            self._failing = True
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._log.error("%s: the central refused our CURVE key (ZAP status %d); "
                                "is this gate's public key registered there?", self._label, int(event["value"]))
            else:
                self._log.error("%s: CURVE handshake with the central failed (%s); "
                                "check the central's public key", self._label, zmq.Event(kind).name)

    def detach(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        if self._monitor is not None:
            self._monitor.close(0)
        self._sock = self._monitor = None
        self.connected_at = None
