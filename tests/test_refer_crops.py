"""Opt-in REFER face crops: sealed at rest with the template key, owner-only, deleted after the
retention limit; and the daemon's start-up refusing loose key and database files. Real photos,
the real default models, a real lane daemon on a recorded feed."""
from __future__ import annotations

import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from configschema import ConfigError
from gate.audit import AuditLog
from gate.config import parse_config
from gate.daemon import LaneDaemon, StartupError
from gate.refer_crops import CROPS_DIR_NAME, CropError, ReferCropStore, crop_face
from gate.sqlite_store import InsecureFileError
from gate.watchlist import Subject, WatchlistStore
from sync.template_crypto import TemplateCipher, TemplateIntegrityError
from tests.paths import lfw_people
from tools.feedgen import Passenger, write_walkup_video
from vision.enrol import enrol_photos
from vision.types import Template

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
JPEG_MAGIC = b"\xff\xd8\xff"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="module")
def photo_and_face(default_pipeline):
    """A real photo and the real detector's face box in it."""
    path = sorted(lfw_people(1, min_images=1)[0].glob("*.jpg"))[0]
    image = cv2.imread(str(path))
    result = default_pipeline.process(image, embed="none")
    assert result.primary is not None
    return image, result.primary.face.box


def crop_store(tmp_path: Path, days: int = 7) -> tuple[ReferCropStore, TemplateCipher]:
    (tmp_path / "keys").mkdir(mode=0o700)
    cipher = TemplateCipher.load_or_create(tmp_path / "keys" / "templates.key")
    return ReferCropStore(tmp_path, cipher, timedelta(days=days)), cipher


def test_crop_is_sealed_private_and_opens_only_with_the_key(tmp_path, photo_and_face):
    image, box = photo_and_face
    store, _ = crop_store(tmp_path)
    path = store.save(image, box, audit_seq=42, taken_at=T0)
    assert path.parent == tmp_path / CROPS_DIR_NAME and mode(path.parent) == 0o700 and mode(path) == 0o600
    assert path.name == "refer-0000000042-20261123T120000Z.crop"
    blob = path.read_bytes()
    assert JPEG_MAGIC not in blob[:64] and b"JFIF" not in blob  # not a readable image on disk
    # a fresh cipher from the key file (as after a restart) opens it; the plaintext is the face crop
    reopened = ReferCropStore(tmp_path, TemplateCipher.from_key_file(tmp_path / "keys" / "templates.key"),
                              timedelta(days=7))
    jpeg = reopened.open(path)
    assert jpeg.startswith(JPEG_MAGIC)
    face = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    expected = crop_face(image, box)
    assert face.shape == expected.shape and face.shape[:2] != image.shape[:2]  # the face, not the photo
    assert np.abs(face.astype(int) - expected.astype(int)).mean() < 4  # JPEG-close to the cut-out face
    # another key: no image
    (tmp_path / "other").mkdir()
    stranger, _ = crop_store(tmp_path / "other")
    with pytest.raises(TemplateIntegrityError):
        stranger.open(path)


def test_a_crop_renamed_to_another_record_fails_authentication(tmp_path, photo_and_face):
    image, box = photo_and_face
    store, _ = crop_store(tmp_path)
    path = store.save(image, box, audit_seq=7, taken_at=T0)
    moved = path.with_name("refer-0000000008-20261123T120000Z.crop")
    path.rename(moved)
    with pytest.raises(TemplateIntegrityError):
        store.open(moved)


def test_purge_deletes_crops_past_retention_only(tmp_path, photo_and_face):
    image, box = photo_and_face
    store, _ = crop_store(tmp_path, days=7)
    old = store.save(image, box, 1, T0 - timedelta(days=8))
    edge = store.save(image, box, 2, T0 - timedelta(days=7))
    fresh = store.save(image, box, 3, T0 - timedelta(days=6, hours=23))
    (store.directory / "notes.txt").write_text("not a crop")  # unknown files are left alone
    assert sorted(store.purge(T0)) == sorted([old, edge])
    assert [c.path for c in store.crops()] == [fresh] and (store.directory / "notes.txt").exists()
    assert store.purge(T0) == []


def test_loose_crop_folder_and_empty_boxes_are_refused(tmp_path, photo_and_face):
    image, _ = photo_and_face
    store, cipher = crop_store(tmp_path)
    with pytest.raises(CropError):
        store.save(image, np.array([50, 50, 50, 80], np.float32), 1, T0)
    with pytest.raises(CropError):
        store.save(image, np.array([5000, 5000, 5100, 5100], np.float32), 1, T0)
    assert store.crops() == []
    store.directory.chmod(0o755)
    with pytest.raises(InsecureFileError, match="chmod"):
        ReferCropStore(tmp_path, cipher, timedelta(days=1))


def test_privacy_config_defaults_off_and_is_validated():
    base = {"gate": {"id": "G"}, "camera": {"source": "0"}, "models": {"dir": "m"},
            "lane": {"lane_id": "L1", "policy": {"threshold_1n": 0.9, "min_margin": 0.02, "threshold_1to1": 0.9,
                                                 "deny_threshold": 0.9}}}
    cfg = parse_config(base)
    assert cfg.privacy.keep_refer_crops is False and cfg.privacy.refer_crop_retention_days == 7
    cfg = parse_config({**base, "privacy": {"keep_refer_crops": True, "refer_crop_retention_days": 30}})
    assert cfg.privacy.keep_refer_crops and cfg.privacy.refer_crop_retention_days == 30
    with pytest.raises(ConfigError, match="refer_crop_retention_days"):
        parse_config({**base, "privacy": {"refer_crop_retention_days": 0}})
    with pytest.raises(ConfigError, match="keep_refer_crop"):
        parse_config({**base, "privacy": {"keep_refer_crop": True}})


