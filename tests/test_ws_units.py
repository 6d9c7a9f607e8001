"""The WebSocket units back to back (no sockets): a wsproto client, the gateway unit, two
TunnelSessions with flow control, and the receiver's ASGI call (hand-stepped app) or
forward unit (a wsproto server as the service)."""

from __future__ import annotations

from typing import Any

import pytest
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from anpx_core.ws_relay import WsSettings
from tests.ws_pair import RID, Pair, Service

DISCONNECTS: list[dict[str, Any]] = []


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    offered = scope["subprotocols"]
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": offered[0] if offered else None,
            "headers": [(b"x-app", b"yes")],
        }
    )
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            DISCONNECTS.append(message)
            return
        if message.get("text") == "close please":
            await send({"type": "websocket.close", "code": 4002, "reason": "as asked"})
            continue
        if "text" in message:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


@pytest.fixture(autouse=True)
def _clear() -> None:
    DISCONNECTS.clear()


def opened(**kw: Any) -> Pair:
    pair = Pair(app=kw.pop("app", echo_app), **kw)
    pair.connect(subprotocols=kw.pop("subprotocols", None))
    assert isinstance(pair.client_events[0], AcceptConnection), pair.http_answer
    return pair


def finished(pair: Pair) -> bool:
    return not pair.gs.has_stream(RID) and not pair.rs.has_stream(RID)


def test_echo_text_and_binary_with_subprotocol_and_headers() -> None:
    pair = Pair(app=echo_app)
    pair.connect("/chat?room=1", ["chat", "superchat"])
    accept = pair.client_events[0]
    assert isinstance(accept, AcceptConnection)
    assert accept.subprotocol == "chat"
    assert (b"x-app", b"yes") in accept.extra_headers
    pair.send(Message(data="héllo"))
    pair.send(Message(data=b"\x00\xff"))
    assert pair.messages() == ["héllo", b"\x00\xff"]
    assert pair.gw is not None and pair.gw.status == 101


def test_the_scope_is_complete() -> None:
    pair = Pair(app=echo_app)
    pair.connect("/chat/r%2Fx?room=1&x=%20", ["chat"], [(b"cookie", b"a=1")])
    assert pair.call is not None
    scope = pair.call.scope
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["scheme"] == "wss"
    assert scope["path"] == "/chat/r/x"
    assert scope["raw_path"] == b"/chat/r%2Fx"
    assert scope["query_string"] == b"room=1&x=%20"
    assert scope["subprotocols"] == ["chat"]
    assert scope["client"] == ("203.0.113.7", 50123)
    assert scope["server"] == ("app.test", 80)
    assert "websocket.http.response" in scope["extensions"]
    headers = dict(scope["headers"])
    assert headers[b"host"] == b"app.test"
    assert headers[b"cookie"] == b"a=1"
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"x-forwarded-for"] == b"203.0.113.7"
    assert b"sec-websocket-key" not in headers  # the client's key is for the gateway only
    assert "method" not in scope


def test_fragmented_client_message_reaches_the_app_whole() -> None:
    pair = opened()
    pair.send(Message(data="frag", message_finished=False))
    pair.send(Message(data="men", message_finished=False))
    assert pair.messages() == []
    pair.send(Message(data="ted", message_finished=True))
    assert pair.messages() == ["fragmented"]


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (4001, "bye ✓"), (3999, "x" * 100)])
def test_client_close_code_and_reason_reach_the_app_and_are_echoed(code: int, reason: str) -> None:
    pair = opened()
    pair.send(CloseConnection(code=code, reason=reason))
    assert [{"type": "websocket.disconnect", "code": code, "reason": reason}] == DISCONNECTS
    close = pair.client_close()
    assert close is not None and close.code == code
    assert pair.gw is not None and pair.gw.closed
    assert finished(pair)


