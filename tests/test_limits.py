"""Every gateway and tunnel limit at its edge, over real loopback sockets, for both drivers.

Each test checks the status (or WebSocket close code) at limit + 1, that exactly the limit
is still served, and that the refused request never reached the app: the app counts its
calls. The rate limiter's sans-IO behaviour is tested first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from anpx_core import messages as M
from anpx_core.gateway import GatewaySettings
from anpx_core.http1 import FrontLimits
from anpx_core.ratelimit import RateLimiter, address_key, make_limiter, retry_after
from anpx_core.receiver import ReceiverSettings
from anpx_core.websocket import WsLimits
from anpx_host.config import GatewayConfig, to_gateway_settings

from .deploy import DRIVERS, start_gateway, start_receiver, wait_until
from .hypothesis_profiles import examples

# --- the rate limiter, sans IO ----------------------------------------------------------------


def test_burst_then_one_token_per_interval():
    limiter = RateLimiter(rate=4, burst=3)
    assert [limiter.allow("a", 10.0) for _ in range(3)] == [None, None, None]
    wait = limiter.allow("a", 10.0)
    assert wait == pytest.approx(0.25)
    assert limiter.allow("a", 10.0 + 0.2) == pytest.approx(0.05)  # a refusal takes no token
    assert limiter.allow("a", 10.25) is None  # waiting exactly Retry-After is enough
    assert limiter.allow("a", 10.25) == pytest.approx(0.25)
    assert limiter.allow("b", 10.25) is None  # other addresses have their own bucket


def test_full_buckets_are_forgotten_and_behave_as_new():
    limiter = RateLimiter(rate=1, burst=2)
    limiter.allow("a", 0.0)
    assert len(limiter) == 1
    limiter.allow("b", 0.9)  # a has 1.9 tokens: still tracked
    assert len(limiter) == 2
    limiter.allow("c", 1.0)  # a is full again at t=1: dropped
    assert len(limiter) == 2 and limiter.evicted == 0


def test_idle_full_buckets_go_before_refilling_ones():
    limiter = RateLimiter(rate=1, burst=1, max_addresses=2)
    limiter.allow("a", 0.0)  # full again at t=1
    limiter.allow("b", 0.5)  # full again at t=1.5
    limiter.allow("c", 1.2)  # the table is full: a (refilled) goes, b stays
    assert limiter.evicted == 0
    assert limiter.allow("b", 1.2) == pytest.approx(0.3)  # b is still limited
    # now b and c are both refilling: a newcomer forces out the least recently used (c)
    limiter.allow("d", 1.3)
    assert limiter.evicted == 1 and len(limiter) == 2
    assert limiter.allow("b", 1.3) is not None


@dataclass
class _ModelBucket:
    tokens: Fraction
    last: Fraction


def _model_allow(buckets: dict, key: str, now: Fraction, rate: int, burst: int) -> Fraction | None:
    """An independent token bucket in exact arithmetic that never forgets anyone."""
    bucket = buckets.setdefault(key, _ModelBucket(Fraction(burst), now))
    bucket.tokens = min(Fraction(burst), bucket.tokens + (now - bucket.last) * rate)
    bucket.last = now
    if bucket.tokens >= 1:
        bucket.tokens -= 1
        return None
    return (1 - bucket.tokens) / rate


@settings(max_examples=examples(300), deadline=None)
@given(
    rate=st.integers(1, 20),
    burst=st.integers(1, 10),
    events=st.lists(
        st.tuples(st.sampled_from("abcd"), st.integers(0, 64)), min_size=1, max_size=120
    ),
)
def test_matches_an_exact_token_bucket(rate, burst, events):
    """Dropping refilled buckets never changes a decision (steps of 1/64 s are exact in
    binary floating point, so the float limiter must agree with the exact model)."""
    limiter = RateLimiter(rate, burst)
    model: dict = {}
    now = Fraction(0)
    for key, step in events:
        now += Fraction(step, 64)
        got = limiter.allow(key, float(now))
        want = _model_allow(model, key, now, rate, burst)
        if want is None:
            assert got is None
        else:
            assert got == pytest.approx(float(want))
        assert len(limiter) <= len({k for k, _ in events})


@settings(max_examples=examples(200), deadline=None)
@given(
    max_addresses=st.integers(1, 5),
    events=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40)), max_size=200),
)
def test_memory_is_bounded(max_addresses, events):
    limiter = RateLimiter(2, 3, max_addresses=max_addresses)
    now = 0.0
    for key, step in events:
        now += step / 16
        limiter.allow(str(key), now)
        assert len(limiter) <= max_addresses


@settings(max_examples=examples(200), deadline=None)
@given(rate=st.integers(1, 10), burst=st.integers(1, 10), steps=st.lists(st.integers(0, 32)))
def test_never_more_than_burst_plus_rate_times_elapsed(rate, burst, steps):
    limiter = RateLimiter(rate, burst)
    now, allowed = 0.0, 0
    for step in steps:
        now += step / 32
        allowed += limiter.allow("x", now) is None
    assert allowed <= burst + rate * now + 1e-6


def test_helpers():
    assert make_limiter(0, 10) is None
    assert make_limiter(2.5, 10).rate == 2.5
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1, 0)
    assert [retry_after(s) for s in (0.0, 0.01, 1.0, 1.2, 59.5)] == ["1", "1", "1", "2", "60"]
    assert address_key("203.0.113.9") == "203.0.113.9"
    assert address_key("::ffff:203.0.113.9") == "203.0.113.9"
    # one /64 is one client; the next /64 is another
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("[fe80::1%eth0]") == "fe80::/64"
    assert address_key("-") == "-"


# --- an app that counts what reaches it ---------------------------------------------------------


class CountingApp:
    """ASGI app for the limit tests; runs in the receiver's thread, counted from the test's.

    /upload   read the whole body, answer {"bytes": n}
    /wait     answer once ``release`` is set
    /hang     never answer; record the http.disconnect that tells it the request is gone
    other     200 "ok"
    """

    def __init__(self) -> None:
        self.calls = 0
        self.completed = 0  # calls that received their whole request body
        self.waiting = 0
        self.disconnects = 0
        self.largest_body = 0
        self.release = threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        path = scope["path"]
        body = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            body += len(message.get("body", b""))
            self.largest_body = max(self.largest_body, body)
            if not message.get("more_body"):
                break
        self.completed += 1
        if path == "/hang":
            message = await receive()  # blocks until the gateway gives up on the request
            if message["type"] == "http.disconnect":
                self.disconnects += 1
            return
        if path == "/wait":
            self.waiting += 1
            # a worker thread waits for the test thread's release (no polling)
            await anyio.to_thread.run_sync(self.release.wait, abandon_on_cancel=True)
        payload = json.dumps({"bytes": body}).encode() if path == "/upload" else b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@dataclass
class Deployment:
    gateway: object
    receiver: object
    app: CountingApp
    http_port: int
    tunnel_port: int
    clients: list = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def connect(self, source: str | None = None) -> RawClient:
        client = RawClient(self.http_port, source)
        self.clients.append(client)
        return client


@contextlib.contextmanager
def deployed(driver: str, settings: GatewaySettings) -> Iterator[Deployment]:
    """A gateway and a receiver on ``driver``, connected, serving a CountingApp."""
    gateway = start_gateway(driver, settings, admin=False)
    app = CountingApp()
    ports = gateway.obj.ports
    receiver = start_receiver(
        driver,
        ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{ports.tunnel}/"], reconnect_delay=0.05),
        app,
    )
    dep = Deployment(gateway, receiver, app, ports.http, ports.tunnel)
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        yield dep
    finally:
        app.release.set()
        for client in dep.clients:
            client.close()
        receiver.stop()
        gateway.stop()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class RawClient:
    """A blocking HTTP/1.1 client that sends exactly the bytes it is given."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed inside a response body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(status, headers, body)

    def wait_eof(self) -> bytes:
        """Read until the server closes; return whatever came (timeout: socket.timeout)."""
        while self._fill():
            pass
        rest, self.buf = self.buf, b""
        return rest

    def close(self) -> None:
        self.sock.close()


