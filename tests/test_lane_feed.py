"""The lane benchmark's camera (passengers who walk up and react to the display) and what the
real daemon does with such passengers: asks one who stopped short to step closer, guides one
looking away without costing an attempt, and judges a retry only on the frames after the
passenger responded. Real LFW photos, the real default models, SQLite, the simulated turnstile."""
from __future__ import annotations

import time

import numpy as np
import pytest

from gate.config import parse_config
from gate.lane import AttemptPolicy
from gate.watchlist import Subject, WatchlistStore
from sync.template_crypto import TemplateCipher
from tests.paths import LFW_IMAGES, require
from tools.bench_lane import calibrated_threshold, run_lane
from tools.bench_lane_feed import FINAL, PASS, PROMPT, Behaviour, LaneFeed, Traveller
from tools.feedgen import one_face
from vision.enrol import enrol_photos
from vision.quality import QualityThresholds
from vision.types import Template


class ScriptedDisplay:
    """Display changes at given times after the first read (time, kind, text)."""

    def __init__(self, script):
        self.script, self.t0 = list(script), None

    def read(self):
        now = time.monotonic()
        self.t0 = self.t0 if self.t0 is not None else now
        due = [e for e in self.script if e[0] <= now - self.t0]
        self.script = [e for e in self.script if e[0] > now - self.t0]
        return [(now, kind, text) for _, kind, text in due]


def _photos(name):
    return [str(p) for p in sorted(require(LFW_IMAGES / name).glob("*.jpg"))]


def _play(feed, pipeline=None, every=1):
    """Run the feed to its end; with a pipeline, the primary face's size in every `every`-th frame."""
    feed.open()
    sizes = []
    while (f := feed.read()) is not None:
        if pipeline is not None and len(feed.frame_t) % every == 0:
            r = pipeline.process(f, embed="none")
            box = r.faces[0].face.box if r.faces else None
            size = None if box is None else float(np.sqrt((box[2] - box[0]) * (box[3] - box[1])))
            sizes.append((feed.frame_t[-1], size))
    return sizes


def test_a_passenger_walks_in_from_afar_and_never_stands_still(default_pipeline):
    photo = _photos("Anna_Nicole_Smith")[1]
    feed = LaneFeed([Traveller("enrolled", (photo,), "Anna_Nicole_Smith", stops_short=False)], None,
                    lead_in_s=0.0, tail_s=0.2, behaviour=Behaviour(patience_s=1.5))
    sizes = _play(feed, default_pipeline, every=2)
    v = feed.visits[0]
    seen = [s for _, s in sizes if s is not None]
    assert seen[0] < 50  # at the queue line a ~40-px face (below the lane's 60-px detector minimum)
    assert 190 <= np.median(seen[-8:]) <= 225  # grows to ~205 px on the mark
    standing = [s for t, s in sizes if s is not None and v.at_mark_t <= t <= v.at_mark_t + 1.4]
    assert np.ptp(standing) >= 3  # sways and breathes: no two frames alike
    assert v.outcome == "gave_up" and v.at_mark_t - v.first_t == pytest.approx(Behaviour().walk_in_s, abs=0.1)


def test_the_passenger_reads_the_display_and_responds_after_a_reaction_time():
    takes = tuple(_photos("Bill_Gates")[1:3])
    passages = []
    feed = LaneFeed([Traveller("enrolled", takes, "Bill_Gates", stops_short=True)],
                    ScriptedDisplay([(3.0, PROMPT, "Please step closer"), (5.0, PROMPT, "Look at the camera"),
                                     (7.0, PASS, None)]), lead_in_s=0.0, tail_s=0.2, passage=passages.append)
    feed.open()
    distances, takes_seen = [], []
    while feed.read() is not None:
        p = feed._current
        if p is not None:
            distances.append((time.monotonic() - feed._t0, p.distance(time.monotonic())))
            takes_seen.append((time.monotonic() - feed._t0, p.take))
    v = feed.visits[0]
    b = Behaviour()
    before = [d for t, d in distances if 2.2 < t < 3.0 + b.reaction_s[0]]
    after = [d for t, d in distances if 3.0 + b.reaction_s[1] + b.move_s + 0.1 < t < 5.0]
    assert min(before) >= b.short_stop_m[0] * 0.97 and max(after) <= b.stand_m * 1.3  # stepped onto the mark
    switched = next(t for t, k in takes_seen if k == 1)
    assert 5.0 + b.reaction_s[0] - 0.1 <= switched <= 5.0 + b.reaction_s[1] + 0.1  # looked again, not at once
    assert (v.outcome, v.prompts, v.takes_shown, v.stopped_short) == (
        "passed", ["Please step closer", "Look at the camera"], 2, True)
    assert passages == [b.walk_through_s] and v.last_t - feed._t0 <= 7.0 + b.leave_s + 0.2  # walked through


