"""Wire formats: CHP frames, scoped keys, subject record bodies, audit/health messages."""
from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.audit_chain import GENESIS_HASH, AuditRow, record_hash
from sync.kvmsg import (
    KVMsg,
    MalformedMessage,
    decode_properties,
    encode_properties,
    hugz,
    icanhaz_frames,
    kthxbai,
    parse_icanhaz,
)
from sync.scopes import ScopeError, parse_scope, split_key
from sync.service_messages import (
    AuditBatch,
    HealthReport,
    MalformedRequest,
    Reply,
    decode_reply,
    decode_request,
    encode_audit_batch,
    encode_health,
    encode_reply,
)
from sync.subject_record import MalformedRecord, SubjectRecord, decode_record, encode_record, normalise_templates

prop_names = st.text(st.characters(blacklist_characters="=\n\x00", blacklist_categories=("Cs",)),
                     min_size=1, max_size=10)
prop_values = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=20)


@given(key=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60),
       seq=st.integers(0, 2**63 - 1), uuid=st.sampled_from([b"", bytes(range(16))]),
       props=st.dictionaries(prop_names, prop_values, max_size=4), body=st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_kvmsg_round_trips_through_five_frames(key, seq, uuid, props, body):
    msg = KVMsg(key=key, seq=seq, uuid=uuid, props=props, body=body)
    frames = msg.frames()
    assert len(frames) == 5 and len(frames[1]) == 8
    assert KVMsg.from_frames(frames) == msg


def test_kvmsg_frame_layout_matches_rfc12():
    msg = KVMsg(key="/lane/L1/p1", seq=258, uuid=bytes(16), props={"ttl": "30", "prev": "7"}, body=b"x")
    key, seq, uuid, props, body = msg.frames()
    assert key == b"/lane/L1/p1"
    assert seq == b"\x00\x00\x00\x00\x00\x00\x01\x02"  # 8 bytes, network order
    assert props == b"ttl=30\nprev=7\n"
    assert kthxbai(5, "/lane/L1/").frames() == [b"KTHXBAI", struct.pack("!Q", 5), b"", b"", b"/lane/L1/"]
    assert hugz(9).frames()[0] == b"HUGZ" and hugz(9).frames()[2:] == [b"", b"", b""]
    assert icanhaz_frames("/lane/L1/") == [b"ICANHAZ?", b"/lane/L1/"]


@pytest.mark.parametrize("frames, reason", [
    ([b"k", b"\0" * 8, b"", b""], "5 frames"),
    ([b"k", b"\0" * 8, b"", b"", b"", b""], "5 frames"),
    ([b"k", b"\0" * 7, b"", b"", b"v"], "8 bytes"),
    ([b"k", b"\0" * 8, b"\1" * 15, b"", b"v"], "UUID"),
    ([b"", b"\0" * 8, b"", b"", b"v"], "key"),
    ([b"\xff\xfe", b"\0" * 8, b"", b"", b"v"], "UTF-8"),
    ([b"k", b"\0" * 8, b"", b"no-equals-sign\n", b"v"], "name=value"),
    ([b"k", b"\xff" * 8, b"", b"", b"v"], "range"),
])
def test_kvmsg_refuses_malformed_frames_with_a_reason(frames, reason):
    with pytest.raises(MalformedMessage, match=reason):
        KVMsg.from_frames(frames)


def test_properties_and_icanhaz_are_strict():
    assert decode_properties(b"a=1\nb=x=y\n") == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError):
        encode_properties({"bad\nname": "1"})
    assert parse_icanhaz([b"ICANHAZ?", b""]) == ""
    assert parse_icanhaz([b"ICANHAZ?", b"/flight/BA1/"]) == "/flight/BA1/"
    for bad in ([b"ICANHAZ?"], [b"GIMME", b""], [b"ICANHAZ?", b"/lane/L1"], [b"ICANHAZ?", b"lane"]):
        with pytest.raises(MalformedMessage):
            parse_icanhaz(bad)


def test_scoped_keys():
    assert parse_scope("lane:L1") == "/lane/L1/" == parse_scope("/lane/L1/")
    assert split_key("/lane/L1/p-7") == ("/lane/L1/", "p-7")
    for bad in ("lane", "door:1", "lane:", "lane:a/b", "lane:has space"):
        with pytest.raises(ScopeError):
            parse_scope(bad)
    for bad in ("/lane/L1", "/lane/L1/p/x", "lane/L1/p", "/bus/1/p"):
        with pytest.raises(ScopeError):
            split_key(bad)


def _record(n=2, dim=128, **kw) -> SubjectRecord:
    rng = np.random.default_rng(1)
    values = dict(subject_id="p1", list_type="allow", model_id="m1",
                  templates=normalise_templates(rng.standard_normal((n, dim))), valid_from=100, valid_until=None)
    values.update(kw)
    return SubjectRecord(**values)


def test_subject_record_round_trip_is_compact():
    rec = _record()
    body = encode_record(rec)
    assert decode_record(body) == rec
    assert len(body) < 2 * 128 * 4 + 100
    assert decode_record(encode_record(_record(n=1, dim=4, list_type="deny", valid_until=5000))).valid_until == 5000


