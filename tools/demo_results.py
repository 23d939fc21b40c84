"""What the demo's journey shows, read back from the central: each passenger's steps, the
summary and the verdict.

The central holds every place's audit log (the kiosk's under its station id, each lane's
under its gate id, uploaded by the places themselves), so the journey is rebuilt from there,
not from what the demo saw: what an auditor would find is what the report shows. A step's
records are those of its place inside the window in which the traveller stood there
(tools/demo_journey.py keeps the windows); a refusal names nobody, so the window is what
ties it to the traveller.

A step is `ok` (as the script says), `differs` (another outcome the journey survives: an
extra referral the agent approved), `limit` (a genuine traveller refused for a stated model
limit, with the score behind it) or `fail`. The demo exits non-zero on any `fail`, on a false
open and on an audit chain the central cannot verify.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from tools.demo_cast import STORIES, Cast, Traveller
from tools.demo_journey import Journey, Step
from tools.demo_site import KIOSK, Site

OK, DIFFERS, LIMIT, FAIL = "ok", "differs", "limit", "fail"
KIND_LABELS = {"kiosk": "check-in kiosk", "security": "security", "boarding": "boarding gate"}
STATE_MARKS = {OK: "✔", DIFFERS: "≈", LIMIT: "✘ (model limit)", FAIL: "✘"}


@dataclass
class StepResult:
    kind: str
    place: str
    at_s: float  # when the traveller stepped up, seconds since the journey began
    took_s: float | None  # kiosk: stepping up → enrolled; lane: first face → decision
    expected: str
    got: str
    state: str
    detail: str  # scores, operator, the recorded reason
    note: str = ""
    outcome: str = ""  # the raw outcome for the timeline: allow/deny/refer/enrolled/referred/...


@dataclass
class PassengerResult:
    traveller: Traveller
    display_name: str  # as the central holds it (staff only)
    steps: list[StepResult] = field(default_factory=list)

    @property
    def state(self) -> str:
        order = (FAIL, LIMIT, DIFFERS, OK)
        return next((s for s in order if any(x.state == s for x in self.steps)), OK)


@dataclass
class Results:
    passengers: list[PassengerResult]
    summary: dict[str, Any]
    staff: list[dict]
    gate_changes: list[dict]
    thresholds: dict[str, float]
    failures: list[str]  # why the demo exits non-zero (empty: it does not)


def _ts(row) -> dt.datetime:
    from gate.sqlite_store import parse_utc_iso

    return parse_utc_iso(row["ts"])


def central_records(site: Site, places: list[str], local_counts: dict[str, int], timeout: float = 20.0):
    """Every place's records as the central holds them, once it holds all of them (bounded wait)."""
    from sync.central import Central

    database = site.database
    deadline = time.monotonic() + timeout
    while True:
        central = Central(database, template_key=site.template_key)
        try:
            counts = {p: central.audit.count(p) for p in places}
            if all(counts[p] >= local_counts.get(p, 0) for p in places) or time.monotonic() > deadline:
                rows = {p: [{"seq": r.seq, "ts": r.ts, **r.body} for r in central.audit.rows(p)] for p in places}
                chains = {p: central.audit.verify(p) for p in places}
                return rows, chains, counts
        finally:
            central.close()
        time.sleep(0.5)


def local_audit(site: Site) -> tuple[dict[str, int], dict[str, Any]]:
    """Each place's own log: how many records, and whether its chain verifies."""
    from gate.audit import AuditLog

    states = {KIOSK: site.kiosk_state, **{gid: lane.state for gid, lane in site.lanes.items()}}
    counts, chains = {}, {}
    for place, state in states.items():
        with AuditLog(state, read_only=True) as log:
            counts[place], chains[place] = log.last_seq(), log.verify()
    return counts, chains


def _window(rows: list[dict], step: Step) -> list[dict]:
    end = step.end or step.start
    return [r for r in rows if step.start <= _ts(r) <= end + dt.timedelta(seconds=0.2)]


