"""Hostile values and the crash barrier (issue 12, cases 3, 6, 7; deliverables 2 and 3).

* Every parser in :mod:`anpx_core.strict` (and the ones built on it) returns a valid
  value or raises its own error type for arbitrary Unicode (lone surrogates included)
  and bytes: property tests.
* The attacks that took processes down are answered, over real loopback sockets on both
  drivers: ``X-Forwarded-Port: ²`` through a trusted proxy (400 at the gateway), a hostile
  gateway's ``²`` port and lone surrogates (the receiver resets those streams and serves
  the next request), a signed upgrade with ``anpx-auth-timestamp: ²`` (401, and the
  gateway serves on).
* Fault injection: an exception raised inside the core's handling of one stream, or in a
  driver's connection task, resets that stream or connection, logs one traceback, and the
  next request on the same process succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading

import httpx
import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

import anpx_core.receiver.asgi_calls
from anpx_core import frames as F
from anpx_core import messages as M
from anpx_core.auth import SharedSecretClient, SharedSecretServer, request_string
from anpx_core.errors import ProtocolError
from anpx_core.gateway import GatewayCore, GatewaySettings
from anpx_core.http1 import HttpFront
from anpx_core.meta import RequestHead, decode_request_meta, decode_response_meta
from anpx_core.receiver import ReceiverCore, ReceiverSettings
from anpx_core.routing import parse_routes_header
from anpx_core.strict import (
    StrictError,
    check_field_value,
    check_fields,
    check_host,
    check_target,
    check_text,
    check_token,
    parse_port,
    parse_scheme,
    parse_uint,
    wire_bytes,
)
from anpx_core.tunnel import EXTENSIONS_HEADER, MAX_WINDOW, parse_extensions

from .deploy import DRIVERS, start_gateway, start_receiver, wait_until
from .hypothesis_profiles import examples

pytestmark = pytest.mark.timeout(60)

# --- property tests: every parser, arbitrary input ------------------------------------------

# Any code point, lone surrogates included (st.text() leaves those out by default).
ANY_CHAR = st.characters(blacklist_categories=())
TRICKY = st.sampled_from(
    ["", "0", "00", "65535", "65536", "²", "٣", "1_0", " 1", "+1", "-1", "1e3", "\ud800", "\x00"]
)
ANY_TEXT = st.one_of(TRICKY, st.text(ANY_CHAR, max_size=30), st.text("0123456789", max_size=25))
ANY_VALUE = st.one_of(ANY_TEXT, st.binary(max_size=30), st.none(), st.integers(), st.floats())
HYPOTHESIS = settings(max_examples=examples(300), deadline=None)


@HYPOTHESIS
@given(ANY_VALUE, st.integers(0, 10**20))
def test_parse_uint_takes_ascii_digits_within_bounds_only(value, maximum) -> None:
    try:
        number = parse_uint(value, maximum)
    except StrictError:
        return
    assert type(number) is int and 0 <= number <= maximum
    digits = value.decode("ascii") if isinstance(value, bytes) else value
    assert digits.isascii() and digits.isdigit() and int(digits) == number


@HYPOTHESIS
@given(ANY_VALUE)
def test_parse_port_and_scheme(value) -> None:
    with contextlib.suppress(StrictError):
        assert 1 <= parse_port(value) <= 65535
    with contextlib.suppress(StrictError):
        assert parse_scheme(value) in ("http", "https")


@HYPOTHESIS
@given(ANY_VALUE)
def test_string_checks_accept_only_encodable_valid_strings(value) -> None:
    for check in (check_text, check_token, check_field_value, check_target, check_host):
        try:
            result = check(value)
        except StrictError:
            continue
        assert result == value and isinstance(result, str)
        result.encode("utf-8")  # never a lone surrogate
    with contextlib.suppress(StrictError):
        assert isinstance(wire_bytes(value), bytes)


@HYPOTHESIS
@given(st.lists(st.one_of(st.tuples(ANY_TEXT, ANY_TEXT), ANY_VALUE), max_size=4))
def test_check_fields_accepts_tokens_and_field_values_only(headers) -> None:
    try:
        check_fields(headers)
    except StrictError:
        return
    for name, value in headers:
        assert check_token(name) == name and check_field_value(value) == value


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=10,
)
META_KEYS = st.sampled_from(
    ["method", "path", "query", "headers", "anpx_target", "anpx_headers", "status", "reason"]
)


@settings(max_examples=examples(150), deadline=None)
@given(st.dictionaries(META_KEYS, JSON), st.binary(max_size=40))
def test_meta_decoders_return_a_valid_head_or_a_protocol_error(obj, junk) -> None:
    for raw in (json.dumps(obj).encode(), junk):
        for decode in (decode_request_meta, decode_response_meta):
            try:
                head = decode(raw, 64 * 1024)
            except ProtocolError as exc:
                assert exc.code in ("bad_meta", "too_large")
                continue
            for name, value in head.headers:  # what reaches the app or the front is valid
                check_token(name)
                check_field_value(value)
            if isinstance(head, RequestHead):
                check_token(head.method)
                check_target(head.target)


@HYPOTHESIS
@given(ANY_TEXT)
def test_flow_window_is_a_bounded_number_or_nothing(value) -> None:
    for header in (f"flow={value}", value):
        window = parse_extensions([(EXTENSIONS_HEADER, header)])
        assert window is None or (type(window) is int and 1 <= window <= MAX_WINDOW)


@HYPOTHESIS
@given(ANY_TEXT)
def test_auth_timestamp_of_any_text_is_a_verdict(timestamp) -> None:
    secret, nonce, now = b"s3cret", "n" * 32, 1_700_000_000.0
    server = SharedSecretServer(secret)
    try:  # signed with the secret, as a peer that holds it would
        signed = request_string("gw", "/", "rc", timestamp, nonce)
    except UnicodeEncodeError:
        signed = b""
    headers = [
        ("anpx-client-id", "rc"),
        ("anpx-auth-timestamp", timestamp),
        ("anpx-auth-nonce", nonce),
        ("anpx-auth-signature", hmac.new(secret, signed, hashlib.sha256).hexdigest()),
    ]
    verdict = server.check_request("gw", "/", headers, "127.0.0.1:1", now)
    valid = timestamp.isascii() and timestamp.isdigit() and abs(int(timestamp) - now) <= 300
    assert verdict.ok == (valid and len(timestamp) <= 12)
    assert verdict.status in (101, 401)


@HYPOTHESIS
@given(ANY_TEXT)
def test_route_claims_parse_to_routes_or_value_error(value) -> None:
    try:
        routes = parse_routes_header(value)
    except ValueError:  # StrictError is one: the gateway refuses the handshake with 400
        return
    for route in routes:
        assert route.host is None or check_host(route.host)
        check_target(route.prefix)


# --- helpers for the socket tests -------------------------------------------------------------


async def echo_app(scope, receive, send) -> None:
    """Answers what the receiver put into the scope; /fault adds the fault-injection marker."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps(
        {"path": scope["path"], "server": scope["server"], "scheme": scope["scheme"]}
    ).encode()
    headers = [(b"content-type", b"application/json")]
    if scope["path"] == "/fault":
        headers.append((b"x-inject-fault", b"1"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection, read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records carrying a traceback from anpx or from asyncio ("exception never retrieved")."""
    return [r for r in caplog.records if r.exc_info and r.name.split(".")[0] in ("anpx", "asyncio")]


class Deployment:
    """A gateway and a receiver of one driver, on loopback."""

    def __init__(self, driver: str, gw_settings: GatewaySettings | None = None, **rc) -> None:
        self.gateway = start_gateway(driver, gw_settings)
        ports = self.gateway.obj.ports
        self.http = ports.http
        self.tunnel = ports.tunnel
        self.receiver = start_receiver(
            driver,
            ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{ports.tunnel}/"], **rc),
            echo_app,
        )
        self.wait_connected()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.http}", timeout=10)

    def wait_connected(self) -> None:
        wait_until(lambda: len(self.gateway.obj.core.receivers) == 1)

    def alive(self) -> bool:
        return not self.gateway.finished.is_set() and not self.receiver.finished.is_set()

    def close(self) -> None:
        self.client.close()
        self.receiver.stop()
        self.gateway.stop()


# --- case 3: X-Forwarded-Port: ² through a trusted proxy -------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_forwarded_port_superscript_is_refused_at_the_gateway(driver):
    settings_ = GatewaySettings(trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")])
    dep = Deployment(driver, settings_)
    try:
        head = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-Port: %s\r\n\r\n"
        for bad in (b"\xb2", b"\xd9\xa3", b"99999", b"-1", b"1_0"):
            answer = raw_exchange(dep.http, head % bad)
            assert answer.startswith(b"HTTP/1.1 400 "), (bad, answer[:80])
            assert b"Bad Request: X-Forwarded-Port" in answer  # a short, specific reason
        for bad in (
            b"X-Forwarded-Proto: gopher\r\n",
            b"X-Forwarded-Proto: \xb2\r\n",
            b"X-Forwarded-Host: a b\r\n",
            b"X-Forwarded-Host: x:\xb2\r\n",
            b"Host: y\r\n",  # RFC 9112: exactly one Host
        ):
            answer = raw_exchange(dep.http, b"GET / HTTP/1.1\r\nHost: x\r\n%s\r\n" % bad)
            assert answer.startswith(b"HTTP/1.1 400 "), (bad, answer[:80])
        answer = raw_exchange(dep.http, b"GET / HTTP/1.1\r\nHost: \xb2\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")  # not a host name
        r = dep.client.get("/", headers={"x-forwarded-port": "8443", "x-forwarded-proto": "https"})
        assert r.status_code == 200
        assert r.json() == {"path": "/", "server": ["127.0.0.1", 8443], "scheme": "https"}
        assert dep.alive()
    finally:
        dep.close()


# --- cases 3 and 7 from a hostile gateway: the receiver refuses those streams -----------------


def _request_frame(rid: str, meta: dict) -> bytes:
    raw = json.dumps(meta).encode("ascii")  # a lone surrogate travels as the escape \ud800
    return F.encode_frame(
        F.TYPE_REQUEST, 0, [(F.TAG_REQUEST_ID, rid.encode()), (F.TAG_HTTP_META, raw)]
    )


HOSTILE_REQUESTS = {
    "port-superscript": {"method": "GET", "path": "/", "query": {},
                         "headers": {"host": "gw", "x-forwarded-port": "\u00b2"}},
    "header-surrogate": {"method": "GET", "path": "/", "query": {},
                         "headers": {"host": "gw", "x-name": "a\ud800b"}},
    "target-surrogate": {"method": "GET", "path": "/", "query": {}, "headers": {"host": "gw"},
                         "anpx_target": "/x\ud800"},
    "path-surrogate": {"method": "GET", "path": "/\ud800", "query": {}, "headers": {}},
    "header-crlf": {"method": "GET", "path": "/", "query": {},
                    "headers": {"x-a": "1\r\nx-b: 2"}},
    "method-space": {"method": "G T", "path": "/", "query": {}, "headers": {}},
    "proto-gopher": {"method": "GET", "path": "/", "query": {},
                     "headers": {"host": "gw", "x-forwarded-proto": "gopher"}},
}  # fmt: skip


def _hostile_gateway(result: dict, ready: threading.Event) -> None:
    """A websockets server playing a v1 gateway: hostile requests first, then a normal one."""

    async def handler(ws) -> None:
        for rid, meta in HOSTILE_REQUESTS.items():
            await ws.send(_request_frame(rid, meta))
        normal = {"method": "GET", "path": "/after", "query": {}, "headers": {"host": "gw"}}
        await ws.send(_request_frame("normal", normal))
        decoder = M.MessageDecoder()
        while "normal" not in result:
            message = await ws.recv()
            if isinstance(message, str):
                continue
            for event in decoder.receive_bytes(message):
                if isinstance(event, M.ErrorReceived):
                    result[event.request_id] = ("reset", event.text)
                elif isinstance(event, M.HeadReceived):
                    result[event.request_id] = ("response", event.head.status)
        result["done"].set()

    async def main() -> None:
        result["done"] = asyncio.Event()
        async with websockets.serve(handler, "127.0.0.1", 0) as server:
            result["port"] = server.sockets[0].getsockname()[1]
            ready.set()
            await asyncio.wait_for(result["done"].wait(), 20)

    asyncio.run(main())


@pytest.mark.parametrize("driver", DRIVERS)
def test_receiver_refuses_hostile_metas_and_serves_on(driver, caplog):
    result: dict = {}
    ready = threading.Event()
    thread = threading.Thread(target=_hostile_gateway, args=(result, ready), daemon=True)
    thread.start()
    assert ready.wait(5)
    receiver = start_receiver(
        driver, ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{result['port']}/"]), echo_app
    )
    try:
        thread.join(20)
        assert result.get("normal") == ("response", 200)
        for rid in HOSTILE_REQUESTS:
            kind, text = result.get(rid, (None, ""))
            assert kind == "reset" and "bad_meta" in text, (rid, result.get(rid))
        assert not receiver.finished.is_set()  # the receiver process serves on
        assert tracebacks(caplog) == []  # refused at the boundary: no crash anywhere
    finally:
        receiver.stop()


# --- case 7 from a hostile receiver: the gateway answers 502 and serves on ------------------


def _hostile_receiver(url: str, stop: threading.Event) -> None:
    """A websockets client playing a v1 receiver: /bad gets a resp_meta with a lone
    surrogate and a CR LF in header values, anything else a plain 200."""

    async def main() -> None:
        async with websockets.connect(url) as ws:
            decoder = M.MessageDecoder()
            targets: dict[str, str] = {}
            while not stop.is_set():
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.2)
                except asyncio.TimeoutError:
                    continue
                if isinstance(message, str):
                    continue
                for event in decoder.receive_bytes(message):
                    if isinstance(event, M.HeadReceived):
                        targets[event.request_id] = event.head.target
                    elif isinstance(event, M.MessageComplete):
                        target = targets.pop(event.request_id)
                        headers = {"x-a": "\ud800", "x-b": "1\r\nx-c: 2"}
                        meta = {"status": 200, "reason": "OK"}
                        meta["headers"] = headers if target == "/bad" else {"x-ok": "1"}
                        await ws.send(
                            F.encode_frame(
                                F.TYPE_RESPONSE,
                                0,
                                [
                                    (F.TAG_REQUEST_ID, event.request_id.encode()),
                                    (F.TAG_RESP_META, json.dumps(meta).encode()),
                                    (F.TAG_HTTP_BODY, b"hello"),
                                ],
                            )
                        )

    asyncio.run(main())


@pytest.mark.parametrize("driver", DRIVERS)
def test_gateway_refuses_hostile_response_metas_and_serves_on(driver, caplog):
    gateway = start_gateway(driver)
    stop = threading.Event()
    url = f"ws://127.0.0.1:{gateway.obj.ports.tunnel}/"
    thread = threading.Thread(target=_hostile_receiver, args=(url, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.obj.ports.http}", timeout=10) as c:
            assert c.get("/bad").status_code == 502
            r = c.get("/good")
            assert r.status_code == 200 and r.text == "hello" and r.headers["x-ok"] == "1"
        assert len(gateway.obj.core.receivers) == 1  # the same tunnel serves on
        assert not gateway.finished.is_set()
        assert tracebacks(caplog) == []
    finally:
        stop.set()
        thread.join(5)
        gateway.stop()


# --- case 6: a signed upgrade with anpx-auth-timestamp: ² -------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_signed_upgrade_with_superscript_timestamp_is_refused(driver, caplog):
    secret = b"correct horse battery staple"
    gateway = start_gateway(driver, GatewaySettings(auth=SharedSecretServer(secret)))
    ports = gateway.obj.ports
    try:
        host, nonce = f"127.0.0.1:{ports.tunnel}", "ab" * 16
        signature = hmac.new(
            secret, request_string(host, "/", "evil", "\u00b2", nonce), hashlib.sha256
        ).hexdigest()
        upgrade = (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"anpx-client-id: evil\r\nanpx-auth-timestamp: \u00b2\r\n"
            f"anpx-auth-nonce: {nonce}\r\nanpx-auth-signature: {signature}\r\n\r\n"
        ).encode("latin-1")
        assert raw_exchange(ports.tunnel, upgrade).startswith(b"HTTP/1.1 401 ")
        receiver = start_receiver(
            driver,
            ReceiverSettings(
                gateway_urls=[f"ws://{host}/"],
                auth=SharedSecretClient(secret, "good", nonce_source=os.urandom),
            ),
            echo_app,
        )
        try:
            wait_until(lambda: len(gateway.obj.core.receivers) == 1)
            r = httpx.get(f"http://127.0.0.1:{ports.http}/ok", timeout=10)
            assert r.status_code == 200 and r.json()["path"] == "/ok"
        finally:
            receiver.stop()
        assert not gateway.finished.is_set()
        assert tracebacks(caplog) == []
    finally:
        gateway.stop()


# --- the crash barrier: fault injection ------------------------------------------------------


def _expect_reset_or_502(client: httpx.Client, path: str) -> None:
    try:
        r = client.get(path)
    except httpx.TransportError:
        return  # the connection was reset
    assert r.status_code == 502, r.status_code


@pytest.mark.parametrize("driver", DRIVERS)
def test_barrier_gateway_core_resets_one_stream(driver, caplog, monkeypatch):
    """An exception while the gateway core handles one response resets that client's
    connection and stream; the tunnel and the process serve on."""
    send_response = HttpFront.send_response

    def faulty(self, head):
        if any(name == "x-inject-fault" for name, _ in head.headers):
            raise RuntimeError("injected fault in the gateway core")
        return send_response(self, head)

    monkeypatch.setattr(HttpFront, "send_response", faulty)
    dep = Deployment(driver)
    try:
        _expect_reset_or_502(dep.client, "/fault")
        assert len(tracebacks(caplog)) == 1
        assert "injected fault" in str(tracebacks(caplog)[0].exc_info[1])
        r = dep.client.get("/after")
        assert r.status_code == 200 and r.json()["path"] == "/after"
        assert len(dep.gateway.obj.core.receivers) == 1  # the same tunnel
        wait_until(lambda: dep.gateway.obj.core.in_flight == 0)
        assert dep.alive()
    finally:
        dep.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_barrier_receiver_core_resets_one_stream(driver, caplog, monkeypatch):
    """An exception while the receiver core opens one call resets that stream (the client
    gets 502); the tunnel and the process serve on."""
    build_scope = anpx_core.receiver.asgi_calls.build_scope

    def faulty(head, **kwargs):
        if head.target == "/fault":
            raise RuntimeError("injected fault in the receiver core")
        return build_scope(head, **kwargs)

    monkeypatch.setattr(anpx_core.receiver.asgi_calls, "build_scope", faulty)
    dep = Deployment(driver)
    try:
        assert dep.client.get("/fault").status_code == 502
        assert len(tracebacks(caplog)) == 1
        assert "injected fault" in str(tracebacks(caplog)[0].exc_info[1])
        r = dep.client.get("/after")
        assert r.status_code == 200 and r.json()["path"] == "/after"
        assert dep.receiver.obj.core.in_flight == 0
        assert dep.alive()
    finally:
        dep.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_barrier_gateway_driver_closes_one_connection(driver, caplog, monkeypatch):
    """An exception escaping the core into the gateway driver's connection task closes
    that connection only (trio: the nursery survives)."""
    take_output = GatewayCore.take_output

    def faulty(self, cid):
        data, close = take_output(self, cid)
        if b"x-inject-fault" in data:
            raise RuntimeError("injected fault in the gateway driver")
        return data, close

    monkeypatch.setattr(GatewayCore, "take_output", faulty)
    dep = Deployment(driver)
    try:
        with pytest.raises(httpx.TransportError):
            dep.client.get("/fault")
        wait_until(lambda: len(tracebacks(caplog)) >= 1)
        assert len(tracebacks(caplog)) == 1
        r = dep.client.get("/after")
        assert r.status_code == 200 and r.json()["path"] == "/after"
        assert dep.alive()
    finally:
        dep.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_barrier_receiver_driver_resets_the_tunnel_and_reconnects(driver, caplog, monkeypatch):
    """An exception escaping the receiver core into its driver's tunnel task closes the
    tunnel at once (asyncio used to wedge ~60 s); the receiver reconnects and serves."""
    receive = ReceiverCore.receive

    def faulty(self, cid, data, now):
        if b"/driver-fault" in data:
            raise RuntimeError("injected fault in the receiver driver")
        return receive(self, cid, data, now)

    monkeypatch.setattr(ReceiverCore, "receive", faulty)
    dep = Deployment(driver, reconnect_delay=0.05)
    try:
        _expect_reset_or_502(dep.client, "/driver-fault")
        dep.wait_connected()
        r = dep.client.get("/after")
        assert r.status_code == 200 and r.json()["path"] == "/after"
        assert len(tracebacks(caplog)) == 1
        assert dep.alive()
    finally:
        dep.close()
