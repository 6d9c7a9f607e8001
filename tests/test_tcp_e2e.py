"""TCP services end to end (protocol.md §21): every {trio, asyncio} gateway x receiver pairing,
real loopback sockets, an echo service, half-close both ways, resets, connect failures."""

from __future__ import annotations

import contextlib
import socket

import pytest

from anpx_core.gateway import GatewaySettings
from anpx_core.gateway.tcp import TcpListen
from anpx_core.receiver import ReceiverSettings

from .deploy import PAIRINGS, start_gateway, start_receiver, wait_until
from .tcp_helpers import EchoServer, closed_promptly, exchange, free_port, read_all


class TcpWorld:
    def __init__(self, gw: str, rc: str, services: dict[str, tuple[str, int]], listens=None):
        settings = GatewaySettings()
        settings.tcp.listeners = listens or [TcpListen(0, name, "127.0.0.1") for name in services]
        self.gateway = start_gateway(gw, settings)
        self.ports = self.gateway.obj.ports
        self.tcp_ports = self.gateway.obj.tcp_ports
        rs = ReceiverSettings(client_id="rc-1")
        rs.gateway_urls = [f"ws://127.0.0.1:{self.ports.tunnel}/"]
        rs.reconnect_delay = 0.05
        rs.tcp_services = dict(services)
        self.rc_driver = rc
        self.rs = rs
        self.receiver = start_receiver(rc, rs)
        self.wait_services()

    def wait_services(self) -> None:
        wait_until(lambda: any(r["services"] for r in self.gateway.obj.core.receivers))

    def close(self) -> None:
        self.receiver.stop()
        self.gateway.stop()


@pytest.fixture(params=PAIRINGS, ids=lambda p: f"{p[0]}-gw-{p[1]}-rc")
def pairing(request):
    return request.param


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def world(pairing, echo):
    w = TcpWorld(*pairing, {"echo": ("127.0.0.1", echo.port)})
    yield w
    w.close()


def test_echo_with_half_close(world):
    payload = bytes(range(256)) * 4000  # ~1 MiB: several windows' worth of credit
    assert exchange(world.tcp_ports[0], payload) == payload + b"bye"


def test_many_connections_at_once(world):
    import concurrent.futures

    def one(i: int) -> bool:
        data = f"conn {i} ".encode() * 1000
        return exchange(world.tcp_ports[0], data) == data + b"bye"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(32)))


def test_connect_failure_closes_promptly(pairing):
    dead = free_port()  # nothing listens here
    w = TcpWorld(*pairing, {"gone": ("127.0.0.1", dead)})
    try:
        assert closed_promptly(w.tcp_ports[0])
    finally:
        w.close()


def test_no_receiver_offers_the_service(pairing, echo):
    settings = GatewaySettings()
    settings.tcp.listeners = [TcpListen(0, "nobody", "127.0.0.1")]
    gateway = start_gateway(pairing[0], settings)
    try:
        assert closed_promptly(gateway.obj.tcp_ports[0])
    finally:
        gateway.stop()


def test_allow_list_refuses_other_addresses(pairing, echo):
    import ipaddress

    listens = [TcpListen(0, "echo", "127.0.0.1", [ipaddress.ip_network("10.0.0.0/8")])]
    w = TcpWorld(*pairing, {"echo": ("127.0.0.1", echo.port)}, listens)
    try:
        assert closed_promptly(w.tcp_ports[0])
    finally:
        w.close()


def test_service_reset_reaches_the_client(pairing):
    """The service resets its connection: the public client sees a reset or EOF, promptly."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    w = TcpWorld(*pairing, {"rst": ("127.0.0.1", port)})
    try:
        with socket.create_connection(("127.0.0.1", w.tcp_ports[0]), timeout=10) as client:
            conn, _ = lsock.accept()
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()  # RST
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(10) == b""
    finally:
        lsock.close()
        w.close()


def test_receiver_reconnect_reoffers_services(pairing, echo):
    w = TcpWorld(*pairing, {"echo": ("127.0.0.1", echo.port)})
    try:
        assert exchange(w.tcp_ports[0], b"one") == b"onebye"
        w.receiver.stop()
        wait_until(lambda: not w.gateway.obj.core.receivers)
        w.receiver = start_receiver(w.rc_driver, w.rs)
        w.wait_services()
        assert exchange(w.tcp_ports[0], b"two") == b"twobye"
    finally:
        w.close()


def test_client_half_close_keeps_the_way_back(world):
    """The client shuts its write side first; data the service sends after still arrives."""
    with socket.create_connection(("127.0.0.1", world.tcp_ports[0]), timeout=10) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"bye"


def _named_app(name: str):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = f"{name} {scope['query_string'].decode()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_token_query_routes_to_that_client_id(driver):
    """AgentX's links: ?token=<client_id> picks the receiver, ahead of Host/path routing."""
    import httpx

    gateway = start_gateway(driver, GatewaySettings())
    url = f"ws://127.0.0.1:{gateway.obj.ports.tunnel}/"
    receivers = [
        start_receiver(
            driver, ReceiverSettings(client_id=name, gateway_urls=[url]), _named_app(name)
        )
        for name in ("alpha", "beta")
    ]
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 2)
        base = f"http://127.0.0.1:{gateway.obj.ports.http}"
        for _ in range(3):  # not load balancing by luck: every time
            assert httpx.get(f"{base}/x?token=beta").text == "beta token=beta"
            assert httpx.get(f"{base}/x?a=1&token=alpha").text == "alpha a=1&token=alpha"
        # an unknown token: routed as if absent (either receiver answers)
        assert httpx.get(f"{base}/x?token=nobody").status_code == 200
    finally:
        for r in receivers:
            r.stop()
        gateway.stop()
