"""The sync decoders under a seeded fuzz sample and hypothesis properties: every input ends in
a valid object that survives a round trip, or in the decoder's own error."""
from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.audit_chain import GENESIS_HASH, record_hash
from sync.fuzz import MUTATIONS, TARGETS, Target, check_frames, fuzz_one, run_fuzz
from sync.kvmsg import KVMsg, MalformedMessage
from sync.service_messages import MalformedRequest, Reply, decode_reply, decode_request, encode_reply

# Reason classes a 4,000-frame sample must reach: one or more per decoder, deep checks included.
EXPECTED_REASONS = (
    "kvmsg: a CHP key-value message has … frames, got …",
    "kvmsg: sequence frame must be … bytes, got …",
    "kvmsg: UUID frame must be empty or … bytes, got …",
    "kvmsg: property line … is not name=value …",
    "icanhaz: subtree … is neither empty nor …",
    "subject_record: body is not msgpack",
    "subject_record: templates are not L2-normalised",
    "subject_record: template block must be n*dim*… = … bytes",
    "audit_batch: audit row …: prev_hash must be … lowercase hex digits",
    "audit_batch: audit row …: body is not JSON",
    "health_report: extra must be a map of at most … bytes",
    "health_report: models must map up to … model names to version strings",
    "service_reply: reply must carry ok, error and heads",
)


@pytest.fixture(scope="module")
def sample():
    return run_fuzz(frames=4000, seed=7)


def test_seeded_sample_has_no_crash_and_no_failed_round_trip(sample):
    assert sample.frames == 4000
    assert sample.crashes == [] and sample.roundtrip_failures == []
    assert sample.accepted + sample.rejected == 4000


def test_every_decoder_and_mutation_is_exercised_and_reasons_are_counted(sample):
    assert set(sample.by_target) == {t.name for t in TARGETS}
    for name, outcomes in sample.by_target.items():
        assert outcomes["accepted"] > 0 and outcomes["rejected"] > 0, name
    assert set(sample.by_mutation) == set(MUTATIONS)
    assert sample.by_mutation["none"]["rejected"] == 0  # frames straight from the encoders decode
    missing = [r for r in EXPECTED_REASONS if sample.rejected_by_reason[r] == 0]
    assert not missing, f"reason classes never hit: {missing}"
    assert sum(sample.rejected_by_reason.values()) == sample.rejected


def test_a_frame_is_reproduced_from_seed_and_index():
    assert fuzz_one(11, 123) == fuzz_one(11, 123)
    assert fuzz_one(11, 123).frames != fuzz_one(11, 124).frames


def test_an_unexpected_exception_is_reported_as_a_crash_with_its_frames():
    def brittle(frames):
        return {"k": 1}[frames[0].decode()]  # KeyError for anything but b"k"

    target = Target("brittle", brittle, ValueError, lambda rng: [b"k"], lambda obj: [b"k"], 16, False)
    out = check_frames(target, [b"zz"])
    assert out.result == "exception" and "KeyError" in out.reason and out.frames == [b"zz"]


def test_nul_in_a_property_name_is_refused():
    """Found by the fuzzer: accepted, but the encoder cannot send it on."""
    with pytest.raises(MalformedMessage, match="name=value"):
        KVMsg.from_frames([b"/lane/L1/p-1", b"\x00" * 7 + b"\x01", b"", b"a\x00b=1\n", b""])


@pytest.mark.parametrize("body", ['{"a":NaN}', '{"a":-Infinity}', '{"a":1e999}'])
def test_audit_body_with_a_non_finite_number_is_refused(body):
    """Found by the fuzzer: the chain's canonical JSON cannot hash such a body, so the central
    could never verify or re-export the record it had stored."""
    ts, prev = "2026-11-23T13:16:48.123456Z", GENESIS_HASH
    digest = record_hash(1, ts, prev, {"a": 1})
    frame = msgpack.packb({"t": "audit", "gate": "G1", "rid": 1, "first": 1, "last": 1,
                           "rows": [[1, ts, prev, digest, body]]}, use_bin_type=True)
    with pytest.raises(MalformedRequest, match="not JSON"):
        decode_request(frame)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=7))
def test_kvmsg_decode_returns_a_re_encodable_message_or_refuses(frames):
    try:
        msg = KVMsg.from_frames(frames)
    except MalformedMessage:
        return
    assert KVMsg.from_frames(msg.frames()) == msg


_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                     st.floats(), st.text(max_size=70), st.binary(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                       max_leaves=20)
_reply_maps = st.fixed_dictionaries({}, optional={"rid": _values, "ok": _values, "error": _values,
                                                  "durable": _values, "heads": _values})


@settings(max_examples=300, deadline=None)
@given(_reply_maps)
def test_reply_decode_returns_a_re_encodable_reply_or_refuses(obj):
    try:
        reply = decode_reply(msgpack.packb(obj, use_bin_type=True))
    except MalformedRequest:
        return
    assert isinstance(reply, Reply)
    assert decode_reply(encode_reply(reply)) == reply


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40).map(lambda s: s if s else "{}"))
def test_audit_body_text_is_either_a_finite_json_object_or_refused(body):
    ts, prev = "2026-11-23T13:16:48.123456Z", GENESIS_HASH
    frame = msgpack.packb({"t": "audit", "gate": "G1", "rid": 1, "first": 1, "last": 1,
                           "rows": [[1, ts, prev, "0" * 64, body]]}, use_bin_type=True)
    try:
        batch = decode_request(frame)
    except MalformedRequest:
        return
    json.dumps(batch.rows[0].body, allow_nan=False)  # the chain can hash what was accepted
