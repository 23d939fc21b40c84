"""gate-kiosk: the enrolment station's daemon, one traveller session at a time.

Threads: the camera grabber (vision.capture) and the serial scanner (devices.barcode) fill
their queues; the control socket (gate.control, the lane's own) takes staff commands; the
main loop owns the session, runs vision on the newest frame while capturing, and carries out
the session's actions in order: audit first (hash-chained gate.audit log, no images), then
guidance, then the enrolment sent to the central (sync.station_client over CURVE). The audit
log is uploaded to the central under the station's id by the gates' own uploader
(sync.uploader.AuditUploader, Lazy Pirate), so `gate-ops audit pull --gate <station>` exports it.
"""
from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zmq

from devices.barcode import BarcodeScanner
from devices.base import TokenRead
from gate.audit import AuditLog
from gate.control import ControlServer, Peer
from kiosk.capture import live_frame, reference_of
from kiosk.config import KioskConfig
from kiosk.icao9303 import load_csca_list
from kiosk.identity import IdentityError, load_provider_key
from kiosk.inbox import Trust, next_handover
from kiosk.session import Audit, Guide, Publish, Refer, Session, State
from sync.scopes import checkpoint_scope, parse_scope
from sync.service_messages import EnrolRequest
from sync.station_client import CentralUnreachable, StationClient
from sync.uploader import AuditUploader
from vision.capture import FrameGrabber, open_source

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The station cannot run as configured; the message says what to fix."""


class StationDaemon:
    def __init__(self, cfg: KioskConfig):
        self.cfg = cfg
        self.rules = cfg.rules()
        self._commands: queue.Queue[tuple[dict, Peer, Future]] = queue.Queue()
        self.guidance = ""
        self.completed: list[dict[str, Any]] = []  # outcome, subject, timings of finished sessions
        self._session_t0 = 0.0
        self._first_face_t: float | None = None
        self._last_frame = -1
        self._scanner: BarcodeScanner | None = None  # optional: the agent may type passes instead
        self._upload_stop = threading.Event()
        self._started: list[Any] = []  # what start() opened, closed in reverse order
        # Made by start(), used only after it:
        self.session: Session
        self.audit: AuditLog
        self._grabber: FrameGrabber
        self._control: ControlServer
        self._client: StationClient
        self._uploader: AuditUploader
        self._upload_thread: threading.Thread
        self._zmq: zmq.Context

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "StationDaemon":
        from vision.calibrate import check_models
        from vision.loading import load_pipeline, resolve_manifest

        cfg = self.cfg
        m = cfg.models
        try:
            self.pipeline = load_pipeline(m.dir, m.detector, m.embedder, flip=m.flip, threads=m.threads,
                                          detector_opts={"min_face": m.min_face_px})
            # the ids that will produce the scores against the record the threshold came from
            check_models(cfg.calibration, detector=self.pipeline.detector.name, embedder=self.pipeline.model_id,
                         flip=m.flip)
            self.pad = None
            if m.pad:
                from vision.pad import load_pad

                self.pad = load_pad([resolve_manifest(m.dir, n) for n in m.pad], threads=1)
            elif m.pad_required:
                raise StartupError("models.pad is empty but models.pad_required = true: provision the PAD models "
                                   "(gate-models add --format minifasnet) or accept the risk with pad_required = false")
            cscas = tuple(load_csca_list(cfg.identity.csca)) if cfg.identity.csca else ()
            self.trust = Trust(cscas, {name: load_provider_key(Path(p)) for name, p in cfg.identity.providers.items()})
        except (IdentityError, ValueError, OSError) as exc:
            raise StartupError(str(exc)) from None
        if not self.trust.cscas and not self.trust.providers:
            raise StartupError("identity: configure at least one CSCA (identity.csca) or provider key "
                               "(identity.providers): otherwise no reference can be trusted")
        cfg.station.state_dir.mkdir(parents=True, exist_ok=True)
        cfg.station.inbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.audit = AuditLog(cfg.station.state_dir)
        self._started.append(self.audit.close)
        self._zmq = zmq.Context()
        self._started.append(self._zmq.term)
        link = cfg.link()
        self._client = StationClient(link, self._zmq)
        self._started.append(self._client.close)
        upload_cfg = link.agent_config(parse_scope(checkpoint_scope(cfg.station.airport)), self.pipeline.model_id,
                                       audit_idle_poll_s=2.0)
        self._uploader = AuditUploader(upload_cfg, link.security(), self.audit, self._zmq)
        self._upload_thread = threading.Thread(target=self._uploader.run, args=(self._upload_stop,),
                                               name="audit-upload", daemon=True)
        self._upload_thread.start()
        self._started.append(self._stop_uploader)
        if cfg.scanner is not None:
            self._scanner = BarcodeScanner(cfg.scanner).open()
            self._started.append(self._scanner.close)
        c = cfg.camera
        self._grabber = FrameGrabber(open_source(c.source, fps=c.fps, loop=c.loop, width=c.width, height=c.height),
                                     backoff_max_s=c.reconnect_max_s).start()
        self._started.append(self._grabber.stop)
        self._control = ControlServer(cfg.station.control_socket, self._on_command, group=cfg.station.control_group)
        self._control.start()
        self._started.append(self._control.stop)
        self._new_session()
        log.info("station %s at %s ready: model %s, PAD %s, 1:1 threshold %.3f, %d CSCA(s), provider(s) %s",
                 cfg.station.id, cfg.station.airport, self.pipeline.model_id, "on" if self.pad else "OFF",
                 self.rules.threshold_1to1, len(self.trust.cscas), ", ".join(self.trust.providers) or "-")
        return self

    def close(self) -> None:
        """Close what start() opened (all of it, or as far as it got), newest first."""
        if "session" in self.__dict__ and "audit" in self.__dict__:
            self._apply(self.session.on_abandon("station stopped"))
        for stop in reversed(self._started):
            try:
                stop()
            except Exception:
                log.exception("closing a station part failed")
        self._started = []

    def _stop_uploader(self) -> None:
        self._uploader.wake()
        self._upload_stop.set()
        self._upload_thread.join(10)

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop`. A failing step (an audit write refused by a full disk, a vision
        error on a frame) ends the traveller's session, never the station: a session whose
        audit could not be written is not enrolled (audit first, then the enrolment)."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("station step failed")
                self._fail_session()
                stop.wait(0.5)

    def _fail_session(self) -> None:
        """Close the current session without enrolling (its audit may be missing, so nothing
        that depends on it is sent) and start a fresh one."""
        log.error("the current session is closed without enrolling")
        try:  # best effort: the failure may be the audit log itself
            self.audit.append({"event": "kiosk_attempt", "outcome": "station_error", "station": self.cfg.station.id,
                               "state": self.session.state.value,
                               "subject_id": self.session.reference.subject_id if self.session.reference else None})
        except Exception:
            log.exception("could not audit the station error either")
        self.completed.append({"outcome": "station_error", "subject_id": None, "referral": "",
                               "first_face_t": self._first_face_t, "done_t": time.monotonic()})
        self._new_session()
        self.guidance = "Station temporarily out of order; please see the agent"

    # ----- the loop ----------------------------------------------------------------------------

    def _new_session(self) -> None:
        self.session = Session(self.rules, self.pipeline.model_id, time.monotonic())
        self._session_t0 = time.monotonic()
        self._first_face_t = None
        self.guidance = "Please scan your boarding pass"

    def step(self) -> None:
        self._drain_commands()  # may close the session (a failed command): read it afterwards
        s = self.session
        if self._scanner is not None:
            try:
                ev = self._scanner.events.get_nowait()
            except queue.Empty:
                ev = None
            if isinstance(ev, TokenRead):
                self._apply(s.on_pass(ev.text, dt.datetime.now(dt.timezone.utc)))
        if s.state is State.AWAIT_IDENTITY:
            got = next_handover(self.cfg.station.inbox, self.trust)
            if isinstance(got, IdentityError):
                self._apply(s.on_reference_refused(str(got)))
            elif got is not None:
                self._apply(s.on_reference(reference_of(self.pipeline, got), time.monotonic()))
        if s.state is State.CAPTURING:
            f = self._grabber.latest(self._last_frame, timeout=0.05)
            if f is not None:
                self._last_frame = f.index
                lf = live_frame(self.pipeline, self.pad, f.image, time.monotonic())
                if lf.faces and self._first_face_t is None:
                    self._first_face_t = time.monotonic()
                self._apply(s.on_frame(lf))
            else:
                self._apply(s.on_tick(time.monotonic()))
        else:
            time.sleep(0.02)
        waiting = s.state in (State.AWAIT_IDENTITY, State.REFERRED)
        if waiting and time.monotonic() - self._session_t0 > self.cfg.station.session_timeout_s:
            self._apply(s.on_abandon("session timed out"))
        if s.state in (State.ENROLLED, State.CLOSED):
            self.completed.append({"outcome": s.outcome, "subject_id": s.reference.subject_id if s.reference else None,
                                   "referral": s.referral, "first_face_t": self._first_face_t,
                                   "done_t": time.monotonic()})
            self._new_session()

    def _apply(self, actions) -> None:
        for a in actions:
            if isinstance(a, Audit):
                self.audit.append({**a.body, "station": self.cfg.station.id})
                self._uploader.wake()
            elif isinstance(a, Guide):
                self.guidance = a.message
                log.info("guidance: %s", a.message)
            elif isinstance(a, Refer):
                log.warning("session referred to the counter agent: %s%s", a.reason,
                            f" ({a.detail})" if a.detail else "")
            elif isinstance(a, Publish):
                self._apply(self._publish(a))

    def _publish(self, p: Publish):
        req = EnrolRequest(station_id=self.cfg.station.id, request_id=0, subject_id=p.subject_id,
                           display_name=p.display_name, list_type="allow", scopes=p.scopes,
                           departure_airport=p.departure_airport, valid_from=None,
                           valid_until=int(p.valid_until.timestamp()), model_id=self.pipeline.model_id,
                           templates=p.templates)
        try:
            reply = self._client.enrol(req)
        except CentralUnreachable as exc:
            return self.session.on_published(False, str(exc))
        if not reply.ok:
            log.error("central refused the enrolment of %s: %s", p.subject_id, reply.error)
        return self.session.on_published(reply.ok, reply.error, reply.change_seq)

    # ----- staff commands (control socket thread -> main loop) ---------------------------------

    def _on_command(self, req: dict, peer: Peer) -> dict:
        fut: Future = Future()
        self._commands.put((req, peer, fut))
        try:
            return fut.result(timeout=30)
        except Exception as exc:
            return {"ok": False, "error": f"station did not answer: {exc}"}

    def _drain_commands(self) -> None:
        while True:
            try:
                req, peer, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(self._command(req, peer))
            except Exception as exc:  # a failed command must never stop the station
                log.exception("control command failed")
                if self.session.state is State.PUBLISHING:  # e.g. its audit record could not be written
                    self._fail_session()
                fut.set_result({"ok": False, "error": str(exc)})

    def _command(self, req: dict, peer: Peer) -> dict:
        s = self.session
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "station": self.cfg.station.id, "airport": self.cfg.station.airport,
                    "state": s.state.value, "guidance": self.guidance, "referral": s.referral or None,
                    "referral_detail": s.referral_detail or None,
                    "subject_id": s.reference.subject_id if s.reference else None,
                    "flight": s.leg.flight if s.leg else None, "completed": len(self.completed),
                    "audit_unsent": self.audit.unsent_count(), "central_reachable": self._uploader.status().reachable,
                    "threshold_1to1": self.rules.threshold_1to1,
                    "calibration": {k: c.to_status() for k, c in self.cfg.calibration.items()}}
        if cmd == "scan":  # the agent types or pastes the pass when the scanner cannot read it
            actions = s.on_pass(str(req.get("code", "")), dt.datetime.now(dt.timezone.utc))
            self._apply(actions)
            refused = [a.body["reason"] for a in actions if isinstance(a, Audit)]
            return {"ok": not refused, "error": refused[0] if refused else "", "state": s.state.value}
        if cmd in ("approve", "decline"):
            operator, reason = str(req.get("operator", "")), str(req.get("reason", ""))
            if not operator.strip() or not reason.strip():
                return {"ok": False, "error": f"{cmd} needs --operator ID and --reason TEXT (both are audited)"}
            try:
                # the kernel-reported account beside the typed id, as gatectl records it
                actions = s.on_agent(cmd == "approve", f"{operator.strip()} (uid {peer.uid})", reason)
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            self._apply(actions)
            return {"ok": s.state in (State.ENROLLED, State.CLOSED) and s.outcome != "publish_failed",
                    "outcome": s.outcome, "error": "" if s.outcome != "publish_failed" else "enrolment failed"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}
