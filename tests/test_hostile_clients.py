"""Hostile HTTP clients against the gateway, over real loopback sockets on both drivers,
and in the fake-time harness (tests/harness.py) where timing or accounting matters.

Each attack class handled here is listed in docs/security.md ("Hostile HTTP clients") with
its defence, its setting and the test below that covers it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, Request

from anpx_core import messages as M
from anpx_core.gateway import GatewaySettings
from anpx_core.http1 import FrontLimits
from anpx_core.receiver import ReceiverSettings
from anpx_host.config import GatewayConfig, to_gateway_settings

from . import apps
from .deploy import DRIVERS, start_gateway, start_receiver, wait_until
from .harness import Disconnect, Exchange, HttpClient, World, make_app, pattern
from .hypothesis_profiles import examples
from .test_limits import CountingApp, WsPeer

BIG = 5_000_000


# --- a deployment and a raw client ----------------------------------------------------------


@dataclass
class Deployment:
    gateway: object
    receiver: object | None
    http_port: int
    clients: list = field(default_factory=list)

    @property
    def core(self):
        return self.gateway.obj.core

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def connect(self, source: str | None = None, rcvbuf: int | None = None) -> Client:
        client = Client(self.http_port, source, rcvbuf)
        self.clients.append(client)
        return client


@contextlib.contextmanager
def deployed(
    driver: str, settings: GatewaySettings, app=apps.app, receiver: ReceiverSettings | None = None
) -> Iterator[Deployment]:
    gateway = start_gateway(driver, settings, admin=False)
    ports = gateway.obj.ports
    rx_settings = receiver or ReceiverSettings()
    rx_settings.gateway_urls = [f"ws://127.0.0.1:{ports.tunnel}/"]
    rx_settings.reconnect_delay = 0.05
    rx = start_receiver(driver, rx_settings, app if rx_settings.forward is None else None)
    dep = Deployment(gateway, rx, ports.http)
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        yield dep
    finally:
        if isinstance(app, CountingApp):
            app.release.set()
        for client in dep.clients:
            client.close()
        rx.stop()
        gateway.stop()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """A blocking HTTP/1.1 client that sends exactly the bytes it is given."""

    def __init__(self, port: int, source: str | None, rcvbuf: int | None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        if source:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buf += data
        return bool(data)

    def response(self, *, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed inside a response body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(int(lines[0].split(" ", 2)[1]), headers, body)

    def wait_eof(self) -> bytes:
        while self._fill():
            pass
        rest, self.buf = self.buf, b""
        return rest

    def close(self) -> None:
        self.sock.close()


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def client_conns(core) -> list:
    return [c for c in list(core._conns.values()) if type(c).__name__ == "ClientConn"]


# --- HEAD of a large resource (issue 12, case 1) -------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_head_of_a_large_resource_then_a_pipelined_get(driver):
    with deployed(driver, GatewaySettings()) as dep:
        c = dep.connect()
        c.send(get(f"/download?n={BIG}", "HEAD") + get("/download?n=10"))
        head = c.response(head=True)
        assert head.status == 200 and head.headers["content-length"] == str(BIG)
        after = c.response()  # the HEAD response ended: the next request is answered
        assert after.status == 200 and after.body == bytes(range(10))
        wait_until(lambda: dep.core.in_flight == 0)  # the HEAD stream ended and freed its slot


@pytest.mark.parametrize("driver", DRIVERS)
def test_head_and_get_then_leaving_leaves_no_stream_in_flight(driver):
    with deployed(driver, GatewaySettings()) as dep:
        for i in range(100):
            c = Client(dep.http_port, None, None)
            c.send(get(f"/download?n={BIG}", "HEAD") + get(f"/download?n={BIG}"))
            if i == 0:  # one at least reaches the receiver before its client leaves
                wait_until(lambda: dep.core.in_flight > 0 or dep.core.stats.requests > 0)
            c.close()
        # every stream ends once its client is gone: none is "in flight" for good
        wait_until(lambda: dep.core.in_flight == 0 and not client_conns(dep.core))
        wait_until(lambda: dep.receiver.obj.core.in_flight == 0)
        r = httpx.get(dep.url("/download?n=10"), timeout=5)
        assert r.status_code == 200 and r.content == bytes(range(10))


# --- pipelined responses never read (case 2) ------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_pipelined_responses_never_read_are_held_to_the_output_cap(driver):
    cap = 256 * 1024
    with deployed(driver, GatewaySettings(max_output_bytes=cap)) as dep:
        c = dep.connect(rcvbuf=16 * 1024)
        c.send(get("/download?n=1000000") * 400)

        def holding() -> bool:
            return any(conn.front.holding for conn in client_conns(dep.core))

        wait_until(holding)
        [conn] = client_conns(dep.core)
        # about one response is queued (the socket buffers take some more), not 400
        assert conn.on_wire + conn.front.output_pending <= cap + 1_000_000 + 64 * 1024
        assert dep.core.stats.requests < 40
        served = dep.core.stats.requests
        # the client reads: the gateway serves on
        while dep.core.stats.requests <= served:
            r = c.response()
            assert r.status == 200 and len(r.body) == 1_000_000
        c.close()
        wait_until(lambda: dep.core.in_flight == 0 and not client_conns(dep.core))
        assert dep.core.stats.requests < 80


def test_output_cap_holds_pipelined_requests_in_the_harness():
    """Fake time, tiny socket buffers: a pipelined request is surfaced only while the
    client's unwritten output is at most ``max_output_bytes``, so memory stays bounded."""
    cap, size, count = 20_000, 15_000, 30
    gw = GatewaySettings(max_output_bytes=cap, stream_window=65536, send_frame_size=4096)
    world = World(
        seed=5,
        gateway=gw,
        receivers=[ReceiverSettings(gateway_urls=["ws://gateway.test/"], stream_window=65536)],
        capacity=(4096, 4096),
        io_size=(4096, 4096),
    )
    world.app = make_app(world)
    world.wait_connected()
    exchanges = [big(f"p{i}", size) for i in range(count)]
    client = HttpClient(world, exchanges, index=0, pipeline=True, read_at=10**9)
    unsent: list[int] = []

    def measure(w: World) -> None:
        conn = w.gateway._conns.get(client.cid)
        if conn is not None:
            unsent.append(conn.on_wire + conn.front.output_pending)

    world.hooks.append(measure)
    world.run(lambda: world.gateway._conns[client.cid].front.holding, max_time=30)
    world.settle(3.0)
    served = world.gateway.stats.requests
    assert 1 <= served < count
    # at most the cap, plus one more response (each fits in its stream's window here)
    assert cap < max(unsent) <= cap + size + 1024, max(unsent)
    client.resume_reading()
    world.run(lambda: client.done, max_time=120)
    assert all(bytes(ex.response_body) == expected(ex) for ex in exchanges)
    world.settle()
    world.assert_no_leaks()


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_client_that_stops_reading_is_reset_after_send_timeout(driver):
    settings = GatewaySettings(send_timeout=0.5)
    with deployed(driver, settings) as dep:
        c = dep.connect(rcvbuf=16 * 1024)
        c.send(get(f"/download?n={BIG}"))  # then reads nothing, and keeps the connection
        wait_until(lambda: dep.core.in_flight == 1)
        # the stream and the connection end: nothing stays pinned by a client that never reads
        wait_until(lambda: dep.core.in_flight == 0 and not client_conns(dep.core))
        wait_until(lambda: dep.receiver.obj.core.in_flight == 0)
        with pytest.raises(ConnectionError):  # the client sees a reset or a cut response
            while True:
                c.response()
        assert httpx.get(dep.url("/download?n=10"), timeout=5).status_code == 200


