"""The demo's airport on one machine: one central, one enrolment kiosk, one security lane and two
boarding gates, each the real daemon in its own process with its own CURVE key.

    central      gate-central on a SQLite file, loopback ports, CURVE
    SGN-K01      gate-kiosk: a folder camera, a serial boarding-pass scanner on a pty, the chip
                 reader's inbox, a demo CSCA it trusts
    SGN-SEC-1    gated following checkpoint:SGN (everyone departing SGN today)
    SGN-G12/G14  gated boarding gates (sync.boarding_gate): they follow the flights the
                 central assigns them, so `gate-central assign` moves a flight without a restart

Every turnstile is the simulator (no hardware here). This module writes the configs,
registers the principals, starts the processes and waits until each answers; what happens
at each of them is tools/demo_journey.py's job.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from kiosk.specimen import Issuer
from models.registry import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
from tools.demo_cast import AIRPORT, Cast
from tools.feedgen import CameraFolder

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "config" / "calibration-lfw-dev-default.json"  # the lanes' record (all LFW dev pairs)
REFERENCE_CALIBRATION = REPO / "config" / "calibration-lfw-dev-reference.json"  # the kiosk's live-vs-ID check
KIOSK = "SGN-K01"
SECURITY = "SGN-SEC-1"
FPS = 15.0


def operating_point(target: float, calibration: Path = CALIBRATION) -> float:
    """The 1:1 threshold `gate-eval calibrate` recorded for a false-match rate (README, "Accuracy")."""
    points = json.loads(calibration.read_text())["operating_points"]
    point = next(p for p in points if p["mode"] == "1:1" and p["target"] == target)
    if not point.get("supported"):
        raise RuntimeError(f"{calibration.name} cannot support FMR {target:g} (too few impostor comparisons)")
    return round(float(point["threshold"]), 3)


class Procs:
    """Child processes that must not outlive the demo, even on Ctrl-C."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], cwd: Path, logfile: Path) -> subprocess.Popen:
        f = open(logfile, "ab")
        # the children run the same checkout as the demo itself, whatever their working folder
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)}
        p = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        f.close()
        self.procs[name] = p
        return p

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        p = self.procs.pop(name, None)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def free_port_block(n: int = 4) -> int:
    """A base port with n free ports from it on loopback."""
    for base in range(25556, 27556, 7):
        free = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError("no free loopback ports for the demo central")


@dataclass
class Lane:
    gate_id: str
    folder: Path
    scopes: list[str]  # what the gate is registered for; a boarding gate: none (assigned flights)

    @property
    def config(self) -> Path:
        return self.folder / "gate.toml"

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def sock(self) -> Path:
        return self.state / "control.sock"

    @property
    def camera(self) -> Path:
        return self.folder / "camera"

    @property
    def boarding_gate(self) -> bool:
        return not self.scopes

    @property
    def short(self) -> str:
        return self.gate_id.removeprefix(f"{AIRPORT}-")


@dataclass
class Site:
    work: Path
    models: Path
    pad_manifests: list[str]  # manifest paths of the PAD pair; empty: not provisioned
    kiosk_threshold: float
    lane_threshold: float
    detector: str = DEFAULT_DETECTOR  # a name in `models` or a manifest path
    embedder: str = DEFAULT_EMBEDDER
    model_id: str = "dlib-resnet-v1"  # the embedder's, which the lanes accept templates of
    base_port: int = 0
    keys: Path = field(init=False)
    central_cfg: Path = field(init=False)
    kiosk_dir: Path = field(init=False)
    lanes: dict[str, Lane] = field(default_factory=dict)
    scanner_master: int | None = None  # the demo's end of the boarding-pass scanner's serial line
    scanner_slave: int | None = None
    scanner_port: str = ""
    csca: Issuer | None = None  # the demo state's CSCA: the kiosk trusts it, the demo issues ID cards under it

    def __post_init__(self) -> None:
        self.keys = self.work / "keys"
        self.central_cfg = self.work / "central.toml"
        self.kiosk_dir = self.work / "kiosk"

    @property
    def database(self) -> str:
        """The central's store, as its config names it."""
        from sync.config import load_central_config

        database = load_central_config(self.central_cfg).database
        if database is None:
            raise RuntimeError(f"{self.central_cfg} names no database")
        return database

    @property
    def template_key(self) -> Path:
        """The central's template key, as its config names it (beside the CURVE key by default)."""
        from sync.config import load_central_config

        return load_central_config(self.central_cfg).template_key_path

    @property
    def kiosk_cfg(self) -> Path:
        return self.kiosk_dir / "kiosk.toml"

    @property
    def kiosk_sock(self) -> Path:
        return self.kiosk_dir / "state" / "control.sock"

    @property
    def kiosk_state(self) -> Path:
        return self.kiosk_dir / "state"

    @property
    def kiosk_camera(self) -> Path:
        return self.kiosk_dir / "camera"

    @property
    def kiosk_inbox(self) -> Path:
        return self.kiosk_dir / "inbox"

    @property
    def security(self) -> Lane:
        return self.lanes[SECURITY]