def test_a_refusal_sends_the_passenger_away_and_the_next_one_sets_off():
    feed = LaneFeed([Traveller("not_enrolled", (_photos("Bill_Gates")[1],)),
                     Traveller("not_enrolled", (_photos("Anna_Nicole_Smith")[1],))],
                    ScriptedDisplay([(2.5, FINAL, "Not recognised"), (7.0, FINAL, "Not recognised")]),
                    lead_in_s=0.0, tail_s=0.2)
    _play(feed)
    a, b = feed.visits
    assert a.outcome == "told: Not recognised" and b.outcome == "told: Not recognised"
    assert a.last_t < b.first_t <= a.last_t + Behaviour().gap_s[1] + 0.2  # one at a time, back to back


# ---- the real daemon before such passengers ----------------------------------------------------

FEED_SCALES = (1.0, 1.5, 1.9)  # how large the feed pastes an LFW photo, from the queue to the mark


def _at_feed_scales(photo):
    import cv2

    img = cv2.imread(photo)
    return [cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR) for f in FEED_SCALES]


def _turned_at_every_size(pipeline, photo) -> bool:
    """The photo fails the pose check at every size the feed shows it. A photo past the limit
    at its own size only was, in some rendered frames, just inside it, and the lane then rightly
    let the traveller through on the first look without a prompt (1 run in 4, score 0.94):
    the scene this test needs was not there."""
    t = QualityThresholds()
    for img in _at_feed_scales(photo):
        r = pipeline.process(img, embed="none")
        if len(r.faces) != 1:
            return False
        fig = r.faces[0].quality.figures  # past a limit by 10 degrees: the feed also sways and rolls
        if abs(fig["yaw_deg"]) < t.max_yaw_deg + 10 and abs(fig["pitch_deg"]) < t.max_pitch_deg + 10:
            return False
    return True


def _one_face_at_every_size(detector, photo) -> bool:
    """Exactly one face at every size the feed shows the photo: a second detection that only
    appears enlarged reads, for three frames in a row, as a second person (tailgating)."""
    return all(len(detector.detect(img)) == 1 for img in _at_feed_scales(photo))


def _assess(pipeline, photo):
    import cv2

    r = pipeline.process(cv2.imread(photo))
    return r.faces[0] if len(r.faces) == 1 else None


@pytest.fixture(scope="module")
def lane_run(tmp_path_factory, default_pipeline):
    """One queue through the real daemon (liveness off: the PAD pair's own behaviour is
    measured by gate-bench lane): a traveller who stops short, a traveller whose first photo
    looks away (found by the quality gate, with a frontal second photo that matches), and a
    stranger with two photos who is refused after a retry."""
    threshold, _ = calibrated_threshold()
    people = [d for d in sorted(require(LFW_IMAGES).iterdir()) if d.is_dir()]
    enrol, queue = {}, []

    def matches(d, photo):
        e = enrol_photos(default_pipeline, d.name, [sorted(d.glob("*.jpg"))[0]])
        f = _assess(default_pipeline, photo)
        if not len(e.vectors) or f is None or f.template is None:
            return None
        return e if float(f.template @ e.vectors[0]) >= threshold + 0.015 else None

    for d in people:  # a traveller matched clearly on their second photo, who stops short
        photos = [str(p) for p in sorted(d.glob("*.jpg"))]
        if len(photos) >= 2 and one_face(default_pipeline.detector, photos[1]) and (e := matches(d, photos[1])):
            enrol[d.name] = e
            queue.append(Traveller("enrolled", (photos[1],), d.name, stops_short=True))
            break
    for d in people:  # a traveller looking away in one photo, frontal and matched in the next
        photos = [str(p) for p in sorted(d.glob("*.jpg"))]
        if len(photos) < 3 or d.name in enrol:
            continue
        first = _assess(default_pipeline, photos[1])
        if first is None or not any(r.startswith("pose_") for r in first.quality.reasons) \
                or not _turned_at_every_size(default_pipeline, photos[1]):
            continue
        if one_face(default_pipeline.detector, photos[2]) and (e := matches(d, photos[2])):
            enrol[d.name] = e
            queue.append(Traveller("enrolled", (photos[1], photos[2]), d.name, stops_short=False))
            break
    for d in reversed(people):  # a stranger with two photos
        photos = [str(p) for p in sorted(d.glob("*.jpg"))]
        if len(photos) >= 2 and d.name not in enrol and \
                all(_one_face_at_every_size(default_pipeline.detector, p) for p in photos[:2]):
            queue.append(Traveller("not_enrolled", tuple(photos[:2]), stops_short=False))
            break
    assert len(queue) == 3, "LFW holds no such passengers"
    tmp = tmp_path_factory.mktemp("lane-feed")
    cfg = parse_config({
        "gate": {"id": "G1", "state_dir": str(tmp / "state"), "log_level": "WARNING"},
        "camera": {"source": "lane-feed", "fps": 15.0},
        "models": {"dir": str(tmp), "pad_required": False},
        "lane": {"lane_id": "L1", "policy": {"threshold_1n": threshold, "min_margin": 0.03,
                                             "threshold_1to1": threshold, "deny_threshold": threshold},
                 "tracking": {"capture_min_face_px": 150.0}},
        "device": {"type": "sim"}, "watchlist": {"encrypt_templates": True, "scan_threads": 1}}, tmp)
    cfg.gate.state_dir.mkdir(parents=True)
    cfg.template_key_file.parent.mkdir(parents=True, mode=0o700)
    store = WatchlistStore(cfg.gate.state_dir, cipher=TemplateCipher.load_or_create(cfg.template_key_file))
    for i, (sid, e) in enumerate(enrol.items(), start=1):
        store.upsert_subject(Subject(sid, "allow"), [Template(e.vectors[0], e.model_id)], seq=i)
    store.close()
    run = run_lane(cfg, default_pipeline, queue, Behaviour(), seed=5, lead_in_s=1.0)
    return {"run": run, "queue": queue, "cfg": cfg}


