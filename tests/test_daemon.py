"""The whole lane on real parts: a camera feed made from real photos, the real default models,
a real SQLite watchlist and audit log, the simulated turnstile and the real control socket."""
import shutil
import threading
import time
from pathlib import Path

import pytest

from gate.audit import AuditLog
from gate.config import parse_config
from gate.control import ControlError, call
from gate.daemon import LaneDaemon
from gate.watchlist import Subject, WatchlistStore
from tests.paths import LFW_IMAGES, lfw_people
from tools.feedgen import Passenger, write_walkup_video
from vision.enrol import enrol_photos
from vision.types import Template


def _config(tmp_path: Path, video: Path, models_dir: Path, **lane) -> dict:
    return {
        "gate": {"id": "G1", "state_dir": str(tmp_path / "state")},
        "camera": {"source": str(video), "fps": 15.0},
        "models": {"dir": str(models_dir), "pad_required": False, "min_face_px": 40},
        "lane": {"lane_id": "L1", "open_timeout_s": 3.0, "result_display_s": 0.5,
                 "policy": {"threshold_1n": 0.92, "min_margin": 0.02, "threshold_1to1": 0.92,
                            "deny_threshold": 0.92, "acquire_timeout_s": 3.0, **lane}},
        "device": {"type": "sim", "auto_passage_ms": 1500},
        "watchlist": {"encrypt_templates": True, "scan_threads": 1},
    }


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, default_pipeline, mtcnn_manifest, dlib_resnet_manifest):
    """Three enrolled travellers (enrolled from one photo, walking up in another) and two
    people who are not enrolled."""
    tmp = tmp_path_factory.mktemp("lane")
    models_dir = Path(mtcnn_manifest.path).parent
    if Path(dlib_resnet_manifest.path).parent != models_dir:  # built separately: gather manifests in one folder
        models_dir = tmp / "models"
        models_dir.mkdir()
        for m in (mtcnn_manifest, dlib_resnet_manifest):
            import dataclasses

            from models.manifest import write_manifest

            files = {r: dataclasses.replace(f, file=str(m.file_path(r))) for r, f in m.files.items()}
            write_manifest(dataclasses.replace(m, files=files, path=None), models_dir)
    people = lfw_people(40, min_images=2)
    enrolled = people[:3]
    singles = [d for d in sorted(LFW_IMAGES.iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) == 1][:2]
    passengers = [Passenger("enrolled", str(sorted(d.glob("*.jpg"))[1]), d.name) for d in enrolled]
    passengers += [Passenger("not_enrolled", str(next(d.glob("*.jpg")))) for d in singles]
    video = tmp / "feed.avi"
    truth = write_walkup_video(video, passengers, fps=15.0)
    cfg = parse_config(_config(tmp, video, models_dir), tmp)
    cfg.gate.state_dir.mkdir(parents=True)
    from sync.template_crypto import TemplateCipher

    cfg.template_key_file.parent.mkdir(parents=True, mode=0o700)
    store = WatchlistStore(cfg.gate.state_dir, cipher=TemplateCipher.load_or_create(cfg.template_key_file))
    for i, d in enumerate(enrolled, start=1):
        r = enrol_photos(default_pipeline, d.name, [sorted(d.glob("*.jpg"))[0]])
        assert len(r.vectors) == 1, r.verdicts
        store.upsert_subject(Subject(d.name, "allow", scopes=frozenset({"lane:L1"})),
                             [Template(r.vectors[0], r.model_id)], seq=i)
    store.close()
    daemon = LaneDaemon(cfg)
    daemon.open()
    result = {"scan_threads": daemon.matcher.scan_threads}

    def run():
        result["rc"] = daemon.run()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    # the control socket works while the lane runs
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        try:
            status = call(cfg.control_socket, "status")
            if status.get("mode") not in (None, "starting"):
                break
        except ControlError:
            pass
        time.sleep(0.1)
    t.join(120)
    alive = t.is_alive()
    if alive:
        daemon.stop_requested.set()
        t.join(20)
    sim = daemon._driver
    unlocks = list(daemon.metrics.unlocks)
    decisions = dict(daemon.metrics.decisions)
    daemon.close()
    return {"cfg": cfg, "truth": truth, "unlocks": unlocks, "decisions": decisions, "status": status,
            "alive": alive, "rc": result.get("rc"), "sim": sim, "enrolled": [d.name for d in enrolled],
            "scan_threads": result["scan_threads"]}


