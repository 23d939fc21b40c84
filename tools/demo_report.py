"""The demo's HTML report: per-passenger table, score distributions, DET curve, stage latencies, timeline.

Plots are PNGs embedded in one self-contained HTML file, so the report can be mailed or
archived without its folder.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def det_points(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) over every threshold between the observed scores."""
    thr = np.unique(np.concatenate([genuine, impostor]))
    far = np.array([(impostor >= t).mean() for t in thr])
    frr = np.array([(genuine < t).mean() for t in thr])
    return far, frr


def measurable(far: np.ndarray, frr: np.ndarray, n_genuine: int, n_impostor: int) -> np.ndarray:
    """The DET points the pair counts can support: with n impostor pairs the smallest FAR seen
    is 1/n, and a FAR of 0 only says "below 1/n". Points at 0 are left out, not drawn at an
    invented floor."""
    return (far >= 1.0 / max(1, n_impostor)) & (frr >= 1.0 / max(1, n_genuine))


def _scores_figure(plt, genuine, impostor, threshold):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(min(genuine.min(), impostor.min()), 1.0, 50)
    ax.hist(impostor, bins=bins, alpha=0.6, label=f"different people ({len(impostor)} pairs)", color="tab:red")
    ax.hist(genuine, bins=bins, alpha=0.6, label=f"same person ({len(genuine)} pairs)", color="tab:green")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"lane threshold {threshold:.2f}")
    ax.set_xlabel("similarity score (cosine)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    ax.set_title("Same person vs different people (LFW pairs, default models)")
    return _png(fig)


def _det_figure(plt, genuine, impostor):
    far, frr = det_points(genuine, impostor)
    keep = measurable(far, frr, len(genuine), len(impostor))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    lo_far, lo_frr = 1.0 / max(1, len(impostor)), 1.0 / max(1, len(genuine))
    ax.loglog(far[keep], frr[keep], color="tab:blue", marker="o", ms=4, label="measured")
    # thresholds where one rate was 0 in these pairs: the rate is only known to be below 1/n
    edge = ~keep & ((far >= lo_far) | (frr >= lo_frr))
    ax.scatter(np.maximum(far[edge], lo_far), np.maximum(frr[edge], lo_frr), facecolors="none",
               edgecolors="tab:blue", s=18, label="one rate 0 observed (≤ 1/n)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_xlim(lo_far, 1.0)
    ax.set_ylim(lo_frr, 1.0)
    ax.set_xlabel(f"false accept rate (≥ 1/{len(impostor)} measurable)")
    ax.set_ylabel(f"false reject rate (≥ 1/{len(genuine)} measurable)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("DET curve (only what the pairs can show)")
    return _png(fig)


def _latency_figure(plt, stage_ms):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [k for k, v in stage_ms.items() if v]
    ax.boxplot([stage_ms[k] for k in names], tick_labels=names, showfliers=False)
    ax.set_ylabel("ms per frame")
    ax.set_title("Time per vision stage on the lane (frames that led to a decision)")
    return _png(fig)


def _timeline_figure(plt, timeline, outage):
    fig, ax = plt.subplots(figsize=(11, 3.6))
    colours = {"allow": "tab:green", "deny": "tab:red", "refer": "tab:orange", "manual": "tab:purple"}
    last_in_row: dict[int, tuple[float, int]] = {}
    for e in sorted(timeline, key=lambda e: e["t"]):
        ax.scatter(e["t"], e["row"], color=colours.get(e["kind"], "grey"), s=40, zorder=3)
        prev_t, prev_level = last_in_row.get(e["row"], (-1e9, 1))
        level = -prev_level if e["t"] - prev_t < 6.0 else 1  # neighbours alternate above/below the dot
        last_in_row[e["row"]] = (e["t"], level)
        ax.annotate(e["label"].replace("_", " "), (e["t"], e["row"]), fontsize=8, ha="center",
                    va="bottom" if level > 0 else "top", xytext=(0, 7 * level), textcoords="offset points")
    if outage:
        ax.axvspan(outage[0], outage[1], color="grey", alpha=0.2, label="central unreachable")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_yticks([0, 1, 2, 3], ["let through", "refused", "referred / alarm", "staff action"])
    ax.set_ylim(-0.7, 3.7)
    ax.set_xlabel("seconds since the lane started")
    ax.set_title("What the lane decided, when")
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def _passenger_table(per_passenger: list[dict]) -> str:
    def cell(x) -> str:
        return f"<td>{html.escape(str(x))}</td>"

    head = "<tr><th></th><th>passenger</th><th>who</th><th>expected</th><th>got</th><th>score</th><th>why</th></tr>"
    rows = []
    for r in per_passenger:
        mark = "<td class=ok>✔</td>" if r["as_expected"] else "<td class=miss>✘</td>"
        score = "" if r["score"] is None else f"{r['score']:.3f}"
        rows.append("<tr>" + mark + cell(r["passenger"]) + cell(r["kind"]) + cell(r["expected"]) + cell(r["got"])
                    + cell(score) + cell(r["why"]) + "</tr>")
    return f"<table class=pax>{head}{''.join(rows)}</table>"


def write_report(path: Path, summary: dict, genuine: np.ndarray, impostor: np.ndarray, threshold: float,
                 stage_ms: dict[str, list[float]], timeline: list[dict], outage: tuple[float, float] | None,
                 per_passenger: list[dict] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accuracy = ""
    if len(genuine) and len(impostor):
        accuracy = (f'<img src="data:image/png;base64,{_scores_figure(plt, genuine, impostor, threshold)}">'
                    f'<img src="data:image/png;base64,{_det_figure(plt, genuine, impostor)}">')
    else:
        accuracy = "<p>No LFW pairs available (../shared missing): no accuracy plots.</p>"
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgegate demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}img{{max-width:100%}}
.ok{{color:#1a7f37}}.miss{{color:#c62828;font-weight:bold}}
table.pax{{font-size:14px}}</style></head><body>
<h1>edgegate demo report</h1>
<p>One lane, real ONNX models built from PyPI wheels, real face photos, a simulated turnstile and a local
central service over ZeroMQ/CURVE (stopped in the middle of the run).</p>
<h2>Passengers</h2>{_passenger_table(per_passenger or [])}
<h2>Summary</h2><table>{rows}</table>
<h2>Decisions</h2><img src="data:image/png;base64,{_timeline_figure(plt, timeline, outage)}">
<h2>Accuracy</h2>{accuracy}
<h2>Speed</h2><img src="data:image/png;base64,{_latency_figure(plt, stage_ms)}">
</body></html>"""
    path = Path(path)
    path.write_text(body)
    return path
