"""TunnelSession on its own: stream multiplexing, credit accounting, cancellation, v1 mode.

Two sessions (the gateway's and the receiver's) talk through fake WebSockets that only
collect what is sent; the tests deliver those messages by hand, in order.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core import messages as M
from anpx_core.meta import RequestHead, ResponseHead
from anpx_core.tunnel import (
    CONTROL_CREDIT,
    EXTENSIONS_HEADER,
    PeerDraining,
    StreamData,
    StreamEnd,
    StreamHead,
    StreamMessage,
    StreamReset,
    StreamWritable,
    TunnelBroken,
    TunnelSession,
    offer_extensions,
    parse_extensions,
    split_message,
)

from .hypothesis_profiles import examples

REQUEST = RequestHead("POST", "/upload", [("host", "app.test")])
RESPONSE = ResponseHead(200, "OK", [("content-type", "application/octet-stream")])


class FakeWs:
    """Collects what a session sends, in order."""

    def __init__(self) -> None:
        self.out: list[bytes | dict] = []

    def send_binary(self, data: bytes) -> None:
        self.out.append(data)

    def send_control(self, message: dict, v1_untyped: bool = False) -> None:
        self.out.append(message)

    def take(self) -> list[bytes | dict]:
        out, self.out = self.out, []
        return out


class Pair:
    """A gateway session and a receiver session over fake WebSockets."""

    def __init__(
        self, gw_window: int | None, rx_window: int | None, frame_size: int = 1024
    ) -> None:
        self.gw_ws, self.rx_ws = FakeWs(), FakeWs()
        # each side's local window is its own offer, if the peer offered one too
        both = gw_window is not None and rx_window is not None
        self.gw = TunnelSession(
            self.gw_ws,
            accepts=ResponseHead,
            local_window=gw_window if both else None,
            peer_window=rx_window,
            send_frame_size=frame_size,
        )
        self.rx = TunnelSession(
            self.rx_ws,
            accepts=RequestHead,
            local_window=rx_window if both else None,
            peer_window=gw_window,
            send_frame_size=frame_size,
        )

    @staticmethod
    def _deliver(messages: list[bytes | dict], to: TunnelSession) -> list:
        events = []
        for message in messages:
            if isinstance(message, bytes):
                # a whole message as its three events (the split every consumer may ask for)
                for event in to.receive_binary(message):
                    events += split_message(event) if isinstance(event, StreamMessage) else [event]
            else:
                events += to.receive_control(message)
        return events

    def to_rx(self) -> list:
        return self._deliver(self.gw_ws.take(), self.rx)

    def to_gw(self) -> list:
        return self._deliver(self.rx_ws.take(), self.gw)


def body_of(events: list, rid: str) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, StreamData) and e.request_id == rid)


def error_of(frame: bytes | dict) -> M.ErrorReceived:
    """The ERROR frame ``frame`` decoded (fails if it is anything else)."""
    assert isinstance(frame, bytes)
    [event] = M.MessageDecoder().receive_bytes(frame)
    assert isinstance(event, M.ErrorReceived), event
    return event


# --- the handshake extension -----------------------------------------------------------------


@given(st.integers(1, 2**31 - 1))
def test_offer_and_parse_round_trip(window: int) -> None:
    assert parse_extensions(offer_extensions(window)) == window


def test_parse_extensions_refuses_windows_beyond_the_bound() -> None:
    assert parse_extensions(offer_extensions(2**31)) is None  # as if not offered: v1
    assert parse_extensions([(EXTENSIONS_HEADER, "flow=\u00b2")]) is None


def test_parse_extensions_cases() -> None:
    assert offer_extensions(None) == []
    assert parse_extensions([]) is None
    assert parse_extensions([("host", "x")]) is None
    assert parse_extensions([("ANPX-Extensions", "flow=4096")]) == 4096
    assert parse_extensions([(EXTENSIONS_HEADER, "other=1, flow=5")]) == 5
    assert parse_extensions([(EXTENSIONS_HEADER, "other"), (EXTENSIONS_HEADER, "flow=7")]) == 7
    bad_values = ("flow=0", "flow=-1", "flow=", "flow", "flow=abc", "flow=1.5", "flow=\xb2")
    for bad in bad_values:
        assert parse_extensions([(EXTENSIONS_HEADER, bad)]) is None, bad


@given(
    st.builds(
        str.__add__,
        st.sampled_from(["", "flow=", "x, flow=", "flow= "]),
        st.text(st.characters(max_codepoint=255)),
    )
)
def test_parse_extensions_never_raises(value: str) -> None:
    # header values are wire bytes read as latin-1: anything a peer sends must parse or be ignored
    window = parse_extensions([(EXTENSIONS_HEADER, value)])
    assert window is None or (isinstance(window, int) and window > 0)


# --- credit accounting -------------------------------------------------------------------------


@settings(max_examples=examples(150), deadline=None)
@given(
    window=st.integers(16, 5000),
    frame_size=st.sampled_from([300, 1024, 65536]),
    sizes=st.lists(st.integers(0, 6000), max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_credit_window_is_never_exceeded_and_bytes_arrive_in_order(
    window: int, frame_size: int, sizes: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    pair = Pair(window, window, frame_size)
    body = rng.randbytes(sum(sizes))
    rid = "req-1"
    pair.gw.start(rid, REQUEST)
    pair.gw.flush(rid)
    received = bytearray()
    unconsumed = 0  # received by the receiver, not yet taken by its consumer
    credited_gap = 0  # received minus credit granted: must never exceed the window
    ended = False
    plan: list[int | str] = [*sizes, "end"]
    pos = 0
    for _ in range(200_000):
        action = rng.choice(["send", "deliver", "consume", "credit"])
        if action == "send" and plan:
            item = plan.pop(0)
            if item == "end":
                pair.gw.end(rid)
            else:
                pair.gw.send(rid, body[pos : pos + item])
                pair.gw.flush(rid)
                pos += item
        elif action == "deliver":
            for event in pair.to_rx():
                assert not isinstance(event, StreamReset), event
                if isinstance(event, StreamData):
                    received += event.data
                    unconsumed += len(event.data)
                    credited_gap += len(event.data)
                    assert credited_gap <= window
                elif isinstance(event, StreamEnd):
                    ended = True
        elif action == "consume" and unconsumed:
            n = rng.randint(1, unconsumed)
            unconsumed -= n
            pair.rx.consumed(rid, n)
        elif action == "credit":
            pair.rx.flush_credits()
            for message in pair.rx_ws.out:
                if isinstance(message, dict) and message["type"] == CONTROL_CREDIT:
                    credited_gap -= sum(n for r, n in message["credits"] if r == rid)
            pair.to_gw()
        if ended:
            break
    else:
        pytest.fail("the upload never completed")
    assert bytes(received) == body
    # the receiver answers; both sides then forget the stream
    pair.rx.start(rid, RESPONSE)
    pair.rx.end(rid)
    events = pair.to_gw()
    assert [type(e) for e in events] == [StreamHead, StreamEnd]
    assert pair.gw.stream_count == 0 and pair.rx.stream_count == 0


def test_blocked_data_is_released_in_order_as_credit_arrives() -> None:
    pair = Pair(100, 100, frame_size=65536)
    rid = "r"
    pair.gw.start(rid, REQUEST)
    parts = [bytes([i]) * n for i, n in enumerate([60, 70, 5, 200])]
    for part in parts:
        pair.gw.send(rid, part)
    pair.gw.end(rid)
    first = pair.to_rx()
    assert [type(e) for e in first] == [StreamHead, StreamData]
    # exactly the window went out at once, even though the frames are far larger
    assert len(body_of(first, rid)) == 100
    assert not pair.gw.writable(rid)
    received = body_of(first, rid)
    ended = False
    while not ended:
        pair.rx.consumed(rid, 100)
        pair.rx.flush_credits()
        pair.to_gw()
        events = pair.to_rx()
        assert len(body_of(events, rid)) <= 100
        received += body_of(events, rid)
        ended = any(isinstance(e, StreamEnd) for e in events)
    assert received == b"".join(parts)


def test_writable_comes_back_with_credit() -> None:
    pair = Pair(64, 64)
    pair.gw.start("a", REQUEST)
    pair.gw.send("a", b"x" * 64)
    pair.gw.flush("a")
    assert not pair.gw.writable("a")
    pair.to_rx()
    pair.rx.consumed("a", 10)  # below a quarter of the window: no credit yet
    pair.rx.flush_credits()
    assert pair.to_gw() == []
    pair.rx.consumed("a", 10)
    pair.rx.flush_credits()
    assert pair.to_gw() == [StreamWritable("a")]
    assert pair.gw.writable("a")
    # credit for a stream that is not waiting wakes nobody
    pair.rx.consumed("a", 30)
    pair.rx.flush_credits()
    assert pair.to_gw() == []


def test_one_blocked_stream_does_not_stall_another() -> None:
    pair = Pair(1000, 1000)
    for rid in ("slow", "fast"):
        pair.gw.start(rid, REQUEST)
    pair.gw.send("slow", b"s" * 5000)
    pair.gw.end("slow")
    pair.gw.send("fast", b"f" * 900)
    pair.gw.end("fast")
    events = pair.to_rx()
    assert body_of(events, "fast") == b"f" * 900
    assert StreamEnd("fast") in events
    assert len(body_of(events, "slow")) == 1000
    assert StreamEnd("slow") not in events


def test_peer_exceeding_the_window_is_reset() -> None:
    pair = Pair(100, 100)
    pair.gw.start("r", REQUEST)
    pair.gw.flush("r")
    pair.to_rx()
    encoder = M.MessageEncoder(REQUEST, "x")  # a misbehaving peer ignoring our window
    rogue = M.MessageEncoder(REQUEST, "r")
    rogue.flush()
    rogue._idx = 1  # continue the message the session already started
    events = pair.rx.receive_binary(rogue.end(b"z" * 101)[0])
    assert events == [StreamReset("r", "peer exceeded its flow-control window", by_peer=False)]
    assert error_of(pair.rx_ws.take()[0]).request_id == "r"
    assert pair.rx.stream_count == 0
    assert encoder  # unused; documents the encoder type


def test_cancel_sends_error_and_late_frames_are_dropped_quietly() -> None:
    pair = Pair(1 << 20, 1 << 20, frame_size=1024)
    pair.gw.start("r", REQUEST)
    pair.gw.send("r", b"a" * 3000)
    pair.gw.flush("r")
    pair.to_rx()
    pair.rx.start("r", RESPONSE)
    pair.rx.send("r", b"b" * 100)
    pair.rx.flush("r")  # chunk 0 of the response is now on its way
    pair.gw.cancel("r", "client went away")
    [error] = pair.gw_ws.take()
    assert error_of(error) == M.ErrorReceived("r", "client went away")
    assert pair.gw.stream_count == 0
    # the response frames already in flight reach a session that forgot the stream
    pair.rx.send("r", b"c" * 5000)  # more chunks, crossing the error
    assert pair.to_gw() == []
    assert pair.gw._decoder.partial_messages == 0, "a cancelled stream must keep no state"
    assert pair.gw_ws.take() == [], "late frames must not bounce ERROR frames back"
    # the receiver learns of the cancel from the ERROR frame
    assert Pair._deliver([error], pair.rx) == [StreamReset("r", "client went away")]
    assert pair.rx.stream_count == 0


def test_response_for_an_unknown_stream_is_dropped() -> None:
    pair = Pair(None, None)
    rx = TunnelSession(FakeWs(), accepts=RequestHead, local_window=None, peer_window=None)
    rx.start("ghost", RESPONSE)
    rx.send("ghost", b"boo")
    rx.end("ghost")
    events = Pair._deliver(rx.ws.take(), pair.gw)
    assert events == []
    assert pair.gw.stream_count == 0 and pair.gw._decoder.partial_messages == 0


def test_garbage_breaks_the_tunnel() -> None:
    pair = Pair(None, None)
    [event] = pair.gw.receive_binary(b"\x00garbage that is no frame")
    assert isinstance(event, TunnelBroken)


def test_wrong_message_direction_is_reset() -> None:
    pair = Pair(None, None)
    # a request arriving at the gateway side: the receiver must never send those
    [frame] = M.encode_message(M.Request("r", "GET", "/"))
    assert pair.gw.receive_binary(frame) == []
    assert error_of(pair.gw_ws.take()[0]).request_id == "r"


# --- v1 mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("gw_window", "rx_window"), [(None, 4096), (4096, None), (None, None)])
def test_v1_peer_means_no_flow_control(gw_window: int | None, rx_window: int | None) -> None:
    pair = Pair(gw_window, rx_window)
    assert not pair.gw.flow and not pair.rx.flow
    pair.gw.start("r", REQUEST)
    pair.gw.send("r", b"v" * 100_000)
    assert pair.gw.writable("r")
    pair.gw.end("r")
    events = pair.to_rx()
    assert body_of(events, "r") == b"v" * 100_000
    pair.rx.consumed("r", 100_000)
    pair.rx.flush_credits()
    assert pair.rx_ws.take() == [], "no credit messages to a v1 peer"
    # credit messages from a confused peer change nothing
    assert pair.gw.receive_control({"type": CONTROL_CREDIT, "credits": [["r", 5]]}) == []


def test_control_messages() -> None:
    pair = Pair(1024, 1024)
    assert pair.gw.receive_control({"type": "something.new"}) == []
    assert pair.gw.receive_control({"type": CONTROL_CREDIT, "credits": "nonsense"}) == []
    assert pair.gw.receive_control({"type": CONTROL_CREDIT, "credits": [[1, 2], ["x"]]}) == []
    pair.rx.send_drain()
    assert pair.to_gw() == [PeerDraining()]
    assert pair.gw.peer_draining


def test_abandon_forgets_every_stream() -> None:
    pair = Pair(1024, 1024)
    for rid in ("a", "b", "c"):
        pair.gw.start(rid, REQUEST)
    pair.gw.end("c")
    assert sorted(pair.gw.abandon()) == ["a", "b", "c"]
    assert pair.gw.stream_count == 0
    pair.gw.send("a", b"dropped")  # sends to forgotten streams are ignored
    assert pair.gw.writable("a")


# --- a wider window for one stream (TCP streams, tcp_stream_window) ---------------------------


def _sent_body(pair: Pair, rid: str, data: bytes) -> bytes:
    pair.gw.send(rid, data)
    pair.gw.flush(rid)
    return body_of(pair.to_rx(), rid)


def test_widen_grants_the_extra_as_credit_and_the_peer_may_use_all_of_it() -> None:
    pair = Pair(100, 100, frame_size=65536)
    rid = "tcp-1"
    pair.gw.start(rid, REQUEST)
    pair.gw.flush(rid)
    assert [type(e) for e in pair.to_rx()] == [StreamHead]
    pair.rx.widen(rid, 400)
    pair.rx.flush_credits()
    assert pair.rx_ws.out == [{"type": CONTROL_CREDIT, "credits": [[rid, 300]]}]
    pair.to_gw()
    # the sender (unchanged: it only sees credit) may now have 400 bytes in flight, not 100
    assert _sent_body(pair, rid, b"x" * 450) == b"x" * 400
    assert pair.gw.unsent(rid) == 50
    # credit returns in quarters of the wider window: 99 consumed bytes grant nothing yet
    pair.rx.consumed(rid, 99)
    pair.rx.flush_credits()
    assert pair.rx_ws.take() == []
    pair.rx.consumed(rid, 1)
    pair.rx.flush_credits()
    assert pair.rx_ws.take() == [{"type": CONTROL_CREDIT, "credits": [[rid, 100]]}]


def test_a_widened_stream_is_still_bounded_by_its_window() -> None:
    # a peer ignoring the window (it acts as if 1000 bytes were granted per stream): one byte
    # beyond the wider window resets the stream
    pair = Pair(100, 100, frame_size=65536)
    pair.gw = TunnelSession(pair.gw_ws, accepts=ResponseHead, local_window=100, peer_window=1000)
    rid = "tcp-1"
    pair.gw.start(rid, REQUEST)
    pair.gw.flush(rid)
    pair.to_rx()
    pair.rx.widen(rid, 400)
    assert _sent_body(pair, rid, b"y" * 400) == b"y" * 400
    pair.gw.send(rid, b"y")
    pair.gw.flush(rid)
    assert any(isinstance(e, StreamReset) for e in pair.to_rx())


@pytest.mark.parametrize("window", [0, 50, 100])
def test_widen_to_no_more_than_the_session_window_sends_nothing(window: int) -> None:
    pair = Pair(100, 100)
    pair.gw.start("s", REQUEST)
    pair.gw.flush("s")
    pair.to_rx()
    pair.rx.widen("s", window)
    pair.rx.flush_credits()
    assert pair.rx_ws.out == []


def test_widen_is_a_no_op_without_flow_control_or_stream_and_only_once() -> None:
    v1 = Pair(None, 100)
    v1.gw.start("s", REQUEST)
    v1.to_rx()
    v1.rx.widen("s", 1000)
    v1.rx.flush_credits()
    assert v1.rx_ws.out == []
    pair = Pair(100, 100)
    pair.rx.widen("unknown", 1000)
    pair.rx.flush_credits()
    assert pair.rx_ws.out == []
    pair.gw.start("s", REQUEST)
    pair.to_gw()
    pair.gw.widen("s", 300)
    pair.gw.widen("s", 300)  # granted once: a second call does not add credit
    pair.gw.flush_credits()
    assert pair.gw_ws.out[-1] == {"type": CONTROL_CREDIT, "credits": [["s", 200]]}