def test_app_close_reaches_the_client_and_its_answer_the_app() -> None:
    pair = opened()
    pair.send(Message(data="close please"))
    close = pair.client_close()
    assert close is not None and (close.code, close.reason) == (4002, "as asked")
    # the client echoed (wsproto repeats the reason): the app gets exactly that answer
    assert DISCONNECTS == [{"type": "websocket.disconnect", "code": 4002, "reason": "as asked"}]
    assert pair.gw is not None and pair.gw.closed
    assert finished(pair)


def test_client_close_without_status() -> None:
    pair = opened()
    pair.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
    assert DISCONNECTS[0]["code"] == 1005
    close = pair.client_close()
    assert close is not None and close.code == 1005
    assert finished(pair)


def test_client_vanishing_gives_the_app_1006() -> None:
    pair = opened()
    pair.client_eof()
    assert [(d["code"], d["reason"]) for d in DISCONNECTS] == [
        (1006, "connection closed without a Close frame")
    ]
    assert pair.gw is not None and pair.gw.closed
    assert finished(pair)


def test_stream_reset_closes_the_client_with_1011() -> None:
    pair = opened()
    assert pair.call is not None
    pair.rs.cancel(RID, "receiver failed")
    pair.call.disconnected()
    pair.pump()
    close = pair.client_close()
    assert close is not None and close.code == 1011
    assert DISCONNECTS[0]["code"] == 1006


@pytest.mark.parametrize(("going_away", "code"), [(True, 1001), (False, 1011)])
def test_tunnel_loss_closes_the_client(going_away: bool, code: int) -> None:
    pair = opened()
    assert pair.gw is not None
    pair.gw.tunnel_lost(pair.now, going_away=going_away)
    pair.pump()
    close = pair.client_close()
    assert close is not None and close.code == code
    assert pair.gw.closed  # the client answered the Close


def test_drain_closes_with_1001_and_both_sides_answer() -> None:
    pair = opened()
    assert pair.gw is not None
    pair.gw.drain(pair.now)
    pair.pump()
    close = pair.client_close()
    assert close is not None and close.code == 1001
    assert DISCONNECTS[0]["code"] == 1001
    assert pair.gw.closed and finished(pair)


def test_a_close_nobody_answers_ends_after_close_timeout() -> None:
    pair = opened(gateway_settings=WsSettings(close_timeout=2.0))
    pair.client_reads = False  # the client never reads our Close, so never answers
    assert pair.gw is not None
    pair.gw.drain(pair.now)
    pair.pump()
    assert not pair.gw.closed
    pair.advance(1.9)
    assert not pair.gw.closed
    pair.advance(0.2)
    assert pair.gw.closed


# --- denials ---------------------------------------------------------------------------------


async def deny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"www-authenticate", b"Bearer"), (b"content-length", b"12")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b"who are ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"you?"})


async def close_first_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.close"})


async def raising_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    raise RuntimeError("boom")


async def returning_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()


async def accept_then_raise_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("boom")


def answer(pair: Pair) -> tuple[bytes, bytes]:
    head, _, body = pair.http_answer.partition(b"\r\n\r\n")
    return head, body


def test_http_denial_extension() -> None:
    pair = Pair(app=deny_app)
    pair.connect()
    head, body = answer(pair)
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"www-authenticate: Bearer" in head
    assert body == b"who are you?"
    assert pair.gw is not None and pair.gw.status == 401
    assert pair.gw.closed and pair.gw.http_continues  # the connection may serve HTTP again
    assert finished(pair)


@pytest.mark.parametrize(
    ("app", "status"), [(close_first_app, 403), (returning_app, 403), (raising_app, 500)]
)
def test_app_that_does_not_accept(app: Any, status: int) -> None:
    pair = Pair(app=app)
    pair.connect()
    assert answer(pair)[0].startswith(b"HTTP/1.1 %d " % status)
    assert finished(pair)


def test_app_raising_after_accept_closes_with_1011() -> None:
    pair = opened(app=accept_then_raise_app)
    pair.send(Message(data="trigger"))
    close = pair.client_close()
    assert close is not None and close.code == 1011


