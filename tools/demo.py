"""`make demo`: the whole system on one machine, from real photos, in under three minutes.

A local central (ZeroMQ with CURVE keys) enrols travellers from photos; one lane daemon runs
on a camera feed of passengers walking up (enrolled travellers, strangers, a tailgating pair,
a deny-list subject, a printed-photo attack, a late enrolment) with a simulated turnstile. In
the middle the central is killed and later restarted: the lane keeps deciding from its local
watchlist and drains its audit log when the central returns. Ground staff clear the alarms
with gatectl, which is audited. At the end the central's copy of the audit chain is verified
and an HTML report is written.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.feedgen import Passenger, one_face, write_walkup_video

log = logging.getLogger("demo")
FPS = 15.0
LANE = "DEMO-1"
GATE = "DEMO-GATE-1"


@dataclass
class Cast:
    """Who appears in the feed and what the gate should do with them."""

    enrolled: dict[str, Path]  # subject id -> enrolment photo
    deny: dict[str, Path]
    late: dict[str, Path]  # enrolled while the lane runs
    passengers: list[Passenger]


def _lfw_cast(images: Path, rng: np.random.Generator, pad_samples: Path | None, detector) -> Cast:
    people = sorted(d for d in images.iterdir() if d.is_dir())
    multi = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) >= 2]
    single = [people[i] for i in rng.permutation(len(people)) if len(list(people[i].glob("*.jpg"))) == 1]
    pick = [d for d in multi[:40] if one_face(detector, sorted(d.glob("*.jpg"))[1])][:10]
    strangers = [d for d in single[:20] if one_face(detector, next(d.glob("*.jpg")))][:4]
    photos = {d.name: sorted(d.glob("*.jpg")) for d in pick}
    enrolled = {d.name: photos[d.name][0] for d in pick[:7]}
    deny = {pick[7].name: photos[pick[7].name][0]}
    late = {pick[8].name: photos[pick[8].name][0]}
    e = [d.name for d in pick[:7]]
    walk = {n: str(photos[n][1]) for n in photos}
    P = Passenger
    seq = [P("enrolled", walk[e[0]], e[0]), P("enrolled", walk[e[1]], e[1]),
           P("not_enrolled", str(next(strangers[0].glob("*.jpg")))),
           P("enrolled", walk[e[2]], e[2]),
           P("tailgate", walk[e[3]], e[3], follower_photo=str(next(strangers[3].glob("*.jpg")))),
           P("enrolled", walk[e[4]], e[4]),
           # the central goes down about here
           P("not_enrolled", str(next(strangers[1].glob("*.jpg")))),
           P("enrolled", walk[e[5]], e[5]),
           P("deny_list", walk[pick[7].name], pick[7].name),
           # the central comes back about here; the late traveller is enrolled then
           P("not_enrolled", str(next(strangers[2].glob("*.jpg")))),
           P("late_enrolled", walk[pick[8].name], pick[8].name),
           P("enrolled", walk[e[6]], e[6])]
    if pad_samples is not None:
        seq.insert(10, P("photo_attack", str(pad_samples / "spoof" / "image_F1.jpg")))
    return Cast(enrolled, deny, late, seq)


def _insightface_cast(work: Path, pipeline) -> Cast:
    """Without ../shared: the faces in the group photo that ships inside the insightface wheel,
    each cut out as its own 'person' (enrolled from the cut-out, walking up mirrored)."""
    import cv2
    import insightface

    img = cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"))
    faces = pipeline.detector.detect(img)
    folder = work / "people"
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = f.box
        w, h = x2 - x1, y2 - y1
        crop = img[max(0, int(y1 - h)): int(y2 + h), max(0, int(x1 - w)): int(x2 + w)]
        crop = cv2.resize(crop, (250, 250))
        p = folder / f"person_{i:02d}.jpg"
        cv2.imwrite(str(p), crop)
        m = folder / f"person_{i:02d}_walk.jpg"
        cv2.imwrite(str(m), cv2.flip(crop, 1))
        photos.append((p, m))
    enrolled = {p.stem: p for p, _ in photos[:3]}
    passengers = [Passenger("enrolled", str(m), p.stem) for p, m in photos[:3]]
    passengers += [Passenger("not_enrolled", str(m)) for _, m in photos[3:]]
    return Cast(enrolled, {}, {}, passengers)


def _write_configs(work: Path, models: Path, video: Path, pad: bool, keys: Path) -> tuple[Path, Path]:
    central = work / "central.toml"
    central.write_text(f"""[central]
