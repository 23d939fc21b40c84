"""`gate-central enrol`: photo folders → templates with the real default models → central."""
import dataclasses
import shutil

import cv2
import numpy as np

from models.manifest import write_manifest
from models.provision import NORMALISATIONS, provision
from sync.central import Central
from tests.paths import SHARED_MODELS, lfw_people, require
from tools.gate_central import main as central_main


def _models_dir(tmp, *manifests):
    d = tmp / "models"
    d.mkdir(exist_ok=True)
    for m in manifests:
        files = {r: dataclasses.replace(f, file=str(m.file_path(r))) for r, f in m.files.items()}
        write_manifest(dataclasses.replace(m, files=files, path=None), d)
    return d


def test_enrol_folder_reports_rejects_and_refuses_mixed_models(tmp_path, mtcnn_manifest, dlib_resnet_manifest, capsys):
    models = _models_dir(tmp_path, mtcnn_manifest, dlib_resnet_manifest)
    people = tmp_path / "people"
    for d in lfw_people(3, min_images=2):
        (people / d.name).mkdir(parents=True)
        for photo in sorted(d.glob("*.jpg"))[:2]:
            shutil.copy(photo, people / d.name / photo.name)
    bad = people / "Nobody_Here"
    bad.mkdir()
    cv2.imwrite(str(bad / "wall.png"), np.full((200, 200, 3), 90, np.uint8))
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = tmp_path / "central.toml"
    cfg.write_text(f'[central]\ndb_path = "{tmp_path / "central.db"}"\n')
    rc = central_main(["--config", str(cfg), "enrol", "--from", str(people), "--scope", "lane:L1",
                       "--valid-until", "2099-01-01T00:00Z", "--models", str(models)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "REJECT" in out and "wall.png: no_face" in out and "broken.jpg: unreadable" in out
    assert "SKIP   Nobody_Here" in out and "enrolled 3 subject(s)" in out
    c = Central(tmp_path / "central.db")
    subjects = {s.subject_id: s for s in c.list_subjects(scope="lane:L1")}
    assert set(subjects) == {d.name for d in lfw_people(3, min_images=2)}
    assert all(c.templates_of(sid).shape == (2, 128) for sid in subjects)
    c.close()

    # a different embedder's templates may not join the same scope
    mfn = provision(require(SHARED_MODELS / "mobilefacenet.onnx"), "mobilefacenet", "arcface", "test only",
                    "../shared", tmp_path / "mfn", input_overrides=NORMALISATIONS["imagenet"])
    _models_dir(tmp_path, mfn)
    rc = central_main(["--config", str(cfg), "enroll", "--from", str(people), "--scope", "lane:L1",  # old spelling
                       "--models", str(models), "--embedder", "mobilefacenet"])
    out = capsys.readouterr().out
    assert rc == 1 and "enrolled 0 subject(s)" in out  # each subject refused and reported, none aborts the batch
    assert out.count("refused by the central") == 3 and "refusing to add model 'mobilefacenet'" in out


def test_a_bad_item_is_reported_and_skipped_never_stopping_the_batch(tmp_path, mtcnn_manifest, dlib_resnet_manifest,
                                                                    capsys):
    models = _models_dir(tmp_path, mtcnn_manifest, dlib_resnet_manifest)
    people = tmp_path / "people"
    a, b = lfw_people(2, min_images=2)
    for d, name in ((a, "VNM-079203012"), (a, "Nguyễn_Văn_An"), (b, "VNM-079303999"), (b, "DENIED-1")):
        (people / name).mkdir(parents=True)
        shutil.copy(sorted(d.glob("*.jpg"))[0], people / name / "photo.jpg")
    cfg = tmp_path / "central.toml"
    cfg.write_text(f'[central]\ndb_path = "{tmp_path / "central.db"}"\n')
    c = Central(tmp_path / "central.db")
    # DENIED-1 is already published in lane:L9 beside others of another model: re-enrolling it with
    # dlib templates would mix two models in L9, which the central refuses for this subject only
    for sid in ("DENIED-1", "OTHER-1"):
        c.enrol_subject(sid, "allow", ["lane:L9"], None, None, "other-model", np.eye(1, 16, dtype=np.float32))
    c.close()
    rc = central_main(["--config", str(cfg), "enroll", "--from", str(people), "--scope", "lane:L1",
                       "--models", str(models)])
    out = capsys.readouterr().out
    assert rc == 0 and "enrolled 2 subject(s)" in out
    assert "SKIP   Nguyễn_Văn_An: folder name (subject id)" in out and "opaque" in out
    assert "SKIP   DENIED-1: refused by the central" in out
    c = Central(tmp_path / "central.db")
    assert {s.subject_id for s in c.list_subjects(scope="lane:L1")} == {"VNM-079203012", "VNM-079303999"}
