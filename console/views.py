"""The figures the console's pages show, read from the central's tables through `Central`.

Nothing here writes, and nothing reads a face image: the central holds none. Subject ids are
opaque; display names are looked up only when the page's role may see them (`display_names`).

Definitions (the lane page states them too):
- a *visit* is one tracked person at one lane (one track id between two lane starts); its first
  judgement is its first `decision` or `attempt_failed` record;
- *first-attempt pass rate* = visits whose first judgement was an acceptance / visits judged.
  The central has no ground truth, so refused strangers count in the denominator: this is not
  `gate-bench lane`'s genuine-only figure, it is what ops can watch move;
- *liveness refusals* = decisions and failed attempts whose reason is a liveness doubt
  (`presentation_attack_suspected`), final ones and retried ones counted apart.
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from sync.audit_chain import AuditRow
from sync.central import Central, GateStatus
from sync.scopes import scope_label

UTC = dt.timezone.utc
STATES = ("online", "offline", "alarm", "out-of-service", "degraded")
OUTCOMES = ("allow", "deny", "refer")
LIVENESS = "presentation_attack_suspected"
# Lane page windows: (label, seconds, bucket seconds) — 30 to 48 bars each.
WINDOWS = {"1h": (3600, 120), "6h": (6 * 3600, 600), "24h": (86400, 1800), "7d": (7 * 86400, 4 * 3600)}


def utc_text(when: dt.datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(ts: str) -> dt.datetime:
    return dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _from_unix(x: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(float(x), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# ----- fleet ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alarm:
    key: str  # stable for one occurrence, so an acknowledgement sticks to it
    text: str
    since: dt.datetime | None
    source: str  # "lane" | "audit"
    ack: tuple[str, str, dt.datetime] | None = None  # (who, note, when)


@dataclass(frozen=True)
class GateRow:
    gate_id: str
    site: str
    lanes: tuple[str, ...]
    state: str  # one of STATES
    mode: str
    mode_since: dt.datetime | None
    out_of_service_by: str | None
    alarms: tuple[Alarm, ...]
    node: str | None
    watchlist_seq: int | None
    watchlist_head: int
    watchlist_behind: int | None  # changes in the gate's scopes after its sequence (None: never reported)
    audit_backlog: int | None  # records the gate has not had acknowledged yet
    audit_held_seq: int
    last_seen: dt.datetime | None
    status: str | None
    software_version: str | None
    scopes: tuple[str, ...]


def _lane_alarms(gate_id: str, extra: dict[str, Any]) -> list[Alarm]:
    from gate.event_text import label  # the words ground staff read at the lane

    mode = str(extra.get("mode") or "")
    since = _from_unix(extra.get("mode_since"))
    stamp = "" if since is None else f"{since.timestamp():.0f}"
    out = []
    if mode == "alarm":
        cause = str(extra.get("alarm") or "alarm")
        out.append(Alarm(f"lane:{cause}:{stamp}", f"lane alarm: {label(cause)} (held for staff)", since, "lane"))
    elif mode == "emergency":
        out.append(Alarm(f"lane:emergency:{stamp}", "emergency: the lane is held open (fire alarm)", since, "lane"))
    for fault in extra.get("faults") or ():
        out.append(Alarm(f"fault:{fault}", f"device fault: {fault}", None, "lane"))
    if extra.get("audit_chain_alarm"):
        text = str(extra["audit_chain_alarm"])
        out.append(Alarm(f"gate-chain:{text[:120]}", f"audit chain (gate): {text}", None, "audit"))
    return out


def fleet(central: Central, silent_after_s: float, acks: dict[tuple[str, str], tuple[str, str, float]] | None = None,
          site: str | None = None, state: str | None = None, gate_id: str | None = None) -> list[GateRow]:
    """Every registered gate, filtered by site and state; with `gate_id`, only that gate's row
    (none if it is not registered), read by the same statements restricted to it, so a gate's
    page and an alarm acknowledgement do not build the whole fleet.

    Set queries in one read snapshot, the same seven for 3 gates or 3,000 (gate_health's
    reports; the gates with their health; every gate's newest audit head; every audit alarm;
    every flight assignment; the heads of all their scopes; the changes behind, read once for
    the gates that are behind, skipped when none is). `gate-bench fleet --gates 200 2000`,
    median refresh on the shared 2-core machine, PostgreSQL over loopback: 200 gates 14.8 ms on
    SQLite, 23.9 ms on PostgreSQL; 2,000 gates 166 ms and 198 ms, 9 statements each (with BEGIN
    and COMMIT). The former per-gate queries (~6 per gate, 12,182 statements at 2,000 gates), same
    run and fleet: 40.9 / 211 ms at 200 gates, 643 / 2,634 ms at 2,000. What is left grows with the
    fleet in Python (each row's report JSON and alarms, ~75 us a gate), not in round trips."""
    acks = acks or {}
    with central.db.read_snapshot():
        where, args = ("WHERE gate_id = ?", (gate_id,)) if gate_id is not None else ("", ())
        reports = dict(central.conn.execute(f"SELECT gate_id, report FROM gate_health {where}", args).fetchall())
        statuses = central.gate_statuses(silent_after_s, gate_id)
        assigned = (central.all_assigned_flights() if gate_id is None
                    else {gate_id: central.assigned_flights(gate_id)})
        scopes_of = {g.gate_id: tuple(g.scopes) + assigned.get(g.gate_id, ()) for g in statuses}
        heads = central.hashmap.scope_heads(sorted({s for scopes in scopes_of.values() for s in scopes}))
        head_of = {g: max((heads[s] for s in scopes), default=0) for g, scopes in scopes_of.items()}
        # Behind: a gate's reported sequence trails every change in its scopes until its next
        # report, so in a busy fleet many gates are behind at any moment; one statement for all.
        lagging = {g.gate_id: g.watchlist_seq for g in statuses
                   if g.watchlist_seq is not None and scopes_of[g.gate_id] and head_of[g.gate_id] > g.watchlist_seq}
        counts = central.hashmap.changes_behind(
            {(s, seq) for g, seq in lagging.items() for s in scopes_of[g]}) if lagging else {}
    rows = []
    for g in statuses:
        behind: int | None = None
        if g.watchlist_seq is not None:
            behind = 0
            if g.gate_id in lagging:  # a pruned log: at least one behind
                behind = sum(counts[(s, g.watchlist_seq)] for s in set(scopes_of[g.gate_id])) or 1
        row = _gate_row(g, reports.get(g.gate_id), acks, scopes_of[g.gate_id], head_of[g.gate_id], behind)
        if site and row.site != site:
            continue
        if state and row.state != state:
            continue
        rows.append(row)
    return rows


def _gate_row(g: GateStatus, report_text: str | None, acks: dict[tuple[str, str], tuple[str, str, float]],
              scopes: tuple[str, ...], head: int, behind: int | None) -> GateRow:
    try:
        report = json.loads(report_text) if report_text else {}
    except ValueError:
        report = {}
    extra = report.get("extra") or {}
    alarms = _lane_alarms(g.gate_id, extra)
    for a in g.audit_alarms:
        if a.resolved_by is None:
            text = f"audit chain: {a.kind} at seq {a.seq}: {a.detail}"
            alarms.append(Alarm(f"audit:{a.epoch}:{a.kind}:{a.seq}", text, _from_unix(a.detected_at), "audit"))
    alarms = [Alarm(a.key, a.text, a.since, a.source, _ack(acks.get((g.gate_id, a.key)))) for a in alarms]
    mode = str(extra.get("mode") or ("-" if g.status is None else "?"))
    if g.silent:
        st = "offline"
    elif any(a.source == "lane" and not a.key.startswith("fault:") for a in alarms) or \
            any(a.source == "audit" for a in alarms):
        st = "alarm"
    elif mode == "out_of_service":
        st = "out-of-service"
    elif g.status != "ok" or extra.get("faults"):
        st = "degraded"
    else:
        st = "online"
    lane = extra.get("lane")
    return GateRow(
        gate_id=g.gate_id, site=str(extra.get("site") or ""), lanes=(str(lane),) if lane else (),
        state=st, mode=mode, mode_since=_from_unix(extra.get("mode_since")),
        out_of_service_by=extra.get("out_of_service_by"), alarms=tuple(alarms), node=g.node,
        watchlist_seq=g.watchlist_seq, watchlist_head=head, watchlist_behind=behind, audit_backlog=g.queue_depth,
        audit_held_seq=g.audit_max_seq, last_seen=g.last_seen, status=g.status, software_version=g.software_version,
        scopes=tuple(scope_label(s) for s in scopes))


def _ack(a: tuple[str, str, float] | None) -> tuple[str, str, dt.datetime] | None:
    if a is None:
        return None
    when = _from_unix(a[2])
    return (a[0], a[1], when) if when else None


# ----- audit rows of a gate, all chains --------------------------------------------------------

def gate_rows(central: Central, gate_id: str, since_ts: str, until_ts: str | None = None) -> Iterator[AuditRow]:
    """The gate's received records in the range, over all its chain epochs, in seq order per
    chain. Where a later epoch forks from an earlier one at `base_seq`, the earlier chain's
    records after that point are left out: the gate's own log continues in the new epoch (the
    central's differing copy stays in the store and in the chain export as evidence)."""
    epochs = central.audit.epochs(gate_id)
    cut: dict[str, int] = {}
    for e in epochs[1:]:
        cut[e.parent] = min(cut.get(e.parent, e.base_seq), e.base_seq)
    for e in epochs:
        limit = cut.get(e.epoch)
        for row in central.audit.rows(gate_id, since_ts, until_ts, epoch=e.epoch):
            if limit is not None and row.seq > limit:
                break
            yield row


# ----- lane page -----------------------------------------------------------------------------

@dataclass(frozen=True)
class StaffActionRow:
    ts: str
    lane: str
    action: str
    operator: str
    reason: str
    unix_user: str
    refused: str
    cleared: str


@dataclass
class LaneStats:
    gate_id: str
    since: dt.datetime
    until: dt.datetime
    bucket_s: int
    lanes: set[str] = field(default_factory=set)
    buckets: list[Counter] = field(default_factory=list)  # per bucket: (outcome, reason) -> decisions
    totals: Counter = field(default_factory=Counter)
    visits: int = 0
    first_attempt_allowed: int = 0
    retries: int = 0
    liveness_final: int = 0
    liveness_retried: int = 0
    alarms_raised: Counter = field(default_factory=Counter)
    staff: list[StaffActionRow] = field(default_factory=list)
    records: int = 0

    @property
    def decisions(self) -> int:
        return sum(self.totals.values())

    @property
    def first_attempt_rate(self) -> float | None:
        return None if self.visits == 0 else self.first_attempt_allowed / self.visits

    def series(self) -> list[tuple[str, str]]:
        """(outcome, reason) pairs present, allow first, then deny, refer; most frequent first."""
        order = {o: i for i, o in enumerate(OUTCOMES)}
        return sorted(self.totals, key=lambda k: (order.get(k[0], 9), -self.totals[k], k[1]))


def lane_stats(central: Central, gate_id: str, window: str = "1h", lane: str | None = None,
               now: dt.datetime | None = None) -> LaneStats:
    from gate.event_text import label

    seconds, bucket = WINDOWS.get(window, WINDOWS["1h"])
    now = now or dt.datetime.now(UTC)
    since = now - dt.timedelta(seconds=seconds)
    n = -(-seconds // bucket)
    st = LaneStats(gate_id, since, now, bucket, buckets=[Counter() for _ in range(n)])
    first_judged: set[tuple[str, int, Any]] = set()  # (lane, lane start, track) judged already
    starts: Counter = Counter()
    for row in gate_rows(central, gate_id, utc_text(since), utc_text(now + dt.timedelta(seconds=1))):
        b = row.body
        st.records += 1
        ln = str(b.get("lane", ""))
        if ln:
            st.lanes.add(ln)
        if lane and ln != lane:
            continue
        event = b.get("event")
        if event == "lane_started":
            starts[ln] += 1
            continue
        if event in ("decision", "attempt_failed"):
            d = b.get("decision") or {}
            outcome, reason = str(d.get("outcome", "?")), str(d.get("reason", "?"))
            visit = (ln, starts[ln], d.get("track_id"))
            if visit not in first_judged:
                first_judged.add(visit)
                st.visits += 1
                if event == "decision" and outcome == "allow":
                    st.first_attempt_allowed += 1
            if event == "attempt_failed":
                st.retries += 1
                if reason == LIVENESS:
                    st.liveness_retried += 1
                continue
            if reason == LIVENESS:
                st.liveness_final += 1
            st.totals[(outcome, reason)] += 1
            i = int((parse_ts(row.ts) - since).total_seconds() // bucket)
            if 0 <= i < n:
                st.buckets[i][(outcome, reason)] += 1
        elif event == "manual_action":
            st.staff.append(StaffActionRow(
                ts=row.ts, lane=ln, action=str(b.get("action", "")), operator=str(b.get("operator_id", "")),
                reason=str(b.get("reason", "")), unix_user=str(b.get("unix_user") or b.get("uid") or ""),
                refused=str(b.get("refused") or ""), cleared=", ".join(label(str(x)) for x in b.get("cleared") or ())))
        if b.get("to") == "alarm" and b.get("from") != "alarm":
            st.alarms_raised[str(event)] += 1
    st.staff.reverse()  # newest first
    return st


# ----- audit search --------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchRow:
    gate_id: str
    epoch: str
    seq: int
    ts: str
    lane: str
    event: str
    outcome: str
    subject_id: str
    text: str  # the record in staff wording (gate.event_text)


def subject_of(body: dict[str, Any]) -> str | None:
    """The subject a record names: its decision's, its opening's, or its own field."""
    for part in (body.get("decision"), body.get("opening"), body):
        if isinstance(part, dict) and part.get("subject_id"):
            return str(part["subject_id"])
    return None


def matches(body: dict[str, Any], outcome: str | None, subject: str | None) -> bool:
    if outcome and not (body.get("event") == "decision" and (body.get("decision") or {}).get("outcome") == outcome):
        return False
    if subject and subject_of(body) != subject:
        return False
    return True


def search_audit(central: Central, since: dt.datetime, until: dt.datetime, gate_id: str | None = None,
                 outcome: str | None = None, subject: str | None = None,
                 limit: int = 500) -> tuple[list[SearchRow], bool]:
    """Newest first; (rows, more) where `more` says the limit cut the list. The SQL narrows by
    substring on the stored JSON (same bytes on both engines: sorted keys, compact separators);
    `matches` then decides exactly."""
    from gate.event_text import event_line

    db = central.db
    sql = "SELECT gate_id, epoch, seq, ts, body FROM audit WHERE ts >= ? AND ts < ?"
    args: list[Any] = [utc_text(since), utc_text(until)]
    if gate_id:
        sql += " AND gate_id = ?"
        args.append(gate_id)
    if subject:
        sql += " AND " + db.contains("body")
        args.append('"subject_id":' + json.dumps(subject, ensure_ascii=False))
    if outcome:
        sql += " AND " + db.contains("body")
        args.append('"outcome":' + json.dumps(outcome))
    sql += " ORDER BY ts DESC, gate_id, seq DESC"
    out: list[SearchRow] = []
    more = False
    with db.read_snapshot():
        for g, epoch, seq, ts, text in db.stream(sql, args, batch=500):
            body = json.loads(text)
            if not matches(body, outcome, subject):
                continue
            if len(out) >= limit:
                more = True
                break
            d = body.get("decision") or {}
            lane = str(body.get("lane", "") or "")
            # event_line starts "HH:MM:SS #seq lane"; the table has columns for those
            text = event_line({**body, "seq": seq, "ts": ts}).split(" ", 3 if lane else 2)[-1]
            out.append(SearchRow(gate_id=g, epoch=epoch, seq=int(seq), ts=ts, lane=lane,
                                 event=str(body.get("event", "")), outcome=str(d.get("outcome", "")),
                                 subject_id=subject_of(body) or "", text=text))
    return out, more


def display_names(central: Central, subject_ids: Iterable[str]) -> dict[str, str]:
    """Subject id -> display name, for the roles allowed to see names (supervisors)."""
    ids = sorted({s for s in subject_ids if s})
    names: dict[str, str] = {}
    for lo in range(0, len(ids), 500):
        chunk = ids[lo:lo + 500]
        marks = ",".join("?" * len(chunk))
        for sid, name in central.conn.execute(
                f"SELECT subject_id, display_name FROM subjects WHERE subject_id IN ({marks})", chunk).fetchall():
            if name:
                names[sid] = name
    return names


def gate_ids(central: Central) -> list[str]:
    return [r[0] for r in central.conn.execute(
        "SELECT ident FROM principals WHERE kind = 'gate' ORDER BY ident").fetchall()]


@dataclass(frozen=True)
class JourneyStep:
    """One record of a passenger's day, at the place it happened (issue 14: kiosk → security
    lane → boarding gate, as the central's copies of each place's audit log tell it)."""
    ts: str
    place: str  # gate or station id
    place_kind: str  # "check-in" | "security" | "boarding" | "lane"
    event: str
    outcome: str
    text: str


def place_kind(central: Central, place: str) -> str:
    """What a place is, from how it is registered: an enrolment station is check-in; a lane that
    follows a checkpoint scope is security, one with flights (configured or assigned) boarding."""
    if central.principal(f"station:{place}") is not None:
        return "check-in"
    gate = central.principal(f"gate:{place}")
    scopes = (*gate.scopes, *gate.assigned) if gate is not None else ()
    if any("checkpoint" in s for s in scopes):
        return "security"
    if any("flight" in s for s in scopes):
        return "boarding"
    return "lane"


def journey(central: Central, subject: str, since: dt.datetime, until: dt.datetime,
            limit: int = 500) -> tuple[list[JourneyStep], bool]:
    """Every record naming `subject` at every place in the window, oldest first (the audit
    search's rows, so the same exact subject match and the same limit)."""
    rows, more = search_audit(central, since, until, subject=subject, limit=limit)
    kinds: dict[str, str] = {}
    steps = []
    for r in reversed(rows):
        if r.gate_id not in kinds:
            kinds[r.gate_id] = place_kind(central, r.gate_id)
        steps.append(JourneyStep(ts=r.ts, place=r.gate_id, place_kind=kinds[r.gate_id], event=r.event,
                                 outcome=r.outcome, text=r.text))
    return steps, more
