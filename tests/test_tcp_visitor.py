"""The visitor (``connect SERVICE``): no public port; local connections become streams that
the gateway bridges to the receiver's service. Every gateway x receiver pairing, with the
visitor on either driver; authentication with the visitor credential; ssh-style --stdio."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from anpx_core.auth import NoAuth, SharedSecretClient, SharedSecretServer
from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings
from anpx_core.visitor import VisitorSettings

from .deploy import PAIRINGS, start_gateway, start_receiver, start_visitor, wait_until
from .tcp_helpers import EchoServer, closed_promptly, exchange, free_port

RECEIVER_SECRET = b"receiver secret"
VISITOR_SECRET = b"visitor secret"


class World:
    def __init__(self, gw: str, rc: str, echo_port: int, *, auth: bool = False) -> None:
        gs = GatewaySettings()
        if auth:
            gs.auth = SharedSecretServer(RECEIVER_SECRET)
            gs.tcp.visitor_auth = SharedSecretServer(VISITOR_SECRET)
        else:
            gs.tcp.visitor_auth = NoAuth()
        self.gateway = start_gateway(gw, gs)
        self.url = f"ws://127.0.0.1:{self.gateway.obj.ports.tunnel}/"
        rs = ReceiverSettings(client_id="rc-1", gateway_urls=[self.url], reconnect_delay=0.05)
        if auth:
            rs.auth = SharedSecretClient(RECEIVER_SECRET, "rc-1", nonce_source=os.urandom)
        rs.tcp_services = {"echo": ("127.0.0.1", echo_port), "echo2": ("127.0.0.1", echo_port)}
        self.receiver = start_receiver(rc, rs)
        wait_until(lambda: any(r["services"] for r in self.gateway.obj.core.receivers))
        self.visitors = []

    def visitor(self, driver: str, secret: bytes | None = None, service: str = "echo"):
        auth = (
            SharedSecretClient(secret, "v-1", nonce_source=os.urandom) if secret else NoAuth("v-1")
        )
        v = start_visitor(driver, VisitorSettings(gateway_url=self.url, service=service, auth=auth))
        self.visitors.append(v)
        return v.obj.port

    def close(self) -> None:
        for v in self.visitors:
            v.stop()
        self.receiver.stop()
        self.gateway.stop()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.mark.parametrize("pairing", PAIRINGS, ids=lambda p: f"{p[0]}-gw-{p[1]}-rc")
@pytest.mark.parametrize("visitor", ["trio", "asyncio"])
def test_visitor_echo_with_half_close(pairing, visitor, echo):
    w = World(*pairing, echo.port)
    try:
        port = w.visitor(visitor)
        payload = os.urandom(3 * 1024 * 1024)  # several windows each way through the relay
        assert exchange(port, payload) == payload + b"bye"
        assert exchange(port, b"again") == b"againbye"
    finally:
        w.close()


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_visitor_credential_is_required_and_distinct(driver, echo):
    w = World(driver, driver, echo.port, auth=True)
    try:
        good = w.visitor(driver, VISITOR_SECRET)
        assert exchange(good, b"hi") == b"hibye"
        wrong = w.visitor(driver, RECEIVER_SECRET)  # a receiver's secret is not a visitor's
        assert closed_promptly(wrong)
        none = w.visitor(driver, None)
        assert closed_promptly(none)
    finally:
        w.close()


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_visitor_unknown_service_closes_promptly(driver, echo):
    w = World(driver, driver, echo.port)
    try:
        assert closed_promptly(w.visitor(driver, service="nothing"))
    finally:
        w.close()


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_visitor_stdio_command(driver, echo):
    """``python -m anpx_<driver> connect echo --stdio``: what ssh's ProxyCommand runs."""
    w = World(driver, driver, echo.port)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                f"anpx_{driver}",
                "connect",
                "echo",
                "--stdio",
                "--gateway-url",
                w.url,
            ],
            input=b"over stdio",
            capture_output=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert proc.stdout == b"over stdiobye", proc.stderr.decode()
        assert proc.returncode == 0
        refused = subprocess.run(
            [sys.executable, "-m", f"anpx_{driver}", "connect", "nothing-here", "--stdio",
             "--gateway-url", f"ws://127.0.0.1:{free_port()}/"],
            input=b"x", capture_output=True, timeout=30,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )  # fmt: skip
        assert refused.returncode == 1
        last = refused.stderr.decode().strip().splitlines()[-1]  # the last line says why
        assert last.startswith(f"python -m anpx_{driver} connect: cannot connect to the gateway")
        assert refused.stdout == b""
    finally:
        w.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("driver", ["trio", "asyncio"])
def test_visitor_config_file_runs_every_table(driver, echo, tmp_path):
    """``connect --config FILE``: every ``[[visitor.connect]]`` table at once, like frpc's
    visitors, with the gateway and credential from ``[visitor]``; SIGTERM ends it cleanly."""
    w = World(driver, driver, echo.port, auth=True)
    secret = tmp_path / "visitor.secret"
    secret.write_bytes(VISITOR_SECRET + b"\n")
    ports = [free_port(), free_port()]
    config = tmp_path / "visitor.toml"
    config.write_text(
        f"""[visitor]
gateway_url = "{w.url}"
client_id = "laptop"
visitor_secret_file = "{secret}"

[[visitor.connect]]
service = "echo"
listen = "127.0.0.1:{ports[0]}"

[[visitor.connect]]
service = "echo2"
listen = "127.0.0.1:{ports[1]}"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", f"anpx_{driver}", "connect", "--config", str(config)],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        for port in ports:
            wait_until(lambda port=port: _listening(port) or proc.poll() is not None, 30)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert exchange(ports[0], b"one") == b"onebye"
        assert exchange(ports[1], b"two") == b"twobye"
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        w.close()
