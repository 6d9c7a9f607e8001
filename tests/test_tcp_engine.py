"""Property tests of TCP streams in fake time (tests/harness.py): public TCP connections
through the gateway to a receiver's service, with arbitrary splits of the bytes, half-closes
each way, resets, slow readers, tunnel cuts, and HTTP exchanges interleaved on the same tunnel."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.gateway.tcp import TcpListen
from anpx_core.receiver import ConnectRequest, ReceiverCore
from anpx_core.tcp import TcpSettings

from .harness import (
    CoreConnection,
    End,
    HttpClient,
    Task,
    World,
    _Reader,
    _Writer,
    make_app,
    pattern,
    socket_pair,
)
from .test_engine import expected_answer, gateway_settings, receiver_settings, request

SERVICE = ("127.0.0.1", 5432)
BYE = b"bye"


class _TcpReader(_Reader):
    def step(self) -> None:
        super().step()
        if self.done:
            self.conn.maybe_finish()  # type: ignore[attr-defined]


class _TcpWriter(_Writer):
    """``close`` from take_output shuts the write side only (the driver's serve_tcp)."""

    def step(self) -> None:
        conn, world = self.conn, self.conn.world
        if not conn.pending:
            data, close = conn.core.take_output(conn.cid)
            if not data and close:
                conn.end.outbox.eof = True  # shutdown(SHUT_WR)
                self.done = True
                conn.maybe_finish()  # type: ignore[attr-defined]
                return
            if data:
                conn.pending = data
                return
            world.park(conn.core, conn.cid, self)
            return
        super().step()


class TcpConnection(CoreConnection):
    def __init__(self, world: World, core, cid: int, end: End, label: str) -> None:
        super().__init__(world, core, cid, end, label)
        world.tasks.remove(self.reader)
        world.tasks.remove(self.writer)
        self.reader, self.writer = _TcpReader(self), _TcpWriter(self)
        world.tasks += [self.reader, self.writer]

    def maybe_finish(self) -> None:
        if self.reader.done and self.writer.done:
            self.finish()


class Peer(Task):
    """A socket's far end: writes ``payload`` in random pieces then half-closes (or resets
    after ``reset_after`` bytes), reads to EOF. ``echo``: a service echoing what it reads,
    then sending ``bye`` after the client's EOF."""

    def __init__(self, world: World, end: End, payload: bytes = b"", *, echo: bool = False,
                 reset_after: int | None = None, read_delay: int = 0,
                 hold: bool = False) -> None:  # fmt: skip
        self.world, self.end = world, end
        self.out = bytearray(payload)
        self.echo = echo
        self.reset_after = reset_after
        self.read_delay = read_delay  # steps before it starts reading (a slow consumer)
        self.sent = 0
        self.received = bytearray()
        self.got_eof = False
        self.was_reset = False
        self.half_closed = False
        self.hold = hold  # never half-close (a client that goes quiet)
        world.tasks.append(self)

    def runnable(self) -> bool:
        return not self.done

    def step(self) -> None:
        world, end = self.world, self.end
        if self.read_delay:
            self.read_delay -= 1
        elif end.inbox.broken:
            self.was_reset = True
            self.done = True
            return
        elif end.inbox.size:
            data = end.inbox.pull(world.read_size())
            self.received += data
            if self.echo:
                self.out += data
        elif end.inbox.eof and not self.got_eof:
            self.got_eof = True
            if self.echo:
                self.out += BYE
        if self.out and not self.half_closed and not end.write_failed:
            if self.reset_after is not None and self.sent >= self.reset_after:
                end.reset()
                self.was_reset = self.done = True
                return
            n = min(len(self.out), end.outbox.room, world.write_size())
            if self.reset_after is not None:
                n = min(n, max(1, self.reset_after - self.sent))
            end.outbox.push(bytes(self.out[:n]))
            del self.out[:n]
            self.sent += n
        if self.hold:
            return
        if not self.out and not self.half_closed and (not self.echo or self.got_eof):
            end.outbox.eof = True
            self.half_closed = True
        if self.half_closed and self.got_eof:
            self.done = True


class TcpWorld(World):
    def __init__(self, *, service_down: bool = False, service_hang: bool = False, **kw) -> None:
        self.services: list[Peer] = []
        self.service_down = service_down
        self.service_hang = service_hang  # the connect never completes nor fails
        super().__init__(**kw)

    def _connect(self, core: ReceiverCore, request: ConnectRequest) -> None:
        if request.purpose != "tcp":
            super()._connect(core, request)
            return
        if self.service_hang:
            return
        if self.service_down:
            core.connect_failed(request.cid, self.now, "[Errno 111] Connection refused")
            self.sync(core)
            return
        ours, theirs = socket_pair(self.capacity())
        self.services.append(Peer(self, theirs, echo=True))
        core.connected(request.cid, self.now)
        TcpConnection(self, core, request.cid, ours, "service")
        self.sync(core)

    def open_public(self, index: int, payload: bytes, **kw) -> Peer:
        ours, theirs = socket_pair(self.capacity())
        listen = self.gateway.settings.tcp.listeners[0]
        cid = self.gateway.open_tcp(
            self.now, (f"198.51.100.{index % 250 + 1}", 30000 + index), listen
        )
        TcpConnection(self, self.gateway, cid, ours, "public")
        self.sync(self.gateway)
        return Peer(self, theirs, payload, **kw)


def tcp_world(seed: int, *, idle: float = 0.0, open_timeout: float = 1000.0, **kw) -> TcpWorld:
    gs = gateway_settings()
    gs.tcp.listeners = [TcpListen(0, "db", "127.0.0.1")]
    gs.tcp.limits = TcpSettings(idle_timeout=idle, open_timeout=open_timeout)
    rs = receiver_settings(tcp_services={"db": SERVICE})
    rs.tcp = TcpSettings(idle_timeout=idle, open_timeout=1000.0)
    world = TcpWorld(seed=seed, gateway=gs, receivers=[rs], **kw)
    world.app = make_app(world)
    world.wait_connected(1)
    return world


@dataclass
class Plan:
    size: int
    reset_after: int | None = None  # the client resets after this many bytes
    read_delay: int = 0
    http: list[int] = field(default_factory=list)


plans = st.builds(
    Plan,
    size=st.sampled_from([0, 1, 100, 5000, 70_000, 300_000]),
    reset_after=st.one_of(st.none(), st.none(), st.integers(0, 2000)),
    read_delay=st.sampled_from([0, 0, 50, 2000]),
)


def _quiet(world: TcpWorld) -> bool:
    """No TCP stream left anywhere: the gateway's tunnels and the receiver hold nothing."""
    gw_streams = sum(len(t.streams) for t in world.gateway.tunnels.open)
    rc_sessions = [link.session for link in world.receivers[0]._links if link.session]
    return gw_streams == 0 and all(s.stream_count == 0 for s in rc_sessions)


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**32), conns=st.lists(plans, min_size=1, max_size=5),
       http=st.lists(st.sampled_from([0, 10, 30_000]), max_size=3))  # fmt: skip
