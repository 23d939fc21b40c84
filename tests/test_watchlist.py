"""The watchlist store on real SQLite files: updates, revocation, expiry, snapshots,
persistence, the matcher listener, and templates sealed at rest."""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from gate.sqlite_store import InsecureFileError
from gate.watchlist import WATCHLIST_DB_NAME, Subject, WatchlistStore
from gate.watchlist_sync import WatchlistSyncSink
from sync.interfaces import WatchlistSink
from sync.subject_record import SubjectRecord, decode_record, encode_record
from sync.template_crypto import TemplateCipher, TemplateIntegrityError, TemplateKeyError
from vision.types import Template

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MODEL = "mobilefacenet-128"
OTHER_MODEL = "arcface-r50-512"
_rng = np.random.default_rng(7)


def unit(dim: int = 128) -> np.ndarray:
    v = _rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def templates(n: int, model: str = MODEL, dim: int = 128) -> list[Template]:
    return [Template(vector=unit(dim), model_id=model) for _ in range(n)]


def subject(sid: str, list_type: str = "allow", **kw) -> Subject:
    return Subject(subject_id=sid, list_type=list_type, **kw)


def db_bytes(directory: Path) -> bytes:
    """Everything SQLite keeps on disk for the watchlist: main file plus WAL."""
    out = b""
    for suffix in ("", "-wal"):
        path = directory / (WATCHLIST_DB_NAME + suffix)
        if path.exists():
            out += path.read_bytes()
    return out


