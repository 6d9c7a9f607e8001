"""TCP streams when something goes wrong, and what the gateway counts (issue 16's gaps):
an internal error closes its socket, a crash in a visitor's relay resets only that stream,
per-service counters in /stats and /metrics, keepalive on real sockets."""

from __future__ import annotations

import socket

import httpx
import pytest
import trio

from anpx_core.gateway.tcp import Relay, TcpClientConn
from anpx_host.tcpsock import numeric_family, tune
from anpx_trio.tcp import open_stream

from .deploy import wait_until
from .tcp_helpers import EchoServer, closed_promptly, exchange, free_port
from .test_tcp_e2e import TcpWorld
from .test_tcp_visitor import World as VisitorWorld

DRIVERS = ["trio", "asyncio"]


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _ended(sock: socket.socket) -> bool:
    """The far end closed the whole connection: EOF or a reset, within the timeout."""
    try:
        while data := sock.recv(65536):
            del data
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_internal_error_closes_the_connection_not_just_its_write_side(
    driver, echo, monkeypatch, caplog
):
    w = TcpWorld(driver, driver, {"echo": ("127.0.0.1", echo.port)})
    try:
        receive = TcpClientConn.receive

        def faulty(self, data, now):
            if b"boom" in data:
                raise RuntimeError("injected fault in a tcp connection")
            receive(self, data, now)

        monkeypatch.setattr(TcpClientConn, "receive", faulty)
        core = w.gateway.obj.core
        with socket.create_connection(("127.0.0.1", w.tcp_ports[0]), timeout=10) as sock:
            sock.sendall(b"boom")
            assert _ended(sock)
        # the gateway closed its socket and forgot the connection (nothing pinned)
        wait_until(lambda: core.tcp.clients == 0 and core.doomed == 0)
        assert "injected fault in a tcp connection" in caplog.text
        # the tunnel and the service are fine
        assert exchange(w.tcp_ports[0], b"after") == b"afterbye"
    finally:
        w.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_crash_in_a_visitor_relay_resets_only_that_stream(driver, echo, monkeypatch, caplog):
    w = VisitorWorld(driver, driver, echo.port)
    try:
        port = w.visitor(driver)
        from_visitor = Relay.from_visitor

        def faulty(self, event):
            if b"boom" in getattr(event, "data", b""):
                raise RuntimeError("injected fault in a relay")
            from_visitor(self, event)

        monkeypatch.setattr(Relay, "from_visitor", faulty)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as other:
            other.sendall(b"first ")
            assert other.recv(100) == b"first "
            with socket.create_connection(("127.0.0.1", port), timeout=10) as bad:
                bad.sendall(b"boom")
                assert _ended(bad)
            # the other stream on the same visitor tunnel carries on (a reset tunnel would
            # have reset it), and new ones open
            other.sendall(b"second")
            assert other.recv(100) == b"second"
            assert exchange(port, b"new") == b"newbye"
        assert "injected fault in a relay" in caplog.text
    finally:
        w.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_tcp_counters_per_service_in_stats_and_metrics(driver, echo):
    dead = free_port()  # nothing listens here: the receiver's connect fails
    w = TcpWorld(driver, driver, {"echo": ("127.0.0.1", echo.port), "gone": ("127.0.0.1", dead)})
    try:
        payload = b"x" * 100_000
        assert exchange(w.tcp_ports[0], payload) == payload + b"bye"
        assert closed_promptly(w.tcp_ports[1])  # the receiver's connect failed
        admin = f"http://127.0.0.1:{w.gateway.obj.ports.admin}"
        core = w.gateway.obj.core
        wait_until(lambda: core.tcp.open_streams() == {})
        tcp = httpx.get(admin + "/stats").json()["tcp"]
        assert tcp["echo"] == {
            "open": 0,
            "opened": 1,
            "bytes_in": len(payload),
            "bytes_out": len(payload) + 3,
            "connect_failures": 0,
        }
        assert tcp["gone"]["opened"] == 1 and tcp["gone"]["connect_failures"] == 1
        with socket.create_connection(("127.0.0.1", w.tcp_ports[0]), timeout=10) as held:
            held.sendall(b"ping")
            assert held.recv(10) == b"ping"
            assert httpx.get(admin + "/stats").json()["tcp"]["echo"]["open"] == 1
            metrics = httpx.get(admin + "/metrics").text
        assert 'anpx_tcp_streams{service="echo"} 1' in metrics
        assert 'anpx_tcp_streams_opened_total{service="echo"} 2' in metrics
        assert 'anpx_tcp_connect_failures_total{service="gone"} 1' in metrics
        assert f'anpx_tcp_bytes_total{{service="echo",direction="in"}} {len(payload) + 4}' in (
            metrics
        )
    finally:
        w.close()


def test_keepalive_and_nodelay_are_set_on_a_real_socket():
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as sock:
            tune(sock, 60)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 15
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        with socket.create_connection(server.getsockname()) as sock:
            tune(sock, 0)  # keepalive off: no probes, TCP_NODELAY still on
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_numeric_family_only_for_ip_addresses():
    assert numeric_family("127.0.0.1") == socket.AF_INET
    assert numeric_family("::1") == socket.AF_INET6
    assert numeric_family("localhost") is None
    assert numeric_family("127.0.0.1.example") is None


def test_trio_open_stream_connects_directly_and_fails_like_trio():
    """The receiver's connect to a numeric address skips trio's resolver and happy eyeballs;
    it still carries bytes, and a refused connect reads as ``trio.open_tcp_stream``'s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()

    async def main() -> tuple[bytes, str, str]:
        stream = await open_stream("127.0.0.1", port)
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"hi")
            got = await stream.receive_some(10)
        await stream.aclose()
        errors = []
        for opener in (open_stream, trio.open_tcp_stream):
            with pytest.raises(OSError) as info:
                await opener("127.0.0.1", refused_port)
            errors.append(str(info.value))
        return got, errors[0], errors[1]

    try:
        got, ours, theirs = trio.run(main)
    finally:
        listener.close()
    assert got == b"hi"
    assert ours == theirs
