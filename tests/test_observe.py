"""Validity windows are enforced from the local clock at the moment of each frame, so a gate
that has not heard from the central for days still refuses travellers outside their window,
and a clock that jumps back or forward changes exactly who is matchable."""
from datetime import datetime, timedelta, timezone

import numpy as np

from gate.observe import observe, store_lookup
from gate.watchlist import Subject, WatchlistStore
from vision.match import Matcher
from vision.pipeline import FaceResult, FrameResult
from vision.quality import Quality
from vision.types import Face, Template

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


def _frame(vec):
    face = Face(np.array([100, 100, 300, 300], np.float32), 0.99, np.zeros((5, 2), np.float32) + 150)
    return FrameResult([FaceResult(face, Quality(True, (), {}), vec)], {"detect": 1.0})


def test_candidates_respect_validity_windows_and_revocation(tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((3, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store = WatchlistStore(tmp_path)
    m = Matcher(128, "m")
    store.set_listener(m, "m")
    store.upsert_subject(Subject("boarding-now", "allow", T0 - timedelta(hours=1), T0 + timedelta(hours=1)),
                         [Template(vecs[0], "m")], seq=1)
    store.upsert_subject(Subject("tomorrow", "allow", T0 + timedelta(days=1), T0 + timedelta(days=1, hours=2)),
                         [Template(vecs[1], "m")], seq=2)
    store.upsert_subject(Subject("wanted", "deny"), [Template(vecs[2], "m")], seq=3)
    lookup = store_lookup(store)

    def who(vec, now):
        obs = observe(1.0, _frame(vec), m, lookup, 5, now_utc=now)
        return {c.subject_id: c.list_type for c in obs.primary.matches}

    assert "boarding-now" in who(vecs[0], T0)
    assert "boarding-now" not in who(vecs[0], T0 + timedelta(hours=2))  # window closed: days offline or not
    assert "boarding-now" not in who(vecs[0], T0 - timedelta(hours=3))  # clock jumped back before the window
    assert "tomorrow" not in who(vecs[1], T0)
    assert "tomorrow" in who(vecs[1], T0 + timedelta(days=1, minutes=5))
    assert who(vecs[2], T0)["wanted"] == "deny"
    store.revoke("wanted", seq=4)
    assert "wanted" not in who(vecs[2], T0)
    store.close()


def test_one_to_one_verify_only_for_a_valid_token_holder(tmp_path):
    v = np.ones(128, np.float32) / np.sqrt(128)
    store = WatchlistStore(tmp_path)
    m = Matcher(128, "m")
    store.set_listener(m, "m")
    store.upsert_subject(Subject("p1", "allow", None, T0 + timedelta(hours=1)), [Template(v, "m")], seq=1)
    lookup = store_lookup(store)
    ok = observe(1.0, _frame(v), m, lookup, 5, one_to_one_subject="p1", now_utc=T0)
    assert ok.primary.verify_score is not None and ok.primary.verify_score > 0.99
    late = observe(1.0, _frame(v), m, lookup, 5, one_to_one_subject="p1", now_utc=T0 + timedelta(hours=2))
    assert late.primary.verify_score is None
    store.close()
