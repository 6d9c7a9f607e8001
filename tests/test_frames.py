"""Frame codec: round trips, incremental decoding under any split, malformed input, limits."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anpx_core.errors import ERROR_CODES, ProtocolError
from anpx_core.frames import Frame, FrameDecoder, decode_frame, encode_frame

from .hypothesis_profiles import examples

FAST = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings(
    max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def reference_frame(ftype: int, flags: int, tlvs: list[tuple[int, bytes]]) -> bytes:
    """The v1 layout, built independently of anpx_core."""
    body = b"".join(struct.pack(">BI", tag, len(value)) + value for tag, value in tlvs)
    prefix = b"ANPX" + bytes([1, ftype, flags, 0]) + struct.pack(">I", 24 + len(body))
    return prefix + struct.pack(">III", zlib.crc32(prefix), zlib.crc32(body), 0) + body


def fix_crcs(wire: bytes | bytearray) -> bytes:
    """Recompute TotalLen and both CRCs so a mutation reaches the TLV and message layers."""
    out = bytearray(wire)
    if len(out) < 24:
        return bytes(out)
    out[8:12] = struct.pack(">I", len(out))
    out[12:16] = struct.pack(">I", zlib.crc32(bytes(out[:12])))
    out[16:20] = struct.pack(">I", zlib.crc32(bytes(out[24:])))
    return bytes(out)


tlv_values = st.binary(max_size=64)
tlv_lists = st.lists(st.tuples(st.integers(0, 255), tlv_values), max_size=6)
frame_types = st.sampled_from([0x01, 0x02, 0xFF])
frames = st.builds(Frame, frame_types, st.sampled_from([0, 1]), tlv_lists)


@FAST
@given(frames)
def test_encode_matches_reference_layout_and_round_trips(frame: Frame) -> None:
    wire = encode_frame(frame.type, frame.flags, frame.tlvs)
    assert wire == reference_frame(frame.type, frame.flags, frame.tlvs)
    assert decode_frame(wire) == frame
    # bytearray / memoryview values and input are accepted too
    views = [(tag, memoryview(bytearray(value))) for tag, value in frame.tlvs]
    assert encode_frame(frame.type, frame.flags, views) == wire  # type: ignore[arg-type]
    assert decode_frame(bytearray(wire)) == frame
    assert decode_frame(memoryview(wire)) == frame


@FAST
@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_feed_any_split_gives_identical_frames(
    frame_list: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(f.type, f.flags, f.tlvs) for f in frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    got: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    decoder.close()
    assert got == frame_list
    assert decoder.buffered == 0


def test_feed_every_two_way_split_and_byte_by_byte() -> None:
    frame_list = [
        Frame(0x01, 0, [(0x01, b"rid-1"), (0x02, b'{"method": "GET"}')]),
        Frame(0x02, 1, [(0x01, b"rid-2"), (0xF3, b""), (0x03, bytes(range(40)))]),
        Frame(0xFF, 0, [(0x03, b"boom")]),
        Frame(0x01, 0, []),
    ]
    stream = b"".join(encode_frame(f.type, f.flags, f.tlvs) for f in frame_list)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        decoder.close()
        assert got == frame_list, cut
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == frame_list
    # and all at once, including frames fed as bytearray / memoryview
    assert FrameDecoder().feed(memoryview(bytearray(stream))) == frame_list


def test_header_fields() -> None:
    wire = encode_frame(0x01, 0, [(0x01, b"x")])
    assert wire[:8] == b"ANPX\x01\x01\x00\x00"
    assert struct.unpack(">I", wire[8:12])[0] == len(wire) == 24 + 5 + 1
    assert wire[20:24] == b"\x00\x00\x00\x00"


def _only_protocol_errors(wire: bytes, max_frame_size: int = 1 << 16) -> None:
    try:
        decode_frame(wire, max_frame_size)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES
    decoder = FrameDecoder(max_frame_size)
    try:
        for i in range(0, len(wire), 7):
            decoder.feed(wire[i : i + 7])
        decoder.close()
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES
        with pytest.raises(ProtocolError):  # a failed stream stays failed
            decoder.feed(b"")


@pytest.mark.timeout(60)  # nothing may hang
@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_error(wire: bytes) -> None:
    _only_protocol_errors(wire)
    _only_protocol_errors(b"ANPX\x01" + wire)
    _only_protocol_errors(fix_crcs(b"ANPX\x01" + wire))


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
)


def mutate(wire: bytes, mutation: tuple) -> bytes:
    kind, pos, *rest = mutation
    pos %= len(wire) + 1
    if kind == "flip":
        pos %= len(wire)
        return wire[:pos] + bytes([wire[pos] ^ (1 << rest[0])]) + wire[pos + 1 :]
    if kind == "truncate":
        return wire[:pos]
    if kind == "insert":
        return wire[:pos] + rest[0] + wire[pos:]
    return wire[:pos] + wire[pos + rest[0] :]


@pytest.mark.timeout(60)
@FUZZ
@given(frames, st.lists(mutations, min_size=1, max_size=3), st.booleans())
def test_mutated_frames_raise_only_protocol_error(
    frame: Frame, muts: list[tuple], recrc: bool
) -> None:
    wire = encode_frame(frame.type, frame.flags, frame.tlvs)
    for mutation in muts:
        wire = mutate(wire, mutation) if wire else wire
    if recrc:
        wire = fix_crcs(wire)
    _only_protocol_errors(wire)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"ANPX\x01\x01\x00\x00", "truncated"),
        (b"ANPY" + bytes(20), "bad_magic"),
        (fix_crcs(b"ANPX\x02\x01\x00\x00" + bytes(16)), "bad_version"),
        (fix_crcs(b"ANPX\x01\x07\x00\x00" + bytes(16)), "bad_type"),
        (fix_crcs(b"ANPX\x01\x01\x02\x00" + bytes(16)), "bad_flags"),
        (b"ANPX\x01\x01\x00\x00" + bytes(16), "bad_header_crc"),
        (reference_frame(1, 0, [(1, b"a")])[:-1] + b"b", "bad_body_crc"),
        (fix_crcs(reference_frame(1, 0, [(1, b"abc")])[:-2]), "bad_tlv"),  # TLV runs past the body
        (fix_crcs(reference_frame(1, 0, [(1, b"abc")]) + b"\x01\x00"), "bad_tlv"),  # stray bytes
    ],
)
def test_error_codes(wire: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(wire)
    assert info.value.code == code


def test_total_len_disagreeing_with_message() -> None:
    wire = reference_frame(1, 0, [(1, b"abc")])
    with pytest.raises(ProtocolError) as info:
        decode_frame(wire + b"\x00")
    assert info.value.code == "bad_length"
    with pytest.raises(ProtocolError) as info:
        decode_frame(wire[:-1])
    assert info.value.code == "truncated"
    short = bytearray(wire[:24])
    short[8:12] = struct.pack(">I", 23)
    with pytest.raises(ProtocolError) as info:
        decode_frame(fix_header_crc(short))
    assert info.value.code == "bad_length"


def fix_header_crc(header: bytearray) -> bytes:
    header[12:16] = struct.pack(">I", zlib.crc32(bytes(header[:12])))
    return bytes(header)


@FAST
@given(frames)
def test_max_frame_size_edge(frame: Frame) -> None:
    wire = encode_frame(frame.type, frame.flags, frame.tlvs)
    assert decode_frame(wire, len(wire)) == frame
    assert FrameDecoder(len(wire)).feed(wire) == [frame]
    with pytest.raises(ProtocolError) as info:
        decode_frame(wire, len(wire) - 1)
    assert info.value.code == "too_large"
    if len(wire) > 24:
        with pytest.raises(ProtocolError) as info:
            # refused from the header alone, before buffering the body
            FrameDecoder(len(wire) - 1).feed(wire[:24])
        assert info.value.code == "too_large"


def test_close_mid_frame_is_truncated() -> None:
    wire = encode_frame(1, 0, [(1, b"abc")])
    decoder = FrameDecoder()
    assert decoder.feed(wire[:-1]) == []
    with pytest.raises(ProtocolError) as info:
        decoder.close()
    assert info.value.code == "truncated"
