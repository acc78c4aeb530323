"""Canonical serialisation: the bytes every instance digests must not depend on dict
order, on which JSON library produced them, or on integer size.

Canonical form: JSON, object keys sorted by code point, no whitespace, strings as
raw UTF-8 (only ``"``, ``\\`` and control characters escaped, as RFC 8259 requires),
integers in decimal of any size. Floats are refused: domain state is integral, and
float formatting is exactly the kind of cross-platform drift this project exists
to catch.
"""

from __future__ import annotations

import hashlib
import json
import re
from itertools import accumulate
from typing import Any

import orjson

_OPTS = orjson.OPT_SORT_KEYS


class NotCanonical(TypeError):
    """A value has no canonical form (a float, a non-string key, an unknown type)."""


_LEAVES = frozenset({str, int, bool, type(None)})


def _check(value: Any) -> None:
    # orjson happily encodes floats and some other types; canonical form must not.
    # Leaves of the exact JSON types are passed over without a call (this runs for
    # every event's fingerprint); anything else takes the general path below.
    kind = type(value)
    if kind in _LEAVES:
        return
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str and not isinstance(k, str):
                raise NotCanonical(f"object key {k!r} is not a string")
            if type(v) not in _LEAVES:
                _check(v)
        return
    if kind is list or kind is tuple:
        for v in value:
            if type(v) not in _LEAVES:
                _check(v)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotCanonical(f"object key {k!r} is not a string")
            _check(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check(v)
    elif value is None or isinstance(value, (str, bool, int)):
        return
    else:
        raise NotCanonical(f"{type(value).__name__} has no canonical form: {value!r}")


def _fallback(value: Any) -> bytes:
    # Used only when orjson refuses (integers beyond 64 bits). The standard library
    # escapes exactly what orjson escapes when ensure_ascii is off; a property test
    # holds the two to the same bytes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def canonical(value: Any) -> bytes:
    """The canonical bytes of a JSON-like value."""
    _check(value)
    try:
        return orjson.dumps(value, option=_OPTS)
    except TypeError:
        return _fallback(value)


def canonical_trusted(value: Any) -> bytes:
    """:func:`canonical` for values the framework built itself from checked parts
    (no type walk: this is the per-event hot path)."""
    try:
        return orjson.dumps(value, option=_OPTS)
    except TypeError:
        _check(value)
        return _fallback(value)


# Deepest nesting of arrays and objects docket accepts in a JSON document. Deeper ones
# are refused by rule, not by whichever recursion limit a parser or a walk happens to
# hit first (that depends on the stack depth at the call, which differs between a
# worker and the pure replay: two instances could judge one record differently).
MAX_JSON_DEPTH = 64


class NotIJson(ValueError):
    """A JSON document docket refuses although it parses: see the subclasses.
    ``name`` is the member at fault (None when the document as a whole is), ``reason``
    the REST API's errors[] reason for it (app/api.py)."""

    name: str | None = None
    reason = "not_i_json"


def shown_name(name: str, limit: int = 64) -> str:
    """``name`` as a message shows it: whole up to ``limit`` characters, else its first
    ``limit`` - 3 and its length, so that no answer or detail grows with what a client
    named (a member name can be 64 KiB)."""
    return name if len(name) <= limit else f"{name[:limit - 3]}... ({len(name)} characters)"


class DuplicateMember(NotIJson):
    """A JSON object names a member twice. RFC 8259 leaves the meaning open (most
    parsers keep the last, some the first); I-JSON (RFC 7493, section 2.3) forbids it,
    and so does docket: two readers of the same bytes must never see different values."""

    reason = "duplicate_member"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"member {shown_name(name)!r} appears twice in one JSON object "
                         "(RFC 7493 forbids duplicate names)")


class NestedTooDeep(NotIJson):
    """Arrays and objects nested deeper than MAX_JSON_DEPTH."""

    reason = "nested_too_deep"

    def __init__(self) -> None:
        super().__init__(f"arrays and objects are nested deeper than {MAX_JSON_DEPTH} levels")


class LoneSurrogate(NotIJson):
    """A string escapes half of a UTF-16 surrogate pair alone (``"\\ud800"``): JSON's
    grammar allows the escape, but it names no character, so I-JSON (RFC 7493, section
    2.1) forbids it and orjson refuses it; one reader's string would not be another's."""

    reason = "lone_surrogate"

    def __init__(self, escape: str, offset: int) -> None:
        super().__init__(f"a string holds the escape {escape} at byte offset {offset}: half of a UTF-16 surrogate "
                         "pair alone, which names no character (RFC 7493, section 2.1 forbids it)")


# One escape sequence of a JSON string: a \u with its four hex digits, or a backslash
# with the character it escapes (so that "\\\\u..." is an escaped backslash, not an escape).
_ESCAPE = re.compile(rb"\\(?:u([0-9A-Fa-f]{4})|.)", re.DOTALL)


def lone_surrogate(data: bytes) -> LoneSurrogate | None:
    """The first \\u escape of ``data`` that is half a surrogate pair without its other
    half (a high one not followed at once by a low one, or a low one alone), as a
    LoneSurrogate, or None. A function of the bytes alone, not of a parser's message,
    so every instance names the same escape. Costs one regex pass; called only for a
    document the parser has refused."""
    pending = None  # a high surrogate's match, waiting for its low half
    for m in _ESCAPE.finditer(data):
        unit = int(m.group(1), 16) if m.group(1) else None
        if pending is not None:
            if m.start() == pending.end() and unit is not None and 0xDC00 <= unit <= 0xDFFF:
                pending = None
                continue
            return LoneSurrogate(pending.group(0).decode("ascii"), pending.start())
        if unit is not None and 0xD800 <= unit <= 0xDBFF:
            pending = m
        elif unit is not None and 0xDC00 <= unit <= 0xDFFF:
            return LoneSurrogate(m.group(0).decode("ascii"), m.start())
    return None if pending is None else LoneSurrogate(pending.group(0).decode("ascii"), pending.start())


