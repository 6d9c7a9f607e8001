"""A whole message in one event (StreamMessage) and in one call (send_message) gives what
the three-event path (StreamHead, StreamData, StreamEnd) and start/send/end give: the
same frames on the wire, the same bytes to the client, the same request to the app, and
the three events for a consumer that does not take whole messages."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anpx_core import frames as F
from anpx_core import messages as M
from anpx_core.errors import ProtocolError
from anpx_core.gateway import GatewayCore
from anpx_core.gateway.tunnels import TunnelConn
from anpx_core.http1 import FrontLimits, HttpFront
from anpx_core.meta import RequestHead, ResponseHead
from anpx_core.receiver import ReceiverCore
from anpx_core.tunnel import (
    StreamData,
    StreamEnd,
    StreamHead,
    StreamMessage,
    TunnelSession,
    split_message,
)
from anpx_host.config import parse_config, to_gateway_settings, to_receiver_settings

from .hypothesis_profiles import examples

_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
_HEADERS = st.lists(st.tuples(_TEXT.map(str.lower), _TEXT), max_size=4)
_HEADS = st.one_of(
    st.builds(RequestHead, st.sampled_from(["GET", "POST"]), _TEXT.map("/".__add__), _HEADERS),
    st.builds(ResponseHead, st.integers(200, 599), st.just("OK"), _HEADERS),
)
_BODIES = st.one_of(st.just(b""), st.binary(max_size=40), st.integers(0, 600).map(b"b".__mul__))


class Recorder:
    def __init__(self) -> None:
        self.out: list[object] = []

    def send_binary(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def send_control(self, message: dict, *, v1_untyped: bool = False) -> None:
        self.out.append(message)


def _send(whole: bool, head: Any, rid: str, body: bytes, size: int, window: int | None) -> tuple:
    ws = Recorder()
    accepts = ResponseHead if isinstance(head, RequestHead) else RequestHead
    session = TunnelSession(
        ws, accepts=accepts, local_window=window, peer_window=window, send_frame_size=size
    )
    try:
        if whole:
            session.send_message(rid, head, body)
        else:
            session.start(rid, head)
            session.send(rid, body)
            session.end(rid)
        error = None
    except ProtocolError as exc:
        error = (exc.code, str(exc))
    state = (session.has_stream(rid), session.unsent(rid), session.writable(rid))
    return ws.out, error, state, session.bytes_out


@settings(max_examples=examples(300), deadline=None)
@given(
    _HEADS,
    st.sampled_from(["r", "0123-abcd", "x" * 120]),
    _BODIES,
    st.integers(60, 900),
    st.sampled_from([None, 1, 100, 1 << 20]),
)
def test_send_message_puts_on_the_wire_what_start_send_end_do(
    head: Any, rid: str, body: bytes, size: int, window: int | None
) -> None:
    assert _send(True, head, rid, body, size, window) == _send(False, head, rid, body, size, window)


def test_send_message_twice_is_refused_like_a_second_start() -> None:
    session = TunnelSession(Recorder(), accepts=ResponseHead, local_window=None, peer_window=None)
    session.send_message("r", RequestHead("GET", "/", []), b"")
    with pytest.raises(RuntimeError):
        session.send_message("r", RequestHead("GET", "/", []), b"")
    with pytest.raises(RuntimeError):
        session.start("r", RequestHead("GET", "/", []))


# --- the front: one call for head, body and end ---------------------------------------------

_REQUESTS = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",  # body still unread
    ]
)
_RESPONSE_HEADERS = st.lists(
    st.sampled_from(
        [
            ("content-type", "text/plain"),
            ("content-length", "3"),
            ("content-length", "0"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("x-bad", "a\nb"),
            ("x-\u00e9", "v"),
        ]
    ),
    max_size=3,
)


def _front(request: bytes) -> HttpFront:
    front = HttpFront(FrontLimits(), 0.0, client=("127.0.0.1", 1), server=("127.0.0.1", 2))
    front.receive_data(request, 0.0)
    return front


@settings(max_examples=examples(300), deadline=None)
@given(_REQUESTS, st.sampled_from([200, 204, 304, 404]), _RESPONSE_HEADERS, _BODIES)
def test_the_front_writes_a_whole_response_as_its_three_calls_do(
    request: bytes, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    head = ResponseHead(status, "", headers)
    whole, parts = _front(request), _front(request)
    queued = whole.send_message(head, body)
    parts.send_response(head)
    queued_parts = parts.send_data(body) if body else 0
    parts.end_response()
    assert queued == queued_parts
    assert whole.data_to_send() == parts.data_to_send()
    assert (whole.closed, whole.wants_read) == (parts.closed, parts.wants_read)


# --- both cores back to back: the whole-message path against the three-event path ------------


class Pair:
    """A gateway and a receiver core wired without sockets, one client (bench's Tunnel)."""

    def __init__(self, app: Any, flow: bool) -> None:
        window = {} if flow else {"stream_window": 0}
        cfg = parse_config(
            {"receiver": {"gateway_url": "ws://127.0.0.1:8765/", **window}, "gateway": window}
        )
        self.gw = GatewayCore(to_gateway_settings(cfg))
        self.rx = ReceiverCore(to_receiver_settings(cfg))
        self.app = app
        self.now = 1000.0
        self.rx.start(self.now, 0.0)
        (request,) = self.rx.pop_connects()
        self.link = request.cid
        self.tunnel = self.gw.open_tunnel(self.now, ("127.0.0.1", 50000))
        self.rx.connected(self.link, self.now)
        self.client = -1
        self.run(lambda: bool(self.gw.receivers))
        self.client = self.gw.open_client(self.now, ("127.0.0.1", 40000), ("127.0.0.1", 8080))
        self.response = bytearray()

    def run(self, done: Any) -> None:
        for _ in range(50):
            moved = self._step()
            if done() and not moved:
                return
        raise AssertionError("the pair does not settle")

    def _step(self) -> bool:
        gw, rx, now = self.gw, self.rx, self.now
        moved = False
        data, _ = gw.take_output(self.tunnel)
        if data:
            moved = True
            gw.written(self.tunnel, now)
            rx.receive(self.link, data, now)
        if rx.heads_pending:
            rx.flush_heads()
        for call_id, scope in rx.pop_app_calls():
            moved = True
            self._call(call_id, scope)
        data, _ = rx.take_output(self.link)
        if data:
            moved = True
            rx.written(self.link, now)
            gw.receive(self.tunnel, data, now)
        if self.client >= 0:
            data, _ = gw.take_output(self.client)
            if data:
                moved = True
                self.response += data
                gw.written(self.client, now)
        for core in (gw, rx):
            core.pop_wakeups()
            core.pop_aborts()
        rx.pop_connects()
        return moved

    def _call(self, call_id: int, scope: dict[str, Any]) -> None:
        rx = self.rx

        async def receive() -> dict[str, Any]:
            message = rx.asgi_receive(call_id)
            assert message is not None
            return message

        async def send(message: dict[str, Any]) -> None:
            rx.asgi_send(call_id, message, self.now)

        coro = self.app(scope, receive, send)
        with contextlib.suppress(StopIteration):
            coro.send(None)
            raise AssertionError("the app suspended")
        rx.app_finished(call_id, None, self.now)

    def request(self, raw: bytes) -> bytes:
        self.gw.receive(self.client, raw, self.now)
        self.run(lambda: True)
        out = bytes(self.response)
        self.response.clear()
        return out


def _exchange(
    general: bool, flow: bool, raw: bytes, status: int, headers: list, body: bytes, more: bool
) -> tuple:
    seen: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        seen.append((scope["method"], scope["path"], scope["headers"], message))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if more:
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": body})

    with pytest.MonkeyPatch.context() as mp:
        if general:  # every frame read by the general decoder, every message by an encoder
            mp.setattr(F, "whole_message", lambda *a: None)
            mp.setattr(M, "whole_frame", lambda *a: None)
        pair = Pair(app, flow)
        answers = [pair.request(raw), pair.request(raw)]  # kept alive: the second one too
    return answers, seen, pair.gw.stats.requests, pair.rx.in_flight


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.booleans(),
    st.sampled_from(
        [
            b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\nX-Request-ID: req-1\r\n\r\n",
            b"HEAD /a HTTP/1.1\r\nHost: h\r\nX-Request-ID: req-1\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: h\r\nX-Request-ID: req-1\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /p HTTP/1.1\r\nHost: h\r\nX-Request-ID: req-1\r\nContent-Length: 0\r\n\r\n",
        ]
    ),
    st.sampled_from([200, 204, 404]),
    st.sampled_from([[], [(b"content-type", b"text/plain")], [(b"content-length", b"2")]]),
    _BODIES,
    st.booleans(),
)
def test_both_cores_answer_alike_on_either_path(
    flow: bool, raw: bytes, status: int, headers: list, body: bytes, more: bool
) -> None:
    fast = _exchange(False, flow, raw, status, headers, body, more)
    assert fast == _exchange(True, flow, raw, status, headers, body, more)


