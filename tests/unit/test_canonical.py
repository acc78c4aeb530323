"""Digest canonicalisation (specs/arbiter.allium: OutputDigestIsCanonical)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.canonical import NotCanonical, _fallback, canonical, digest
from app.records import InputRecord, body, outcome, seal, unseal

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
    b = body(rec, idempotency_key="k", event_name="stock.adjust", domain_version="inventory/1",
             outcome=outcome("applied"), duplicate_of=None)
    a_out, b_out = seal(b, "a"), seal(b, "b")
    inst_a, dig_a, body_a = unseal(a_out)
    inst_b, dig_b, body_b = unseal(b_out)
    assert (inst_a, inst_b) == ("a", "b")
    assert dig_a == dig_b == digest(b)
    assert body_a == body_b == json.loads(b)
    assert canonical(body_a) == b  # the body is itself canonical
    other = body(rec, idempotency_key="k", event_name="stock.adjust", domain_version="inventory/1",
                 outcome=outcome("rejected", "insufficient_stock"), duplicate_of=None)
    assert digest(other) != dig_a
