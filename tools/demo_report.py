"""The demo's HTML report: each passenger's journey (kiosk, security, boarding) with times and the
recorded reason for every refusal, a timeline of who stood where, the scores against the
operating points, the staff actions with their audit evidence, and the summary.

One self-contained file (plots are PNGs embedded as data: URLs) so it can be mailed or
archived without its folder. Everything in it comes from tools/demo_results.py, which reads
the central's copy of the audit logs.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from tools.demo_cast import STORIES, Cast
from tools.demo_results import DIFFERS, FAIL, KIND_LABELS, LIMIT, OK, PassengerResult, Results, StepResult

COLOURS = {"allow": "#2e7d32", "enrolled": "#2e7d32", "referred": "#ef6c00", "deny": "#c62828",
           "refer": "#ef6c00", "undecided": "#757575", "skipped": "#bdbdbd", "failed": "#c62828"}
MARK_CLASS = {OK: ("✔", "ok"), DIFFERS: ("≈", "differs"), LIMIT: ("✘", "limit"), FAIL: ("✘", "miss")}
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:1.5em auto;
     color:#222;line-height:1.35;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:2px solid #eee;padding-bottom:.2em}
p.lead{color:#444;margin-top:.2em}
table{border-collapse:collapse;width:100%}td,th{padding:6px 8px;border-bottom:1px solid #e5e5e5;text-align:left;
     vertical-align:top}th{background:#fafafa;font-weight:600}
table.journey td{width:25%}table.journey td.who{width:22%}
.step{margin-bottom:.45em}.step:last-child{margin-bottom:0}
.got{font-weight:600}.where{color:#555;font-size:.9em}.detail{color:#666;font-size:.85em}
.note{color:#1565c0;font-size:.85em}
.ok{color:#2e7d32}.differs{color:#ef6c00}.limit{color:#8e24aa}.miss{color:#c62828}
.verdict{padding:.6em .9em;border-radius:6px;margin:1em 0;font-weight:600}
.verdict.good{background:#e8f5e9;color:#1b5e20}.verdict.bad{background:#ffebee;color:#b71c1c}
.name{font-weight:600}.story{color:#555;font-size:.9em}img{max-width:100%}
table.kv td:first-child{width:45%;color:#444}
table.staff td:first-child{white-space:nowrap}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _e(x) -> str:
    return html.escape(str(x))


def _step_html(s: StepResult) -> str:
    mark, cls = MARK_CLASS[s.state]
    took = f" · {s.took_s:.1f} s" if s.took_s is not None else ""
    parts = [f'<div class="step"><span class="{cls}">{mark}</span> <span class="got">{_e(s.got)}</span>',
             f'<div class="where">{_e(s.place)} at {s.at_s:.1f} s{took}</div>']
    if s.note:
        parts.append(f'<div class="note">{_e(s.note)}</div>')
    if s.detail:
        parts.append(f'<div class="detail">{_e(s.detail)}</div>')
    if s.state != OK:
        parts.append(f'<div class="detail">expected: {_e(s.expected)}</div>')
    return "".join(parts) + "</div>"


def _journey_table(passengers: list[PassengerResult]) -> str:
    head = "<tr><th>passenger</th>" + "".join(f"<th>{_e(KIND_LABELS[k])}</th>"
                                              for k in ("kiosk", "security", "boarding")) + "</tr>"
    rows = []
    for p in passengers:
        t = p.traveller
        mark, cls = MARK_CLASS[p.state]
        flight = f"{t.flight.code} to {t.flight.to}" if t.flight else "no flight"
        who = (f'<td class="who"><span class="{cls}">{mark}</span> <span class="name">{_e(p.display_name)}</span>'
               f'<div class="where">{_e(flight)}{" · " + _e(t.subject_id) if t.subject_id else ""}</div>'
               f'<div class="story">{_e(STORIES[t.role])}</div></td>')
        cells = []
        for kind in ("kiosk", "security", "boarding"):
            steps = [s for s in p.steps if s.kind == kind]
            cells.append("<td>" + ("".join(_step_html(s) for s in steps) or '<span class="detail">—</span>') + "</td>")
        rows.append("<tr>" + who + "".join(cells) + "</tr>")
    return f'<table class="journey">{head}{"".join(rows)}</table>'


def _timeline_figure(results: Results) -> str:
    import matplotlib.pyplot as plt

    places: list[str] = []
    for p in results.passengers:
        for s in p.steps:
            if s.place and s.place not in places:
                places.append(s.place)
    order = sorted(places, key=lambda x: (0 if "K" in x.split("-")[-1] else 1 if "SEC" in x else 2, x))
    row = {pl: len(order) - 1 - i for i, pl in enumerate(order)}
    fig, ax = plt.subplots(figsize=(11.5, 1.2 + 0.85 * len(order)))
    labels: list[tuple[int, float, str]] = []
    for p in results.passengers:
        for s in p.steps:
            if not s.place:
                continue
            width = max(0.6, (s.took_s or 0.0) + 0.6) if s.kind != "kiosk" else max(0.6, s.took_s or 1.0)
            y = row[s.place]
            ax.barh(y, width, left=s.at_s, height=0.5, color=COLOURS.get(s.outcome, "#757575"),
                    edgecolor="white")
            labels.append((y, s.at_s + width / 2, p.traveller.first_name))
    last: dict[int, tuple[float, int]] = {}
    for y, x, name in sorted(labels, key=lambda v: (v[0], v[1])):
        prev_x, prev_side = last.get(y, (-1e9, -1))
        side = -prev_side if x - prev_x < 2.5 else 1  # close neighbours alternate above and below the bar
        last[y] = (x, side)
        ax.annotate(name, (x, y + 0.3 * side), ha="center", va="bottom" if side > 0 else "top", fontsize=8)
    for c in results.gate_changes:
        x = c["at_s"]
        ax.axvline(x, color="#1565c0", ls="--", lw=1)
        ax.annotate(f"gate change: {c['flight']} → {c['to']}", (x, len(order) - 0.45), color="#1565c0",
                    fontsize=8, ha="left", xytext=(3, 0), textcoords="offset points")
    ax.set_yticks(list(row.values()), list(row.keys()))
    ax.set_ylim(-0.75, len(order) - 0.2)
    ax.set_xlabel("seconds since the first traveller stepped up")
    ax.grid(True, axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    legend = [("let through / enrolled", "allow"), ("referred", "refer"), ("refused", "deny"),
              ("no decision", "undecided")]
    ax.legend(handles=[Patch(color=COLOURS[k], label=lab) for lab, k in legend], fontsize=8, loc="lower right",
              ncol=4, framealpha=0.9)
    ax.set_title("Who stood where, and what the place decided")
    return _png(fig)


def _scores_figure(results: Results) -> str | None:
    """One row per decision with a score: where it fell against its place's threshold."""
    import re

    import matplotlib.pyplot as plt

    kiosk: list[tuple[str, float, str]] = []
    lane: list[tuple[str, float, str]] = []
    for p in results.passengers:
        for s in p.steps:
            m = re.search(r"1:1 ([0-9.]+)" if s.kind == "kiosk" else r"score ([0-9.]+)", s.detail)
            if m:
                place = s.place.removeprefix("SGN-")
                (kiosk if s.kind == "kiosk" else lane).append((f"{p.traveller.first_name} · {place}",
                                                               float(m.group(1)), s.outcome))
    if not kiosk and not lane:
        return None
    rows = max(len(kiosk), len(lane), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 0.9 + 0.32 * rows))
    for ax, pts, thr, title in ((axes[0], kiosk, results.thresholds["kiosk"], "kiosk: live face vs card photo (1:1)"),
                                (axes[1], lane, results.thresholds["lane"], "lanes: best match in the lane's list")):
        for y, (_, score, outcome) in enumerate(reversed(pts)):
            ax.scatter(score, y, color=COLOURS.get(outcome, "#757575"), s=36, zorder=3)
        ax.set_yticks(range(len(pts)), [name for name, _, _ in reversed(pts)], fontsize=8)
        ax.axvline(thr, color="k", ls="--", lw=1)
        ax.annotate(f"threshold {thr:.3f}", (thr, -0.45), fontsize=8, xytext=(-3, 0),
                    textcoords="offset points", ha="right", va="bottom")
        ax.set_xlim(min([x for _, x, _ in pts] + [thr]) - 0.02, 1.005)
        ax.set_ylim(-0.6, max(len(pts), 1) - 0.4)
        ax.set_xlabel("cosine similarity", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _kv(d: dict) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in d.items())
    return f'<table class="kv">{rows}</table>'