def _kiosk_step(step: Step, rows: list[dict], threshold: float, since) -> StepResult:
    from gate.event_text import label

    t = step.traveller
    mine = [r for r in _window(rows, step) if r.get("subject_id") == t.subject_id or r["event"] == "kiosk_pass_refused"]
    referred = next((r for r in mine if r["event"] == "kiosk_referred"), None)
    approved = next((r for r in mine if r["event"] == "kiosk_agent_approved"), None)
    sent = next((r for r in mine if r["event"] == "kiosk_enrol_sent"), None)
    attempt = next((r for r in reversed(mine) if r["event"] == "kiosk_attempt"), None)
    refused = next((r for r in mine if r["event"] == "kiosk_pass_refused"), None)
    enrolled = attempt is not None and attempt.get("outcome") == "enrolled"
    figures = []
    src = referred or sent or {}
    if src.get("verify_median") is not None:
        side = "≥" if src["verify_median"] >= threshold else "<"
        figures.append(f"1:1 {src['verify_median']:.3f} {side} {threshold:.3f}")
    if src.get("pad_live_mean") is not None:
        figures.append(f"live {src['pad_live_mean']:.2f}")
    if sent and sent.get("scopes"):
        figures.append("enrolled for " + ", ".join(sent["scopes"]))
    if referred:
        got = f"referred ({label(referred.get('reason'))})"
        if approved:
            got += f", approved by {approved['operator'].split(' (')[0]}"
            figures.append(f"agent's reason: {approved['reason']!r}")
        got += ", enrolled" if enrolled else f", not enrolled ({attempt.get('outcome') if attempt else 'open'})"
    elif enrolled:
        got = "enrolled"
    elif refused:
        got = f"boarding pass refused: {refused.get('reason')}"
    else:
        got = f"not enrolled ({attempt.get('outcome') if attempt else 'no outcome recorded'})"
    if step.expected == "referred":
        state = OK if referred and approved and enrolled else FAIL
        expected = "referred to the agent, approved, enrolled"
    else:
        state = OK if enrolled and not referred else DIFFERS if enrolled else FAIL
        expected = "enrolled"
    took = (_ts(attempt) - step.start).total_seconds() if attempt else None
    return StepResult("kiosk", step.place, (step.start - since).total_seconds(), took, expected, got, state,
                      "; ".join(figures), step.note, "referred" if referred else "enrolled" if enrolled else "failed")


def _lane_step(step: Step, rows: list[dict], threshold: float, since) -> StepResult:
    from gate.event_text import label, unserved_text

    t = step.traveller
    at = (step.start - since).total_seconds()
    if step.got == "skipped":
        return StepResult(step.kind, step.place, at, None, "let through", "not attempted", FAIL, step.note, "",
                          "skipped")
    mine = _window(rows, step)
    decision = next((r for r in mine if r["event"] == "decision"), None)
    retries = [r for r in mine if r["event"] == "attempt_failed"]
    passed = any(r["event"] == "passage_complete" for r in mine)
    d = decision["decision"] if decision else {}
    outcome, reason, score = d.get("outcome"), d.get("reason"), d.get("score")
    pad = d.get("pad")  # the PAD figures, or a word ("not provisioned")
    live = pad.get("live") if isinstance(pad, dict) else None
    figures = []
    if score is not None:
        figures.append(("score " if d.get("subject_id") else "best score ") + f"{score:.3f}"
                       + (f" (threshold {threshold:.3f})" if outcome != "allow" else ""))
    if live is not None:
        figures.append(f"live {live:.2f}")
    if retries:
        figures.append(f"{len(retries)} retry: " + ", ".join(label(r["decision"]["reason"]) for r in retries))
    if decision is None:
        lost = next((r for r in mine if r["event"] == "face_lost" and r.get("unserved")), None)
        got = "no decision" + (f": {unserved_text(lost['unserved'])}" if lost else "")
    elif outcome == "allow":
        got = "let through" + ("" if passed else " (no passage recorded)")
    else:
        got = f"{'referred' if outcome == 'refer' else 'refused'}: {label(reason)}"
    expected = "let through" if step.expected == "pass" else "refused"
    if step.expected == "pass":
        if outcome == "allow" and d.get("subject_id") == t.subject_id and passed:
            state = OK
        elif outcome == "allow":
            state = FAIL
            figures.append(f"FALSE MATCH: let through as {d.get('subject_id')}")
        elif reason == "no_match" and score is not None and score < threshold:
            state = LIMIT
            figures.append(f"model limit: best score {score:.3f} below the threshold {threshold:.3f}")
        elif reason == "presentation_attack_suspected" and live is not None:
            state = LIMIT
            figures.append(f"model limit: the liveness model doubted a genuine face (live {live:.2f}; "
                           "stated BPCER 8 %)")
        else:
            state = FAIL
    else:
        state = FAIL if outcome == "allow" or decision is None else OK
        if outcome == "allow":
            figures.append("FALSE OPEN")
    took = d.get("elapsed_s")
    return StepResult(step.kind, step.place, at, took, expected, got, state, "; ".join(figures), step.note,
                      outcome or "undecided")


