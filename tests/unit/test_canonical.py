"""Digest canonicalisation (specs/arbiter.allium: OutputDigestIsCanonical)."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.canonical import (MAX_JSON_DEPTH, MAX_JSON_INT, MIN_JSON_INT, DuplicateMember, IntegerOutOfRange,
                           LoneSurrogate, NestedTooDeep, NotCanonical, _fallback, canonical,
                           digest, loads_strict)
from app.records import InputRecord, body, decode, outcome, seal, unseal
from app.registry import Rejection

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def test_key_order_does_not_matter():
    assert canonical({"b": 1, "a": {"d": 2, "c": 3}}) == canonical({"a": {"c": 3, "d": 2}, "b": 1})
    assert canonical({"b": 1, "a": 2}) == b'{"a":2,"b":1}'


def test_unicode_is_raw_utf8_and_stable():
    value = {"k": "é\u2028\U0001F600\x00\x1f\"\\"}
    out = canonical(value)
    assert "é".encode() in out and "\U0001F600".encode() in out
    assert json.loads(out) == value
    # escaped exactly as RFC 8259 requires, nothing else
    assert b"\\u0000" in out and b"\\u001f" in out and b'\\"' in out and b"\\\\" in out


def test_big_integers_have_a_canonical_form():
    big = 2**80 + 7
    out = canonical({"n": big, "m": -big})
    assert out == b'{"m":-1208925819614629174706183,"n":1208925819614629174706183}'
    assert canonical({"m": -big, "n": big}) == out


def test_floats_and_foreign_types_are_refused():
    for bad in ({"x": 1.0}, [1.5], {1: "a"}, {"s": {1, 2}}, b"bytes"):
        with pytest.raises(NotCanonical):
            canonical(bad)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fallback_encoder_matches_orjson_byte_for_byte(value):
    """The big-integer fallback must not change the bytes of values both encoders accept."""
    assert _fallback(value) == canonical(value)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_equal_values_give_equal_digests(value):
    roundtrip = json.loads(canonical(value))
    assert digest(canonical(roundtrip)) == digest(canonical(value))


def test_seal_digests_the_body_and_excludes_instance():
    """OutputDigestIsCanonical: equal digests mean equal outputs; instance is not digested."""
    rec = InputRecord(3, 17, 1_000, b"s1", b"{}")
    b = body(rec, stream_time=1_000, idempotency_key="k", client=None, event_name="stock.adjust", domain_version="inventory/1",
             outcome=outcome("applied"), duplicate_of=None)
    a_out, b_out = seal(b, "a"), seal(b, "b")
    inst_a, dig_a, body_a = unseal(a_out)
    inst_b, dig_b, body_b = unseal(b_out)
    assert (inst_a, inst_b) == ("a", "b")
    assert dig_a == dig_b == digest(b)
    assert body_a == body_b == json.loads(b)
    assert canonical(body_a) == b  # the body is itself canonical
    other = body(rec, stream_time=1_000, idempotency_key="k", client=None, event_name="stock.adjust", domain_version="inventory/1",
                 outcome=outcome("rejected", "insufficient_stock"), duplicate_of=None)
    assert digest(other) != dig_a


@pytest.mark.parametrize("raw", [
    b'{"a":1,"a":2}',
    b'{ "a" : 1 , "a" : 1 }',  # same value, still twice
    b'{"x":{"b":[{"c":1,"c":2}]}}',  # nested inside an array
    b'{"\\u0061":1,"a":2}',  # the same name behind an escape
])
def test_duplicate_member_names_are_refused(raw):
    """DuplicateMemberIsMalformed: any object naming a member twice, anywhere, whatever
    the spacing or escapes, is refused and the member is named."""
    with pytest.raises(DuplicateMember) as info:
        loads_strict(raw)
    assert info.value.name in {"a", "c"}


@given(st.recursive(st.none() | st.booleans() | st.integers(-10**15, 10**15) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=20))
@settings(max_examples=200, deadline=None)
def test_strict_loads_equals_orjson_without_duplicates(value):
    """DuplicateMemberIsMalformed: JSON without duplicates, compact or spaced, parses to
    what orjson gives."""
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    spaced = json.dumps(value, indent=1).encode()
    assert loads_strict(compact) == loads_strict(spaced) == value


def test_duplicate_envelope_member_is_a_malformed_record_naming_it():
    """DuplicateMemberIsMalformed: on the input topic the same bytes are a deterministic
    malformed_record rejection naming the member."""
    for value, member in [
        (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":{"delta":-5,"delta":5}}', "delta"),
        (b'{"idempotency_key":"k","idempotency_key":"j","event_name":"e","payload":{}}', "idempotency_key"),
        (b'{"idempotency_key":"k","event_name":"e","event_name":"f","payload":{}}', "event_name"),
    ]:
        got = decode(InputRecord(0, 0, 1, b"s1", value), 1)
        assert isinstance(got, Rejection) and got.reason == "malformed_record"
        assert f"member {member!r} appears twice" in got.detail


def test_nesting_beyond_the_limit_is_refused_by_rule():
    """DuplicateMemberIsMalformed: nesting deeper than MAX_JSON_DEPTH is refused by a
    rule of its own, so no parser's recursion limit (which depends on the caller's
    stack) decides; on the input topic it is a malformed_record."""
    assert loads_strict(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    assert loads_strict(b'["' + b"[" * 500 + b'"]') == ["[" * 500]  # brackets in a string are text
    for deep in (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
                 b'{"p":' + b'{"a":' * 1000 + b"1" + b"}" * 1001):
        with pytest.raises(NestedTooDeep):
            loads_strict(deep)
    value = (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":' + b"[" * 1000 + b"]" * 1000 + b"}")
    got = decode(InputRecord(0, 0, 1, b"s1", value), 1)
    assert isinstance(got, Rejection) and got.reason == "malformed_record"
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in got.detail


def test_outputs_stay_bounded_whatever_a_producer_sends():
    """UsherRejectsMalformedRecord, BadInputNeverStopsTheWorker: a record key over
    MAX_KEY_BYTES or an event name over MAX_EVENT_NAME makes the record malformed, and a
    detail text over MAX_DETAIL characters is cut and marked, so no output can outgrow
    what Kafka takes (a 250 KB key once made an output too large to produce, stopping
    the worker)."""
    from app.records import MAX_DETAIL, MAX_EVENT_NAME, MAX_KEY_BYTES

    envelope = b'{"idempotency_key":"k","event_name":"stock.adjust","payload":{}}'
    got = decode(InputRecord(0, 0, 1, b"\x01" * (MAX_KEY_BYTES + 1), envelope), 1)
    assert isinstance(got, Rejection) and got.detail == f"record key exceeds {MAX_KEY_BYTES} bytes"
    assert not isinstance(decode(InputRecord(0, 0, 1, b"k" * MAX_KEY_BYTES, envelope), 1), Rejection)
    long_name = b'{"idempotency_key":"k","event_name":"%s","payload":{}}' % (b"e" * (MAX_EVENT_NAME + 1))
    got = decode(InputRecord(0, 0, 1, b"k", long_name), 1)
    assert isinstance(got, Rejection) and got.detail == f"event_name exceeds {MAX_EVENT_NAME} characters"
    cut = outcome("rejected", "evaluation_error", "x" * 5000)["detail"]
    assert cut == "x" * MAX_DETAIL + "... (5000 characters)"
    assert outcome("rejected", "r", "y" * MAX_DETAIL)["detail"] == "y" * MAX_DETAIL
def test_copy_batch_records_stay_bounded_and_name_their_watermarks():
    """CopyBatchRecord: one record per batch, its copies in offset order with the digest
    of each canonical body embedded byte for byte, and the watermark after the batch;
    copies adding up to more than MAX_COPY_RECORD_BYTES go to further records, each
    with the watermark of the first copy it leaves to the next."""
    from agents.usher import Output
    from app.records import MAX_COPY_RECORD_BYTES, seal_batch

    def out(offset: int, size: int) -> Output:
        body = canonical({"input": {"partition": 2, "offset": offset}, "pad": "x" * size})
        return Output(2, offset, b"k", body, digest(body), "a")

    small = [out(o, 10) for o in range(5, 9)]
    (one,) = seal_batch("a", 2, 9, small)
    record = json.loads(one)
    assert (record["instance"], record["partition"], record["watermark"]) == ("a", 2, 9)
    assert [c["digest"] for c in record["copies"]] == [o.digest for o in small]
    assert [c["body"].encode() for c in record["copies"]] == [o.body for o in small]
    big = [out(o, MAX_COPY_RECORD_BYTES // 3) for o in range(10, 17)]
    records = [json.loads(r) for r in seal_batch("a", 2, 17, big)]
    assert len(records) == 4  # two bodies of a third of the limit (and a little) fit a record
    assert [json.loads(c["body"])["input"]["offset"] for r in records for c in r["copies"]] == list(range(10, 17))
    for r, following in zip(records, records[1:] + [None]):
        expected = 17 if following is None else json.loads(following["copies"][0]["body"])["input"]["offset"]
        assert r["watermark"] == expected
        assert sum(len(c["body"].encode()) for c in r["copies"]) <= MAX_COPY_RECORD_BYTES


def test_an_integer_beyond_64_bits_is_refused_by_name():
    """DuplicateMemberIsMalformed (an integer beyond 64 bits): orjson reads an integer literal outside -2**63 ..
    2**64 - 1 as a float, which the domain then refused as "must be an integer"; it is
    refused where the value is parsed, by name, the literal shortened in the detail.
    The range's ends read exactly; floats stay floats (the domain judges them); with a
    duplicate member too, the first the parser meets decides, the same way every time."""
    assert (MIN_JSON_INT, MAX_JSON_INT) == (-(2**63), 2**64 - 1)
    assert loads_strict(str(MAX_JSON_INT).encode()) == MAX_JSON_INT
    assert loads_strict(f"[{MIN_JSON_INT}, 1.5, 1e20]".encode()) == [MIN_JSON_INT, 1.5, 1e20]
    for literal in (str(MAX_JSON_INT + 1), str(MIN_JSON_INT - 1), "9" * 30):
        with pytest.raises(IntegerOutOfRange, match=f"the integer {literal} is outside the 64-bit range"):
            loads_strict(f'{{"p": {{"n": {literal}}}}}'.encode())
    for digits in (300, 309, 5000):  # from 309 digits on orjson says "infinity" first; int() stops at 4,300
        with pytest.raises(IntegerOutOfRange, match=rf"the integer 99999999999999999999\.\.\.99999999 \({digits} digits\)"):
            loads_strict(b'{"n": ' + b"9" * digits + b"}")
    with pytest.raises(orjson.JSONDecodeError, match="infinity"):  # a float beyond a double is no integer
        loads_strict(b"[1e400]")
    # past 64 brackets the nesting is not known to be shallow: orjson's words, never a
    # recursion limit's (which would depend on the caller's stack); nested that deep,
    # the nesting's
    with pytest.raises(orjson.JSONDecodeError, match="infinity"):
        loads_strict(b"[" + b"[1]," * 70 + b"9" * 400 + b"]")
    with pytest.raises(NestedTooDeep):
        loads_strict(b"[" * 70 + b"9" * 400 + b"]" * 70)
    with pytest.raises(IntegerOutOfRange):  # read before the object holding the duplicate closes
        loads_strict(b'{"q": 1, "q": ' + b"9" * 30 + b"}")
    with pytest.raises(DuplicateMember):  # that object closed before the integer is read
        loads_strict(b'[{"q": 1, "q": 2}, ' + b"9" * 30 + b"]")
    value = b'{"idempotency_key":"k","event_name":"stock.adjust","payload":{"delta":' + b"9" * 30 + b"}}"
    got = decode(InputRecord(0, 0, 1, b"s1", value), 1)
    assert isinstance(got, Rejection) and got.reason == "malformed_record"
    assert got.detail == ("record value is not I-JSON: the integer " + "9" * 30 + " is outside the 64-bit range "
                          f"docket reads exactly ({MIN_JSON_INT} to {MAX_JSON_INT})")


@pytest.mark.parametrize("value, detail", [
    (b"\xff\xfegarbage{", "record value is not UTF-8 (byte 0xff at offset 0)"),
    (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":"\xc3"}',
     "record value is not UTF-8 (byte 0xc3 at offset 62)"),
    # an encoded surrogate (U+D800): not UTF-8 (RFC 3629), though some decoders pass it
    (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":"\xed\xa0\x80"}',
     "record value is not UTF-8 (byte 0xed at offset 62)"),
    (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":"\xc3\xa9"', "record value is not JSON"),
    (b"\xef\xbb\xbf{}",  # a byte order mark: UTF-8, but not to be sent (RFC 8259, 8.1)
     "record value starts with a byte order mark (EF BB BF), which JSON sent between systems must not"),
    (b"", "record value is empty (an empty value is no JSON)"),
])
def test_a_value_that_is_not_utf8_says_so(value, detail):
    """UsherRejectsMalformedRecord: a record value that is not UTF-8 is rejected
    malformed_record with the first byte that is not, as the record key's check says
    its own; an empty value and one opening with a byte order mark say so; any other
    UTF-8 value the parser refuses is "not JSON". Before, all were "record value is
    not JSON" (the sixth fresh-user trial)."""
    got = decode(InputRecord(0, 0, 1, b"s1", value), 1)
    assert isinstance(got, Rejection) and (got.reason, got.detail) == ("malformed_record", detail)
    # the key's check names its first bad byte the same way
    got = decode(InputRecord(0, 0, 1, b"sku-\xe9", b"{}"), 1)
    assert got.detail == "record key is not UTF-8 (byte 0xe9 at offset 4)"


