"""Station side of enrolment: one EnrolRequest over the central's service socket, Lazy Pirate.

The same client the gates' audit uploader uses (sync.uploader.LazyPirateClient): no reply in
time means the REQ socket is replaced and the same request (same request id) sent again, so a
lost reply costs a repeat that the central absorbs (re-enrolling the same templates is
idempotent apart from a new change sequence).
"""
from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import zmq

from sync.config import AgentConfig
from sync.keys import load_keypair, load_public_key
from sync.service_messages import EnrolRequest, Reply, encode_enrol
from sync.transport import InsecureTransportError, Security, is_loopback_host
from sync.uploader import LazyPirateClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StationLink:
    """Where the central is and how the station proves who it is ([central] in the station config)."""

    station_id: str
    central_host: str
    base_port: int
    secret_key_file: Path | None = None  # the station's own CURVE keypair
    central_public_key_file: Path | None = None
    dev_plain_loopback: bool = False
    reply_timeout_s: float = 2.5
    request_retries: int = 3
    central: tuple[str, ...] = ()  # several central nodes, preferred first; empty = central_host:base_port

    def agent_config(self, scope: str = "/checkpoint/station/", model_id: str = "station",
                     **settings) -> AgentConfig:
        """The settings the gates' Lazy Pirate parts (sync.uploader) read: address, keys, retries,
        node failover. `scope` and `model_id` fill fields only a gate's follower uses."""
        return AgentConfig(gate_id=self.station_id, central_host=self.central_host, base_port=self.base_port,
                           scopes=(scope,), accepted_models=frozenset({model_id}),
                           secret_key_file=self.secret_key_file, central_public_key_file=self.central_public_key_file,
                           dev_plain_loopback=self.dev_plain_loopback, reply_timeout_s=self.reply_timeout_s,
                           request_retries=self.request_retries, central=self.central, **settings)

    def security(self) -> Security:
        if self.dev_plain_loopback:
            if not is_loopback_host(self.central_host):
                raise InsecureTransportError(f"refusing plain TCP to {self.central_host!r}: loopback only")
            return Security(dev_plain_loopback=True)
        if self.secret_key_file is None or self.central_public_key_file is None:
            raise InsecureTransportError("the station needs secret_key_file and central_public_key_file")
        return Security(keypair=load_keypair(self.secret_key_file),
                        server_public=load_public_key(self.central_public_key_file))


class CentralUnreachable(RuntimeError):
    """No reply after every retry; nothing is known to be enrolled."""


class StationClient:
    def __init__(self, link: StationLink, ctx: zmq.Context | None = None):
        self.link = link
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.Context()
        self._client = LazyPirateClient(link.agent_config(), link.security(), self._ctx,
                                        f"station {link.station_id}")
        self._stop = threading.Event()

    def enrol(self, request: EnrolRequest) -> Reply:
        """Send until a reply arrives (ok or refused) or retries run out (CentralUnreachable)."""
        request = replace(request, station_id=self.link.station_id,
                          request_id=request.request_id or secrets.randbits(63))
        payload = encode_enrol(request)
        for attempt in range(1, self.link.request_retries + 1):
            reply = self._client.request(payload, request.request_id, self._stop)
            if reply is not None:
                return reply
            log.info("enrol %s: no reply within %.1fs (try %d of %d)", request.subject_id,
                     self.link.reply_timeout_s, attempt, self.link.request_retries)
        raise CentralUnreachable(f"no reply from the central (last tried {self._client.endpoint}) "
                                 f"after {self.link.request_retries} tries")

    def close(self) -> None:
        self._stop.set()
        self._client.close()
        if self._own_ctx:
            self._ctx.term()