def test_every_byte_arrives_once_in_order_and_nothing_lingers(seed, conns, http) -> None:
    world = tcp_world(seed)
    clients = [
        world.open_public(
            i, pattern(f"tcp{i}", p.size), reset_after=p.reset_after, read_delay=p.read_delay
        )
        for i, p in enumerate(conns)
    ]
    exchanges = [request(f"h{i}", pattern(f"h{i}", n)) for i, n in enumerate(http)]
    http_clients = [HttpClient(world, [ex], index=100 + i) for i, ex in enumerate(exchanges)]
    world.run(lambda: all(c.done for c in clients) and all(ex.finished for ex in exchanges))
    for i, (plan, client) in enumerate(zip(conns, clients, strict=True)):
        payload = pattern(f"tcp{i}", plan.size)
        if plan.reset_after is None or plan.reset_after >= plan.size:
            # half-close kept the way back: the echo, then what the service sent after our EOF
            assert not client.was_reset
            assert bytes(client.received) == payload + BYE
        else:
            assert client.was_reset  # we reset: nothing more is owed to us
    for ex in exchanges:  # HTTP on the same tunnel is unaffected
        assert ex.complete and ex.status == 200
        assert bytes(ex.response_body) == expected_answer(ex, "echo", ex.headers[0][1])
    world.run(lambda: _quiet(world) and all(s.done for s in world.services), max_time=60)
    assert world.gateway.tcp.clients == 0 or all(c.done for c in clients)
    del http_clients


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**32), after=st.integers(0, 20_000))
def test_service_reset_reaches_the_client_and_frees_everything(seed, after) -> None:
    world = tcp_world(seed)
    # the service resets once it has echoed `after` bytes
    original = world._connect

    def resetting(core, request):
        original(core, request)
        if request.purpose == "tcp" and world.services:
            world.services[-1].reset_after = after

    world._connect = resetting  # type: ignore[method-assign]
    client = world.open_public(0, pattern("x", 50_000))
    world.run(lambda: client.done)
    assert client.was_reset or bytes(client.received) == pattern("x", 50_000) + BYE
    world.run(lambda: _quiet(world), max_time=60)


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**32))
def test_connect_failure_resets_the_client_promptly(seed) -> None:
    world = tcp_world(seed, service_down=True)
    client = world.open_public(0, b"hello")
    start = world.now
    world.run(lambda: client.done, max_time=5)
    assert client.was_reset and client.received == b""
    assert world.now - start < 1.0  # no timeout involved: the failure travels at once
    world.run(lambda: _quiet(world), max_time=10)


