"""Messages <-> frames: lossless round trips, streaming, interleaving, malformed input, limits.

Strategies mirror tests/test_meta.py (kept local so each file stands alone).
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
import zlib
from urllib.parse import parse_qsl, quote, unquote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anpx_core.errors import ERROR_CODES, ProtocolError
from anpx_core.frames import decode_frame, encode_frame
from anpx_core.messages import (
    BodyReceived,
    ErrorMessage,
    ErrorReceived,
    HeadReceived,
    Limits,
    Message,
    MessageComplete,
    MessageDecoder,
    MessageEncoder,
    Request,
    Response,
    decode_message,
    encode_message,
)
from anpx_core.meta import RequestHead, ResponseHead, encode_request_meta, encode_response_meta

from .hypothesis_profiles import examples

SETTINGS = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- strategies ------------------------------------------------------------------------------

PCT = st.sampled_from(["%2F", "%2f", "%20", "%41", "%25", "%zz", "%", "%C3%A9", "%FF"])
WORD = st.lists(st.one_of(st.text("abcXZ09-._~+ é中&=;/?%", max_size=3), PCT), max_size=3).map(
    "".join
)
PLAIN = st.text("abcXZ09-._~", max_size=4)
SEGMENT = st.lists(
    st.one_of(st.text("abcXZ09-._~!$&'()*+,;=:@ é中😀\"<>#", min_size=1, max_size=4), PCT),
    max_size=3,
).map("".join)
PATHS = st.lists(SEGMENT, max_size=4).map(lambda segs: "/" + "/".join(segs))
FIELDS = st.one_of(
    st.tuples(st.one_of(st.sampled_from(["a", "q"]), PLAIN, WORD), st.one_of(PLAIN, WORD)).map(
        "=".join
    ),
    st.one_of(st.sampled_from(["a", "q"]), WORD),
)
TARGETS = st.one_of(
    st.builds(
        lambda p, q: p if q is None else f"{p}?{q}",
        PATHS,
        st.none() | st.lists(FIELDS).map("&".join),
    ),
    st.builds(lambda p, q: f"/{p}?{q}", PLAIN, st.lists(st.tuples(PLAIN, PLAIN)).map(urlencode)),
    st.text(min_size=1, max_size=20),
).filter(lambda t: not any(c <= " " or c == "\x7f" for c in t))  # valid request-targets
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
NAMES = st.one_of(
    st.sampled_from(["set-cookie", "content-type", "x-dup"]), st.text(TOKEN, min_size=1, max_size=8)
)
LATIN1 = st.text(st.characters(max_codepoint=255), max_size=16)
# field values the decoder accepts (anpx_core.strict): no control character but HTAB
FIELD_VALUES = st.text(
    st.characters(max_codepoint=255, blacklist_characters=[*map(chr, range(32)), "\x7f"])
    | st.just("\t"),
    max_size=16,
)
HEADERS = st.lists(st.tuples(NAMES, FIELD_VALUES), max_size=6)
METHODS = st.text(TOKEN.upper(), min_size=1, max_size=8)
RIDS = st.one_of(
    st.uuids().map(str), st.text(min_size=1, max_size=32).filter(lambda s: len(s.encode()) <= 128)
)
# Large bodies: uniformly sized random bytes (st.binary rarely draws long values).
LARGE = st.builds(
    lambda n, seed: random.Random(seed).randbytes(n), st.integers(65, 2500), st.integers()
)
BODIES = st.one_of(st.just(b""), st.binary(max_size=64), LARGE)

REQUESTS = st.builds(Request, RIDS, METHODS, TARGETS, HEADERS, BODIES)
RESPONSES = st.builds(Response, RIDS, st.integers(100, 999), LATIN1, HEADERS, BODIES)
ERRORS = st.builds(ErrorMessage, st.none() | RIDS, st.text(max_size=100))
HTTP_MESSAGES = st.one_of(REQUESTS, RESPONSES)
MESSAGES = st.one_of(REQUESTS, RESPONSES, ERRORS)


# --- helpers ---------------------------------------------------------------------------------


def head_of(m: Request | Response) -> RequestHead | ResponseHead:
    if isinstance(m, Request):
        return RequestHead(m.method, m.target, list(m.headers))
    return ResponseHead(m.status, m.reason, list(m.headers))


def meta_len(m: Request | Response) -> int:
    head = head_of(m)
    raw = encode_request_meta(head) if isinstance(head, RequestHead) else encode_response_meta(head)
    return len(raw)


def single_size(m: Request | Response) -> int:
    """Size of the one unchunked frame: header, request_id, meta, body if any."""
    body = 5 + len(m.body) if m.body else 0
    return 24 + 5 + len(m.request_id.encode()) + 5 + meta_len(m) + body


def min_frame_size(m: Message) -> int:
    """The smallest max_frame_size encode_message accepts for ``m``."""
    if isinstance(m, ErrorMessage):
        rid = 0 if m.request_id is None else 5 + len(m.request_id.encode())
        return 24 + rid + 5 + len(m.text.encode())
    headless = single_size(dataclasses.replace(m, body=b""))
    # chunked: chunk 0 adds chunk_idx and chunk_tot (9 bytes each) to the head
    return single_size(m) if not m.body else min(single_size(m), headless + 18)


def frame_sizes(m: Message, lo: int, chunk_tot: bool = True) -> st.SearchStrategy[int]:
    """max_frame_size values: the minimum, near it, across the chunked range, at exact fits."""
    if isinstance(m, ErrorMessage):
        return st.one_of(st.just(lo), st.integers(lo, lo + 1000))
    # per chunk: header, request_id, chunk_idx, chunk_tot?, body TLV; once: meta, final_chunk
    per_chunk = 24 + 5 + len(m.request_id.encode()) + 9 + (9 if chunk_tot else 0) + 5
    once = 5 + meta_len(m) + 6

    def exact_fit(n_delta: tuple[int, int]) -> int:
        n, delta = n_delta  # frames of this size hold the body in exactly n chunks
        return max(lo, -(-(len(m.body) + n * per_chunk + once) // n) + delta)

    return st.one_of(
        st.just(lo),
        st.integers(lo, lo + 80),
        st.integers(lo, max(lo, single_size(m) + 10)),
        st.tuples(st.integers(1, 8), st.integers(-1, 1)).map(exact_fit),
        st.integers(lo, 1 << 17),
    )


def tlvs(wire: bytes) -> dict[int, bytes]:
    return dict(decode_frame(wire).tlvs)


def events_of(decoder: MessageDecoder, frames: list[bytes]) -> list:
    return [event for wire in frames for event in decoder.receive_bytes(wire)]


def expected_events(m: Message) -> tuple[list, bytes]:
    """(events without bodies, body) a decoder must yield for ``m``."""
    if isinstance(m, ErrorMessage):
        return [ErrorReceived(m.request_id, m.text)], b""
    return [HeadReceived(m.request_id, head_of(m)), MessageComplete(m.request_id)], m.body


def check_events(events: list, m: Message) -> None:
    shape, body = expected_events(m)
    assert [e for e in events if not isinstance(e, BodyReceived)] == shape
    parts = [e for e in events if isinstance(e, BodyReceived)]
    assert all(e.request_id == m.request_id and e.data for e in parts)
    assert b"".join(e.data for e in parts) == body
    if parts:  # body strictly between head and completion
        assert isinstance(events[0], HeadReceived) and isinstance(events[-1], MessageComplete)


def check_streaming_layout(frames: list[bytes], meta_tag: int, with_total: bool) -> None:
    """Chunked: idx from 0, meta only in chunk 0, chunk_tot everywhere or nowhere, final last."""
    for idx, wire in enumerate(frames):
        assert wire[6] == 1
        found = tlvs(wire)
        assert struct.unpack(">I", found[0x0A]) == (idx,)
        assert (0x0B in found) == with_total
        if with_total:
            assert struct.unpack(">I", found[0x0B]) == (len(frames),)
        assert (meta_tag in found) == (idx == 0)
        assert (0x0C in found) == (idx == len(frames) - 1)


# --- round trips -----------------------------------------------------------------------------


@SETTINGS
@given(MESSAGES, st.data())
def test_encode_decode_round_trip_any_frame_size(m: Message, data: st.DataObject) -> None:
    lo = min_frame_size(m)
    size = data.draw(frame_sizes(m, lo), "size")
    frames = encode_message(m, size)
    assert all(len(wire) <= size for wire in frames)
    assert decode_message(frames) == m
    check_events(events_of(MessageDecoder(), frames), m)
    if not isinstance(m, ErrorMessage):
        if single_size(m) <= size:
            assert len(frames) == 1 and frames[0][6] == 0
        else:
            meta_tag = 0x02 if isinstance(m, Request) else 0x04
            check_streaming_layout(frames, meta_tag, with_total=True)
    with pytest.raises(ProtocolError) as info:
        encode_message(m, lo - 1)
    assert info.value.code == "too_large"


@SETTINGS
@given(HTTP_MESSAGES, st.data())
def test_streaming_encoder_any_splits_and_flushes(
    m: Request | Response, data: st.DataObject
) -> None:
    # chunk 0 of the streaming layout: header, request_id, chunk_idx, meta
    lo = 24 + 5 + len(m.request_id.encode()) + 9 + 5 + meta_len(m)
    size = data.draw(frame_sizes(m, lo, chunk_tot=False), "size")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(m.body)), max_size=8), "cuts"))
    parts = [m.body[a:b] for a, b in zip([0, *cuts], [*cuts, len(m.body)], strict=True)]
    flushes = data.draw(st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)))
    end_with_part = data.draw(st.booleans(), "end_with_part")
    encoder = MessageEncoder(head_of(m), m.request_id, size)
    frames: list[bytes] = []
    for i, (part, flush) in enumerate(zip(parts, flushes, strict=True)):
        if end_with_part and i == len(parts) - 1:
            break
        frames += encoder.data(part)
        if flush:
            frames += encoder.flush()
    frames += encoder.end(parts[-1]) if end_with_part else encoder.end()
    assert encoder.ended
    assert all(len(wire) <= size for wire in frames)
    assert decode_message(frames) == m
    check_events(events_of(MessageDecoder(), frames), m)
    flushed = any(flushes[: len(parts) - end_with_part])
    if not flushed and single_size(m) + 9 <= size:  # the body never outgrew chunk 0
        assert frames == encode_message(m, size)
    if len(frames) > 1 or frames[0][6]:
        meta_tag = 0x02 if isinstance(m, Request) else 0x04
        check_streaming_layout(frames, meta_tag, with_total=False)


@SETTINGS
@given(st.lists(MESSAGES, min_size=1, max_size=5), st.data())
def test_interleaved_messages_decode_independently(
    messages: list[Message], data: st.DataObject
) -> None:
    messages = [
        dataclasses.replace(m, request_id=f"{i}:{m.request_id}") for i, m in enumerate(messages)
    ]
    wires = []
    for m in messages:
        size = data.draw(st.integers(min_frame_size(m), min_frame_size(m) + 300), "size")
        wires.append(encode_message(m, size))
    order = data.draw(st.permutations([i for i, w in enumerate(wires) for _ in w]), "order")
    position = [0] * len(wires)
    decoder = MessageDecoder()
    per_message: dict[str, list] = {m.request_id: [] for m in messages}  # type: ignore[misc]
    for i in order:
        wire = wires[i][position[i]]
        position[i] += 1
        for event in decoder.receive_bytes(wire):
            assert event.request_id == messages[i].request_id  # nothing crosses streams
            per_message[event.request_id].append(event)
    assert decoder.partial_messages == 0
    for m, wire in zip(messages, wires, strict=True):
        check_events(per_message[m.request_id], m)  # type: ignore[index]
        assert per_message[m.request_id] == events_of(MessageDecoder(), wire)  # type: ignore[index]


def chunk_capacity(m: Request | Response, size: int, n: int, chunk_tot: bool) -> int:
    """Body bytes that n chunks of ``size`` bytes hold: meta in chunk 0, final_chunk in the last."""
    per_chunk = 24 + 5 + len(m.request_id.encode()) + 9 + (9 if chunk_tot else 0) + 5
    return n * (size - per_chunk) - (5 + meta_len(m)) - 6


@SETTINGS
@given(HTTP_MESSAGES, st.integers(1, 6), st.integers(0, 400), st.integers(-1, 1), st.data())
def test_chunk_count_at_exact_fit(
    m: Request | Response, n: int, extra: int, delta: int, data: st.DataObject
) -> None:
    """A body that exactly fills n chunks takes n chunks; one byte more takes n + 1."""
    streaming = data.draw(st.booleans(), "streaming")
    # chunk 0 with room for at least one body byte
    head_min = 24 + 5 + len(m.request_id.encode()) + 9 + (0 if streaming else 9) + 5 + meta_len(m)
    size = head_min + 5 + 1 + extra
    length = chunk_capacity(m, size, n, chunk_tot=not streaming) + delta
    m = dataclasses.replace(m, body=random.Random(length).randbytes(max(length, 0)))
    if single_size(m) <= size:
        return  # sent unchunked
    expected = n + (delta > 0)
    if streaming:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(m.body)), max_size=4), "cuts"))
        encoder = MessageEncoder(head_of(m), m.request_id, size)
        frames = []
        for a, b in zip([0, *cuts], cuts, strict=False):
            frames += encoder.data(m.body[a:b])
        frames += encoder.end(m.body[cuts[-1] if cuts else 0 :])
    else:
        frames = encode_message(m, size)
    assert len(frames) == expected
    assert all(len(wire) <= size for wire in frames)
    # greedy: chunks are full but for the last two (a body that fits a non-final chunk but
    # not the final one goes out whole, then an empty final chunk)
    assert all(len(wire) == size for wire in frames[:-2])
    assert decode_message(frames) == m


# --- the reference layout --------------------------------------------------------------------


def ref_lossless(target: str) -> bool:
    raw_path, _, raw_query = target.partition("?")
    path, query = unquote(raw_path), dict(parse_qsl(raw_query, keep_blank_values=True))
    rebuilt = quote(path, safe="/!$&'()*+,;=:@")
    return (rebuilt + "?" + urlencode(query) if query else rebuilt) == target


def ref_frame(ftype: int, tlv_list: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack(">BI", tag, len(value)) + value for tag, value in tlv_list)
    prefix = struct.pack(">4sBBBBI", b"ANPX", 1, ftype, 0, 0, 24 + len(body))
    return prefix + struct.pack(">III", zlib.crc32(prefix), zlib.crc32(body), 0) + body


def ref_single(m: Message) -> bytes:
    """The v1 reference encoder's one frame, from the spec's description alone."""
    if isinstance(m, ErrorMessage):
        rid = [] if m.request_id is None else [(0x01, m.request_id.encode())]
        return ref_frame(0xFF, [*rid, (0x03, m.text.encode())])
    if isinstance(m, Request):
        raw_path, _, raw_query = m.target.partition("?")
        meta = {
            "method": m.method,
            "path": unquote(raw_path),
            "headers": dict(m.headers),
            "query": dict(parse_qsl(raw_query, keep_blank_values=True)),
        }
        ftype, tag = 0x01, 0x02
    else:
        meta = {"status": m.status, "reason": m.reason, "headers": dict(m.headers)}
        ftype, tag = 0x02, 0x04
    tlv_list = [(0x01, m.request_id.encode()), (tag, json.dumps(meta).encode())]
    if m.body:
        tlv_list.append((0x03, m.body))
    return ref_frame(ftype, tlv_list)


V1_HEADERS = st.lists(st.tuples(NAMES, FIELD_VALUES), max_size=6, unique_by=lambda pair: pair[0])
V1_BODIES = st.one_of(st.just(b""), st.binary(max_size=300))
V1_MESSAGES = st.one_of(
    st.builds(Request, RIDS, METHODS, TARGETS.filter(ref_lossless), V1_HEADERS, V1_BODIES),
    st.builds(Response, RIDS, st.integers(100, 999), LATIN1, V1_HEADERS, V1_BODIES),
    ERRORS,
)


@SETTINGS
@given(V1_MESSAGES)
def test_v1_expressible_messages_encode_like_the_reference(m: Message) -> None:
    expected = ref_single(m)
    assert encode_message(m) == [expected]
    assert encode_message(m, len(expected)) == [expected]
    if not isinstance(m, ErrorMessage):
        assert MessageEncoder(head_of(m), m.request_id).end(m.body) == [expected]
    assert decode_message([expected]) == m


WORKED_EXAMPLE = bytes.fromhex(
    "414e505801010000000000cb42d87a2d5faf0dcd00000000010000002435353065383430302d653239622d343164342d"
    "613731362d34343636353534343030303002000000727b226d6574686f64223a2022504f5354222c202270617468223a"
    "20222f6170692f76312f72756e222c202268656164657273223a207b22636f6e74656e742d74797065223a2022617070"
    "6c69636174696f6e2f6a736f6e227d2c20227175657279223a207b2271223a202274657374227d7d030000000e7b2266"
    "6f6f223a2022626172227d"
)


def test_worked_example_from_the_spec() -> None:
    m = Request(
        "550e8400-e29b-41d4-a716-446655440000",
        "POST",
        "/api/v1/run?q=test",
        [("content-type", "application/json")],
        b'{"foo": "bar"}',
    )
    assert len(WORKED_EXAMPLE) == 203
    assert encode_message(m) == [WORKED_EXAMPLE]
    assert decode_message([WORKED_EXAMPLE]) == m


# --- malformed input -------------------------------------------------------------------------


def fix_crcs(wire: bytes) -> bytes:
    out = bytearray(wire)
    if len(out) >= 24:
        out[8:12] = struct.pack(">I", len(out))
        out[12:16] = struct.pack(">I", zlib.crc32(bytes(out[:12])))
        out[16:20] = struct.pack(">I", zlib.crc32(bytes(out[24:])))
    return bytes(out)


def feed_all(frames: list[bytes], limits: Limits | None = None) -> None:
    """Each frame into one decoder, and all into decode_message: only ProtocolError may escape."""
    decoder = MessageDecoder(limits)
    for wire in frames:
        try:
            decoder.receive_bytes(wire)
        except ProtocolError as exc:
            assert exc.code in ERROR_CODES
    try:
        decode_message(frames, limits)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


@pytest.mark.timeout(60)  # nothing may hang
@FUZZ
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=3))
def test_arbitrary_bytes_raise_only_protocol_error(wires: list[bytes]) -> None:
    feed_all(wires)
    feed_all([fix_crcs(b"ANPX\x01" + bytes([w[0] % 3 if w else 1]) + w) for w in wires])


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
)


def mutate(wire: bytes, mutation: tuple) -> bytes:
    kind, pos, *rest = mutation
    pos %= len(wire) + 1
    if kind == "flip":
        pos %= max(len(wire), 1)
        return wire[:pos] + bytes([wire[pos] ^ (1 << rest[0])]) + wire[pos + 1 :] if wire else wire
    if kind == "truncate":
        return wire[:pos]
    if kind == "insert":
        return wire[:pos] + rest[0] + wire[pos:]
    return wire[:pos] + wire[pos + rest[0] :]


@pytest.mark.timeout(60)
@FUZZ
@given(
    MESSAGES,
    st.integers(0, 300),
    st.lists(st.tuples(st.integers(0, 20), MUTATIONS), min_size=1, max_size=3),
    st.booleans(),
)
def test_mutated_messages_raise_only_protocol_error(
    m: Message, extra: int, muts: list[tuple], recrc: bool
) -> None:
    frames = encode_message(m, min_frame_size(m) + extra)
    for which, mutation in muts:
        which %= len(frames)
        frames[which] = mutate(frames[which], mutation)
        if recrc:  # get past the CRCs into the TLV, chunk and meta checks
            frames[which] = fix_crcs(frames[which])
    feed_all(frames)
    feed_all(frames[::-1])


TLV_VALUES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"\x01", b"\x00\x00\x00\x00", b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"]),
    st.sampled_from([b"r1", b"r2"]),
    st.sampled_from(
        [
            b'{"method": "GET", "path": "/", "headers": {}, "query": {}}',
            b'{"status": 200, "reason": "OK", "headers": {}}',
            b'{"method": "GET", "anpx_target": "/", "anpx_headers": [["a", "b"]]}',
            b'{"status": 200, "anpx_headers": [["a", "b"], ["a", "c"]]}',
            b'{"method": "GET", "path": "/\\ud800", "query": {"a": ["b"]}}',
            b"[" * 5000,
        ]
    ),
)
FRAME_SPECS = st.tuples(
    st.sampled_from([0x01, 0x02, 0xFF]),
    st.sampled_from([0, 1]),
    st.lists(
        st.tuples(st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x0A, 0x0B, 0x0C, 0xF0]), TLV_VALUES),
        max_size=6,
    ),
)


@pytest.mark.timeout(60)
@FUZZ
@given(st.lists(FRAME_SPECS, min_size=1, max_size=6))
def test_well_framed_nonsense_raises_only_protocol_error(specs: list[tuple]) -> None:
    feed_all([encode_frame(*spec) for spec in specs])


def chunk(ftype: int, rid: bytes, idx: int, *extra: tuple[int, bytes]) -> bytes:
    return encode_frame(ftype, 1, [(0x01, rid), (0x0A, struct.pack(">I", idx)), *extra])


REQ_META = (0x02, b'{"method": "GET", "path": "/", "headers": {}, "query": {}}')
RESP_META = (0x04, b'{"status": 200, "reason": "OK", "headers": {}}')
TOT = (0x0B, struct.pack(">I", 2))
FINAL = (0x0C, b"\x01")


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([chunk(1, b"r", 1, REQ_META)], "bad_chunk"),  # starts past chunk 0
        ([chunk(1, b"r", 0, REQ_META), chunk(1, b"r", 2, FINAL)], "bad_chunk"),  # skips one
        ([chunk(1, b"r", 0, REQ_META, TOT), chunk(1, b"r", 1, (0x0B, b"\0\0\0\3"))], "bad_chunk"),
        ([chunk(1, b"r", 2, REQ_META, TOT)], "bad_chunk"),  # idx beyond chunk_tot
        ([chunk(1, b"r", 0, REQ_META, (0x0B, b"\0\0\0\3"), FINAL)], "bad_chunk"),  # early final
        ([chunk(1, b"r", 0, REQ_META), chunk(2, b"r", 1, RESP_META, FINAL)], "bad_chunk"),
        ([chunk(1, b"r", 0, REQ_META), encode_frame(1, 0, [(1, b"r"), REQ_META])], "bad_chunk"),
        ([encode_frame(1, 0, [(1, b"r"), REQ_META, (0x0A, b"\0\0\0\0")])], "bad_chunk"),
        ([encode_frame(0xFF, 1, [(1, b"r"), (3, b"x")])], "bad_chunk"),
        ([chunk(1, b"r", 0, REQ_META), chunk(1, b"r", 1, REQ_META, FINAL)], "bad_chunk"),
        ([encode_frame(1, 0, [REQ_META])], "missing_field"),  # no request_id
        ([encode_frame(1, 0, [(1, b"r")])], "missing_field"),  # no meta
        ([encode_frame(1, 1, [(1, b"r"), REQ_META])], "missing_field"),  # no chunk_idx
        ([chunk(2, b"r", 0, (3, b"body"), FINAL)], "missing_field"),  # ended without meta
        ([encode_frame(1, 0, [(1, b"r"), (1, b"r"), REQ_META])], "bad_tlv"),  # repeated TLV
        ([encode_frame(1, 0, [(1, b"r" * 129), REQ_META])], "bad_tlv"),  # request_id too long
        ([encode_frame(1, 0, [(1, b""), REQ_META])], "bad_tlv"),
        ([encode_frame(1, 0, [(1, b"\xff"), REQ_META])], "bad_tlv"),  # not UTF-8
        ([encode_frame(1, 1, [(1, b"r"), (0x0A, b"\0\0\0"), REQ_META])], "bad_tlv"),
        ([chunk(1, b"r", 0, REQ_META, (0x0C, b"\x02"))], "bad_tlv"),
        ([encode_frame(1, 0, [(1, b"r"), RESP_META])], "bad_tlv"),  # meta of the other type
        ([encode_frame(1, 0, [(1, b"r"), (2, b"{")])], "bad_meta"),
        ([chunk(2, b"r", 0, RESP_META)], "truncated"),  # decode_message: no final chunk
    ],
)
def test_decoder_error_codes(frames: list[bytes], code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(frames)
    assert info.value.code == code
    if code != "truncated":
        assert info.value.request_id in (None, "r")


def test_unknown_tags_are_skipped_and_errors_carry_the_request_id() -> None:
    wire = encode_frame(2, 0, [(0xF0, b"ext"), (1, b"r"), (0x7F, b""), RESP_META, (3, b"hi")])
    assert decode_message([wire]) == Response("r", 200, "OK", [], b"hi")
    with pytest.raises(ProtocolError) as info:
        decode_message([chunk(2, b"r", 0, RESP_META), chunk(2, b"r", 5)])
    assert info.value.request_id == "r"


# --- limits at their edge --------------------------------------------------------------------


def test_max_frame_size_limit_edge() -> None:
    wire = encode_message(Response("r", 200, "OK", [], b"x" * 100))[0]
    assert decode_message([wire], Limits(max_frame_size=len(wire))).body == b"x" * 100
    with pytest.raises(ProtocolError) as info:
        MessageDecoder(Limits(max_frame_size=len(wire) - 1)).receive_bytes(wire)
    assert info.value.code == "too_large"


def test_max_meta_size_limit_edge() -> None:
    m = Request("r", "GET", "/a?b=c", [("x", "y")])
    size = meta_len(m)
    wire = encode_message(m)
    assert decode_message(wire, Limits(max_meta_size=size)) == m
    with pytest.raises(ProtocolError) as info:
        decode_message(wire, Limits(max_meta_size=size - 1))
    assert (info.value.code, info.value.request_id) == ("too_large", "r")


def test_max_partial_messages_limit_edge() -> None:
    decoder = MessageDecoder(Limits(max_partial_messages=3))
    for rid in ("a", "b", "c"):
        decoder.receive_bytes(chunk(1, rid.encode(), 0, REQ_META))
    assert decoder.partial_messages == 3
    with pytest.raises(ProtocolError) as info:
        decoder.receive_bytes(chunk(1, b"d", 0, REQ_META))
    assert (info.value.code, info.value.request_id) == ("too_large", "d")
    # a finished (or forgotten) message frees its place
    assert decoder.receive_bytes(chunk(1, b"a", 1, FINAL)) == [MessageComplete("a")]
    decoder.receive_bytes(chunk(1, b"d", 0, REQ_META))
    decoder.forget("b")
    decoder.receive_bytes(chunk(1, b"e", 0, REQ_META))
    assert decoder.partial_messages == 3


@pytest.mark.parametrize("over", [0, 1])
def test_max_headless_body_limit_edge(over: int) -> None:
    # the reference's chunked response: resp_meta and final_chunk only in the last chunk
    frames = [
        chunk(2, b"r", 0, (3, b"a" * 40)),
        chunk(2, b"r", 1, (3, b"b" * 60)),
        chunk(2, b"r", 2, RESP_META, FINAL, (3, b"c" * 500)),
    ]
    decoder = MessageDecoder(Limits(max_headless_body=100 - over))
    decoder.receive_bytes(frames[0])
    if over:
        with pytest.raises(ProtocolError) as info:
            decoder.receive_bytes(frames[1])
        assert (info.value.code, info.value.request_id) == ("too_large", "r")
        return
    assert decoder.receive_bytes(frames[1]) == []
    events = decoder.receive_bytes(frames[2])
    assert events == [
        HeadReceived("r", ResponseHead(200, "OK", [])),
        BodyReceived("r", b"a" * 40),
        BodyReceived("r", b"b" * 60),
        BodyReceived("r", b"c" * 500),
        MessageComplete("r"),
    ]


def test_encoder_holds_copies_of_reused_buffers() -> None:
    buf = bytearray(b"a" * 100)
    encoder = MessageEncoder(ResponseHead(200), "r", 1000)
    frames = encoder.data(buf)  # held: the whole message may still fit one frame
    buf[:] = b"b" * 100
    frames += encoder.data(memoryview(buf))
    buf[:] = b"c" * 100
    buf += b"resizable: no view of it is held"
    frames += encoder.end()
    assert frames == encode_message(Response("r", 200, "", [], b"a" * 100 + b"b" * 100), 1000)


def test_encoder_state_errors() -> None:
    encoder = MessageEncoder(ResponseHead(200), "r")
    encoder.end()
    with pytest.raises(RuntimeError):
        encoder.data(b"x")
    with pytest.raises(RuntimeError):
        encoder.end()
    assert encoder.flush() == []
