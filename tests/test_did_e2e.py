"""DID-WBA over real sockets: documents served over HTTPS (trustme), both drivers, and interop
with the ecosystem's own implementation (``anp`` 1.0.7 and ``agent-connect`` 0.3.7)."""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

pytest.importorskip("cryptography")
import trustme
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from anpx_core.didwba import DID_REFUSAL, DidWbaClient, DidWbaServer, DocumentCache
from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings
from anpx_core.routing import parse_route
from anpx_host.didfiles import make_document

from .apps import app
from .deploy import DRIVERS, start_gateway, start_receiver, wait_until


class _Documents(BaseHTTPRequestHandler):
    documents: dict[str, bytes] = {}
    requested: list[str] = []  # paths asked for, to show what was never fetched

    def do_GET(self) -> None:
        self.requested.append(self.path)
        body = self.documents.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args) -> None:
        pass


@dataclass
class DidHost:
    """An HTTPS server on 127.0.0.1 publishing DID documents, and the CA that trusts it."""

    port: int
    ca_file: str
    documents: dict[str, bytes]
    folder: Path
    requested: list[str]

    def did(self, name: str, host: str = "127.0.0.1") -> str:
        return f"did:wba:{host}%3A{self.port}:agents:{name}"

    def publish(self, name: str, key: str = "secp256k1", host: str = "127.0.0.1"):
        """A new identity whose document is served at /agents/<name>/did.json."""
        document, pem = make_document(self.did(name, host), key)
        self.documents[f"/agents/{name}/did.json"] = json.dumps(document).encode()
        (self.folder / f"{name}.json").write_text(json.dumps(document))
        (self.folder / f"{name}.pem").write_bytes(pem)
        return document, load_pem_private_key(pem, None)


@pytest.fixture(scope="module")
def did_host(tmp_path_factory) -> Iterator[DidHost]:
    folder = tmp_path_factory.mktemp("did")
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Documents)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield DidHost(
            server.server_address[1],
            str(ca_file),
            _Documents.documents,
            folder,
            _Documents.requested,
        )
    finally:
        server.shutdown()
        server.server_close()


def did_gateway(
    driver: str,
    host: DidHost,
    fetch_hosts: tuple[str, ...] | None = ("127.0.0.1",),
    max_attempts: int = 100,
    allowed_dids: list[str] | None = None,
    **settings,
):
    """A gateway fetching documents from ``fetch_hosts`` (None: the default, public ones)."""
    cache = DocumentCache(fetch_hosts=fetch_hosts)
    cache.ca_file = host.ca_file
    cache.fetch_timeout = 5.0
    auth = DidWbaServer(cache, ["127.0.0.1"], max_attempts=max_attempts, allowed_dids=allowed_dids)
    return start_gateway(driver, GatewaySettings(auth=auth, **settings))


def upgrade(gateway, headers: dict[str, str]) -> tuple[str, int | None, str]:
    """Open a tunnel with an independent WebSocket client: ("open", None, "") once the gateway
    counts it, ("closed", code, reason) when it closes it, ("http", status, "") when refused."""
    before = gateway.obj.core.stats.tunnels_opened
    url = f"ws://127.0.0.1:{gateway.obj.ports.tunnel}/"
    try:
        with connect(url, additional_headers=headers, open_timeout=10) as ws:
            for _ in range(200):
                try:
                    ws.recv(timeout=0.05)
                except ConnectionClosed as exc:
                    frame = exc.rcvd
                    return "closed", frame.code if frame else None, frame.reason if frame else ""
                except TimeoutError:
                    if gateway.obj.core.stats.tunnels_opened > before:
                        return "open", None, ""
            raise AssertionError("the gateway neither admitted nor closed the tunnel")
    except InvalidStatus as exc:
        return "http", exc.response.status_code, ""
    raise AssertionError("unreachable")


def stats(gateway) -> dict:
    return httpx.get(f"http://127.0.0.1:{gateway.obj.ports.admin}/stats").json()