def get(path: str = "/", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


# --- request head size (431) ----------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_request_head_bytes_edge(driver):
    limit = 2048
    with deployed(driver, GatewaySettings(front=FrontLimits(max_header_bytes=limit))) as dep:

        def head(size: int) -> bytes:
            base = get("/upload", "X-Pad: \r\n")
            data = get("/upload", "X-Pad: " + "a" * (size - len(base)) + "\r\n")
            assert len(data) == size
            return data

        ok = dep.connect()
        ok.send(head(limit))
        assert ok.response().status == 200
        assert dep.app.calls == 1

        over = dep.connect()
        over.send(head(limit + 1))
        r = over.response()
        assert r.status == 431 and r.headers.get("connection") == "close"
        assert over.wait_eof() == b""

        # a head that has filled the limit without ending cannot fit: refused at once
        partial = dep.connect()
        partial.send(head(limit + 2)[:limit])  # no blank line yet
        assert partial.response().status == 431
        assert dep.app.calls == 1


# --- request body size (413) ----------------------------------------------------------------------


def _post(path: str, length: int) -> bytes:
    return get(path, f"Content-Length: {length}\r\n").replace(b"GET", b"POST", 1)


def _chunked(chunks: list[bytes]) -> bytes:
    out = get("/upload", "Transfer-Encoding: chunked\r\n").replace(b"GET", b"POST", 1)
    for chunk in chunks:
        out += f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("driver", DRIVERS)
def test_request_body_bytes_edge(driver):
    limit = 1000
    with deployed(driver, GatewaySettings(front=FrontLimits(max_body_bytes=limit))) as dep:
        c = dep.connect()
        c.send(_post("/upload", limit) + b"x" * limit)
        r = c.response()
        assert r.status == 200 and json.loads(r.body) == {"bytes": limit}
        c.send(_chunked([b"y" * 600, b"y" * (limit - 600)]))
        r = c.response()
        assert r.status == 200 and json.loads(r.body) == {"bytes": limit}
        assert (dep.app.calls, dep.app.completed) == (2, 2)

        # Content-Length over the limit: refused from the head, before any body is sent
        by_length = dep.connect()
        by_length.send(_post("/upload", limit + 1))
        r = by_length.response()
        assert r.status == 413 and r.headers.get("connection") == "close"
        assert by_length.wait_eof() == b""
        assert dep.app.calls == 2

        # chunked, the excess in the same read as the head: the head is never forwarded
        one_read = dep.connect()
        one_read.send(_chunked([b"z" * (limit + 1)]))
        assert one_read.response().status == 413
        assert dep.app.calls == 2

        # chunked, the excess arriving later: a chunked body's size is unknown until it
        # ends, so its head has gone ahead; the app sees a disconnect, never a whole body
        late = dep.connect()
        whole = _chunked([b"w" * 600, b"w" * (limit - 600 + 1)])
        first = whole.index(b"w" * 600) + 600 + 2
        late.send(whole[:first])
        wait_until(lambda: dep.app.calls == 3)
        late.send(whole[first:])
        assert late.response().status == 413
        wait_until(lambda: dep.app.disconnects == 1)
        assert dep.app.completed == 2 and dep.app.largest_body <= limit


# --- concurrent streams per receiver (503) ------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_streams_per_receiver_edge(driver):
    limit = 3
    with deployed(driver, GatewaySettings(max_streams_per_receiver=limit)) as dep:
        with concurrent.futures.ThreadPoolExecutor(limit) as pool:
            held = [pool.submit(httpx.get, dep.url("/wait"), timeout=10) for _ in range(limit)]
            wait_until(lambda: dep.app.waiting == limit)
            r = httpx.get(dep.url("/"), timeout=5)
            assert r.status_code == 503 and r.headers["retry-after"].isdigit()
            assert dep.app.calls == limit
            dep.app.release.set()
            assert [f.result().status_code for f in held] == [200] * limit
        # the slots are free again
        assert httpx.get(dep.url("/"), timeout=5).status_code == 200


# --- request timeout (504) ------------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_request_timeout(driver):
    timeout = 0.5
    # when it fires is tested in fake time (test_engine); here: the drivers deliver it
    with deployed(driver, GatewaySettings(timeout=timeout)) as dep:
        r = httpx.get(dep.url("/hang"), timeout=10)
        assert r.status_code == 504
        # the app got the request, and is told it was abandoned rather than left hanging
        assert dep.app.calls == 1
        wait_until(lambda: dep.app.disconnects == 1)
        # an answer that comes within the timeout is served
        dep.app.release.set()
        assert httpx.get(dep.url("/wait"), timeout=10).status_code == 200


# --- header-read timeout (slowloris, 408) ----------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_slow_head_gets_408(driver):
    header_timeout = 0.6
    limits = FrontLimits(header_timeout=header_timeout, keepalive_timeout=10)
    with deployed(driver, GatewaySettings(front=limits)) as dep:
        c = dep.connect()
        started = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # one byte every 50 ms: each arrives well within any per-read timeout
        while not select.select([c.sock], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):
                c.send(b"a")
            assert time.monotonic() - started < header_timeout + 3, "never cut off"
        r = c.response()  # when exactly: test_http1 and test_engine, in fake time
        assert r.status == 408 and r.headers.get("connection") == "close"
        assert c.wait_eof() == b""
        assert dep.app.calls == 0
        # a head completed within the time is served
        fast = dep.connect()
        fast.send(get("/"))
        assert fast.response().status == 200


# --- idle keep-alive timeout --------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_idle_keepalive_connection_is_closed(driver):
    keepalive = 0.5
    # far above the client's 5 s read timeout: an EOF can only be the keep-alive timeout's
    limits = FrontLimits(header_timeout=60, keepalive_timeout=keepalive)
    with deployed(driver, GatewaySettings(front=limits)) as dep:
        c = dep.connect()
        c.send(get("/"))
        assert c.response().status == 200
        c.send(get("/"))  # the idle clock restarts after each response (timing: test_engine)
        assert c.response().status == 200
        assert c.wait_eof() == b""  # closed without a word (when exactly: test_engine)
        assert dep.app.calls == 2


# --- client connections (503 and close) ------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_max_connections_edge(driver):
    limit = 2
    with deployed(driver, GatewaySettings(max_connections=limit)) as dep:
        held = [dep.connect() for _ in range(limit)]
        for c in held:
            c.send(get("/"))
            assert c.response().status == 200  # every one of the limit is served
        extra = dep.connect()
        extra.send(get("/"))
        r = extra.response()
        assert r.status == 503 and r.headers.get("connection") == "close"
        assert "retry-after" in r.headers
        assert extra.wait_eof() == b""
        assert dep.app.calls == limit
        for c in held:  # the held connections keep working
            c.send(get("/"))
            assert c.response().status == 200
        held[0].close()

        def served() -> bool:
            c = RawClient(dep.http_port)
            try:
                c.send(get("/"))
                return c.response().status == 200
            finally:
                c.close()

        wait_until(served)  # a closed connection frees its place


# --- per-address request rate (429) -----------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_rate_limit_edge(driver):
    rate, burst = 4.0, 3
    settings = to_gateway_settings(GatewayConfig(rate_limit=rate, rate_burst=burst))
    with deployed(driver, settings) as dep:
        c = dep.connect()
        for _ in range(burst):
            c.send(get("/"))
            assert c.response().status == 200
        c.send(get("/"))
        r = c.response()
        assert r.status == 429 and r.headers["retry-after"] == "1"
        assert dep.app.calls == burst
        # another address (127.0.0.2 is loopback too) has its own bucket
        other = dep.connect(source="127.0.0.2")
        other.send(get("/"))
        assert other.response().status == 200
        assert dep.app.calls == burst + 1
        # refilling over time: test_burst_then_one_token_per_interval (fake time)


@pytest.mark.parametrize("driver", DRIVERS)
def test_rate_limit_counts_the_clients_of_trusted_proxies_only(driver):
    settings = to_gateway_settings(
        GatewayConfig(rate_limit=1.0, rate_burst=2, trusted_proxies=("127.0.0.1",))
    )
    with deployed(driver, settings) as dep:

        def status(source: str, forwarded_for: str) -> int:
            c = dep.connect(source)
            c.send(get("/", f"X-Forwarded-For: {forwarded_for}\r\n"))
            return c.response().status

        # behind the trusted proxy (127.0.0.1), each reported client has its own bucket
        assert [status("127.0.0.1", "203.0.113.1") for _ in range(3)] == [200, 200, 429]
        assert status("127.0.0.1", "203.0.113.2") == 200
        # an untrusted peer cannot pick a fresh bucket by inventing X-Forwarded-For values
        spoofed = [status("127.0.0.2", f"198.51.100.{i}") for i in range(3)]
        assert spoofed == [200, 200, 429]
        assert dep.app.calls == 5


# --- tunnel frame size (close 1009) ------------------------------------------------------------------

FRAME_LIMIT = 4096


class WsPeer:
    """One end of a tunnel driven by hand with wsproto over a blocking socket."""

    def __init__(self, sock: socket.socket, kind: ConnectionType) -> None:
        self.sock = sock
        self.ws = WSConnection(kind)
        self.pending: list = []

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def event(self):
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise ConnectionError("peer closed")
        return self.pending.pop(0)

    def message(self) -> bytes | CloseConnection:
        """The next binary message (text and pings are handled), or the peer's Close."""
        parts = b""
        while True:
            ev = self.event()
            if isinstance(ev, CloseConnection):
                return ev
            if isinstance(ev, Ping):
                self.send(ev.response())
            elif isinstance(ev, BytesMessage):
                parts += ev.data
                if ev.message_finished:
                    return parts
            elif not isinstance(ev, TextMessage):
                raise AssertionError(f"unexpected {ev!r}")


def _exact_frame(message_with_body, size: int) -> tuple[bytes, int]:
    """One unchunked frame of exactly ``size`` bytes, and its body length:
    ``message_with_body(n)`` builds the message with a body of n bytes."""
    base = len(M.encode_message(message_with_body(0), 1 << 30)[0])
    body = size - base - 5  # the http_body TLV adds its 5-byte header
    (frame,) = M.encode_message(message_with_body(body), 1 << 30)
    assert len(frame) == size
    return frame, body


@pytest.mark.parametrize("driver", DRIVERS)
def test_gateway_closes_1009_on_a_message_over_max_frame_size(driver):
    """An anpx receiver (flow extension) chunks its bodies: an oversized frame is a broken peer."""
    settings = GatewaySettings(
        ws=WsLimits(max_message_size=FRAME_LIMIT), codec=M.Limits(max_frame_size=FRAME_LIMIT)
    )
    gateway = start_gateway(driver, settings, admin=False)
    ports = gateway.obj.ports
    sock = socket.create_connection(("127.0.0.1", ports.tunnel), timeout=5)
    try:
        peer = WsPeer(sock, ConnectionType.CLIENT)
        flow = [(b"anpx-extensions", b"flow=1048576")]
        peer.send(Request(host=f"127.0.0.1:{ports.tunnel}", target="/", extra_headers=flow))
        assert isinstance(peer.event(), AcceptConnection)
        decoder = M.MessageDecoder()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            for size, expect in ((FRAME_LIMIT, 200), (FRAME_LIMIT + 1, 502)):
                answer = pool.submit(httpx.get, f"http://127.0.0.1:{ports.http}/", timeout=10)
                rid = _next_request_id(peer, decoder)
                frame, body = _exact_frame(
                    lambda n, rid=rid: M.Response(rid, 200, "OK", [], b"r" * n), size
                )
                peer.send(BytesMessage(data=frame))
                if expect == 200:
                    r = answer.result()
                    assert r.status_code == 200 and len(r.content) == body
                else:
                    close = peer.message()
                    assert isinstance(close, CloseConnection) and close.code == 1009
                    # the client gets a 502, never the oversized response
                    assert answer.result().status_code == 502
    finally:
        sock.close()
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_v1_receiver_whole_body_frame_over_the_v1_limit_fails_only_its_request(driver):
    """A v1 receiver sends whole bodies in one frame: up to v1_max_frame_size they pass; a larger
    one is dropped unbuffered, its client gets 502, the peer an ERROR frame, the tunnel stays."""
    settings = GatewaySettings(
        ws=WsLimits(max_message_size=1024),
        codec=M.Limits(max_frame_size=1024, v1_max_frame_size=FRAME_LIMIT),
    )
    gateway = start_gateway(driver, settings, admin=False)
    ports = gateway.obj.ports
    sock = socket.create_connection(("127.0.0.1", ports.tunnel), timeout=5)
    try:
        peer = WsPeer(sock, ConnectionType.CLIENT)
        peer.send(Request(host=f"127.0.0.1:{ports.tunnel}", target="/"))
        assert isinstance(peer.event(), AcceptConnection)
        decoder = M.MessageDecoder()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            for size, expect in ((FRAME_LIMIT, 200), (FRAME_LIMIT + 1, 502), (FRAME_LIMIT, 200)):
                answer = pool.submit(httpx.get, f"http://127.0.0.1:{ports.http}/", timeout=10)
                rid = _next_request_id(peer, decoder)
                frame, body = _exact_frame(
                    lambda n, rid=rid: M.Response(rid, 200, "OK", [], b"r" * n), size
                )
                # in fragments, as a large message may come: the drop works across them
                third = len(frame) // 3
                peer.send(BytesMessage(data=frame[:third], message_finished=False))
                peer.send(BytesMessage(data=frame[third:], message_finished=True))
                r = answer.result()
                assert r.status_code == expect
                if expect == 200:
                    assert len(r.content) == body
                else:
                    reset = M.decode_message([peer.message()])
                    assert isinstance(reset, M.ErrorMessage) and reset.request_id == rid
                    assert f"exceeds the {FRAME_LIMIT}-byte limit" in reset.text
    finally:
        sock.close()
        gateway.stop()


def _next_request_id(peer, decoder) -> str:
    while True:
        for e in decoder.receive_bytes(peer.message()):
            if e.request_id:
                return e.request_id


class FakeGateway:
    """A tunnel listener that accepts one receiver and lets the test drive it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.peer: WsPeer | None = None

    def accept(self, flow: bool = False) -> WsPeer:
        """Accept the receiver; ``flow``: answer as an anpx gateway, else as a v1 one."""
        sock, _ = self.listener.accept()
        sock.settimeout(10)
        peer = WsPeer(sock, ConnectionType.SERVER)
        request = peer.event()
        assert isinstance(request, Request)
        extra = [(b"anpx-extensions", b"flow=1048576")] if flow else []
        peer.send(AcceptConnection(extra_headers=extra))
        self.peer = peer
        return peer

    def close(self) -> None:
        if self.peer is not None:
            self.peer.sock.close()
        self.listener.close()


def _receiver_at_and_over_the_frame_limit(
    driver: str, v1: bool = False
) -> tuple[CloseConnection | M.Message, CountingApp]:
    """A real receiver gets a request frame of exactly its limit (served), then one byte
    more; returns how the tunnel ended (anpx gateway) or the answer (v1 gateway), and the app."""
    fake = FakeGateway()
    app = CountingApp()
    receiver = start_receiver(
        driver,
        ReceiverSettings(
            gateway_urls=[f"ws://127.0.0.1:{fake.port}/"],
            ws=WsLimits(max_message_size=FRAME_LIMIT),
            codec=M.Limits(max_frame_size=FRAME_LIMIT, v1_max_frame_size=FRAME_LIMIT),
            reconnect_delay=30,
        ),
        app,
    )
    try:
        peer = fake.accept(flow=not v1)

        def upload(rid: str):
            return lambda n: M.Request(rid, "POST", "/upload", [("host", "gw")], b"u" * n)

        frame, sent = _exact_frame(upload("r-at-limit"), FRAME_LIMIT)
        peer.send(BytesMessage(data=frame))
        decoder, body = M.MessageDecoder(), b""
        while True:
            events = decoder.receive_bytes(peer.message())
            body += b"".join(e.data for e in events if isinstance(e, M.BodyReceived))
            if any(isinstance(e, M.MessageComplete) for e in events):
                break
        assert json.loads(body) == {"bytes": sent}
        assert app.calls == 1

        peer.send(BytesMessage(data=_exact_frame(upload("r-over"), FRAME_LIMIT + 1)[0]))
        if v1:  # the tunnel stays: the receiver refuses that request alone
            return M.decode_message([peer.message()]), app
        close = peer.message()
        assert isinstance(close, CloseConnection)
        return close, app
    finally:
        receiver.stop()
        fake.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_refuses_a_message_over_max_frame_size(driver):
    _close, app = _receiver_at_and_over_the_frame_limit(driver)
    assert app.calls == 1  # the oversized request never reached the app


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_sends_close_1009(driver):
    close, _app = _receiver_at_and_over_the_frame_limit(driver)
    assert isinstance(close, CloseConnection) and close.code == 1009


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_refuses_only_the_request_over_v1_max_frame_size(driver):
    answer, app = _receiver_at_and_over_the_frame_limit(driver, v1=True)
    assert isinstance(answer, M.ErrorMessage) and answer.request_id == "r-over"
    assert f"exceeds the {FRAME_LIMIT}-byte limit" in answer.text
    assert app.calls == 1