def test_a_v1_receiver_gets_an_immediate_explained_501() -> None:
    pair = Pair(app=echo_app, ws_on_tunnel=False)
    pair.connect()
    head, body = answer(pair)
    assert head.startswith(b"HTTP/1.1 501 ")
    assert b"does not support WebSocket streams" in body
    assert pair.gw is None and pair.to_receiver.items == []


# --- limits and liveness ------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "passes"), [(1000, True), (1001, False)])
def test_client_message_size_limit_at_the_edge(size: int, passes: bool) -> None:
    pair = opened(gateway_settings=WsSettings(max_message_size=1000))
    pair.send(Message(data=b"a" * 600, message_finished=False))
    pair.send(Message(data=b"a" * (size - 600)))
    if passes:
        assert pair.messages() == [b"a" * size]
    else:
        close = pair.client_close()
        assert close is not None and close.code == 1009
        assert DISCONNECTS[0]["code"] == 1009


@pytest.mark.parametrize(("size", "passes"), [(1000, True), (1001, False)])
def test_app_message_size_limit_at_the_gateway(size: int, passes: bool) -> None:
    pair = opened(gateway_settings=WsSettings(max_message_size=1000))
    assert pair.call is not None
    pair.call.send({"type": "websocket.send", "bytes": b"b" * size})
    pair.pump()
    if passes:
        assert pair.messages() == [b"b" * size]
    else:
        close = pair.client_close()
        assert close is not None and close.code == 1009
        assert pair.resets == [] and finished(pair)
        assert DISCONNECTS[0]["code"] == 1009  # told by a CLOSE record, not a reset (1006)


@pytest.mark.parametrize("forward", [False, True])
def test_a_receiver_limit_below_the_gateways_reaches_the_client_as_1009(forward: bool) -> None:
    # the message passes the gateway (16 MiB) and is too large for the receiver (1000)
    small = WsSettings(max_message_size=1000)
    if forward:
        pair = Pair(service=Service(), receiver_settings=small)
        pair.connect()
    else:
        pair = opened(receiver_settings=small)
    pair.send(Message(data=b"a" * 1000))
    assert pair.messages() == [b"a" * 1000]
    pair.send(Message(data=b"a" * 600, message_finished=False))
    pair.send(Message(data=b"a" * 200_000))  # four records: those after the first discarded
    close = pair.client_close()
    assert close is not None and close.code == 1009
    assert close.reason == "message over 1000 bytes"
    if forward:
        assert pair.service is not None
        closes = [e for e in pair.service.events if isinstance(e, CloseConnection)]
        assert [c.code for c in closes] == [1009]
    else:
        assert DISCONNECTS[0]["code"] == 1009
    assert pair.resets == []  # closed by CLOSE records both ways, not a reset
    assert finished(pair)


def test_sixteen_mib_message_passes_both_ways() -> None:
    pair = opened()
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB
    pair.send(Message(data=data))
    assert pair.messages() == [data]


def test_keepalive_pings_keep_an_idle_socket_and_a_silent_client_is_dropped() -> None:
    settings = WsSettings(ping_interval=30.0, ping_timeout=20.0, idle_timeout=0)
    pair = opened(gateway_settings=settings)
    pair.advance(30.0)
    assert sum(isinstance(e, Ping) for e in pair.client_events) == 1
    pair.advance(600.0)  # the client answers every ping: still open
    assert pair.client_close() is None and DISCONNECTS == []
    pair.client_reads = False
    pair.advance(49.9)
    assert DISCONNECTS == []
    pair.advance(0.2)
    assert DISCONNECTS and DISCONNECTS[0]["code"] == 1006


def test_idle_timeout_at_the_edge() -> None:
    pair = opened(gateway_settings=WsSettings(idle_timeout=100.0, ping_interval=0))
    pair.advance(60.0)
    pair.send(Message(data="activity"))
    pair.advance(99.9)
    assert pair.client_close() is None
    pair.advance(0.1)
    close = pair.client_close()
    assert close is not None and (close.code, close.reason) == (1001, "idle timeout")
    assert DISCONNECTS[0]["code"] == 1001