db_path = "central.db"
base_port = {_free_port_block()}
bind_host = "127.0.0.1"
secret_key_file = "{keys / 'central.key_secret'}"
heartbeat_s = 0.5
gate_silent_after_s = 5.0
""")
    port = central.read_text().split("base_port = ")[1].split()[0]
    gate = work / "gate.toml"
    pad_names = '["minifasnet-v2", "minifasnet-v1se"]' if pad else "[]"
    gate.write_text(f"""[gate]
id = "{GATE}"
site = "DEMO"
state_dir = "gate-state"
log_level = "WARNING"

[camera]
source = "{video}"
fps = {FPS}

[models]
dir = "{models}"
min_face_px = 60
pad = {pad_names}
pad_required = {str(pad).lower()}

[lane]
lane_id = "{LANE}"
open_timeout_s = 4.0
result_display_s = 0.7

[lane.policy]
# Calibrated by gate-eval on LFW folds (README, "Accuracy"); see docs/accuracy.md.
# 1:1 at FAR 0.1 % on LFW (gate-eval lfw: threshold_at_far_1e-3 = 0.918). For 1:N the chance of
# a false match grows with the gallery: with ~10 enrolled here, FPIR is about 10 x FAR, ~1 %.
threshold_1n = 0.92
min_margin = 0.03
threshold_1to1 = 0.92
deny_threshold = 0.92
acquire_timeout_s = 3.0

[lane.policy.pad]
threshold = 0.5
frames = 3

[device]
type = "sim"
auto_passage_ms = 1500