def _pad_toml(site: Site) -> str:
    return (f"pad = {json.dumps(site.pad_manifests)}\npad_required = {'true' if site.pad_manifests else 'false'}")


def write_central_config(site: Site) -> None:
    site.central_cfg.write_text(f"""[central]
database = "central.db"
base_port = {site.base_port}
bind_host = "127.0.0.1"
secret_key_file = "{site.keys / 'central.key_secret'}"
heartbeat_s = 0.5
gate_silent_after_s = 5.0
""")


def write_kiosk_config(site: Site, csca_pem: Path) -> None:
    site.kiosk_dir.mkdir(parents=True, exist_ok=True)
    site.kiosk_cfg.write_text(f"""# The demo's check-in kiosk: boarding pass on the serial scanner, chip ID card
# through the inbox, folder camera; enrols into flight:<carrier><number>-<date> and checkpoint:{AIRPORT}.
[station]
id = "{KIOSK}"
airport = "{AIRPORT}"
timezone = "Asia/Ho_Chi_Minh"
state_dir = "state"
control_socket = "state/control.sock"
inbox = "inbox"

[camera]
source = "{site.kiosk_camera}"
fps = {FPS}
loop = true

[models]
dir = "{site.models}"
detector = "{site.detector}"
embedder = "{site.embedder}"
min_face_px = 40
threads = 1
{_pad_toml(site)}

[verify]
# 1:1 at FMR 1e-4 from gate-eval calibrate on the calibration data ({CALIBRATION.name}:
# LFW dev folds, news photos, not a kiosk camera; re-measure on the site's own before go-live).
threshold_1to1 = {site.kiosk_threshold}
frames_needed = 5
enrol_frames = 3
target_inter_eye_px = 40.0

[identity]
csca = ["{csca_pem}"]

[central]
host = "127.0.0.1"
base_port = {site.base_port}
secret_key_file = "{site.keys / (KIOSK + '.key_secret')}"
central_public_key_file = "{site.keys / 'central.key'}"

[scanner]
port = "{site.scanner_port}"
""")


def write_lane_config(site: Site, lane: Lane) -> None:
    lane.folder.mkdir(parents=True, exist_ok=True)
    scopes = json.dumps(lane.scopes)
    role = ("A boarding gate: it boards the flights `gate-central assign` gives it." if lane.boarding_gate
            else f"A security lane: everyone departing {AIRPORT} today (checkpoint:{AIRPORT}).")
    lane.config.write_text(f"""# {role}
[gate]
id = "{lane.gate_id}"
site = "{AIRPORT}"
state_dir = "state"
log_level = "WARNING"

[camera]
source = "{lane.camera}"
fps = {FPS}
loop = true

[models]
dir = "{site.models}"
detector = "{site.detector}"
embedder = "{site.embedder}"
min_face_px = 60
threads = 1
{_pad_toml(site)}

[lane]
lane_id = "{lane.gate_id}"
open_timeout_s = 4.0
result_display_s = 0.7

[lane.policy]
# 1:1 at FMR 1e-3 from gate-eval calibrate ({CALIBRATION.name}). The galleries here are one day at
# one airport (security) or one flight (boarding): FPIR is about their size times that.
threshold_1n = {site.lane_threshold}
min_margin = 0.03
threshold_1to1 = {site.lane_threshold}
deny_threshold = {site.lane_threshold}
acquire_timeout_s = 3.0

[lane.policy.pad]
threshold = 0.5
frames = 3

[device]
type = "sim"
auto_passage_ms = 1500

[sync]
central_host = "127.0.0.1"
base_port = {site.base_port}
scopes = {scopes}
boarding_gate = {'true' if lane.boarding_gate else 'false'}
accepted_models = ["{site.model_id}"]
secret_key_file = "{site.keys / (lane.gate_id + '.key_secret')}"
central_public_key_file = "{site.keys / 'central.key'}"
heartbeat_timeout_s = 2.0
reply_timeout_s = 1.0
health_interval_s = 1.0
""")