# ---- the daemon ----------------------------------------------------------------------------

def _lane_config(tmp: Path, video: Path, **privacy) -> dict:
    return {
        "gate": {"id": "G1", "state_dir": str(tmp / "state")},
        "camera": {"source": str(video), "fps": 15.0},
        "models": {"dir": str(tmp / "models"), "pad_required": False},
        # Any score matches, but no lead over the runner-up is enough: every attempt is referred.
        "lane": {"lane_id": "L1", "open_timeout_s": 3.0, "result_display_s": 0.5,
                 "policy": {"threshold_1n": 0.0, "min_margin": 0.99, "threshold_1to1": 0.9,
                            "deny_threshold": 0.0, "acquire_timeout_s": 3.0}},
        "device": {"type": "sim", "auto_passage_ms": 1500},
        "privacy": privacy,
    }


@pytest.fixture(scope="module")
def referred_lane(tmp_path_factory, default_pipeline):
    """Two enrolled look-alikes-by-policy and one traveller walking up: a REFER decision."""
    tmp = tmp_path_factory.mktemp("refer")
    people = lfw_people(3, min_images=2)
    video = tmp / "feed.avi"
    write_walkup_video(video, [Passenger("not_enrolled", str(sorted(people[2].glob("*.jpg"))[0]))], fps=15.0)
    cfg = parse_config(_lane_config(tmp, video, keep_refer_crops=True, refer_crop_retention_days=3), tmp)
    cfg.template_key_file.parent.mkdir(parents=True, mode=0o700)
    cipher = TemplateCipher.load_or_create(cfg.template_key_file)
    with WatchlistStore(cfg.gate.state_dir, cipher=cipher) as store:
        for i, d in enumerate(people[:2], start=1):
            r = enrol_photos(default_pipeline, d.name, [sorted(d.glob("*.jpg"))[0]])
            store.upsert_subject(Subject(d.name, "allow"), [Template(r.vectors[0], r.model_id)], seq=i)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    t.join(120)
    if t.is_alive():
        daemon.stop_requested.set()
        t.join(20)
    daemon.close()
    return cfg


def test_daemon_keeps_a_sealed_crop_per_refer_decision_when_enabled(referred_lane):
    cfg = referred_lane
    with AuditLog(cfg.gate.state_dir, read_only=True) as log:
        refers = {r.seq: r for r in log.iter_since(0)
                  if r.body.get("event") == "decision" and r.body["decision"]["outcome"] == "refer"}
    assert refers, "the policy should have referred the traveller"
    crop_dir = cfg.gate.state_dir / CROPS_DIR_NAME
    store = ReferCropStore(cfg.gate.state_dir, TemplateCipher.from_key_file(cfg.template_key_file), timedelta(days=3))
    crops = store.crops()
    assert mode(crop_dir) == 0o700 and crops
    assert {c.audit_seq for c in crops} == set(refers)  # one crop per REFER, named after its record
    for c in crops:
        assert mode(c.path) == 0o600 and not c.path.read_bytes().startswith(JPEG_MAGIC)
        face = cv2.imdecode(np.frombuffer(store.open(c.path), np.uint8), cv2.IMREAD_COLOR)
        assert face is not None and 40 <= face.shape[0] < 480  # a face crop, not a whole frame
        assert c.taken_at.strftime("%Y-%m-%dT%H:%M:%S") == refers[c.audit_seq].ts[:19]
    for p in cfg.gate.state_dir.rglob("*"):  # still no readable image anywhere
        assert p.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp"), p


def test_daemon_opens_no_crop_folder_when_the_setting_is_off(tmp_path, default_pipeline):
    video = tmp_path / "feed.avi"
    write_walkup_video(video, [Passenger("not_enrolled", str(sorted(lfw_people(1, min_images=1)[0].glob("*.jpg"))[0]))],
                       approach_frames=2, dwell_frames=1, gap_frames=1, lead_in_frames=1)
    cfg = parse_config(_lane_config(tmp_path, video), tmp_path)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)
    try:
        daemon.open()
        assert daemon.refer_crops is None
    finally:
        daemon.close()
    assert not (cfg.gate.state_dir / CROPS_DIR_NAME).exists()


@pytest.mark.parametrize("loose", ["keys/templates.key", "watchlist.db", "audit.db"])
def test_daemon_refuses_to_start_with_a_loose_key_or_database(tmp_path, default_pipeline, loose):
    video = tmp_path / "feed.avi"
    write_walkup_video(video, [], lead_in_frames=2)
    cfg = parse_config(_lane_config(tmp_path, video), tmp_path)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)  # a first start creates everything private
    daemon.open()
    daemon.close()
    assert mode(cfg.template_key_file) == 0o600
    target = cfg.gate.state_dir / loose
    target.chmod(0o644)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)
    try:
        with pytest.raises(StartupError, match=rf"{target}.*mode 0644.*chmod 600"):
            daemon.open()
    finally:
        daemon.close()
    assert mode(target) == 0o644  # refused, not silently "fixed"