# The integers orjson reads exactly (an unsigned or signed 64-bit machine word); it reads
# any other integer literal as a float, which the domain would then refuse as "not an
# integer" when the number is an integer too large.
MIN_JSON_INT = -(2**63)
MAX_JSON_INT = 2**64 - 1


class IntegerOutOfRange(NotIJson):
    """An integer literal outside MIN_JSON_INT..MAX_JSON_INT. RFC 7493 (section 2.2)
    advises I-JSON senders to stay within +-(2**53 - 1); docket reads exactly up to 64
    bits and refuses the rest by name rather than read them as floats."""

    reason = "integer_out_of_range"

    def __init__(self, literal: str) -> None:
        shown = literal if len(literal) <= 40 else f"{literal[:20]}...{literal[-8:]} ({len(literal.lstrip('-'))} digits)"
        super().__init__(f"the integer {shown} is outside the 64-bit range docket reads exactly "
                         f"({MIN_JSON_INT} to {MAX_JSON_INT})")


def _int_in_range(literal: str) -> int:
    # 2**64 - 1 has 20 digits and JSON allows no leading zeros, so a longer literal is out
    # of range without int(), which refuses over 4,300 digits (sys.int_info)
    if len(literal) - literal.startswith("-") > 20:
        raise IntegerOutOfRange(literal)
    value = int(literal)
    if not MIN_JSON_INT <= value <= MAX_JSON_INT:
        raise IntegerOutOfRange(literal)
    return value


def _shallow(data: bytes) -> bool:
    # fewer brackets than the limit cannot nest deeper than it (brackets inside strings
    # only overcount)
    return data.count(b"{") + data.count(b"[") <= MAX_JSON_DEPTH


# a JSON string (RFC 8259 section 7), as bytes; an unterminated one matches nothing
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nests_deeper(data: bytes, limit: int) -> bool:
    """Whether the brackets of ``data`` outside its strings ever stand more than
    ``limit`` deep, read left to right. For JSON this is the nesting of its arrays and
    objects; it is also defined for text a parser refuses, so it can name a document
    whose nesting is beyond a parser's own limit (orjson's is 1,024) by docket's rule,
    whether or not something else is wrong with it too."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    return max(accumulate(_STEP[b] for b in brackets), default=0) > limit


def _integers_in_range(data: bytes) -> None:
    """Raise IntegerOutOfRange for the first integer literal of ``data`` outside the
    range, if the standard library's parser reads ``data`` that far; anything else it
    says about ``data`` is left to orjson's error, which the caller raises."""
    try:
        json.loads(data, parse_int=_int_in_range)
    except IntegerOutOfRange:
        raise
    except ValueError:
        pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen:
            raise DuplicateMember(name)
        seen[name] = value
    return seen


def _depth_within(value: Any, limit: int) -> bool:
    # iterative: no recursion limit to hit
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def loads_strict(raw: bytes | str) -> Any:
    """``orjson.loads``, refusing what two readers could read differently.

    Raises orjson.JSONDecodeError (not JSON), NestedTooDeep (arrays and objects nested
    deeper than MAX_JSON_DEPTH), LoneSurrogate (an escaped half of a surrogate pair
    alone), DuplicateMember (an object names a member twice) or
    IntegerOutOfRange (an integer beyond 64 bits, which orjson reads as a float);
    with both, the first the standard library's parser meets (an integer as it is read,
    an object's duplicate when the object closes). For compact JSON (what docket's
    clients and most producers send) this costs one extra ``orjson.dumps``: bytes that
    re-encode to themselves hold no duplicate, since the parsed value has each member
    once, and no integer read as a float, since a float is written with a point or an
    exponent. Anything else is scanned again by the standard library's parser, which
    reports both."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # a number beyond a double (orjson checks UTF-8 first, so raw encodes): name it if
        # it is an integer. Only where the nesting is known to be shallow, so that the
        # standard library's recursion limit, which depends on the caller's stack, can
        # never decide which error a document gets.
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        if "infinity" in str(exc) and _shallow(data):
            _integers_in_range(data)
        # nesting beyond the parser's own limit (or beside another fault) is still
        # docket's rule's to name, not the parser's "not JSON"
        if not _shallow(data) and nests_deeper(data, MAX_JSON_DEPTH):
            raise NestedTooDeep() from None
        # an escape JSON's grammar allows but I-JSON does not: docket's rule's to name
        if b"\\u" in data and utf8_problem(data) is None:
            lone = lone_surrogate(data)
            if lone is not None:
                raise lone from None
        raise
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if not _shallow(data) and not _depth_within(value, MAX_JSON_DEPTH):
        raise NestedTooDeep()
    try:
        if orjson.dumps(value) == data:
            return value
    except TypeError:
        pass  # not re-encodable (e.g. NaN); the full scan decides
    json.loads(data, object_pairs_hook=_refuse_duplicates, parse_int=_int_in_range)
    return value


def utf8_problem(data: bytes) -> str | None:
    """Where ``data`` stops being UTF-8, as "byte 0x<hex> at offset <n>" (the first byte
    of the first invalid sequence; offsets count from 0), or None when it is UTF-8.
    Python's codec decides (RFC 3629: surrogates and overlong forms are invalid), not a
    JSON parser's message, so the text does not change with the parser's version."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
    return None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
