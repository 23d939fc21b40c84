"""gated: one lane's daemon. Capture → vision → lane step → audit, then devices.

The lane core (gate.lane) is pure; this module is the only place with side effects, and it
runs a step's actions strictly in order, so an opening is never commanded before its audit
record is durable. Capture, device I/O, the control socket and sync each have their own
thread; the main loop only takes the newest frame, drains queues and pings the watchdog, so a
stuck loop is a restarted daemon rather than a gate that silently stops deciding.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import devices
from gate import lane as lanes
from gate.actions import Unlock
from gate.audit import AuditLog, AuditWriteError
from gate.config import GateConfig
from gate.decide import Outcome
from gate.events import (
    AuditRestored,
    DeviceFault,
    DeviceRestored,
    DoorForced,
    FireAlarm,
    PassageComplete,
    StaffCommand,
    Tamper,
    Tick,
    TokenRead,
)
from gate.executor import BARRIER, ActionExecutor
from gate.notify import Notifier
from gate.observation import FrameObservation
from gate.observe import observe, store_lookup
from gate.passback import PassbackStore
from gate.refer_crops import CROPS_DIR_NAME, CropError, ReferCropStore
from gate.sqlite_store import InsecureFileError, parse_utc_iso
from gate.watchlist import WatchlistStore
from sync.template_crypto import TemplateCipher, TemplateKeyError

if TYPE_CHECKING:  # imported where used, so a lane without them never loads them
    from devices.barcode import BarcodeScanner
    from gate.control import ControlServer
    from gate.staff_auth import StaffRegistry
    from sync.agent import GateAgent

log = logging.getLogger("gated")

SOFTWARE_VERSION = "0.1.0"
TICK_S = 0.1
CAMERA = "camera"


def _device_online(daemon: "LaneDaemon", t: float, e) -> DeviceRestored | None:
    return DeviceRestored(t, BARRIER) if BARRIER in daemon.lane.faults else None


# Device event type -> the lane event it becomes (None: nothing for the lane to hear).
_FROM_DEVICE = {
    devices.PassageComplete: lambda d, t, e: PassageComplete(t, e.direction),
    devices.DoorForced: lambda d, t, e: DoorForced(t, "door forced"),
    devices.FireAlarm: lambda d, t, e: FireAlarm(t, e.active),
    devices.Tamper: lambda d, t, e: Tamper(t, "tamper switch"),
    devices.TokenRead: lambda d, t, e: d._resolve_token(t, e),
    devices.DeviceOffline: lambda d, t, e: DeviceFault(t, BARRIER, e.reason),
    devices.DeviceOnline: _device_online,
}


class StartupError(RuntimeError):
    """The lane cannot start; the message says what to fix. The lane stays locked."""


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _private(what: str, opener):
    """Open a key or store file, turning a loose-permission or wrong-key refusal into a
    StartupError that names the file and the fix (gated prints it; no traceback)."""
    try:
        return opener()
    except (InsecureFileError, TemplateKeyError) as e:
        raise StartupError(f"{what}: {e}") from None


@dataclass
class LaneMetrics:
    """Counters for `gatectl status`, health reports and `gate-bench lane`."""

    frames: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    last_decision_at: str | None = None
    unlocks: list[dict] = field(default_factory=list)  # recent openings with their latency
    alerts: list[dict] = field(default_factory=list)
    vision_ms: list[float] = field(default_factory=list)

    def keep_recent(self, n: int = 200) -> None:
        for name in ("unlocks", "alerts", "vision_ms"):
            v = getattr(self, name)
            if len(v) > n:
                del v[: len(v) - n]


@dataclass
class _Pending:
    """A gatectl command waiting for the main loop."""

    event: StaffCommand
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict = field(default_factory=dict)


class LaneDaemon:
    UPLOAD_GRACE_S = 2.0  # on stop, how long to wait for the central to acknowledge the last records
    AUDIT_PROBE_S = 2.0  # while the audit log is failing (disk full), how often to try it again
    def __init__(self, cfg: GateConfig, *, pipeline=None, driver=None, source=None, clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock
        self._pipeline = pipeline
        self._driver = driver
        self._source = source
        self.metrics = LaneMetrics()
        self.stop_requested = threading.Event()
        self._commands: queue.Queue[_Pending] = queue.Queue()
        self.state: lanes.LaneState | None = None
        self.status_snapshot: dict[str, Any] = {"mode": "starting"}
        self.agent: GateAgent | None = None
        self.audit_chain_alarm = ""  # set by the sync uploader (see _audit_chain_alarm)
        self.control: ControlServer | None = None
        self.pad: Any = None  # vision.pad's loaded models, None when not provisioned
        self.scanner: BarcodeScanner | None = None
        self.staff: StaffRegistry | None = None  # when control.staff_file is set
        self._lock_fd: int | None = None
        self._last_frame_index = -1
        self._last_frame_t: float | None = None
        self._frame_t_capture: float | None = None
        self._thumb = None
        self._empty_scene = None  # thumbnail of the last frame in which no face was found
        self.refer_crops: ReferCropStore | None = None  # [privacy] keep_refer_crops (opt-in)
        # (image, FrameResult) of the last frame run through the pipeline
        self._last_processed: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------ start-up
    def open(self) -> None:
        """Open every part or refuse to start with a clear message (nothing half-open)."""
        cfg = self.cfg
        state_dir = cfg.gate.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._protect_state_dir(state_dir)
        self._check_free_space(state_dir)
        self._take_instance_lock(state_dir)
        if self._pipeline is None:
            from models.manifest import ModelError
            from vision.loading import load_pipeline

            try:
                self._pipeline = load_pipeline(cfg.models.dir, cfg.models.detector, cfg.models.embedder,
                                               flip=cfg.models.flip, threads=cfg.models.threads,
                                               thresholds=cfg.quality,
                                               detector_opts={"min_face": cfg.models.min_face_px})
            except ModelError as e:
                raise StartupError(f"models: {e}") from None
        self._check_calibration()
        self.pad = self._load_pad()
        from sync.template_crypto import TemplateCipher
        from vision.match import Matcher

        self.matcher = Matcher(self._pipeline.embedder.dim, self._pipeline.model_id,
                               exact_dir=state_dir if cfg.watchlist.exact_on_disk else None,
                               scan_threads=cfg.watchlist.scan_threads)
        cipher = None
        if cfg.watchlist.encrypt_templates:
            keyfile = cfg.template_key_file
            keyfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            cipher = _private("template key", lambda: TemplateCipher.load_or_create(keyfile))
        self.store = _private("watchlist", lambda: WatchlistStore(state_dir, cipher=cipher))
        self.refer_crops = self._open_refer_crops(cipher)
        if self.store.model_id() not in (None, self._pipeline.model_id):
            log.warning("watchlist holds templates of model %s; this lane runs %s: only matching templates load",
                        self.store.model_id(), self._pipeline.model_id)
        self.store.set_listener(self.matcher, self._pipeline.model_id)
        active = [(s.subject_id, s.vectors) for s in self.store.iter_active(_utc_now(), self._pipeline.model_id)]
        self.matcher.add_many(active)
        loaded = len(active)
        log.info("watchlist: %d subjects loaded for model %s (sequence %d)", loaded, self._pipeline.model_id,
                 self.store.sequence())
        self.lookup = store_lookup(self.store)
        max_bytes = int(cfg.audit.max_db_mb * 1024 * 1024) if cfg.audit.max_db_mb else None
        self.audit = _private("audit log", lambda: AuditLog(state_dir, max_db_bytes=max_bytes))
        if self._driver is None:
            self._driver = devices.make_driver(cfg.device)
        try:
            self._driver.open()
        except devices.DeviceError as e:  # offline at start: the lane starts locked and faulted
            log.error("turnstile driver: %s", e)
        self.passback = _private("anti-passback store", lambda: PassbackStore(state_dir))
        self.executor = ActionExecutor(self.audit, self._driver, clock=self.clock,
                                       stamp={"gate": cfg.gate.id, "pad": self.pad_status},
                                       on_written=self._audit_written, on_unlock=self._note_unlock,
                                       on_passage=self._record_passage)
        if cfg.scanner is not None:  # its tokens join the driver's event queue
            from devices.barcode import BarcodeScanner

            self.scanner = BarcodeScanner(cfg.scanner, events=self._driver.events).open()
        if self._source is None:
            from vision.capture import open_source

            c = cfg.camera
            self._source = open_source(c.source, fps=c.fps, loop=c.loop, width=c.width, height=c.height)
        from vision.capture import FrameGrabber

        self.grabber = FrameGrabber(self._source, backoff_max_s=cfg.camera.reconnect_max_s).start()
        from gate.control import ControlServer
        from gate.staff import ControlHandler
        from gate.staff_auth import StaffAuthError, StaffRegistry

        if cfg.control.staff_file is not None:
            try:
                self.staff = StaffRegistry(cfg.control.staff_file)
            except (StaffAuthError, InsecureFileError) as e:
                raise StartupError(f"control.staff_file: {e}") from None

        self.control = ControlServer(cfg.control_socket, ControlHandler(self), group=cfg.control.group).start()
        if cfg.sync is not None:
            from gate.watchlist_sync import WatchlistSyncSink
            from sync.agent import GateAgent

            self.agent = GateAgent(cfg.sync, WatchlistSyncSink(self.store), self.audit, self.health,
                                   on_audit_alarm=self._audit_chain_alarm)
            try:
                self.agent.start()
            except Exception as e:  # bad keys: refuse to run half-configured
                raise StartupError(f"sync: {e}") from None
        self.notifier = Notifier()

    def _protect_state_dir(self, state_dir: Path) -> None:
        """Owner-only (0700); with a control group and the socket inside the state dir, 0710 and
        that group, so its members can reach the socket (search permission only: they cannot
        list the folder, and every store file in it is 0600)."""
        group = self.cfg.control.group
        if not group or self.cfg.control_socket.parent.resolve() != state_dir.resolve():
            os.chmod(state_dir, 0o700)
            return
        import grp

        try:
            gid = grp.getgrnam(group).gr_gid
            os.chown(state_dir, -1, gid)
        except KeyError:
            raise StartupError(f"control.group = {group!r}: no such group on this system") from None
        except PermissionError:
            raise StartupError(f"control.group = {group!r}: this user may not give {state_dir} to that group "
                               "(add the lane's user to the group)") from None
        os.chmod(state_dir, 0o710)

    def _check_free_space(self, state_dir: Path) -> None:
        st = os.statvfs(state_dir)
        free_mb = st.f_bavail * st.f_frsize / 2 ** 20
        if free_mb < self.cfg.gate.min_free_mb:
            log.error("ALERT disk_full: %s has %.1f MB free", state_dir, free_mb)
            raise StartupError(f"the disk of state dir {state_dir} has {free_mb:.1f} MB free, below gate.min_free_mb "
                               f"= {self.cfg.gate.min_free_mb:g}: free space (old logs, images) before starting; "
                               "the lane stays locked")

    def _take_instance_lock(self, state_dir: Path) -> None:
        """One daemon per state dir: a second one would take over the control socket and write
        the same audit chain. The lock is the kernel's (flock), so it dies with the process."""
        import fcntl

        fd = os.open(state_dir / "gated.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StartupError(f"another gated (pid {holder}) is running on state dir {state_dir}; stop it first "
                               "(systemctl stop edgegate-gated) or give this lane its own state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_refer_crops(self, cipher) -> ReferCropStore | None:
        """Opened when the setting is on, or when crops are left from when it was: those still
        expire on schedule after the setting is turned off."""
        p = self.cfg.privacy
        if not p.keep_refer_crops and not (self.cfg.gate.state_dir / CROPS_DIR_NAME).exists():
            return None
        if cipher is None:  # crops are sealed even where templates are not
            keyfile = self.cfg.template_key_file
            keyfile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            cipher = _private("template key", lambda: TemplateCipher.load_or_create(keyfile))
        return _private("refer crops", lambda: ReferCropStore(self.cfg.gate.state_dir, cipher,
                                                              timedelta(days=p.refer_crop_retention_days)))

    def _keep_refer_crop(self, record) -> None:
        """Seal the primary face of the last processed frame as the crop of a REFER decision,
        named after its audit record. No record (audit write failed) or no face: no crop."""
        if self.refer_crops is None or self._last_processed is None or self._last_processed[1].primary is None:
            return
        image, result = self._last_processed
        if record is None:
            log.warning("REFER decision without its audit record: no face crop kept")
            return
        try:
            self.refer_crops.save(image, result.primary.face.box, record.seq, parse_utc_iso(record.ts))
        except (CropError, OSError) as e:
            log.error("could not keep the face crop of audit record %d: %s", record.seq, e)

    def _load_pad(self):
        m = self.cfg.models
        if not m.pad:
            if m.pad_required:
                raise StartupError("models.pad is empty but models.pad_required = true: this lane must not run "
                                   "without presentation-attack detection. Provision a PAD model, or set "
                                   "pad_required = false to accept the risk (every audit record then says "
                                   "'pad: not provisioned').")
            log.warning("no presentation-attack detection provisioned: audit records say 'pad: not provisioned'")
            return None
        from models.manifest import ModelError
        from vision.loading import resolve_manifest
        from vision.pad import load_pad

        try:
            return load_pad([resolve_manifest(m.dir, n) for n in m.pad], threads=m.threads)
        except ModelError as e:
            raise StartupError(f"models.pad: {e}") from None

    @property
    def lane(self) -> lanes.LaneState:
        """The lane's state, for the main loop: `run` starts the lane before anything on it reads
        this (`state` stays None until then, which `health` and `close` allow for)."""
        if self.state is None:
            raise RuntimeError("the lane has not been started (LaneDaemon.run)")
        return self.state

    @property
    def pad_status(self) -> str:
        return "not provisioned" if self.pad is None else "+".join(self.cfg.models.pad)

    # ------------------------------------------------------------------ actions
    def _run(self, actions, decision=None) -> None:
        """Run a step's actions; then keep the crop of a new REFER `decision` (named after the
        record the executor wrote for it) and feed the follow-up events back to the lane."""
        done = self.executor.run(actions, audit_failing=lanes.AUDIT_LOG in self.lane.faults)
        for a in done.alerts:
            self.metrics.alerts.append({"kind": a.kind, "details": dict(a.details), "at": _utc_now().isoformat()})
        if decision is not None and decision.outcome is Outcome.REFER and self.cfg.privacy.keep_refer_crops:
            self._keep_refer_crop(done.row_for("decision"))
        for ev in done.followups:
            self._step(ev)

    def _probe_audit(self, now: float) -> None:
        """The lane stays locked while its audit log cannot be written; it only learns that
        space is back by writing, so it writes a small record now and then."""
        try:
            self.audit.append({"event": "audit_probe", "lane": self.cfg.lane.lane_id, "gate": self.cfg.gate.id,
                               "pad": self.pad_status})
        except AuditWriteError:
            return
        log.warning("audit log writable again; returning the lane to service")
        self._step(AuditRestored(now))

    @property
    def flights(self) -> frozenset[str]:
        """The flight: scopes this lane follows (a boarding gate): configured, and the ones the
        central assigns to it now (a gate change needs no restart)."""
        if self.cfg.sync is None:
            return frozenset()
        from sync.scopes import scope_label

        scopes = self.agent.scopes() if self.agent is not None else self.cfg.sync.scopes
        return frozenset(label for label in map(scope_label, scopes) if label.startswith("flight:"))

    @property
    def _passback_keep(self) -> timedelta:
        p = self.cfg.lane.passback
        return timedelta(seconds=max(p.window_s, p.per_flight_h * 3600 if self.flights else 0.0))

    def _record_passage(self, subject_id: str) -> None:
        self.passback.record(subject_id, self.cfg.lane.lane_id, _utc_now(), self.flights)

    def _audit_written(self, _row) -> None:
        if self.agent is not None:
            self.agent.notify_audit()

    def _note_unlock(self, t: float, a: Unlock) -> None:
        d = self.state.decision if self.state is not None else None
        self.metrics.unlocks.append({
            "at_monotonic": t, "subject_id": d.subject_id if d is not None else None,
            "direction": str(a.direction), "hold": a.hold,
            "frame_captured_at": self._frame_t_capture})

    def _step(self, event) -> None:
        before = self.lane.decision
        self.state, actions = lanes.step(self.lane, event)
        d = self.state.decision
        if d is not None and d is not before:
            self.metrics.decisions[str(d.outcome)] = self.metrics.decisions.get(str(d.outcome), 0) + 1
            self.metrics.last_decision_at = _utc_now().isoformat()
        self._run(actions, d if d is not None and d is not before else None)

    # ------------------------------------------------------------------ inputs
    def _device_events(self) -> None:
        q = self._driver.events
        while True:
            try:
                e = q.get_nowait()
            except queue.Empty:
                return
            to_lane = _FROM_DEVICE.get(type(e))
            if to_lane is None:
                log.warning("ignoring a device event the lane has no use for: %r", e)
                continue
            ev = to_lane(self, self.clock(), e)
            if ev is not None:
                self._step(ev)

    def _resolve_token(self, t: float, e) -> TokenRead:
        """A boarding pass or ID read carries the traveller's pseudonymous subject id (as
        enrolled); the raw text never enters the lane or the audit log."""
        kind = {"barcode": "boarding_pass", "card": "id_card", "keypad": "id_number"}.get(str(e.source), str(e.source))
        subject_id = e.text.strip()
        lt = self.lookup(subject_id, _utc_now()) if subject_id else None
        return TokenRead(t, kind, subject_id if lt else None, lt)

    def _commands_pending(self) -> None:
        while True:
            try:
                p = self._commands.get_nowait()
            except queue.Empty:
                return
            before = self.lane.mode
            try:
                ev = StaffCommand(self.clock(), p.event.action, p.event.operator_id, p.event.reason, p.event.direction)
                self._step(ev)
                p.reply = {"ok": True, "mode_before": str(before), "mode": str(self.lane.mode)}
            except Exception as e:
                p.reply = {"ok": False, "error": str(e)}
            p.done.set()

    def submit(self, command: StaffCommand, timeout: float = 5.0) -> dict:
        """Called from the control thread: hand a staff command to the main loop and wait."""
        p = _Pending(command)
        self._commands.put(p)
        if not p.done.wait(timeout):
            return {"ok": False, "error": "the lane did not take the command in time (main loop busy?)"}
        return p.reply

    def _frame(self) -> None:
        f = self.grabber.latest(after_index=self._last_frame_index, timeout=0.05)
        now = self.clock()
        if f is None and self.grabber.status == "ended":
            return
        if f is None:
            stale = self.cfg.camera.stale_after_s
            last = self._last_frame_t if self._last_frame_t is not None else self._started
            if now - last > stale and CAMERA not in self.lane.faults:
                self._step(DeviceFault(now, CAMERA, f"no frame for {now - last:.1f} s ({self.grabber.status}: "
                                                    f"{self.grabber.last_error or 'no error'})"))
            return
        self._last_frame_index = f.index
        self._last_frame_t = now
        if CAMERA in self.lane.faults:
            self._step(DeviceRestored(now, CAMERA))
        self.metrics.frames += 1
        if not self.lane.uses_frames:
            return
        if self._unchanged_empty_scene(f.image):
            self._step(FrameObservation(now))
            return
        embed = "primary" if self.lane.uses_matching else "none"
        self._frame_t_capture = f.t_capture
        t0 = time.perf_counter()
        result = self._pipeline.process(f.image, embed=embed)
        obs = observe(now, result, self.matcher, self.lookup, self.cfg.lane.policy.shortlist_k,
                      self.lane.one_to_one_subject, pad=self.pad, frame=f.image)
        self.metrics.vision_ms.append((time.perf_counter() - t0) * 1e3)
        self._empty_scene = None if result.faces else self._thumb
        self._last_processed = (f.image, result)
        self._step(obs)

    MOTION_THRESHOLD = 3.0  # mean absolute grey-level change (0-255) of a 80x60 thumbnail

    def _unchanged_empty_scene(self, image) -> bool:
        """Skip the detector while the lane is idle and the picture has not changed since a
        frame in which no face was found (the way Frigate gates object detection on motion):
        an empty lane then costs a thumbnail difference per frame instead of a detector run.
        Any change (a person stepping in, lights) runs the full pipeline again."""
        import cv2

        self._thumb = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (80, 60), interpolation=cv2.INTER_AREA)
        if self.lane.mode != lanes.Mode.IDLE or self._empty_scene is None:
            return False
        diff = float(cv2.absdiff(self._thumb, self._empty_scene).mean())
        return diff < self.MOTION_THRESHOLD

    # ------------------------------------------------------------------ status
    def _check_calibration(self) -> None:
        """The models actually loaded (manifest names) against the records the thresholds came
        from: the config check compares the names the config gives, this the ids that will produce
        the scores, so a manifest path or a renamed model cannot slip past."""
        from configschema import ConfigError
        from vision.calibrate import check_models

        try:
            check_models(self.cfg.calibration, detector=self._pipeline.detector.name,
                         embedder=self._pipeline.model_id, flip=self.cfg.models.flip)
        except ConfigError as e:
            raise StartupError(str(e)) from None
        for c in self.cfg.calibration.values():
            log.info("threshold %s", c.line())

    def _audit_chain_alarm(self, kind: str, details: dict[str, Any]) -> None:
        """From the uploader thread: the central holds audit records that differ from this log,
        or more than it. Recorded in the log itself (and so uploaded), and kept in the status."""
        self.audit_chain_alarm = f"{kind}: {details.get('message', '')}"
        self.metrics.alerts.append({"kind": kind, "details": dict(details), "at": _utc_now().isoformat()})
        try:
            self.audit.append({"event": "audit_chain_alarm", "kind": kind, "gate": self.cfg.gate.id,
                               **{k: v for k, v in details.items() if k != "message"}})
        except (AuditWriteError, ValueError, TypeError) as e:
            log.error("could not record the audit chain alarm in the audit log: %s", e)

    def health(self) -> dict[str, Any]:
        s = self.state
        healthy = s is not None and not s.faults and s.mode != lanes.Mode.OUT_OF_SERVICE
        return {"status": "ok" if healthy else "degraded",
                "software_version": SOFTWARE_VERSION,
                "model_versions": {"detector": self.cfg.models.detector, "embedder": self.cfg.models.embedder,
                                   "pad": self.pad_status},
                "last_decision_at": self.metrics.last_decision_at,
                "mode": str(s.mode) if s else "starting", "faults": sorted(s.faults) if s else [],
                "audit_chain_alarm": self.audit_chain_alarm, "site": self.cfg.gate.site,
                # lane, latched alarm, out-of-service operator, mode since: the console's fleet page
                **(lanes.health_fields(s, time.time() - (self.clock() - s.now)) if s
                   else {"lane": self.cfg.lane.lane_id})}

    def _snapshot(self) -> None:
        s = self.lane
        self.status_snapshot = {
            "gate": self.cfg.gate.id, "lane": self.cfg.lane.lane_id, "mode": str(s.mode),
            "faults": sorted(s.faults), "alarm": s.alarm, "fire_active": s.fire_active,
            "out_of_service_by": s.out_of_service_by, "token_subject": s.one_to_one_subject,
            "camera": self.grabber.status, "frames": self.metrics.frames,
            "decisions": dict(self.metrics.decisions), "last_decision_at": self.metrics.last_decision_at,
            "pad": self.pad_status, "model": self._pipeline.model_id, "watchlist_size": len(self.matcher),
            "watchlist_sequence": self.store.sequence(), "audit_unsent": self.audit.unsent_count(),
            "audit_chain_epoch": self.audit.chain_epoch().epoch or "first", "audit_chain_alarm": self.audit_chain_alarm,
            "device_online": bool(getattr(self._driver, "online", False)),
            "recent_alerts": self.metrics.alerts[-5:], "software_version": SOFTWARE_VERSION,
            "central": self._central_status(),
            "calibration": {k: c.to_status() for k, c in self.cfg.calibration.items()},
            **{k: getattr(self.cfg.lane.policy, k) for k in ("threshold_1n", "threshold_1to1", "deny_threshold")},
        }

    def _central_status(self) -> dict[str, Any] | None:
        """Whether the central answers and when it was last heard from (None: standalone gate)."""
        if self.agent is None:
            return None
        try:
            st = self.agent.status()
        except RuntimeError:
            return {"reachable": False, "last_contact": None, "last_error": "sync agent not started"}
        heard = [x for x in (st.watchlist.last_heard, st.audit.last_ack_at) if x is not None]
        last = max(heard) if heard else None
        return {"reachable": bool(st.audit.reachable),
                "last_contact": None if last is None else
                datetime.fromtimestamp(last, timezone.utc).isoformat(timespec="seconds"),
                "last_error": st.audit.last_error or None}

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        self._started = self.clock()
        passed = self.passback.recent(self.cfg.lane.lane_id, _utc_now(), self._passback_keep, self.flights)
        self.state, actions = lanes.start(self.cfg.lane, self._started, pad_provisioned=self.pad is not None,
                                          flights=self.flights, passed=passed)
        self._run(actions)
        self._step(Tick(self.clock()))
        self._snapshot()
        self.notifier.ready(f"lane {self.cfg.lane.lane_id} {self.lane.mode}")
        log.info("lane %s ready: mode %s, pad %s", self.cfg.lane.lane_id, self.lane.mode, self.pad_status)
        wd_every = self.notifier.watchdog_interval_s() or 1.0
        last_tick = last_wd = last_purge = last_status = last_audit_probe = self._started
        stopping_since = None
        while True:
            self._device_events()
            self._commands_pending()
            self._frame()
            now = self.clock()
            if now - last_tick >= TICK_S:
                self._step(Tick(now))
                last_tick = now
            if lanes.AUDIT_LOG in self.lane.faults and now - last_audit_probe >= self.AUDIT_PROBE_S:
                self._probe_audit(now)
                last_audit_probe = now
            if now - last_purge >= self.cfg.watchlist.purge_interval_s:
                gone = self.store.purge_expired(_utc_now())
                if gone:
                    log.info("purged %d expired subjects", len(gone))
                if self.refer_crops is not None:
                    self.refer_crops.purge(_utc_now())
                self.passback.purge(_utc_now() - self._passback_keep)
                last_purge = now
            if now - last_status >= 0.5:
                self._snapshot()
                self.metrics.keep_recent()
                self.notifier.status(f"{self.lane.mode}; frames {self.metrics.frames}")
                last_status = now
            if now - last_wd >= wd_every:
                self.notifier.watchdog()
                last_wd = now
            if self.stop_requested.is_set():
                if stopping_since is None:
                    stopping_since = now
                    self.notifier.stopping()
                    log.info("stopping: finishing the current passage")
                # finish a passage in progress (bounded by the lane's own open timeout)
                if self.lane.mode != lanes.Mode.OPEN or now - stopping_since > self.cfg.lane.open_timeout_s + 1:
                    break
            if self.grabber.status == "ended" and self.lane.mode != lanes.Mode.OPEN:
                # a recorded feed (file or folder) is over: nothing more will be seen
                log.info("camera source ended (file or folder); stopping")
                break
        return 0

    def close(self) -> None:
        """Lock, record the stop, flush, release everything; safe after a partial open."""
        try:
            if self._driver is not None:
                self._driver.lock()
        except Exception as e:
            log.error("could not lock the barrier on stop: %s", e)
        if getattr(self, "audit", None) is not None and self.state is not None:
            try:
                self.audit.append({"event": "daemon_stopped", "lane": self.cfg.lane.lane_id, "gate": self.cfg.gate.id,
                                   "mode": str(self.state.mode), "pad": self.pad_status})
            except AuditWriteError as e:
                log.error("could not record the stop: %s", e)
            if self.agent is not None:  # give a reachable central a moment to take the last records
                self.agent.notify_audit()
                deadline = time.monotonic() + self.UPLOAD_GRACE_S
                while self.audit.unsent_count() and time.monotonic() < deadline:
                    time.sleep(0.05)
        for name in ("agent", "control"):
            part = getattr(self, name, None)
            if part is not None:
                part.stop()
        if self.scanner is not None:
            self.scanner.close()
        if getattr(self, "grabber", None) is not None:
            self.grabber.stop()
        if self._driver is not None:
            try:
                self._driver.close()
            except Exception:
                log.exception("closing the driver failed")
        for name in ("audit", "store", "passback"):
            part = getattr(self, name, None)
            if part is not None:
                part.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the instance lock
            self._lock_fd = None
