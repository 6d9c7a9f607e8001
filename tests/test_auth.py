"""Mutual authentication of the tunnel: the scheme, and every rejection path over real sockets."""

from __future__ import annotations

import base64
import logging
import os
import socket
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.auth import (
    H_PROOF,
    SharedSecretClient,
    SharedSecretServer,
    answer_string,
    request_string,
)
from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings

from .apps import app
from .deploy import DRIVERS, PAIRINGS, start_gateway, start_receiver, wait_until
from .hypothesis_profiles import examples

SECRET = b"correct horse battery staple"
NOW = 1_800_000_000.0


def handshake(client: SharedSecretClient, wall: float = NOW) -> list[tuple[str, str]]:
    return client.request_headers("gw.example:8765", "/tunnel", wall)


# --- the scheme, sans IO --------------------------------------------------------------------


def test_canonical_strings_are_as_documented():
    assert request_string("h:1", "/p", "id", "17", "ab") == b"ANPX-AUTH-V1\nh:1\n/p\nid\n17\nab"
    assert answer_string("h:1", "/p", "id", "ab") == b"ANPX-GATEWAY-V1\nh:1\n/p\nid\nab"


def test_mutual_proof_succeeds_with_the_same_secret():
    client, server = (
        SharedSecretClient(SECRET, "rc-1", nonce_source=os.urandom),
        SharedSecretServer(SECRET),
    )
    verdict = server.check_request(
        "gw.example:8765", "/tunnel", handshake(client), "10.0.0.1:5", NOW
    )
    assert verdict.ok and verdict.identity == "rc-1"
    assert client.check_response(verdict.headers) is None


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (
            lambda h: [(n, v) for n, v in h if n != "anpx-auth-signature"],
            "no authentication headers",
        ),
        (
            lambda h: [(n, "0" * 64 if n == "anpx-auth-signature" else v) for n, v in h],
            "bad signature",
        ),
        (lambda h: [(n, "other" if n == "anpx-client-id" else v) for n, v in h], "bad signature"),
        (
            lambda h: [(n, str(int(NOW) + 1) if n == "anpx-auth-timestamp" else v) for n, v in h],
            "bad signature",
        ),
    ],
)
def test_tampered_handshakes_are_refused(mutate, why):
    client, server = (
        SharedSecretClient(SECRET, "rc-1", nonce_source=os.urandom),
        SharedSecretServer(SECRET),
    )
    verdict = server.check_request(
        "gw.example:8765", "/tunnel", mutate(handshake(client)), "10.0.0.1:5", NOW
    )
    assert not verdict.ok and verdict.status == 401 and why in verdict.reason
    assert verdict.headers == []  # no detail for the peer


def test_signature_binds_host_and_path():
    client, server = (
        SharedSecretClient(SECRET, "rc-1", nonce_source=os.urandom),
        SharedSecretServer(SECRET),
    )
    headers = handshake(client)
    assert not server.check_request("evil.example:8765", "/tunnel", headers, "p:1", NOW).ok
    assert not server.check_request("gw.example:8765", "/other", headers, "p:1", NOW).ok


def test_clock_skew_edge():
    server = SharedSecretServer(SECRET, clock_skew=300)
    for offset, ok in ((300, True), (-300, True), (301, False), (-301, False)):
        client = SharedSecretClient(SECRET, "rc", nonce_source=os.urandom)
        verdict = server.check_request(
            "gw.example:8765", "/tunnel", handshake(client, NOW + offset), f"p{offset}:1", NOW
        )
        assert verdict.ok is ok, offset


def test_replayed_nonce_is_refused_until_it_expires():
    server = SharedSecretServer(SECRET, clock_skew=60)
    headers = handshake(SharedSecretClient(SECRET, "rc", nonce_source=os.urandom))
    assert server.check_request("gw.example:8765", "/tunnel", headers, "a:1", NOW).ok
    replay = server.check_request("gw.example:8765", "/tunnel", headers, "b:1", NOW + 1)
    assert not replay.ok and "replayed" in replay.reason
    # once the timestamp is out of the window the skew check refuses it, and memory is freed
    late = server.check_request("gw.example:8765", "/tunnel", headers, "c:1", NOW + 61)
    assert not late.ok and "timestamp" in late.reason
    assert len(server.replay) == 0


def test_nonce_memory_is_bounded():
    server = SharedSecretServer(SECRET, nonce_capacity=3)
    for i in range(3):
        assert server.check_request(
            "gw.example:8765",
            "/tunnel",
            handshake(SharedSecretClient(SECRET, "rc", nonce_source=os.urandom)),
            f"a{i}:1",
            NOW,
        ).ok
    full = server.check_request(
        "gw.example:8765",
        "/tunnel",
        handshake(SharedSecretClient(SECRET, "rc", nonce_source=os.urandom)),
        "z:1",
        NOW,
    )
    assert not full.ok and full.status == 429


def test_max_attempts_per_address_per_minute():
    server = SharedSecretServer(SECRET, max_attempts=3)
    bad = handshake(SharedSecretClient(b"wrong secret", "rc", nonce_source=os.urandom))
    statuses = [
        server.check_request("gw.example:8765", "/tunnel", bad, "10.0.0.9:1000", NOW + i).status
        for i in range(4)
    ]
    assert statuses == [401, 401, 401, 429]  # the failure after max_attempts
    blocked = server.check_request("gw.example:8765", "/tunnel", bad, "10.0.0.9:2000", NOW + 4)
    assert blocked.status == 429 and ("retry-after", "56") in blocked.headers  # window ends
    # a correctly signed handshake from the same address is admitted all the same
    good = handshake(SharedSecretClient(SECRET, "rc", nonce_source=os.urandom), NOW + 4)
    assert server.check_request("gw.example:8765", "/tunnel", good, "10.0.0.9:2000", NOW + 4).ok
    assert (
        server.check_request("gw.example:8765", "/tunnel", bad, "10.0.0.8:1", NOW + 4).status == 401
    )
    later = server.check_request("gw.example:8765", "/tunnel", bad, "10.0.0.9:3000", NOW + 60)
    assert later.status == 401  # a new minute


