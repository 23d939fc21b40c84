"""Ground staff's commands against a running lane, over the real control socket."""
import json
import threading
import time

import cv2
import numpy as np
import pytest

from gate.config import parse_config
from gate.control import ControlError, call
from gate.daemon import LaneDaemon
from tests.test_config import MINIMAL
from tools.gatectl import main as gatectl


@pytest.fixture()
def running_lane(tmp_path, default_pipeline):
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "empty.png"), np.full((480, 640, 3), 128, np.uint8))
    d = dict(MINIMAL, gate={"id": "G1", "state_dir": str(tmp_path / "state")},
             camera={"source": str(frames), "fps": 20.0, "loop": True},
             models={"dir": str(tmp_path), "pad_required": False}, device={"type": "sim"},
             lane={**MINIMAL["lane"], "open_timeout_s": 1.0})
    cfg = parse_config(d, tmp_path)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    sock = str(cfg.control_socket)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if call(cfg.control_socket, "status").get("mode") == "idle":
                break
        except ControlError:
            time.sleep(0.05)
    yield daemon, sock, cfg
    daemon.stop_requested.set()
    t.join(10)
    daemon.close()


def _json_lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def test_staff_open_is_one_audited_passage_with_who_and_why(running_lane, capsys):
    daemon, sock, cfg = running_lane
    assert gatectl(["--socket", sock, "open", "--operator", "staff-042", "--reason", "wheelchair user"]) == 0
    assert "lane idle → open" in capsys.readouterr().out
    sim = daemon._driver
    assert sim.last("unlock") is not None
    assert gatectl(["--socket", sock, "events", "--last", "5", "--json"]) == 0
    events = _json_lines(capsys.readouterr().out)
    manual = [e for e in events if e.get("event") == "manual_action"]
    assert manual and manual[-1]["operator_id"].startswith("staff-042 (uid ")
    assert manual[-1]["reason"] == "wheelchair user"


def test_out_of_service_ignores_passengers_until_back_in_service(running_lane, capsys):
    daemon, sock, _ = running_lane
    assert gatectl(["--socket", sock, "out-of-service", "--operator", "s1", "--reason", "cleaning"]) == 0
    assert call(sock, "status")["mode"] == "out_of_service" or daemon.state.mode == "out_of_service"
    time.sleep(0.6)
    assert gatectl(["--socket", sock, "status"]) == 0
    out = capsys.readouterr().out
    assert "out_of_service" in out and "NOT PROVISIONED" in out
    assert gatectl(["--socket", sock, "in-service", "--operator", "s1", "--reason", "done"]) == 0
    assert daemon.state.mode == "idle"


def test_commands_without_operator_or_reason_are_refused(running_lane):
    _, sock, _ = running_lane
    r = call(sock, "open", operator="", reason="x")
    assert not r["ok"] and "--operator" in r["error"]
    r = call(sock, "lock", operator="s1", reason=" ")
    assert not r["ok"]
    assert not call(sock, "fly")["ok"]


def test_events_follow_streams_new_records(running_lane):
    daemon, sock, _ = running_lane
    stream = call(sock, "events", stream=True, last=0, follow=True)
    call(sock, "lock", operator="s2", reason="check")
    got = None
    for e in stream:
        if e.get("event") == "manual_action":
            got = e
            break
    assert got["operator_id"].startswith("s2") and got["action"] == "lock"


def test_clear_messages_when_the_daemon_is_not_running(tmp_path, capsys):
    assert gatectl(["--socket", str(tmp_path / "none.sock"), "status"]) == 2
    assert "gated is not running" in capsys.readouterr().err


def test_audit_verify_offline_after_the_lane_stops(running_lane, capsys):
    daemon, sock, cfg = running_lane
    call(sock, "lock", operator="s3", reason="end of shift")
    daemon.stop_requested.set()
    time.sleep(0.5)
    assert gatectl(["audit", "verify", "--state-dir", str(cfg.gate.state_dir)]) == 0
    assert "PASS audit chain intact" in capsys.readouterr().out