# --- consumers without whole-message handling get the three events ---------------------------


class _Owner:
    cid = 1

    def __init__(self) -> None:
        self.events: list[object] = []

    def stream_event(self, tunnel: object, event: object) -> None:
        self.events.append(event)

    def tunnel_failed(self, why: str) -> None:
        self.events.append(why)


class _Delegate:
    def __init__(self) -> None:
        self.events: list[object] = []

    def event(self, event: object, now: float) -> None:
        self.events.append(event)


@pytest.mark.parametrize("body", [b"", b"xyz"])
def test_an_owner_without_stream_message_gets_the_three_events(body: bytes) -> None:
    message = StreamMessage("r", ResponseHead(200, "OK", []), body)
    tunnel = TunnelConn(None, None, "-", "-", 0.0)  # type: ignore[arg-type]
    owner = _Owner()
    tunnel.streams["r"] = owner
    tunnel._event(message, 0.0)
    assert owner.events == split_message(message)
    expected = [StreamHead, StreamData, StreamEnd] if body else [StreamHead, StreamEnd]
    assert [type(e) for e in owner.events] == expected
    assert tunnel.streams["r"] is owner
    # a visitor's connection (the delegate) too
    tunnel.delegate = _Delegate()  # type: ignore[assignment]
    tunnel._event(message, 0.0)
    assert tunnel.delegate.events == split_message(message)  # type: ignore[attr-defined]