def test_send_timeout_edge_in_fake_time():
    """A client that stops reading is reset send_timeout after its output stopped moving;
    one that reads slowly but steadily is not."""
    timeout = 2.0
    gw = GatewaySettings(send_timeout=timeout, stream_window=8192, send_frame_size=4096)
    rx = ReceiverSettings(gateway_urls=["ws://gateway.test/"], stream_window=8192)
    world = World(seed=9, gateway=gw, receivers=[rx], capacity=(4096, 4096), io_size=(1024, 1024))
    world.app = make_app(world)
    world.wait_connected()
    stuck_ex, slow_ex = big("stuck", 100_000), big("slow", 100_000)
    stuck = HttpClient(world, [stuck_ex], index=0, read_pauses=[(10_000, 10**9)])
    # pauses shorter than the timeout (1 fake second each: 1000 steps)
    slow = HttpClient(
        world, [slow_ex], index=1, read_pauses=[(n, 1000) for n in range(0, 100_000, 8192)]
    )
    since: list[float] = []  # when the stuck client's pending output was handed out
    reset: list[float] = []

    def watch(w: World) -> None:
        conn = w.gateway._conns.get(stuck.cid)
        if conn is not None:
            since[:] = [conn.on_wire_since] if conn.on_wire else []
        elif not reset:
            reset.append(w.now)

    world.hooks.append(watch)
    world.run(lambda: bool(reset) and slow.done, max_time=300)
    # reset within a tick of send_timeout after its output stopped moving, not before
    assert since and timeout <= reset[0] - since[0] <= timeout + 0.2
    stuck.resume_reading()
    world.run(lambda: stuck.done)
    assert stuck_ex.aborted == "connection reset" and not stuck_ex.complete
    assert slow_ex.complete and bytes(slow_ex.response_body) == expected(slow_ex)
    world.settle()
    world.assert_no_leaks()


