"""The gate's follower against a hostile wire: a scripted central (real CURVE sockets holding
the central's key) sends duplicated, replayed, reordered, truncated, oversized and malformed
messages. The follower must apply each legitimate change exactly once, drop the rest with a
log line, detect every gap, and keep a usable watchlist throughout."""
from __future__ import annotations

import logging
import queue
import struct
import threading
import time

import numpy as np
import pytest
import zmq

from sync.follower import WatchlistFollower
from sync.keys import load_keypair, load_public_key
from sync.kvmsg import HUGZ, KVMsg, hugz, kthxbai, parse_icanhaz_request
from sync.subject_record import SubjectRecord, encode_record
from sync.transport import Security, bind_socket
from tests.sync_helpers import MODEL, Deployment, MemoryWatchlist, unit, wait_until


def record(subject_id: str, model: str = MODEL, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_record(SubjectRecord(subject_id, "allow", model, unit(rng, 1)))


class ScriptedCentral:
    """Serves snapshots of `self.state` and publishes exactly the frames a test gives it."""

    def __init__(self, dep: Deployment, secret_file):
        self.ctx = zmq.Context()
        security = Security(keypair=load_keypair(secret_file))
        self.router = bind_socket(self.ctx, zmq.ROUTER, security, "127.0.0.1", dep.base_port, 1 << 16)
        self.pub = bind_socket(self.ctx, zmq.PUB, security, "127.0.0.1", dep.base_port + 1, 1 << 16)
        self.state: dict[str, tuple[int, bytes]] = {}
        self.seq = 0
        self.snapshot_extra: list[list[bytes]] = []  # frames slipped into the next snapshot
        self.snapshots_served = 0
        self.catch_ups_refused = 0
        self._outbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def set(self, key: str, seq: int, body: bytes) -> None:
        if body:
            self.state[key] = (seq, body)
        else:
            self.state.pop(key, None)
        self.seq = max(self.seq, seq)

    def publish(self, frames: list[bytes]) -> None:
        self._outbox.put(frames)

    def change(self, key: str, seq: int, prev: int, body: bytes) -> list[bytes]:
        """Record a legitimate change and return its KVPUB frames (not yet sent)."""
        self.set(key, seq, body)
        return KVMsg(key, seq, b"", {"prev": str(prev)}, body).frames()

    def _run(self) -> None:
        next_hugz = 0.0
        while not self._stop.is_set():
            if self.router.poll(10):
                ident, *req = self.router.recv_multipart()
                subtree, since = parse_icanhaz_request(req)
                if since is not None:  # keeps no change log: it cannot prove a catch-up complete
                    self.router.send_multipart([ident, *kthxbai(self.seq, subtree, delta="refused").frames()])
                    self.catch_ups_refused += 1
                    continue
                for frames in self.snapshot_extra:
                    self.router.send_multipart([ident, *frames])
                self.snapshot_extra = []
                for key, (seq, body) in sorted(self.state.items()):
                    if key.startswith(subtree):
                        self.router.send_multipart([ident, *KVMsg(key, seq, body=body).frames()])
                self.router.send_multipart([ident, *kthxbai(self.seq, subtree).frames()])
                self.snapshots_served += 1
            while not self._outbox.empty():
                self.pub.send_multipart(self._outbox.get())
            if time.monotonic() >= next_hugz:
                self.pub.send_multipart(hugz(self.seq).frames())
                next_hugz = time.monotonic() + 0.05

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.router.close(0)
        self.pub.close(0)
        self.ctx.term()


@pytest.fixture
def wire(tmp_path):
    dep = Deployment(tmp_path)
    fake = ScriptedCentral(dep, dep.central_secret)
    secret = dep.add_gate("G1", ["lane:L1"])
    cfg = dep.agent_config("G1", secret, ["lane:L1"], heartbeat_timeout_s=1.0, snapshot_idle_timeout_s=1.0)
    security = Security(keypair=load_keypair(secret), server_public=load_public_key(dep.central_public))
    sink = MemoryWatchlist()
    ctx = zmq.Context()
    follower = WatchlistFollower(cfg, security, sink, ctx)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    yield fake, follower, sink, thread
    stop.set()
    thread.join(5)
    ctx.term()
    fake.close()


def test_duplicates_replays_truncation_and_bad_bodies_are_dropped(wire, caplog):
    caplog.set_level(logging.DEBUG, logger="sync.follower")
    fake, follower, sink, thread = wire
    fake.set("/lane/L1/a", 3, record("a"))
    fake.set("/lane/L1/b", 5, record("b"))
    fake.seq = 10
    fake.snapshot_extra = [[b"/lane/L1/x", b"\0" * 8, b"", b""],  # truncated: 4 frames
                           KVMsg("/lane/L1/y", 4, body=b"\x93not-a-record").frames()]
    thread.start()
    assert wait_until(lambda: follower.status().state == "live")
    assert set(sink.snapshot()) == {"/lane/L1/a", "/lane/L1/b"} and sink.stored_seq() == 10
    assert "snapshot: dropped a malformed message: a CHP key-value message has 5 frames" in caplog.text
    assert "snapshot: skipped /lane/L1/y" in caplog.text

    c = fake.change("/lane/L1/c", 11, 10, record("c"))
    fake.publish(c)
    fake.publish(c)  # duplicated
    fake.publish(KVMsg("/lane/L1/a", 9, b"", {"prev": "0"}, b"").frames())  # replayed old delete of a
    fake.publish([b"/lane/L1/d", b"\0\0\0\0\0\0\0\x0c", b"", b""])  # truncated
    fake.publish([b"/lane/L1/d", b"\0\0\0\0\0\0\x0c", b"", b"prev=11\n", record("d")])  # 7-byte sequence
    fake.publish([b"/lane/L1/d", struct.pack("!Q", 12), b"\1" * 5, b"prev=11\n", record("d")])  # bad uuid
    fake.publish([b"/lane/L1/e", struct.pack("!Q", 12), b"", b"garbage", record("e")])  # bad properties
    assert wait_until(lambda: follower.status().malformed >= 2 + 4 and follower.status().discarded >= 2)
    status = follower.status()
    assert status.discarded == 2 and status.gaps == 0 and status.snapshots == 1
    assert set(sink.snapshot()) == {"/lane/L1/a", "/lane/L1/b", "/lane/L1/c"}
    assert "discarded update 11 for /lane/L1/c" in caplog.text and "discarded update 9 for /lane/L1/a" in caplog.text

    # An authenticated but unreadable record must not leave the old version in use.
    fake.publish(fake.change("/lane/L1/b", 12, 11, b"\xc1\xc1"))
    assert wait_until(lambda: "/lane/L1/b" not in sink.snapshot())
    assert "unreadable record for /lane/L1/b" in caplog.text
    # Templates for a model this gate does not run are ignored, and said so.
    fake.publish(fake.change("/lane/L1/c", 13, 12, record("c", model="arcface-r100")))
    assert wait_until(lambda: "/lane/L1/c" not in sink.snapshot())
    assert "ignored templates of /lane/L1/c for model 'arcface-r100'" in caplog.text
    assert follower.status().state == "live" and follower.status().snapshots == 1


def test_reordered_updates_are_a_gap_and_the_gate_resnapshots(wire, caplog):
    caplog.set_level(logging.INFO, logger="sync.follower")
    fake, follower, sink, thread = wire
    fake.set("/lane/L1/a", 1, record("a"))
    thread.start()
    assert wait_until(lambda: follower.status().state == "live")
    second = fake.change("/lane/L1/b", 2, 1, record("b"))
    third = fake.change("/lane/L1/c", 3, 2, record("c"))
    fake.publish(third)  # arrives before its predecessor
    fake.publish(second)
    # this central keeps no change log, so it refuses the catch-up and the gate takes a snapshot
    assert wait_until(lambda: follower.status().snapshots == 2)
    assert fake.catch_ups_refused == 1
    assert wait_until(lambda: set(sink.snapshot()) == {"/lane/L1/a", "/lane/L1/b", "/lane/L1/c"})
    assert "sequence gap in /lane/L1/: update 3 follows 2, but the last we applied there is 1" in caplog.text
    assert sink.stored_seq() == 3


def test_an_oversized_message_never_reaches_the_sink(wire, caplog):
    caplog.set_level(logging.INFO, logger="sync.follower")
    fake, follower, sink, thread = wire
    fake.set("/lane/L1/a", 1, record("a"))
    thread.start()
    assert wait_until(lambda: follower.status().state == "live")
    huge = KVMsg("/lane/L1/huge", 2, b"", {"prev": "1"}, b"\0" * (2 << 20)).frames()
    fake.set("/lane/L1/huge", 2, b"")  # the central's truth does not include it either
    fake.publish(huge)
    fake.publish(fake.change("/lane/L1/b", 3, 2, record("b")))
    # libzmq drops the connection on the oversized frame; whatever follows is a gap or silence,
    # and the follower converges by snapshot either way.
    assert wait_until(lambda: "/lane/L1/b" in sink.snapshot(), timeout=20)
    assert "/lane/L1/huge" not in sink.snapshot()
    assert wait_until(lambda: follower.status().snapshots >= 2)


def test_a_central_with_an_unknown_key_is_never_heard(tmp_path, caplog):
    """A server holding some other key than the central's: the CURVE handshake fails, the gate
    logs why, keeps its cache, and applies nothing."""
    caplog.set_level(logging.INFO, logger="sync.follower")
    dep = Deployment(tmp_path)
    from sync.keys import generate_keypair_files

    impostor = ScriptedCentral(dep, generate_keypair_files(tmp_path / "evil", "central").secret)
    impostor.set("/lane/L1/planted", 1, record("planted"))
    secret = dep.add_gate("G1", ["lane:L1"])
    cfg = dep.agent_config("G1", secret, ["lane:L1"])
    sink = MemoryWatchlist(seq=7, entries={"/lane/L1/genuine": SubjectRecord("genuine", "allow", MODEL,
                                                                              unit(np.random.default_rng(1), 1))})
    ctx = zmq.Context()
    follower = WatchlistFollower(cfg, Security(load_keypair(secret), load_public_key(dep.central_public)), sink, ctx)
    stop = threading.Event()
    thread = threading.Thread(target=follower.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: "CURVE handshake with the central failed" in caplog.text, timeout=20)
        assert wait_until(lambda: "central unreachable" in caplog.text, timeout=20)
        assert impostor.snapshots_served == 0
        assert set(sink.snapshot()) == {"/lane/L1/genuine"} and sink.stored_seq() == 7
    finally:
        stop.set()
        thread.join(5)
        ctx.term()
        impostor.close()


def test_hugz_carries_the_sequence_and_is_not_applied(wire):
    fake, follower, sink, thread = wire
    fake.seq = 41
    thread.start()
    assert wait_until(lambda: follower.status().central_seq == 41 and follower.status().state == "live")
    assert sink.snapshot() == {} and sink.stored_seq() == 41
    assert HUGZ not in sink.snapshot()
