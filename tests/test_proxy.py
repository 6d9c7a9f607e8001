"""Behind a reverse proxy: which X-Forwarded-* the gateway believes, and whom it counts."""

from __future__ import annotations

import ipaddress
import logging

import httpx

from anpx_core.gateway import GatewaySettings
from anpx_core.ratelimit import make_limiter
from anpx_core.receiver import ReceiverSettings

from .apps import app
from .deploy import start_gateway, start_receiver, wait_until

FORWARDED = {
    "x-forwarded-for": "203.0.113.9",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "api.example.com",
    "x-forwarded-port": "443",
}


def serve(settings: GatewaySettings):
    gateway = start_gateway("trio", settings)
    receiver = start_receiver(
        "trio", ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{gateway.obj.ports.tunnel}/"]), app
    )
    wait_until(lambda: len(gateway.obj.core.receivers) == 1)
    return gateway, receiver


def echo_headers(port: int, headers: dict) -> dict:
    r = httpx.get(f"http://127.0.0.1:{port}/echo", headers=headers)
    return dict(r.json()["headers"]) | {
        "_client": r.json()["client"][0],
        "_scheme": r.json()["scheme"],
    }


def test_untrusted_peer_cannot_claim_https_or_another_address(caplog):
    caplog.set_level(logging.INFO, "anpx.access.gateway")
    gateway, receiver = serve(GatewaySettings())
    try:
        seen = echo_headers(gateway.obj.ports.http, FORWARDED)
        assert seen["x-forwarded-proto"] == "http" and seen["_scheme"] == "http"
        assert seen["x-forwarded-port"] == str(gateway.obj.ports.http)
        assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"  # appended, never trusted
        assert seen["_client"] == "127.0.0.1" == seen["x-real-ip"]
        spoofed = echo_headers(gateway.obj.ports.http, {"x-real-ip": "10.9.9.9"})
        assert spoofed["x-real-ip"] == "127.0.0.1" and spoofed["_client"] == "127.0.0.1"
        wait_until(lambda: " 127.0.0.1 GET /echo" in caplog.text)
    finally:
        receiver.stop()
        gateway.stop()


def test_trusted_proxy_forwarded_headers_are_believed(caplog):
    caplog.set_level(logging.INFO, "anpx.access.gateway")
    limiter = make_limiter(0.001, 1)  # one request per address, practically no refill
    gateway, receiver = serve(
        GatewaySettings(trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")], rate_limit=limiter)
    )
    try:
        seen = echo_headers(gateway.obj.ports.http, FORWARDED)
        assert seen["x-forwarded-proto"] == "https" and seen["_scheme"] == "https"
        assert seen["x-forwarded-host"] == "api.example.com" and seen["x-forwarded-port"] == "443"
        assert seen["_client"] == "203.0.113.9" == seen["x-real-ip"]  # the app sees the client
        wait_until(lambda: " 203.0.113.9 GET /echo" in caplog.text)  # the gateway logs the client
        # the rate limit counts real clients, not the proxy they share
        port = gateway.obj.ports.http
        assert (
            httpx.get(
                f"http://127.0.0.1:{port}/echo", headers={"x-forwarded-for": "203.0.113.9"}
            ).status_code
            == 429
        )
        assert (
            httpx.get(
                f"http://127.0.0.1:{port}/echo", headers={"x-forwarded-for": "198.51.100.7"}
            ).status_code
            == 200
        )
    finally:
        receiver.stop()
        gateway.stop()


def test_a_forwarded_for_hop_that_is_no_address_counts_as_the_proxy():
    # A trusted proxy appends the address it saw; anything else in that place (a made-up
    # name, a header the proxy passed through untouched) must not become the client: it would
    # be a fresh key for every per-address cap and the app's X-Real-IP.
    gateway, receiver = serve(
        GatewaySettings(trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")])
    )
    try:
        port = gateway.obj.ports.http
        for made_up in ("evil.example", "203.0.113.9, not-an-address", "x" * 2000):
            seen = echo_headers(port, {"x-forwarded-for": made_up})
            assert seen["x-real-ip"] == "127.0.0.1" == seen["_client"], made_up
        # a keep-alive connection of the proxy serving two clients in turn: each is itself
        with httpx.Client() as proxy:
            for client in ("203.0.113.9", "198.51.100.7"):
                r = proxy.get(f"http://127.0.0.1:{port}/echo", headers={"x-forwarded-for": client})
                assert dict(r.json()["headers"])["x-real-ip"] == client
    finally:
        receiver.stop()
        gateway.stop()