def test_a_slow_client_stalls_only_its_own_stream() -> None:
    pair = opened()
    assert pair.call is not None
    pair.client_reads = False
    chunk = b"z" * 60_000
    sent = 0
    while pair.rs.writable(RID) and sent < 100:
        pair.call.send({"type": "websocket.send", "bytes": chunk})
        sent += 1
        pair.pump()
    assert 0 < sent < 100  # the window filled: the app's sends would wait now
    assert pair.gw is not None
    # the tunnel itself stays usable: another stream flows
    from anpx_core.meta import RequestHead, ResponseHead

    pair.gs.start("http-2", RequestHead("GET", "/other", [("host", "app.test")]))
    pair.gs.end("http-2")
    pair.pump()
    assert pair.rs.has_stream("http-2")
    pair.rs.start("http-2", ResponseHead(200, "OK", []))
    pair.rs.send("http-2", b"x" * 100_000)
    pair.rs.end("http-2")
    assert pair.rs.writable("http-2")
    pair.pump()
    got = b"".join(e.data for e in pair.other if type(e).__name__ == "StreamData")  # type: ignore[attr-defined]
    assert got == b"x" * 100_000  # the HTTP response went through while the WebSocket waits
    assert not pair.rs.writable(RID)
    pair.client_reads = True
    pair.pump()
    assert pair.messages() == [chunk] * sent
    assert pair.rs.writable(RID)


def test_a_slow_app_stops_the_gateway_reading_the_client() -> None:
    pair = Pair()  # the test plays the app and does not receive
    pair.connect()
    assert pair.call is not None
    assert pair.call.receive() == {"type": "websocket.connect"}
    pair.call.send({"type": "websocket.accept"})
    pair.pump()
    gw = pair.gw
    assert gw is not None
    n = 0
    while gw.wants_read and n < 100:
        pair.send(Message(data=b"q" * 60_000))
        n += 1
    assert 0 < n < 100
    got = 0
    while (m := pair.call.receive()) is not None:
        got += 1
        pair.pump()
        assert m["bytes"] == b"q" * 60_000
    assert gw.wants_read


# --- forward mode -------------------------------------------------------------------------------


def test_forward_echo_subprotocol_and_close_codes() -> None:
    from tests.ws_pair import Service

    service = Service(subprotocol="superchat")
    pair = Pair(service=service)
    pair.connect("/live?x=1", ["chat", "superchat"], [(b"cookie", b"c=1")])
    accept = pair.client_events[0]
    assert isinstance(accept, AcceptConnection) and accept.subprotocol == "superchat"
    assert service.request is not None
    assert service.request.target == "/live?x=1"
    assert service.request.host == "app.test"
    assert service.request.subprotocols == ["chat", "superchat"]
    assert service.request.extensions == []  # nothing to negotiate: no compression anywhere
    assert (b"cookie", b"c=1") in service.request.extra_headers
    pair.send(Message(data="ping?", message_finished=False))
    pair.send(Message(data=" pong!"))
    pair.send(Message(data=b"\x01" * 100_000))
    assert pair.messages() == ["ping? pong!", b"\x01" * 100_000]
    pair.send(CloseConnection(code=4100, reason="done"))
    assert [e.code for e in service.events if isinstance(e, CloseConnection)] == [4100]
    close = pair.client_close()
    assert close is not None and close.code == 4100
    assert finished(pair)


def test_forward_service_close_reaches_the_client() -> None:
    from tests.ws_pair import Service

    service = Service()
    pair = Pair(service=service)
    pair.connect()
    service.send(CloseConnection(code=4200, reason="bye from service"))
    pair.pump()
    close = pair.client_close()
    assert close is not None and (close.code, close.reason) == (4200, "bye from service")
    assert finished(pair)


def test_forward_refusal_is_relayed() -> None:
    from tests.ws_pair import Service

    pair = Pair(service=Service(accept=False))
    pair.connect()
    head, body = answer(pair)
    assert head.startswith(b"HTTP/1.1 418 ")
    assert b"x-why: teapot" in head
    assert body.endswith(b"no websockets here") or b"no websockets here" in body


