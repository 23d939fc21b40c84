"""The console's own tables (central schema version 6): accounts, sessions, the ops audit log,
acknowledgements. Written through the central's storage protocol, so they live in the same SQLite
file or PostgreSQL database as everything else the central holds and work on both engines.

Why each choice:
- Passwords are argon2id hashes from argon2-cffi with its default parameters (RFC 9106's
  low-memory profile: t=3, 64 MiB, 4 lanes). Measured on the shared 2-core CI machine: 0.11-0.14 s
  per verification, slow enough to make a stolen table expensive to guess at, fast enough for a
  login. A hash made with older parameters is upgraded at the next successful login.
- A session cookie is 32 random bytes; the table keeps only its sha256, so a copy of the
  database gives no cookie that logs anyone in. Sessions expire after an idle time and after an
  absolute age; disabling an account or changing its password ends its sessions at once.
- Repeated failed logins lock the account for a while (the count and the time are in the
  table, so every console process on the database sees the same lock); the application adds a
  per-address limit in memory. A locked account is refused even with the right password.
- The ops audit log is hash-chained with the same rule as a gate's audit log
  (sync.audit_chain.record_hash), so an edited or deleted entry is found by `verify_ops_log`.
  Entries are appended under the per-key audit lock ("~ops"), not the change-log lock, so a
  login never waits behind a bulk enrolment.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from sync.audit_chain import GENESIS_HASH, AuditRow, ChainCheck, record_hash, verify_chain
from sync.central_db import CentralDatabase

ROLES = ("viewer", "supervisor")
MIN_PASSWORD_LEN = 12
_OPS_LOCK = "~ops"  # the audit_transaction key of the ops log (never a gate id: check_id refuses '~')
_HASHER = PasswordHasher()
# Verified against when the user name is unknown, so an unknown name costs the same time as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class AccountError(ValueError):
    """An account change the console refuses (bad name, role, weak password, unknown account)."""


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    created_at: float
    created_by: str
    disabled: bool
    failed_logins: int
    locked_until: float | None

    @property
    def is_supervisor(self) -> bool:
        return self.role == "supervisor"


@dataclass(frozen=True)
class LoginResult:
    account: Account | None  # None: refused
    reason: str  # "ok", "unknown user", "wrong password", "locked", "disabled"
    locked_until: float | None = None


@dataclass(frozen=True)
class Session:
    token_sha256: str
    account: Account
    csrf: str
    created_at: float
    last_seen: float
    client: str


@dataclass(frozen=True)
class OpsEntry:
    seq: int
    ts: str
    actor: str
    action: str
    outcome: str
    target: str
    client: str
    detail: dict[str, Any]


def _utc_text(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_username(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError(f"user name {name!r} must be 1-64 letters, digits or . _ - @")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LEN:
        raise AccountError(f"a console password has at least {MIN_PASSWORD_LEN} characters")
    if len(password) > 1024:
        raise AccountError("a console password has at most 1024 characters")
    return password


class ConsoleStore:
    """The console's tables on one connection of the central's database (one per thread)."""

    def __init__(self, db: CentralDatabase, clock: Callable[[], float] = time.time):
        self.db = db
        self._clock = clock

    # ----- accounts ----------------------------------------------------------------------

    def _account(self, row) -> Account:
        return Account(username=row[0], role=row[1], created_at=row[2], created_by=row[3], disabled=bool(row[4]),
                       failed_logins=int(row[5]), locked_until=row[6])

    _ACCOUNT_COLS = "username, role, created_at, created_by, disabled, failed_logins, locked_until"

    def account(self, username: str) -> Account | None:
        row = self.db.execute(f"SELECT {self._ACCOUNT_COLS} FROM ops_accounts WHERE username = ?",
                              (username,)).fetchone()
        return None if row is None else self._account(row)

    def accounts(self) -> list[Account]:
        return [self._account(r) for r in self.db.execute(
            f"SELECT {self._ACCOUNT_COLS} FROM ops_accounts ORDER BY username").fetchall()]

    def add_account(self, username: str, role: str, password: str, by: str) -> Account:
        check_username(username)
        if role not in ROLES:
            raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
        digest = _HASHER.hash(check_password(password))
        now = self._clock()
        with self.db.audit_transaction(_OPS_LOCK):
            if self.db.execute("SELECT 1 FROM ops_accounts WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"console account {username!r} exists already")
            self.db.execute("INSERT INTO ops_accounts(username, role, password_hash, created_at, created_by, "
                            "updated_at, disabled, failed_logins) VALUES (?,?,?,?,?,?,0,0)",
                            (username, role, digest, now, by, now))
            self._append(by, "account_add", "ok", username, "cli", {"role": role}, now)
        return self.account(username)  # type: ignore[return-value]

    def _change(self, username: str, by: str, action: str, sql: str, args: tuple, detail: dict,
                end_sessions: bool) -> Account:
        now = self._clock()
        with self.db.audit_transaction(_OPS_LOCK):
            cur = self.db.execute(sql + " WHERE username = ?", (*args, now, username))
            if cur.rowcount == 0:
                raise AccountError(f"no console account {username!r}")
            if end_sessions:
                self.db.execute("DELETE FROM ops_sessions WHERE username = ?", (username,))
            self._append(by, action, "ok", username, "cli", detail, now)
        return self.account(username)  # type: ignore[return-value]

    def set_password(self, username: str, password: str, by: str) -> Account:
        digest = _HASHER.hash(check_password(password))
        return self._change(username, by, "account_password", "UPDATE ops_accounts SET password_hash = ?, "
                            "failed_logins = 0, locked_until = NULL, updated_at = ?", (digest,), {}, True)

    def set_role(self, username: str, role: str, by: str) -> Account:
        if role not in ROLES:
            raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
        return self._change(username, by, "account_role", "UPDATE ops_accounts SET role = ?, updated_at = ?",
                            (role,), {"role": role}, True)

    def set_disabled(self, username: str, disabled: bool, by: str) -> Account:
        return self._change(username, by, "account_disable" if disabled else "account_enable",
                            "UPDATE ops_accounts SET disabled = ?, updated_at = ?", (int(disabled),), {}, disabled)

    def unlock(self, username: str, by: str) -> Account:
        return self._change(username, by, "account_unlock", "UPDATE ops_accounts SET failed_logins = 0, "
                            "locked_until = NULL, updated_at = ?", (), {}, False)

    # ----- login -------------------------------------------------------------------------

    def check_login(self, username: str, password: str, client: str, max_failures: int,
                    lockout_s: float) -> LoginResult:
        """Verify a login and record it (ok or refused, with the reason) in the ops audit log.
        `max_failures` wrong passwords in a row lock the account for `lockout_s`."""
        now = self._clock()
        row = self.db.execute("SELECT password_hash, disabled, failed_logins, locked_until FROM ops_accounts "
                              "WHERE username = ?", (username,)).fetchone()
        stored = row[0] if row else _DUMMY_HASH
        try:
            ok: bool = _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if row is None:
            result = LoginResult(None, "unknown user")
        elif row[1]:
            result = LoginResult(None, "disabled")
        elif row[3] is not None and row[3] > now:
            result = LoginResult(None, "locked", row[3])
        elif not ok:
            result = LoginResult(None, "wrong password")
        else:
            result = LoginResult(self.account(username), "ok")
        with self.db.audit_transaction(_OPS_LOCK):
            detail: dict[str, Any] = {}
            if result.reason == "wrong password":
                failures = int(self.db.execute("SELECT failed_logins FROM ops_accounts WHERE username = ?",
                                               (username,)).fetchone()[0]) + 1
                locked = now + lockout_s if failures >= max_failures else None
                self.db.execute("UPDATE ops_accounts SET failed_logins = ?, locked_until = ? WHERE username = ?",
                                (0 if locked else failures, locked, username))
                detail = {"failures": failures}
                if locked:
                    detail["locked_until"] = _utc_text(locked)
                    result = LoginResult(None, "wrong password", locked)
            elif result.reason == "ok":
                self.db.execute("UPDATE ops_accounts SET failed_logins = 0, locked_until = NULL WHERE username = ?",
                                (username,))
                if _HASHER.check_needs_rehash(stored):
                    self.db.execute("UPDATE ops_accounts SET password_hash = ? WHERE username = ?",
                                    (_HASHER.hash(password), username))
            # An unknown name is logged as typed (it may be a mistyped real one), cut to 64 characters.
            self._append(username[:64], "login", "ok" if result.reason == "ok" else "refused", username[:64],
                         client, {"reason": result.reason, **detail}, now)
        return result

    # ----- sessions ----------------------------------------------------------------------

    def create_session(self, account: Account, client: str) -> tuple[str, Session]:
        """A new session; returns (cookie value, session). Only its sha256 is stored."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        s = Session(token_digest(token), account, secrets.token_urlsafe(32), now, now, client)
        with self.db.audit_transaction(_OPS_LOCK):
            self.db.execute("INSERT INTO ops_sessions(token_sha256, username, csrf, created_at, last_seen, client) "
                            "VALUES (?,?,?,?,?,?)", (s.token_sha256, account.username, s.csrf, now, now, client))
        return token, s

    def session(self, token: str, idle_s: float, max_age_s: float, touch_after_s: float = 30.0) -> Session | None:
        """The live session of a cookie, or None (unknown, idle too long, too old, account
        disabled). `last_seen` is written at most every `touch_after_s`, not on every request."""
        if not token or len(token) > 128:
            return None
        digest = token_digest(token)
        row = self.db.execute(
            "SELECT s.csrf, s.created_at, s.last_seen, s.client, a.username, a.role, a.created_at, a.created_by, "
            "a.disabled, a.failed_logins, a.locked_until FROM ops_sessions s JOIN ops_accounts a "
            "ON a.username = s.username WHERE s.token_sha256 = ?", (digest,)).fetchone()
        if row is None:
            return None
        now = self._clock()
        account = self._account(row[4:])
        if account.disabled or now - row[2] > idle_s or now - row[1] > max_age_s:
            self.db.execute("DELETE FROM ops_sessions WHERE token_sha256 = ?", (digest,))
            return None
        if now - row[2] >= touch_after_s:
            self.db.execute("UPDATE ops_sessions SET last_seen = ? WHERE token_sha256 = ?", (now, digest))
        return Session(digest, account, row[0], row[1], now, row[3])

    def end_session(self, token_sha256: str) -> None:
        self.db.execute("DELETE FROM ops_sessions WHERE token_sha256 = ?", (token_sha256,))

    def prune_sessions(self, idle_s: float, max_age_s: float) -> int:
        now = self._clock()
        return self.db.execute("DELETE FROM ops_sessions WHERE last_seen < ? OR created_at < ?",
                               (now - idle_s, now - max_age_s)).rowcount

    # ----- acknowledgements --------------------------------------------------------------

    def acknowledge(self, gate_id: str, alarm: str, username: str, note: str, client: str) -> None:
        """A supervisor's acknowledgement of one alarm (with a note), recorded and audited.
        Nothing is sent to the gate: the lane is reset by staff at the lane."""
        note = note.strip()
        if not note or len(note) > 500:
            raise AccountError("an acknowledgement needs a note of 1-500 characters (what was done, by whom)")
        if not alarm or len(alarm) > 300:
            raise AccountError("no such alarm")
        now = self._clock()
        with self.db.audit_transaction(_OPS_LOCK):
            self.db.execute("INSERT INTO ops_acks(gate_id, alarm, username, note, acked_at) VALUES (?,?,?,?,?) "
                            "ON CONFLICT(gate_id, alarm) DO UPDATE SET username = excluded.username, "
                            "note = excluded.note, acked_at = excluded.acked_at", (gate_id, alarm, username, note, now))
            self._append(username, "acknowledge", "ok", gate_id, client, {"alarm": alarm, "note": note}, now)

    def acks(self) -> dict[tuple[str, str], tuple[str, str, float]]:
        """(gate, alarm) -> (who, note, when)."""
        return {(r[0], r[1]): (r[2], r[3], r[4]) for r in self.db.execute(
            "SELECT gate_id, alarm, username, note, acked_at FROM ops_acks").fetchall()}

    # ----- the ops audit log -------------------------------------------------------------

    def record(self, actor: str, action: str, outcome: str, target: str, client: str,
               detail: dict[str, Any] | None = None) -> OpsEntry:
        now = self._clock()
        with self.db.audit_transaction(_OPS_LOCK):
            return self._append(actor, action, outcome, target, client, detail or {}, now)

    def _append(self, actor: str, action: str, outcome: str, target: str, client: str, detail: dict[str, Any],
                now: float) -> OpsEntry:
        """Inside the ops lock: the next chained entry."""
        last = self.db.execute("SELECT seq, hash FROM ops_audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(last[0]) + 1, last[1]) if last else (1, GENESIS_HASH)
        ts = _utc_text(now)
        body = {"actor": actor, "action": action, "outcome": outcome, "target": target, "client": client,
                "detail": detail}
        digest = record_hash(seq, ts, prev, body)
        self.db.execute("INSERT INTO ops_audit(seq, ts, prev_hash, hash, body) VALUES (?,?,?,?,?)",
                        (seq, ts, prev, digest, json.dumps(body, sort_keys=True, ensure_ascii=False)))
        return OpsEntry(seq, ts, actor, action, outcome, target, client, detail)

    def _rows(self) -> Iterator[AuditRow]:
        with self.db.read_snapshot():
            for seq, ts, prev, digest, body in self.db.stream(
                    "SELECT seq, ts, prev_hash, hash, body FROM ops_audit ORDER BY seq"):
                yield AuditRow(int(seq), ts, prev, digest, json.loads(body))

    def ops_log(self, limit: int = 200, actor: str | None = None, action: str | None = None) -> list[OpsEntry]:
        """The newest entries first, optionally of one actor and/or one action."""
        rows: list[OpsEntry] = []
        with self.db.read_snapshot():
            for seq, ts, body in self.db.stream("SELECT seq, ts, body FROM ops_audit ORDER BY seq DESC", batch=500):
                b = json.loads(body)
                if (actor and b.get("actor") != actor) or (action and b.get("action") != action):
                    continue
                rows.append(OpsEntry(int(seq), ts, b.get("actor", ""), b.get("action", ""), b.get("outcome", ""),
                                     b.get("target", ""), b.get("client", ""), b.get("detail", {})))
                if len(rows) >= limit:
                    break
        return rows

    def verify_ops_log(self) -> ChainCheck:
        return verify_chain(self._rows())


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
