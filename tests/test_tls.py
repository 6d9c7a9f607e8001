"""TLS over real sockets, both drivers: mutual TLS on the tunnel listener, certificates the
receiver must refuse (expired, untrusted, wrong host name) and the TLS 1.2 minimum.

Contexts are built by the drivers' own ``make_context`` from a core ``TlsPolicy``, from PEM
files, exactly as the command line builds them.
"""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings
from anpx_host.launch import TlsPolicy, first_error
from anpx_host.tls import make_context

from .deploy import DRIVERS, start_gateway, start_receiver, wait_until
from .test_limits import CountingApp


@dataclass
class Pki:
    ca: Path  # the CA both sides trust
    gateway: Path  # key + chain for 127.0.0.1
    client: Path  # a receiver's client certificate from the trusted CA
    stranger_client: Path  # a client certificate from a CA nobody trusts
    untrusted: Path  # a gateway certificate from that other CA
    expired: Path  # from the trusted CA, expired yesterday
    wrong_host: Path  # from the trusted CA, for gateway.example only


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    now = datetime.datetime.now(datetime.timezone.utc)

    def write(name: str, cert) -> Path:
        path = root / f"{name}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    ca_path = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return Pki(
        ca=ca_path,
        gateway=write("gateway", ca.issue_cert("127.0.0.1", "localhost")),
        client=write("client", ca.issue_cert("receiver-1.example")),
        stranger_client=write("stranger", other.issue_cert("receiver-1.example")),
        untrusted=write("untrusted", other.issue_cert("127.0.0.1")),
        expired=write(
            "expired",
            ca.issue_cert(
                "127.0.0.1",
                not_before=now - datetime.timedelta(days=2),
                not_after=now - datetime.timedelta(days=1),
            ),
        ),
        wrong_host=write("wrong-host", ca.issue_cert("gateway.example")),
    )


def server_context(driver: str, cert: Path, ca: Path | None = None, verify: str = "none"):
    return make_context(TlsPolicy(True, str(cert), None, str(ca) if ca else None, verify))


def receiver_context(driver: str, pki: Pki, cert: Path | None = None):
    return make_context(
        TlsPolicy(False, str(cert) if cert else None, None, str(pki.ca), "required", True)
    )


def run_pair(driver: str, pki: Pki, *, gateway_cert: Path, tunnel_verify: str, client_cert):
    """Gateway (HTTPS + wss://) and a receiver that tries twice, then gives up."""
    app = CountingApp()
    gateway = start_gateway(
        driver,
        GatewaySettings(),
        http_tls=server_context(driver, pki.gateway),
        tunnel_tls=server_context(driver, gateway_cert, pki.ca, tunnel_verify),
        admin=False,
    )
    ports = gateway.obj.ports
    receiver = start_receiver(
        driver,
        ReceiverSettings(
            gateway_urls=[f"wss://127.0.0.1:{ports.tunnel}/"],
            reconnect_delay=0.05,
            max_reconnect_attempts=1,
        ),
        app,
        tls=receiver_context(driver, pki, client_cert),
    )
    return gateway, receiver, app


def assert_refused(gateway, receiver, app, pki: Pki, reason: str) -> None:
    """The receiver gave up, no tunnel ever opened, and no request reached the app."""
    try:
        wait_until(receiver.finished.is_set)
        assert receiver.error is not None and "gave up" in str(first_error(receiver.error))
        assert reason in receiver.obj.core.last_error, receiver.obj.core.last_error
        assert gateway.obj.core.stats.tunnels_opened == 0
        verify = ssl.create_default_context(cafile=str(pki.ca))
        r = httpx.get(f"https://127.0.0.1:{gateway.obj.ports.http}/", verify=verify, timeout=5)
        assert r.status_code == 503
        assert app.calls == 0
    finally:
        receiver.stop()
        gateway.stop()