@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**32))
def test_a_cut_tunnel_resets_every_stream_on_it(seed) -> None:
    world = tcp_world(seed)
    clients = [world.open_public(i, pattern(f"c{i}", 200_000), read_delay=3000) for i in range(3)]
    world.run(lambda: world.gateway.in_flight == 3)
    world.drop_tunnel()
    world.run(lambda: all(c.done for c in clients), max_time=120)
    assert all(c.was_reset or c.got_eof for c in clients)
    assert all(bytes(c.received) != pattern(f"c{i}", 200_000) + BYE for i, c in enumerate(clients))


def test_idle_timeout_resets_at_its_edge() -> None:
    world = tcp_world(7, idle=30.0)
    client = world.open_public(0, b"x", hold=True)  # one byte, then silence, no EOF
    world.run(lambda: len(client.received) == 1 or client.done, max_time=10)
    quiet_since = world.now
    world.run(lambda: client.done, max_time=120)
    assert client.was_reset
    assert 29.0 <= world.now - quiet_since <= 31.5


def test_allow_list_and_no_service_reset_at_once() -> None:
    world = tcp_world(3)
    world.gateway.settings.tcp.listeners[0].allow = [ipaddress.ip_network("10.0.0.0/8")]
    client = world.open_public(0, b"nope")
    world.run(lambda: client.done, max_time=1)
    assert client.was_reset
    world.gateway.settings.tcp.listeners[0].allow = []
    world.gateway.settings.tcp.listeners[0].service = "other"
    client = world.open_public(1, b"nope")
    world.run(lambda: client.done, max_time=1)
    assert client.was_reset


@pytest.mark.parametrize("method", ["ANPX-TCP"])
def test_http_clients_cannot_open_tcp_streams(method) -> None:
    world = tcp_world(5)
    ex = request("m", b"")
    ex.method = method
    ex.target = "db"
    HttpClient(world, [ex], index=1)
    world.run(lambda: ex.finished)
    assert ex.status == 405
    assert world.services == []


