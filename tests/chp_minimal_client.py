"""A minimal Clustered Hashmap Protocol client, written from ZeroMQ RFC 12 alone.

It deliberately shares no code with sync/: if edgegate's central drifted from the RFC, this
client would stop following it. Only libzmq (for sockets and the optional CURVE handshake)
is common ground. RFC 12 in short: snapshot on a DEALER to port P (ICANHAZ? + subtree,
answered by KVSYNC messages and a KTHXBAI with the snapshot's sequence), updates on a SUB to
P+1 (KVPUB, apply only if the sequence is greater than the last one, empty value = delete),
client updates on a PUB to P+2 (KVSET). Messages are five frames: key, 8-byte network-order
sequence, UUID, "name=value\\n" properties, value.
"""
from __future__ import annotations

import struct
import time
import uuid as uuidlib

import zmq


def _seq(frame: bytes) -> int:
    if len(frame) != 8:
        raise ValueError("RFC 12 sequence frames are 8 bytes")
    return struct.unpack(">Q", frame)[0]


def _props(frame: bytes) -> dict[str, str]:
    out = {}
    for line in frame.decode().splitlines():
        if line:
            name, _, value = line.partition("=")
            out[name] = value
    return out


class MinimalChpClient:
    def __init__(self, host: str, port: int, subtree: str = "", curve: tuple[bytes, bytes, bytes] | None = None,
                 updates_port: int | None = None):
        """`curve` is (server public, client public, client secret), Z85, when the server uses CURVE.
        `updates_port`: the base port of another server to take updates from (several central
        nodes on one database); default `port`."""
        self.ctx = zmq.Context()
        self.host, self.port, self.subtree, self.curve = host, port, subtree, curve
        self.updates_port = port if updates_port is None else updates_port
        self.kvmap: dict[str, bytes] = {}
        self.props: dict[str, dict[str, str]] = {}
        self.received: list[tuple[int, str]] = []  # (sequence, key) of every KVPUB, applied or not
        self.sequence = 0
        self.hugz = 0
        self.subscriber = self._socket(zmq.SUB, 1)
        self.subscriber.setsockopt(zmq.SUBSCRIBE, subtree.encode())
        self.subscriber.setsockopt(zmq.SUBSCRIBE, b"HUGZ")
        self.publisher: zmq.Socket | None = None

    def _socket(self, kind: int, offset: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.linger = 0
        if self.curve:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = self.curve
        base = self.updates_port if offset == 1 else self.port
        s.connect(f"tcp://{self.host}:{base + offset}")
        return s

    def get_snapshot(self, timeout: float = 10.0) -> int:
        """State synchronisation: ICANHAZ?, then KVSYNC... until KTHXBAI."""
        snapshot = self._socket(zmq.DEALER, 0)
        try:
            snapshot.send_multipart([b"ICANHAZ?", self.subtree.encode()])
            deadline = time.monotonic() + timeout
            while True:
                if not snapshot.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                    raise TimeoutError("no KTHXBAI before the timeout")
                key, seq, _uuid, _props_frame, value = snapshot.recv_multipart()
                if key == b"KTHXBAI":
                    self.sequence = _seq(seq)
                    return self.sequence
                self.kvmap[key.decode()] = value
        finally:
            snapshot.close()

    def receive_updates(self, duration: float) -> int:
        """Apply KVPUB messages for `duration` seconds; returns how many were applied."""
        applied = 0
        deadline = time.monotonic() + duration
        while (remaining := deadline - time.monotonic()) > 0:
            if not self.subscriber.poll(max(1, int(remaining * 1000))):
                continue
            key, seq_frame, _uuid, props, value = self.subscriber.recv_multipart()
            if key == b"HUGZ":
                self.hugz += 1
                continue
            seq = _seq(seq_frame)
            self.received.append((seq, key.decode()))
            if seq <= self.sequence:
                continue  # RFC 12: discard anything not newer than the last KTHXBAI/KVPUB
            self.sequence = seq
            name = key.decode()
            if value:
                self.kvmap[name] = value
                self.props[name] = _props(props)
            else:
                self.kvmap.pop(name, None)
            applied += 1
        return applied

    def kvset(self, key: str, value: bytes, properties: dict[str, str] | None = None) -> bytes:
        if self.publisher is None:
            self.publisher = self._socket(zmq.PUB, 2)
        uuid = uuidlib.uuid4().bytes
        props = "".join(f"{k}={v}\n" for k, v in (properties or {}).items()).encode()
        self.publisher.send_multipart([key.encode(), struct.pack(">Q", 0), uuid, props, value])
        return uuid

    def close(self) -> None:
        self.ctx.destroy(0)
