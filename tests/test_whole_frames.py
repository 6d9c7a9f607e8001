"""The one-frame fast path (frames.whole_message + MessageDecoder.receive_whole) reads a
frame only when the general decoder accepts it, and then with the same result."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anpx_core.errors import ProtocolError
from anpx_core.frames import decode_frame, encode_frame, whole_message
from anpx_core.messages import (
    MAX_REQUEST_ID_BYTES,
    ErrorMessage,
    Limits,
    Message,
    MessageDecoder,
    Request,
    Response,
    encode_message,
)
from anpx_core.meta import RequestHead, ResponseHead
from anpx_core.tunnel import StreamEvent, StreamMessage, TunnelSession, split_message

from .test_messages import FRAME_SPECS, FUZZ, MESSAGES, MUTATIONS, fix_crcs, mutate

LIMITS = [Limits(), Limits(max_frame_size=300, max_meta_size=120)]


def primed(limits: Limits, before: list[bytes]) -> MessageDecoder:
    """A decoder that has seen the frames ``before`` (whatever it made of them)."""
    decoder = MessageDecoder(limits)
    for wire in before:
        with contextlib.suppress(ProtocolError):
            decoder.receive_bytes(wire)
    return decoder


def general(data: bytes, limits: Limits, before: list[bytes]) -> tuple:
    decoder = primed(limits, before)
    try:
        return ("ok", decoder.receive(decode_frame(data, limits.max_frame_size)))
    except ProtocolError as exc:
        return ("error", exc.code, exc.request_id, str(exc))


def fast(data: bytes, limits: Limits, before: list[bytes]) -> tuple | None:
    whole = whole_message(data, limits.max_frame_size, MAX_REQUEST_ID_BYTES)
    if whole is None:
        return None
    decoder = primed(limits, before)
    try:
        return ("ok", decoder.receive_whole(*whole))
    except ProtocolError as exc:
        return ("error", exc.code, exc.request_id, str(exc))


def agree(data: bytes, before: list[bytes] | None = None) -> bool:
    """True when the fast path took the frame (it then gave the general path's result)."""
    taken = False
    for limits in LIMITS:
        got = fast(data, limits, before or [])
        if got is not None:
            assert got == general(data, limits, before or [])
            taken = True
    return taken


def single_frame(m: Message) -> bytes:
    (wire,) = encode_message(m, 1 << 30)
    return wire


@FUZZ
@given(MESSAGES)
def test_every_message_in_one_frame_takes_the_fast_path(m: Message) -> None:
    wire = single_frame(m)
    taken = agree(wire)
    assert taken == (not isinstance(m, ErrorMessage) and len(m.request_id.encode()) <= 128)


@FUZZ
@given(MESSAGES, st.lists(MUTATIONS, min_size=1, max_size=3), st.booleans())
def test_mutated_frames_are_read_as_the_general_decoder_reads_them(
    m: Message, muts: list[tuple], recrc: bool
) -> None:
    wire = single_frame(m)
    for mutation in muts:
        wire = mutate(wire, mutation)
        if recrc:  # get past the CRCs into the TLV and meta checks
            wire = fix_crcs(wire)
    agree(wire)


@FUZZ
@given(FRAME_SPECS)
def test_well_framed_nonsense_is_read_as_the_general_decoder_reads_it(spec: tuple) -> None:
    agree(encode_frame(*spec))


@pytest.mark.parametrize("ftype", [1, 2])
def test_a_message_still_in_progress_is_refused_on_both_paths(ftype: int) -> None:
    meta = (2, b'{"method": "GET", "path": "/"}') if ftype == 1 else (4, b'{"status": 200}')
    chunk0 = encode_frame(ftype, 1, [(1, b"r"), (0x0A, b"\0\0\0\0"), meta])
    whole = encode_frame(ftype, 0, [(1, b"r"), meta, (3, b"body")])
    assert agree(whole, [chunk0])
    assert general(whole, Limits(), [chunk0])[:2] == ("error", "bad_chunk")


@pytest.mark.parametrize(
    "tlvs",
    [
        [(1, b"r"), (2, b"{}"), (3, b"")],  # bad meta, empty body TLV
        [(1, b"r"), (2, b'{"method": "GET", "path": "/"}'), (3, b"")],
        [(1, b"\xff"), (2, b'{"method": "GET", "path": "/"}')],  # not UTF-8: general path
        [(1, b"r" * 129), (2, b'{"method": "GET", "path": "/"}')],  # too long: general path
        [(1, b"r"), (2, b'{"method": "GET", "path": "/"}'), (3, b"x"), (3, b"y")],
        [(1, b"r"), (3, b"x"), (2, b'{"method": "GET", "path": "/"}')],  # another order
        [(1, b"r"), (4, b'{"status": 200}')],  # the other type's meta
        [(1, b"r"), (2, b"[" * 5000)],
    ],
)
def test_edge_frames(tlvs: list[tuple[int, bytes]]) -> None:
    agree(encode_frame(1, 0, tlvs))
    agree(encode_frame(2, 0, tlvs))


# --- the session: a whole frame as bytes (fast path) or as a bytearray (general path) -------


class Recorder:
    """A session's WebSocket: what it sends, in order."""

    def __init__(self) -> None:
        self.out: list[object] = []

    def send_binary(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def send_control(self, message: dict, *, v1_untyped: bool = False) -> None:
        self.out.append(message)


REQ = RequestHead("GET", "/x?a=1", [("host", "h")])
RESP = ResponseHead(200, "OK", [("content-type", "text/plain")])
RIDS2 = st.sampled_from(["a", "b", "c"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), RIDS2),  # the local side starts a stream (gateway: a request)
        st.tuples(st.just("end"), RIDS2),
        st.tuples(st.just("cancel"), RIDS2),
        st.tuples(
            st.just("frame"),
            RIDS2,
            st.sampled_from([1, 2, 0xFF]),
            st.sampled_from([b"", b"x", b"y" * 700]),
            st.lists(MUTATIONS, max_size=1),
            st.booleans(),
        ),
        st.tuples(st.just("chunk0"), RIDS2, st.sampled_from([1, 2])),
    ),
    max_size=10,
)


