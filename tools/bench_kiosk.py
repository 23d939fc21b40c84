"""gate-bench kiosk: time from the first face at the enrolment station to the enrolment held by
the central, and to a security lane being able to match that traveller.

Everything real: the default models (and the MiniFASNet pair with --pad-from) on LFW photos,
a specimen chip document per traveller (passive authentication included, before the clock
starts), the station session, the station's CURVE client, a central server on loopback, and
a gate agent following checkpoint:<airport> into the gate's own watchlist store and matcher.
The "camera" plays a traveller's other photos at `fps`, so the figure includes the frames a
real camera would take to deliver (frames_needed / fps), not only compute.

Timeline per traveller: t0 = the first frame holding a face reaches vision; t_ack = the
central's reply (enrolment stored, change sequence known); t_lane = the lane's matcher
returns the traveller for one of their live templates.
"""
from __future__ import annotations

import datetime as dt
import logging
import statistics
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np

log = logging.getLogger(__name__)


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def kiosk_bench(model_dir: Path, images: Path, travellers: int = 12, fps: float = 15.0, pad_from: Path | None = None,
                frames_needed: int = 5, threshold: float = 0.93, lane_timeout_s: float = 10.0) -> dict:
    from kiosk.capture import live_frame, reference_of
    from kiosk.identity import ChipDocumentSource
    from kiosk.session import Publish, Session, State, StationRules
    from kiosk.specimen import build_dg1, build_dg2, build_sod, make_csca, make_document_signer, td1_mrz
    from models.registry import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
    from sync.agent import GateAgent
    from sync.bench import _free_base_port  # the sync benchmark's loopback port finder
    from sync.central import Central
    from sync.central_seal import default_template_key_file
    from sync.central_server import CentralServer
    from sync.config import AgentConfig, CentralConfig
    from sync.keys import generate_keypair_files, load_public_key
    from sync.service_messages import EnrolRequest
    from sync.station_client import StationClient, StationLink
    from tools.gate_bench import gate_side_factories
    from vision.image_io import load_image
    from vision.loading import load_pipeline

    pipeline = load_pipeline(model_dir, DEFAULT_DETECTOR, DEFAULT_EMBEDDER, flip=True, detector_opts={"min_face": 40})
    tmp = Path(tempfile.mkdtemp(prefix="edgegate-bench-kiosk-"))
    pad = None
    if pad_from:
        from models.provision import provision_minifasnet_pair
        from vision.pad import load_pad

        pad = load_pad(provision_minifasnet_pair(Path(pad_from), tmp / "pad"), threads=1)
    people = [d for d in sorted(Path(images).iterdir()) if d.is_dir() and len(list(d.glob("*.jpg"))) >= 4]
    people = people[:travellers]
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    rules = StationRules(airport="SGN", airport_tz=tz, departure_grace=dt.timedelta(hours=3), threshold_1to1=threshold,
                         frames_needed=frames_needed, enrol_frames=3, target_inter_eye_px=30.0,
                         pad_required=pad is not None)
    base = _free_base_port(4)
    keys = tmp / "keys"
    central_keys = generate_keypair_files(keys, "central")
    station_keys = generate_keypair_files(keys, "station")
    gate_keys = generate_keypair_files(keys, "gate")
    db = tmp / "central.db"
    c = Central(db)
    c.register_station("K1", load_public_key(station_keys.public), "SGN")
    c.register_gate("SEC-1", load_public_key(gate_keys.public), ["checkpoint:SGN"])
    c.close()
    server = CentralServer(CentralConfig(database=str(db), base_port=base, bind_host="127.0.0.1",
                                         secret_key_file=central_keys.secret, log_poll_s=0.005, heartbeat_s=0.5,
                                         template_key_file=default_template_key_file(db)))
    server.start()
    sink_factory, probe, audit_factory = gate_side_factories(dim=pipeline.embedder.dim, model_id=pipeline.model_id)
    sink = sink_factory(tmp / "lane")
    lane_audit, _ = audit_factory(tmp / "lane-audit")  # the lane's own (empty) audit log
    agent = GateAgent(AgentConfig(gate_id="SEC-1", central_host="127.0.0.1", base_port=base,
                                  scopes=("/checkpoint/SGN/",), accepted_models=frozenset({pipeline.model_id}),
                                  secret_key_file=gate_keys.secret, central_public_key_file=central_keys.public,
                                  health_interval_s=1.0),
                      sink, lane_audit, lambda: {"status": "ok", "software_version": "bench", "model_versions": {},
                                                 "last_decision_at": None})
    agent.start()
    client = StationClient(StationLink("K1", "127.0.0.1", base, station_keys.secret, central_keys.public))
    csca = make_csca("CSCA bench")
    ds = make_document_signer(csca)
    day = dt.datetime.now(tz).timetuple().tm_yday
    to_ack, to_lane, outcomes = [], [], {}
    try:
        for n, person in enumerate(people):
            photos = sorted(person.glob("*.jpg"))[:4]
            ref_img = load_image(photos[0])
            ok, jpg = cv2.imencode(".jpg", ref_img)
            number = f"{79200000 + n:09d}"
            dg1 = build_dg1(td1_mrz(number, "NGUYEN", "VAN AN"))
            dg2 = build_dg2(jpg.tobytes(), "jpeg", ref_img.shape[1], ref_img.shape[0])
            ref = ChipDocumentSource(dg1, dg2, build_sod({1: dg1, 2: dg2}, ds), (csca.cert,),
                                     display_name="Nguyễn Văn An").reference()
            s = Session(rules, pipeline.model_id, time.monotonic())
            s.on_pass("M1" + "NGUYEN/VAN AN".ljust(20) + f"EXYZ9K2 SGNHANVN {100 + n:04d} {day:03d}Y012C0042 100",
                      dt.datetime.now(dt.timezone.utc))
            s.on_reference(reference_of(pipeline, ref), time.monotonic())
            frames = [load_image(p) for p in photos[1:]]
            t0 = None
            publish = None
            next_frame = time.monotonic()
            i = 0
            while s.state is State.CAPTURING and i < 40:
                time.sleep(max(0.0, next_frame - time.monotonic()))  # the camera's frame rate
                next_frame += 1.0 / fps
                start = time.monotonic()
                lf = live_frame(pipeline, pad, frames[i % len(frames)], start)
                if lf.faces and t0 is None:
                    t0 = start
                publish = next((a for a in s.on_frame(lf) if isinstance(a, Publish)), None) or publish
                i += 1
            if publish is None:
                outcomes[s.referral or s.state.value] = outcomes.get(s.referral or s.state.value, 0) + 1
                continue
            reply = client.enrol(EnrolRequest(
                station_id="K1", request_id=0, subject_id=publish.subject_id, display_name=publish.display_name,
                list_type="allow", scopes=publish.scopes, departure_airport=publish.departure_airport,
                valid_from=None, valid_until=int(publish.valid_until.timestamp()), model_id=pipeline.model_id,
                templates=publish.templates))
            t_ack = time.monotonic()
            if not reply.ok:
                outcomes["refused_by_central"] = outcomes.get("refused_by_central", 0) + 1
                log.error("central refused %s: %s", publish.subject_id, reply.error)
                continue
            outcomes["enrolled"] = outcomes.get("enrolled", 0) + 1
            to_ack.append(t_ack - t0)
            probe_vec = publish.templates[0]
            deadline = t_ack + lane_timeout_s
            while time.monotonic() < deadline and not probe(sink, publish.subject_id, probe_vec):
                time.sleep(0.005)
            if probe(sink, publish.subject_id, probe_vec):
                to_lane.append(time.monotonic() - t0)
            else:
                outcomes["lane_never_matched"] = outcomes.get("lane_never_matched", 0) + 1
    finally:
        client.close()
        agent.stop()
        server.stop()
    return {
        "travellers": len(people), "outcomes": outcomes, "fps": fps, "frames_needed": frames_needed,
        "pad": pad is not None, "threshold_1to1": threshold,
        "face_to_ack_s_median": statistics.median(to_ack) if to_ack else float("nan"),
        "face_to_ack_s_p95": _p95(to_ack),
        "face_to_lane_match_s_median": statistics.median(to_lane) if to_lane else float("nan"),
        "face_to_lane_match_s_p95": _p95(to_lane),
        "timed": len(to_ack),
    }
