"""app/content_coding.py: a request body is decoded whole or refused
(ApiRefusesMalformedHttp, ApiRefusesBadRequests in specs/integration.allium)."""

from __future__ import annotations

import gzip
import re
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
    with pytest.raises(UnreadableBody, match=r"cut short \(a gzip stream ends with a trailer: CRC-32 and length\)"):
        decode_body("gzip", coded[:-8], 1024)


@pytest.mark.parametrize(("coding", "check", "named"), [("gzip", -8, "its CRC-32 does not match its data"),
                                                        ("gzip", -1, r"its length \(ISIZE\) does not match"),
                                                        ("deflate", -1, "its Adler-32 does not match its data")])
def test_a_wrong_check_value_is_unreadable_and_named(coding: str, check: int, named: str) -> None:
    """gzip's CRC-32 and length and zlib's Adler-32 are checked, and named in the
    format's own terms, with zlib's words after them."""
    coded = bytearray(ENCODERS[coding](DOC))
    coded[check] ^= 0xFF
    with pytest.raises(UnreadableBody, match=f"^the body is not valid {coding} data: {named} .*incorrect"):
        decode_body(coding, bytes(coded), 1024)


def test_a_stray_byte_after_a_gzip_stream_is_named_so_even_when_it_starts_a_header() -> None:
    """0x1f is the first byte of a gzip header, so zlib takes it for a member cut short;
    it is a byte after the stream (a fresh-user trial read "cut short")."""
    with pytest.raises(UnreadableBody, match=r"^the gzip body has 1 byte after the end of its stream, which is not a complete gzip member$"):
        decode_body("gzip", gzip.compress(DOC) + b"\x1f", 1024)


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_more_than_max_streams_members_or_frames_are_refused(coding: str) -> None:
    """Each member or frame costs a decoder: 7,281 empty zstd frames took 110 ms."""
    from app.content_coding import MAX_STREAMS

    empty = ENCODERS[coding](b"")
    assert decode_body(coding, empty * (MAX_STREAMS - 1) + ENCODERS[coding](DOC), 1024) == DOC
    with pytest.raises(UnreadableBody, match=f"holds more than {MAX_STREAMS} "):
        decode_body(coding, empty * MAX_STREAMS + ENCODERS[coding](DOC), 1024)


def test_raw_deflate_whose_first_byte_looks_like_a_zlib_header_is_still_raw() -> None:
    """A raw stream opening with a stored block whose padding bits are set has the first
    byte 0x08, zlib's compression method: its second byte fails zlib's header check
    (the two bytes a multiple of 31, RFC 1950), so it is read as raw data."""
    raw = bytes([0x08, 0x05, 0x00, 0xFA, 0xFF]) + b"hello" + zlib.compress(b"")[2:-4]  # stored "hello", then end
    plain = zlib.decompressobj(-zlib.MAX_WBITS)
    assert plain.decompress(raw) == b"hello" and plain.eof
    assert (raw[0] << 8 | raw[1]) % 31 != 0
    assert decode_body("deflate", raw, 1024) == b"hello"


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_bytes_after_the_stream_are_unreadable(coding: str) -> None:
    with pytest.raises(UnreadableBody):
        decode_body(coding, ENCODERS[coding](DOC) + b"x", 1024)


def test_bytes_after_a_gzip_member_that_are_no_member_are_named_so() -> None:
    with pytest.raises(UnreadableBody, match=r"the gzip body has 3 bytes after the end of its stream, which are not a complete gzip member"):
        decode_body("gzip", gzip.compress(DOC) + b"xyz", 1024)


def test_a_second_deflate_stream_is_not_called_an_incomplete_member() -> None:
    """ApiRefusesMalformedHttp: deflate is one stream, so two whole zlib streams are refused
    for the second's bytes, without calling them "not a complete deflate member"
    (members are gzip's, and these bytes are a complete stream: the sixth fresh-user
    trial)."""
    twice = zlib.compress(DOC) + zlib.compress(DOC)
    with pytest.raises(UnreadableBody) as caught:
        decode_body("deflate", twice, 1024)
    assert str(caught.value) == (f"the deflate body has {len(zlib.compress(DOC))} bytes after the end of its "
                                 "stream: a deflate body is one stream (send several as one, or as gzip members)")