def test_a_watchlist_cached_for_another_embedder_is_warned_about(tmp_path, default_pipeline, caplog):
    """The daemon records the model it runs in the watchlist; started later with another
    embedder, it says so (only matching templates load)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    shutil.copy(next(LFW_IMAGES.glob("*/*.jpg")), frames)
    cfg = parse_config({**_config(tmp_path, frames, tmp_path), "watchlist": {"encrypt_templates": False}}, tmp_path)
    cfg.gate.state_dir.mkdir(parents=True, mode=0o700)
    with WatchlistStore(cfg.gate.state_dir) as store:
        store.set_model_id("an-older-embedder-v0")
    for expect_warning in (True, False):  # the second start runs the model the first recorded
        caplog.clear()
        daemon = LaneDaemon(cfg, pipeline=default_pipeline)
        try:
            daemon.open()
        finally:
            daemon.close()
        warned = [r.getMessage() for r in caplog.records if "watchlist holds templates of model" in r.getMessage()]
        assert bool(warned) is expect_warning, warned
        if expect_warning:
            assert "an-older-embedder-v0" in warned[0] and default_pipeline.model_id in warned[0]
    with WatchlistStore(cfg.gate.state_dir, read_only=True) as store:
        assert store.model_id() == default_pipeline.model_id


def test_lane_runs_the_feed_to_the_end_and_exits_cleanly(scenario):
    assert not scenario["alive"], "the daemon did not stop at the end of the camera feed"
    assert scenario["rc"] == 0
    assert scenario["status"]["lane"] == "L1" and scenario["status"]["pad"] == "not provisioned"
    assert scenario["scan_threads"] == 1  # watchlist.scan_threads reaches the matcher (default 2)


def test_enrolled_travellers_are_let_through_and_strangers_are_not(scenario):
    opened_for = [u["subject_id"] for u in scenario["unlocks"]]
    assert set(opened_for) == set(scenario["enrolled"]), scenario["decisions"]
    assert None not in opened_for  # nobody got an opening without a decision naming them


def test_every_opening_is_preceded_by_its_audit_record(scenario):
    cfg = scenario["cfg"]
    with AuditLog(cfg.gate.state_dir, read_only=True) as log:
        assert log.verify().ok
        rows = list(log.iter_since(0))
    bodies = [r.body for r in rows]
    assert all(b.get("pad") == "not provisioned" for b in bodies)
    opens = [i for i, b in enumerate(bodies) if b.get("event") == "open"]
    assert len(opens) == len(scenario["unlocks"]) == len(scenario["enrolled"])
    for i in opens:
        d = bodies[i - 1]["decision"]
        assert bodies[i - 1]["event"] == "decision" and d["outcome"] == "allow" and d["reason"] == "match"
        assert d["subject_id"] == bodies[i]["opening"]["subject_id"] and d["subject_id"] in scenario["enrolled"]
        assert d["score"] >= 0.92 and d["margin"] >= 0.02
    denies = [b["decision"] for b in bodies if b.get("event") == "decision" and b["decision"]["outcome"] != "allow"]
    assert denies and all(d["score"] < 0.92 for d in denies)
    assert bodies[-1]["event"] == "daemon_stopped"


def test_no_face_images_are_stored(scenario):
    state = scenario["cfg"].gate.state_dir
    for p in state.rglob("*"):
        assert p.suffix.lower() not in (".jpg", ".png", ".jpeg", ".bmp"), p


def test_every_attempt_ends_in_a_decision_or_a_recorded_reason(scenario):
    """On real photos: no face is acquired and then forgotten without the audit saying why."""
    with AuditLog(scenario["cfg"].gate.state_dir, read_only=True) as log:
        bodies = [r.body for r in log.iter_since(0)]
    open_track = None
    for b in bodies:
        if b["event"] in ("face_acquired", "track_replaced"):
            if b["event"] == "track_replaced":
                assert b["previous_unserved"]["why"], b
            open_track = b["track_id"]
        elif b["event"] == "decision" and open_track is not None:
            assert b["decision"]["track_id"] == open_track
            open_track = None
        elif b["event"] == "face_lost":
            assert b["track_id"] == open_track and b["unserved"]["why"] in (
                "too_few_quality_frames", "waiting_for_liveness", "outside_capture_zone",
                "too_few_frames_to_refuse"), b
            open_track = None


def test_zz_travellers_who_passed_cannot_pass_again_after_a_restart(scenario):
    """Anti-passback lives in the state dir: the same feed replayed on a restarted daemon opens
    for nobody, and each refusal is recorded with its reason."""
    cfg = scenario["cfg"]
    with AuditLog(cfg.gate.state_dir, read_only=True) as log:
        before = log.last_seq()
    daemon = LaneDaemon(cfg)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive()
    unlocks = list(daemon.metrics.unlocks)
    daemon.close()
    assert unlocks == []
    with AuditLog(cfg.gate.state_dir, read_only=True) as log:
        decisions = [r.body["decision"] for r in log.iter_since(before) if r.body["event"] == "decision"]
    refused = {d["subject_id"] for d in decisions if d["reason"] == "anti_passback"}
    assert refused == set(scenario["enrolled"]), decisions


def test_refusals_name_nobody_and_each_passenger_is_decided_at_most_once(scenario):
    with AuditLog(scenario["cfg"].gate.state_dir, read_only=True) as log:
        rows = [r.body for r in log.iter_since(0)]
    first_run = rows[: next(i for i, b in enumerate(rows) if b["event"] == "daemon_stopped") + 1]
    decisions = [b["decision"] for b in first_run if b["event"] == "decision"]
    assert len(decisions) <= len(scenario["truth"])  # one decision per person per visit
    for b in first_run:
        d = b.get("decision")
        if d is not None and d["outcome"] != "allow":
            assert d["subject_id"] is None and d["runner_up_id"] is None and d["top"] == [], d
            assert d["score"] is None or d["score"] < 0.92
