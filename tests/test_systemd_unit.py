"""The shipped unit passes `systemd-analyze verify` (where the tool exists) and keeps the
properties the daemon relies on."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "gated@.service"


def test_unit_declares_notify_watchdog_state_and_hardening():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "DevicePolicy=closed", "DeviceAllow=char-ttyUSB rw",
                 "DeviceAllow=char-video4linux rw", "DeviceAllow=char-gpiochip rw", "LimitCORE=0"):
        assert line in text, line


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI", "").lower() == "true":  # CI machines have it: missing means a broken image
            pytest.fail("systemd-analyze is not installed")
        pytest.skip("systemd-analyze not installed")
    gated = Path(sys.executable).parent / "gated"
    assert gated.exists(), "the gated console script is not installed in this environment"
    text = UNIT.read_text().replace("/opt/edgegate/venv/bin/gated", str(gated))
    unit = tmp_path / "gated@lane-a.service"
    unit.write_text(text)
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "gated@lane-a.service" in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