def raw(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(directory / WATCHLIST_DB_NAME, isolation_level=None)


class RecordingMatcher:
    """Holds what a matcher would hold; satisfies gate.watchlist.MatcherListener."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}

    def add(self, subject_id: str, vectors: np.ndarray) -> None:
        self.vectors[subject_id] = np.array(vectors)

    def remove(self, subject_id: str) -> None:
        self.vectors.pop(subject_id, None)


@pytest.fixture
def store(tmp_path):
    with WatchlistStore(tmp_path) as s:
        yield s


def assert_same_templates(got, want) -> None:
    assert [t.model_id for t in got] == [t.model_id for t in want]
    for g, w in zip(got, want, strict=True):
        assert g.vector.dtype == np.float32
        np.testing.assert_array_equal(g.vector, w.vector)


# ---- basic round trip and persistence ----------------------------------------------------

def test_upsert_get_and_persistence_across_reopen(tmp_path):
    alice = subject("p-0001", valid_from=NOW - DAY, valid_until=NOW + DAY, scopes={"lane:L1", "flight:VN123"})
    alice_t = templates(2) + templates(1, OTHER_MODEL, 512)
    with WatchlistStore(tmp_path) as store:
        assert store.sequence() == 0 and store.model_id() is None
        assert store.upsert_subject(alice, alice_t, seq=11)
        assert store.upsert_subject(subject("p-0002", "deny"), templates(1), seq=12)
        store.set_model_id(MODEL)
        entry = store.get("p-0001")
        assert entry.subject == alice and entry.updated_seq == 11 and not entry.revoked
        want = sorted(alice_t, key=lambda t: t.model_id)  # stored order: model, then index
        assert_same_templates(entry.templates, want)
    with WatchlistStore(tmp_path) as store:
        assert store.sequence() == 12 and store.model_id() == MODEL
        entry = store.get("p-0001")
        assert entry.subject == alice
        assert_same_templates(entry.templates, sorted(alice_t, key=lambda t: t.model_id))
        assert store.get("p-0002").subject.list_type == "deny"
        assert store.get("nobody") is None


def test_upsert_replaces_templates_and_bad_input_loses_nothing(store):
    store.upsert_subject(subject("p-1"), templates(3), seq=1)
    new = templates(1)
    assert store.upsert_subject(subject("p-1", scopes={"line:2"}), new, seq=2)
    entry = store.get("p-1")
    assert_same_templates(entry.templates, new)
    assert entry.subject.scopes == frozenset({"line:2"})
    store.upsert_subject(subject("p-2"), templates(1), seq=3)

    nan = unit()
    nan[3] = np.nan
    bad_calls = [
        (lambda: store.upsert_subject(subject("p-1"), [Template(nan, MODEL)], seq=9), "non-finite"),
        (lambda: store.upsert_subject(subject("p-1"), [Template(unit() * 3, MODEL)], seq=9), "L2-normalised"),
        (lambda: store.upsert_subject(subject("p-1"), [Template(unit(64), MODEL)], seq=9), "128-d"),
        (lambda: store.upsert_subject(subject("p-1"), [Template(unit()[None, :], MODEL)], seq=9), "shape"),
        (lambda: store.upsert_subject(subject("p-1"), [Template(unit(), "")], seq=9), "model id"),
        (lambda: store.upsert_subject(subject("p-1"), templates(1) + templates(1, MODEL, 64), seq=9),
         "different sizes"),
        (lambda: store.upsert_subject(subject("p-1"), templates(1), seq=-1), "sequence"),
        (lambda: subject("p-1", scopes={"L1"}), "kind:value"),
        (lambda: subject("p-1", scopes="lane:L1"), "one string"),
        (lambda: subject("p-1", "vip"), "list_type"),
        (lambda: subject("p-1", valid_until=datetime(2027, 1, 1)), "timezone-aware"),
        (lambda: subject("p-1", valid_from=NOW, valid_until=NOW), "not before"),
        (lambda: subject(""), "non-empty"),
    ]
    for call, message in bad_calls:
        with pytest.raises((ValueError, TypeError), match=message):
            call()
    entry = store.get("p-1")
    assert_same_templates(entry.templates, new)
    assert entry.updated_seq == 2 and store.sequence() == 3


def test_stale_updates_are_ignored(store):
    first = templates(1)
    assert store.upsert_subject(subject("p-1"), first, seq=5)
    assert not store.upsert_subject(subject("p-1", "deny"), templates(1), seq=4)
    assert not store.upsert_subject(subject("p-1", "deny"), templates(1), seq=5)
    entry = store.get("p-1")
    assert entry.subject.list_type == "allow" and entry.updated_seq == 5
    assert_same_templates(entry.templates, first)
    assert store.sequence() == 5


def test_sequence_survives_and_never_goes_back(tmp_path):
    with WatchlistStore(tmp_path) as store:
        store.set_sequence(40)
        with pytest.raises(ValueError, match="back from 40"):
            store.set_sequence(39)
    with WatchlistStore(tmp_path) as store:
        assert store.sequence() == 40


# ---- revocation, validity, expiry --------------------------------------------------------

def test_revoke_deletes_templates_and_keeps_a_tombstone(tmp_path, store):
    matcher = RecordingMatcher()
    store.set_listener(matcher, MODEL)
    store.upsert_subject(subject("p-1", scopes={"lane:L1"}), templates(2), seq=1)
    store.upsert_subject(subject("p-2"), templates(1), seq=2)
    assert set(matcher.vectors) == {"p-1", "p-2"}

    assert store.revoke("p-1", seq=3)
    entry = store.get("p-1")
    assert entry.revoked and entry.templates == () and entry.updated_seq == 3
    assert not store.is_valid("p-1", NOW)
    assert set(matcher.vectors) == {"p-2"}
    conn = raw(tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM templates WHERE subject_id = 'p-1'").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM scopes WHERE subject_id = 'p-1'").fetchone() == (0,)
    conn.close()

    # A late re-delivery of the old enrolment cannot bring the subject back ...
    assert not store.upsert_subject(subject("p-1"), templates(1), seq=1)
    assert store.get("p-1").revoked and "p-1" not in matcher.vectors
    # ... a newer enrolment can.
    assert store.upsert_subject(subject("p-1"), templates(1), seq=4)
    assert not store.get("p-1").revoked and "p-1" in matcher.vectors
    # Unknown or stale revokes change nothing but the sequence.
    assert not store.revoke("ghost", seq=9)
    assert not store.revoke("p-1", seq=4)
    assert store.sequence() == 9 and not store.get("p-1").revoked


def test_validity_windows_and_scopes():
    s = subject("p-1", valid_from=NOW, valid_until=NOW + DAY, scopes={"lane:L1", "flight:VN123", "flight:VN124"})
    assert not s.is_valid(NOW - timedelta(microseconds=1))
    assert s.is_valid(NOW) and s.is_valid(NOW + DAY - timedelta(microseconds=1))
    assert not s.is_valid(NOW + DAY)
    assert s.in_scope({"lane:L1", "flight:VN124", "line:2"})
    assert not s.in_scope({"lane:L2", "flight:VN124"})  # wrong lane
    assert not s.in_scope({"lane:L1"})  # the lane serves no flight of this subject
    assert subject("p-2").in_scope(set()) and subject("p-2").is_valid(NOW)


def test_is_valid_uses_the_stored_window(store):
    store.upsert_subject(subject("p-1", valid_from=NOW + HOUR), templates(1), seq=1)
    assert not store.is_valid("p-1", NOW)
    assert store.is_valid("p-1", NOW + 2 * HOUR)
    assert not store.is_valid("nobody", NOW)


def test_purge_expired_removes_rows_and_bytes_from_disk(tmp_path):
    gone_t = templates(1)
    with WatchlistStore(tmp_path) as store:
        store.upsert_subject(subject("p-gone", valid_until=NOW - HOUR), gone_t, seq=1)
        store.upsert_subject(subject("p-revoked", valid_until=NOW - HOUR), templates(1), seq=2)
        store.revoke("p-revoked", seq=3)
        store.upsert_subject(subject("p-stays", valid_until=NOW + HOUR), templates(1), seq=4)
        store.upsert_subject(subject("p-forever"), templates(1), seq=5)
    secret = gone_t[0].vector.astype("<f4").tobytes()
    assert secret in db_bytes(tmp_path)  # plaintext store: the vector is on disk before the purge
    matcher = RecordingMatcher()
    with WatchlistStore(tmp_path) as store:
        store.set_listener(matcher, MODEL)
        for active in store.iter_active(NOW - 2 * HOUR, MODEL):
            matcher.add(active.subject_id, active.vectors)
        assert set(matcher.vectors) == {"p-gone", "p-stays", "p-forever"}
        # This SQLite build may already default to secure_delete, so also check the store asks for it.
        assert store._file.writer.execute("PRAGMA secure_delete").fetchone() == (1,)
        assert store.purge_expired(NOW) == ["p-gone"]
        assert set(matcher.vectors) == {"p-stays", "p-forever"}
        assert store.get("p-gone") is None and store.get("p-revoked") is None
        assert secret not in db_bytes(tmp_path)
        assert store.purge_expired(NOW) == []
    conn = raw(tmp_path)
    assert conn.execute("SELECT subject_id FROM subjects ORDER BY 1").fetchall() == [("p-forever",), ("p-stays",)]
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_iter_active_filters_by_model_and_window(store, caplog):
    a = templates(2)
    store.upsert_subject(subject("p-a"), a, seq=1)
    store.upsert_subject(subject("p-b", "deny", valid_from=NOW + DAY),
                         templates(1) + templates(2, OTHER_MODEL, 512), seq=2)
    store.upsert_subject(subject("p-old", valid_until=NOW - HOUR), templates(1), seq=3)
    store.upsert_subject(subject("p-c"), templates(1, OTHER_MODEL, 512), seq=4)
    store.upsert_subject(subject("p-r"), templates(1), seq=5)
    store.revoke("p-r", seq=6)
    with caplog.at_level(logging.WARNING, logger="gate.watchlist"):
        active = {s.subject_id: s for s in store.iter_active(NOW, MODEL)}
    assert set(active) == {"p-a", "p-b"}  # p-b's window opens later: the decision checks it
    assert active["p-b"].list_type == "deny"
    assert active["p-a"].vectors.shape == (2, 128) and active["p-a"].vectors.dtype == np.float32
    np.testing.assert_array_equal(active["p-a"].vectors, np.stack([t.vector for t in a]))
    assert f"skipped 3 watchlist templates of model {OTHER_MODEL}" in caplog.text
    assert f"1 active watchlist subjects have no {MODEL} template" in caplog.text
    assert {s.subject_id for s in store.iter_active(NOW, OTHER_MODEL)} == {"p-b", "p-c"}


def test_attaching_a_matcher_records_its_model_for_the_next_start(tmp_path):
    class Listener:
        def add(self, subject_id, vectors): ...

        def remove(self, subject_id): ...

    with WatchlistStore(tmp_path) as store:
        assert store.model_id() is None
        store.set_listener(Listener(), MODEL)
    with WatchlistStore(tmp_path, read_only=True) as store:
        assert store.model_id() == MODEL
        store.set_listener(Listener(), OTHER_MODEL)  # a read-only view records nothing
    with WatchlistStore(tmp_path) as store:
        assert store.model_id() == MODEL
        store.set_listener(Listener(), OTHER_MODEL)
        assert store.model_id() == OTHER_MODEL


def test_stats(store):
    store.upsert_subject(subject("a1", scopes={"lane:L1"}), templates(2), seq=1)
    store.upsert_subject(subject("a2", scopes={"lane:L1", "flight:VN123"}, valid_until=NOW + HOUR), templates(1), seq=2)
    store.upsert_subject(subject("a3", valid_from=NOW + DAY), templates(1, OTHER_MODEL, 512), seq=3)
    store.upsert_subject(subject("d1", "deny"), templates(1), seq=4)
    store.upsert_subject(subject("x1", valid_until=NOW - HOUR), templates(1), seq=5)
    store.upsert_subject(subject("r1"), templates(1), seq=6)
    store.revoke("r1", seq=7)
    store.set_model_id(MODEL)
    s = store.stats(NOW, expiring_within=DAY)
    assert s.active_by_list_type == {"allow": 3, "deny": 1}
    assert s.active_by_scope == {"lane:L1": 2, "flight:VN123": 1}
    assert s.active_unscoped == 2
    assert (s.not_yet_valid, s.expiring_soon, s.expired_unpurged, s.revoked) == (1, 1, 1, 1)
    assert s.templates_by_model == {MODEL: 5, OTHER_MODEL: 1}
    assert (s.sequence, s.model_id) == (7, MODEL)


# ---- snapshots ---------------------------------------------------------------------------

def test_replace_all_swaps_atomically_and_rolls_back_on_failure(store):
    matcher = RecordingMatcher()
    store.set_listener(matcher, MODEL)
    for i in range(3):
        store.upsert_subject(subject(f"old-{i}"), templates(1), seq=10 + i)
    store.revoke("old-2", seq=13)

    def broken_snapshot():
        yield subject("new-0"), templates(1)
        yield subject("new-1"), templates(1)
        raise ConnectionError("central went away mid-snapshot")

    with pytest.raises(ConnectionError):
        store.replace_all(broken_snapshot(), seq=100)
    with pytest.raises(ValueError, match="twice"):
        store.replace_all([(subject("dup"), templates(1)), (subject("dup"), templates(1))], seq=100)
    with pytest.raises(ValueError, match="128-d"):
        store.replace_all([(subject("n1"), templates(1)), (subject("n2"), templates(1, MODEL, 64))], seq=100)
    assert store.sequence() == 13 and store.get("old-0") is not None and store.get("new-0") is None
    assert set(matcher.vectors) == {"old-0", "old-1"}

    snapshot = [(subject(f"new-{i}", "deny" if i == 0 else "allow"), templates(2)) for i in range(4)]
    snapshot.append((subject("new-other"), templates(1, OTHER_MODEL, 512)))
    assert store.replace_all(iter(snapshot), seq=7) == 5  # a snapshot may reset the sequence
    assert store.sequence() == 7
    assert store.get("old-0") is None and store.get("old-2") is None  # tombstones go too
    assert set(matcher.vectors) == {f"new-{i}" for i in range(4)}
    for s, ts in snapshot[:4]:
        np.testing.assert_array_equal(matcher.vectors[s.subject_id], np.stack([t.vector for t in ts]))


def test_readers_see_old_or_new_snapshot_never_a_mix(tmp_path, store):
    for i in range(50):
        store.upsert_subject(subject(f"old-{i:03d}"), templates(1), seq=i + 1)
    seen: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                seen.add(store.stats(NOW).active_by_list_type["allow"])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        store.replace_all(((subject(f"new-{i:03d}"), templates(1)) for i in range(400)), seq=1000)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert seen <= {50, 400} and 50 in seen


# ---- listener ----------------------------------------------------------------------------

def test_listener_tracks_the_active_set(store):
    matcher = RecordingMatcher()
    store.upsert_subject(subject("before"), templates(1), seq=1)
    for active in store.iter_active(NOW, MODEL):  # start-up load, then live changes
        matcher.add(active.subject_id, active.vectors)
    store.set_listener(matcher, MODEL)
    store.upsert_subject(subject("p-1"), templates(2), seq=2)
    store.upsert_subject(subject("p-2"), templates(1), seq=3)
    store.upsert_subject(subject("p-1"), templates(3), seq=4)  # update replaces in place
    store.upsert_subject(subject("p-2"), templates(1, OTHER_MODEL, 512), seq=5)  # no vectors for this matcher
    store.upsert_subject(subject("p-3", valid_until=NOW - HOUR), templates(1), seq=6)
    store.purge_expired(NOW)
    expected = {a.subject_id: a.vectors for a in store.iter_active(NOW, MODEL)}
    assert set(matcher.vectors) == set(expected) == {"before", "p-1"}
    for sid, vectors in expected.items():
        np.testing.assert_array_equal(matcher.vectors[sid], vectors)
    assert matcher.vectors["p-1"].shape == (3, 128)
    store.set_listener(None)
    store.revoke("p-1", seq=7)
    assert "p-1" in matcher.vectors  # detached listeners hear nothing
    with pytest.raises(ValueError, match="model id"):
        store.set_listener(matcher)


# ---- files -------------------------------------------------------------------------------

def test_files_are_owner_only_and_loose_ones_refused(tmp_path):
    directory = tmp_path / "state"
    with WatchlistStore(directory) as store:
        store.upsert_subject(subject("p-1"), templates(1), seq=1)
        for name in (WATCHLIST_DB_NAME, WATCHLIST_DB_NAME + "-wal", WATCHLIST_DB_NAME + "-shm"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    os.chmod(directory / WATCHLIST_DB_NAME, 0o640)
    with pytest.raises(InsecureFileError, match="owner-only"):
        WatchlistStore(directory)


def test_refuses_a_database_of_another_schema(tmp_path):
    with WatchlistStore(tmp_path):
        pass
    conn = raw(tmp_path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(ValueError, match="schema '99'"):
        WatchlistStore(tmp_path)


# ---- templates at rest -------------------------------------------------------------------

def test_key_file_is_private_and_checked(tmp_path):
    key_path = tmp_path / "keys" / "templates.key"
    key_path.parent.mkdir(mode=0o700)
    cipher = TemplateCipher.create_key_file(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600 and len(key_path.read_bytes()) == 32
    assert TemplateCipher.from_key_file(key_path).key_id == cipher.key_id
    assert TemplateCipher.load_or_create(key_path).key_id == cipher.key_id
    with pytest.raises(FileExistsError):
        TemplateCipher.create_key_file(key_path)  # never overwrites a key
    os.chmod(key_path, 0o644)
    with pytest.raises(InsecureFileError):
        TemplateCipher.from_key_file(key_path)
    short = tmp_path / "keys" / "short.key"
    short.write_bytes(b"x" * 16)
    os.chmod(short, 0o600)
    with pytest.raises(TemplateKeyError, match="exactly 32"):
        TemplateCipher.from_key_file(short)


def test_sealed_templates_round_trip_and_never_hit_disk_in_clear(tmp_path):
    cipher = TemplateCipher.create_key_file(tmp_path / "t.key")
    alice_t = templates(2)
    db_dir = tmp_path / "db"
    with WatchlistStore(db_dir, cipher=cipher) as store:
        store.upsert_subject(subject("p-1"), alice_t, seq=1)
        assert_same_templates(store.get("p-1").templates, alice_t)
    on_disk = db_bytes(db_dir)
    for t in alice_t:
        assert t.vector.astype("<f4").tobytes() not in on_disk
    with WatchlistStore(db_dir, cipher=TemplateCipher.from_key_file(tmp_path / "t.key")) as store:
        active = list(store.iter_active(NOW, MODEL))
        np.testing.assert_array_equal(active[0].vectors, np.stack([t.vector for t in alice_t]))


def test_a_copied_database_without_the_key_yields_no_vectors(tmp_path):
    cipher = TemplateCipher.create_key_file(tmp_path / "t.key")
    with WatchlistStore(tmp_path / "gate", cipher=cipher) as store:
        store.upsert_subject(subject("p-1", "deny"), templates(2), seq=1)
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    shutil.copy2(tmp_path / "gate" / WATCHLIST_DB_NAME, stolen / WATCHLIST_DB_NAME)
    with WatchlistStore(stolen) as thief:
        assert thief.get("p-1", with_templates=False).subject.list_type == "deny"  # metadata only
        with pytest.raises(TemplateKeyError, match="no key was given"):
            list(thief.iter_active(NOW, MODEL))
        with pytest.raises(TemplateKeyError):
            thief.get("p-1")
        with pytest.raises(TemplateKeyError, match="sealed with key"):
            thief.upsert_subject(subject("p-2"), templates(1), seq=2)
    with WatchlistStore(stolen, cipher=TemplateCipher.create_key_file(tmp_path / "other.key")) as thief:
        with pytest.raises(TemplateKeyError, match="not with the given key"):
            list(thief.iter_active(NOW, MODEL))


def _swap_blobs(directory: Path, a: str, b: str) -> None:
    conn = raw(directory)
    va = conn.execute("SELECT vector FROM templates WHERE subject_id = ?", [a]).fetchone()[0]
    vb = conn.execute("SELECT vector FROM templates WHERE subject_id = ?", [b]).fetchone()[0]
    conn.execute("UPDATE templates SET vector = ? WHERE subject_id = ?", [vb, a])
    conn.execute("UPDATE templates SET vector = ? WHERE subject_id = ?", [va, b])
    conn.close()


def test_blobs_swapped_between_subjects_are_detected(tmp_path):
    cipher = TemplateCipher.create_key_file(tmp_path / "t.key")
    db_dir = tmp_path / "db"
    with WatchlistStore(db_dir, cipher=cipher) as store:
        store.upsert_subject(subject("p-allow"), templates(1), seq=1)
        store.upsert_subject(subject("p-deny", "deny"), templates(1), seq=2)
    _swap_blobs(db_dir, "p-allow", "p-deny")
    with WatchlistStore(db_dir, cipher=cipher) as store:
        with pytest.raises(TemplateIntegrityError, match="p-allow"):
            store.get("p-allow")
        with pytest.raises(TemplateIntegrityError):
            list(store.iter_active(NOW, MODEL))
    conn = raw(db_dir)
    conn.execute("UPDATE templates SET model_id = ? WHERE subject_id = 'p-allow'", [OTHER_MODEL])
    conn.close()
    with WatchlistStore(db_dir, cipher=cipher) as store:
        with pytest.raises(TemplateIntegrityError):
            list(store.iter_active(NOW, OTHER_MODEL))


def test_plaintext_database_is_rekeyed_by_a_snapshot(tmp_path):
    plain_t = templates(1)
    with WatchlistStore(tmp_path) as store:
        store.upsert_subject(subject("p-1"), plain_t, seq=1)
    cipher = TemplateCipher.create_key_file(tmp_path / "t.key")
    with WatchlistStore(tmp_path, cipher=cipher) as store:
        with pytest.raises(TemplateKeyError, match="plaintext"):
            store.get("p-1")
        with pytest.raises(TemplateKeyError):
            store.upsert_subject(subject("p-2"), templates(1), seq=2)
        store.replace_all([(subject("p-1"), plain_t)], seq=5)
        assert_same_templates(store.get("p-1").templates, plain_t)
    assert plain_t[0].vector.astype("<f4").tobytes() not in db_bytes(tmp_path)


# ---- the sync agent's view (one hashmap key per scope and subject) -----------------------

def record(sid: str, list_type: str = "allow", n: int = 1, **window) -> SubjectRecord:
    rec = SubjectRecord(subject_id=sid, list_type=list_type, model_id=MODEL,
                        templates=np.stack([unit() for _ in range(n)]), **window)
    return decode_record(encode_record(rec))  # exactly what arrives off the wire


def test_sync_sink_folds_keys_into_subjects(store):
    sink = WatchlistSyncSink(store)
    assert isinstance(sink, WatchlistSink)
    matcher = RecordingMatcher()
    store.set_listener(matcher, MODEL)
    until = int((NOW + DAY).timestamp())
    p7 = record("p-7", n=2, valid_until=until)
    sink.apply_upsert("/lane/L1/p-7", p7, seq=1)
    sink.apply_upsert("/flight/VN123/p-7", p7, seq=2)
    entry = store.get("p-7")
    assert entry.subject.scopes == {"lane:L1", "flight:VN123"}
    assert entry.subject.valid_until == NOW + DAY
    np.testing.assert_array_equal(np.stack([t.vector for t in entry.templates]), p7.templates)
    assert sink.stored_seq() == 2

    sink.apply_delete("/lane/L1/p-7", seq=3)
    assert store.get("p-7").subject.scopes == {"flight:VN123"} and "p-7" in matcher.vectors
    sink.apply_delete("/flight/VN123/p-7", seq=4)  # last scope gone: revoked
    assert store.get("p-7").revoked and "p-7" not in matcher.vectors
    with pytest.raises(ValueError, match="carries a record"):
        sink.apply_upsert("/lane/L1/p-8", record("p-9"), seq=5)
    with pytest.raises(ValueError):
        sink.apply_delete("/bogus/p-7", seq=5)

    sink.replace_all([("/lane/L1/p-1", record("p-1", "deny")), ("/lane/L1/p-2", record("p-2")),
                      ("/flight/VN9/p-1", record("p-1", "deny"))], seq=50)
    assert sink.stored_seq() == 50 and store.get("p-7") is None
    assert store.get("p-1").subject.scopes == {"lane:L1", "flight:VN9"}
    assert set(matcher.vectors) == {"p-1", "p-2"}
