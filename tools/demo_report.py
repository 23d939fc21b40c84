"""The demo's HTML report: score distributions, DET curve, stage latencies, decision timeline.

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


def write_report(path: Path, summary: dict, genuine: np.ndarray, impostor: np.ndarray, threshold: float,
                 stage_ms: dict[str, list[float]], timeline: list[dict], outage: tuple[float, float] | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(min(genuine.min(), impostor.min()), 1.0, 50)
    ax.hist(impostor, bins=bins, alpha=0.6, label=f"different people ({len(impostor)})", color="tab:red")
    ax.hist(genuine, bins=bins, alpha=0.6, label=f"same person ({len(genuine)})", color="tab:green")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"1:1 threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    ax.set_title("Genuine vs impostor scores (LFW pairs, default models)")
    figs["scores"] = _png(fig)

    far, frr = det_points(genuine, impostor)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    eps = 1e-4
    ax.loglog(np.maximum(far, eps), np.maximum(frr, eps), color="tab:blue")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("false reject rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("DET curve")
    figs["det"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [k for k, v in stage_ms.items() if v]
    ax.boxplot([stage_ms[k] for k in names], tick_labels=names, showfliers=False)
    ax.set_ylabel("ms")
    ax.set_title("Per-stage latency on the lane (decision frames)")
    figs["latency"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    colours = {"allow": "tab:green", "deny": "tab:red", "refer": "tab:orange", "manual": "tab:purple"}
    for e in timeline:
        ax.scatter(e["t"], e["row"], color=colours.get(e["kind"], "grey"), s=40)
        ax.annotate(e["label"], (e["t"], e["row"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if outage:
        ax.axvspan(outage[0], outage[1], color="grey", alpha=0.2, label="central unreachable")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks([0, 1, 2, 3], ["allow", "deny", "refer", "staff"])
    ax.set_xlabel("seconds since the lane started")
    ax.set_title("Decisions timeline")
    figs["timeline"] = _png(fig)

    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgegate demo report</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto}}td{{padding:2px 10px;border-bottom:1px solid #ddd}}
img{{max-width:100%}}</style></head><body>
<h1>edgegate demo report</h1>
<p>One lane, real ONNX models built from PyPI wheels, real face photos, a simulated turnstile and a local
central service over ZeroMQ/CURVE (stopped in the middle of the run).</p>
<h2>Summary</h2><table>{rows}</table>
<h2>Accuracy</h2><img src="data:image/png;base64,{figs['scores']}"><img src="data:image/png;base64,{figs['det']}">
<h2>Speed</h2><img src="data:image/png;base64,{figs['latency']}">
<h2>Decisions</h2><img src="data:image/png;base64,{figs['timeline']}">
</body></html>"""
    path = Path(path)
    path.write_text(body)
    return path