def test_an_unknown_stream_drops_the_message_as_it_drops_its_events() -> None:
    tunnel = TunnelConn(None, None, "-", "-", 0.0)  # type: ignore[arg-type]
    tunnel._event(StreamMessage("gone", ResponseHead(200, "OK", []), b"x"), 0.0)
    assert tunnel.streams == {}


def _outcome(make: Any) -> tuple | None:
    try:
        make()
    except ProtocolError as exc:
        return (exc.code, str(exc), exc.request_id)
    return None


@settings(max_examples=examples(300), deadline=None)
@given(_HEADS, st.sampled_from(["r", "0123-abcd", "x" * 120]), st.integers(1, 400))
def test_check_head_refuses_what_the_encoder_refuses(head: Any, rid: str, size: int) -> None:
    made = _outcome(lambda: M.MessageEncoder(head, rid, size))
    checked = _outcome(lambda: M.check_head(M.head_meta(head), rid, size))
    assert made == checked


@settings(max_examples=examples(200), deadline=None)
@given(_HEADS, _BODIES, st.integers(60, 900), st.sampled_from([None, 100, 1 << 20]))
def test_a_head_checked_first_then_sent_whole_gives_the_same_frames(
    head: Any, body: bytes, size: int, window: int | None
) -> None:
    """The receiver holds a checked head until its body: check_head then send_message (or
    start with the meta) puts out what start/send/end does."""

    def held(whole: bool) -> tuple:
        ws = Recorder()
        accepts = ResponseHead if isinstance(head, RequestHead) else RequestHead
        session = TunnelSession(
            ws, accepts=accepts, local_window=window, peer_window=window, send_frame_size=size
        )
        try:
            meta = session.check_head("r", head)
            if whole:
                session.send_message("r", head, body, meta)
            else:
                session.start("r", head, meta)
                session.send("r", body)
                session.end("r")
        except ProtocolError as exc:
            return ws.out, (exc.code, str(exc))
        return ws.out, None

    plain = _send(False, head, "r", body, size, window)
    assert held(True) == held(False) == (plain[0], plain[1])