def test_forward_service_unreachable_is_502() -> None:
    pair = Pair(forward=True)  # no service: the connection to it fails
    pair.connect()
    assert pair.fwd is not None
    pair.fwd.connect_failed("connection refused")
    pair.pump()
    head, body = answer(pair)
    assert head.startswith(b"HTTP/1.1 502 ")
    assert b"refused" not in body  # the OS error goes to the log only


def test_binary_and_text_interleaved_with_pings_from_the_client() -> None:
    pair = opened()
    pair.send(Message(data=b"a", message_finished=False))
    pair.send(Ping(payload=b"p1"))
    pair.send(Message(data=b"b"))
    pair.send(Message(data="t"))
    assert pair.messages() == [b"ab", "t"]
    assert [type(e) for e in pair.client_events].count(BytesMessage) >= 1
    assert any(type(e).__name__ == "Pong" for e in pair.client_events)
    assert TextMessage  # imported for readers: text messages are TextMessage events


# --- the upgrade decision -----------------------------------------------------------------------


def started(extra: list[tuple[str, str]] | None = None, **kw: Any) -> Any:
    from anpx_core.http1 import RequestStarted
    from anpx_core.meta import RequestHead

    headers = [
        ("host", "app.test"),
        ("sec-websocket-key", "MDEyMzQ1Njc4OWFiY2RlZg=="),
        ("sec-websocket-version", "13"),
        *(extra or []),
    ]
    return RequestStarted(
        RequestHead(kw.get("method", "GET"), "/ws", headers),
        False,
        kw.get("length", 0),
        kw.get("upgrade", "websocket"),
    )


@pytest.mark.parametrize(
    ("tunnel", "client", "status"),
    [(999, 99, None), (1000, 0, 503), (0, 99, None), (0, 100, 429)],
)
def test_open_limits_at_the_edge(tunnel: int, client: int, status: int | None) -> None:
    from anpx_core.ws_gateway import Open, Refuse, upgrade_decision

    decision = upgrade_decision(
        started(),
        ws_on_tunnel=True,
        open_on_tunnel=tunnel,
        open_for_client=client,
        settings=WsSettings(max_open=1000, max_per_client=100),
    )
    if status is None:
        assert isinstance(decision, Open)
    else:
        assert isinstance(decision, Refuse) and decision.status == status


@pytest.mark.parametrize(
    ("kw", "extra", "status"),
    [
        ({"upgrade": None}, [], None),  # no upgrade: plain HTTP
        ({"upgrade": "h2c"}, [], None),  # another protocol: plain HTTP, Upgrade stripped
        ({"method": "POST"}, [], 400),
        ({"length": 5}, [], 400),
        ({"length": None}, [], 400),
        ({}, [("sec-websocket-version", "8")], 426),
        ({}, [("sec-websocket-protocol", "a b")], 400),
    ],
)
def test_malformed_upgrades_are_refused(kw: dict[str, Any], extra: Any, status: int | None) -> None:
    from anpx_core.ws_gateway import Refuse, upgrade_decision

    request = started(extra, **kw)
    decision = upgrade_decision(request, ws_on_tunnel=True)
    if status is None:
        assert decision is None
    else:
        assert isinstance(decision, Refuse) and decision.status == status


@pytest.mark.parametrize(
    "key", ["", "short", "MDEyMzQ1Njc4OWFiY2RlZmc=", "!!!!", "MDEy MzQ1Njc4OWFiY2RlZg=="]
)
def test_bad_keys_are_refused(key: str) -> None:
    from anpx_core.http1 import RequestStarted
    from anpx_core.meta import RequestHead
    from anpx_core.ws_gateway import Refuse, upgrade_decision

    headers = [("sec-websocket-key", key), ("sec-websocket-version", "13")]
    request = RequestStarted(RequestHead("GET", "/", headers), False, 0, "websocket")
    decision = upgrade_decision(request, ws_on_tunnel=True)
    assert isinstance(decision, Refuse) and decision.status == 400