def big(marker: str, size: int, method: str = "GET") -> Exchange:
    headers = [("x-marker", marker), ("x-mode", "big"), ("x-size", str(size))]
    return Exchange(method, f"/big/{marker}", headers)


def expected(ex: Exchange) -> bytes:
    if ex.method == "HEAD":
        return b""
    return pattern(ex.headers[0][1], int(ex.headers[2][1]))


# --- fairness: per-address caps (case 5) ------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_connections_per_address_edge(driver):
    per_address = 3
    settings = GatewaySettings(max_connections=per_address + 1)
    settings.max_connections_per_address = per_address
    with deployed(driver, settings) as dep:
        held = [dep.connect() for _ in range(per_address)]
        for c in held:  # exactly the cap is served
            c.send(get("/download?n=1"))
            assert c.response().status == 200
        extra = dep.connect()
        extra.send(get("/download?n=1"))
        r = extra.response()
        assert r.status == 503 and r.headers["connection"] == "close"
        assert r.headers["retry-after"] == "1"
        assert r.body.startswith(b"too many connections from your address\nrequest id: ")
        assert extra.wait_eof() == b""
        # the refused connection took no place: another address still gets in
        other = dep.connect(source="127.0.0.2")
        other.send(get("/download?n=1"))
        assert other.response().status == 200
        held[0].close()
        wait_until(lambda: len(client_conns(dep.core)) == per_address)  # 2 held + other
        again = dep.connect()  # a closed connection frees its place
        again.send(get("/download?n=1"))
        assert again.response().status == 200


@pytest.mark.parametrize("driver", DRIVERS)
def test_slowloris_from_one_address_does_not_deny_others(driver):
    limits = FrontLimits(header_timeout=30, keepalive_timeout=30)
    settings = GatewaySettings(max_connections=20, front=limits)
    settings.max_connections_per_address = 5
    with deployed(driver, settings) as dep:
        for _ in range(40):  # twice the gateway's connections, all from 127.0.0.1
            dep.connect().send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        wait_until(lambda: len(client_conns(dep.core)) == 40)
        other = dep.connect(source="127.0.0.2")
        other.send(get("/download?n=1"))
        assert other.response().status == 200
        late = dep.connect()
        late.send(get("/download?n=1"))
        assert late.response().status == 503


@pytest.mark.parametrize("per_address", [3, GatewaySettings().max_streams_per_address])
@pytest.mark.parametrize("driver", DRIVERS)
def test_streams_per_address_edge_and_slow_uploads(driver, per_address):
    # the default too (50): that many slow requests from one address pass, one more is refused
    settings = GatewaySettings(max_streams_per_receiver=per_address + 2)
    settings.max_streams_per_address = per_address
    app = CountingApp()
    with deployed(driver, settings, app) as dep:
        slow = [dep.connect() for _ in range(per_address)]
        for c in slow:  # slow uploads: a head and a little of a large body
            c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        wait_until(lambda: dep.core.in_flight == per_address)
        refused = dep.connect()
        refused.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc")
        r = refused.response()
        assert r.status == 429 and r.headers["retry-after"] == "1"
        assert r.body.startswith(b"too many requests in progress from your address\n")
        assert dep.core.in_flight == per_address
        # another address is served meanwhile
        other = dep.connect(source="127.0.0.2")
        other.send(get("/"))
        assert other.response().status == 200
        # a finished upload frees its place
        slow[0].send(b"x" * (100000 - 3))
        assert slow[0].response().status == 200
        again = dep.connect()
        again.send(get("/"))
        assert again.response().status == 200