def _events(bodies) -> list:
    """What a failure message shows of a visit's records: event, reason, outcome, score."""
    out = []
    for b in bodies:
        d = b.get("decision") if isinstance(b.get("decision"), dict) else {}
        out.append((round(b["t"], 2), b["event"], b.get("why") or d.get("reason"), d.get("outcome"), d.get("score"),
                    b.get("quality_reasons") or b.get("reason")))
    return out


def _mine(lane_run, i):
    v = lane_run["run"].visits()[i]
    return v, [b for b in lane_run["run"].bodies if "t" in b and v.start <= b["t"] < v.end]


def test_a_traveller_who_stopped_short_is_asked_to_step_closer_then_served(lane_run):
    v, mine = _mine(lane_run, 0)
    events = [b["event"] for b in mine]
    prompt = next(b for b in mine if b["event"] == "prompt")
    assert prompt["why"] == "outside_capture_zone" and prompt["prompt"] == "Please step closer"
    assert prompt["face_px"] < 150 and prompt["waited_s"] >= lane_run["cfg"].lane.tracking.step_closer_after_s
    assert events.index("prompt") < events.index("face_acquired") < events.index("open")
    assert "passage_complete" in events and lane_run["run"].feed_visits[0].outcome == "passed"


def test_a_traveller_looking_away_is_guided_and_passes_within_the_first_attempt(lane_run):
    v, mine = _mine(lane_run, 1)
    prompt = next((b for b in mine if b["event"] == "prompt"), None)
    assert prompt is not None, _events(mine)
    assert prompt["why"] == "low_quality" and any(r.startswith("pose_") for r in prompt["quality_reasons"])
    assert prompt["attempt"] == 1 and "attempt_failed" not in [b["event"] for b in mine]
    allow = next(b for b in mine if b["event"] == "decision")
    assert allow["decision"]["outcome"] == "allow" and allow["decision"]["subject_id"] == v.subject_id
    assert allow["t"] >= prompt["t"] + AttemptPolicy().settle_s  # judged on the frames after the response
    assert lane_run["run"].feed_visits[1].takes_shown == 2


def test_a_retry_is_judged_on_the_passengers_response_and_the_stranger_is_never_named(lane_run):
    v, mine = _mine(lane_run, 2)
    assert [b["decision"]["reason"] for b in mine if b["event"] in ("attempt_failed", "decision")] == \
        ["no_match", "no_match"], [b for b in mine if b["event"] not in ("prompt", "face_lost")]
    failed = next(b for b in mine if b["event"] == "attempt_failed")
    final = next(b for b in mine if b["event"] == "decision")
    assert failed["decision"]["reason"] == final["decision"]["reason"] == "no_match"
    assert final["t"] - failed["t"] >= AttemptPolicy().settle_s
    assert final["decision"]["score"] != failed["decision"]["score"]  # the second look is another photo
    assert lane_run["run"].feed_visits[2].takes_shown == 2 and "open" not in [b["event"] for b in mine]
    assert final["decision"]["subject_id"] is None and failed["decision"]["subject_id"] is None
