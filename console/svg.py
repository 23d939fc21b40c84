"""The lane page's plot, drawn on the server as inline SVG: decisions per time bucket, stacked by
outcome and reason.

Why server-side SVG: no script library, no front-end build, nothing fetched by the browser, and
the page's Content-Security-Policy can forbid inline scripts and styles (colours are SVG
presentation attributes, which CSP does not govern). Each bar segment carries a <title>, so a
pointer shows its count without JavaScript.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from html import escape
from typing import Sequence

from gate.event_text import label

# Shades per outcome, darkest for the most frequent reason: allow green, deny red, refer amber.
PALETTE = {
    "allow": ("#1b7a3a", "#43a565", "#86cf9b", "#bfe8c9"),
    "deny": ("#b3261e", "#d9534f", "#ec8f8b", "#f6c3c0"),
    "refer": ("#b26a00", "#e0951f", "#f2bd66", "#f9dcaa"),
}
OTHER = ("#555555", "#888888", "#bbbbbb")


def series_colours(series: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    used: Counter = Counter()
    out = {}
    for outcome, reason in series:
        shades = PALETTE.get(outcome, OTHER)
        out[(outcome, reason)] = shades[min(used[outcome], len(shades) - 1)]
        used[outcome] += 1
    return out


def _nice_step(top: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if top / step <= 5:
            return step
    return max(1, top // 5)


def decisions_plot(buckets: Sequence[Counter], series: Sequence[tuple[str, str]], since: dt.datetime,
                   bucket_s: int, width: int = 760, height: int = 260) -> str:
    """An <svg> element (text) of stacked bars; empty buckets are gaps, not zero-height bars."""
    left, right, top, bottom = 44, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(buckets))
    peak = max((sum(b.values()) for b in buckets), default=0)
    step = _nice_step(max(peak, 1))
    y_max = max(step, -(-max(peak, 1) // step) * step)
    colours = series_colours(series)
    bar_w = plot_w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" '
             f'preserveAspectRatio="xMinYMin meet" role="img" '
             f'aria-label="decisions per {bucket_s // 60} minutes, stacked by outcome and reason">']
    for v in range(0, y_max + 1, step):  # grid and y labels
        y = top + plot_h - v / y_max * plot_h
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#dddddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#444">{v}</text>')
    label_every = max(1, n // 6)
    for i, b in enumerate(buckets):
        x = left + i * bar_w
        start = since + dt.timedelta(seconds=i * bucket_s)
        if i % label_every == 0:
            fmt = "%H:%M" if bucket_s < 86400 / 8 else "%d %b %H:%M"
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11" '
                         f'fill="#444">{start.strftime(fmt)}</text>')
        y = top + plot_h
        for key in series:
            count = b.get(key, 0)
            if not count:
                continue
            h = count / y_max * plot_h
            y -= h
            tip = f"{start:%H:%M} UTC: {count} × {key[0]} · {label(key[1])}"
            parts.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}" '
                         f'fill="{colours[key]}" data-series="{escape(key[0])}:{escape(key[1])}">'
                         f'<title>{escape(tip)}</title></rect>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#444"/>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end" font-size="11" fill="#444">'
                 f'UTC, {bucket_s // 60}-minute bars</text>')
    if peak == 0:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" font-size="14" '
                     'fill="#777">no decisions in this window</text>')
    parts.append("</svg>")
    return "".join(parts)
