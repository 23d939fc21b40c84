"""The operations console's access control, against a real `gate-central console` process over
HTTP (and HTTPS), on both central stores: no page or export without a login, a viewer cannot act
or see names, CSRF refused, every failed login audited, lock-out, and the bind rule.
"""
from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from console.store import ConsoleStore
from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.central import Central, Enrolment
from tests.console_helpers import PASSWORDS, REPO, Browserless, Stack, add_accounts, free_port
from tests.sync_helpers import MODEL, Deployment, unit

UTC = dt.timezone.utc
NAME = "Nguyễn Văn An"
PAGES = ["/fleet", "/gate/G1", "/audit?search=1&gate=G1", "/audit/export?gate=G1&since=2020-01-01", "/ops-log",
         "/journey?subject=P1"]


def _chain(n: int, subject: str) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    now = dt.datetime.now(UTC) - dt.timedelta(minutes=30)
    for seq in range(1, n + 1):
        ts = (now + dt.timedelta(seconds=seq)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        outcome = "allow" if seq % 3 else "deny"
        body = {"event": "decision", "lane": "L1", "gate": "G1", "from": "acquiring", "to": "decided",
                "decision": {"outcome": outcome, "reason": "match" if outcome == "allow" else "no_match",
                             "track_id": seq, "subject_id": subject if outcome == "allow" else None, "score": 0.9}}
        digest = record_hash(seq, ts, prev, body)
        rows.append(AuditRow(seq, ts, prev, digest, body))
        prev = digest
    return rows


@pytest.fixture
def stack(tmp_path, central_database):
    dep = Deployment(tmp_path, central_database)
    central = Central(dep.database)
    central.register_gate("G1", "g" * 40, ["lane:L1"])
    central.enrol_subjects([Enrolment("P1", "allow", ["lane:L1"], None, None, MODEL,
                                        unit(np.random.default_rng(0), 1), display_name=NAME)])
    central.audit.store_batch("G1", _chain(12, "P1"), 1.0)
    central.close()
    add_accounts(dep.database)
    st = Stack(dep, tmp_path)
    st.toml = dep.central_toml()
    yield st
    st.stop()


def _ops_log(database: str) -> list:
    central = Central(database)
    try:
        return ConsoleStore(central.db).ops_log(1000)
    finally:
        central.close()


def test_no_page_and_no_export_without_login(stack):
    stack.start_console()
    web = Browserless(stack.console_url)
    for path in PAGES:
        status, headers, body = web.get(path)
        assert status == 303 and headers["location"].startswith("/login"), path
        assert "P1" not in body and "decision" not in body
    status, _, _ = web.get("/fleet/rows")
    assert status == 401
    status, headers, _ = web.post("/ack", {"gate": "G1", "alarm": "x", "note": "n", "csrf": "x"})
    assert status == 303 and headers["location"].startswith("/login")
    # a made-up session cookie is no session
    web.jar.set_cookie(_cookie("edgegate_session", "forged-token-value"))
    assert web.get("/fleet")[0] == 303
    # once logged in, the same pages answer; the login page sent us where we asked to go
    status, headers, _ = web.login("viv")
    assert status == 303 and headers["location"] == "/fleet"
    status, _, body = web.get("/audit/export?gate=G1&since=2020-01-01")
    assert status == 200 and len(body.splitlines()) == 12


def _cookie(name: str, value: str):
    import http.cookiejar

    return http.cookiejar.Cookie(0, name, value, None, False, "127.0.0.1", False, False, "/", True, False, None,
                                 False, None, None, {})


def test_session_cookie_flags_and_only_its_hash_is_stored(stack):
    stack.start_console()
    web = Browserless(stack.console_url)
    status, headers, _ = web.login("sam")
    assert status == 303
    session_cookie = next(c for c in headers["set-cookie"].split("\n") if c.startswith("edgegate_session="))
    assert "HttpOnly" in session_cookie and "SameSite=strict" in session_cookie.replace("Strict", "strict")
    assert "Secure" not in session_cookie  # plain HTTP on loopback: a Secure cookie would never come back
    token = web.cookie("edgegate_session").value
    central = Central(stack.dep.database)
    stored = [r[0] for r in central.conn.execute("SELECT token_sha256 FROM ops_sessions").fetchall()]
    central.close()
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64
    # logging out ends the session at the console, not just in the browser
    page = web.get("/fleet")[2]
    assert web.post("/logout", {"csrf": web.field(page, "csrf")})[0] == 303
    web.jar.set_cookie(_cookie("edgegate_session", token))
    assert web.get("/fleet")[0] == 303


def test_viewer_cannot_act_nor_see_names(stack):
    stack.start_console()
    viewer = Browserless(stack.console_url)
    viewer.login("viv")
    page = viewer.get("/audit?search=1&gate=G1")[2]
    assert "P1" in page and NAME not in page  # subject ids yes, names no
    csrf = viewer.field(page, "csrf")
    status, _, body = viewer.post("/ack", {"gate": "G1", "alarm": "lane:x:1", "note": "looked", "csrf": csrf})
    assert status == 403 and "supervisor" in body
    assert viewer.get("/ops-log")[0] == 403
    boss = Browserless(stack.console_url)
    boss.login("sam")
    assert NAME in boss.get("/audit?search=1&gate=G1")[2]
    journey = viewer.get("/journey?subject=P1")
    assert journey[0] == 200 and "Passenger journey" in journey[2] and "G1" in journey[2] and NAME not in journey[2]
    assert NAME in boss.get("/journey?subject=P1")[2]
    log = _ops_log(stack.dep.database)
    forbidden = [e for e in log if e.action == "forbidden"]
    assert {e.target for e in forbidden} == {"/ack", "/ops-log"} and all(e.actor == "viv" for e in forbidden)
    searches = [e for e in log if e.action == "search"]
    assert {(e.actor, e.detail["names_shown"]) for e in searches} == {("viv", 0), ("sam", 1)}


def test_csrf_refused_on_every_form(stack):
    stack.start_console()
    web = Browserless(stack.console_url)
    # the login form itself: no token, or a token that is not this browser's
    assert web.post("/login", {"username": "sam", "password": PASSWORDS["sam"]})[0] == 403
    web.get("/login")
    assert web.post("/login", {"username": "sam", "password": PASSWORDS["sam"], "login_csrf": "guess"})[0] == 403
    assert web.cookie("edgegate_session") is None
    web.login("sam")
    page = web.get("/fleet")[2]
    csrf = web.field(page, "csrf")
    form = {"gate": "G1", "alarm": "lane:x:1", "note": "checked"}
    assert web.post("/ack", form)[0] == 403  # no token
    assert web.post("/ack", {**form, "csrf": csrf[:-2] + "xx"})[0] == 403  # wrong token
    status, _, _ = web.post("/ack", {**form, "csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert status == 403  # the right token from another site's page
    assert web.post("/logout", {"csrf": "nope"})[0] == 403
    assert web.get("/fleet")[0] == 200  # still logged in: the refused logout did nothing
    refusals = [e for e in _ops_log(stack.dep.database) if e.action == "csrf"]
    assert len(refusals) == 4 and {e.target for e in refusals} == {"/ack", "/logout"}
    central = Central(stack.dep.database)
    assert central.conn.execute("SELECT COUNT(*) FROM ops_acks").fetchone()[0] == 0
    central.close()


def test_failed_logins_are_audited_and_lock_the_account(stack):
    stack.start_console(login_max_failures=3, login_lockout_s=600)
    web = Browserless(stack.console_url)
    assert web.login("nobody", "whatever-password")[0] == 401
    for _ in range(3):
        assert web.login("sam", "wrong-password-123")[0] == 401
    status, _, body = web.login("sam")  # the right password, but locked now
    assert status == 401 and "locked" in body
    log = [e for e in _ops_log(stack.dep.database) if e.action == "login"]
    reasons = [(e.actor, e.outcome, e.detail["reason"]) for e in reversed(log)]
    assert reasons == [("nobody", "refused", "unknown user")] + [("sam", "refused", "wrong password")] * 3 + [
        ("sam", "refused", "locked")]
    assert "locked_until" in log[1].detail and all(e.client == "127.0.0.1" for e in log)
    # an administrator ends the lock-out; the CLI records who, with the Unix account
    r = subprocess.run([sys.executable, "-m", "tools.gate_central", "--config", str(stack.toml), "console-user",
                        "unlock", "sam", "--operator", "ops-lead-7"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert web.login("sam")[0] == 303
    entries = _ops_log(stack.dep.database)
    unlock = next(e for e in entries if e.action == "account_unlock")
    assert unlock.actor.startswith("ops-lead-7 (unix ") and unlock.target == "sam"
    assert entries[0].action == "login" and entries[0].outcome == "ok"


def test_one_address_is_limited_whatever_the_account(stack):
    stack.start_console(client_max_failures=4, login_max_failures=100)
    web = Browserless(stack.console_url)
    for i in range(4):
        assert web.login(f"guess{i}", "not-the-password")[0] == 401
    assert web.login("sam")[0] == 429  # even the right password: the address is refused for the window
    assert any(e.detail.get("reason") == "too many failed logins from this address"
               for e in _ops_log(stack.dep.database))


def _run_console(toml: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.gate_central", "--config", str(toml), "console"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_refuses_plain_http_beyond_loopback(stack):
    for console in ({"bind": "0.0.0.0"}, {"bind": "::"}, {"bind": "0.0.0.0", "behind_proxy": True},
                    {"bind": "127.0.0.1", "tls_cert_file": "missing.pem"}):
        stack.write_console_table(port=free_port(), **console)
        r = _run_console(stack.toml)
        assert r.returncode == 2, (console, r.stdout, r.stderr)
        line = r.stderr.strip()
        assert line.startswith("gate-central: ") and "\n" not in line and "Traceback" not in r.stderr
        assert any(w in line for w in ("plain HTTP", "loopback only", "tls_cert_file")), line


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "console.test")])
    now = dt.datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "console.pem", folder / "console.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_tls_beyond_loopback_with_secure_cookies(stack, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    stack.start_console(wait=False, bind="0.0.0.0", port=port, tls_cert_file=cert, tls_key_file=key)
    stack.console_url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(cert))
    from tests.console_helpers import wait_for

    def up() -> bool:
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=2)
            conn.request("GET", "/login")
            return conn.getresponse().status == 200
        except OSError:
            return False
    assert wait_for(up, timeout=30), stack.procs[-1].tail()
    web = Browserless(stack.console_url, context=ctx)
    status, headers, _ = web.login("sam")
    assert status == 303
    cookie = web.cookie("__Host-edgegate")
    assert cookie is not None and cookie.secure and web.cookie("edgegate_session") is None
    assert "max-age" in web.get("/fleet")[1].get("strict-transport-security", "")


def test_behind_a_proxy_only_https_forwarded_requests_are_served(stack):
    stack.start_console(behind_proxy=True)
    web = Browserless(stack.console_url)
    status, _, body = web.get("/login")
    assert status == 400 and "HTTPS reverse proxy" in body
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    status, _, page = web.get("/login", headers=proxy)
    assert status == 200
    status, headers, _ = web.post("/login", {"username": "sam", "password": PASSWORDS["sam"],
                                             "login_csrf": web.field(page, "login_csrf"), "next": "/fleet"},
                                  headers={**proxy, "Cookie": f"edgegate_login={web.field(page, 'login_csrf')}"})
    assert status == 303 and "__Host-edgegate=" in headers.get("set-cookie", "") and "Secure" in headers["set-cookie"]
    login = next(e for e in _ops_log(stack.dep.database) if e.action == "login")
    assert login.client == "203.0.113.7"  # the address the proxy saw, not the proxy's


def test_console_needs_the_console_schema_on_postgresql(tmp_path, pg_admin_dsn):
    """A PostgreSQL central still at schema 5 is refused in one line until `gate-central migrate`."""
    import uuid

    from sync.central_pg import MIGRATIONS, PostgresDatabase, close_pool
    from tools.pg_cluster import create_database, drop_database

    name = f"edgegate_old_{uuid.uuid4().hex[:8]}"
    dsn = create_database(pg_admin_dsn, name)
    try:
        db = PostgresDatabase(dsn, check_schema=False)
        with db.write_transaction():
            for _version, statements in MIGRATIONS[:5]:
                for sql in statements:
                    db.execute(sql)
            db.execute("INSERT INTO meta (name, value) VALUES ('schema', 5)")
        db.close()
        toml = tmp_path / "central.toml"
        toml.write_text(f'[central]\ndatabase = "{dsn}"\n[console]\nport = {free_port()}\n')
        r = _run_console(toml)
        assert r.returncode == 2 and "gate-central migrate" in r.stderr and "Traceback" not in r.stderr
        m = subprocess.run([sys.executable, "-m", "tools.gate_central", "--config", str(toml), "migrate"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert m.returncode == 0 and "schema 5 -> " in m.stdout, m.stderr
        central = Central(dsn)
        ConsoleStore(central.db).add_account("late", "viewer", "a-long-password", "test")
        assert json.loads(json.dumps([a.username for a in ConsoleStore(central.db).accounts()])) == ["late"]
        central.close()
    finally:
        close_pool(dsn)
        drop_database(pg_admin_dsn, name)
