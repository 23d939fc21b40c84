"""The console's web application (Starlette, Jinja2 templates; served by uvicorn, console.server).

Pages and who may see them (README, "Operations console"):
  /fleet                 viewer, supervisor   every gate, filters by site and state, refreshes itself
  /gate/{id}             viewer, supervisor   the lane page: plot, pass rate, liveness, staff actions
  /audit                 viewer, supervisor   audit search; display names for supervisors only
  /audit/export          viewer, supervisor   chain-checked JSONL/CSV export, streamed
  /ops-log               supervisor           the console's own audit log, its chain checked
  POST /ack              supervisor           acknowledge an alarm with a note (recorded, not sent to the gate)

Every page needs a session; every POST carries the session's CSRF token (and a cross-site
Origin is refused as well); every login, search, export, acknowledgement and refusal goes to
the ops audit log. Database work runs on a small pool of worker threads (`db_threads`), each
with its own connection, so the event loop never waits on a query and a PostgreSQL pool is
never asked for more connections than configured.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import queue
import secrets
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console import views
from console.config import ConsoleConfig
from console.store import AccountError, ConsoleStore, Session, constant_time_equal
from console.svg import decisions_plot, series_colours
from gate.event_text import label, mode_name
from sync.audit_export import FORMATS, export_audit
from sync.central import Central
from sync.central_db import StorageError
from sync.config import CentralConfig
from sync.ops import parse_time

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
LOGIN_COOKIE = "edgegate_login"
MAX_EXPORTS = 2  # concurrent exports per console process (each holds a connection and a thread)
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class _Worker(threading.local):
    central: Central | None = None
    store: ConsoleStore | None = None


def _age(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if when is None:
        return "never"
    now = now or dt.datetime.now(dt.timezone.utc)
    s = int((now - when).total_seconds())
    if s < 0:
        return "just now"
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def _utc(when: dt.datetime | None) -> str:
    return "-" if when is None else when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ts(ts: str) -> str:
    return ts[:19].replace("T", " ") if ts else ""


class ConsoleApp:
    def __init__(self, central_cfg: CentralConfig, cfg: ConsoleConfig, clock: Callable[[], float] = time.time):
        self.central_cfg = central_cfg
        self.database = str(central_cfg.database)
        self.cfg = cfg
        self.clock = clock
        self.cookie = "__Host-edgegate" if cfg.secure_cookies else "edgegate_session"
        self._worker = _Worker()
        self._pool = concurrent.futures.ThreadPoolExecutor(cfg.db_threads, thread_name_prefix="console-db")
        self._exports = threading.BoundedSemaphore(MAX_EXPORTS)
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._failures_lock = threading.Lock()
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                          trim_blocks=True, lstrip_blocks=True)
        env.filters.update(age=_age, utc=_utc, label=label, mode=mode_name, ts=_ts)
        self.env = env
        routes = [
            Route("/", self.home), Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]), Route("/logout", self.logout, methods=["POST"]),
            Route("/fleet", self.fleet), Route("/fleet/rows", self.fleet_rows),
            Route("/gate/{gate_id}", self.gate), Route("/audit", self.audit), Route("/audit/export", self.export),
            Route("/journey", self.journey),
            Route("/ack", self.ack, methods=["POST"]), Route("/ops-log", self.ops_log),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.app = Starlette(routes=routes, exception_handlers={StorageError: self._storage_error})
        self.app.add_middleware(_Headers, hsts=cfg.tls)

    # ----- plumbing ----------------------------------------------------------------------

    def _thread_state(self) -> tuple[Central, ConsoleStore]:
        w = self._worker
        if w.central is None:
            w.central = Central(self.database, pool_size=self.central_cfg.pool_size,
                                template_key=self.central_cfg.template_key_path)
            w.store = ConsoleStore(w.central.db, self.clock)
        return w.central, w.store  # type: ignore[return-value]

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(central, store, *args) on a database worker thread."""
        def call():
            central, store = self._thread_state()
            return fn(central, store, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def client(self, request: Request) -> str:
        host = request.client.host if request.client else "?"
        if self.cfg.behind_proxy and host in self.cfg.trusted_proxies:
            forwarded = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
            for h in reversed(forwarded):  # the right-most address a trusted proxy did not add
                if h not in self.cfg.trusted_proxies:
                    return h[:64]
        return host[:64]

    def _proxy_refusal(self, request: Request) -> Response | None:
        if not self.cfg.behind_proxy:
            return None
        host = request.client.host if request.client else ""
        if host not in self.cfg.trusted_proxies or request.headers.get("x-forwarded-proto") != "https":
            return PlainTextResponse("this console is served through its HTTPS reverse proxy only", 400)
        return None

    def render(self, request: Request, name: str, status: int = 200, session: Session | None = None,
               **context: Any) -> HTMLResponse:
        t = self.env.get_template(name)
        html = t.render(request=request, session=session, user=session.account if session else None,
                        csrf=session.csrf if session else "", now=dt.datetime.now(dt.timezone.utc), **context)
        return HTMLResponse(html, status, headers={"Cache-Control": "no-store"})

    async def _storage_error(self, request: Request, exc: Exception) -> Response:
        log.error("database unavailable for %s: %s", request.url.path, str(exc).splitlines()[0] if str(exc) else exc)
        return PlainTextResponse("the central's database is unavailable just now; try again in a moment", 503)

    async def session(self, request: Request) -> Session | None:
        token = request.cookies.get(self.cookie, "")
        if not token:
            return None
        return await self.db(lambda c, s: s.session(token, self.cfg.session_idle_s, self.cfg.session_max_s))

    async def require(self, request: Request, supervisor: bool = False,
                      fragment: bool = False) -> tuple[Session | None, Response | None]:
        refused = self._proxy_refusal(request)
        if refused is not None:
            return None, refused
        s = await self.session(request)
        if s is None:
            if fragment:
                return None, PlainTextResponse("log in first", 401)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return None, RedirectResponse("/login?" + urlencode({"next": target}), 303)
        if supervisor and not s.account.is_supervisor:
            await self.db(lambda c, st: st.record(s.account.username, "forbidden", "refused", request.url.path,
                                                  self.client(request), {"role": s.account.role}))
            return s, self.render(request, "error.html", 403, s, title="Supervisors only",
                                  message="This needs the supervisor role; your account is a viewer.")
        return s, None

    async def check_csrf(self, request: Request, s: Session, form) -> Response | None:
        """The form's token must be the session's, and a browser-sent Origin must be ours."""
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if self.cfg.behind_proxy:
            own = f"https://{request.headers.get('host', '')}"
        token = str(form.get("csrf", ""))
        if constant_time_equal(token, s.csrf) and (origin is None or origin == own):
            return None
        await self.db(lambda c, st: st.record(s.account.username, "csrf", "refused", request.url.path,
                                              self.client(request), {"origin": origin or ""}))
        return self.render(request, "error.html", 403, s, title="Refused",
                           message="This form was not sent from this console page (CSRF check). Reload and retry.")

    # ----- login -------------------------------------------------------------------------

    def _login_response(self, request: Request, status: int = 200, error: str = "", next_: str = "/fleet") -> Response:
        token = secrets.token_urlsafe(24)
        resp = self.render(request, "login.html", status, None, login_csrf=token, error=error, next=next_)
        resp.set_cookie(LOGIN_COOKIE, token, max_age=1800, path="/login", secure=self.cfg.secure_cookies,
                        httponly=True, samesite="strict")
        return resp

    async def login_page(self, request: Request) -> Response:
        refused = self._proxy_refusal(request)
        if refused is not None:
            return refused
        return self._login_response(request, next_=_safe_next(request.query_params.get("next")))

    def _client_blocked(self, client: str) -> bool:
        now = self.clock()
        with self._failures_lock:
            q = self._failures[client]
            while q and q[0] < now - self.cfg.client_window_s:
                q.popleft()
            return len(q) >= self.cfg.client_max_failures

    def _client_failed(self, client: str) -> None:
        with self._failures_lock:
            self._failures[client].append(self.clock())

    async def login(self, request: Request) -> Response:
        refused = self._proxy_refusal(request)
        if refused is not None:
            return refused
        form = await request.form(max_fields=10, max_files=0)
        client = self.client(request)
        username = str(form.get("username", "")).strip()[:64]
        password = str(form.get("password", ""))[:1024]
        next_ = _safe_next(str(form.get("next", "")))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not constant_time_equal(cookie, str(form.get("login_csrf", ""))):
            await self.db(lambda c, s: s.record(username or "?", "login", "refused", username or "?", client,
                                                {"reason": "login form token missing or wrong (CSRF)"}))
            return self._login_response(request, 403, "The login form expired or did not come from this console. "
                                                      "Try again.", next_)
        if self._client_blocked(client):
            await self.db(lambda c, s: s.record(username or "?", "login", "refused", username or "?", client,
                                                {"reason": "too many failed logins from this address"}))
            return self._login_response(request, 429, "Too many failed logins from this address; wait and retry.",
                                        next_)
        result = await self.db(lambda c, s: s.check_login(username, password, client, self.cfg.login_max_failures,
                                                          self.cfg.login_lockout_s))
        if result.account is None:
            self._client_failed(client)
            msg = "Wrong user name or password."
            if result.reason == "locked" or result.locked_until:
                msg = "Too many wrong passwords: this account is locked for a while. Ask an administrator."
            return self._login_response(request, 401, msg, next_)
        token, _ = await self.db(lambda c, s: s.create_session(result.account, client))
        resp = RedirectResponse(next_, 303)
        resp.set_cookie(self.cookie, token, path="/", secure=self.cfg.secure_cookies, httponly=True,
                        samesite="strict")
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        return resp

    async def logout(self, request: Request) -> Response:
        s, refused = await self.require(request)
        if refused is not None:
            return refused
        assert s is not None
        form = await request.form(max_fields=5, max_files=0)
        bad = await self.check_csrf(request, s, form)
        if bad is not None:
            return bad

        def end(c, st):
            st.end_session(s.token_sha256)
            st.record(s.account.username, "logout", "ok", s.account.username, self.client(request))
        await self.db(end)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(self.cookie, path="/", secure=self.cfg.secure_cookies, httponly=True, samesite="strict")
        return resp

    # ----- pages -------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/fleet", 303)

    def _fleet_args(self, request: Request) -> tuple[str | None, str | None]:
        site = request.query_params.get("site") or None
        state = request.query_params.get("state") or None
        if state not in (None, *views.STATES):
            state = None
        return site, state

    async def _fleet_data(self, request: Request) -> dict[str, Any]:
        site, state = self._fleet_args(request)

        everything = await self.db(lambda c, st: views.fleet(c, self.central_cfg.gate_silent_after_s, st.acks()))
        rows = [r for r in everything if (not site or r.site == site) and (not state or r.state == state)]
        counts = {s: sum(1 for r in everything if r.state == s) for s in views.STATES}
        sites = sorted({r.site for r in everything if r.site})
        return dict(rows=rows, counts=counts, sites=sites, site=site or "", state=state or "", total=len(everything),
                    query=urlencode({k: v for k, v in (("site", site), ("state", state)) if v}))

    async def fleet(self, request: Request) -> Response:
        s, refused = await self.require(request)
        if refused is not None:
            return refused
        data = await self._fleet_data(request)
        return self.render(request, "fleet.html", session=s, states=views.STATES, refresh_s=self.cfg.refresh_s, **data)

    async def fleet_rows(self, request: Request) -> Response:
        s, refused = await self.require(request, fragment=True)
        if refused is not None:
            return refused
        data = await self._fleet_data(request)
        return self.render(request, "_fleet_rows.html", session=s, **data)

    async def gate(self, request: Request) -> Response:
        s, refused = await self.require(request)
        if refused is not None:
            return refused
        gate_id = request.path_params["gate_id"]
        window = request.query_params.get("window", "1h")
        if window not in views.WINDOWS:
            window = "1h"
        lane = request.query_params.get("lane") or None

        def load(c, st):
            rows = views.fleet(c, self.central_cfg.gate_silent_after_s, st.acks(), gate_id=gate_id)
            if not rows:
                return None, None
            return rows[0], views.lane_stats(c, gate_id, window, lane)
        row, stats = await self.db(load)
        if row is None:
            return self.render(request, "error.html", 404, s, title="No such gate",
                               message=f"No gate {gate_id!r} is registered at this central.")
        series = stats.series()
        plot = decisions_plot(stats.buckets, series, stats.since, stats.bucket_s)
        return self.render(request, "gate.html", session=s, g=row, stats=stats, plot=plot, series=series,
                           colours=series_colours(series), window=window, windows=list(views.WINDOWS), lane=lane or "")

    def _search_args(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        now = dt.datetime.now(dt.timezone.utc)
        errors = []

        def when(name: str, default: dt.datetime) -> dt.datetime:
            text = (q.get(name) or "").strip()
            if not text:
                return default
            try:
                return parse_time(text)
            except ValueError as e:
                errors.append(str(e))
                return default
        since = when("since", now - dt.timedelta(hours=24))
        until = when("until", now + dt.timedelta(minutes=1))
        outcome = q.get("outcome") or None
        if outcome not in (None, *views.OUTCOMES):
            errors.append(f"outcome {outcome!r} is not one of {', '.join(views.OUTCOMES)}")
            outcome = None
        subject = (q.get("subject") or "").strip()[:128] or None
        fmt = q.get("format", "jsonl")
        if fmt not in FORMATS:
            errors.append(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
            fmt = "jsonl"
        return dict(gate=(q.get("gate") or "").strip() or None, since=since, until=until, outcome=outcome,
                    subject=subject, format=fmt, errors=errors)

    @staticmethod
    def _query(a: dict[str, Any], **extra: str) -> str:
        items = {"gate": a["gate"], "since": views.utc_text(a["since"])[:19] + "Z",
                 "until": views.utc_text(a["until"])[:19] + "Z", "outcome": a["outcome"], "subject": a["subject"],
                 **extra}
        return urlencode({k: v for k, v in items.items() if v})

    async def audit(self, request: Request) -> Response:
        s, refused = await self.require(request)
        if refused is not None:
            return refused
        assert s is not None
        a = self._search_args(request)
        searched = "search" in request.query_params and not a["errors"]
        supervisor = s.account.is_supervisor
        client = self.client(request)

        def load(c, st):
            gates = views.gate_ids(c)
            if not searched:
                return gates, [], False, {}, None
            rows, more = views.search_audit(c, a["since"], a["until"], a["gate"], a["outcome"], a["subject"],
                                            self.cfg.search_limit)
            names = views.display_names(c, (r.subject_id for r in rows)) if supervisor else {}
            check = None
            if a["gate"]:  # the chain over the range, as the export would verify it
                check = export_audit(c, a["gate"], a["since"], a["until"], "jsonl", lambda _t: None)
            st.record(s.account.username, "search", "ok", a["gate"] or "*", client, {
                "since": views.utc_text(a["since"]), "until": views.utc_text(a["until"]), "outcome": a["outcome"],
                "subject": a["subject"], "rows": len(rows), "names_shown": len(names)})
            return gates, rows, more, names, check
        gates, rows, more, names, check = await self.db(load)
        return self.render(request, "audit.html", session=s, a=a, gates=gates, rows=rows, more=more, names=names,
                           searched=searched, check=check, outcomes=views.OUTCOMES, limit=self.cfg.search_limit,
                           since_text=views.utc_text(a["since"])[:16], until_text=views.utc_text(a["until"])[:16],
                           export_jsonl=self._query(a, format="jsonl"), export_csv=self._query(a, format="csv"))

    async def journey(self, request: Request) -> Response:
        """One passenger's day across every place (check-in, security, boarding), oldest first:
        the audit search by subject id, in time order, with each place named for what it is."""
        s, refused = await self.require(request)
        if refused is not None:
            return refused
        assert s is not None
        a = self._search_args(request)
        if not a["subject"]:
            a["errors"].append("a journey needs a subject id")
        supervisor = s.account.is_supervisor
        client = self.client(request)

        def load(c, st):
            if a["errors"]:
                return [], False, {}
            steps, more = views.journey(c, a["subject"], a["since"], a["until"], self.cfg.search_limit)
            names = views.display_names(c, [a["subject"]]) if supervisor else {}
            st.record(s.account.username, "journey", "ok", a["subject"], client, {
                "since": views.utc_text(a["since"]), "until": views.utc_text(a["until"]), "rows": len(steps),
                "names_shown": len(names)})
            return steps, more, names
        steps, more, names = await self.db(load)
        return self.render(request, "journey.html", session=s, a=a, steps=steps, more=more, names=names,
                           limit=self.cfg.search_limit, since_text=views.utc_text(a["since"])[:16],
                           until_text=views.utc_text(a["until"])[:16])

    async def export(self, request: Request) -> Response:
        s, refused = await self.require(request)
        if refused is not None:
            return refused
        assert s is not None
        a = self._search_args(request)
        if a["errors"]:
            return self.render(request, "error.html", 400, s, title="Export refused", message="; ".join(a["errors"]))
        if not self._exports.acquire(blocking=False):
            return PlainTextResponse(f"{MAX_EXPORTS} exports are running already; try again when one is done", 429)
        client = self.client(request)
        chunks: queue.Queue = queue.Queue(maxsize=32)
        cancelled = threading.Event()
        select = None
        if a["outcome"] or a["subject"]:
            def select(row):
                return views.matches(row.body, a["outcome"], a["subject"])

        def produce() -> None:
            central = None
            buf: list[str] = []
            size = 0
            results = []
            outcome = "ok"

            def write(text: str) -> None:
                nonlocal size
                buf.append(text)
                size += len(text)
                if size >= 65536:
                    flush()

            def flush() -> None:
                nonlocal size
                if buf:
                    data = "".join(buf).encode("utf-8")
                    buf.clear()
                    size = 0
                    while not cancelled.is_set():
                        try:
                            chunks.put(data, timeout=0.5)
                            return
                        except queue.Full:
                            continue
                    raise _Cancelled()
            try:
                central = Central(self.database, pool_size=self.central_cfg.pool_size,
                                  template_key=self.central_cfg.template_key_path)
                gates = [a["gate"]] if a["gate"] else views.gate_ids(central)
                for i, g in enumerate(gates):
                    r = export_audit(central, g, a["since"], a["until"], a["format"], write, select, header=i == 0)
                    results.append({"gate": g, "records": r.records, "written": r.written, "chain_ok": r.check.ok,
                                    "first_broken_seq": r.check.first_broken_seq, "anchored": r.anchored})
                flush()
            except _Cancelled:
                outcome = "aborted"
            except Exception:
                log.exception("audit export failed")
                outcome = "failed"
            finally:
                try:
                    if central is not None:
                        ConsoleStore(central.db, self.clock).record(
                            s.account.username, "export", outcome, a["gate"] or "*", client, {
                                "since": views.utc_text(a["since"]), "until": views.utc_text(a["until"]),
                                "outcome": a["outcome"], "subject": a["subject"], "format": a["format"],
                                "gates": results})
                except Exception:
                    log.exception("could not record the export in the ops audit log")
                finally:
                    if central is not None:
                        central.close()
                    self._exports.release()
                    while True:  # the end marker must get through unless the reader left
                        try:
                            chunks.put(None, timeout=0.5)
                            break
                        except queue.Full:
                            if cancelled.is_set():
                                break

        threading.Thread(target=produce, name="console-export", daemon=True).start()

        async def body():
            loop = asyncio.get_running_loop()
            try:
                while True:
                    data = await loop.run_in_executor(None, chunks.get)
                    if data is None:
                        return
                    yield data
            finally:
                cancelled.set()

        ext = a["format"]
        name = f"audit-{a['gate'] or 'all-gates'}-{a['since']:%Y%m%dT%H%M}-{a['until']:%Y%m%dT%H%M}.{ext}"
        media = "application/x-ndjson" if ext == "jsonl" else "text/csv; charset=utf-8"
        return StreamingResponse(body(), media_type=media, headers={
            "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    async def ack(self, request: Request) -> Response:
        s, refused = await self.require(request, supervisor=True)
        if refused is not None:
            return refused
        assert s is not None
        form = await request.form(max_fields=10, max_files=0)
        bad = await self.check_csrf(request, s, form)
        if bad is not None:
            return bad
        gate_id, alarm, note = str(form.get("gate", "")), str(form.get("alarm", "")), str(form.get("note", ""))
        back = _safe_next(str(form.get("back", "/fleet")))

        def do(c, st):
            rows = views.fleet(c, self.central_cfg.gate_silent_after_s, gate_id=gate_id)
            if not rows or alarm not in {x.key for x in rows[0].alarms}:
                raise AccountError(f"gate {gate_id} has no such alarm now (it may have been cleared at the lane)")
            st.acknowledge(gate_id, alarm, s.account.username, note, self.client(request))
        try:
            await self.db(do)
        except AccountError as e:
            return self.render(request, "error.html", 400, s, title="Not acknowledged", message=str(e))
        return RedirectResponse(back, 303)

    async def ops_log(self, request: Request) -> Response:
        s, refused = await self.require(request, supervisor=True)
        if refused is not None:
            return refused
        actor = request.query_params.get("actor") or None
        action = request.query_params.get("action") or None

        def load(c, st):
            return st.ops_log(500, actor, action), st.verify_ops_log(), st.accounts()
        entries, check, accounts = await self.db(load)
        return self.render(request, "ops_log.html", session=s, entries=entries, check=check, accounts=accounts,
                           actor=actor or "", action=action or "")


class _Cancelled(Exception):
    pass


def _safe_next(target: str | None) -> str:
    """Only a path of this console (no scheme, no host, no //evil.example)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/fleet"
    return target[:2000]


class _Headers:
    """Security headers on every response (pure ASGI, so streamed responses get them too).
    Referrer-Policy same-origin, not no-referrer: under no-referrer Chromium sends `Origin: null`
    with this console's own form posts (found by the browser test), which the Origin check must
    refuse; same-origin still keeps URLs (subject ids of searches) from reaching other sites."""

    def __init__(self, app, hsts: bool = False):
        self.app = app
        self.extra = [(b"content-security-policy", _CSP.encode()), (b"x-content-type-options", b"nosniff"),
                      (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
                      (b"cross-origin-opener-policy", b"same-origin"),
                      (b"permissions-policy", b"camera=(), microphone=(), geolocation=()")]
        if hsts:
            self.extra.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def add(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.extra}
            await send(message)
        await self.app(scope, receive, add)


def build_app(central_cfg: CentralConfig, cfg: ConsoleConfig, clock: Callable[[], float] = time.time) -> ConsoleApp:
    return ConsoleApp(central_cfg, cfg, clock)