# --- both drivers: admitted by DID alone ----------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_receiver_with_a_did_and_no_secret_is_admitted_and_named_by_its_did(driver, did_host):
    alice = did_host.publish(f"alice-{driver}")
    bob_did = did_host.did("bob")
    claims = {alice[0]["id"]: [parse_route("/echo")], bob_did: [parse_route("/bob")]}
    gateway = did_gateway(driver, did_host, route_claims=claims)
    port = gateway.obj.ports.tunnel
    good = start_receiver(
        driver,
        ReceiverSettings(
            gateway_urls=[f"ws://127.0.0.1:{port}/"],
            auth=DidWbaClient(*alice, nonce_source=os.urandom),
            routes=["/echo"],
        ),
        app,
    )
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        (receiver,) = stats(gateway)["receivers"]
        assert receiver["id"] == alice[0]["id"]
        metrics = httpx.get(f"http://127.0.0.1:{gateway.obj.ports.admin}/metrics").text
        assert f'anpx_receiver_tunnels{{id="{alice[0]["id"]}"}} 1' in metrics
        assert httpx.get(f"http://127.0.0.1:{gateway.obj.ports.http}/echo/x").status_code == 200
        # the same DID claiming bob's route: verified, but refused by the claims
        signer = DidWbaClient(*alice, nonce_source=os.urandom)
        headers = dict(signer.request_headers(f"127.0.0.1:{port}", "/", time.time()))
        headers["anpx-routes"] = "/bob"
        assert upgrade(gateway, headers) == ("http", 403, "")
        assert len(gateway.obj.core.receivers) == 1
    finally:
        good.stop()
        gateway.stop()


