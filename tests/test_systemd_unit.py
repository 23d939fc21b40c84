"""The shipped units pass `systemd-analyze verify` (where the tool exists) and keep the
properties each service relies on."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
HARDENING = ("Restart=on-failure", "StateDirectory=", "ProtectSystem=strict", "NoNewPrivileges=yes",
             "PrivateTmp=yes", "CapabilityBoundingSet=\n", "UMask=0077")
# unit -> (the console script it runs, what else it must declare, an instance name to verify it as)
EXPECTED = {
    "gated@.service": ("gated", ("Type=notify", "WatchdogSec=", "DevicePolicy=closed", "DeviceAllow=char-ttyUSB rw",
                                 "DeviceAllow=char-video4linux rw", "DeviceAllow=char-gpiochip rw", "LimitCORE=0"),
                       "lane-a"),
    "gate-kiosk.service": ("gate-kiosk", ("DevicePolicy=closed", "RuntimeDirectory=edgegate-kiosk"), None),
    "gate-central@.service": ("gate-central", ("PrivateDevices=yes", "LimitCORE=0", " serve"), "node-a"),
    "gate-console@.service": ("gate-central", ("PrivateDevices=yes", "LimitCORE=0", " console"), "node-a"),
}


def test_every_shipped_unit_is_checked_here():
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unit_declares_what_its_service_relies_on_and_the_hardening(name):
    text = (UNITS / name).read_text()
    for line in HARDENING + EXPECTED[name][1]:
        assert line in text, f"{name}: {line!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_systemd_analyze_verify(tmp_path, name):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI", "").lower() == "true":  # CI machines have it: missing means a broken image
            pytest.fail("systemd-analyze is not installed")
        pytest.skip("systemd-analyze not installed")
    script, _, instance = EXPECTED[name]
    installed = Path(sys.executable).parent / script
    assert installed.exists(), f"the {script} console script is not installed in this environment"
    text = (UNITS / name).read_text().replace(f"/opt/edgegate/venv/bin/{script}", str(installed))
    unit = tmp_path / (name.replace("@.", f"@{instance}.") if instance else name)
    unit.write_text(text)
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if unit.name in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