def open_scanner_line(site: Site) -> None:
    """The boarding-pass scanner's serial line: a pty, as a USB-CDC scanner appears; the kiosk
    reads the slave end through devices.barcode, the demo types passes into the master end."""
    master, slave = os.openpty()
    tty.setraw(slave)
    site.scanner_master, site.scanner_slave, site.scanner_port = master, slave, os.ttyname(slave)


def build(site: Site, cast: Cast) -> None:
    """Keys, configs and the central's principals: the kiosk, the security lane, the boarding
    gates, and the flights' first gates."""
    from kiosk.specimen import make_csca
    from sync.central import Central
    from sync.keys import generate_keypair_files, load_public_key

    site.base_port = free_port_block()
    generate_keypair_files(site.keys, "central")
    site.lanes = {SECURITY: Lane(SECURITY, site.work / "lanes" / SECURITY, [f"checkpoint:{AIRPORT}"])}
    for flight in cast.flights:
        site.lanes[flight.first_gate] = Lane(flight.first_gate, site.work / "lanes" / flight.first_gate, [])
    write_central_config(site)
    open_scanner_line(site)
    csca = make_csca("CSCA Demo Viet Nam")  # the state that issues the demo's ID cards
    site.kiosk_dir.mkdir(parents=True, exist_ok=True)
    (site.kiosk_dir / "csca.pem").write_bytes(csca.pem())
    site.csca = csca
    write_kiosk_config(site, site.kiosk_dir / "csca.pem")
    for folder in [site.kiosk_camera, *(lane.camera for lane in site.lanes.values())]:
        CameraFolder(folder)  # before the daemons start: camera.source must name a folder that exists
    central = Central(site.database, template_key=site.template_key)
    try:
        central.register_station(KIOSK, load_public_key(generate_keypair_files(site.keys, KIOSK).public), AIRPORT)
        for lane in site.lanes.values():
            write_lane_config(site, lane)
            central.register_gate(lane.gate_id, load_public_key(generate_keypair_files(site.keys, lane.gate_id).public),
                                  lane.scopes)
        for flight in cast.flights:
            central.assign_flights(flight.first_gate, [f"flight:{flight.label(cast.day)}"])
    finally:
        central.close()


def _wait(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start (see {log}):\n{tail}")
        time.sleep(0.25)


def _answers(sock: Path, ok) -> bool:
    from gate.control import ControlError, call

    try:
        return bool(ok(call(sock, "status", timeout=2)))
    except (ControlError, OSError, ValueError):
        return False


def start(site: Site, procs: Procs) -> None:
    """The central first (the others connect to it), then the kiosk and the lanes side by side."""
    py = sys.executable
    log = site.work / "central.log"
    central = procs.start("central", [py, "-m", "tools.gate_central", "--config", str(site.central_cfg)],
                          site.work, log)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", site.base_port)) == 0

    _wait("the central", listening, central, log, timeout=30)
    started = {KIOSK: procs.start(KIOSK, [py, "-m", "tools.gate_kiosk", "--config", str(site.kiosk_cfg)],
                                  site.kiosk_dir, site.kiosk_dir / "kiosk.log")}
    for lane in site.lanes.values():
        started[lane.gate_id] = procs.start(lane.gate_id, [py, "-m", "tools.gated", "--config", str(lane.config)],
                                            lane.folder, lane.folder / "gated.log")
    _wait(f"kiosk {KIOSK}", lambda: _answers(site.kiosk_sock, lambda st: st.get("ok")), started[KIOSK],
          site.kiosk_dir / "kiosk.log")
    for lane in site.lanes.values():
        _wait(f"lane {lane.gate_id}", lambda lane=lane: _answers(lane.sock, lambda st: st.get("mode") == "idle"),
              started[lane.gate_id], lane.folder / "gated.log")
