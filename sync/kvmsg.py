"""The Clustered Hashmap Protocol (ZeroMQ RFC 12) message: five frames, strictly parsed.

Every CHP command (KVSYNC, KTHXBAI, KVPUB, KVSET, HUGZ) shares one shape, so one codec serves
them all; the ICANHAZ request is the only two-frame command. Parsing is strict because these
bytes arrive from the network: a wrong frame count, a sequence frame that is not 8 bytes or a
UUID that is neither empty nor 16 bytes is refused with a reason, never half-applied.
"""
from __future__ import annotations

import re
import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

ICANHAZ = b"ICANHAZ?"
KTHXBAI = "KTHXBAI"
HUGZ = "HUGZ"

# KVPUB properties set by edgegate's central (docs/protocol.md 3.2).
PREV_PROPERTY = "prev"  # sequence of the previous change in the same scope
TTL_PROPERTY = "ttl"  # seconds until the subject's validity ends

MAX_KEY_BYTES = 255
MAX_SEQ = 2**63 - 1  # keeps the 8-byte sequence readable as signed by any client

# A subtree is empty (the whole map) or "/seg/.../" with non-empty segments.
_SUBTREE_RE = re.compile(r"^(/[^/\x00-\x1f]+)+/$")
_PROP_NAME_RE = re.compile(r"^[^=\n\x00]+$")


class MalformedMessage(ValueError):
    """Bytes that do not form a valid CHP command; the reason says which rule failed."""


@dataclass(frozen=True)
class KVMsg:
    key: str
    seq: int
    uuid: bytes = b""
    props: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def is_delete(self) -> bool:
        return len(self.body) == 0

    def frames(self) -> list[bytes]:
        return [
            self.key.encode("utf-8"),
            struct.pack("!Q", self.seq),
            self.uuid,
            encode_properties(self.props),
            self.body,
        ]

    @classmethod
    def from_frames(cls, frames: Sequence[bytes]) -> "KVMsg":
        if len(frames) != 5:
            raise MalformedMessage(f"a CHP key-value message has 5 frames, got {len(frames)}")
        key_b, seq_b, uuid_b, props_b, body = (bytes(f) for f in frames)
        if len(key_b) == 0 or len(key_b) > MAX_KEY_BYTES:
            raise MalformedMessage(f"key must be 1..{MAX_KEY_BYTES} bytes, got {len(key_b)}")
        try:
            key = key_b.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("key is not UTF-8") from exc
        if len(seq_b) != 8:
            raise MalformedMessage(f"sequence frame must be 8 bytes, got {len(seq_b)}")
        seq = struct.unpack("!Q", seq_b)[0]
        if seq > MAX_SEQ:
            raise MalformedMessage("sequence number out of range")
        if len(uuid_b) not in (0, 16):
            raise MalformedMessage(f"UUID frame must be empty or 16 bytes, got {len(uuid_b)}")
        return cls(key=key, seq=seq, uuid=uuid_b, props=decode_properties(props_b), body=body)


def new_uuid() -> bytes:
    return uuidlib.uuid4().bytes


def encode_properties(props: Mapping[str, str]) -> bytes:
    out = []
    for name, value in props.items():
        if not _PROP_NAME_RE.match(name) or "\n" in value:
            raise ValueError(f"property {name!r}={value!r} cannot be encoded as name=value<newline>")
        out.append(f"{name}={value}\n")
    return "".join(out).encode("utf-8")


def decode_properties(raw: bytes) -> dict[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("properties are not UTF-8") from exc
    props: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        name, sep, value = line.partition("=")
        if not sep or not _PROP_NAME_RE.match(name):
            raise MalformedMessage(f"property line {line!r} is not name=value (a name holds no NUL)")
        props[name] = value
    return props


def is_valid_subtree(subtree: str) -> bool:
    return subtree == "" or bool(_SUBTREE_RE.match(subtree))


DELTA_PROPERTY = "delta"  # on KTHXBAI: "1" = the answer was the changes since, "refused" = take a snapshot


def icanhaz_frames(subtree: str, since: int | None = None) -> list[bytes]:
    """RFC 12's two frames; edgegate's catch-up adds a third, the 8-byte sequence the client
    already holds for that subtree (docs/protocol.md 3.6), answered with the changes since."""
    frames = [ICANHAZ, subtree.encode("utf-8")]
    if since is not None:
        frames.append(struct.pack("!Q", since))
    return frames


def parse_icanhaz_request(frames: Sequence[bytes]) -> tuple[str, int | None]:
    """(subtree, since) of an ICANHAZ command; since is None for a plain RFC 12 snapshot."""
    if len(frames) == 3:
        since_b = bytes(frames[2])
        if len(since_b) != 8:
            raise MalformedMessage(f"an ICANHAZ catch-up sequence is 8 bytes, got {len(since_b)}")
        since = struct.unpack("!Q", since_b)[0]
        if since > MAX_SEQ:
            raise MalformedMessage("catch-up sequence out of range")
        subtree = parse_icanhaz(frames[:2])
        if not subtree:
            raise MalformedMessage("a catch-up names one scope subtree, not the whole map")
        return subtree, since
    return parse_icanhaz(frames), None


def parse_icanhaz(frames: Sequence[bytes]) -> str:
    """Return the requested subtree of an ICANHAZ command (routing frame already removed)."""
    if len(frames) != 2 or bytes(frames[0]) != ICANHAZ:
        raise MalformedMessage("an ICANHAZ command is exactly two frames: 'ICANHAZ?' and a subtree")
    try:
        subtree = bytes(frames[1]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("subtree is not UTF-8") from exc
    if not is_valid_subtree(subtree):
        raise MalformedMessage(f"subtree {subtree!r} is neither empty nor '/seg/.../'")
    return subtree


def kthxbai(seq: int, subtree: str, delta: str | None = None) -> KVMsg:
    return KVMsg(key=KTHXBAI, seq=seq, body=subtree.encode("utf-8"),
                 props={} if delta is None else {DELTA_PROPERTY: delta})


def hugz(seq: int) -> KVMsg:
    """A heartbeat. Frame 1 carries the server's current sequence, as the Guide's reference
    clone server does; RFC 12 clients ignore it, ours log it."""
    return KVMsg(key=HUGZ, seq=seq)
