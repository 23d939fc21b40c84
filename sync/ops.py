"""Text views for operators (gate-central list, gate-ops gates) and the time syntax they type.

Kept out of the CLIs so the same tables can be produced from Python, e.g. in a report job.
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from sync.central import GateStatus, SubjectInfo
from sync.scopes import scope_label


def parse_time(text: str) -> dt.datetime:
    """ISO-8601 date or date-time; 'Z' or an offset is honoured, a bare time is taken as UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO-8601 time such as 2026-11-23 or 2026-11-23T13:00:00Z") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _age(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "never"
    seconds = int((now - when).total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def gates_table(statuses: Sequence[GateStatus], now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    rows = [[g.gate_id, "SILENT" if g.silent else (g.status or "?"), _age(g.last_seen, now),
             g.software_version or "-",
             ", ".join(f"{k} {v}" for k, v in sorted(g.model_versions.items())) or "-",
             "-" if g.watchlist_seq is None else str(g.watchlist_seq),
             "-" if g.queue_depth is None else str(g.queue_depth),
             g.last_decision_at or "-", str(g.audit_max_seq), g.node or "-",
             " ".join(scope_label(s) for s in g.scopes), g.audit_alarm or "-"]
            for g in statuses]
    return _table(["gate", "status", "last seen", "software", "models", "watchlist seq", "queue", "last decision",
                   "audit seq", "node", "scopes", "audit alarm"], rows)


def subjects_table(subjects: Sequence[SubjectInfo]) -> str:
    def when(v: dt.datetime | None) -> str:
        return "-" if v is None else v.strftime("%Y-%m-%dT%H:%M:%SZ")

    rows = [[s.subject_id, s.status, s.list_type, s.model_id, f"{s.n_templates}x{s.dim}",
             when(s.valid_from), when(s.valid_until), " ".join(scope_label(x) for x in s.scopes) or "-"]
            for s in subjects]
    return _table(["subject", "status", "list", "model", "templates", "valid from", "valid until", "scopes"], rows)
