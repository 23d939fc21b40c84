"""`make demo` at its small size, end to end: the real central, kiosk and three lanes as processes
on loopback, the default models on LFW photos, and the journey checked from the central's
database on its own, not from the demo's verdict. Plus the rules that decide the verdict, on
records written the way the lanes write them."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from gate.sqlite_store import parse_utc_iso
from sync.central import Central
from tests.paths import LFW_IMAGES, SHARED, SHARED_MODELS, require
from tools.demo import run_demo
from tools.demo_cast import AIRPORT_TZ, Traveller, flights_of_the_day
from tools.demo_journey import Step
from tools.demo_results import FAIL, LIMIT, OK, _lane_step


def _rows(central: Central, place: str) -> list[dict]:
    return [{"ts": r.ts, **r.body} for r in central.audit.rows(place)]


def _decisions(rows: list[dict]) -> list[dict]:
    return [{"ts": r["ts"], **r["decision"]} for r in rows if r["event"] == "decision"]


def test_the_small_airport_journey_runs_end_to_end(tmp_path, mtcnn_manifest, dlib_resnet_manifest, capsys):
    require(LFW_IMAGES)
    require(SHARED_MODELS / "2.7_80x80_MiniFASNetV2.onnx")
    out = tmp_path / "demo"
    code = run_demo(Path(mtcnn_manifest.path).parent, SHARED, out, small=True, detector=str(mtcnn_manifest.path),
                    embedder=str(dlib_resnet_manifest.path))
    printed = capsys.readouterr().out
    assert code == 0, printed
    day = dt.datetime.now(AIRPORT_TZ).date().isoformat()
    vn123, vn456 = f"/flight/VN123-{day}/", f"/flight/VN456-{day}/"
    central = Central(out / "central.db", template_key=out / "keys" / "templates.key")
    try:
        subjects = {s.subject_id: s for s in central.list_subjects()}
        assert len(subjects) == 3
        flight_of = {}
        for sid in subjects:
            standing = central.subject_standing(sid)
            assert standing is not None and standing[0] == "allow" and "/checkpoint/SGN/" in standing[1]
            flight_of[sid] = next(s for s in standing[1] if s.startswith("/flight/"))
        assert sorted(flight_of.values()) == [vn123, vn456, vn456]

        kiosk = _rows(central, "SGN-K01")
        approved = [r for r in kiosk if r["event"] == "kiosk_agent_approved"]
        assert len(approved) == 1 and approved[0]["operator"].startswith("agent-07 (uid ") and approved[0]["reason"]
        referred = approved[0]["subject_id"]
        assert any(r["event"] == "kiosk_referred" and r["subject_id"] == referred for r in kiosk)
        assert {r["subject_id"] for r in kiosk if r.get("outcome") == "enrolled"} == set(subjects)

        security = _decisions(_rows(central, "SGN-SEC-1"))
        assert {d["subject_id"] for d in security if d["outcome"] == "allow"} == set(subjects)

        # the wrong gate: a VN456 traveller at VN123's gate is refused, and nobody opens it
        g12 = _rows(central, "SGN-G12")
        assert [(d["outcome"], d["reason"]) for d in _decisions(g12)] == [("deny", "no_match")]
        assert not any(r["event"] == "open" for r in g12)

        # G14 boards VN456, then (after the gate change) VN123's passenger
        g14 = [d for d in _decisions(_rows(central, "SGN-G14")) if d["outcome"] == "allow"]
        assert {d["subject_id"] for d in g14} == set(subjects)
        last = max(g14, key=lambda d: parse_utc_iso(d["ts"]))
        assert flight_of[last["subject_id"]] == vn123
        assert central.assigned_flights("SGN-G14") == (vn123,) and central.assigned_flights("SGN-G12") == ()
        for place in ("SGN-K01", "SGN-SEC-1", "SGN-G12", "SGN-G14"):
            assert central.audit.verify(place).ok, place
        names = [central.subject_standing(sid)[2] for sid in subjects]
    finally:
        central.close()
    report = (out / "report.html").read_text(encoding="utf-8")
    for name in names:
        assert name in report and name in printed
    assert "wrong gate: SGN-G12 boards VN123" in report and "agent-07" in report
    assert "GATE CHANGE: VN123 moves from SGN-G12 to SGN-G14" in printed


def _traveller(role: str = "plain") -> Traveller:
    return Traveller(role=role, name="Rob Lowe", surname="Lowe", given="Rob", live_photo=Path("x.jpg"),
                     doc_photo=Path("y.jpg"), flight=flights_of_the_day()[0], number="079200100", seed=0)


def _visit(expected: str, *records: dict) -> tuple[Step, list[dict]]:
    start = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.timezone.utc)
    step = Step(_traveller(), "security", "SGN-SEC-1", expected, start=start, end=start + dt.timedelta(seconds=5))
    rows = [{"ts": (start + dt.timedelta(seconds=1 + i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **r}
            for i, r in enumerate(records)]
    return step, rows


def _decision(outcome: str, reason: str, subject_id: str | None, score: float, live: float = 0.9) -> dict:
    return {"event": "decision", "decision": {"outcome": outcome, "reason": reason, "subject_id": subject_id,
                                              "score": score, "pad": {"live": live}, "elapsed_s": 0.3}}


def test_the_verdict_rules_on_lane_records():
    me = "VNM-079200100"
    cases = [
        ("pass", [_decision("allow", "match", me, 0.99), {"event": "passage_complete"}], OK),
        ("pass", [_decision("allow", "match", "VNM-079200101", 0.95), {"event": "passage_complete"}], FAIL),
        ("pass", [_decision("deny", "no_match", None, 0.90)], LIMIT),  # below the threshold: a stated model limit
        ("pass", [_decision("refer", "presentation_attack_suspected", me, 0.99, live=0.2)], LIMIT),
        ("pass", [_decision("refer", "tailgating", me, 0.99)], FAIL),
        ("pass", [], FAIL),  # nothing decided while they stood there
        ("refused", [_decision("deny", "no_match", None, 0.86)], OK),
        ("refused", [_decision("allow", "match", me, 0.95), {"event": "passage_complete"}], FAIL),
    ]
    since = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.timezone.utc)
    for expected, records, state in cases:
        step, rows = _visit(expected, *records)
        got = _lane_step(step, rows, 0.929, since)
        assert got.state == state, (expected, records, got)
    step, rows = _visit("pass", _decision("deny", "no_match", None, 0.90))
    assert "model limit: best score 0.900 below the threshold 0.929" in _lane_step(step, rows, 0.929, since).detail