# --- refusals over real sockets: one log line each, nothing for the peer --------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_refusals_close_with_4003_and_log_one_line(driver, did_host, caplog):
    caplog.set_level(logging.INFO, "anpx.gateway")
    alice = did_host.publish("carol")
    stranger_doc, stranger_key = make_document(did_host.did("nobody"))
    gateway = did_gateway(driver, did_host)
    port = gateway.obj.ports.tunnel
    host = f"127.0.0.1:{port}"
    wall = time.time()

    def signed(who=alice, host=host, wall=wall, form="legacy") -> dict[str, str]:
        return dict(
            DidWbaClient(*who, form=form, nonce_source=os.urandom).request_headers(host, "/", wall)
        )

    tampered = signed()
    tampered["Authorization"] = tampered["Authorization"].replace('nonce="', 'nonce="0', 1)
    replayed = signed()
    # dave's key is in his document's verificationMethod, but not under authentication
    dave = did_host.publish("dave")
    served = dict(dave[0], authentication=[])
    did_host.documents["/agents/dave/did.json"] = json.dumps(served).encode()
    did_host.documents["/agents/broken/did.json"] = b"<html>not a document</html>"
    broken = make_document(did_host.did("broken"))
    cases = [
        ("tampered", tampered, "bad signature"),
        ("other host", signed(host="gw.example.com:443"), "bad signature"),
        ("other aud", signed(host="gw.example.com:443", form="1.1"), "bad signature"),
        ("stale", signed(wall=wall - 3600), "timestamp"),
        (
            "unknown DID",
            signed((stranger_doc, load_pem_private_key(stranger_key, None))),
            "HTTP 404",
        ),
        ("key not in authentication", signed(dave), "is not an authentication method"),
        (
            "malformed document",
            signed((broken[0], load_pem_private_key(broken[1], None))),
            "not JSON",
        ),
    ]
    try:
        assert upgrade(gateway, replayed)[0] == "open"
        cases.append(("replayed", replayed, "replayed nonce"))
        for name, headers, why in cases:
            caplog.clear()
            assert upgrade(gateway, headers) == ("closed", 4003, DID_REFUSAL), name
            lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert len(lines) == 1 and why in lines[0] and "127.0.0.1" in lines[0], (name, lines)
        assert stats(gateway)["receivers"] == []
    finally:
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_unreachable_document_host_is_a_clear_refusal(driver, did_host, caplog):
    caplog.set_level(logging.INFO, "anpx.gateway")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    document, pem = make_document(f"did:wba:127.0.0.1%3A{dead_port}:agents:x")
    gateway = did_gateway(driver, did_host)
    port = gateway.obj.ports.tunnel
    try:
        signer = DidWbaClient(document, load_pem_private_key(pem, None), nonce_source=os.urandom)
        headers = dict(signer.request_headers(f"127.0.0.1:{port}", "/", time.time()))
        assert upgrade(gateway, headers) == ("closed", 4003, DID_REFUSAL)
        (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert f"https://127.0.0.1:{dead_port}/agents/x/did.json is unreachable" in line
    finally:
        gateway.stop()


# --- which hosts documents are fetched from (server-side request forgery) ------------------


def signed_by(document: dict, pem: bytes, port: int) -> dict[str, str]:
    signer = DidWbaClient(document, load_pem_private_key(pem, None), nonce_source=os.urandom)
    return dict(signer.request_headers(f"127.0.0.1:{port}", "/", time.time()))


def refusal_line(caplog) -> str:
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    caplog.clear()
    return line


@pytest.mark.parametrize("driver", DRIVERS)
def test_by_default_only_public_addresses_are_fetched_from(driver, did_host, caplog):
    caplog.set_level(logging.INFO, "anpx.gateway")
    # the documents are there, on loopback: a peer must not make the gateway fetch them
    literal = did_host.publish(f"ip-{driver}")
    named = did_host.publish(f"name-{driver}", host="localhost")
    gateway = did_gateway(driver, did_host, fetch_hosts=None)
    port = gateway.obj.ports.tunnel
    before = len(did_host.requested)
    try:
        # an IP literal is refused by the core before anything is asked
        pem = (did_host.folder / f"ip-{driver}.pem").read_bytes()
        assert upgrade(gateway, signed_by(literal[0], pem, port)) == ("closed", 4003, DID_REFUSAL)
        line = refusal_line(caplog)
        assert "is an IP address" in line and "did_fetch_hosts" in line
        # a name is resolved by the fetch, which refuses to dial loopback
        pem = (did_host.folder / f"name-{driver}.pem").read_bytes()
        assert upgrade(gateway, signed_by(named[0], pem, port)) == ("closed", 4003, DID_REFUSAL)
        line = refusal_line(caplog)
        assert "not a public address" in line and "did_fetch_hosts" in line
        assert len(did_host.requested) == before  # the document server saw nothing
    finally:
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_listed_hosts_are_fetched_from_wherever_they_are(driver, did_host, caplog):
    caplog.set_level(logging.INFO, "anpx.gateway")
    named = did_host.publish(f"listed-{driver}", host="localhost")
    pem = (did_host.folder / f"listed-{driver}.pem").read_bytes()
    elsewhere = did_gateway(driver, did_host, fetch_hosts=("*.localhost", "example.org"))
    try:
        headers = signed_by(named[0], pem, elsewhere.obj.ports.tunnel)
        assert upgrade(elsewhere, headers) == ("closed", 4003, DID_REFUSAL)
        assert "is not in did_fetch_hosts" in refusal_line(caplog)
    finally:
        elsewhere.stop()
    listed = did_gateway(driver, did_host, fetch_hosts=("localhost",))
    try:
        headers = signed_by(named[0], pem, listed.obj.ports.tunnel)
        assert upgrade(listed, headers) == ("open", None, "")
        assert f"/agents/listed-{driver}/did.json" in did_host.requested
    finally:
        listed.stop()


def test_the_fetch_checks_the_address_it_connects_to(did_host):
    from anpx_host.didfetch import DocumentUnavailable, fetch_document

    did_host.publish("direct", host="localhost")
    url = f"https://localhost:{did_host.port}/agents/direct/did.json"
    before = len(did_host.requested)
    with pytest.raises(DocumentUnavailable, match="not a public address") as exc:
        fetch_document(url, 5.0, did_host.ca_file, 65536, public_only=True)
    assert "127.0.0.1" in str(exc.value) and len(did_host.requested) == before
    body = fetch_document(url, 5.0, did_host.ca_file, 65536, public_only=False)
    assert json.loads(body)["id"] == did_host.did("direct", "localhost")
    # the certificate is still checked against the name
    with pytest.raises(DocumentUnavailable, match="unreachable"):
        fetch_document(url, 5.0, None, 65536, public_only=False)


# --- failed handshakes: the shared secret's rules, behind a trusted proxy -------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_failures_are_counted_per_client_behind_a_trusted_proxy(driver, did_host):
    import ipaddress

    alice = did_host.publish(f"proxied-{driver}")
    gateway = did_gateway(
        driver,
        did_host,
        max_attempts=2,
        allowed_dids=[alice[0]["id"]],
        trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")],
    )
    port = gateway.obj.ports.tunnel
    signer = DidWbaClient(*alice, nonce_source=os.urandom)

    def attempt(forwarded: str, signed: bool = False, wall: float | None = None):
        headers = {"X-Forwarded-For": forwarded}
        if signed or wall is not None:
            now = time.time() if wall is None else wall
            headers.update(signer.request_headers(f"127.0.0.1:{port}", "/", now))
        return upgrade(gateway, headers)

    refused = ("closed", 4003, DID_REFUSAL)
    try:
        # the client the proxy saw fails; what it claims further left does not matter
        stale = time.time() - 3600
        results = [attempt(f"198.51.100.{i}, 203.0.113.7", wall=stale) for i in range(3)]
        assert results == [refused, refused, ("http", 429, "")]
        assert attempt("203.0.113.8") == refused  # another client: its own count
        # verified first: the blocked client signing correctly is admitted (its document
        # fetched for it: it is in allowed_dids)
        assert attempt("203.0.113.7", signed=True) == ("open", None, "")
        assert attempt("203.0.113.7") == ("http", 429, "")  # and still blocked otherwise
    finally:
        gateway.stop()


# --- the receiver's side of a refusal -------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_refused_receiver_backs_off_and_gives_up_like_after_any_failure(driver, did_host, caplog):
    caplog.set_level(logging.INFO, "anpx")
    alice = did_host.publish(f"refused-{driver}")
    gateway = did_gateway(driver, did_host, allowed_dids=[did_host.did("someone-else")])
    receiver = start_receiver(
        driver,
        ReceiverSettings(
            gateway_urls=[f"ws://127.0.0.1:{gateway.obj.ports.tunnel}/"],
            auth=DidWbaClient(*alice, nonce_source=os.urandom),
            reconnect_delay=0.05,
            max_reconnect_attempts=2,  # counted: before, every 4003 reset the count
        ),
        app,
    )
    try:
        wait_until(lambda: receiver.obj.core.given_up)
        assert gateway.obj.core.stats.auth_failures == 3  # the first attempt and two more
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "anpx.receiver" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1 and "refused our DID (4003" in warnings[0], warnings
        assert "refused our DID" in receiver.obj.core.last_error
    finally:
        receiver.stop()
        gateway.stop()


# --- interop: the ecosystem's implementations -----------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_headers_from_anp_and_agent_connect_are_accepted(driver, did_host):
    anp_auth = pytest.importorskip("anp.authentication")
    ac_auth = pytest.importorskip("agent_connect.authentication")
    did_host.publish(f"erin-{driver}")
    name = f"erin-{driver}"
    doc_path, key_path = str(did_host.folder / f"{name}.json"), str(did_host.folder / f"{name}.pem")
    gateway = did_gateway(driver, did_host)
    port = gateway.obj.ports.tunnel
    url = f"ws://127.0.0.1:{port}/"
    try:
        for label, headers in [
            (
                "anp http signatures",
                anp_auth.DIDWbaAuthHeader(doc_path, key_path).get_auth_header(url),
            ),
            (
                "anp v1.1",
                anp_auth.DIDWbaAuthHeader(
                    doc_path, key_path, auth_mode="legacy_didwba"
                ).get_auth_header(url),
            ),
            (
                "agent-connect legacy",
                ac_auth.DIDWbaAuthHeader(doc_path, key_path).get_auth_header(url),
            ),
        ]:
            assert upgrade(gateway, headers) == ("open", None, ""), label
        assert gateway.obj.core.stats.auth_failures == 0
    finally:
        gateway.stop()


@pytest.mark.parametrize("who", ["secp256k1", "ed25519"])
def test_our_headers_verify_with_their_verifiers(did_host, who):
    anp_auth = pytest.importorskip("anp.authentication")
    ac_auth = pytest.importorskip("agent_connect.authentication")
    document, key = did_host.publish(f"frank-{who}", who)
    legacy = DidWbaClient(document, key, nonce_source=os.urandom)
    v11 = DidWbaClient(document, key, form="1.1", nonce_source=os.urandom)
    import time

    ((_, legacy_header),) = legacy.request_headers("gw.example.com:8765", "/", time.time())
    ((_, v11_header),) = v11.request_headers("gw.example.com:8765", "/", time.time())
    assert ac_auth.verify_auth_header_signature(legacy_header, document, "gw.example.com")[0]
    assert anp_auth.verify_auth_header_signature(v11_header, document, "gw.example.com")[0]
    # and each is bound to the host: another gateway's name fails with their verifier too
    assert not anp_auth.verify_auth_header_signature(v11_header, document, "evil.example.com")[0]