# --- mutual TLS on the tunnel listener ---------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_mutual_tls_serves_a_receiver_with_a_trusted_certificate(driver, pki):
    gateway, receiver, app = run_pair(
        driver, pki, gateway_cert=pki.gateway, tunnel_verify="required", client_cert=pki.client
    )
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        verify = ssl.create_default_context(cafile=str(pki.ca))
        r = httpx.get(f"https://127.0.0.1:{gateway.obj.ports.http}/", verify=verify, timeout=5)
        assert r.status_code == 200 and r.text == "ok"
        assert app.calls == 1
    finally:
        receiver.stop()
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("client", ["none", "stranger"])
def test_mutual_tls_refuses_a_receiver_without_a_trusted_certificate(driver, pki, client):
    cert = None if client == "none" else pki.stranger_client
    gateway, receiver, app = run_pair(
        driver, pki, gateway_cert=pki.gateway, tunnel_verify="required", client_cert=cert
    )
    # A TLS 1.3 client finishes its side of the handshake before the gateway checks its
    # certificate: the refusal arrives as the connection ending during the upgrade.
    assert_refused(gateway, receiver, app, pki, "during the handshake")


# --- the receiver verifies the gateway -----------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("expired", "certificate has expired"),
        ("untrusted", "unable to get local issuer certificate"),
        ("wrong_host", "mismatch"),
    ],
)
def test_receiver_refuses_a_bad_gateway_certificate(driver, pki, cert, reason):
    gateway, receiver, app = run_pair(
        driver, pki, gateway_cert=getattr(pki, cert), tunnel_verify="none", client_cert=None
    )
    assert_refused(gateway, receiver, app, pki, reason)


# --- TLS 1.2 minimum -------------------------------------------------------------------------------


def _tls11_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 at level 1+
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version() or ""


def _local_tls11_works(pki: Pki) -> bool:
    """Can this OpenSSL negotiate TLS 1.1 at all? (A server that allows it.)"""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.minimum_version = ssl.TLSVersion.TLSv1_1
        server.load_cert_chain(str(pki.gateway))
        client = _tls11_client()
    except (ssl.SSLError, ValueError):
        return False
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            sock, _ = listener.accept()
            with server.wrap_socket(sock, server_side=True):
                pass
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return _handshake(listener.getsockname()[1], client) == "TLSv1.1"
    except (ssl.SSLError, OSError):
        return False
    finally:
        listener.close()
        thread.join(5)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("driver", DRIVERS)
def test_gateway_refuses_tls_1_1(driver, pki):
    if not _local_tls11_works(pki):
        pytest.skip("this OpenSSL cannot negotiate TLS 1.1 even when both sides allow it")
    gateway = start_gateway(
        driver,
        GatewaySettings(),
        http_tls=server_context(driver, pki.gateway),
        tunnel_tls=server_context(driver, pki.gateway),
        admin=False,
    )
    try:
        ports = gateway.obj.ports
        for port in (ports.http, ports.tunnel):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                _handshake(port, _tls11_client())
            # the same client, allowed TLS 1.2, gets through: the version is the reason
            modern = _tls11_client()
            modern.maximum_version = ssl.TLSVersion.TLSv1_2
            modern.minimum_version = ssl.TLSVersion.TLSv1_2
            assert _handshake(port, modern) == "TLSv1.2"
        assert gateway.obj.core.stats.tunnels_opened == 0
    finally:
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_gateway_logs_a_failed_tls_handshake_with_the_peer(driver, pki, caplog):
    caplog.set_level(logging.INFO, "anpx.gateway")
    gateway = start_gateway(
        driver, GatewaySettings(), http_tls=server_context(driver, pki.gateway), admin=False
    )
    try:
        with socket.create_connection(("127.0.0.1", gateway.obj.ports.http), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to the HTTPS port
            sock.recv(100)
        wait_until(lambda: "TLS handshake with 127.0.0.1:" in caplog.text)
        assert "failed" in caplog.text
    finally:
        gateway.stop()
