"""Gate images on real parts: the default models converted from their wheels, real Ed25519
signatures, real tar files, A/B slots on disk, and the real self-test (folder camera, simulated
turnstile) deciding whether an install stays."""
import dataclasses
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from gate.checks import Status, passed
from gate.image import ImageError, build_bundle, extract_bundle, read_manifest, verify_bundle, verify_tree
from gate.image_install import current_slot, install, rollback, slot_dir, status
from gate.image_signing import generate_signing_key
from gate.selftest import SelftestOptions, selftest_config
from models.manifest import write_manifest
from sync.keys import generate_keypair_files
from tests.sync_helpers import free_base_port
from tools.gate_image import main as gate_image

FAST = SelftestOptions(camera_timeout_s=1.5, central_timeout_s=0.5, min_free_mb=1)


def fast_selftest(config: Path):
    return selftest_config(config, FAST)


def write_frames(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((120, 160, 3), 60 + 40 * i, np.uint8))
    return folder


def write_lane_config(folder: Path, *, state_dir: Path, camera: str, lane: str = "L1", extra: str = "",
                      gate_id: str = "G1") -> Path:
    """A lane config in the shape a bundle needs: models in "models" beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lane.toml"
    path.write_text(f'''
[gate]
id = "{gate_id}"
site = "SGN"
state_dir = "{state_dir}"

[camera]
source = "{camera}"
fps = 30.0
loop = true

[models]
dir = "models"
pad_required = false
min_face_px = 40

[lane]
lane_id = "{lane}"

[lane.policy]
threshold_1n = 0.93
min_margin = 0.03
threshold_1to1 = 0.92
deny_threshold = 0.92
{extra}''')
    return path


def gather_models(folder: Path, *manifests) -> Path:
    """One folder holding both default models' manifests (files referenced where they are)."""
    folder.mkdir(parents=True, exist_ok=True)
    for m in manifests:
        files = {r: dataclasses.replace(f, file=str(m.file_path(r))) for r, f in m.files.items()}
        write_manifest(dataclasses.replace(m, files=files, path=None), folder)
    return folder


