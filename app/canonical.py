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
from typing import Any

import orjson

_OPTS = orjson.OPT_SORT_KEYS


class NotCanonical(TypeError):
    """A value has no canonical form (a float, a non-string key, an unknown type)."""


def _check(value: Any) -> None:
    # orjson happily encodes floats and some other types; canonical form must not.
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


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
