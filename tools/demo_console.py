"""`make demo DEMO_ARGS=--keep-console` (`python -m tools.demo --keep-console`): when the demo is
over, leave its central running with the operations console beside it, and print the console's
address and a login.

The demo's lane has finished its feed by then, so the fleet page shows its gate going offline a
few seconds later (`gate_silent_after_s`), with everything it did on its lane page and in the
audit search. Kept apart from tools/demo.py so the demo's own script stays about the demo: the
demo calls `keep_running(run)` once, before it stops its child processes.
"""
from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

USER = "demo-supervisor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def keep_running(run: Any) -> str:
    """Take the demo's central out of the processes the demo stops, start the console on a free
    loopback port with a fresh supervisor account, and return what to print."""
    from console.store import ConsoleStore
    from sync.central import Central

    central_proc = run.procs.procs.pop("central", None)
    if central_proc is None or central_proc.poll() is not None:
        return "--keep-console: the demo's central is not running, so there is no console to keep"
    toml: Path = run.central_cfg
    port = _free_port()
    text = toml.read_text().split("\n[console]")[0].rstrip()
    toml.write_text(f"{text}\n\n[console]\nbind = \"127.0.0.1\"\nport = {port}\nrefresh_s = 2.0\n")
    password = secrets.token_urlsafe(12)
    central = Central(run.ccfg.database, template_key=run.ccfg.template_key_path)
    try:
        store = ConsoleStore(central.db)
        who = f"demo --keep-console (unix {pwd.getpwuid(os.getuid()).pw_name})"
        if store.account(USER) is None:
            store.add_account(USER, "supervisor", password, who)
        else:
            store.set_password(USER, password, who)
    finally:
        central.close()
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (repo, os.environ.get("PYTHONPATH")) if x)}
    with open(run.work / "console.log", "ab") as log:
        console = subprocess.Popen([sys.executable, "-m", "tools.gate_central", "--config", str(toml), "console"],
                                   cwd=run.work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    if not _up(port):
        console.kill()
        return f"--keep-console: the console did not start; see {run.work / 'console.log'}"
    pids = f"{central_proc.pid} {console.pid}"
    (run.work / "kept.pids").write_text(pids + "\n")
    return (f"\noperations console: http://127.0.0.1:{port}/   log in as {USER} / {password} (supervisor)\n"
            f"the central and the console keep running; stop them with: kill {pids}")