@pytest.mark.parametrize("driver", DRIVERS)
def test_per_address_caps_count_the_clients_of_trusted_proxies(driver):
    settings = to_gateway_settings(
        GatewayConfig(
            trusted_proxies=("127.0.0.1",), max_connections_per_address=1, max_streams_per_address=1
        )
    )
    app = CountingApp()
    with deployed(driver, settings, app) as dep:
        # the proxy's own connections are not capped per address: it carries many clients
        proxy = [dep.connect() for _ in range(3)]
        proxy[0].send(get("/wait", extra="X-Forwarded-For: 203.0.113.1\r\n"))
        wait_until(lambda: app.waiting == 1)
        proxy[1].send(get("/", extra="X-Forwarded-For: 203.0.113.1\r\n"))
        r = proxy[1].response()
        assert r.status == 429
        proxy[2].send(get("/", extra="X-Forwarded-For: 203.0.113.2\r\n"))
        assert proxy[2].response().status == 200
        app.release.set()
        assert proxy[0].response().status == 200


def test_per_address_settings_are_configurable():
    s = to_gateway_settings(
        GatewayConfig(
            max_output_bytes=4096,
            max_connections_per_address=0,
            max_streams_per_address=7,
            send_timeout=0,
        )
    )
    keys = ("max_output_bytes", "max_connections_per_address", "max_streams_per_address")
    assert [getattr(s, k) for k in (*keys, "send_timeout")] == [4096, 0, 7, 0]
    d = GatewaySettings()  # the documented defaults
    assert [getattr(d, k) for k in (*keys, "send_timeout")] == [1024 * 1024, 100, 50, 60.0]


# --- error pages (exposure) -----------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("driver", DRIVERS)
def test_forward_mode_502_page_shows_no_address_or_os_error(driver, caplog):
    port = _closed_port()
    receiver = ReceiverSettings(forward=("127.0.0.1", port))
    with deployed(driver, GatewaySettings(), receiver=receiver) as dep:
        r = httpx.get(dep.url("/x"), timeout=10)
        assert r.status_code == 502
        text = r.text
        rid = r.headers["x-request-id"]
        assert text == f"Bad Gateway: no valid answer from the local service\nrequest id: {rid}\n"
        assert str(port) not in text and "refused" not in text.lower()
    # the detail is in the receiver's log, with the same request id
    assert any(rid in m and str(port) in m for m in caplog.messages)


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_reset_reason_stays_out_of_the_page(driver):
    gateway = start_gateway(driver, GatewaySettings(), admin=False)
    ports = gateway.obj.ports
    sock = socket.create_connection(("127.0.0.1", ports.tunnel), timeout=5)
    try:
        peer = WsPeer(sock, ConnectionType.CLIENT)
        peer.send(Request(host=f"127.0.0.1:{ports.tunnel}", target="/"))
        assert isinstance(peer.event(), AcceptConnection)
        decoder = M.MessageDecoder()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.get, f"http://127.0.0.1:{ports.http}/", timeout=10)
            rid = next(e.request_id for e in decoder.receive_bytes(peer.message()) if e.request_id)
            secret = "connect to 10.9.8.7:5432 failed: [Errno 111] Connection refused"
            peer.send(BytesMessage(data=M.encode_error(secret, rid)))
            r = answer.result()
        assert r.status_code == 502
        assert "10.9.8.7" not in r.text and "Errno" not in r.text
        assert r.text.endswith(f"request id: {r.headers['x-request-id']}\n")
    finally:
        sock.close()
        gateway.stop()


# --- accounting invariants under random client behaviour (deliverable 4) ----------------------

