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
# The most gzip members or zstd frames one body may hold. Each costs a decoder: a body of
# 7,281 empty zstd frames took 110 ms of the event loop (a fresh-user trial). Clients send
# one; RFC 1952 and RFC 8878 allow more, and a few are accepted.
MAX_STREAMS = 64

# the libraries' words for a failed check, in the terms of the coding's own format
_CHECK_WORDS = {
    "gzip": {"incorrect header check": "it does not start with a gzip header (1f 8b)",
             "incorrect data check": "its CRC-32 does not match its data",
             "incorrect length check": "its length (ISIZE) does not match its data"},
    "deflate": {"incorrect header check": "it does not start with a zlib header",
                "incorrect data check": "its Adler-32 does not match its data",
                "Error 2 while decompressing data": "it needs a preset dictionary (FDICT), which an HTTP body "
                                                    "cannot name"},
    "zstd": {"Restored data doesn't match checksum": "its checksum does not match its data"},
}
# how a further gzip member or zstd frame (or a skippable frame) begins: RFC 1952
# section 2.3.1, RFC 8878 sections 3.1.1 and 3.1.2
_MAGIC = {"gzip": lambda d: d[:2] == b"\x1f\x8b",
          "zstd": lambda d: d[:4] == b"\x28\xb5\x2f\xfd" or (d[1:4] == b"\x2a\x4d\x18" and d[0] & 0xF0 == 0x50)}


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
        # a zlib header (RFC 1950 section 2.2): compression method 8 in the low bits of
        # its first byte, and its two bytes a multiple of 31; anything else is taken for
        # raw deflate data, which some clients send under this name
        wrapped = len(raw) >= 2 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0

        def as_raw() -> bytes:
            return _members(coding, raw, limit, lambda: zlib.decompressobj(-zlib.MAX_WBITS), one=True)

        if not wrapped:
            return as_raw()
        try:
            return _members(coding, raw, limit, lambda: zlib.decompressobj(zlib.MAX_WBITS), one=True)
        except UnreadableBody as as_zlib:  # raw data whose first two bytes pass for a zlib header (1 in 31)
            try:
                return as_raw()
            except UnreadableBody:
                raise as_zlib from None
    if coding == "zstd":
        return _members(coding, raw, limit, zstd.ZstdDecompressor)
    if coding == "br":
        return _brotli(raw, limit)
    raise ValueError(f"no decoder for content coding {coding!r}; these are: {', '.join(sorted(CODINGS))}")


def _members(coding: str, raw: bytes, limit: int, make, *, one: bool = False) -> bytes:
    """Decode ``raw`` as consecutive streams (gzip members, zstd frames; a single one
    when ``one``), each from a fresh ``make()`` (zlib's or zstd's decompressor: both
    have ``decompress(data, max_length)``, ``eof`` and ``unused_data``). A fault in a
    later member is named with its number; bytes after a whole stream that begin no
    further member are named as such."""
    kind = "frame" if coding == "zstd" else "member"
    out = bytearray()
    data = raw
    for number in range(1, MAX_STREAMS + 2):
        if number > 1 and one:  # deflate: one zlib (or raw deflate) stream, whatever follows it
            raise UnreadableBody(f"the {coding} body has {_bytes(len(data))} after the end of its stream: a "
                                 f"{coding} body is one stream (send several as one, or as gzip members)")
        if number > 1 and not _MAGIC[coding](data):
            raise UnreadableBody(f"the {coding} body has {_bytes(len(data))} after the end of its stream, "
                                 f"which {'is' if len(data) == 1 else 'are'} not a complete {coding} {kind}")
        if number > MAX_STREAMS:
            raise UnreadableBody(f"the {coding} body holds more than {MAX_STREAMS} {kind}s: send it as one")
        decoder = make()
        room = limit + 1 - len(out)
        try:
            # stops at room bytes of output, or when the input or the stream ends
            out += decoder.decompress(data, room)
            fault = None if decoder.eof else "cut short"
        except (zlib.error, zstd.ZstdError) as exc:
            words = _CHECK_WORDS.get(coding, {}).get(str(exc).split(": ")[-1])
            fault = f": {words} ({exc})" if words else f" ({exc})"
        if len(out) > limit:
            raise BodyTooLarge(coding, limit)
        if fault == "cut short":
            trailer = f" (a gzip {'stream' if number == 1 else 'member'} ends with a trailer: CRC-32 and length)"
            raise UnreadableBody((f"the {coding} body ends before its stream does: it was cut short" if number == 1
                                  else f"{kind} {number} of the {coding} body was cut short")
                                 + (trailer if coding == "gzip" else ""))
        if fault is not None:
            where = "the body" if number == 1 else f"{kind} {number} of the body"
            raise UnreadableBody(f"{where} is not valid {coding} data{fault}")
        data = decoder.unused_data
        if not data:
            return bytes(out)
    raise AssertionError("unreachable: the loop raises past MAX_STREAMS")


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _brotli(raw: bytes, limit: int) -> bytes:
    decoder = brotli.Decompressor()
    try:
        out = decoder.process(raw, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        end = _brotli_end(raw, limit)
        if end is not None:
            raise UnreadableBody(f"the br body has {_bytes(len(raw) - end)} after the end of its stream: a br body "
                                 "is one stream (send several as one)") from None
        raise UnreadableBody(f"the body is not valid br data ({exc or 'brotli could not decode it'})") from None
    if len(out) > limit:
        raise BodyTooLarge("br", limit)
    if not decoder.is_finished():
        raise UnreadableBody("the br body ends before its stream does: it was cut short")
    return out


def _brotli_end(raw: bytes, limit: int) -> int | None:
    """Where the br stream at the start of ``raw`` ends, when one ends before ``raw``
    does (brotli's decoder refuses the bytes after it without saying so), else None.
    A prefix shorter than the stream decodes without error and unfinished; the first
    prefix that does not is the stream, when it finishes. A bisection: about 16
    decodings of at most 64 KiB, on a refused body only."""
    def unfinished(n: int) -> bool:
        decoder = brotli.Decompressor()
        try:
            decoder.process(raw[:n], output_buffer_limit=limit + 1)
        except brotli.error:
            return False
        return not decoder.is_finished()

    low, high = 0, len(raw)  # unfinished(low) holds; unfinished(len(raw)) does not (it raised)
    while high - low > 1:
        middle = (low + high) // 2
        if unfinished(middle):
            low = middle
        else:
            high = middle
    decoder = brotli.Decompressor()
    try:
        decoder.process(raw[:high], output_buffer_limit=limit + 1)
    except brotli.error:
        return None
    return high if decoder.is_finished() and high < len(raw) else None
