"""`gatectl selftest`: is this lane's hardware, models, central link and host fit to run?

Run by ground staff after a fault and by the installer right after switching slots, with the
daemon stopped (the camera and the turnstile port are opened here). Each check uses the same
code the daemon uses (capture, model loading, the driver, the sync transport) so a PASS means
the daemon's own start-up path works, not a look-alike of it.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gate import known_answer
from gate.checks import Check, Status
from gate.config import GateConfig

log = logging.getLogger(__name__)

# Without a slot manifest to date the image, the clock must at least be past this
# software's first release: a gate whose clock says 1970 writes audit records nobody can order.
CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SelftestOptions:
    camera_frames: int = 3  # frames the camera must deliver …
    camera_timeout_s: float = 5.0  # … within this long
    central_timeout_s: float = 3.0
    min_free_mb: float = 500.0  # on the state directory's filesystem
    max_clock_ahead_days: float = 3650.0  # later than this past the image's build = clock is wrong


def check_camera(cfg: GateConfig, opts: SelftestOptions) -> Check:
    from vision.capture import FrameGrabber, open_source

    c = cfg.camera
    source = open_source(c.source, fps=c.fps, loop=c.loop, width=c.width, height=c.height)
    grabber = FrameGrabber(source, backoff_initial_s=min(0.5, opts.camera_timeout_s / 4))
    deadline = time.monotonic() + opts.camera_timeout_s
    last = None
    with grabber:
        while grabber.frames < opts.camera_frames and time.monotonic() < deadline:
            f = grabber.latest(after_index=last.index if last else -1, timeout=deadline - time.monotonic())
            if f is None:
                if grabber.status == "ended":
                    break
                continue
            last = f
    got = grabber.frames
    if last is not None and (got >= opts.camera_frames or (grabber.status == "ended" and got > 0)):
        h, w = last.image.shape[:2]
        ended = " (finite source ended)" if got < opts.camera_frames else ""
        return Check("camera", Status.PASS, f"{source.description}: {got} frames {w}x{h}{ended}")
    why = grabber.last_error or f"status {grabber.status}"
    return Check("camera", Status.FAIL, f"{source.description}: {got} of {opts.camera_frames} frames in "
                                        f"{opts.camera_timeout_s:g}s ({why})")


def check_models(cfg: GateConfig) -> list[Check]:
    from models.manifest import ModelError, load_model
    from vision.loading import load_pipeline

    m = cfg.models
    names = [m.detector, m.embedder, *m.pad]
    problems = []
    for name in names:
        try:
            problems += load_model(m.dir, name).verify()
        except ModelError as e:
            problems.append(str(e))
    if problems:
        return [Check("models", Status.FAIL, problems[0])]
    try:
        load_pipeline(m.dir, m.detector, m.embedder, flip=m.flip, threads=m.threads,
                      detector_opts={"min_face": m.min_face_px})
        if m.pad:
            from vision.loading import resolve_manifest
            from vision.pad import load_pad

            load_pad([resolve_manifest(m.dir, n) for n in m.pad], threads=m.threads)
    except Exception as e:  # any runtime failure to load is exactly what this check is for
        return [Check("models", Status.FAIL, f"loading failed: {e}")]
    return [Check("models", Status.PASS, f"{', '.join(names)}: sha256 intact, loaded")]


def check_known_answer(cfg: GateConfig) -> Check:
    where = cfg.path.parent / known_answer.FILE_NAME if cfg.path else None
    if where is None or not where.exists():
        return Check("models known answer", Status.FAIL,
                     f"no {known_answer.FILE_NAME} beside the config (install a gate image, or record one)")
    try:
        answer = known_answer.load(where)
        if (answer.detector, answer.embedder) != (cfg.models.detector, cfg.models.embedder):
            return Check("models known answer", Status.FAIL,
                         f"recorded for {answer.detector} + {answer.embedder}, config runs "
                         f"{cfg.models.detector} + {cfg.models.embedder}")
        cos = known_answer.check(answer, cfg.models.dir)
    except Exception as e:  # a model that crashes on the reference photo fails the check
        return Check("models known answer", Status.FAIL, str(e))
    ok = cos >= known_answer.MIN_COSINE
    return Check("models known answer", Status.PASS if ok else Status.FAIL,
                 f"reference photo cosine {cos:.6f} (need ≥ {known_answer.MIN_COSINE})")


def check_pad(cfg: GateConfig) -> Check:
    if cfg.models.pad:
        return Check("pad", Status.PASS, f"provisioned: {'+'.join(cfg.models.pad)}")
    if cfg.models.pad_required:
        return Check("pad", Status.FAIL, "not provisioned, and models.pad_required = true (the lane will not start)")
    return Check("pad", Status.WARN, "not provisioned (models.pad_required = false: no presentation-attack detection)")


def check_turnstile(cfg: GateConfig) -> Check:
    import devices

    kind = type(cfg.device).__name__.removesuffix("Config").lower()
    try:
        driver = devices.make_driver(cfg.device)
        driver.open()
    except Exception as e:  # a port that cannot open, a library that fails: the driver is unusable
        return Check("turnstile", Status.FAIL, f"{kind}: cannot open: {e}")
    try:
        if not driver.online:
            return Check("turnstile", Status.FAIL, f"{kind}: controller did not answer")
        driver.lock()
        return Check("turnstile", Status.PASS, f"{kind}: online, lock acknowledged")
    except devices.DeviceError as e:
        return Check("turnstile", Status.FAIL, f"{kind}: lock not acknowledged: {e}")
    finally:
        driver.close()


def check_central(cfg: GateConfig, opts: SelftestOptions, version: str) -> Check:
    """One real health request over the configured transport (CURVE unless the dev flag)."""
    if cfg.sync is None:
        return Check("central", Status.SKIP, "no [sync] section: standalone gate, nothing to reach")
    import threading

    import zmq

    from sync.agent import agent_security
    from sync.service_messages import HealthReport, encode_health
    from sync.uploader import LazyPirateClient

    s = cfg.sync
    try:
        security = agent_security(s)
    except Exception as e:  # missing/wide key files, plain TCP beyond loopback
        return Check("central", Status.FAIL, f"keys: {e}")
    ctx = zmq.Context()
    client = LazyPirateClient(dataclasses.replace(s, reply_timeout_s=opts.central_timeout_s), security, ctx,
                              "selftest")
    report = HealthReport(gate_id=s.gate_id, request_id=secrets.randbits(63), status="selftest",
                          software_version=version, model_versions={}, watchlist_seq=0, queue_depth=0,
                          last_decision_at=None, scopes=s.scopes, extra={"selftest": True})
    t0 = time.monotonic()
    try:
        reply = client.request(encode_health(report), report.request_id, threading.Event())
    finally:
        client.close()
        ctx.term()
    where = f"{s.central_host}:{s.base_port}"
    if reply is None:
        return Check("central", Status.FAIL, f"{where}: no reply in {opts.central_timeout_s:g}s (central down or "
                                             "unreachable, or this gate's key is not registered there)")
    if not reply.ok:
        return Check("central", Status.FAIL, f"{where}: refused: {reply.error}")
    missing = sorted(set(s.scopes) - set(reply.scope_heads))
    if missing:
        return Check("central", Status.FAIL, f"{where}: answers, but does not serve {', '.join(missing)} to this gate")
    return Check("central", Status.PASS, f"{where}: answered in {(time.monotonic() - t0) * 1e3:.0f} ms, "
                                         f"{'plain TCP (dev)' if s.dev_plain_loopback else 'CURVE'}")


def check_disk(cfg: GateConfig, opts: SelftestOptions) -> Check:
    path = cfg.gate.state_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    free_mb = shutil.disk_usage(path).free / 2**20
    ok = free_mb >= opts.min_free_mb
    return Check("free disk", Status.PASS if ok else Status.FAIL,
                 f"{free_mb:,.0f} MB free on {path} (need ≥ {opts.min_free_mb:,.0f} MB)")


def _image_built_at(cfg: GateConfig) -> datetime | None:
    from gate.image import ImageError, read_manifest

    if cfg.path is None or not (cfg.path.parent / "MANIFEST.json").exists():
        return None
    try:
        return read_manifest(cfg.path.parent).built_at_time
    except (ImageError, ValueError):
        return None


def check_clock(cfg: GateConfig, opts: SelftestOptions, now: datetime | None = None) -> Check:
    now = now or datetime.now(timezone.utc)
    built = _image_built_at(cfg)
    floor = built or CLOCK_FLOOR
    what = "the gate image's build time" if built else "this software's release"
    if now < floor:
        return Check("clock", Status.FAIL, f"{now:%Y-%m-%d %H:%M}Z is before {what} ({floor:%Y-%m-%d %H:%M}Z)")
    if now > floor + timedelta(days=opts.max_clock_ahead_days):
        return Check("clock", Status.FAIL, f"{now:%Y-%m-%d}Z is more than {opts.max_clock_ahead_days:g} days after "
                                           f"{what} ({floor:%Y-%m-%d}Z)")
    return Check("clock", Status.PASS, f"{now:%Y-%m-%d %H:%M:%S}Z, after {what}")


def run_selftest(cfg: GateConfig, opts: SelftestOptions = SelftestOptions()) -> list[Check]:
    from gate.image import software_version

    checks = [check_camera(cfg, opts)]
    checks += check_models(cfg)
    checks.append(check_known_answer(cfg))
    checks.append(check_pad(cfg))
    checks.append(check_turnstile(cfg))
    checks.append(check_central(cfg, opts, software_version()))
    checks.append(check_disk(cfg, opts))
    checks.append(check_clock(cfg, opts))
    for c in checks:
        log.log(logging.ERROR if c.status is Status.FAIL else logging.INFO, "selftest %s: %s %s",
                c.name, c.status, c.detail)
    return checks


def selftest_config(path: Path, opts: SelftestOptions = SelftestOptions()) -> list[Check]:
    """Load the config (a bad one is a FAIL row, not an exception) and run every check."""
    from configschema import ConfigError
    from gate.config import load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        return [Check("config", Status.FAIL, str(e))]
    return [Check("config", Status.PASS, str(path))] + run_selftest(cfg, opts)
