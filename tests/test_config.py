"""Configuration errors must name the key, the bad value and what is allowed."""
from pathlib import Path

import pytest

from configschema import ConfigError
from gate.config import load_config, parse_config, reference_markdown
from tools.gated import main as gated_main

REPO = Path(__file__).resolve().parents[1]

MINIMAL = {
    "gate": {"id": "G1"},
    "camera": {"source": "0"},
    "models": {"dir": "models"},
    "lane": {"lane_id": "L1", "policy": {"threshold_1n": 0.93, "min_margin": 0.03, "threshold_1to1": 0.92,
                                         "deny_threshold": 0.92}},
}


def _with(path: str, value):
    import copy

    d = copy.deepcopy(MINIMAL)
    *parents, leaf = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return d


_DELETE = object()


def _examples(kind: str) -> list:
    """The shipped example configs of one program: a lane has [lane], a station [station], a
    central node [central]."""
    def tables(p):
        return {t for t in ("lane", "station", "central") if f"\n[{t}]" in "\n" + p.read_text()}
    programs = {p: (tables(p) & {"lane", "station"}) or tables(p) for p in (REPO / "config").glob("*.toml")}
    return sorted(p for p, kinds in programs.items() if kind in kinds)


@pytest.mark.parametrize("example", _examples("lane"), ids=lambda p: p.name)
def test_shipped_example_configs_are_valid(example):
    cfg = load_config(example)
    assert cfg.gate.id and cfg.lane.lane_id


@pytest.mark.parametrize("example", _examples("station"), ids=lambda p: p.name)
def test_shipped_station_configs_are_valid(example):
    from kiosk.config import load_config as load_station_config

    assert load_station_config(example) is not None


@pytest.mark.parametrize("example", _examples("central"), ids=lambda p: p.name)
def test_shipped_central_configs_are_valid(example):
    from sync.config import load_central_config

    assert load_central_config(example).database


def test_every_shipped_config_is_checked():
    checked = {p for kind in ("lane", "station", "central") for p in _examples(kind)}
    assert checked == set((REPO / "config").glob("*.toml"))


def test_shipped_central_node_configs_are_valid_and_differ_only_in_the_node():
    from sync.central_db import is_postgres
    from sync.config import load_central_config

    nodes = [load_central_config(p) for p in sorted((REPO / "config").glob("central-*.toml"))]
    assert len(nodes) >= 2
    assert len({n.node_name for n in nodes}) == len(nodes)
    for n in nodes:
        assert is_postgres(n.database) and "target_session_attrs=read-write" in n.database
        assert n.database.count(",") >= 1  # a multi-host string: every Patroni member listed
    assert len({(n.base_port, n.secret_key_file, n.audit_retention_days) for n in nodes}) == 1
    # one template key for one database: every node names the same file
    assert len({n.template_key_path for n in nodes}) == 1


def test_minimal_config_gets_safe_defaults(tmp_path):
    cfg = parse_config(MINIMAL, tmp_path)
    assert type(cfg.device).TYPE == "sim" and cfg.models.pad_required is True
    assert cfg.models.dir == (tmp_path / "models").resolve()  # relative to the config file
    assert cfg.control_socket == cfg.gate.state_dir / "control.sock"


@pytest.mark.parametrize("path, value, expect", [
    ("gate.id", _DELETE, "missing required key gate.id"),
    ("lane.policy.threshold_1n", _DELETE, "missing required key lane.policy.threshold_1n"),
    ("lane.policy.threshold_1n", "high", "lane.policy.threshold_1n = 'high' must be a number"),
    ("lane.policy.threshold_1n", 1.5, "above the maximum 1.0"),
    ("lane.policy.fuse_k", 0, "below the minimum 1"),
    ("lane.policy.fuse_k", 2.5, "must be a whole number"),
    ("models.flip", "yes", "must be true or false"),
    ("gate.log_level", "LOUD", "choose one of: 'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ("camera.sourse", "1", "unknown key camera.sourse — did you mean camera.source?"),
    ("lane.policy.deny_threshold", 0.99, "must not exceed threshold_1n"),
    ("device", {"type": "teleporter"}, "device.type = 'teleporter' is not allowed"),
    ("device", {"type": "relay"}, "missing required key device.port"),
    ("device", {"type": "relay", "port": "/dev/ttyUSB0", "inputs": {"passage": 9}}, "inputs 0..7"),
    ("device", {"type": "relay", "port": "/dev/ttyUSB0", "inputs": {"pasage": 0}}, "device.inputs.pasage"),
    ("camera", "0", "[camera] must be a table"),
])
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, path, value, expect):
    with pytest.raises(ConfigError) as e:
        parse_config(_with(path, value), tmp_path)
    assert expect in str(e.value)