@pytest.mark.parametrize("after", [b"x", b"xyz", brotli.compress(DOC)])
def test_bytes_after_a_br_stream_are_named_so(after: bytes) -> None:
    """ApiRefusesMalformedHttp: bytes after a whole br stream (a stray byte, or a second
    stream) are named as such, as gzip's, zstd's and deflate's are; brotli's decoder
    says only "decoder failed" (a fresh-user trial). A body that is no br data from its
    start is still "not valid br data"."""
    with pytest.raises(UnreadableBody) as caught:
        decode_body("br", brotli.compress(DOC) + after, 1024)
    assert str(caught.value) == (f"the br body has {len(after)} byte{'s' if len(after) > 1 else ''} after the end "
                                 "of its stream: a br body is one stream (send several as one)")
    with pytest.raises(UnreadableBody, match=r"^the body is not valid br data \(brotli: decoder failed\)$"):
        decode_body("br", b"\xff" * 10 + after, 4096)


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


def _second_member_faults(coding: str) -> list[tuple[bytes, str]]:
    first, second = ENCODERS[coding](DOC[:10]), bytearray(ENCODERS[coding](DOC[10:]))
    kind = "frame" if coding == "zstd" else "member"
    if coding == "gzip":
        crc = bytearray(second)
        crc[-8] ^= 0xFF
        return [(first + bytes(crc), "member 2 of the body is not valid gzip data: its CRC-32 does not match"),
                (first + bytes(second[:-4]), "member 2 of the gzip body was cut short (a gzip member ends with")]
    checked = bytearray(zstd.compress(DOC[10:], options={zstd.CompressionParameter.checksum_flag: 1}))
    checked[-1] ^= 0xFF
    return [(first + bytes(checked), "frame 2 of the body is not valid zstd data: its checksum does not match"),
            (first + bytes(second[:-2]), f"{kind} 2 of the zstd body was cut short")]


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_a_fault_in_a_later_member_or_frame_is_named_with_its_number(coding: str) -> None:
    """Not "bytes after the end of its stream" (a second fresh-user trial): a member or
    frame that begins as one and then fails is that member's fault."""
    assert decode_body(coding, ENCODERS[coding](DOC[:10]) + ENCODERS[coding](DOC[10:]), 1024) == DOC
    for coded, words in _second_member_faults(coding):
        with pytest.raises(UnreadableBody, match=re.escape(words)):
            decode_body(coding, coded, 1024)


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_stray_bytes_after_max_streams_members_are_stray_bytes_not_one_member_too_many(coding: str) -> None:
    from app.content_coding import MAX_STREAMS

    coded = ENCODERS[coding](b"") * (MAX_STREAMS - 1) + ENCODERS[coding](DOC) + b"xyz"
    with pytest.raises(UnreadableBody, match="has 3 bytes after the end of its stream"):
        decode_body(coding, coded, 1024)


def test_a_zlib_stream_with_a_preset_dictionary_says_so() -> None:
    packer = zlib.compressobj(zdict=b"warehouse sku delta")
    coded = packer.compress(DOC) + packer.flush()
    with pytest.raises(UnreadableBody, match=r"needs a preset dictionary \(FDICT\)"):
        decode_body("deflate", coded, 1024)


def test_raw_deflate_whose_first_two_bytes_pass_for_a_zlib_header_is_read_raw() -> None:
    """1 raw stream in 31 opening with 0x08 has a second byte that passes zlib's check:
    read as zlib it fails, and is then read raw."""
    for pad in range(300):
        body = b'{"pad":"' + b"x" * pad + b'"}'
        raw = bytes([0x08]) + len(body).to_bytes(2, "little") + (len(body) ^ 0xFFFF).to_bytes(2, "little") + body \
            + zlib.compress(b"")[2:-4]
        if (raw[0] << 8 | raw[1]) % 31 == 0:
            break
    else:
        raise AssertionError("no padding made the first two bytes pass for a zlib header")
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw) == body
    assert decode_body("deflate", raw, 1024) == body