@pytest.fixture(scope="module")
def kit(tmp_path_factory, mtcnn_manifest, dlib_resnet_manifest):
    """Keys, models, a camera folder and a built bundle, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("image")
    k = dataclasses.make_dataclass("Kit", ["tmp", "models", "signing", "central_key", "frames", "root", "bundle"])
    models = gather_models(tmp / "models-src", mtcnn_manifest, dlib_resnet_manifest)
    signing = generate_signing_key(tmp / "fe")
    central_key = generate_keypair_files(tmp / "central", "central").public
    frames = write_frames(tmp / "frames")
    root = tmp / "root"
    cfg = write_lane_config(tmp / "cfg", state_dir=root / "data", camera=str(frames))
    built = build_bundle(site="SGN", lane="L1", config=cfg, central_key=central_key, out_dir=tmp / "out",
                         signing_key=signing.private, models_dir=models)
    return k(tmp, models, signing, central_key, frames, root, built.path)


def build(kit, name: str, *, camera: str | None = None, extra: str = "", root: Path | None = None,
          version: int | None = None, gate_id: str = "G1", lane: str = "L1", gate_ids=None) -> Path:
    cfg = write_lane_config(kit.tmp / f"cfg-{name}", state_dir=(root or kit.root) / "data",
                            camera=camera or str(kit.frames), extra=extra, gate_id=gate_id, lane=lane)
    return build_bundle(site="SGN", lane=lane, config=cfg, central_key=kit.central_key, out_dir=kit.tmp / f"out-{name}",
                        signing_key=kit.signing.private, models_dir=kit.models, image_version=version,
                        gate_ids=gate_ids).path


def retar(src_dir: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        for p in sorted(src_dir.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(src_dir).as_posix())
    return out


def failures(checks):
    return {c.name: c.detail for c in checks if c.status is Status.FAIL}


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_data_dir(root: Path) -> dict[str, str]:
    data = root / "data"
    (data / "keys").mkdir(parents=True, exist_ok=True)
    (data / "watchlist.db").write_bytes(os.urandom(4096))
    (data / "audit.db").write_bytes(os.urandom(8192))
    (data / "keys" / "templates.key").write_bytes(os.urandom(32))
    return tree_hashes(data)


# ----------------------------------------------------------------------------- build / verify
def test_bundle_verifies_and_lists_every_file_model_and_licence(kit):
    checks = verify_bundle(kit.bundle, kit.signing.public)
    assert passed(checks), failures(checks)
    with tarfile.open(kit.bundle) as tar:
        names = set(tar.getnames())
    assert {"MANIFEST.json", "MANIFEST.sig", "config.toml", "keys/central.key", "known-answer.json",
            "systemd/gated@.service", "models/dlib-resnet-v1.onnx", "models/mtcnn-v1-pnet.onnx"} <= names
    assert not any(n.endswith(".key_secret") for n in names), "a bundle must never carry a secret key"
    extracted = kit.tmp / "look"
    extract_bundle(kit.bundle, extracted)
    m = read_manifest(extracted)
    assert {d["name"]: d["licence"] for d in m.models} == {"mtcnn-v1": "MIT", "dlib-resnet-v1": "CC0-1.0"}
    assert m.software_version and m.site == "SGN" and m.lane == "L1"
    assert set(m.files) == names - {"MANIFEST.json", "MANIFEST.sig"}
    rows = {c.name for c in checks}
    assert {"signature", "config", "central key", "model mtcnn-v1", "file models/dlib-resnet-v1.onnx"} <= rows


def test_a_tampered_model_file_fails_and_is_named(kit, tmp_path):
    d = tmp_path / "x"
    extract_bundle(kit.bundle, d)
    onnx = d / "models" / "dlib-resnet-v1.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    checks = verify_bundle(retar(d, tmp_path / "tampered.tar"), kit.signing.public)
    bad = failures(checks)
    assert not passed(checks)
    assert "file models/dlib-resnet-v1.onnx" in bad and "manifest says" in bad["file models/dlib-resnet-v1.onnx"]
    assert "model dlib-resnet-v1" in bad
    assert "signature" not in bad and "file models/mtcnn-v1-pnet.onnx" not in bad
    assert gate_image(["verify", str(tmp_path / "tampered.tar"), "--pubkey", str(kit.signing.public)]) == 1


def test_wrong_key_fails_the_signature(kit, tmp_path, capsys):
    other = generate_signing_key(tmp_path / "other")
    checks = verify_bundle(kit.bundle, other.public)
    assert list(failures(checks)) == ["signature"]
    assert gate_image(["verify", str(kit.bundle), "--pubkey", str(other.public)]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert gate_image(["verify", str(kit.bundle), "--pubkey", str(kit.signing.public)]) == 0


def test_an_edited_manifest_or_an_added_file_fails(kit, tmp_path):
    d = tmp_path / "x"
    extract_bundle(kit.bundle, d)
    m = d / "MANIFEST.json"
    m.write_text(m.read_text().replace('"site": "SGN"', '"site": "HAN"'))
    (d / "models" / "extra.onnx").write_bytes(b"not in the manifest")
    bad = failures(verify_tree(d, kit.signing.public))
    assert "signature" in bad
    assert bad["file models/extra.onnx"] == "not listed in the signed manifest"


def test_build_refuses_a_config_whose_models_are_not_in_the_slot(kit, tmp_path):
    cfg = write_lane_config(tmp_path / "c", state_dir=tmp_path / "data", camera=str(kit.frames))
    cfg.write_text(cfg.read_text().replace('dir = "models"', f'dir = "{kit.models}"'))
    with pytest.raises(ImageError, match='dir must be "models"'):
        build_bundle(site="SGN", lane="L1", config=cfg, central_key=kit.central_key, out_dir=tmp_path / "o",
                     signing_key=kit.signing.private, models_dir=kit.models)
    with pytest.raises(ImageError, match="not 'L2'"):
        build_bundle(site="SGN", lane="L2", config=write_lane_config(tmp_path / "d", state_dir=tmp_path,
                                                                     camera="0"),
                     central_key=kit.central_key, out_dir=tmp_path / "o", signing_key=kit.signing.private,
                     models_dir=kit.models)


def test_keygen_writes_an_owner_only_private_key(tmp_path):
    assert gate_image(["keygen", "--out", str(tmp_path / "k")]) == 0
    assert stat.S_IMODE((tmp_path / "k" / "field-engineering.key").stat().st_mode) == 0o600
    assert gate_image(["keygen", "--out", str(tmp_path / "k")]) == 2  # never replaces a key
    (tmp_path / "k" / "field-engineering.key").chmod(0o644)
    cfg = write_lane_config(tmp_path / "c", state_dir=tmp_path / "data", camera="0")
    with pytest.raises(Exception, match="accessible by group or others"):
        build_bundle(site="SGN", lane="L1", config=cfg, central_key=tmp_path, out_dir=tmp_path / "o",
                     signing_key=tmp_path / "k" / "field-engineering.key")


# ----------------------------------------------------------------------------- install
def test_ab_install_keeps_the_previous_slot_and_never_touches_data(kit, tmp_path):
    root = tmp_path / "root"
    data_before = make_data_dir(root)
    second = build(kit, "second", root=root, version=5)
    first = build(kit, "first", root=root, version=5)  # the same version may be installed again
    r1 = install(first, root, kit.signing.public, fast_selftest)
    assert (r1.slot, r1.previous, r1.rolled_back) == ("a", None, False), failures(r1.checks)
    assert os.readlink(root / "current") == "slots/a"
    r2 = install(second, root, kit.signing.public, fast_selftest)
    assert (r2.slot, r2.previous, r2.active, r2.rolled_back) == ("b", "a", "b", False), failures(r2.checks)
    assert current_slot(root) == "b"
    assert passed(verify_tree(slot_dir(root, "a"), kit.signing.public)), "the previous slot is kept intact"
    rows = {s.name: s for s in status(root)}
    assert rows["b"].current and not rows["a"].current
    assert rows["a"].selftest == rows["b"].selftest == "PASS" and rows["a"].lane == "L1"
    assert rollback(root) == "a" and current_slot(root) == "a"
    assert tree_hashes(root / "data") == data_before


def test_an_install_whose_selftest_fails_rolls_back(kit, tmp_path, capsys):
    root = tmp_path / "root"
    data_before = make_data_dir(root)
    assert not install(build(kit, "good", root=root), root, kit.signing.public, fast_selftest).rolled_back
    broken = build(kit, "nocam", camera=str(tmp_path / "no-such-camera"), root=root)
    r = install(broken, root, kit.signing.public, fast_selftest)
    assert r.rolled_back and r.slot == "b" and r.active == "a"
    assert "camera" in failures(r.checks)
    assert current_slot(root) == "a"
    assert {s.name: s.selftest for s in status(root)} == {"a": "PASS", "b": "FAIL"}
    assert tree_hashes(root / "data") == data_before
    # the CLI says so and exits non-zero; the good slot stays current
    (root / "field-engineering.pub").write_bytes(kit.signing.public.read_bytes())
    code = gate_image(["install", str(broken), "--root", str(root), "--camera-timeout", "1", "--min-free-mb", "1"])
    assert code == 1 and "rolled back to slot a" in capsys.readouterr().err
    assert current_slot(root) == "a"


def test_a_bundle_that_does_not_verify_is_not_installed(kit, tmp_path):
    root = tmp_path / "root"
    install(build(kit, "ok", root=root), root, kit.signing.public, fast_selftest)
    d = tmp_path / "x"
    extract_bundle(kit.bundle, d)
    (d / "config.toml").write_text((d / "config.toml").read_text() + "\n# edited on site\n")
    with pytest.raises(ImageError, match="file config.toml"):
        install(retar(d, tmp_path / "t.tar"), root, kit.signing.public, fast_selftest)
    assert current_slot(root) == "a" and not slot_dir(root, "b").exists()


def test_first_install_generates_the_gate_keypair_on_the_device(kit, tmp_path):
    root = tmp_path / "root"
    secret = root / "data" / "keys" / "gate.key_secret"
    sync = f'''
[sync]
central_host = "127.0.0.1"
base_port = {free_base_port()}
scopes = ["lane:L1"]
accepted_models = ["dlib-resnet-v1"]
secret_key_file = "{secret}"
central_public_key_file = "keys/central.key"
'''
    bundle = build(kit, "sync", extra=sync, root=root)
    r = install(bundle, root, kit.signing.public, fast_selftest)
    assert r.generated_key == secret and not r.rolled_back
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.with_name("gate.key").is_file()
    central = {c.name: c for c in r.checks}["central"]
    assert central.status is Status.WARN and "register" in central.detail
    key_before = secret.read_bytes()
    # a later install keeps the key, and an unreachable central is then a real failure
    r2 = install(bundle, root, kit.signing.public, fast_selftest)
    assert r2.generated_key is None and r2.rolled_back and "central" in failures(r2.checks)
    assert secret.read_bytes() == key_before and current_slot(root) == "a"


def test_status_cli_lists_both_slots(kit, tmp_path, capsys):
    root = tmp_path / "root"
    install(build(kit, "st", root=root), root, kit.signing.public, fast_selftest)
    assert gate_image(["status", "--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:4] == ["a", "*", "SGN", "L1"] and out[2].split() == ["b", "(empty)"]


def test_a_bundle_with_a_path_out_of_the_slot_or_a_link_is_refused(kit, tmp_path):
    for name, kind in (("../escape.txt", tarfile.REGTYPE), ("models/link", tarfile.SYMTYPE)):
        evil = tmp_path / f"evil-{kind!r}.tar"
        with tarfile.open(kit.bundle) as src, tarfile.open(evil, "w") as dst:
            for m in src.getmembers():
                dst.addfile(m, src.extractfile(m))
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            dst.addfile(info, None if kind == tarfile.SYMTYPE else io.BytesIO(b""))
        checks = verify_bundle(evil, kit.signing.public)
        assert [c.name for c in checks] == ["bundle"] and checks[0].status is Status.FAIL, checks
    assert not (tmp_path.parent / "escape.txt").exists()


# ----------------------------------------------------------------------------- downgrade / identity
def _audit_events(root: Path) -> list[dict]:
    from gate.audit import AuditLog

    with AuditLog(root / "data", read_only=True) as log:
        return [r.body for r in log.iter_since(0)]


def test_an_older_signed_image_is_refused_unless_a_named_engineer_allows_it(kit, tmp_path, capsys):
    root = tmp_path / "root"
    newer, older = build(kit, "v20", root=root, version=20), build(kit, "v10", root=root, version=10)
    assert not install(newer, root, kit.signing.public, fast_selftest).rolled_back
    with pytest.raises(ImageError, match="image version 10 is older than version 20"):
        install(older, root, kit.signing.public, fast_selftest)
    assert current_slot(root) == "a" and not slot_dir(root, "b").exists()
    (root / "field-engineering.pub").write_bytes(kit.signing.public.read_bytes())
    fast = ["--camera-timeout", "1.5", "--min-free-mb", "1"]
    assert gate_image(["install", str(older), "--root", str(root), *fast]) == 2
    assert "a downgrade" in capsys.readouterr().err
    assert gate_image(["install", str(older), "--root", str(root), "--allow-downgrade", *fast]) == 2
    assert "--operator ID and --reason TEXT" in capsys.readouterr().err
    assert current_slot(root) == "a"
    code = gate_image(["install", str(older), "--root", str(root), "--allow-downgrade", "--operator", "fe-0042",
                       "--reason", "v20 drops frames on this camera", *fast])
    assert code == 0 and current_slot(root) == "b"
    record = [e for e in _audit_events(root) if e["event"] == "image_downgrade"]
    assert len(record) == 1 and record[0]["operator"] == "fe-0042" and record[0]["reason"].startswith("v20 drops")
    assert (record[0]["from_version"], record[0]["to_version"]) == (20, 10)
    # the floor stays at the newest image: rolling forward is free, going back again is not
    assert rollback(root) == "a"
    with pytest.raises(ImageError, match="older than version 20"):
        rollback(root)


def test_a_signed_bundle_for_another_gate_is_refused(kit, tmp_path):
    root = tmp_path / "root"
    assert not install(build(kit, "g1", root=root, version=3), root, kit.signing.public, fast_selftest).rolled_back
    (root / "IMAGE_STATE.json").unlink()  # a root set up before the state file: identity from the running slot
    for name, kwargs in (("g2", dict(gate_id="G2", lane="L2")),
                         ("g2-listed-g1-config", dict(gate_id="G2", gate_ids=("G1", "G2")))):
        with pytest.raises(ImageError, match="this is gate G1"):
            install(build(kit, name, root=root, version=4, **kwargs), root, kit.signing.public, fast_selftest)
        assert current_slot(root) == "a" and read_manifest(slot_dir(root, "a")).gate_ids == ["G1"]
    with pytest.raises(ImageError, match="not among the gates"):  # a builder cannot bind a config to other gates
        build(kit, "mismatch", root=root, gate_id="G1", gate_ids=("G2",))
    # a bundle listing this gate among several, with this gate's config, installs
    assert not install(build(kit, "g1-of-two", root=root, version=4, gate_ids=("G1", "G3")), root,
                       kit.signing.public, fast_selftest).rolled_back


def test_a_threshold_s_calibration_record_travels_in_the_bundle(kit, tmp_path):
    """A config whose 1:1 threshold refers to the shipped record: the record is bundled beside the
    config, signed like every file, and the bundle verifies; a record outside the config's folder
    cannot travel and is refused at build time."""
    import shutil as sh

    from tests.paths import REPO

    cfg = write_lane_config(tmp_path / "cfg", state_dir=tmp_path / "data", camera=str(kit.frames))
    sh.copyfile(REPO / "config" / "calibration-lfw-dev-default.json", tmp_path / "cfg" / "cal.json")
    cfg.write_text(cfg.read_text().replace("threshold_1to1 = 0.92",
                                           'threshold_1to1 = { record = "cal.json", far = 0.001 }'))
    built = build_bundle(site="SGN", lane="L1", config=cfg, central_key=kit.central_key, out_dir=tmp_path / "o",
                         signing_key=kit.signing.private, models_dir=kit.models)
    assert "cal.json" in built.manifest.files
    checks = verify_bundle(built.path, kit.signing.public)
    assert passed(checks), failures(checks)
    sh.copyfile(REPO / "config" / "calibration-lfw-dev-default.json", tmp_path / "outside.json")
    cfg.write_text(cfg.read_text().replace('record = "cal.json"', 'record = "../outside.json"'))
    with pytest.raises(ImageError, match="outside the config's folder"):
        build_bundle(site="SGN", lane="L1", config=cfg, central_key=kit.central_key, out_dir=tmp_path / "o2",
                     signing_key=kit.signing.private, models_dir=kit.models)