def _false_opens(rows: dict[str, list[dict]], steps: list[Step], places: list[str]) -> list[str]:
    """Openings for someone who should not pass there: inside a visit that expected a refusal,
    for another subject than the visitor, or outside every visit."""
    found = []
    for place in places:
        visits = [s for s in steps if s.place == place]
        for r in rows.get(place, []):
            if r.get("event") != "open" or (r.get("opening") or {}).get("operator_id") is not None:
                continue
            sid = (r.get("opening") or {}).get("subject_id")
            visit = next((s for s in visits if s.start <= _ts(r) <= (s.end or s.start)), None)
            if visit is None or visit.expected != "pass" or visit.traveller.subject_id != sid:
                found.append(f"{place}: opened for {sid} at {r['ts']}")
    return found


def collect(site: Site, cast: Cast, journey: Journey, wall_s: float) -> Results:
    from gate.event_text import label

    places = [KIOSK, *site.lanes]
    local_counts, local_chains = local_audit(site)
    rows, chains, counts = central_records(site, places, local_counts)
    names = _display_names(site, cast)
    thresholds = {"kiosk": cast.kiosk_threshold, "lane": site.lane_threshold}
    passengers = []
    for t in cast.travellers:
        p = PassengerResult(t, names.get(t.subject_id or "", t.name))
        for step in sorted((s for s in journey.steps if s.traveller is t), key=lambda s: s.start):
            if step.kind == "kiosk":
                p.steps.append(_kiosk_step(step, rows[KIOSK], cast.kiosk_threshold, journey.origin))
            else:
                p.steps.append(_lane_step(step, rows.get(step.place, []), site.lane_threshold, journey.origin))
        passengers.append(p)
    false_opens = _false_opens(rows, journey.steps, list(site.lanes))
    approvals = [r for r in rows[KIOSK] if r["event"] == "kiosk_agent_approved"]
    staff = [{"at_s": journey.since(_ts(r)), "who": r["operator"], "where": KIOSK,
              "what": f"approved the referral ({label(r.get('referral'))}) of "
                      f"{names.get(r.get('subject_id'), r.get('subject_id'))}",
              "why": r.get("reason"), "evidence": f"audit record #{r['seq']} of {KIOSK}, held by the central"}
             for r in approvals]
    staff += [{"at_s": journey.since(c["at"]), "who": "ops", "where": "central",
               "what": f"gate change: {c['flight']} {c['from']} → {c['to']}", "why": "gate change",
               "evidence": "gate-central assign --gate " + c["to"] + " --flight " + c["label"]}
              for c in journey.gate_changes]
    steps = [s for p in passengers for s in p.steps]
    should_pass = [p for p in passengers if p.traveller.role != "stranger"]
    boarded = [p for p in should_pass if any(s.kind == "boarding" and s.state == OK and s.expected == "let through"
                                             for s in p.steps)]
    decided = [s.took_s for s in steps if s.kind != "kiosk" and s.outcome == "allow" and s.took_s is not None]
    enrol_s = [s.took_s for s in steps if s.kind == "kiosk" and s.took_s is not None]
    chains_ok = all(chains[p].ok for p in places) and all(local_chains[p].ok for p in places)
    complete = all(counts[p] >= local_counts[p] for p in places)
    broken = [p for p in places if not (chains[p].ok and local_chains[p].ok and counts[p] >= local_counts[p])]
    summary: dict[str, Any] = {
        "travellers": f"{len(cast.travellers)} ({sum(t.role != 'stranger' for t in cast.travellers)} checking in, "
                      f"{sum(t.role == 'stranger' for t in cast.travellers)} never enrolled)",
        "steps as scripted": f"{sum(s.state == OK for s in steps)} of {len(steps)}",
        "travellers who boarded their flight": f"{len(boarded)} of {len(should_pass)}",
        "model limits (genuine traveller refused, score stated)": sum(s.state == LIMIT for s in steps),
        "false opens": len(false_opens),
        "kiosk referrals approved by the agent (audited)": len(approvals),
        "gate changes": "; ".join(f"{c['flight']} {c['from']} → {c['to']}, gates following after {c['took_s']:.1f} s"
                                  for c in journey.gate_changes) or "none",
        "kiosk: stepping up → enrolment acknowledged, median": f"{median(enrol_s):.1f} s" if enrol_s else "n/a",
        "lanes: first face → acceptance, median": f"{median(decided) * 1000:.0f} ms" if decided else "n/a",
        "audit records at the places / held by the central": f"{sum(local_counts.values())} / {sum(counts.values())}",
        "audit chains (each place, and the central's copies)": "ok" if not broken else "NOT OK: " + ", ".join(broken),
        "demo wall time": f"{wall_s:.0f} s",
    }
    failures = [f"{p.display_name}: {s.kind} at {s.place}: expected {s.expected}, got {s.got}"
                for p in passengers for s in p.steps if s.state == FAIL]
    failures += [f"false open: {x}" for x in false_opens]
    if not (chains_ok and complete):
        failures.append("audit chains: " + summary["audit chains (each place, and the central's copies)"])
    failures += [f"gate change {c['flight']} did not take effect" for c in journey.gate_changes
                 if not (c["ok"] and c["followed"])]
    changes = [{**c, "at_s": journey.since(c["at"])} for c in journey.gate_changes]
    return Results(passengers, summary, staff, changes, thresholds, failures)