def test_full_disk_keeps_the_lane_locked_and_it_recovers_when_space_returns(running_lane):
    daemon, sock, _ = running_lane
    audit = daemon.audit
    audit.set_size_limit(1)  # the disk is full: the database cannot grow by one more page
    for i in range(300):  # records still fit in the last page's free space for a while
        call(sock, "lock", operator="s9", reason=f"filling {i}")
        if "audit_log" in call(sock, "status").get("faults", []) or "audit_log" in daemon.state.faults:
            break
    sim = daemon._driver
    unlocks_before = [c for c in sim.commands if c.name == "unlock"]
    r = call(sock, "open", operator="s9", reason="test")
    time.sleep(0.6)
    status = call(sock, "status")
    assert "audit_log" in status["faults"] and status["mode"] == "out_of_service"
    assert not r.get("ok") or r["mode"] != "open"
    assert [c for c in sim.commands if c.name == "unlock"] == unlocks_before  # no opening without its record
    audit.set_size_limit(1 << 30)  # space is back
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and call(sock, "status").get("faults"):
        time.sleep(0.2)
    assert call(sock, "status")["faults"] == []
    assert call(sock, "open", operator="s9", reason="after recovery")["mode"] == "open"


def test_a_scanned_boarding_pass_puts_the_lane_in_one_to_one_mode(running_lane):
    """The pass names the traveller (their pseudonymous id); an unknown pass is referred."""
    from gate.watchlist import Subject
    from vision.types import Template

    daemon, sock, _ = running_lane
    v = np.ones(128, np.float32) / np.sqrt(128)
    daemon.store.upsert_subject(Subject("VN-P-000042", "allow"), [Template(v, daemon.matcher.model_id)], seq=1)
    sim = daemon._driver
    sim.present_token("VN-P-000042", "barcode")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and call(sock, "status").get("token_subject") != "VN-P-000042":
        time.sleep(0.1)
    assert call(sock, "status")["token_subject"] == "VN-P-000042"
    sim.present_token("NOT-ENROLLED-1", "barcode")
    time.sleep(0.8)
    events = call(sock, "events", last=20)["events"]
    assert any(e.get("event") == "token_unknown" or e.get("decision", {}).get("reason") == "token_unknown"
               for e in events), [e.get("event") for e in events]
    assert all("NOT-ENROLLED-1" not in json.dumps(e) for e in events)  # the raw token is never logged