STAY = 30.0  # fake seconds a client that never reads keeps its connection open
BEHAVIOURS = (
    "normal",
    "pipeline",
    "early-close",
    "reset",
    "never-read",
    "never-read-stay",
    "slow-read",
)


@st.composite
def hostile_clients(draw: st.DrawFn) -> dict:
    clients = []
    for _ in range(draw(st.integers(1, 5))):
        exchanges = draw(
            st.lists(
                st.tuples(st.sampled_from(["GET", "HEAD"]), st.sampled_from([0, 300, 20_000])),
                min_size=1,
                max_size=4,
            )
        )
        clients.append(
            {
                "exchanges": exchanges,
                "behaviour": draw(st.sampled_from(BEHAVIOURS)),
                "leave_after": draw(st.floats(0.01, 2.0)),
                "address": draw(st.integers(0, 2)),  # some clients share an address
            }
        )
    return {
        "seed": draw(st.integers(0, 2**16)),
        "clients": clients,
        "output_cap": draw(st.sampled_from([1024, 16_384, 1 << 20])),
        "window": draw(st.sampled_from([4096, 65536, None])),
    }


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=hostile_clients())
def test_every_stream_ends_and_frees_what_it_held(sc: dict) -> None:
    window = sc["window"]
    gw = GatewaySettings(
        timeout=5.0,
        front=FrontLimits(header_timeout=5.0, keepalive_timeout=1.0),
        max_output_bytes=sc["output_cap"],
        stream_window=window,
        send_frame_size=4096,
        high_water=32 * 1024,
        max_streams_per_address=3,
        max_connections_per_address=3,
        send_timeout=2.0,
    )
    rx = ReceiverSettings(gateway_urls=["ws://gateway.test/"], stream_window=window)
    world = World(seed=sc["seed"], gateway=gw, receivers=[rx], capacity=(1024, 16_384))
    world.app = make_app(world)
    world.wait_connected()
    clients: list[HttpClient] = []
    stays: list[HttpClient] = []
    for i, plan in enumerate(sc["clients"]):
        exchanges = [
            big(f"c{i}x{j}", size, method) for j, (method, size) in enumerate(plan["exchanges"])
        ]
        behaviour = plan["behaviour"]
        kw: dict = {"index": plan["address"]}
        if behaviour == "pipeline":
            kw["pipeline"] = True
        elif behaviour in ("early-close", "reset"):
            kw["disconnect"] = Disconnect(0, "response", 100, reset=behaviour == "reset")
        elif behaviour == "never-read":
            kw.update(pipeline=True, read_at=10**9, leave_at=world.now + plan["leave_after"])
        elif behaviour == "never-read-stay":  # the gateway must end it (send_timeout...)
            kw.update(pipeline=True, read_at=10**9, leave_at=world.now + STAY)
        elif behaviour == "slow-read":
            kw["read_pauses"] = [(0, 200), (1000, 500)]
        clients.append(HttpClient(world, exchanges, **kw))
        if behaviour == "never-read-stay":
            stays.append(clients[-1])
    core = world.gateway
    # what one response may queue before it stops: its credit (v1: high water and one read)
    window_bound = window + 4096 if window else 32 * 1024 + 65536

    def invariants(w: World) -> None:
        streams = [c for t in core.tunnels.open for c in t.streams.values()]
        for conn in streams:  # no stream outlives its connection
            assert core._conns.get(conn.cid) is conn, "a stream outlived its client connection"
        assert sum(core.http.streams_by_address.values()) == len(streams) == core.in_flight
        for client in stays:  # a client that never reads nor leaves is let go in time
            assert w.now < client.leave_at - 1 or client.cid not in core._conns
        for conn in client_conns(core):  # buffered bytes stay bounded
            assert conn.on_wire + conn.front.output_pending <= gw.max_output_bytes + window_bound
            assert len(conn.front._inbuf) <= gw.front.max_header_bytes + 65536

    world.hooks.append(invariants)
    world.run(lambda: all(c.done for c in clients), max_time=120)
    world.settle(8.0)  # keep-alive and request timeouts fire, apps finish
    world.assert_no_leaks()
    assert not core.http.streams_by_address and not core.http.conns_by_address
    for client in clients:
        for ex in client.exchanges:
            if ex.complete and ex.status == 200:
                assert bytes(ex.response_body) == expected(ex)
