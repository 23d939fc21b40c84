"""The operations console in a real browser: headless Chromium (Debian's package, `make chromium`)
driven by Playwright, against a running central with gates connected over ZeroMQ/CURVE.

The gates are tools/sim_gate.py processes: the real lane state machine, audit log, watchlist
store and sync agent, with scripted passengers instead of a camera. The test logs in, watches a
gate go offline when its process is killed with SIGKILL (the page refreshes itself: no reload),
sees an alarm appear and acknowledges it, reads the lane page's plot and staff actions, searches
the audit and exports it, and checks the export is byte for byte what `gate-ops audit pull` writes.
Screenshots go to the test's folder (and to $EDGEGATE_CONSOLE_SHOTS when set, to look at them).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sync.central import Central, Enrolment
from tests.console_helpers import PASSWORDS, REPO, Stack, add_accounts, wait_for
from tests.sync_helpers import MODEL, Deployment, unit

CHROMIUM = "/usr/bin/chromium"
NAMES = {"P000": "Nguyễn Văn An", "P001": "Trần Thị Bình", "P002": "Lê Văn Cường", "P003": "Phạm Minh Đức"}
LANES = ["lane:SGN-T1-A", "lane:SGN-T1-B", "lane:HAN-M1"]


@pytest.fixture
def stack(tmp_path, central_database):
    dep = Deployment(tmp_path, central_database)
    st = Stack(dep, tmp_path)
    st.start_central(gate_silent_after_s=2.0)
    central = Central(dep.database)
    rng = np.random.default_rng(3)
    central.enrol_subjects([Enrolment(sid, "allow", LANES, None, None, MODEL, unit(rng, 1), display_name=name)
                             for sid, name in NAMES.items()])
    central.close()
    add_accounts(dep.database)
    st.add_sim_gate("G-A1", "SGN", "SGN-T1-A")
    st.add_sim_gate("G-A2", "SGN", "SGN-T1-B")
    st.add_sim_gate("M-01", "HAN", "HAN-M1")
    st.start_console(refresh_s=1.0)
    yield st
    st.stop()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: `make chromium` installs Debian's package"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _shot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("EDGEGATE_CONSOLE_SHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


def _settled(st: Stack, gate: str, decisions: int) -> bool:
    s = st.gates[gate].state()
    return s.get("decisions", 0) >= decisions and s.get("pending") == 0 and s.get("unsent") == 0


def _login(page, base: str, user: str) -> None:
    page.goto(base + "/fleet")
    assert "/login" in page.url  # no page without a login
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_url(base + "/fleet")


def _gate_state(page, gate: str) -> str | None:
    row = page.query_selector(f"tr.gate[data-gate='{gate}']")
    return None if row is None else row.get_attribute("data-state")


def test_fleet_offline_alarm_lane_search_and_export_in_a_browser(stack, browser, tmp_path, request):
    st = stack
    g1, g2, g3 = st.gates["G-A1"], st.gates["G-A2"], st.gates["M-01"]
    g1.send(do="passenger", subject="P000", score=0.95)
    g1.send(do="stranger")
    g1.send(do="photo_attack")
    g1.send(do="passenger", subject="P003", score=0.91)
    g2.send(do="passenger", subject="P001", score=0.94)
    g3.send(do="passenger", subject="P002", score=0.93)
    assert wait_for(lambda: _settled(st, "G-A1", 4) and _settled(st, "G-A2", 1) and _settled(st, "M-01", 1),
                    timeout=90), {g: h.state() for g, h in st.gates.items()}
    base = st.console_url
    shots = tmp_path / f"shots-{request.node.callspec.id}"
    shots.mkdir()
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _login(page, base, "sam")
    # (CSS selectors, not JS predicates: the console's Content-Security-Policy forbids eval, Playwright's too)
    assert wait_for(lambda: len(page.query_selector_all("tr.gate[data-state=online]")) == 3, timeout=20)
    assert page.inner_text("tr.gate[data-gate='G-A1'] td:nth-child(2)") == "SGN"
    assert page.inner_text("tr.gate[data-gate='G-A1'] td:nth-child(3)") == "SGN-T1-A"
    assert "up to date" in page.inner_text("tr.gate[data-gate='G-A1'] td.watchlist")
    _shot(page, shots, "1-fleet")

    # filter by site
    page.select_option("select[name=site]", "HAN")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**state=*")
    assert [r.get_attribute("data-gate") for r in page.query_selector_all("tr.gate")] == ["M-01"]
    page.goto(base + "/fleet")

    # a gate whose agent is killed goes offline on the page by itself (no reload)
    page.evaluate("window.__stayed = true")
    g2.proc.kill()
    page.wait_for_selector("tr.gate[data-gate='G-A2'][data-state='offline']", timeout=20000)
    assert page.evaluate("window.__stayed") is True
    assert _gate_state(page, "G-A1") == "online"
    _shot(page, shots, "2-offline")

    # an alarm at a lane appears, and a supervisor acknowledges it with a note
    g1.send(do="door_forced")
    page.wait_for_selector("tr.gate[data-gate='G-A1'][data-state='alarm']", timeout=20000)
    alarm_text = page.inner_text("tr.gate[data-gate='G-A1'] td.alarms")
    assert "door forced" in alarm_text
    _shot(page, shots, "3-alarm")
    page.fill("tr.gate[data-gate='G-A1'] input[name=note]", "CCTV checked, staff on the way")
    page.click("tr.gate[data-gate='G-A1'] form.ackform button")
    page.wait_for_selector("tr.gate[data-gate='G-A1'] .ack")
    assert "acknowledged by sam" in page.inner_text("tr.gate[data-gate='G-A1'] .ack")

    # staff clear it at the lane (gatectl's path, here the sim's); the lane page shows who and why
    g1.send(do="staff", action="reset", operator="st-07", reason="door checked, closed")
    assert wait_for(lambda: g1.state().get("mode") == "idle" and g1.state().get("unsent") == 0, timeout=30)
    page.wait_for_selector("tr.gate[data-gate='G-A1'][data-state='online']", timeout=20000)
    page.click("tr.gate[data-gate='G-A1'] a")
    page.wait_for_url(base + "/gate/G-A1")
    series = {r.get_attribute("data-series") for r in page.query_selector_all("svg.plot rect[data-series]")}
    assert {"allow:match", "deny:no_match", "refer:presentation_attack_suspected"} <= series
    assert page.inner_text("#decisions .big") == "4"
    assert page.inner_text("#first-attempt .big") == "50.0 %"  # 2 of 4 visits accepted first time
    assert "1 final, 1 retried" in page.inner_text("#liveness")
    staff = page.inner_text("table.staff")
    assert "st-07" in staff and "door checked, closed" in staff and "cleared door forced" in staff
    assert "1 × door forced" in page.inner_text("#alarms-raised")
    assert not page.query_selector("img")  # no images anywhere, faces least of all
    _shot(page, shots, "4-lane")

    # audit search by gate and subject; a supervisor sees the name
    page.click("nav >> text=Audit search")
    page.select_option("select[name=gate]", "G-A1")
    page.fill("input[name=subject]", "P000")
    page.click("form.search button[type=submit]")
    page.wait_for_selector("#chain")
    assert "chain intact" in page.inner_text("#chain")
    subjects = {c.inner_text() for c in page.query_selector_all("td.subject")}
    assert subjects == {"P000"} and NAMES["P000"] in page.inner_text("table.results")
    _shot(page, shots, "5-search")
    with page.expect_download() as dl:
        page.click("#export-jsonl")
    filtered = Path(dl.value.path()).read_text(encoding="utf-8").splitlines()
    assert filtered and all('"subject_id": "P000"' in line for line in filtered)

    # the whole range: exactly what `gate-ops audit pull` writes, JSONL and CSV
    page.fill("input[name=subject]", "")
    page.click("form.search button[type=submit]")
    page.wait_for_selector("#export-csv")
    since, until = page.input_value("input[name=since]"), page.input_value("input[name=until]")
    for fmt in ("jsonl", "csv"):
        with page.expect_download() as dl:
            page.click(f"#export-{fmt}")
        got = Path(dl.value.path()).read_bytes()
        out = tmp_path / f"pull.{fmt}"
        r = subprocess.run([sys.executable, "-m", "tools.gate_ops", "--config", str(st.toml), "audit", "pull", "--gate",
                            "G-A1", "--since", since + ":00Z", "--until", until + ":00Z", "--format", fmt,
                            "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "chain intact" in r.stdout, r.stdout + r.stderr
        assert got == out.read_bytes() and len(got.splitlines()) >= 15
    assert set(filtered) <= set(Path(tmp_path / "pull.jsonl").read_text(encoding="utf-8").splitlines())

    # the ops log has the login, the search, the exports and the acknowledgement
    page.goto(base + "/ops-log")
    assert "chain intact" in page.inner_text("#opschain")
    log = page.inner_text("table.opslog")
    for word in ("login", "search", "export", "acknowledge", "CCTV checked"):
        assert word in log
    _shot(page, shots, "6-opslog")

    # a viewer sees the fleet and the audit, no acknowledge form, no names
    viewer = browser.new_page(viewport={"width": 1400, "height": 900})
    g3.send(do="tailgate", subject="P002")
    _login(viewer, base, "viv")
    viewer.wait_for_selector("tr.gate[data-gate='M-01'][data-state='alarm']", timeout=20000)
    assert "tailgating" in viewer.inner_text("tr.gate[data-gate='M-01'] td.alarms")
    assert viewer.query_selector("form.ackform") is None
    _shot(viewer, shots, "7-viewer-fleet")
    viewer.goto(base + "/audit?search=1&gate=M-01&subject=P002")
    assert "P002" in viewer.inner_text("table.results") and NAMES["P002"] not in viewer.content()
    viewer.goto(base + "/ops-log")
    assert "Supervisors only" in viewer.inner_text("h1")
