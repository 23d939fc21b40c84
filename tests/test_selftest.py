"""`gatectl selftest` on real parts: a folder camera through the capture thread, the default
models on the reference photo, the simulated turnstile and a relay board port that is not
there, and a real central (ZeroMQ, CURVE, ZAP allowlist) on loopback."""
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from gate import known_answer
from gate.checks import Status, passed
from gate.config import load_config
from gate.selftest import SelftestOptions, check_clock, check_disk, run_selftest, selftest_config
from models.manifest import load_manifest, write_manifest
from sync.central_server import CentralServer
from tests.sync_helpers import Deployment
from tests.test_gate_image import gather_models, write_frames, write_lane_config
from tools.gatectl import main as gatectl

FAST = SelftestOptions(camera_timeout_s=1.0, central_timeout_s=1.0, min_free_mb=1)


@pytest.fixture(scope="module")
def lane(tmp_path_factory, mtcnn_manifest, dlib_resnet_manifest):
    """A config folder as an installed slot has it: config, models/ and known-answer.json."""
    tmp = tmp_path_factory.mktemp("selftest")
    models = gather_models(tmp / "cfg" / "models", mtcnn_manifest, dlib_resnet_manifest)
    frames = write_frames(tmp / "frames")
    cfg = write_lane_config(tmp / "cfg", state_dir=tmp / "state", camera=str(frames))
    known_answer.write(known_answer.record(models, "mtcnn-v1", "dlib-resnet-v1", True),
                       tmp / "cfg" / known_answer.FILE_NAME)
    return cfg


def rows(checks):
    return {c.name: c for c in checks}


def variant(lane: Path, tmp_path: Path, old: str, new: str) -> Path:
    """The lane's config with one line changed, in the same folder (so models/ still resolve)."""
    path = lane.with_name(f"{tmp_path.name}.toml")
    text = lane.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_a_healthy_lane_passes_with_a_table_and_exit_code_0(lane, capsys):
    code = gatectl(["selftest", "--config", str(lane), "--camera-timeout", "2", "--min-free-mb", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "overall: PASS" in out
    for name in ("camera", "models", "models known answer", "turnstile", "free disk", "clock"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert line.split()[len(name.split())] == "PASS", line
    r = rows(selftest_config(lane, FAST))
    assert r["central"].status is Status.SKIP and "no [sync]" in r["central"].detail
    assert r["pad"].status is Status.WARN and "not provisioned" in r["pad"].detail
    assert "cosine 1.0000" in r["models known answer"].detail or "cosine 0.999" in r["models known answer"].detail


def test_a_missing_camera_is_a_fail_row_and_exit_code_1(lane, tmp_path, capsys):
    cfg = variant(lane, tmp_path, 'source = "', f'source = "{tmp_path}/gone')
    code = gatectl(["selftest", "--config", str(cfg), "--camera-timeout", "0.5", "--min-free-mb", "1", "--json"])
    got = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert code == 1
    assert got["camera"]["status"] == "FAIL" and "0 of 3 frames" in got["camera"]["detail"]
    assert got["turnstile"]["status"] == "PASS", "one failed check does not hide the others"


def test_a_changed_known_answer_fails(lane, tmp_path):
    folder = tmp_path / "slot"
    folder.mkdir()
    (folder / "models").symlink_to(lane.parent / "models")
    cfg = folder / "config.toml"
    cfg.write_text(lane.read_text())
    answer = known_answer.load(lane.parent / known_answer.FILE_NAME)
    v = np.asarray(answer.embedding)
    v[:8] = -v[:8]  # a model that computes something slightly different
    known_answer.write(dataclasses.replace(answer, embedding=tuple(v / np.linalg.norm(v))),
                       folder / known_answer.FILE_NAME)
    ka = rows(run_selftest(load_config(cfg), FAST))["models known answer"]
    assert ka.status is Status.FAIL and "need ≥ 0.999" in ka.detail
    (folder / known_answer.FILE_NAME).unlink()
    assert rows(run_selftest(load_config(cfg), FAST))["models known answer"].status is Status.FAIL


def test_a_model_file_that_does_not_match_its_manifest_fails(lane, tmp_path):
    folder = tmp_path / "slot"
    models = folder / "models"
    models.mkdir(parents=True)
    for name in ("mtcnn-v1", "dlib-resnet-v1"):
        m = load_manifest(lane.parent / "models" / f"{name}.manifest.json")
        files = {r: dataclasses.replace(f, file=str(m.file_path(r)),
                                        sha256=("0" * 64 if name == "dlib-resnet-v1" else f.sha256))
                 for r, f in m.files.items()}
        write_manifest(dataclasses.replace(m, files=files, path=None), models)
    cfg = folder / "config.toml"
    cfg.write_text(lane.read_text())
    r = rows(run_selftest(load_config(cfg), FAST))
    assert r["models"].status is Status.FAIL and "dlib-resnet-v1" in r["models"].detail


def test_pad_required_without_pad_fails_and_a_dead_turnstile_port_fails(lane, tmp_path):
    cfg = variant(lane, tmp_path, "pad_required = false", "pad_required = true")
    cfg.write_text(cfg.read_text() + '\n[device]\ntype = "relay"\nport = "/dev/no-such-tty"\nconnect_timeout_s = 0.3\n')
    r = rows(selftest_config(cfg, FAST))
    assert r["pad"].status is Status.FAIL and "not provisioned" in r["pad"].detail
    assert r["turnstile"].status is Status.FAIL and "/dev/no-such-tty" in r["turnstile"].detail


def test_disk_and_clock_limits(lane):
    cfg = load_config(lane)
    assert check_disk(cfg, dataclasses.replace(FAST, min_free_mb=1e12)).status is Status.FAIL
    assert check_disk(cfg, FAST).status is Status.PASS
    assert check_clock(cfg, FAST, now=datetime(1970, 1, 2, tzinfo=timezone.utc)).status is Status.FAIL
    far = datetime.now(timezone.utc) + timedelta(days=365 * 30)
    assert check_clock(cfg, FAST, now=far).status is Status.FAIL
    assert check_clock(cfg, FAST).status is Status.PASS


@pytest.fixture()
def central(tmp_path):
    dep = Deployment(tmp_path / "deploy")
    srv = CentralServer(dep.central_config())
    srv.start()
    yield dep
    srv.stop()


def _sync_config(lane: Path, tmp_path: Path, dep: Deployment, secret: Path) -> Path:
    path = lane.with_name(f"{tmp_path.name}-sync.toml")
    path.write_text(lane.read_text() + f'''
[sync]
central_host = "127.0.0.1"
base_port = {dep.base_port}
scopes = ["lane:L1"]
accepted_models = ["dlib-resnet-v1"]
secret_key_file = "{secret}"
central_public_key_file = "{dep.central_public}"
''')
    return path


def test_central_reachable_with_a_registered_key_and_refused_without(lane, tmp_path, central):
    from sync.central import Central

    registered = central.add_gate("G1", ["lane:L1"])
    r = rows(selftest_config(_sync_config(lane, tmp_path, central, registered), FAST))["central"]
    assert r.status is Status.PASS and "CURVE" in r.detail
    health = Central(central.db_path).conn.execute("SELECT status FROM gate_health WHERE gate_id='G1'").fetchone()
    assert health == ("selftest",)
    stranger = central.add_gate("G1x", ["lane:L1"], register=False)
    checks = selftest_config(_sync_config(lane, tmp_path / "s", central, stranger), FAST)
    r = rows(checks)["central"]
    assert r.status is Status.FAIL and "no reply" in r.detail
    assert not passed(checks)