def _staff_table(staff: list[dict]) -> str:
    if not staff:
        return "<p>No staff action was needed.</p>"
    head = "<tr><th>at</th><th>who</th><th>where</th><th>what</th><th>reason given</th><th>evidence</th></tr>"
    rows = "".join(f"<tr><td>{s['at_s']:.1f} s</td><td>{_e(s['who'])}</td><td>{_e(s['where'])}</td>"
                   f"<td>{_e(s['what'])}</td><td>{_e(s['why'])}</td><td>{_e(s['evidence'])}</td></tr>" for s in staff)
    return f'<table class="staff">{head}{rows}</table>'


def write_report(path: Path, results: Results, cast: Cast) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    if results.failures:
        verdict = ('<div class="verdict bad">Not as expected:<ul>' + "".join(f"<li>{_e(f)}</li>"
                                                                            for f in results.failures) + "</ul></div>")
    else:
        limits = results.summary.get("model limits (genuine traveller refused, score stated)", 0)
        verdict = ('<div class="verdict good">Every traveller who should pass did'
                   + (f", except {limits} stated model limit(s)" if limits else "")
                   + "; nobody else got through.</div>")
    scores = _scores_figure(results)
    flights = ", ".join(f"{f.code} SGN→{f.to} (first at {f.first_gate})" for f in cast.flights)
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgegate airport journey</title>
<style>{CSS}</style></head><body>
<h1>edgegate airport journey — SGN, {cast.day.isoformat()}</h1>
<p class="lead">Enrol once at the check-in kiosk, then pass the security lane (checkpoint:SGN) and the boarding
gate of the flight (flight:&lt;flight&gt;-&lt;date&gt;). Real daemons on one machine: gate-central on SQLite, the
gate-kiosk enrolment station, three gated lanes with simulated turnstiles, CURVE over loopback, the default models
on {_e(cast.source)}. Flights: {_e(flights)}. Everything below is read from the central's copy of each place's
audit log.</p>
{verdict}
<h2>Passengers</h2>
{_journey_table(results.passengers)}
<p class="detail">✔ as scripted · ≈ another outcome the journey survives (an extra referral the agent approved) ·
✘ not as expected. Times are seconds since the first traveller stepped up; the figure after them is, at the kiosk,
stepping up → enrolment acknowledged by the central, at a lane, first face → decision.</p>
<h2>Timeline</h2>
<img alt="timeline" src="data:image/png;base64,{_timeline_figure(results)}">
<h2>Scores against the operating points</h2>
{f'<img alt="scores" src="data:image/png;base64,{scores}">' if scores else '<p>No scores recorded.</p>'}
<p class="detail">Kiosk: median cosine of the live frames against the card photo; its threshold is the 1:1 operating
point at FMR 1e-4, lanes' at FMR 1e-3 (config/calibration-lfw-dev-default.json, from gate-eval calibrate on the LFW dev
folds).</p>
<h2>Staff and operations</h2>
{_staff_table(results.staff)}
<h2>Summary</h2>
{_kv(results.summary)}
</body></html>"""
    path = Path(path)
    path.write_text(body, encoding="utf-8")
    return path