def _packed(**changes) -> bytes:
    obj = msgpack.unpackb(encode_record(_record(n=1, dim=4)), raw=False)
    obj.update(changes)
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("body, reason", [
    (b"\xc1", "msgpack"),
    (msgpack.packb([1, 2]), "map"),
    (_packed(v=2), "format"),
    (_packed(list="maybe"), "list type"),
    (_packed(n=2), "n\\*dim"),
    (_packed(tpl=np.full(4, np.nan, dtype="<f4").tobytes()), "NaN"),
    (_packed(tpl=np.full(4, 3.0, dtype="<f4").tobytes()), "normalised"),
    (_packed(vu="tomorrow"), "vu"),
])
def test_subject_record_refuses_bad_bodies(body, reason):
    with pytest.raises(MalformedRecord, match=reason):
        decode_record(body)


def test_normalise_templates_refuses_what_would_poison_a_matcher():
    for bad in (np.zeros((1, 8)), np.full((1, 8), np.inf), np.ones((0, 8)), np.ones((65, 8))):
        with pytest.raises(ValueError):
            normalise_templates(bad)
    out = normalise_templates(np.array([3.0, 4.0]))
    assert out.shape == (1, 2) and np.allclose(out, [[0.6, 0.8]])


def _chain(n: int) -> list[AuditRow]:
    rows, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        body = {"event": "decision", "score": 0.1 * seq, "name": "Zoë"}
        h = record_hash(seq, f"2026-01-01T00:00:{seq:02d}.000000Z", prev, body)
        rows.append(AuditRow(seq, f"2026-01-01T00:00:{seq:02d}.000000Z", prev, h, body))
        prev = h
    return rows


def test_audit_batch_round_trip_keeps_hashes_verifiable():
    batch = AuditBatch("G1", 42, tuple(_chain(3)))
    got = decode_request(encode_audit_batch(batch))
    assert got == batch
    assert all(record_hash(r.seq, r.ts, r.prev_hash, r.body) == r.hash for r in got.rows)


def test_audit_batch_refuses_inconsistent_headers_and_rows():
    good = msgpack.unpackb(encode_audit_batch(AuditBatch("G1", 1, tuple(_chain(3)))), raw=False)
    cases = [
        dict(first=2), dict(last=9), dict(rows=[]), dict(gate="bad/id"),
        dict(rows=[good["rows"][1], good["rows"][0]]),
        dict(rows=[[1, "t", "x" * 64, "0" * 64, "{}"]]),
        dict(rows=[[1, "t", "0" * 64, "0" * 64, "[]"]]),
        dict(t="delete-everything"),
    ]
    for change in cases:
        obj = dict(good, **change)
        with pytest.raises(MalformedRequest):
            decode_request(msgpack.packb(obj, use_bin_type=True))
    with pytest.raises(MalformedRequest):
        decode_request(b"\x00\x01garbage")


def test_health_and_reply_round_trip():
    report = HealthReport("G1", 7, "ok", "0.1.0", {"mobilefacenet": "1"}, 12, 3, "2026-01-01T00:00:00Z",
                          ("/lane/L1/",), {"lanes": 1})
    assert decode_request(encode_health(report)) == report
    reply = Reply(7, True, durable_seq=99, scope_heads={"/lane/L1/": 12})
    assert decode_reply(encode_reply(reply)) == reply
    with pytest.raises(MalformedRequest):
        decode_request(encode_health(HealthReport("G1", 7, "ok", "v", {"m": "1"}, -1, 0, None)))


def test_validity_times_a_gate_cannot_represent_are_rejected_at_decode():
    import msgpack
    import numpy as np
    import pytest

    from sync.subject_record import MalformedRecord, SubjectRecord, decode_record, encode_record

    v = np.ones((1, 4), np.float32) / 2.0
    good = encode_record(SubjectRecord("p1", "allow", "m", v, valid_from=0, valid_until=2_000_000_000))
    assert decode_record(good).valid_until == 2_000_000_000
    obj = msgpack.unpackb(good, raw=False)
    for bad in (-1, 10**15):
        obj["vu"] = bad
        with pytest.raises(MalformedRecord, match="Unix time"):
            decode_record(msgpack.packb(obj, use_bin_type=True))


def test_icanhaz_catch_up_frame_round_trip_and_refusals():
    from sync.kvmsg import parse_icanhaz_request

    assert parse_icanhaz_request(icanhaz_frames("/lane/L1/")) == ("/lane/L1/", None)
    assert parse_icanhaz_request(icanhaz_frames("/lane/L1/", 41)) == ("/lane/L1/", 41)
    for bad in ([b"ICANHAZ?", b"/lane/L1/", b"\0" * 7], [b"ICANHAZ?", b"", b"\0" * 8],
                [b"ICANHAZ?", b"/lane/L1/", b"\xff" * 8]):
        with pytest.raises(MalformedMessage):
            parse_icanhaz_request(bad)
