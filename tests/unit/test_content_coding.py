"""app/content_coding.py: a request body is decoded whole or refused
(ApiRefusesMalformedHttp, ApiRefusesBadRequests in specs/integration.allium)."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from backports import zstd

from app.content_coding import CODINGS, BodyTooLarge, UnreadableBody, decode_body

DOC = b'{"event_name":"stock.adjust","payload":{"warehouse":"w1","sku":"s1","delta":-5}}'

ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstd.compress,
}


def test_the_codings_are_the_ones_with_an_encoder_here() -> None:
    assert CODINGS == set(ENCODERS)


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_whole_stream_decodes_to_the_document(coding: str) -> None:
    assert decode_body(coding, ENCODERS[coding](DOC), 1024) == DOC


@pytest.mark.parametrize("coding", ["", "identity"])
def test_identity_is_the_body_as_it_is(coding: str) -> None:
    assert decode_body(coding, b"\x1f\x8b not decoded", 4) == b"\x1f\x8b not decoded"


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_consecutive_members_or_frames_are_one_body(coding: str) -> None:
    """RFC 1952 section 2.2 (a gzip file is a series of members); RFC 8878 section 3
    (a zstd stream is a series of frames)."""
    coded = ENCODERS[coding](DOC[:30]) + ENCODERS[coding](DOC[30:])
    assert decode_body(coding, coded, 1024) == DOC


def test_raw_deflate_data_is_taken_for_deflate() -> None:
    """What aiohttp and browsers accept under 'deflate': RFC 1951 data without the zlib
    wrapper of RFC 1950."""
    raw = zlib.compress(DOC)[2:-4]
    assert decode_body("deflate", raw, 1024) == DOC


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_stream_cut_short_is_unreadable(coding: str) -> None:
    coded = ENCODERS[coding](DOC)
    for end in (len(coded) - 1, len(coded) // 2):
        with pytest.raises(UnreadableBody, match=f"the {coding} body ends before its stream does"):
            decode_body(coding, coded[:end], 1024)


def test_a_gzip_body_without_its_trailer_is_unreadable_though_its_data_is_whole() -> None:
    """The case aiohttp's own decoding let through: the 8-byte trailer (CRC-32, ISIZE;
    RFC 1952 section 2.3.1) is all that is missing."""
    coded = gzip.compress(DOC)
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(coded[:-8]) == DOC  # the data alone is whole
    with pytest.raises(UnreadableBody, match=r"its trailer, CRC-32 and length, is missing"):
        decode_body("gzip", coded[:-8], 1024)


@pytest.mark.parametrize(("coding", "check"), [("gzip", -8), ("deflate", -1)])
def test_a_wrong_check_value_is_unreadable(coding: str, check: int) -> None:
    """gzip's CRC-32 and zlib's Adler-32 are checked."""
    coded = bytearray(ENCODERS[coding](DOC))
    coded[check] ^= 0xFF
    with pytest.raises(UnreadableBody, match=f"not valid {coding} data .*incorrect"):
        decode_body(coding, bytes(coded), 1024)


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_bytes_after_the_stream_are_unreadable(coding: str) -> None:
    with pytest.raises(UnreadableBody):
        decode_body(coding, ENCODERS[coding](DOC) + b"x", 1024)


def test_bytes_after_a_gzip_member_that_are_no_member_are_named_so() -> None:
    with pytest.raises(UnreadableBody, match=r"the gzip body has 3 bytes after the end of its stream that are no gzip"):
        decode_body("gzip", gzip.compress(DOC) + b"xyz", 1024)


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_body_not_of_its_coding_is_unreadable(coding: str) -> None:
    with pytest.raises(UnreadableBody, match=coding):
        decode_body(coding, DOC, 1024)


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_an_empty_body_is_unreadable(coding: str) -> None:
    with pytest.raises(UnreadableBody, match="empty"):
        decode_body(coding, b"", 1024)


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_the_limit_is_inclusive_and_a_bomb_costs_at_most_the_limit(coding: str) -> None:
    """A body of exactly ``limit`` bytes decoded passes; one byte more is BodyTooLarge,
    also for 16 MiB of zeros coded in a few hundred bytes (decoded at most limit + 1)."""
    limit = 4096
    assert decode_body(coding, ENCODERS[coding](b"0" * limit), limit) == b"0" * limit
    for plain in (b"0" * (limit + 1), b"\0" * (16 << 20)):
        with pytest.raises(BodyTooLarge) as caught:
            decode_body(coding, ENCODERS[coding](plain), limit)
        assert caught.value.limit == limit


def test_gzip_members_share_the_limit() -> None:
    with pytest.raises(BodyTooLarge):
        decode_body("gzip", gzip.compress(b"0" * 3000) + gzip.compress(b"0" * 3000), 4096)


def test_an_unknown_coding_is_a_value_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="br, deflate, gzip, zstd"):
        decode_body("compress", DOC, 1024)
