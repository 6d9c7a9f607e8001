"""The end-to-end scenarios, written once, run for every {trio, asyncio} gateway x receiver pairing.

Real sockets on 127.0.0.1, a real HTTP client (httpx), the app in tests/apps.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import ssl
import time

import httpx
import pytest
import trustme

from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings

from .apps import app
from .deploy import PAIRINGS, start_gateway, start_receiver, wait_until


class Tunnel:
    """A gateway and a receiver, connected."""

    def __init__(self, gw_driver, rc_driver, gw_settings=None, rc_settings=None, *, tls=False):
        self.gw_driver, self.rc_driver = gw_driver, rc_driver
        self.scheme, self.ws = "http", "ws"
        client_tls = server_tls = None
        self.verify: ssl.SSLContext | bool = True
        if tls:
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(server_tls)
            client_tls = ssl.create_default_context()
            ca.configure_trust(client_tls)
            self.verify = client_tls
            self.scheme, self.ws = "https", "wss"
        self.gateway = start_gateway(
            gw_driver, gw_settings, http_tls=server_tls, tunnel_tls=server_tls
        )
        self.ports = self.gateway.obj.ports
        settings = rc_settings or ReceiverSettings()
        settings.gateway_urls = [f"{self.ws}://127.0.0.1:{self.ports.tunnel}/"]
        settings.reconnect_delay = 0.05
        self.receiver = start_receiver(rc_driver, settings, app, tls=client_tls)
        self.wait_connected()
        self.http = httpx.Client(
            base_url=f"{self.scheme}://127.0.0.1:{self.ports.http}", verify=self.verify, timeout=30
        )

    def wait_connected(self, count: int = 1) -> None:
        wait_until(lambda: len(self.gateway.obj.core.receivers) >= count)

    def close(self) -> None:
        self.http.close()
        self.receiver.stop()
        self.gateway.stop()


@pytest.fixture(params=PAIRINGS, ids=lambda p: f"{p[0]}-gw-{p[1]}-rc")
def pairing(request):
    return request.param


@pytest.fixture
def tunnel(pairing):
    t = Tunnel(*pairing)
    yield t
    t.close()


def test_plain_request_round_trip(tunnel):
    r = tunnel.http.post("/echo?b=2&a=1&a=3", content=b"hello", headers={"X-Custom": "v1"})
    assert r.status_code == 200
    info = r.json()
    assert info["method"] == "POST"
    assert info["query_string"] == "b=2&a=1&a=3"
    assert info["body_len"] == 5
    headers = dict(info["headers"])
    assert headers["x-custom"] == "v1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert info["client"][0] == "127.0.0.1"
    assert info["state"] == {"started": True}  # lifespan ran and its state reached the request


def test_encoded_path_and_repeated_headers_survive(tunnel):
    r = tunnel.http.request("GET", "/echo", headers=[("x-dup", "1"), ("x-dup", "2")])
    assert [v for k, v in r.json()["headers"] if k == "x-dup"] == ["1", "2"]
    info = tunnel.http.get("/echo/a%2Fb%20c?q=a%2Bb&q=2").json()
    assert info["raw_path"] == "/echo/a%2Fb%20c"
    assert info["path"] == "/echo/a/b c"
    assert info["query_string"] == "q=a%2Bb&q=2"
    r = tunnel.http.get("/cookies", follow_redirects=False)
    assert r.status_code == 302
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_large_upload_and_download(tunnel):
    size = 8 * 1024 * 1024 + 123
    r = tunnel.http.post("/upload", content=bytes(size))
    assert r.status_code == 200 and r.json()["bytes"] == size
    r = tunnel.http.get(f"/download?n={size}")
    assert r.status_code == 200
    assert len(r.content) == size
    assert r.content[:512] == bytes(range(256)) * 2


def test_chunked_upload_streams(tunnel):
    def parts():
        for _ in range(64):
            yield b"x" * 10_000

    r = tunnel.http.post("/upload", content=parts())
    assert r.json()["bytes"] == 640_000


def test_streaming_response_arrives_incrementally(tunnel):
    with tunnel.http.stream("GET", "/stream?n=3&delay=0.3") as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        chunks = r.iter_raw()
        first = next(chunks)
        # the first event arrives while the app is still sleeping before the next one
        assert first.startswith(b"data: event 0")
        assert b"event 1" not in first
        rest = b"".join(chunks)
    assert (first + rest).count(b"data: event") == 3


def test_response_head_is_not_held_back_by_a_slow_first_body_part(tunnel):
    start = time.monotonic()
    with tunnel.http.stream("GET", "/stream?n=1&first_delay=1.0") as r:
        head_after = time.monotonic() - start
        assert r.status_code == 200
        body = r.read()
    assert head_after < 0.5  # the head went out before the app's first body part
    assert body.count(b"data: event") == 1


def test_concurrent_requests_keep_their_own_bodies(tunnel):
    def one(i: int) -> tuple[int, int]:
        with httpx.Client(base_url=tunnel.http.base_url, verify=tunnel.verify, timeout=30) as c:
            r = c.post(f"/echo?i={i}", content=b"y" * (i * 997))
            info = r.json()
            return int(info["query_string"].split("=")[1]), info["body_len"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    assert results == [(i, i * 997) for i in range(64)]


def test_app_error_is_500_and_receiver_stays_up(tunnel):
    r = tunnel.http.get("/error")
    assert r.status_code == 500
    assert r.text == "Internal Server Error"
    assert tunnel.http.get("/echo").status_code == 200


def test_unknown_route_comes_from_the_app(tunnel):
    assert tunnel.http.get("/nope").status_code == 404


def test_timeout_is_504(pairing):
    t = Tunnel(*pairing, gw_settings=GatewaySettings(timeout=0.5))
    try:
        r = t.http.get("/slow?s=3")
        assert r.status_code == 504
        assert t.http.get("/echo").status_code == 200
    finally:
        t.close()


def test_receiver_loss_fails_in_flight_then_reconnects(pairing):
    t = Tunnel(*pairing)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(t.http.get, "/slow?s=5")
            wait_until(lambda: t.gateway.obj.core.in_flight == 1)
            t.receiver.stop()
            r = pending.result(timeout=10)
        assert r.status_code == 502  # at once, not after the timeout
        assert t.http.get("/echo").status_code == 503  # no receiver now
        t.receiver = start_receiver(
            t.rc_driver,
            ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{t.ports.tunnel}/"]),
            app,
        )
        t.wait_connected()
        assert t.http.get("/echo").status_code == 200
    finally:
        t.close()


def test_receiver_reconnects_after_gateway_restart(pairing):
    t = Tunnel(*pairing)
    try:
        assert t.http.get("/echo").status_code == 200
        t.gateway.stop()
        t.gateway = start_gateway(t.gw_driver, http_port=t.ports.http, tunnel_port=t.ports.tunnel)
        t.wait_connected()
        t.http.close()
        t.http = httpx.Client(base_url=f"http://127.0.0.1:{t.ports.http}", timeout=30)
        assert t.http.get("/echo").status_code == 200
    finally:
        t.close()


def test_tls_on_both_listeners(pairing):
    t = Tunnel(*pairing, tls=True)
    try:
        r = t.http.post("/echo", content=b"secret")
        assert r.status_code == 200
        assert r.json()["scheme"] == "https"
        assert r.json()["body_len"] == 6
    finally:
        t.close()


def test_drain_completes_in_flight_request(pairing):
    t = Tunnel(*pairing)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(t.http.get, "/slow?s=1")
            wait_until(lambda: t.gateway.obj.core.in_flight == 1)
            t.gateway.call(lambda: t.gateway.obj.shutdown(grace=10))
            r = pending.result(timeout=10)
        assert r.status_code == 200 and r.text == "slow done"
    finally:
        t.close()


def test_admin_health_and_stats(tunnel):
    admin = f"http://127.0.0.1:{tunnel.ports.admin}"
    health = httpx.get(f"{admin}/health")
    assert health.status_code == 200 and health.json()["receivers"] == 1
    tunnel.http.get("/echo")
    stats = httpx.get(f"{admin}/stats").json()
    assert stats["requests"] >= 1 and stats["responses_by_status"]["200"] >= 1
    # /health on the public listener belongs to the app, not the gateway
    assert tunnel.http.get("/health").status_code == 404


def test_no_receiver_is_503_with_retry_after():
    gateway = start_gateway("trio")
    try:
        r = httpx.get(f"http://127.0.0.1:{gateway.obj.ports.http}/")
        assert r.status_code == 503
        assert "retry-after" in r.headers
    finally:
        gateway.stop()


def test_json_body_is_passed_unaltered(tunnel):
    body = json.dumps({"text": "naïve ☃", "n": [1, 2, 3]}, ensure_ascii=False).encode()
    r = tunnel.http.post("/echo", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json()["body_len"] == len(body)
