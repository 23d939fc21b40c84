"""The local control socket between `gatectl` (ground staff) and the running `gated`.

A Unix socket, not TCP: only people logged into the gate itself, in the configured group
(mode 0660), can drive the lane, and the kernel tells us who they are (SO_PEERCRED), which
goes into the audit record next to the operator id they typed. One JSON request per line,
one JSON reply per line; a handler may return an iterator to stream (events --follow).
"""
from __future__ import annotations

import grp
import json
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class ControlError(RuntimeError):
    """gatectl could not talk to the daemon; the message says why and what to do."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


# A reply, or a stream of them; a None in the stream means "idle" (the server then checks that
# the client is still there).
Handler = Callable[[dict, Peer], "dict | Iterator[dict | None]"]


def _peer(conn: socket.socket) -> Peer:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", creds))


# Clients served at once (each has a thread; a follower holds one until it leaves). Staff tools
# and the sync agent's health need a handful; the cap keeps a runaway script from exhausting threads.
MAX_CLIENTS = 32


class ControlServer:
    def __init__(self, path: Path, handler: Handler, group: str | None = None, mode: int = 0o660):
        self.path = Path(path)
        self.handler = handler
        self.group, self.mode = group, mode
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def start(self) -> "ControlServer":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a stale socket from a crashed daemon
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except KeyError:
                s.close()
                raise ControlError(f"control.group = {self.group!r}: no such group on this system") from None
        os.chmod(self.path, self.mode)
        s.listen(8)
        s.settimeout(0.2)
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self._sock:
            self._sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        sock = self._sock
        if sock is None:  # start() binds before it starts this thread
            return
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):  # hundreds of `events --follow`: refuse, stay up
                with conn:
                    try:
                        conn.settimeout(0.5)
                        conn.recv(MAX_REQUEST)  # take the request, so the client reads the refusal
                        conn.sendall(_line({"ok": False, "error": f"too many control clients (at most "
                                                                  f"{MAX_CLIENTS}); close a gatectl --follow"}))
                    except OSError:
                        pass
                continue
            threading.Thread(target=self._client_slot, args=(conn,), name="control-client", daemon=True).start()

    def _client_slot(self, conn: socket.socket) -> None:
        try:
            self._client(conn)
        finally:
            self._slots.release()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                peer = _peer(conn)
                buf = b""
                while b"\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > MAX_REQUEST:
                        conn.sendall(_line({"ok": False, "error": "request too large"}))
                        return
                try:
                    req = json.loads(buf.split(b"\n", 1)[0])
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError("request must be an object with a 'cmd' string")
                except ValueError as e:
                    conn.sendall(_line({"ok": False, "error": f"bad request: {e}"}))
                    return
                try:
                    out = self.handler(req, peer)
                except Exception as e:  # a handler bug must not take down the control socket
                    log.exception("control command %r failed", req.get("cmd"))
                    out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                if isinstance(out, dict):
                    conn.sendall(_line(out))
                    return
                conn.settimeout(None)
                for item in out:  # streaming reply; ends when the client goes away
                    if self._stop.is_set():
                        return
                    if item is None:  # the stream is idle: is anyone still listening?
                        if _gone(conn):
                            return
                        continue
                    conn.sendall(_line(item))
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                return


def _gone(conn: socket.socket) -> bool:
    """Whether the client closed its end (a follower that left frees its slot)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _line(obj: Any) -> bytes:
    return (json.dumps(obj, default=str) + "\n").encode()


def call(path: Path, cmd: str, stream: bool = False, timeout: float = 10.0, **args) -> Any:
    """Send one command; return the reply dict, or an iterator of dicts when stream=True."""
    path = Path(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except FileNotFoundError:
        s.close()
        raise ControlError(f"gated is not running (no control socket at {path})") from None
    except ConnectionRefusedError:
        s.close()
        raise ControlError(f"gated is not running (stale control socket at {path})") from None
    except PermissionError:
        s.close()
        raise ControlError(f"permission denied on {path}: ask an administrator to add you to the gate "
                           f"operators' group (control.group in the gate config)") from None
    try:
        s.sendall(_line({"cmd": cmd, **args}))
    except OSError as e:
        s.close()
        raise ControlError(f"gated closed the connection ({e.strerror or e})") from None
    f = s.makefile("rb")

    def lines() -> Iterator[dict]:
        try:
            for raw in f:
                yield json.loads(raw)
        finally:
            f.close()
            s.close()

    if stream:
        s.settimeout(None)
        return lines()
    try:
        raw = f.readline()
    except socket.timeout:
        raise ControlError(f"gated did not answer within {timeout:.0f} s") from None
    except OSError as e:  # the daemon stopped while answering
        raise ControlError(f"gated closed the connection ({e.strerror or e})") from None
    finally:
        f.close()
        s.close()
    if not raw:
        raise ControlError("gated closed the connection without answering")
    return json.loads(raw)