def test_unknown_section_and_missing_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[camra\] — did you mean \[camera\]"):
        parse_config({**MINIMAL, "camra": {}}, tmp_path)
    d = dict(MINIMAL)
    del d["lane"]
    with pytest.raises(ConfigError, match=r"missing section \[lane\]"):
        parse_config(d, tmp_path)


def test_unreadable_and_malformed_files(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gate\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_bytes(b"\xff\xfe[gate]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    assert gated_main(["--config", str(bad), "--check"]) == 2
    assert "configuration error" in capsys.readouterr().err


@pytest.mark.parametrize("loader", ["kiosk.config:load_config", "sync.config:load_central_config"])
def test_the_station_and_central_read_their_files_the_same_way(tmp_path, loader):
    import importlib

    module, name = loader.split(":")
    load = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[station\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
    bad.write_bytes(b"\xff\xfe[station]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(bad)


def test_device_table_builds_the_typed_driver_config(tmp_path):
    from devices.config import InputMap, RelayConfig

    d = {**MINIMAL, "device": {"type": "relay", "port": "/dev/ttyUSB0", "green_relay": 2,
                               "inputs": {"passage": 0, "fire_alarm": 3}}}
    assert parse_config(d, tmp_path).device == RelayConfig(port="/dev/ttyUSB0", green_relay=2,
                                                          inputs=InputMap(passage=0, fire_alarm=3))
    with pytest.raises(ConfigError, match="unknown key device.colour"):
        parse_config({**MINIMAL, "device": {"type": "relay", "port": "x", "colour": "red"}}, tmp_path)


def test_sync_table_is_checked_by_the_same_schema(tmp_path):
    d = {**MINIMAL, "sync": {"central_host": "c", "base_port": 5556, "scopes": ["lane:L1", "flight:BA1"],
                             "accepted_models": ["m1"], "secret_key_file": "keys/g.key_secret"}}
    cfg = parse_config(d, tmp_path).sync
    assert cfg.gate_id == "G1" and cfg.scopes == ("/flight/BA1/", "/lane/L1/")  # gate id from [gate]
    assert cfg.accepted_models == frozenset({"m1"})
    assert cfg.secret_key_file == (tmp_path / "keys/g.key_secret").resolve()
    for bad, expect in [({"base_port": "5556"}, "sync.base_port = '5556' must be a whole number"),
                        ({"scopes": ["gate:L1"]}, "sync.scopes"),
                        ({"heartbeat_timeout_s": 0}, "below the minimum"),
                        ({"hearbeat_timeout_s": 1.0}, "did you mean sync.heartbeat_timeout_s"),
                        ({"gate_id": "a b"}, "sync.gate_id")]:
        with pytest.raises(ConfigError, match=expect):
            parse_config({**d, "sync": {**d["sync"], **bad}}, tmp_path)


def test_sync_central_lists_several_nodes_and_the_first_gives_host_and_port(tmp_path):
    sync = {"scopes": ["lane:L1"], "accepted_models": ["m1"], "central": ["tcp://a.example:5556", "b.example:6000"]}
    cfg = parse_config({**MINIMAL, "sync": sync}, tmp_path).sync
    assert (cfg.central_host, cfg.base_port) == ("a.example", 5556)
    assert [str(e) for e in cfg.endpoints()] == ["a.example:5556", "b.example:6000"]
    one = parse_config({**MINIMAL, "sync": {**sync, "central": "tcp://c.example:7000"}}, tmp_path).sync
    assert [str(e) for e in one.endpoints()] == ["c.example:7000"]
    for bad, expect in [(["tcp://a.example"], "must look like tcp://host:5556"), ([], "list of endpoints"),
                        (["tcp://a:5556", "b:99999"], r"sync.central = .*base port must be 1..65532")]:
        with pytest.raises(ConfigError, match=expect):
            parse_config({**MINIMAL, "sync": {**sync, "central": bad}}, tmp_path)


def test_every_key_is_documented_in_the_generated_reference():
    md = reference_markdown()
    for key in ("gate.id", "camera.source", "lane.policy.threshold_1n", "lane.tracking.capture_min_face_px",
                "device.(osdp).scbk_file", "device.(relay).port", "models.pad_required", "quality.min_inter_eye_px",
                "sync.central_host", "sync.scopes"):
        assert f"`{key}`" in md, key


# ----- thresholds given as the calibration record they came from -------------------------------

def _record(path: Path, *, embedder: str = "dlib-resnet-v1", detector: str = "mtcnn-v1", flip: bool = True) -> Path:
    """A calibration record from synthetic scores (the record format and the resolution are what
    is tested here; records from real photos: tests/test_calibrate.py)."""
    import numpy as np

    from vision import calibrate as cal

    rng = np.random.default_rng(0)
    gen, imp = rng.normal(0.95, 0.02, 500), rng.normal(0.80, 0.04, 40_000)
    ident = (np.ones(400, bool), rng.normal(0.95, 0.02, 400), rng.normal(0.85, 0.03, 2_000), 300)
    rec = cal.calibrate(gen, imp, [1e-3, 1e-4], description="synthetic scores for a test", data={},
                        models={"detector": detector, "embedder": embedder, "flip": flip}, ident=ident,
                        fpir_targets=[0.003, 0.01])
    cal.write_record(rec, path)
    return path


def _policy_from_record(**refs) -> dict:
    d = _with("lane.policy.threshold_1to1", 0.92)
    d["lane"]["policy"].update(refs)
    return d


def test_a_threshold_can_refer_to_its_calibration_record(tmp_path):
    from vision import calibrate as cal

    _record(tmp_path / "cal.json")
    cfg = parse_config(_policy_from_record(
        threshold_1to1={"record": "cal.json", "far": 0.001},  # relative to the config's folder
        threshold_1n={"record": "cal.json", "fpir": 0.003},
        deny_threshold={"record": "cal.json", "fpir": 0.01}), tmp_path)
    rec = cal.load_record(tmp_path / "cal.json")
    assert cfg.lane.policy.threshold_1to1 == rec.point("1:1", 1e-3).threshold
    assert cfg.lane.policy.threshold_1n == rec.point("1:N", 0.003).threshold
    assert cfg.lane.policy.deny_threshold == rec.point("1:N", 0.01).threshold < cfg.lane.policy.threshold_1n
    assert set(cfg.calibration) == {"lane.policy.threshold_1to1", "lane.policy.threshold_1n",
                                    "lane.policy.deny_threshold"}
    line = cfg.calibration["lane.policy.threshold_1to1"].line()
    assert "1:1 FAR 0.001" in line and "synthetic scores for a test" in line and "dlib-resnet-v1" in line
    assert "/40000" in line and "upper bound" in line
    # a bare number is still a bare number, with no record claimed
    assert "lane.policy.min_margin" not in cfg.calibration


@pytest.mark.parametrize("ref, expect", [
    ({"record": "cal.json", "far": 0.00001}, "threshold_1to1: calibration record .* has no 1:1 operating point "
                                             "at FAR 1e-05 \\(supported: 0.001, 0.0001\\)"),
    ({"record": "cal.json", "fpir": 0.003}, "threshold_1to1 is a 1:1 threshold: .* needs far"),
    ({"record": "cal.json", "far": 0.001, "fpir": 0.01}, "exactly one target"),
    ({"record": "cal.json"}, "exactly one target"),
    ({"record": "absent.json", "far": 0.001}, "cannot read calibration record .*absent.json"),
    ({"record": "cal.json", "far": 0.001, "fra": 1}, "unknown key lane.policy.threshold_1to1.fra"),
])
def test_record_references_are_checked_naming_the_key(tmp_path, ref, expect):
    _record(tmp_path / "cal.json")
    with pytest.raises(ConfigError, match=expect):
        parse_config(_policy_from_record(threshold_1to1=ref), tmp_path)


def test_a_record_of_another_model_is_refused_naming_both_ids(tmp_path, capsys):
    """The record was measured with MobileFaceNet; the lane runs the default dlib embedder: its
    FAR does not carry over, so gated refuses to start (and --check says the same) in one line."""
    _record(tmp_path / "mfn.json", embedder="mobilefacenet")
    toml = tmp_path / "lane.toml"
    toml.write_text('[gate]\nid = "G1"\n[camera]\nsource = "0"\n[models]\ndir = "models"\n'
                    '[lane]\nlane_id = "L1"\n[lane.policy]\nthreshold_1n = 0.93\nmin_margin = 0.03\n'
                    'threshold_1to1 = { record = "mfn.json", far = 0.001 }\ndeny_threshold = 0.92\n')
    for argv in (["--config", str(toml)], ["--config", str(toml), "--check"]):
        assert gated_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "'mobilefacenet'" in err and "'dlib-resnet-v1'" in err and "lane.policy.threshold_1to1" in err
    _record(tmp_path / "mfn.json", flip=False)  # the same models, templates without flip: another scale
    with pytest.raises(ConfigError, match="flip = false, this config has models.flip = true"):
        load_config(toml)
    _record(tmp_path / "mfn.json", detector="scrfd-500m")
    with pytest.raises(ConfigError, match="detector 'scrfd-500m', this config runs 'mtcnn-v1'"):
        load_config(toml)


def test_gated_check_shows_the_record_behind_each_threshold(tmp_path, capsys):
    _record(tmp_path / "cal.json")
    toml = tmp_path / "lane.toml"
    toml.write_text(f'[gate]\nid = "G1"\nstate_dir = "{tmp_path / "state"}"\n[camera]\nsource = "0"\n'
                    '[models]\ndir = "models"\n[lane]\nlane_id = "L1"\n[lane.policy]\n'
                    'threshold_1n = { record = "cal.json", fpir = 0.003 }\nmin_margin = 0.03\n'
                    'threshold_1to1 = { record = "cal.json", far = 0.001 }\ndeny_threshold = 0.8\n')
    gated_main(["--config", str(toml), "--check"])  # fails on the missing camera and models: not the point
    out = capsys.readouterr().out
    assert "threshold: lane.policy.threshold_1to1 = " in out and "1:1 FAR 0.001" in out
    assert "threshold: lane.policy.threshold_1n = " in out and "1:N FPIR 0.003" in out
    assert "synthetic scores for a test" in out and "models mtcnn-v1 + dlib-resnet-v1" in out
    assert "lane.policy.deny_threshold = 0.8 (a bare number: no calibration record" in out


def test_the_lane_refuses_at_start_up_when_the_loaded_model_is_not_the_records(tmp_path, mtcnn_manifest,
                                                                             dlib_resnet_manifest):
    """The start-up check compares the ids of the models actually loaded (not just the names the
    config gives) against the record's: real models, a record claiming another embedder."""
    import dataclasses

    from gate.daemon import LaneDaemon, StartupError

    models_dir = Path(dlib_resnet_manifest.path).parent
    if Path(mtcnn_manifest.path).parent != models_dir:
        pytest.skip("default models built in two folders")
    _record(tmp_path / "cal.json")
    d = _policy_from_record(threshold_1to1={"record": "cal.json", "far": 0.001})
    d["models"] = {"dir": str(models_dir), "pad_required": False}
    d["gate"]["state_dir"] = str(tmp_path / "state")
    cfg = parse_config(d, tmp_path)
    other = _record(tmp_path / "other.json", embedder="arcface-r100")
    from vision import calibrate as cal

    c = cfg.calibration["lane.policy.threshold_1to1"]
    cfg = dataclasses.replace(cfg, calibration={c.key: dataclasses.replace(c, record=cal.load_record(other))})
    daemon = LaneDaemon(cfg)
    try:
        with pytest.raises(StartupError, match="embedder 'arcface-r100', this config runs 'dlib-resnet-v1'"):
            daemon.open()
    finally:
        daemon.close()
