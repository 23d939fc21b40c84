"""Configuration errors must name the key, the bad value and what is allowed."""
import tomllib
from pathlib import Path

import pytest

from gate.config import load_config, parse_config, reference_markdown
from gate.schema import ConfigError
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


@pytest.mark.parametrize("example", sorted(p for p in (REPO / "config").glob("*.toml")
                                            if not p.name.startswith("central-")), ids=lambda p: p.name)
def test_shipped_example_configs_are_valid(example):
    cfg = load_config(example)
    assert cfg.gate.id and cfg.lane.lane_id


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


def test_every_key_is_documented_in_the_generated_reference():
    md = reference_markdown()
    for key in ("gate.id", "camera.source", "lane.policy.threshold_1n", "lane.tracking.capture_min_face_px",
                "device.(osdp).scbk_file", "device.(relay).port", "models.pad_required", "quality.min_inter_eye_px"):
        assert f"`{key}`" in md, key