def test_upgrade_field_reaches_the_unit_through_http_front() -> None:
    from anpx_core.http1 import FrontLimits, HttpFront, RequestStarted

    front = HttpFront(FrontLimits(), 0.0, client=None, server=None)
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    (ev, _end) = front.receive_data(raw, 0.0)
    assert isinstance(ev, RequestStarted) and ev.upgrade == "websocket"
    names = [n for n, _ in ev.head.headers]
    assert "upgrade" not in names and "connection" not in names
    (plain, _end) = HttpFront(FrontLimits(), 0.0, client=None, server=None).receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", 0.0
    )
    assert isinstance(plain, RequestStarted) and plain.upgrade is None  # Connection lacks it


def test_bytes_the_client_sent_with_the_upgrade_are_not_lost() -> None:
    from wsproto.events import Request as WsRequest

    pair = Pair(app=echo_app)
    raw = pair.client.send(WsRequest(host="app.test", target="/ws"))
    # a client that sends its first frame (masked, key 0) without waiting for the 101
    pair.connect(raw=raw + b"\x81\x85\x00\x00\x00\x00early")
    assert isinstance(pair.client_events[0], AcceptConnection)
    assert pair.messages() == ["early"]


def test_bytes_arriving_before_the_101_wait_for_it() -> None:
    from wsproto.events import Request as WsRequest

    pair = Pair()  # the test plays the app: nothing is accepted yet
    pair.connect()
    assert pair.gw is not None and pair.gw.phase == "opening"
    pair.gw.receive_data(b"\x82\x83\x00\x00\x00\x00abc", pair.now)  # a masked frame, early
    assert pair.call is not None
    pair.call.receive()
    pair.call.send({"type": "websocket.accept"})
    pair.pump()
    assert isinstance(pair.client_events[0], AcceptConnection)
    assert pair.call.receive() == {"type": "websocket.receive", "bytes": b"abc"}
    assert WsRequest  # (the client's handshake was sent by Pair.connect)


def test_client_leaving_before_the_answer_cancels_the_stream() -> None:
    pair = Pair()
    pair.connect()
    assert pair.call is not None and pair.gw is not None
    pair.client_eof()
    assert pair.gw.closed
    assert finished(pair)
    assert pair.call.receive() == {"type": "websocket.connect"}
    assert pair.call.receive() == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
    pair.call.send({"type": "websocket.accept"})  # too late: nobody to tell, no error
    assert pair.call.take_ops() == []


def test_client_leaving_while_the_101_is_unwritten_ends_the_session() -> None:
    pair = Pair()
    pair.client_reads = False  # the 101 stays queued at the gateway
    pair.connect()
    assert pair.call is not None and pair.gw is not None
    assert pair.call.receive() == {"type": "websocket.connect"}
    pair.call.send({"type": "websocket.accept"})
    pair.pump()
    assert pair.gw.phase == "open" and pair.gw.status == 101
    pair.client_eof()
    assert pair.gw.closed
    assert pair.call.receive() == {
        "type": "websocket.disconnect",
        "code": 1006,
        "reason": "connection closed without a Close frame",
    }
    assert finished(pair)


def test_no_answer_in_open_timeout_is_504_at_the_edge() -> None:
    pair = Pair(gateway_settings=WsSettings(open_timeout=10.0))
    pair.connect()
    pair.advance(9.9)
    assert pair.http_answer == b""
    pair.advance(0.1)
    assert answer(pair)[0].startswith(b"HTTP/1.1 504 ")
    assert finished(pair)


def test_tiny_client_frames_are_joined_on_the_tunnel() -> None:
    pair = opened()
    frames_before = len(pair.to_receiver.items)
    raw = b"".join(pair.client.send(Message(data=b"x")) for _ in range(200))
    assert pair.gw is not None
    pair.gw.receive_data(raw, pair.now)
    ops = pair.gw.take_ops()
    assert len(ops) == 1  # one send for 200 one-byte messages
    from anpx_core.wsstream import apply_ops

    apply_ops(pair.gs, RID, ops)
    pair.pump()
    assert frames_before == 0
    assert pair.messages() == [b"x"] * 200


