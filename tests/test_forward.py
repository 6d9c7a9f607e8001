"""ForwardConnection / ForwardPool: the HTTP forward back end.

Most tests play the local service with an independent h11 *server* connection in memory;
one test talks to a real ``http.server`` on 127.0.0.1 through a real socket.
"""

from __future__ import annotations

import http.server
import itertools
import socket
import threading

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.forward import (
    ForwardConnection,
    ForwardError,
    ForwardPool,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    strip_hop_by_hop,
)
from anpx_core.meta import RequestHead

from .hypothesis_profiles import examples


class Service:
    """The local service: an h11 server connection fed what the forwarder sends."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER)

    def take(self, fwd: ForwardConnection) -> list:
        self.conn.receive_data(fwd.data_to_send())
        events = []
        while True:
            event = self.conn.next_event()
            if event in (h11.NEED_DATA, h11.PAUSED):
                return events
            events.append(event)

    def respond(self, status: int, headers: list, body: bytes = b"", reason: bytes = b"") -> bytes:
        out = self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        if body:
            out += self.conn.send(h11.Data(data=body))
        return out + self.conn.send(h11.EndOfMessage())

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()


def body_of(events: list) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, h11.Data | UpstreamData))


def test_get_adds_host_and_reuses_connection() -> None:
    fwd, svc = ForwardConnection("127.0.0.1", 8080), Service()
    fwd.start_request(RequestHead("GET", "/a?b=1", [("accept", "*/*")]))
    fwd.end_body()
    req, end = svc.take(fwd)
    assert (req.method, req.target) == (b"GET", b"/a?b=1")
    assert list(req.headers) == [(b"host", b"127.0.0.1:8080"), (b"accept", b"*/*")]
    assert isinstance(end, h11.EndOfMessage)

    events = fwd.receive_data(svc.respond(200, [("content-length", "2")], b"hi", b"Fine"))
    assert [type(e) for e in events] == [UpstreamResponse, UpstreamData, UpstreamEnded]
    assert events[0].head.status == 200 and events[0].head.reason == "Fine"
    assert events[0].head.headers == [("content-length", "2")]
    assert body_of(events) == b"hi"
    assert fwd.reusable

    # Second request on the same connection (keep-alive), through the pool.
    pool = ForwardPool(max_idle=1)
    assert pool.acquire() is None
    assert pool.release(fwd) and len(pool) == 1
    again = pool.acquire()
    assert again is fwd and len(pool) == 0
    svc.next_cycle()
    fwd.start_request(RequestHead("DELETE", "/x", [("host", "api.example")]))
    fwd.end_body()
    req, _ = svc.take(fwd)
    assert (req.method, list(req.headers)) == (b"DELETE", [(b"host", b"api.example")])
    events = fwd.receive_data(svc.respond(204, []))
    assert [type(e) for e in events] == [UpstreamResponse, UpstreamEnded]
    assert fwd.reusable


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    fwd, svc = ForwardConnection("localhost", 9000), Service()
    head = RequestHead(
        "GET",
        "/",
        [
            ("Connection", "close, X-Private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ],
    )
    fwd.start_request(head)
    fwd.end_body()
    req, _ = svc.take(fwd)
    assert list(req.headers) == [(b"host", b"localhost:9000"), (b"x-kept", b"yes")]
    # Connection: close was not passed on, so the forward connection stays reusable.
    fwd.receive_data(svc.respond(200, [("content-length", "0")]))
    assert fwd.reusable


def test_response_hop_by_hop_stripped_and_duplicates_kept() -> None:
    fwd, svc = ForwardConnection("::1", 80), Service()
    fwd.start_request(RequestHead("GET", "/", []))
    fwd.end_body()
    (req, _) = svc.take(fwd)
    assert (b"host", b"[::1]:80") in list(req.headers)
    raw = svc.respond(
        200,
        [
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Transfer-Encoding", "chunked"),
            (b"X-Latin", b"caf\xe9"),
        ],
        b"chunky",
    )
    events = fwd.receive_data(raw)
    assert events[0].head.headers == [
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("x-latin", "caf\xe9"),
    ]
    assert body_of(events) == b"chunky"


def test_content_length_upload_streams_part_by_part() -> None:
    fwd, svc = ForwardConnection("127.0.0.1", 1), Service()
    fwd.start_request(RequestHead("PUT", "/up", [("content-length", "10")]))
    req = svc.take(fwd)[0]
    assert (b"content-length", b"10") in list(req.headers)
    fwd.send_body(b"01234")
    assert body_of(svc.take(fwd)) == b"01234"  # the service sees it before the end
    fwd.send_body(b"56789")
    fwd.end_body()
    rest = svc.take(fwd)
    assert body_of(rest) == b"56789" and isinstance(rest[-1], h11.EndOfMessage)


def test_body_without_framing_is_sent_chunked() -> None:
    fwd, svc = ForwardConnection("127.0.0.1", 1), Service()
    fwd.start_request(RequestHead("POST", "/up", [("content-type", "text/plain")]))
    assert fwd.data_to_send() == b""  # held until we know whether a body follows
    fwd.send_body(b"hello")
    wire = fwd.data_to_send()
    assert b"transfer-encoding: chunked\r\n" in wire and wire.endswith(b"5\r\nhello\r\n")
    svc.conn.receive_data(wire)
    fwd.send_body(b" world")
    fwd.end_body()
    events = [svc.conn.next_event(), *svc.take(fwd)]
    assert body_of(events) == b"hello world"
    assert isinstance(events[-1], h11.EndOfMessage)


def test_explicit_chunked_head_is_kept_and_content_length_dropped() -> None:
    fwd, svc = ForwardConnection("127.0.0.1", 1), Service()
    head = RequestHead("POST", "/", [("transfer-encoding", "chunked"), ("content-length", "3")])
    fwd.start_request(head)
    fwd.end_body()
    wire = fwd.data_to_send()
    assert b"content-length" not in wire and wire.endswith(b"\r\n\r\n0\r\n\r\n")
    svc.conn.receive_data(wire)
    assert isinstance(svc.conn.next_event(), h11.Request)


@pytest.mark.parametrize(
    ("method", "expected"),
    [("POST", [(b"host", b"h:1"), (b"content-length", b"0")]), ("GET", [(b"host", b"h:1")])],
)
def test_request_without_body(method: str, expected: list) -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead(method, "/", []))
    fwd.end_body()
    req, end = svc.take(fwd)
    assert list(req.headers) == expected and isinstance(end, h11.EndOfMessage)


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        ("/caf\xe9 x?q=1", b"/caf%E9%20x?q=1"),  # wire bytes read as latin-1
        ("/caf\xe9?q=\u65e5", b"/caf%C3%A9?q=%E6%97%A5"),  # only UTF-8 can hold it
    ],
)
def test_non_ascii_target_is_percent_escaped(target: str, sent: bytes) -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead("GET", target, []))
    fwd.end_body()
    assert svc.take(fwd)[0].target == sent


def test_chunked_response_streams_as_it_arrives() -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead("GET", "/", []))
    fwd.end_body()
    svc.take(fwd)
    first = fwd.receive_data(svc.conn.send(h11.Response(status_code=200, headers=[])))
    assert [type(e) for e in first] == [UpstreamResponse]
    assert fwd.receive_data(svc.conn.send(h11.Data(data=b"part1"))) == [UpstreamData(b"part1")]
    assert fwd.receive_data(svc.conn.send(h11.EndOfMessage())) == [UpstreamEnded()]
    assert fwd.reusable


def test_informational_responses_are_skipped_and_head_has_no_body() -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead("HEAD", "/big", []))
    fwd.end_body()
    svc.take(fwd)
    raw = svc.conn.send(h11.InformationalResponse(status_code=103, headers=[("link", "</a>")]))
    raw += svc.respond(200, [("content-length", "1000")])
    events = fwd.receive_data(raw)
    assert [type(e) for e in events] == [UpstreamResponse, UpstreamEnded]
    assert events[0].head.headers == [("content-length", "1000")]


def test_connection_close_response_is_not_reusable() -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead("GET", "/", []))
    fwd.end_body()
    svc.take(fwd)
    events = fwd.receive_data(svc.respond(200, [("connection", "close")], b"bye"))
    assert events[0].head.headers == []  # no framing header, Connection stripped
    assert body_of(events) == b"bye" and isinstance(events[-1], UpstreamEnded)
    assert not fwd.reusable
    assert not ForwardPool().release(fwd)


def test_http10_style_body_until_eof() -> None:
    fwd = ForwardConnection("h", 1)
    fwd.start_request(RequestHead("GET", "/", []))
    fwd.end_body()
    events = fwd.receive_data(b"HTTP/1.0 200 OK\r\n\r\nuntil ")
    events += fwd.receive_data(b"eof")
    events += fwd.receive_data(b"")
    assert body_of(events) == b"until eof" and events[-1] == UpstreamEnded()
    assert not fwd.reusable


def test_eof_mid_response_fails() -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead("GET", "/", []))
    fwd.end_body()
    svc.take(fwd)
    raw = svc.conn.send(h11.Response(status_code=200, headers=[("content-length", "10")]))
    raw += svc.conn.send(h11.Data(data=b"abc"))
    events = fwd.receive_data(raw) + fwd.receive_data(b"")
    assert [type(e) for e in events] == [UpstreamResponse, UpstreamData, UpstreamFailed]
    assert "mid-response" in events[-1].reason and not events[-1].stale
    assert not fwd.reusable
    assert fwd.receive_data(b"more") == []


def test_eof_before_response_is_stale_only_on_a_reused_connection() -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead("GET", "/1", []))
    fwd.end_body()
    svc.take(fwd)
    [ended] = fwd.receive_data(svc.respond(200, [("content-length", "0")]))[1:]
    assert ended == UpstreamEnded()
    fwd.start_request(RequestHead("GET", "/2", []))
    fwd.end_body()
    [failed] = fwd.receive_data(b"")
    assert isinstance(failed, UpstreamFailed) and failed.stale
    assert "before responding" in failed.reason

    fresh = ForwardConnection("h", 1)
    fresh.start_request(RequestHead("GET", "/", []))
    fresh.end_body()
    [failed] = fresh.receive_data(b"")
    assert isinstance(failed, UpstreamFailed) and not failed.stale


@pytest.mark.parametrize(
    "garbage",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
    ],
)
def test_garbage_upstream_fails(garbage: bytes) -> None:
    fwd = ForwardConnection("h", 1)
    fwd.start_request(RequestHead("GET", "/", []))
    fwd.end_body()
    events = fwd.receive_data(garbage)
    assert isinstance(events[-1], UpstreamFailed)
    assert "malformed" in events[-1].reason
    assert not fwd.reusable
    assert fwd.receive_data(b"") == []


def test_misuse_raises_forward_error() -> None:
    fwd = ForwardConnection("h", 1)
    with pytest.raises(ForwardError):
        fwd.start_request(RequestHead("GET", "/", [("x-bad", "a\r\nb")]))
    # the refused head left the connection usable
    fwd.start_request(RequestHead("POST", "/", [("content-length", "2")]))
    with pytest.raises(ForwardError):
        fwd.start_request(RequestHead("GET", "/", []))  # one request at a time
    with pytest.raises(ForwardError):
        fwd.send_body(b"too long")
    assert not fwd.reusable


def test_pool_bounds_and_discard() -> None:
    pool = ForwardPool(max_idle=2)
    conns = []
    for _ in range(3):
        fwd, svc = ForwardConnection("h", 1), Service()
        fwd.start_request(RequestHead("GET", "/", []))
        fwd.end_body()
        svc.take(fwd)
        fwd.receive_data(svc.respond(200, [("content-length", "0")]))
        conns.append(fwd)
    assert [pool.release(c) for c in conns] == [True, True, False]
    pool.discard(conns[1])
    assert pool.acquire() is conns[0]
    assert pool.acquire() is None
    pool.release(conns[0])
    assert pool.close_all() == [conns[0]] and len(pool) == 0
    # a connection mid-exchange is never pooled
    busy = ForwardConnection("h", 1)
    busy.start_request(RequestHead("GET", "/", []))
    assert not pool.release(busy)


def test_strip_hop_by_hop_keeps_order() -> None:
    headers = [("A", "1"), ("Connection", "b , Keep-Alive"), ("b", "2"), ("c", "3"), ("A", "4")]
    assert strip_hop_by_hop(headers) == [("A", "1"), ("c", "3"), ("A", "4")]


@settings(max_examples=examples(60), deadline=None)
@given(
    body=st.binary(max_size=3000),
    chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_split_of_a_response_gives_the_same_body(
    body: bytes, chunked: bool, cuts: list[int]
) -> None:
    fwd, svc = ForwardConnection("h", 1), Service()
    fwd.start_request(RequestHead("GET", "/", []))
    fwd.end_body()
    svc.take(fwd)
    framing = [] if chunked else [("content-length", str(len(body)))]
    raw = svc.conn.send(h11.Response(status_code=200, headers=framing))
    for i in range(0, len(body), 700):
        raw += svc.conn.send(h11.Data(data=body[i : i + 700]))
    raw += svc.conn.send(h11.EndOfMessage())
    events = []
    bounds = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    for a, b in itertools.pairwise(bounds):
        events += fwd.receive_data(raw[a:b])
    assert isinstance(events[0], UpstreamResponse) and events[-1] == UpstreamEnded()
    assert body_of(events) == body and fwd.reusable


# --- a real service on a real socket --------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return data
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self._body())

    def _answer(self, data: bytes) -> None:
        port = self.client_address[1]
        reply = b"%s %s port=%d got=%s" % (
            self.command.encode(),
            self.path.encode(),
            port,
            data,
        )
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("X-Host", self.headers["Host"])
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture
def service():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _exchange(sock: socket.socket, fwd: ForwardConnection, head: RequestHead, parts: list):
    fwd.start_request(head)
    for part in parts:
        fwd.send_body(part)
    fwd.end_body()
    sock.sendall(fwd.data_to_send())
    events: list = []
    while not events or not isinstance(events[-1], UpstreamEnded | UpstreamFailed):
        data = sock.recv(65536)
        events += fwd.receive_data(data)
        if not data:
            break
    return events


def test_real_http_server_keep_alive_and_chunked_upload(service: int) -> None:
    pool = ForwardPool()
    sock = socket.create_connection(("127.0.0.1", service), timeout=5)
    try:
        fwd = ForwardConnection("127.0.0.1", service)
        fwd.handle = sock
        replies = []
        for head, parts in [
            (RequestHead("GET", "/one", []), []),
            (RequestHead("POST", "/two", [("content-length", "6")]), [b"abc", b"def"]),
            (RequestHead("POST", "/three", []), [b"chunk", b"ed ", b"body"]),
        ]:
            conn = pool.acquire() or fwd
            assert conn is fwd  # one connection serves all three
            events = _exchange(conn.handle, conn, head, parts)
            assert isinstance(events[0], UpstreamResponse) and events[-1] == UpstreamEnded()
            assert events[0].head.status == 200
            assert ("x-host", f"127.0.0.1:{service}") in events[0].head.headers
            replies.append(body_of(events))
            assert pool.release(conn)
        port = sock.getsockname()[1]
        assert replies == [
            b"GET /one port=%d got=" % port,
            b"POST /two port=%d got=abcdef" % port,
            b"POST /three port=%d got=chunked body" % port,
        ]
    finally:
        sock.close()


def test_real_socket_eof_mid_response() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            fwd = ForwardConnection("127.0.0.1", port)
            events = _exchange(sock, fwd, RequestHead("GET", "/", []), [])
    finally:
        thread.join(5)
        listener.close()
    assert body_of(events) == b"partial"
    assert isinstance(events[-1], UpstreamFailed) and "mid-response" in events[-1].reason