[sync]
central_host = "127.0.0.1"
base_port = {port}
scopes = ["lane:{LANE}"]
accepted_models = ["dlib-resnet-v1"]
secret_key_file = "{keys / 'gate.key_secret'}"
central_public_key_file = "{keys / 'central.key'}"
heartbeat_timeout_s = 2.0
reply_timeout_s = 1.0
health_interval_s = 1.0
""")
    return central, gate


def _free_port_block() -> int:
    """A base port with four free ports after it on loopback."""
    import socket

    for base in range(25556, 26556, 7):
        ok = True
        for p in range(base, base + 4):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free loopback ports for the demo central")


class Procs:
    """Child processes that must not outlive the demo, even on Ctrl-C."""

    def __init__(self):
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], cwd: Path, logfile: Path) -> subprocess.Popen:
        f = open(logfile, "ab")
        p = subprocess.Popen(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)


def _fmt_event(e: dict, t0: float) -> str | None:
    t = e.get("t")
    rel = f"{t - t0:6.1f}s" if isinstance(t, (int, float)) else "       "
    ev = e.get("event")
    if ev == "decision":
        d = e["decision"]
        who = d.get("subject_id") or "-"
        ms = e.get("timings_ms", {})
        pad = d.get("pad")
        pad_s = f" live={pad['live']:.2f}" if isinstance(pad, dict) and pad.get("live") is not None else ""
        return (f"[{rel}] {e.get('to', ''):9s} {d['outcome'].upper():6s} {d['reason']:30s} who={who:28s} "
                f"score={d.get('score') or 0:.3f} margin={d.get('margin') or 0:.3f}{pad_s} "
                f"decided in {d.get('elapsed_s', 0) * 1000:.0f} ms (frame: detect {ms.get('detect', 0):.0f} "
                f"embed {ms.get('embed', 0):.0f} ms)")
    if ev == "open":
        return f"[{rel}] open      turnstile unlocked for {e['opening'].get('subject_id') or e['opening'].get('operator_id')}"
    if ev == "manual_action":
        return f"[{rel}] STAFF     {e.get('action')} by {e.get('operator_id')}: {e.get('reason')}"
    if ev in ("alarm", "alarm_raised") or e.get("to") == "alarm":
        return f"[{rel}] ALARM     {e.get('event')} {e.get('cause', '')}"
    return None


def run_demo(models: Path, shared: Path, out: Path, seed: int = 7) -> int:
    from gate.control import ControlError, call
    from models.provision import provision_minifasnet_pair
    from sync.central import Central
    from sync.keys import generate_keypair_files, load_public_key
    from tools.enrolment import enrol_folder
    from vision.loading import load_pipeline

    t_start = time.monotonic()
    work = out.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    models = models.resolve()
    print(f"edgegate demo — working folder {work}")
    pipeline = load_pipeline(models, "mtcnn-v1", "dlib-resnet-v1", flip=True, detector_opts={"min_face": 40})
    shared_models = shared / "models"
    pad = (shared_models / "2.7_80x80_MiniFASNetV2.onnx").exists()
    if pad:
        provision_minifasnet_pair(shared_models, models)
        print("liveness: MiniFASNet pair provisioned from ../shared/models")
    else:
        print("liveness: NOT PROVISIONED (../shared/models missing) — the lane says so in every record")
    lfw = shared / "faces" / "lfw-dev" / "images"
    rng = np.random.default_rng(seed)
    if lfw.is_dir():
        pad_samples = shared / "faces" / "pad-samples" if pad else None
        cast = _lfw_cast(lfw, rng, pad_samples, pipeline.detector)
        print(f"people: LFW photos from {lfw}")
    else:
        cast = _insightface_cast(work, pipeline)
        print("people: faces from the photo shipped in the insightface wheel (../shared not found)")

    keys = work / "keys"
    generate_keypair_files(keys, "central")
    generate_keypair_files(keys, "gate")
    central_cfg, gate_cfg = _write_configs(work, models, work / "feed.avi", pad, keys)
    from sync.config import load_central_config

    ccfg = load_central_config(central_cfg)
    central = Central(ccfg.db_path)
    central.register_gate(GATE, load_public_key(keys / "gate.key"), [f"lane:{LANE}"])

    # enrolment folders: one per person, named by the (pseudonymous) subject id
    def folder_of(people: dict[str, Path], name: str) -> Path:
        root = work / "enrol" / name
        for sid, photo in people.items():
            (root / sid).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, root / sid / photo.name)
        return root

    scope = [f"lane:{LANE}"]
    r = enrol_folder(central, pipeline, folder_of(cast.enrolled, "allow"), scope, "allow",
                     valid_until=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    if cast.deny:
        enrol_folder(central, pipeline, folder_of(cast.deny, "deny"), scope, "deny")
    print(f"enrolled {len(r.enrolled)} travellers, {len(cast.deny)} on the deny list "
          f"({len(r.rejects)} photos rejected)")
    central.close()
    # 3 s of empty lane first: the gate takes its first watchlist snapshot meanwhile
    # and 1.6 s between passengers, so staff can clear an alarm before the next one arrives
    truth = write_walkup_video(work / "feed.avi", cast.passengers, fps=FPS, lead_in_frames=int(3 * FPS),
                               gap_frames=24)
    print(f"camera feed: {len(cast.passengers)} passengers, {truth[-1].last_frame / FPS:.0f} s at {FPS:.0f} fps")

    procs = Procs()
    py = sys.executable
    events: list[dict] = []
    outage = [None, None]
    try:
        procs.start("central", [py, "-m", "tools.gate_central", "--config", str(central_cfg)], work, work / "central.log")
        time.sleep(1.0)
        procs.start("gated", [py, "-m", "tools.gated", "--config", str(gate_cfg)], work, work / "gated.log")
        sock = work / "gate-state" / "control.sock"
        deadline = time.monotonic() + 60
        while True:
            try:
                st = call(sock, "status")
                if st.get("mode") not in (None, "starting"):
                    break
            except ControlError:
                pass
            if procs.procs["gated"].poll() is not None or time.monotonic() > deadline:
                print((work / "gated.log").read_text()[-3000:])
                raise RuntimeError("the lane did not start; see gated.log above")
            time.sleep(0.2)
        lane_t0 = time.monotonic()  # replaced by the lane's own start time once its first event arrives
        print(f"lane {LANE} is up ({st['mode']}, pad {st['pad']}, watchlist {st['watchlist_size']} subjects)\n")

        stream_stop = threading.Event()
        first_t = [None]
        lane_clock = [lane_t0]

        def follow():
            try:
                for e in call(sock, "events", stream=True, last=0, follow=True):
                    if e.get("event") == "lane_started" and first_t[0] is None:
                        first_t[0] = e.get("t")
                        lane_clock[0] = e.get("t")
                    if first_t[0] is None and isinstance(e.get("t"), (int, float)):
                        first_t[0] = e["t"]
                    events.append(e)
                    line = _fmt_event(e, first_t[0] or 0.0)
                    if line:
                        print(line, flush=True)
                    if stream_stop.is_set():
                        return
            except (ControlError, OSError, ValueError):
                return

        threading.Thread(target=follow, daemon=True).start()
        starts = [a.first_frame / FPS for a in truth]
        down_at, up_at = starts[6] - 0.5, starts[9] - 0.5
        late_done = False
        last_reset = 0.0
        while procs.procs["gated"].poll() is None:
            now = time.monotonic() - lane_clock[0]
            if outage[0] is None and now >= down_at:
                procs.kill("central", signal.SIGKILL)
                outage[0] = now
                print(f"[{now:6.1f}s] --- central service killed (kill -9): the lane keeps deciding offline ---")
            if outage[0] is not None and outage[1] is None and now >= up_at:
                procs.start("central", [py, "-m", "tools.gate_central", "--config", str(central_cfg)], work,
                            work / "central.log")
                outage[1] = now
                print(f"[{now:6.1f}s] --- central service restarted ---")
                if cast.late and not late_done:
                    c = Central(ccfg.db_path)
                    enrol_folder(c, pipeline, folder_of(cast.late, "late"), scope, "allow")
                    c.close()
                    late_done = True
                    print(f"[{now:6.1f}s] --- late traveller {next(iter(cast.late))} enrolled at the central ---")
            try:
                st = call(sock, "status", timeout=2)
            except ControlError:
                st = {}
            if st.get("mode") == "alarm" and now - last_reset > 1.0:
                time.sleep(0.3)  # staff look, decide
                reason = {"tailgating": "second person sent back", "deny_list": "security informed",
                          "presentation_attack": "photo attack, passenger escorted"}
                why = next((v for k, v in reason.items() if k in str(st.get("alarm"))), "checked")
                call(sock, "emergency-reset", operator="demo-staff-07", reason=why)
                last_reset = time.monotonic() - lane_clock[0]
            if time.monotonic() - t_start > 170:
                print("demo: time budget reached, stopping the lane")
                procs.kill("gated", signal.SIGTERM)
                break
            time.sleep(0.2)
        stream_stop.set()
        # the lane has stopped; let the restarted central catch the uploads made by the lane
        # before it stopped (the lane drains its audit log when the central comes back)
        print("\nlane finished its feed; checking the central's copy of the audit log ...")
        summary = _summarise(work, ccfg, cast, events, truth, outage, t_start, lane_clock[0])
    finally:
        procs.stop_all()
    _report(work, models, shared, summary, events, outage, pipeline)
    print(f"\nreport: {work / 'report.html'}   (total {time.monotonic() - t_start:.0f} s)")
    return 0 if summary["false_opens"] == 0 and summary["chain_at_central"] == "ok" else 1


EXPECTED = {"enrolled": "allow", "late_enrolled": "allow", "not_enrolled": "deny", "tailgate": "refer:tailgating",
            "deny_list": "deny:deny_list", "photo_attack": "refer:presentation_attack_suspected"}


def _per_passenger(truth, decisions_at: list[tuple[float, dict]]) -> list[dict]:
    """Attribute each decision to the passenger on camera at that moment of the feed (the
    lane plays the file at its frame rate from its start, so feed time ~ lane time)."""
    rows = []
    for a in truth:
        t0, t1 = a.first_frame / FPS, (a.last_frame + 8) / FPS
        got = [d for t, d in decisions_at if t0 <= t <= t1]
        first = got[0] if got else None
        observed = "none" if first is None else (
            first["outcome"] if first["outcome"] in ("allow", "deny") and first["reason"] in ("match", "no_match")
            else f"{first['outcome']}:{first['reason']}")
        ok = observed == EXPECTED[a.label] and (a.label not in ("enrolled", "late_enrolled")
                                                or first["subject_id"] == a.subject_id)
        rows.append({"passenger": a.subject_id or "(not enrolled)", "kind": a.label, "expected": EXPECTED[a.label],
                     "observed": observed, "score": None if first is None else first.get("score"), "as_expected": ok})
    return rows


def _summarise(work: Path, ccfg, cast: Cast, events: list[dict], truth, outage, t_start: float,
               lane_t0: float) -> dict:
    from gate.audit import AuditLog
    from sync.audit_chain import verify_chain
    from sync.central import Central

    with AuditLog(work / "gate-state", read_only=True) as alog:
        rows = list(alog.iter_since(0))
        chain_gate = alog.verify()
    bodies = [r.body for r in rows]
    decisions = [b["decision"] for b in bodies if b.get("event") == "decision"]
    opens = [b["opening"] for b in bodies if b.get("event") == "open"]
    allowed = {cast_id for cast_id in list(cast.enrolled) + list(cast.late)}
    auto_opens = [o for o in opens if o.get("operator_id") is None]
    false_opens = [o for o in auto_opens if o.get("subject_id") not in allowed]
    walked = {p.subject_id for p in cast.passengers if p.label in ("enrolled", "late_enrolled", "tailgate")}
    let_through = {o["subject_id"] for o in auto_opens}
    deadline = time.monotonic() + 20
    central_rows = 0
    chain_c = None
    while time.monotonic() < deadline:
        c = Central(ccfg.db_path)
        crow = list(c.audit.rows(GATE))
        c.close()
        central_rows = len(crow)
        chain_c = verify_chain(crow)
        if central_rows >= len(rows):
            break
        time.sleep(0.5)
    reasons: dict[str, int] = {}
    for d in decisions:
        reasons[f"{d['outcome']}:{d['reason']}"] = reasons.get(f"{d['outcome']}:{d['reason']}", 0) + 1
    elapsed = [d["elapsed_s"] * 1000 for d in decisions if d["outcome"] == "allow"]
    per = _per_passenger(truth, [(b["t"] - lane_t0, b["decision"]) for b in bodies if b.get("event") == "decision"])
    print("\n=== passengers (first decision while each was on camera) ===")
    for r in per:
        print(f"  {'ok ' if r['as_expected'] else 'MISS'} {r['kind']:14s} {r['passenger']:28s} expected "
              f"{r['expected']:38s} got {r['observed']}" + (f" ({r['score']:.3f})" if r["score"] else ""))
    s = {
        "passengers in feed": len(cast.passengers),
        "decisions": len(decisions),
        "decisions by outcome:reason": json.dumps(reasons, sort_keys=True),
        "enrolled travellers let through": f"{len(let_through & walked)} of {len(walked - {None})} "
                                           f"(tailgater's leader is held on purpose)",
        "passengers handled as expected": f"{sum(r['as_expected'] for r in per)} of {len(per)}",
        "false_opens": len(false_opens),
        "staff actions (audited)": sum(1 for b in bodies if b.get("event") == "manual_action"),
        "first face to decision, allow, median ms": round(float(np.median(elapsed)), 1) if elapsed else None,
        "central outage (s into the run)": f"{outage[0]:.1f} – {outage[1]:.1f}" if outage[0] and outage[1] else "none",
        "audit records at gate": len(rows),
        "audit records received by central": central_rows,
        "chain_at_gate": "ok" if chain_gate.ok else f"BROKEN at {chain_gate.first_broken_seq}",
        "chain_at_central": "ok" if chain_c is not None and chain_c.ok and central_rows == len(rows) else
        f"{'ok' if chain_c and chain_c.ok else 'BROKEN'} ({central_rows}/{len(rows)} records)",
        "demo wall time s": round(time.monotonic() - t_start, 1),
    }
    print("\n=== summary ===")
    for k, v in s.items():
        print(f"  {k:45s} {v}")
    return s


def _report(work: Path, models: Path, shared: Path, summary: dict, events: list[dict], outage, pipeline) -> None:
    from tools.demo_report import write_report
    from vision.evaluate import embed_images, read_pairs

    pairs_file = shared / "faces" / "lfw-dev" / "pairs.txt"
    if pairs_file.exists():
        pairs = read_pairs(pairs_file, shared / "faces" / "lfw-dev" / "images")
        fold1 = [p for p in pairs if p.fold == 0]
        sample = [p for p in fold1 if p.same][:150] + [p for p in fold1 if not p.same][:150]
        tpl = embed_images(pipeline, {p.a for p in sample} | {p.b for p in sample})
        sc = [(float(np.dot(tpl[p.a], tpl[p.b])), p.same) for p in sample if tpl[p.a] is not None and tpl[p.b] is not None]
        genuine = np.array([s for s, same in sc if same])
        impostor = np.array([s for s, same in sc if not same])
    else:
        genuine = impostor = np.array([0.0])
    stage: dict[str, list[float]] = {}
    timeline = []
    t0 = next((e["t"] for e in events if isinstance(e.get("t"), (int, float))), 0.0)
    rows = {"allow": 0, "deny": 1, "refer": 2}
    for e in events:
        if e.get("event") == "decision":
            for k, v in e.get("timings_ms", {}).items():
                stage.setdefault(k, []).append(v)
            d = e["decision"]
            timeline.append({"t": e["t"] - t0, "row": rows.get(d["outcome"], 2), "kind": d["outcome"],
                             "label": (d.get("subject_id") or "")[:14] if d["outcome"] == "allow" else d["reason"][:14]})
        if e.get("event") == "manual_action" and isinstance(e.get("t"), (int, float)):
            timeline.append({"t": e["t"] - t0, "row": 3, "kind": "manual", "label": e.get("action", "")})
    out_span = (outage[0], outage[1]) if outage[0] and outage[1] else None
    write_report(work / "report.html", summary, genuine, impostor, 0.92, stage, timeline, out_span)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="edgegate-demo", description=__doc__)
    p.add_argument("--models", default=os.environ.get("EDGEGATE_MODEL_DIR", ".models"))
    p.add_argument("--shared", default="../shared")
    p.add_argument("--out", default="out/demo")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_demo(Path(args.models), Path(args.shared), Path(args.out))
    except KeyboardInterrupt:
        print("\ndemo interrupted; child processes stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