@pytest.mark.parametrize("value, detail", [
    (b"[" * 1500 + b"]" * 1500, "nested"),
    (b"[" * 30_000 + b"]" * 30_000, "nested"),  # 60 KB: under the size limit
    (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":' + b"[" * 2000 + b"]" * 2000 + b"}", "nested"),
    (b"[" * 2000, "nested"),  # not JSON either, but beyond the limit already
    (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":"' + b"[" * 3000 + b'"}x', "not JSON"),
    (b'{"idempotency_key":"k","event_name":"stock.adjust","payload":"\\"' + b"{" * 3000 + b'"}x', "not JSON"),
])
def test_nesting_beyond_the_parsers_limit_is_named_by_dockets_rule(value, detail):
    """DuplicateMemberIsMalformed: a value nested deeper than MAX_JSON_DEPTH is
    "nested deeper than 64 levels" however deep it goes: beyond the parser's own limit
    (orjson refuses 1,024 levels as "not JSON") too, and when something else is wrong
    with it as well; brackets inside strings count for nothing, so a value the parser
    refuses for another reason stays "not JSON". Before, 1,025 levels and more were
    "record value is not JSON" (the sixth fresh-user trial)."""
    got = decode(InputRecord(0, 0, 1, b"s1", value), 1)
    assert isinstance(got, Rejection) and got.reason == "malformed_record"
    if detail == "nested":
        assert got.detail == f"record value is not I-JSON: arrays and objects are nested deeper than {MAX_JSON_DEPTH} levels"
    else:
        assert got.detail == "record value is not JSON"


@pytest.mark.parametrize(("value", "escape", "offset"), [
    (rb'["\ud800"]', r"\ud800", 2),
    (rb'["\uDBFF x"]', r"\uDBFF", 2),  # a high half followed by a character, not its low half
    (rb'["\udc00"]', r"\udc00", 2),  # a low half alone
    (rb'["\ud800\u0041"]', r"\ud800", 2),  # followed by an escape that is no low half
    (rb'["\ud83d\ude00\udc00"]', r"\udc00", 14),  # a whole pair, then a low half alone
    (rb'["\\\ud800"]', r"\ud800", 4),  # an escaped backslash, then the escape
    (rb'["ok", "x\ud800', r"\ud800", 9),  # the string not even closed: still this escape's fault
])
def test_a_lone_surrogate_escape_is_named_by_dockets_rule(value, escape, offset) -> None:
    """DuplicateMemberIsMalformed: a string escaping half of a UTF-16 surrogate pair
    alone is refused as not I-JSON, naming the escape and its byte offset; on Kafka the
    detail is "record value is not I-JSON: a string holds the escape ...". Before, it
    was "record value is not JSON" (RFC 8259's grammar allows the escape; RFC 7493,
    section 2.1 forbids it; a fresh-user trial)."""
    with pytest.raises(LoneSurrogate) as caught:
        loads_strict(value)
    assert caught.value.reason == "lone_surrogate"
    assert str(caught.value).startswith(f"a string holds the escape {escape} at byte offset {offset}: half of a "
                                        "UTF-16 surrogate pair alone")
    envelope = b'{"idempotency_key":"k","event_name":"stock.adjust","payload":'
    got = decode(InputRecord(0, 0, 1, b"s1", envelope + value + b"}"), 1)
    assert isinstance(got, Rejection) and got.detail.startswith(
        f"record value is not I-JSON: a string holds the escape {escape} at byte offset {offset + len(envelope)}")


@pytest.mark.parametrize("value", [rb'["\ud83d\ude00"]', rb'["\\ud800"]', rb'["\\\\ud800"]'])
def test_a_whole_surrogate_pair_or_an_escaped_backslash_is_no_lone_surrogate(value) -> None:
    """DuplicateMemberIsMalformed: a pair whole is one character, and a backslash
    escaped before "ud800" leaves it plain text: both parse."""
    assert isinstance(loads_strict(value), list)


def test_bytes_that_are_not_utf8_stay_the_utf8_checks_beside_a_lone_surrogate() -> None:
    """UsherRejectsMalformedRecord: a value that is not UTF-8 is "not UTF-8 (byte 0xff
    at offset n)", checked before the escapes are, whatever else it holds."""
    value = rb'{"idempotency_key":"k","event_name":"stock.adjust","payload":["\ud800' + b'\xff"]}'
    with pytest.raises(orjson.JSONDecodeError):
        loads_strict(value)
    got = decode(InputRecord(0, 0, 1, b"s1", value), 1)
    assert got.detail == "record value is not UTF-8 (byte 0xff at offset 69)"
