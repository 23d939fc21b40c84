"""Audit records and codes as ground staff read them: one line per event, words not code names.

`gatectl events` prints these by default (`--json` keeps the raw records) and the demo and
its report use the same labels, so staff see one vocabulary everywhere. Mode names are
printed as the gatectl commands spell them (`out-of-service`, not `out_of_service`).
"""
from __future__ import annotations

from typing import Any, Mapping

LABELS = {
    # decision reasons
    "match": "match", "no_match": "no match", "ambiguous_margin": "look-alike (margin too small)",
    "low_quality": "poor image quality", "timeout": "no decision in time", "tailgating": "tailgating",
    "deny_list": "deny-list hit", "token_mismatch": "face does not match the document",
    "token_unknown": "document of nobody enrolled", "presentation_attack_suspected": "liveness doubt (photo/screen?)",
    "anti_passback": "already passed",
    # why an attempt ended without a decision
    "too_few_quality_frames": "too few good frames", "waiting_for_liveness": "left while liveness was checked",
    "outside_capture_zone": "stood outside the capture zone", "too_few_frames_to_refuse": "left before a refusal",
    "left_after_prompt": "left while responding to a prompt",
    # quality reasons
    "low_detector_score": "face unclear", "face_too_small": "too far away", "blurred": "blurred",
    "pose_yaw": "head turned", "pose_pitch": "head tilted", "too_dark": "too dark", "too_bright": "too bright",
    "exposure_clipped": "over-exposed",
    # events
    "prompt": "passenger prompted",
    "lane_started": "lane started", "face_acquired": "face acquired", "face_lost": "face lost without a decision",
    "track_replaced": "another person stepped in", "result_shown": "result shown", "open": "gate opened",
    "open_timeout": "nobody passed before the timeout", "passage_complete": "passage complete",
    "manual_action": "staff action", "door_forced": "door forced", "tamper": "tamper switch",
    "fire_alarm_on": "fire alarm ON", "fire_alarm_off": "fire alarm off", "device_fault": "device fault",
    "device_restored": "device restored", "audit_failure": "audit log cannot be written",
    "token_read": "document read", "token_unknown_read": "unknown document", "token_expired": "document expired",
    "attempt_failed": "attempt failed", "daemon_stopped": "lane stopped", "unexpected_passage": "unexpected passage",
    # why the enrolment station referred a traveller to the counter agent (kiosk.session)
    "verify_failed": "face does not match the card photo", "verify_ambiguous": "1:1 just below the threshold",
    "pad_doubt": "liveness doubt", "pad_unavailable": "no liveness check available",
    "name_mismatch": "name differs from the boarding pass", "capture_timeout": "no good photo in time",
}


def label(code: Any) -> str:
    """The staff wording of a code (unknown codes are shown with spaces, never dropped)."""
    text = str(code)
    return LABELS.get(text, text.replace("_", " "))


def mode_name(mode: Any) -> str:
    return str(mode).replace("_", "-")


def _score(x: Any) -> str:
    return "" if x is None else f"{float(x):.3f}"


def decision_text(d: Mapping[str, Any]) -> str:
    """e.g. 'ALLOW match Aaron_Sorkin (score 0.961)' or 'DENY no match (best score 0.812)'."""
    parts = [str(d.get("outcome", "?")).upper(), label(d.get("reason", "?"))]
    if d.get("subject_id"):
        parts.append(str(d["subject_id"]))
    figures = []
    if d.get("score") is not None:
        figures.append(("score " if d.get("subject_id") else "best score ") + _score(d["score"]))
    pad = d.get("pad")
    if isinstance(pad, Mapping) and pad.get("live") is not None:
        figures.append(f"live {pad['live']:.2f}")
    reasons = (d.get("details") or {}).get("quality_reasons")
    if reasons:
        figures.append(", ".join(label(r) for r in reasons))
    if (d.get("details") or {}).get("passed_s_ago") is not None:
        figures.append(f"passed {d['details']['passed_s_ago']:.0f} s ago")
    return " ".join(parts) + (f" ({'; '.join(figures)})" if figures else "")


def unserved_text(u: Mapping[str, Any]) -> str:
    text = label(u.get("why", "?"))
    figures = [f"{u.get('quality_frames', 0)} of {u.get('needed', '?')} good frames"]
    if u.get("quality_reasons"):
        figures.append(", ".join(label(r) for r in u["quality_reasons"]))
    if u.get("best_score") is not None:
        figures.append(f"best score {_score(u['best_score'])}")
    return f"{text} ({'; '.join(figures)})"


def event_line(e: Mapping[str, Any]) -> str:
    """One line for one audit record (as gatectl's events command returns it: seq, ts, body)."""
    ts = str(e.get("ts", ""))
    clock = ts[11:19] if len(ts) >= 19 else ts
    head = f"{clock} #{e.get('seq', '?')} {e.get('lane', '')}".rstrip()
    event = str(e.get("event", "?"))
    if event == "decision":
        what = "decision: " + decision_text(e.get("decision", {}))
    elif event == "attempt_failed":
        d = e.get("decision", {})
        what = (f"attempt {e.get('attempt')}/{e.get('of')} failed: {label(d.get('reason'))}"
                + (f" (best score {_score(d.get('score'))})" if d.get("score") is not None else "")
                + f"; passenger told {e.get('prompt')!r}")
    elif event == "prompt":
        why = label(e.get("why", "?"))
        if e.get("quality_reasons"):
            why += f": {', '.join(label(r) for r in e['quality_reasons'])}"
        elif e.get("face_px") is not None:
            why += f" (face {e['face_px']:.0f} px, zone from {e.get('capture_min_face_px', 0):.0f} px)"
        what = f"passenger told {e.get('prompt')!r} ({why})"
    elif event == "face_lost" and e.get("unserved"):
        what = f"{label(event)}: {unserved_text(e['unserved'])}"
    elif event == "manual_action":
        what = f"staff {label(e.get('action', '?'))} by {e.get('operator_id')}: {e.get('reason')!r}"
        if e.get("refused"):
            what += f" REFUSED: {e['refused']}"
    elif event in ("device_fault", "audit_failure", "device_restored"):
        what = f"{label(event)}: {e.get('device', '')} {e.get('detail', '')}".rstrip()
    else:
        what = label(event)
        opening = e.get("opening") or {}
        if opening.get("subject_id"):
            what += f" for {opening['subject_id']}"
    frm, to = e.get("from"), e.get("to")
    if frm is not None and to is not None and frm != to:
        what += f"  [{mode_name(frm)} → {mode_name(to)}]"
    return f"{head} {what}"