def _display_names(site: Site, cast: Cast) -> dict[str, str]:
    """Display names as the central keeps them (for staff; gates never receive them)."""
    from sync.central import Central

    central = Central(site.database, template_key=site.template_key)
    try:
        out = {}
        for t in cast.travellers:
            standing = central.subject_standing(t.subject_id) if t.subject_id else None
            if standing and standing[2]:
                out[t.subject_id or ""] = standing[2]
        return out
    finally:
        central.close()


def print_results(r: Results) -> None:
    print("\n=== each passenger's journey ===")
    for p in r.passengers:
        t = p.traveller
        flight = t.flight.code if t.flight else "no flight"
        print(f"  {STATE_MARKS[p.state]:3s} {p.display_name} ({flight}): {STORIES[t.role]}")
        for s in p.steps:
            took = f", {s.took_s:.1f} s" if s.took_s is not None else ""
            print(f"        {STATE_MARKS[s.state]:3s} {s.at_s:6.1f}s {KIND_LABELS[s.kind]:13s} {s.place:9s} "
                  f"{s.got}{took}" + (f" — {s.detail}" if s.detail else "") + (f" [{s.note}]" if s.note else ""))
    print("\n=== summary ===")
    for k, v in r.summary.items():
        print(f"  {k:55s} {v}")
    if r.failures:
        print("\nNOT AS EXPECTED:\n" + "\n".join(f"  - {f}" for f in r.failures))
