"""Throwaway PostgreSQL clusters on loopback, for tests and benchmarks.

The machine kind this project runs on has the Debian PostgreSQL server binaries
(/usr/lib/postgresql/<version>/bin) but no running server. `LocalCluster` runs initdb and
pg_ctl itself on a free loopback port, as an unprivileged user when started as root (the
server refuses to run as root), and can stand up a streaming-replication hot standby of itself
(pg_basebackup -R) for failover tests. Nothing here is for production: production runs a
managed PostgreSQL (Patroni, docs/operations.md).

Set EDGEGATE_TEST_PG_DSN to a superuser connection string to point tests at an existing server
instead (each test then gets its own database on it).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "edgegate"


class ClusterError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The newest PostgreSQL server bin directory on this machine."""
    explicit = os.environ.get("EDGEGATE_PG_BINDIR")
    candidates = [explicit] if explicit else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name) if
        Path(p).parent.name.isdigit() else 0, reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise ClusterError("no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin; "
                       "install the Debian package postgresql, or set EDGEGATE_TEST_PG_DSN / EDGEGATE_PG_BINDIR)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The unprivileged account to run the server as, when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ClusterError("running as root and no unprivileged 'postgres' account exists to run PostgreSQL as")


@dataclass
class LocalCluster:
    """One PostgreSQL server: a data directory, a port, a log file."""

    root: Path
    port: int = field(default_factory=free_port)
    bindir: Path = field(default_factory=find_bindir)
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "server.log"
        self.user = _run_as()

    # ----- commands ----------------------------------------------------------------------

    def _cmd(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = list(args)
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        return proc

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.user:
            pw = pwd.getpwnam(self.user)
            for p in [path, *path.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._own(self.socket_dir)
        self.log.touch()
        self._own(self.log.parent)

    def init(self, fast: bool = True) -> "LocalCluster":
        """initdb with trust authentication on loopback only. `fast` turns off fsync (tests:
        the throwaway server's durability is not what they measure); benchmarks and failover
        tests keep it on."""
        self._prepare_dirs()
        self._own(self.data)
        os.chmod(self.data, 0o700)
        self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                  "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'", "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'", "max_connections": "200",
            "shared_buffers": "128MB", "wal_level": "replica", "max_wal_senders": "10",
            "hot_standby": "on", "wal_keep_size": "256MB",
        }
        if fast:
            conf.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        conf.update(self.settings)
        self.write_conf(conf)
        hba = self.data / "pg_hba.conf"
        with open(hba, "a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")
        return self

    def write_conf(self, conf: dict[str, str]) -> None:
        with open(self.data / "postgresql.auto.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def start(self, timeout: float = 60) -> "LocalCluster":
        self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t",
                  str(int(timeout)), "start", timeout=timeout + 10)
        return self

    def stop(self, mode: str = "fast") -> None:
        self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def kill9(self) -> None:
        """What a power cut does to the server: SIGKILL to the postmaster (its children exit)."""
        pid = self.postmaster_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _running(pid):
                time.sleep(0.02)
        # children notice the postmaster is gone within a moment; wait until the port is free
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.05)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def promote(self) -> None:
        self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def standby(self, root: Path, port: int | None = None, app_name: str = "standby") -> "LocalCluster":
        """A hot standby streaming from this server (pg_basebackup -R), not yet started. It
        inherits this server's settings (the base backup copies postgresql.auto.conf) except
        `synchronous_standby_names`: once promoted it has no standby of its own, and would
        otherwise make every commit wait forever (what Patroni's non-strict synchronous_mode
        does too: a lone primary keeps accepting writes)."""
        s = LocalCluster(Path(root), port=port or free_port(), bindir=self.bindir)
        s._prepare_dirs()
        s._own(s.root)
        s._cmd(str(self.bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
               "-D", str(s.data), "-R", "-X", "stream", "-c", "fast", "-d",
               f"application_name={app_name}")
        os.chmod(s.data, 0o700)
        s.write_conf({"port": str(s.port), "unix_socket_directories": f"'{s.socket_dir}'",
                      "primary_conninfo": f"'host=127.0.0.1 port={self.port} user={SUPERUSER} "
                                          f"application_name={app_name}'",
                      "synchronous_standby_names": "''"})
        return s

    def replication_state(self) -> list[tuple[str, str, str]]:
        """(application_name, state, sync_state) of each standby streaming from this server."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(
                "SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1")]

    def is_in_recovery(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])

    # ----- connection strings ------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=5).stdout.lower()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "c.utf8" in out or "c.utf-8" in out


def _running(pid: int) -> bool:
    """False once the process is gone or a zombie: a killed postmaster's parent is whoever
    reaps orphans here, which can take a second (measured 1.3 s in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def temp_cluster(prefix: str = "edgegate-pg-", fast: bool = True, **settings: str) -> LocalCluster:
    """A started cluster in a new temporary directory (caller calls .remove())."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    return LocalCluster(root, settings=dict(settings)).init(fast=fast).start()


@dataclass
class ReplicatedPair:
    """A primary and a synchronous hot standby on this machine: two data directories, two
    ports, streaming replication. A commit is acknowledged only once the standby has flushed
    it (`synchronous_standby_names` names the standby, `synchronous_commit = on`, fsync on),
    so `kill -9` of the primary followed by `promote()` of the standby loses no acknowledged
    transaction: the production layout of docs/operations.md, with `pg_ctl promote` standing
    in for Patroni."""

    primary: LocalCluster
    standby: LocalCluster

    def multi_host_dsn(self, dbname: str) -> str:
        """The libpq multi-host string a central node is configured with: whichever server
        accepts writes, tried in order."""
        return (f"postgresql://{SUPERUSER}@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/{dbname}"
                "?target_session_attrs=read-write")

    def wait_synchronous(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.primary.replication_state()
            if any(s == "streaming" and sync == "sync" for _, s, sync in state):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"the standby did not become a synchronous streaming standby: {state}")
            time.sleep(0.1)

    def fail_over(self) -> None:
        """Power cut on the primary, then promote the standby (what Patroni does on losing
        the leader key); returns once the new primary accepts writes."""
        self.primary.kill9()
        self.standby.promote()

    def remove(self) -> None:
        self.standby.remove()
        self.primary.remove()
        shutil.rmtree(self.primary.root.parent, ignore_errors=True)


def replicated_pair(prefix: str = "edgegate-pg-pair-", fast: bool = False,
                    standby_name: str = "standby") -> ReplicatedPair:
    """A started primary + synchronous standby in a new temporary directory (caller calls
    .remove()). Durable by default (fsync on): failover tests measure exactly that."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)  # the server's account must reach both data directories
    primary = LocalCluster(root / "primary", settings={
        "synchronous_standby_names": f"'{standby_name}'", "synchronous_commit": "on",
        "wal_sender_timeout": "'5s'", "wal_receiver_status_interval": "'1s'"}).init(fast=fast)
    primary.start()
    try:
        standby = primary.standby(root / "standby", app_name=standby_name).start()
    except BaseException:
        primary.remove()
        shutil.rmtree(root, ignore_errors=True)
        raise
    pair = ReplicatedPair(primary, standby)
    try:
        pair.wait_synchronous()
    except BaseException:
        pair.remove()
        raise
    return pair


def create_database(admin_dsn: str, name: str) -> str:
    """CREATE DATABASE on the server `admin_dsn` points at; returns the new database's DSN."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return make_conninfo(**params)


def drop_database(admin_dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