def test_events_are_one_readable_line_each_and_status_says_where_the_central_is(running_lane, capsys):
    daemon, sock, cfg = running_lane
    gatectl(["--socket", sock, "out-of-service", "--operator", "s1", "--reason", "cleaning"])
    assert "lane idle → out-of-service" in capsys.readouterr().out  # modes spelt as the commands are
    assert gatectl(["--socket", sock, "events", "--last", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and not any(line.startswith("{") for line in lines)  # lane started, the action
    assert "staff out of service by s1 (uid" in lines[-1] and "[idle → out-of-service]" in lines[-1]
    time.sleep(0.6)  # the status snapshot is refreshed twice a second
    assert gatectl(["--socket", sock, "status"]) == 0
    out = capsys.readouterr().out
    assert "mode                 out-of-service" in out
    assert "central              standalone (no [sync] section)" in out


def test_cli_errors_are_one_line_with_what_to_do(tmp_path, capsys):
    assert gatectl(["audit", "verify", "--state-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no audit log at" in err and "state_dir" in err
    assert gatectl(["--socket", str(tmp_path / "none.sock"), "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_closed_pipe_ends_gatectl_quietly(running_lane):
    import subprocess
    import sys

    _, sock, _ = running_lane
    p = subprocess.run(f"{sys.executable} -m tools.gatectl --socket {sock} events --last 200 --json | head -c 10",
                       shell=True, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_gated_check_names_the_key_that_fails(tmp_path, capsys):
    from tools.gated import main as gated

    key = tmp_path / "scbk.hex"
    key.write_text("00" * 16)
    key.chmod(0o644)
    cfg = tmp_path / "lane.toml"
    cfg.write_text(f"""
[gate]
id = "G1"
state_dir = "{tmp_path / 'state'}"
[camera]
source = "{tmp_path / 'no-such-video.avi'}"
[models]
dir = "{tmp_path / 'models'}"
pad_required = false
[lane]
lane_id = "L1"
[lane.policy]
threshold_1n = 0.93
min_margin = 0.03
threshold_1to1 = 0.92
deny_threshold = 0.92
[device]
type = "osdp"
port = "{tmp_path / 'ttyUSB9'}"
scbk_file = "{key}"
""")
    assert gated(["--config", str(cfg), "--check"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and "." in line.split()[0]}
    assert "FAIL" in rows["camera.source"] and "does not exist" in rows["camera.source"]
    assert "FAIL" in rows["models.detector"]
    assert "FAIL" in rows["device.port"]
    assert "FAIL" in rows["device.scbk_file"] and "chmod 600" in rows["device.scbk_file"]
    assert "PASS" in rows["gate.state_dir"]
    assert "overall: FAIL" in out


def test_a_command_with_a_very_long_operator_id_is_refused_before_anything_happens(running_lane):
    daemon, sock, _ = running_lane
    before = daemon.audit.last_seq()
    r = call(sock, "open", operator="o" * 5000, reason="test")
    assert not r["ok"] and "at most 128" in r["error"]
    assert daemon._driver.last("unlock") is None and call(sock, "status")["mode"] == "idle"
    assert daemon.audit.last_seq() == before  # nothing recorded, because nothing happened


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(running_lane, default_pipeline):
    from gate.daemon import StartupError

    daemon, sock, cfg = running_lane
    second = LaneDaemon(cfg, pipeline=default_pipeline)
    with pytest.raises(StartupError, match="another gated .* is running on state dir"):
        second.open()
    second.close()
    assert call(sock, "status")["mode"] == "idle"  # the first one still owns its socket


def test_a_control_group_can_reach_the_socket_in_the_default_layout(tmp_path, default_pipeline):
    import grp
    import os
    import stat

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "empty.png"), np.full((480, 640, 3), 128, np.uint8))
    group = grp.getgrgid(os.getgid()).gr_name
    d = dict(MINIMAL, gate={"id": "G1", "state_dir": str(tmp_path / "state")},
             camera={"source": str(frames), "fps": 20.0, "loop": True},
             models={"dir": str(tmp_path), "pad_required": False}, device={"type": "sim"},
             control={"group": group})
    cfg = parse_config(d, tmp_path)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)
    try:
        daemon.open()
        st = os.stat(cfg.gate.state_dir)
        assert stat.S_IMODE(st.st_mode) == 0o710 and st.st_gid == os.getgid()  # group may traverse, not list
        sock = os.stat(cfg.control_socket)
        assert stat.S_IMODE(sock.st_mode) == 0o660 and sock.st_gid == os.getgid()
        for f in ("audit.db", "watchlist.db", "passages.db"):
            assert stat.S_IMODE(os.stat(cfg.gate.state_dir / f).st_mode) == 0o600
    finally:
        daemon.close()


def test_control_clients_are_bounded(running_lane):
    import socket as _socket

    from gate.control import MAX_CLIENTS

    _, sock, _ = running_lane
    held = []
    for _ in range(MAX_CLIENTS):
        s = _socket.socket(_socket.AF_UNIX)
        s.connect(sock)
        s.sendall(b'{"cmd": "events", "follow": true, "last": 0}\n')
        held.append(s)
    time.sleep(0.5)
    r = call(sock, "status")
    assert not r["ok"] and "too many control clients" in r["error"]
    for s in held:
        s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not call(sock, "status").get("ok"):
        time.sleep(0.3)
    assert call(sock, "status")["ok"]  # the slots come back when followers leave


def test_start_up_on_a_full_disk_fails_with_a_clear_message(tmp_path, default_pipeline):
    import os

    from gate.daemon import StartupError

    st = os.statvfs(tmp_path)
    free_mb = st.f_bavail * st.f_frsize / 2 ** 20
    d = dict(MINIMAL, gate={"id": "G1", "state_dir": str(tmp_path / "state"), "min_free_mb": free_mb + 1e6},
             models={"dir": str(tmp_path), "pad_required": False}, device={"type": "sim"})
    daemon = LaneDaemon(parse_config(d, tmp_path), pipeline=default_pipeline)
    with pytest.raises(StartupError, match="MB free, below gate.min_free_mb"):
        daemon.open()
    daemon.close()
    assert not (tmp_path / "state" / "audit.db").exists()  # nothing half-open


def test_per_person_pins_are_checked_by_the_daemon_and_named_in_the_audit(tmp_path, default_pipeline, capsys):
    import subprocess
    import sys

    staff = tmp_path / "staff.json"
    p = subprocess.run([sys.executable, "-m", "tools.gatectl", "staff-pin", "--file", str(staff),
                        "--operator", "staff-042"], input="482913\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "482913" not in staff.read_text() and oct(staff.stat().st_mode & 0o777) == "0o600"
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "empty.png"), np.full((480, 640, 3), 128, np.uint8))
    d = dict(MINIMAL, gate={"id": "G1", "state_dir": str(tmp_path / "state")},
             camera={"source": str(frames), "fps": 20.0, "loop": True},
             models={"dir": str(tmp_path), "pad_required": False}, device={"type": "sim"},
             lane={**MINIMAL["lane"], "open_timeout_s": 1.0}, control={"staff_file": str(staff)})
    cfg = parse_config(d, tmp_path)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    try:
        sock = str(cfg.control_socket)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if call(sock, "status").get("mode") == "idle":
                    break
            except ControlError:
                time.sleep(0.05)
        assert "needs your PIN" in call(sock, "open", operator="staff-042", reason="r")["error"]
        assert "not accepted" in call(sock, "open", operator="staff-042", reason="r", pin="000000")["error"]
        assert "not accepted" in call(sock, "open", operator="staff-999", reason="r", pin="482913")["error"]
        assert daemon._driver.last("unlock") is None  # nothing happened on a refused PIN
        assert gatectl(["--socket", sock, "open", "--operator", "staff-042", "--reason", "wheelchair user",
                        "--pin", "482913"]) == 0
        manual = [r.body for r in daemon.audit.tail(5) if r.body["event"] == "manual_action"]
        assert manual[-1]["operator_id"].startswith("staff-042 (uid ") and "PIN verified" in manual[-1]["operator_id"]
        for _ in range(5):  # guessing locks the id out, even for the right PIN afterwards
            call(sock, "lock", operator="staff-042", reason="r", pin="111111")
        assert "too many wrong PINs" in call(sock, "lock", operator="staff-042", reason="r", pin="482913")["error"]
    finally:
        daemon.stop_requested.set()
        t.join(10)
        daemon.close()


def test_status_shows_the_calibration_record_behind_each_threshold(tmp_path, default_pipeline, capsys):
    """A lane whose 1:1 threshold comes from the shipped record: `gatectl status` shows the
    target, the bound, the data and the models; a bare-number threshold says it has none."""
    from tests.paths import REPO
    from vision.calibrate import load_record

    record = REPO / "config" / "calibration-lfw-dev-default.json"
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "empty.png"), np.full((480, 640, 3), 128, np.uint8))
    policy = {**MINIMAL["lane"]["policy"], "threshold_1to1": {"record": str(record), "far": 0.001}}
    d = dict(MINIMAL, gate={"id": "G1", "state_dir": str(tmp_path / "state")},
             camera={"source": str(frames), "fps": 20.0, "loop": True},
             models={"dir": str(tmp_path), "pad_required": False}, device={"type": "sim"},
             lane={**MINIMAL["lane"], "policy": policy})
    cfg = parse_config(d, tmp_path)
    daemon = LaneDaemon(cfg, pipeline=default_pipeline)
    daemon.open()
    t = threading.Thread(target=daemon.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if call(cfg.control_socket, "status").get("calibration"):
                    break
            except ControlError:
                pass
            time.sleep(0.05)
        assert gatectl(["--socket", str(cfg.control_socket), "status"]) == 0
        out = capsys.readouterr().out
        expected = load_record(record).point("1:1", 1e-3)
        assert f"lane.policy.threshold_1to1 = {expected.threshold:.4f} at 1:1 FAR 0.001" in out
        assert f"over {expected.impostor_comparisons} impostor comparisons" in out
        assert "not this site's camera" in out and "models mtcnn-v1 + dlib-resnet-v1" in out
        assert "lane.policy.threshold_1n = 0.93 (a bare number: no calibration record)" in out
        status = call(cfg.control_socket, "status")
        assert status["threshold_1to1"] == expected.threshold
        assert status["calibration"]["lane.policy.threshold_1to1"]["embedder"] == "dlib-resnet-v1"
    finally:
        daemon.stop_requested.set()
        t.join(10)
        daemon.close()