def test_gateway_proof_is_checked_by_the_receiver():
    client = SharedSecretClient(SECRET, "rc", nonce_source=os.urandom)
    headers = handshake(client)
    impostor = SharedSecretServer(b"not the secret")
    # an impostor cannot compute the proof: whatever it sends, the receiver refuses it
    assert "no anpx-auth-proof" in client.check_response([])
    assert "wrong" in client.check_response([(H_PROOF, "ab" * 32)])
    assert not impostor.check_request("gw.example:8765", "/tunnel", headers, "p:1", NOW).ok


@settings(max_examples=examples(200), deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=30), st.text(max_size=80)), max_size=8),
    st.text(max_size=40),
)
def test_garbage_headers_never_raise(headers, peer):
    verdict = SharedSecretServer(SECRET).check_request("h", "/", headers, peer, NOW)
    assert not verdict.ok and verdict.status in (401, 429)


# --- over real sockets ----------------------------------------------------------------------


def raw_upgrade(port: int, headers: list[tuple[str, str]], path: str = "/") -> int:
    """Send a WebSocket upgrade by hand; return the HTTP status of the answer."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{n}: {v}" for n, v in headers),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = sock.recv(4096)
    return int(answer.split(b" ", 2)[1])


class Counting:
    """The test app, counting the requests that reach it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.calls += 1
        await app(scope, receive, send)


@pytest.mark.parametrize("pairing", PAIRINGS, ids=lambda p: f"{p[0]}-gw-{p[1]}-rc")
def test_authenticated_tunnel_serves_requests(pairing):
    gw_driver, rc_driver = pairing
    gateway = start_gateway(gw_driver, GatewaySettings(auth=SharedSecretServer(SECRET)))
    ports = gateway.obj.ports
    receiver = start_receiver(
        rc_driver,
        ReceiverSettings(
            gateway_urls=[f"ws://127.0.0.1:{ports.tunnel}/"],
            auth=SharedSecretClient(SECRET, "rc-auth", nonce_source=os.urandom),
        ),
        app,
    )
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        assert gateway.obj.core.receivers[0]["id"] == "rc-auth"
        assert httpx.get(f"http://127.0.0.1:{ports.http}/echo").status_code == 200
    finally:
        receiver.stop()
        gateway.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_rejections_over_real_sockets(driver, caplog):
    caplog.set_level(logging.WARNING, "anpx.gateway")
    gateway = start_gateway(
        driver, GatewaySettings(auth=SharedSecretServer(SECRET, max_attempts=4))
    )
    port = gateway.obj.ports.tunnel
    try:
        now = time.time()
        assert raw_upgrade(port, []) == 401  # missing auth
        wrong = SharedSecretClient(b"wrong", "rc", nonce_source=os.urandom).request_headers(
            f"127.0.0.1:{port}", "/", now
        )
        assert raw_upgrade(port, wrong) == 401  # wrong secret
        skewed = SharedSecretClient(SECRET, "rc", nonce_source=os.urandom).request_headers(
            f"127.0.0.1:{port}", "/", now - 3600
        )
        assert raw_upgrade(port, skewed) == 401  # skewed clock
        good = SharedSecretClient(SECRET, "rc", nonce_source=os.urandom).request_headers(
            f"127.0.0.1:{port}", "/", now
        )
        assert raw_upgrade(port, good) == 101
        assert raw_upgrade(port, good) == 401  # replayed nonce
        assert raw_upgrade(port, []) == 429  # a 5th failure from 127.0.0.1 this minute
        fresh = SharedSecretClient(SECRET, "rc", nonce_source=os.urandom).request_headers(
            f"127.0.0.1:{port}", "/", now
        )
        assert raw_upgrade(port, fresh) == 101  # signed correctly: failures do not lock it out
        assert gateway.obj.core.stats.auth_failures == 5
        assert "127.0.0.1" in caplog.text and "refused" in caplog.text  # logged with the peer
        # nothing reached an app: no tunnel was ever usable for requests
        assert httpx.get(f"http://127.0.0.1:{gateway.obj.ports.http}/").status_code == 503
    finally:
        gateway.stop()


@pytest.mark.parametrize("pairing", PAIRINGS, ids=lambda p: f"{p[0]}-gw-{p[1]}-rc")
def test_receiver_refuses_an_impostor_gateway(pairing, caplog):
    gw_driver, rc_driver = pairing
    caplog.set_level(logging.ERROR, "anpx.receiver")
    impostor = start_gateway(gw_driver)  # accepts anyone, proves nothing
    ports = impostor.obj.ports
    counting = Counting()
    receiver = start_receiver(
        rc_driver,
        ReceiverSettings(
            gateway_urls=[f"ws://127.0.0.1:{ports.tunnel}/"],
            auth=SharedSecretClient(SECRET, "rc", nonce_source=os.urandom),
            reconnect_delay=5,
        ),
        counting,
    )
    try:
        wait_until(lambda: "refusing gateway" in caplog.text)
        lines = [r.getMessage() for r in caplog.records if "refusing gateway" in r.getMessage()]
        assert "anpx-auth-proof" in lines[0] and "\n" not in lines[0]
        wait_until(lambda: not impostor.obj.core.receivers)
        assert httpx.get(f"http://127.0.0.1:{ports.http}/echo").status_code == 503
        assert counting.calls == 0
    finally:
        receiver.stop()
        impostor.stop()