def _frame(rid: str, ftype: int, body: bytes, muts: list[tuple], recrc: bool) -> bytes:
    if ftype == 0xFF:
        return encode_frame(0xFF, 0, [(1, rid.encode()), (3, b"stop")])
    m = Request(rid, REQ.method, REQ.target, REQ.headers, body) if ftype == 1 else None
    m = m or Response(rid, RESP.status, RESP.reason, RESP.headers, body)
    (wire,) = encode_message(m, 1 << 20)
    for mutation in muts:
        wire = mutate(wire, mutation)
        if recrc:
            wire = fix_crcs(wire)
    return wire


def _split(event: StreamEvent) -> list[StreamEvent]:
    return split_message(event) if isinstance(event, StreamMessage) else [event]


def _run(accepts: type, window: int | None, steps: list[tuple], as_bytes: bool) -> list[str]:
    ws = Recorder()
    session = TunnelSession(ws, accepts=accepts, local_window=window, peer_window=window)
    seen: list[str] = []
    for step in steps:
        kind, rid = step[0], step[1]
        if kind == "open":
            if not session.has_stream(rid) and accepts is ResponseHead:
                session.start(rid, REQ)
        elif kind == "end":
            session.end(rid)
        elif kind == "cancel":
            session.cancel(rid, "gone")
        else:
            if kind == "chunk0":
                meta = (2, b'{"method": "GET", "path": "/"}') if step[2] == 1 else (4, b"{}")
                wire = encode_frame(step[2], 1, [(1, rid.encode()), (0x0A, b"\0\0\0\0"), meta])
            else:
                wire = _frame(rid, *step[2:])
            events = session.receive_binary(wire if as_bytes else bytearray(wire))
            if as_bytes:  # a StreamMessage stands for its three events, and comes alone
                assert all(type(e) is not StreamMessage for e in events[1:])
                events = [p for e in events for p in _split(e)]
            else:
                assert all(type(e) is not StreamMessage for e in events)
            seen.append(repr(events))
        seen.append(repr(ws.out))
        seen.append(repr(sorted((r, session.has_stream(r)) for r in "abc")))
    return seen


@FUZZ
@given(st.sampled_from([RequestHead, ResponseHead]), st.sampled_from([None, 500, 1 << 20]), STEPS)
def test_a_session_reads_whole_frames_as_the_general_path_does(
    accepts: type, window: int | None, steps: list[tuple]
) -> None:
    assert _run(accepts, window, steps, True) == _run(accepts, window, steps, False)
