"""Set-up for the console's tests: a real central (`gate-central` in its own process), simulated
gates (tools/sim_gate.py: the real lane, audit log and sync agent in their own processes, so a
test can kill one with SIGKILL), and the console served by `gate-central console` over HTTP.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from console.store import ConsoleStore
from sync.central import Central
from tests.sync_helpers import MODEL, Deployment, wait_until

REPO = Path(__file__).resolve().parents[1]
PASSWORDS = {"viv": "viewer-password-1", "sam": "supervisor-password-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)}


def add_accounts(database: str) -> None:
    """A viewer (viv) and a supervisor (sam)."""
    central = Central(database)
    try:
        store = ConsoleStore(central.db)
        store.add_account("viv", "viewer", PASSWORDS["viv"], "test-setup")
        store.add_account("sam", "supervisor", PASSWORDS["sam"], "test-setup")
    finally:
        central.close()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text()[-n:]
        except OSError:
            return ""


@dataclass
class SimGateHandle:
    gate_id: str
    proc: Proc
    commands: Path
    status: Path

    def send(self, **cmd: Any) -> None:
        with open(self.commands, "a", encoding="utf-8") as f:
            f.write(json.dumps(cmd) + "\n")

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}


@dataclass
class Stack:
    """One central process, its console process and any number of simulated gate processes."""

    dep: Deployment
    root: Path
    procs: list[Proc] = field(default_factory=list)
    gates: dict[str, SimGateHandle] = field(default_factory=dict)
    console_url: str = ""
    toml: Path | None = None

    def _spawn(self, name: str, argv: Sequence[str]) -> Proc:
        log = self.root / f"{name}.log"
        f = open(log, "ab")
        p = subprocess.Popen(list(argv), cwd=self.root, stdout=f, stderr=subprocess.STDOUT, env=_env(),
                             start_new_session=True)
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def start_central(self, **overrides: Any) -> Proc:
        self.toml = self.dep.central_toml(**overrides)
        proc = self._spawn("central", [sys.executable, "-m", "tools.gate_central", "--config", str(self.toml)])
        return proc

    def write_console_table(self, **console: Any) -> Path:
        assert self.toml is not None
        text = self.toml.read_text().split("[console]")[0]
        lines = ["[console]"] + [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}"
                                 for k, v in console.items()]
        self.toml.write_text(text.rstrip() + "\n\n" + "\n".join(lines) + "\n")
        return self.toml

    def start_console(self, wait: bool = True, **console: Any) -> Proc:
        console.setdefault("port", free_port())
        console.setdefault("refresh_s", 1.0)
        self.write_console_table(**console)
        proc = self._spawn("console", [sys.executable, "-m", "tools.gate_central", "--config", str(self.toml),
                                       "console"])
        scheme = "https" if console.get("tls_cert_file") else "http"
        host = console.get("bind", "127.0.0.1")
        self.console_url = f"{scheme}://{host}:{console['port']}"
        if wait:
            assert wait_until(lambda: _port_open(host, console["port"]) or not proc.alive(), timeout=30, interval=0.1)
            assert proc.alive(), proc.tail()
        return proc

    def add_sim_gate(self, gate_id: str, site: str, lane_id: str, scopes: Sequence[str] = ()) -> SimGateHandle:
        scopes = list(scopes) or [f"lane:{lane_id}"]
        secret = self.dep.add_gate(gate_id, scopes)
        folder = self.root / f"gate-{gate_id}"
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"gate_id": gate_id, "site": site, "lane_id": lane_id, "state_dir": str(folder / "state"),
                "commands": str(folder / "commands.jsonl"), "status": str(folder / "status.json"),
                "sync": {"central_host": "127.0.0.1", "base_port": self.dep.base_port, "scopes": scopes,
                         "accepted_models": [MODEL], "secret_key_file": str(secret),
                         "central_public_key_file": str(self.dep.central_public), "heartbeat_timeout_s": 2.0,
                         "reply_timeout_s": 1.0, "request_retries": 2, "retry_backoff_max_s": 1.0,
                         "audit_idle_poll_s": 0.1, "health_interval_s": 0.5}}
        (folder / "spec.json").write_text(json.dumps(spec))
        proc = self._spawn(f"gate-{gate_id}", [sys.executable, "-m", "tools.sim_gate", "--spec",
                                               str(folder / "spec.json")])
        h = SimGateHandle(gate_id, proc, Path(spec["commands"]), Path(spec["status"]))
        self.gates[gate_id] = h
        return h

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.kill(signal.SIGTERM)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Browserless:
    """An HTTP client with a cookie jar, as a browser without script: for the access tests."""

    def __init__(self, base: str, context=None):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        handlers: list = [urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def request(self, method: str, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, _headers(r.headers), r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, _headers(e.headers), e.read().decode("utf-8", "replace")

    def get(self, path: str, **kw) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path, **kw)

    def post(self, path: str, data: dict[str, str], **kw) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, data, **kw)

    def field(self, html: str, name: str) -> str:
        import re

        m = re.search(rf'name="{name}" value="([^"]*)"', html)
        assert m, f"no {name} field in the page"
        return m.group(1)

    def login(self, user: str, password: str | None = None) -> tuple[int, dict[str, str], str]:
        status, _, page = self.get("/login")
        assert status == 200
        return self.post("/login", {"username": user, "password": password or PASSWORDS[user],
                                     "login_csrf": self.field(page, "login_csrf"), "next": "/fleet"})

    def cookie(self, name: str):
        return next((c for c in self.jar if c.name == name), None)


def _headers(msg) -> dict[str, str]:
    """Lower-case names; repeated headers (Set-Cookie) joined with newlines."""
    out: dict[str, str] = {}
    for k, v in msg.items():
        k = k.lower()
        out[k] = f"{out[k]}\n{v}" if k in out else v
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