@pytest.mark.parametrize(("open_now", "denied"), [(9, False), (10, True)])
def test_receiver_max_open_at_the_edge(open_now: int, denied: bool) -> None:
    from anpx_core.ws_asgi import admission
    from anpx_core.wsstream import StreamStart, open_head

    head = open_head("/ws", [("host", "a")], ["chat"])
    ops = admission(head, open_now, WsSettings(max_open=10))
    if not denied:
        assert ops is None
    else:
        assert ops is not None and isinstance(ops[0], StreamStart) and ops[0].head.status == 503


def test_receiver_refuses_malformed_subprotocols() -> None:
    from anpx_core.meta import RequestHead
    from anpx_core.ws_asgi import admission

    head = RequestHead("GET", "/", [("upgrade", "websocket"), ("sec-websocket-protocol", "a b")])
    ops = admission(head, 0, WsSettings())
    assert ops is not None and ops[0].head.status == 400  # type: ignore[union-attr]


def test_switch_protocols_only_for_a_complete_upgrade_request() -> None:
    from anpx_core.http1 import FrontLimits, HttpFront

    front = HttpFront(FrontLimits(), 0.0, client=None, server=None)
    front.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0.0)
    with pytest.raises(RuntimeError):
        front.switch_protocols([("upgrade", "websocket")])  # no Upgrade was asked for
    front = HttpFront(FrontLimits(), 0.0, client=None, server=None)
    front.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 10\r\n\r\nabc",
        0.0,
    )
    with pytest.raises(RuntimeError):
        front.switch_protocols([])  # the body is not read yet
    front = HttpFront(FrontLimits(), 0.0, client=None, server=None)
    front.receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nEXTRA",
        0.0,
    )
    assert front.switch_protocols([("upgrade", "websocket")]) == b"EXTRA"
    assert front.switched and not front.wants_read and front.next_deadline() is None
    assert front.data_to_send().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert front.receive_data(b"more", 1.0) == []  # the front reads nothing any more


def test_receive_after_the_disconnect_keeps_answering_disconnect() -> None:
    pair = Pair()
    pair.connect()
    assert pair.call is not None
    pair.call.receive()
    pair.call.send({"type": "websocket.accept"})
    pair.pump()
    pair.client_eof()
    first = pair.call.receive()
    assert first is not None and first["type"] == "websocket.disconnect"
    assert pair.call.receive() == first  # never None: an app asking again does not hang


def test_receiver_going_away_closes_the_app_session_with_1001_both_ways() -> None:
    pair = opened()
    assert pair.call is not None
    pair.call.going_away("receiver shutting down")
    pair.pump()
    close = pair.client_close()
    assert close is not None and (close.code, close.reason) == (1001, "receiver shutting down")
    assert DISCONNECTS == [
        {"type": "websocket.disconnect", "code": 1001, "reason": "receiver shutting down"}
    ]
    assert finished(pair)


def test_receiver_going_away_before_the_app_answers_is_503() -> None:
    pair = Pair()  # the test plays the app: it never answers
    pair.connect()
    assert pair.call is not None
    pair.call.going_away("receiver shutting down")
    pair.pump()
    head, _ = answer(pair)
    assert head.startswith(b"HTTP/1.1 503 ")


def test_forward_going_away_closes_the_service_and_the_client_with_1001() -> None:
    from tests.ws_pair import Service

    service = Service()
    pair = Pair(service=service)
    pair.connect()
    assert pair.fwd is not None
    pair.fwd.going_away(pair.now, "receiver shutting down")
    pair.pump()
    assert [(e.code, e.reason) for e in service.events if isinstance(e, CloseConnection)] == [
        (1001, "receiver shutting down")
    ]
    close = pair.client_close()
    assert close is not None and close.code == 1001
    assert finished(pair)