@settings(deadline=None, max_examples=5)
@given(seed=st.integers(0, 2**32))
def test_a_silent_tunnel_resets_every_stream_within_the_keepalive_window(seed) -> None:
    """A tunnel that goes silent (no FIN, no RST: a dead peer or a cut cable) is found by
    the WebSocket keepalive; every TCP stream on it is reset on both sides by then."""
    from anpx_core.websocket import WsLimits

    gs = gateway_settings(ws=WsLimits(ping_interval=5.0, ping_timeout=5.0))
    gs.tcp.listeners = [TcpListen(0, "db", "127.0.0.1")]
    rs = receiver_settings(tcp_services={"db": SERVICE})
    rs.ws = WsLimits(ping_interval=5.0, ping_timeout=5.0, handshake_timeout=5.0)
    world = TcpWorld(seed=seed, gateway=gs, receivers=[rs])
    world.app = make_app(world)
    world.wait_connected(1)
    clients = [world.open_public(i, b"", hold=True) for i in range(3)]
    world.run(lambda: len(world.services) == 3)
    for gw, _rx in world.tunnels:  # the cable is cut: nothing more arrives either way
        for pipe in (gw.end.inbox, gw.end.outbox):
            pipe.capacity, pipe.size = 0, 0
            pipe.chunks.clear()
    cut = world.now
    world.run(lambda: all(c.done for c in clients) and all(s.done for s in world.services),
              max_time=60)  # fmt: skip
    assert all(c.was_reset for c in clients)
    assert all(s.was_reset or s.got_eof for s in world.services)
    assert world.now - cut <= 5.0 + 5.0 + 1.0  # ping_interval + ping_timeout, and a step


def test_open_timeout_resets_an_unanswered_stream_at_its_edge() -> None:
    world = tcp_world(11, open_timeout=12.0, service_hang=True)
    client = world.open_public(0, b"hello", hold=True)
    opened = world.now
    world.run(lambda: client.done, max_time=60)
    assert client.was_reset
    assert 12.0 <= world.now - opened <= 12.5
    world.run(lambda: world.gateway.in_flight == 0, max_time=5)


@settings(deadline=None, max_examples=5)
@given(seed=st.integers(0, 2**32))
def test_a_reconnected_receiver_offers_its_services_again(seed) -> None:
    """No lost listener: after the tunnel is cut the receiver reconnects by itself and the
    public port reaches its service again, without a restart."""
    world = tcp_world(seed)
    first = world.open_public(0, b"before")
    world.run(lambda: first.done)
    world.drop_tunnel()
    world.run(lambda: not world.gateway.receivers, max_time=30)
    world.run(lambda: any(r["services"] == ["db"] for r in world.gateway.receivers), max_time=60)
    again = world.open_public(1, b"after")
    world.run(lambda: again.done)
    assert bytes(again.received) == b"after" + BYE


def test_connections_per_address_are_capped_at_the_edge() -> None:
    """max_connections_per_address applies to public TCP ports as to HTTP: one address
    cannot take every connection; the cap frees up as its connections close."""
    world = tcp_world(13)
    world.gateway.settings.max_connections_per_address = 2
    held = [world.open_public(0, b"", hold=True) for _ in range(2)]  # the same address
    world.run(lambda: len(world.services) == 2)
    third = world.open_public(0, b"x")
    world.run(lambda: third.done, max_time=1)
    assert third.was_reset and world.gateway.tcp.by_address == {"198.51.100.1": 2}
    other = world.open_public(1, b"other")  # another address is not affected
    world.run(lambda: other.done)
    assert bytes(other.received) == b"other" + BYE
    held[0].end.close()  # one closes: room for one more
    world.run(lambda: world.gateway.tcp.by_address.get("198.51.100.1") == 1, max_time=10)
    again = world.open_public(0, b"again")
    world.run(lambda: again.done)
    assert bytes(again.received) == b"again" + BYE
