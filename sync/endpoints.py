"""Which central node a gate's sync part talks to, when the gate lists several.

Each part (watchlist follower, audit uploader, health reporter) keeps its own `EndpointChoice`
and moves by its own failure rule: the Lazy Pirate parts after `request_retries` consecutive
timeouts, the follower when no heartbeat came for `heartbeat_timeout_s`. Parts move
independently on purpose: the audit path to a node can be broken while its publisher still
works, and a gate should use what works. The first endpoint is the preferred one (the node
nearest the site): a part that moved away tries it again every `failback_after_s` and returns
when it answers, so load spreads back after a node's maintenance.

Nodes share one database (docs/protocol.md, "Several central nodes"), so moving costs a gate
nothing it has: the CHP sequence means the same on every node, audit acknowledged by one node
is held for all.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)

_ENDPOINT_RE = re.compile(r"^(?:tcp://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class EndpointError(ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    host: str
    base_port: int  # snapshot P, updates P+1, collector P+2, audit/health P+3

    def __str__(self) -> str:
        return f"{self.host}:{self.base_port}"


def parse_endpoint(text: str) -> Endpoint:
    """'tcp://host:port' or 'host:port' (IPv6 in brackets); the port is the node's base port."""
    m = _ENDPOINT_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise EndpointError(f"central endpoint {text!r} must look like tcp://host:5556")
    port = int(m.group(2))
    if not 1 <= port <= 65532:
        raise EndpointError(f"central endpoint {text!r}: base port must be 1..65532 (it uses port..port+3)")
    return Endpoint(m.group(1).strip("[]"), port)


class EndpointChoice:
    """The endpoint one sync part uses now, and its rule for moving."""

    def __init__(self, endpoints: Sequence[Endpoint], part: str, retries: int = 1, failback_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if not endpoints:
            raise EndpointError("a gate needs at least one central endpoint")
        self.endpoints = tuple(endpoints)
        self._part = part
        self._retries = max(1, retries)
        self._failback_after_s = failback_after_s
        self._clock = clock
        self.index = 0
        self._failures = 0
        self._moved_at = clock()
        self._probing_from: int | None = None
        self.moves = 0

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self.index]

    def succeeded(self) -> None:
        self._failures = 0
        if self._probing_from is not None:
            log.info("%s: preferred central %s answers again; staying on it", self._part, self.current)
            self._probing_from = None

    def failed(self) -> bool:
        """One failure (a timeout, a silence); True if this moved to another endpoint."""
        if self._probing_from is not None:  # the preferred node is still away: back at once
            self.index, self._probing_from = self._probing_from, None
            self._failures = 0
            self._moved_at = self._clock()
            return True
        self._failures += 1
        if self._failures < self._retries or len(self.endpoints) == 1:
            return False
        old = self.current
        self.index = (self.index + 1) % len(self.endpoints)
        self._failures = 0
        self._moved_at = self._clock()
        self.moves += 1
        log.warning("%s: central %s is not answering; moving to %s", self._part, old, self.current)
        return True

    def time_to_try_preferred(self) -> bool:
        return (self.index != 0 and self._probing_from is None
                and self._clock() - self._moved_at >= self._failback_after_s)

    def try_preferred(self) -> None:
        """Point at the preferred endpoint for one attempt; `failed()` comes back at once."""
        self._probing_from = self.index
        self.index = 0
        self._moved_at = self._clock()
