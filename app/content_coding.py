"""Decoding a request body from its Content-Encoding, whole or not at all.

aiohttp decodes a coded request body itself, but for gzip, br and zstd it hands over
whatever it decoded when the body ends, even when the coded stream did not end: a gzip
body cut before its trailer (CRC-32 and length, RFC 1952 section 2.3) was accepted
unchecked, and one cut inside its data gave a truncated document. It checks the end of
the stream for deflate only (aiohttp 3.14 ``DeflateBuffer.feed_eof``). So the REST API
reads the body as sent (``auto_decompress=False``) and decodes it here, with the same
libraries aiohttp uses (zlib, brotli, zstandard), refusing a stream that does not end.

The coding names are RFC 9110's (section 8.4.1): gzip (RFC 1952, one or more members),
deflate (the zlib format of RFC 1950; raw RFC 1951 data is accepted too, as aiohttp
and browsers do), br (RFC 7932) and zstd (RFC 8878, one or more frames).
"""

from __future__ import annotations

import sys
import zlib

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

# the codings decode_body knows; identity (or none) is the body as it is
CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


class BodyTooLarge(ValueError):
    """The decoded body exceeds the limit; ``limit`` (bytes) is it."""

    def __init__(self, coding: str, limit: int) -> None:
        super().__init__(f"the body decoded from {coding} is over {limit} bytes")
        self.limit = limit


class UnreadableBody(ValueError):
    """The body is not a complete stream of the coding its Content-Encoding names; the
    message says how (str(exc))."""


def decode_body(coding: str, raw: bytes, limit: int) -> bytes:
    """``raw`` decoded from ``coding`` (one of :data:`CODINGS`, lower case; "" or
    "identity" return it as it is), at most ``limit`` bytes of it decoded at any time,
    so a small body that decodes to gigabytes costs ``limit`` + 1 bytes.

    Raises BodyTooLarge when the decoded body is over ``limit`` bytes, UnreadableBody
    when ``raw`` is not that coding, fails its check value (gzip's CRC-32, zlib's
    Adler-32, zstd's checksum when the frame has one), ends before its stream does, or
    has bytes after it; ValueError for a coding not in :data:`CODINGS`."""
    if coding in ("", "identity"):
        return raw
    if not raw:  # an empty body is no stream of any coding, but aiohttp passed it too
        raise UnreadableBody(f"the body is empty, so it is no {coding} data")
    if coding == "gzip":
        return _members(coding, raw, limit, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))
    if coding == "deflate":
        # zlib's header says compression method 8 in its low bits; anything else is
        # taken for raw deflate data, which some clients send under this name
        wbits = zlib.MAX_WBITS if raw[0] & 0x0F == 8 else -zlib.MAX_WBITS
        return _members(coding, raw, limit, lambda: zlib.decompressobj(wbits), one=True)
    if coding == "zstd":
        return _members(coding, raw, limit, zstd.ZstdDecompressor)
    if coding == "br":
        return _brotli(raw, limit)
    raise ValueError(f"no decoder for content coding {coding!r}; these are: {', '.join(sorted(CODINGS))}")


def _members(coding: str, raw: bytes, limit: int, make, *, one: bool = False) -> bytes:
    """Decode ``raw`` as consecutive streams (gzip members, zstd frames; a single one
    when ``one``), each from a fresh ``make()`` (zlib's or zstd's decompressor: both
    have ``decompress(data, max_length)``, ``eof`` and ``unused_data``)."""
    out = bytearray()
    data = raw
    while True:
        decoder = make()
        room = limit + 1 - len(out)
        try:
            # stops at room bytes of output, or when the input or the stream ends
            out += decoder.decompress(data, room)
        except (zlib.error, zstd.ZstdError) as exc:
            if data is raw:
                raise UnreadableBody(f"the body is not valid {coding} data ({exc})") from None
            raise UnreadableBody(f"the {coding} body has {_bytes(len(data))} after the end of its stream "
                                 f"that are no {coding} data ({exc})") from None
        if len(out) > limit:
            raise BodyTooLarge(coding, limit)
        if not decoder.eof:
            raise UnreadableBody(f"the {coding} body ends before its stream does: it was cut short"
                                 + (" (its trailer, CRC-32 and length, is missing)" if coding == "gzip" else ""))
        data = decoder.unused_data
        if not data:
            return bytes(out)
        if one:
            raise UnreadableBody(f"the {coding} body has {_bytes(len(data))} after the end of its stream")


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _brotli(raw: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    try:
        out = decoder.process(raw, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        raise UnreadableBody(f"the body is not valid br data ({exc or 'brotli could not decode it'})") from None
    if len(out) > limit:
        raise BodyTooLarge("br", limit)
    if not decoder.is_finished():
        raise UnreadableBody("the br body ends before its stream does: it was cut short")
    return out
