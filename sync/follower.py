"""Gate side of CHP: keep the local watchlist equal to the central's subtrees for this gate.

The gate decides from its cache at all times; this thread only ever swaps in a complete
snapshot or applies updates in order. It takes a fresh snapshot at start, when the central
comes back after a silence, and when it finds it missed an update. A missed update shows up
in three ways: an update's `prev` (the sequence of the previous change in that scope) is
newer than what we applied; an update arrives out of order; or the central's health reply
says a scope moved on while we heard nothing.

What it follows is the configured scopes plus the flights the central assigned to this gate
(told in each health reply, `set_assigned`). When that set changes the follower subscribes to
the new subtrees, drops the old ones and takes a full snapshot of the new set (a catch-up
cannot serve a scope the gate never held): the swap removes a dropped flight's templates and
the gate never restarts.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import zmq

from sync.config import AgentConfig
from sync.endpoints import Endpoint, EndpointChoice
from sync.interfaces import WatchlistSink
from sync.kvmsg import DELTA_PROPERTY, HUGZ, KTHXBAI, PREV_PROPERTY, KVMsg, MalformedMessage, icanhaz_frames
from sync.scopes import ScopeError, check_id, split_key
from sync.subject_record import MalformedRecord, SubjectRecord, decode_record
from sync.transport import (
    MAX_KV_FRAME,
    PUBLISHER_OFFSET,
    SNAPSHOT_OFFSET,
    HandshakeWatch,
    Security,
    connect_socket,
    recv_frames,
)

log = logging.getLogger(__name__)

WAITING, SNAPSHOTTING, LIVE, STOPPED = "waiting-for-central", "snapshotting", "live", "stopped"
_POLL_MS = 100
_SUBSCRIBE_GRACE_S = 0.05


@dataclass(frozen=True)
class FollowerStatus:
    state: str = WAITING
    applied_seq: int = 0  # highest central sequence applied to the sink
    central_seq: int = 0  # latest sequence announced in a heartbeat
    snapshots: int = 0  # snapshots completed since start
    snapshot_progress: int = 0  # keys received so far for the subtree being snapshotted
    gaps: int = 0  # missed updates detected
    discarded: int = 0  # duplicate, replayed or out-of-order updates dropped
    malformed: int = 0  # messages that failed to parse
    ignored_foreign_model: int = 0  # records for a model this gate does not run
    last_heard: float | None = None  # wall-clock time of the last message from the central
    resumes: int = 0  # times the cache was brought up to date by a catch-up instead of a snapshot
    central: str = ""  # the central endpoint the updates come from now
    scopes: tuple[str, ...] = ()  # the subtrees followed now: configured, then assigned
    scope_changes: int = 0  # times the assigned flights changed (each one a fresh snapshot)


class _Resnapshot(Exception):
    """Raised inside the follower to abandon the live state: catch up from what the cache
    holds, or take a fresh snapshot when that cannot be proved complete."""

    def __init__(self, central_lost: bool = False):
        super().__init__()
        self.central_lost = central_lost


class _Silent(Exception):
    """The central sent nothing on the snapshot socket for `snapshot_idle_timeout_s`."""


class _Moved(Exception):
    """The preferred central answers again: continue on its socket (catching up from `_known`)."""

    def __init__(self, sub: zmq.Socket):
        super().__init__()
        self.sub = sub


class WatchlistFollower:
    def __init__(self, config: AgentConfig, security: Security, sink: WatchlistSink, ctx: zmq.Context):
        self._cfg = config
        self._security = security
        self._sink = sink
        self._ctx = ctx
        self._lock = threading.Lock()
        self._scopes: tuple[str, ...] = tuple(config.scopes)
        self._wanted: tuple[str, ...] | None = None  # a new scope set from a health reply, not yet applied
        self._status = FollowerStatus(applied_seq=sink.stored_seq(), scopes=self._scopes)
        self._heads: dict[str, tuple[int, float]] = {}
        self._known: dict[str, int] = {}  # scope -> last sequence applied (valid while LIVE)
        self._last_heard_mono: float | None = None
        self._lost_at: float | None = None  # when we last concluded the central was gone
        self._central_lost_logged = False
        # Several central nodes: the follower moves on the first silence (no HUGZ for
        # heartbeat_timeout_s) and tries the preferred node again every failback_after_s.
        self.choice = EndpointChoice(config.endpoints(), "watchlist updates", retries=1,
                                     failback_after_s=config.failback_after_s)
        self._probe: zmq.Socket | None = None
        self._probe_deadline = 0.0

    # ----- called from other threads ---------------------------------------------------

    def status(self) -> FollowerStatus:
        with self._lock:
            return self._status

    def scopes(self) -> tuple[str, ...]:
        """What the gate follows now (what it reports in health and asks heads for)."""
        with self._lock:
            return self._wanted if self._wanted is not None else self._scopes

    def set_assigned(self, assigned: tuple[str, ...]) -> None:
        """The flights the central assigns to this gate now (a health reply); a change is
        applied by the follower's own thread, at its next loop."""
        wanted = tuple(self._cfg.scopes) + tuple(s for s in sorted(set(assigned)) if s not in self._cfg.scopes)
        with self._lock:
            if wanted != (self._wanted if self._wanted is not None else self._scopes):
                self._wanted = wanted

    def _take_scope_change(self, sub: zmq.Socket) -> bool:
        """Apply a pending scope set on the live socket (SUBSCRIBE the added subtrees,
        UNSUBSCRIBE the removed ones); True when the cache needs a fresh snapshot."""
        with self._lock:
            wanted, self._wanted = self._wanted, None
        if wanted is None or wanted == self._scopes:
            return False
        added, removed = set(wanted) - set(self._scopes), set(self._scopes) - set(wanted)
        for scope in sorted(added):
            sub.setsockopt(zmq.SUBSCRIBE, scope.encode())
        for scope in sorted(removed):
            sub.setsockopt(zmq.UNSUBSCRIBE, scope.encode())
        log.info("gate %s: the central assigned new flights: following %s (added %s, dropped %s); taking a "
                 "snapshot", self._cfg.gate_id, ", ".join(wanted) or "nothing", ", ".join(sorted(added)) or "-",
                 ", ".join(sorted(removed)) or "-")
        self._scopes = wanted
        self._known = {}  # a catch-up cannot serve a scope this gate never held
        with self._lock:
            self._heads.clear()
        self._set(scopes=wanted, scope_changes=self.status().scope_changes + 1)
        return True

    def note_central_heads(self, heads: dict[str, int]) -> None:
        """The central's latest sequence per scope, from a health reply."""
        now = time.monotonic()
        with self._lock:
            for scope, head in heads.items():
                if scope in self._scopes and self._heads.get(scope, (-1, 0.0))[0] != head:
                    self._heads[scope] = (head, now)

    # ----- thread body -----------------------------------------------------------------

    def _set(self, **changes) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    def _bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._status = replace(self._status, **{name: getattr(self._status, name) + by})

    def _open_sub(self, where: Endpoint | None = None) -> zmq.Socket:
        where = where or self.choice.current
        sub = connect_socket(self._ctx, zmq.SUB, self._security, where.host,
                             where.base_port + PUBLISHER_OFFSET, MAX_KV_FRAME)
        sub.rcvhwm = 100_000
        for scope in self._scopes:
            sub.setsockopt(zmq.SUBSCRIBE, scope.encode())
        sub.setsockopt(zmq.SUBSCRIBE, HUGZ.encode())
        return sub

    def run(self, stop: threading.Event) -> None:
        cfg = self._cfg
        log.info("gate %s: watchlist cache at sequence %d; taking a fresh snapshot of %s", cfg.gate_id,
                 self._sink.stored_seq(), ", ".join(self._scopes) or "nothing yet (flights come from the central)")
        sub = self._open_sub()
        watch = HandshakeWatch(sub, "watchlist updates", log)
        buffered: list[KVMsg] = []
        backoff = 0.2
        try:
            while not stop.is_set():
                if self._take_scope_change(sub):
                    self._set(state=WAITING)
                state = self.status().state
                if state == LIVE:
                    try:
                        self._follow(sub, watch, stop)
                    except _Moved as moved:
                        watch.detach()
                        sub.close(0)
                        sub = moved.sub
                        watch.attach(sub)
                        self._set(state=WAITING, central=str(self.choice.current))
                    except _Resnapshot as why:
                        self._set(state=WAITING)
                        if why.central_lost and self.choice.failed():
                            sub = self._reopen(sub, watch)
                    continue
                if not self._await_central(sub, watch, buffered, stop):
                    # libzmq gives up on a connection after a protocol error (an oversized or
                    # garbled frame), so a long silence gets a fresh socket, Lazy Pirate style,
                    # on the next central endpoint when the gate lists several.
                    self.choice.failed()
                    sub = self._reopen(sub, watch)
                    continue
                if self._can_catch_up() and self._catch_up(sub, buffered, stop):
                    backoff = 0.2
                    continue
                if self._take_snapshot(sub, buffered, stop):
                    backoff = 0.2
                else:
                    self._set(state=WAITING)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, cfg.retry_backoff_max_s)
        finally:
            watch.detach()
            sub.close(0)
            self._close_probe()
            self._set(state=STOPPED)

    def _reopen(self, sub: zmq.Socket, watch: HandshakeWatch) -> zmq.Socket:
        watch.detach()
        sub.close(0)
        sub = self._open_sub()
        watch.attach(sub)
        self._last_heard_mono = None
        self._set(central=str(self.choice.current))
        return sub

    # ----- catch-up instead of a snapshot ----------------------------------------------

    def _open_dealer(self, where: Endpoint) -> zmq.Socket:
        """The snapshot socket, which catch-ups ask on too; its receive queue holds 100,000
        messages instead of ZeroMQ's default 1,000, so a large snapshot streams in while it is
        decoded."""
        dealer = connect_socket(self._ctx, zmq.DEALER, self._security, where.host,
                                where.base_port + SNAPSHOT_OFFSET, MAX_KV_FRAME)
        dealer.rcvhwm = 100_000
        return dealer

    def _can_catch_up(self) -> bool:
        """The cache is exactly the central's state at `_known` for every scope (the gate was
        live and applied everything up to there), so the changes since are all it needs."""
        return bool(self._known) and set(self._known) == set(self._scopes)

    def _catch_up(self, sub: zmq.Socket, buffered: list[KVMsg], stop: threading.Event) -> bool:
        """Ask for each scope's changes after what this gate holds and apply them with the live
        rules. False (take a snapshot) if the central refuses (its log no longer proves it has
        them all), a gap shows, or it does not answer."""
        where = self.choice.current
        started = time.monotonic()
        dealer = self._open_dealer(where)
        changes: list[KVMsg] = []
        try:
            for scope in self._scopes:
                dealer.send_multipart(icanhaz_frames(scope, self._known[scope]))
                try:
                    end = self._read_answer(dealer, sub, scope, buffered, stop, "catch-up", changes.append)
                except _Silent:
                    log.warning("catch-up of %s from %s: no answer; taking a snapshot", scope, where)
                    return False
                if end is None:
                    return False
                if end.props.get(DELTA_PROPERTY) != "1":
                    log.info("catch-up of %s refused by %s (%s); taking a snapshot", scope, where,
                             end.props.get(DELTA_PROPERTY, "not supported"))
                    return False
        finally:
            dealer.close(0)
        try:
            for msg in sorted(changes, key=lambda m: m.seq):
                self._apply_update(msg)
            pending, buffered[:] = list(buffered), []
            for msg in pending:
                self._apply_update(msg)
        except _Resnapshot:
            return False
        with self._lock:
            self._heads.clear()
        self._set(state=LIVE, resumes=self.status().resumes + 1, central=str(where))
        log.info("resumed from %s at sequence %d with %d change(s) (no snapshot) in %.2fs", where,
                 self.status().applied_seq, len(changes), time.monotonic() - started)
        return True

    # ----- back to the preferred node ---------------------------------------------------

    def _close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close(0)
            self._probe = None

    def _check_failback(self) -> None:
        """While live on another node, listen to the preferred one now and then without
        stopping the live updates; move back once it is heard."""
        if self._probe is None:
            if not self.choice.time_to_try_preferred():
                return
            self.choice.try_preferred()
            self._probe = self._open_sub(self.choice.current)
            self._probe_deadline = time.monotonic() + self._cfg.heartbeat_timeout_s
            return
        if self._probe.poll(0):
            probe, self._probe = self._probe, None
            self.choice.succeeded()
            log.info("preferred central %s is back; moving the watchlist updates to it", self.choice.current)
            raise _Moved(probe)
        if time.monotonic() > self._probe_deadline:
            self._close_probe()
            self.choice.failed()  # back to the node in use, at once

    def _heard(self) -> None:
        self._last_heard_mono = time.monotonic()
        self._set(last_heard=time.time())
        if self._central_lost_logged:
            log.info("central is back; refreshing the watchlist")
            self._central_lost_logged = False

    def _central_recent(self) -> bool:
        return (self._last_heard_mono is not None
                and time.monotonic() - self._last_heard_mono < self._cfg.heartbeat_timeout_s)

    def _read_sub(self, sub: zmq.Socket, into: list[KVMsg]) -> None:
        """Drain what the subscriber holds: heartbeats are noted, updates appended."""
        while sub.poll(0):
            frames = recv_frames(sub)
            try:
                msg = KVMsg.from_frames(frames)
            except MalformedMessage as exc:
                self._bump("malformed")
                log.warning("dropped a malformed update from the central: %s", exc)
                continue
            self._heard()
            if msg.key == HUGZ:
                self._set(central_seq=msg.seq)
            else:
                into.append(msg)

    def _await_central(self, sub: zmq.Socket, watch: HandshakeWatch, buffered: list[KVMsg],
                       stop: threading.Event) -> bool:
        """Wait until the subscription works: a message arrived, or the handshake succeeded a
        moment ago (the subscription travels right behind it). An update that still slips past
        during the snapshot is caught by `prev` or the health heads."""
        if self._central_recent():
            return True
        deadline = time.monotonic() + self._cfg.heartbeat_timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            watch.poll()
            connected = watch.connected_at
            if (connected is not None and (self._lost_at is None or connected > self._lost_at)
                    and time.monotonic() - connected >= _SUBSCRIBE_GRACE_S):
                self._heard()  # a handshake since we lost the central is its first sign of life
                return True
            if sub.poll(10):
                self._read_sub(sub, buffered)
                if self._central_recent():
                    return True
        if not stop.is_set() and not self._central_lost_logged:
            self._central_lost_logged = True
            log.warning("central unreachable (nothing heard for %.1fs); deciding from the cached watchlist "
                        "at sequence %d", self._cfg.heartbeat_timeout_s, self._sink.stored_seq())
        return False

    def _take_snapshot(self, sub: zmq.Socket, buffered: list[KVMsg], stop: threading.Event) -> bool:
        with _collector_paused():
            return self._snapshot(sub, buffered, stop)

    def _snapshot(self, sub: zmq.Socket, buffered: list[KVMsg], stop: threading.Event) -> bool:
        cfg = self._cfg
        self._set(state=SNAPSHOTTING, snapshot_progress=0)
        started = time.monotonic()
        where = self.choice.current
        dealer = self._open_dealer(where)
        entries: dict[str, SubjectRecord] = {}
        snap_seq: dict[str, int] = {}
        foreign: collections.Counter[str] = collections.Counter()
        try:
            for scope in self._scopes:
                dealer.send_multipart(icanhaz_frames(scope))
                seq = self._receive_subtree(dealer, sub, scope, entries, foreign, buffered, stop)
                if seq is None:
                    return False
                snap_seq[scope] = seq
        finally:
            dealer.close(0)
        for model_id, n in foreign.items():
            log.warning("snapshot: ignored %d subject(s) enrolled with model %r; this gate runs %s",
                        n, model_id, ", ".join(sorted(cfg.accepted_models)))
        # following nothing (a boarding gate between flights): an empty watchlist at the heartbeat's sequence
        seq = max(snap_seq.values(), default=self.status().central_seq)
        try:
            self._sink.replace_all(list(entries.items()), seq)
        except Exception:
            log.exception("the watchlist store refused the snapshot; keeping the previous watchlist")
            return False
        self._known = dict(snap_seq)
        with self._lock:
            self._heads.clear()
        self._set(state=LIVE, applied_seq=seq, snapshots=self.status().snapshots + 1, central=str(where))
        log.info("snapshot applied: %d key(s) from %s at sequence %d in %.2fs", len(entries),
                 ", ".join(self._scopes) or "nothing", seq, time.monotonic() - started)
        pending, buffered[:] = list(buffered), []
        try:
            for msg in pending:
                self._apply_update(msg)
        except _Resnapshot:
            self._set(state=WAITING)
        return True

    def _receive_subtree(self, dealer: zmq.Socket, sub: zmq.Socket, scope: str, entries: dict[str, SubjectRecord],
                         foreign: collections.Counter, buffered: list[KVMsg], stop: threading.Event) -> int | None:
        """One scope's snapshot into `entries`; its sequence, or None (start over)."""
        cfg = self._cfg
        received = 0

        def take(msg: KVMsg) -> None:
            nonlocal received
            received += 1
            self._take_record(msg, scope, entries, foreign)
            if received % 256 == 0:
                self._set(snapshot_progress=received)

        try:
            end = self._read_answer(dealer, sub, scope, buffered, stop, "snapshot", take, cfg.max_buffered_updates)
        except _Silent:
            log.warning("snapshot of %s aborted: no answer from the central for %.1fs after %d key(s) (it went "
                        "away, or refuses this scope to this gate); keeping the cached watchlist at sequence %d",
                        scope, cfg.snapshot_idle_timeout_s, received, self._sink.stored_seq())
            self._lost_at = time.monotonic()  # the next attempt waits for a sign of life
            self._last_heard_mono = None
            return None
        self._set(snapshot_progress=received)
        return None if end is None else end.seq

    def _read_answer(self, dealer: zmq.Socket, sub: zmq.Socket, scope: str, buffered: list[KVMsg],
                     stop: threading.Event, what: str, take: Callable[[KVMsg], None],
                     max_buffered: int | None = None) -> KVMsg | None:
        """The answer to one ICANHAZ? for `scope`, a snapshot or a catch-up: each key-value
        message is handed to `take` until the KTHXBAI naming the scope, which is returned, while
        the live updates that keep arriving are drained into `buffered` (applied after it).
        None when `stop` is set, or when more than `max_buffered` live updates queue up
        (`buffered` is then cleared: the caller starts over). Raises _Silent after
        `snapshot_idle_timeout_s` without a message."""
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(sub, zmq.POLLIN)
        last_activity = time.monotonic()
        while not stop.is_set():
            ready = dict(poller.poll(_POLL_MS))
            if sub in ready:
                self._read_sub(sub, buffered)
                if max_buffered is not None and len(buffered) > max_buffered:
                    log.warning("%s: %d updates queued while it ran; starting over", what, len(buffered))
                    buffered.clear()
                    return None
            if dealer in ready:
                last_activity = time.monotonic()
                while True:  # drain without a poll per message: a 100k-key snapshot is 100k messages
                    try:
                        msg = KVMsg.from_frames(recv_frames(dealer, zmq.NOBLOCK))
                    except zmq.Again:
                        break
                    except MalformedMessage as exc:
                        self._bump("malformed")
                        log.warning("%s: dropped a malformed message: %s", what, exc)
                        continue
                    if msg.key == KTHXBAI:
                        if msg.body.decode("utf-8", "replace") != scope:
                            log.warning("%s: KTHXBAI for %r while waiting for %r; ignored", what, msg.body, scope)
                            continue
                        return msg
                    take(msg)
            elif time.monotonic() - last_activity > self._cfg.snapshot_idle_timeout_s:
                raise _Silent()
        return None

    def _take_record(self, msg: KVMsg, scope: str, entries: dict[str, SubjectRecord],
                     foreign: collections.Counter) -> None:
        try:
            if not msg.key.startswith(scope):
                raise MalformedRecord(f"key {msg.key} is outside the requested subtree {scope}")
            subject_id = check_id(msg.key[len(scope):], "subject id")
            rec = decode_record(msg.body)
            if rec.subject_id != subject_id:
                raise MalformedRecord(f"key {msg.key} carries the record of {rec.subject_id}")
        except (ScopeError, MalformedRecord) as exc:
            self._bump("malformed")
            log.error("snapshot: skipped %s: %s", msg.key, exc)
            return
        if rec.model_id not in self._cfg.accepted_models:
            foreign[rec.model_id] += 1
            self._bump("ignored_foreign_model")
            return
        entries[msg.key] = rec

    # ----- live updates ----------------------------------------------------------------

    def _follow(self, sub: zmq.Socket, watch: HandshakeWatch, stop: threading.Event) -> None:
        cfg = self._cfg
        while not stop.is_set():
            if self._take_scope_change(sub):
                raise _Resnapshot()
            watch.poll()
            if sub.poll(_POLL_MS):
                updates: list[KVMsg] = []
                self._read_sub(sub, updates)
                for msg in updates:
                    self._apply_update(msg)
            if not self._central_recent():
                self._lost_at = time.monotonic()
                self._central_lost_logged = True
                log.warning("no heartbeat from the central %s for %.1fs; deciding from the cached watchlist at "
                            "sequence %d until it or another node answers", self.choice.current,
                            cfg.heartbeat_timeout_s, self._sink.stored_seq())
                self._close_probe()
                raise _Resnapshot(central_lost=True)
            self._check_heads()
            self._check_failback()

    def _check_heads(self) -> None:
        now = time.monotonic()
        with self._lock:
            heads = dict(self._heads)
        for scope, (head, noted) in heads.items():
            if self._known.get(scope, 0) >= head:
                with self._lock:
                    if self._heads.get(scope) == (head, noted):
                        del self._heads[scope]
            elif now - noted >= self._cfg.head_grace_s:
                self._bump("gaps")
                log.warning("missed update(s) in %s: the central is at sequence %d there, we applied %d; "
                            "catching up", scope, head, self._known.get(scope, 0))
                raise _Resnapshot()

    def _apply_update(self, msg: KVMsg) -> None:
        try:
            scope, subject_id = split_key(msg.key)
        except ScopeError as exc:
            self._bump("malformed")
            log.warning("ignored an update with key %r: %s", msg.key, exc)
            return
        if scope not in self._known:
            log.debug("ignored an update for %s, which this gate does not follow", msg.key)
            return
        known = self._known[scope]
        if msg.seq <= known:
            self._bump("discarded")
            log.debug("discarded update %d for %s: already at %d (duplicate, replay or out of order)",
                      msg.seq, msg.key, known)
            return
        prev_text = msg.props.get(PREV_PROPERTY)
        if prev_text is not None:
            try:
                prev = int(prev_text)
            except ValueError:
                self._bump("malformed")
                log.warning("ignored update %d for %s: prev=%r is not a number", msg.seq, msg.key, prev_text)
                return
            if prev > known:
                self._bump("gaps")
                log.warning("sequence gap in %s: update %d follows %d, but the last we applied there is %d; "
                            "catching up", scope, msg.seq, prev, known)
                raise _Resnapshot()
        try:
            self._apply_to_sink(msg, subject_id)
        except Exception:
            log.exception("the watchlist store failed to apply update %d for %s; will re-snapshot", msg.seq, msg.key)
            self._known = {}  # the cache may not match any sequence now: only a snapshot will do
            raise _Resnapshot() from None
        self._known[scope] = msg.seq
        if msg.seq > self.status().applied_seq:
            self._set(applied_seq=msg.seq)

    def _apply_to_sink(self, msg: KVMsg, subject_id: str) -> None:
        if msg.is_delete:
            self._sink.apply_delete(msg.key, msg.seq)
            log.info("watchlist: removed %s (sequence %d)", msg.key, msg.seq)
            return
        try:
            rec = decode_record(msg.body)
            if rec.subject_id != subject_id:
                raise MalformedRecord(f"the body names subject {rec.subject_id}")
        except MalformedRecord as exc:
            # A template we cannot read must not stay in use under an outdated version.
            self._bump("malformed")
            self._sink.apply_delete(msg.key, msg.seq)
            log.error("watchlist: unreadable record for %s (sequence %d): %s; removed it from the cache",
                      msg.key, msg.seq, exc)
            return
        if rec.model_id not in self._cfg.accepted_models:
            self._bump("ignored_foreign_model")
            self._sink.apply_delete(msg.key, msg.seq)
            log.warning("watchlist: ignored templates of %s for model %r; this gate runs %s", msg.key, rec.model_id,
                        ", ".join(sorted(self._cfg.accepted_models)))
            return
        self._sink.apply_upsert(msg.key, rec, msg.seq)
        log.debug("watchlist: updated %s (sequence %d)", msg.key, msg.seq)


_paused = 0
_paused_lock = threading.Lock()


@contextlib.contextmanager
def _collector_paused():
    """No cyclic garbage collection while a snapshot is received and stored. The records held
    until the swap are hundreds of thousands of tracked objects, and every full collection walks
    them all again: measured on 100k subjects, the gate's CPU for the snapshot fell by a quarter
    (store step 58 -> 44 µs per subject). Reference counting still frees everything as usual;
    only cycles wait, and the collector runs once at the end."""
    global _paused
    with _paused_lock:
        _paused += 1
        if _paused == 1:
            gc.disable()
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0:
                gc.enable()
