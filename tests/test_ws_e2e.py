"""WebSockets through the tunnel, end to end: real sockets on 127.0.0.1, every {trio, asyncio}
gateway x receiver pairing, independent clients (websockets, trio-websocket, chromium),
in-process ASGI apps (raw and FastAPI) and forward mode against a separate websockets server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from anpx_core.gateway import GatewaySettings
from anpx_core.receiver import ReceiverSettings
from anpx_core.ws_relay import WsSettings

from .deploy import PAIRINGS, Runner, start_gateway, start_receiver, wait_until
from .ws_apps import (
    PUSH_COUNT,
    PUSH_SIZE,
    RESULTS,
    disconnects,
    fastapi_app,
    starlette_app,
    ws_app,
)

MiB = 1024 * 1024


class WsTunnel:
    """A gateway and a receiver serving ``app`` (or forwarding), connected."""

    def __init__(
        self,
        gw: str,
        rc: str,
        *,
        app: Any = ws_app,
        gw_settings: GatewaySettings | None = None,
        rc_settings: ReceiverSettings | None = None,
    ) -> None:
        self.gw_driver, self.rc_driver = gw, rc
        self.gateway = start_gateway(gw, gw_settings)
        self.ports = self.gateway.obj.ports
        self.rc_settings = rc_settings or ReceiverSettings()
        self.rc_settings.gateway_urls = [f"ws://127.0.0.1:{self.ports.tunnel}/"]
        self.rc_settings.reconnect_delay = 0.05
        self.app = None if self.rc_settings.forward is not None else app
        self.receiver: Runner = start_receiver(rc, self.rc_settings, self.app)
        wait_until(lambda: len(self.gateway.obj.core.receivers) >= 1)
        self.base = f"127.0.0.1:{self.ports.http}"

    def url(self, path: str) -> str:
        return f"ws://{self.base}{path}"

    def connect(self, path: str, **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("open_timeout", 10)
        kwargs.setdefault("close_timeout", 10)
        return connect(self.url(path), **kwargs)

    def close(self) -> None:
        self.receiver.stop()
        self.gateway.stop()


@pytest.fixture(params=PAIRINGS, ids=lambda p: f"{p[0]}-gw-{p[1]}-rc")
def pairing(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param


@pytest.fixture
def tunnel(pairing: tuple[str, str]) -> Iterator[WsTunnel]:
    t = WsTunnel(*pairing)
    yield t
    t.close()


def _closed_code(ws: ClientConnection, timeout: float = 10.0) -> tuple[int | None, str | None]:
    """Read until the server closes; the code and reason it sent."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            ws.recv(timeout=timeout)
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


# --- the basics, on every pairing ----------------------------------------------------------


def test_echo_text_binary_fragmented_and_subprotocol(tunnel: WsTunnel) -> None:
    with tunnel.connect("/ws/echo?key=basic", subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "chat"  # the app's choice, in the gateway's 101
        assert ws.response.headers["x-app"] == "accepted"
        assert "sec-websocket-extensions" not in ws.response.headers  # compression stripped
        ws.send("héllo")
        assert ws.recv(timeout=10) == "héllo"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=10) == b"\x00\x01\xff"
        ws.send(iter(["frag", "ment", "ed"]))  # one message in three frames
        assert ws.recv(timeout=10) == "fragmented"
        ws.send(iter([b"ab", b"cd"]))
        assert ws.recv(timeout=10) == b"abcd"
        ws.ping(b"are you there").wait(10)  # answered (by the gateway, hop by hop)
        receivers = tunnel.gateway.obj.core.receivers  # what /stats shows
        assert (receivers[0]["websocket"], receivers[0]["websockets"]) == (True, 1)


def test_scope_reaches_the_app(tunnel: WsTunnel) -> None:
    with tunnel.connect(
        "/ws/info?a=1&b=%20", subprotocols=["x1"], additional_headers={"X-User": "ann"}
    ) as ws:
        info = json.loads(ws.recv(timeout=10))
    assert info["path"] == "/ws/info" and info["query_string"] == "a=1&b=%20"
    assert info["scheme"] == "ws" and info["subprotocols"] == ["x1"]
    assert info["client"][0] == "127.0.0.1"
    assert info["headers"]["x-user"] == "ann"
    assert info["headers"]["x-forwarded-proto"] == "http"
    assert "sec-websocket-key" not in info["headers"]
    assert "sec-websocket-extensions" not in info["headers"]
    assert info["extensions"] == ["websocket.http.response"]


def test_close_code_and_reason_both_ways(tunnel: WsTunnel) -> None:
    key = f"client-closes-{uuid.uuid4().hex}"
    with tunnel.connect(f"/ws/echo?key={key}") as ws:
        ws.send("x")
        ws.recv(timeout=10)
        ws.close(4001, "bye")
    wait_until(lambda: disconnects(key) != [])
    assert disconnects(key) == [(4001, "bye")]

    with tunnel.connect("/ws/echo?key=app-closes") as ws:
        ws.send("close 4002 the app says bye")
        assert _closed_code(ws) == (4002, "the app says bye")


def test_a_16_mib_message_passes(tunnel: WsTunnel) -> None:
    payload = os.urandom(16 * MiB)
    with tunnel.connect("/ws/echo", max_size=None) as ws:
        ws.send(payload)
        assert ws.recv(timeout=60) == payload


def test_one_slow_consumer_stalls_only_its_own_stream(tunnel: WsTunnel) -> None:
    with tunnel.connect("/ws/push", max_size=None, max_queue=1) as slow:
        # the app pushes 16 MiB at a client that reads one message; the rest waits
        first = slow.recv(timeout=10)
        assert len(first) == PUSH_SIZE
        with tunnel.connect("/ws/echo") as other:
            for i in range(20):
                other.send(f"m{i}")
                assert other.recv(timeout=10) == f"m{i}"
        assert httpx.get(f"http://{tunnel.base}/", timeout=10).status_code == 200
        rest = [slow.recv(timeout=30) for _ in range(PUSH_COUNT - 1)]
        assert [m[0] for m in rest] == [i % 256 for i in range(1, PUSH_COUNT)]


def test_denial_through_websocket_http_response(tunnel: WsTunnel) -> None:
    with pytest.raises(InvalidStatus) as info:
        tunnel.connect("/ws/deny")
    response = info.value.response
    assert response.status_code == 403
    assert response.headers["x-denied"] == "yes"
    assert response.body == b"not you"
    with pytest.raises(InvalidStatus) as info:
        tunnel.connect("/ws/raise")
    assert info.value.response.status_code == 500


def test_receiver_loss_closes_with_1011(tunnel: WsTunnel) -> None:
    with tunnel.connect("/ws/echo") as ws:
        ws.send("x")
        ws.recv(timeout=10)
        tunnel.receiver.stop()
        assert _closed_code(ws)[0] == 1011


def test_gateway_drain_closes_with_1001_after_the_grace(tunnel: WsTunnel) -> None:
    key = f"drain-{uuid.uuid4().hex}"
    with (
        tunnel.connect(f"/ws/echo?key={key}") as ws,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        ws.send("x")
        ws.recv(timeout=10)
        done = pool.submit(tunnel.gateway.call, lambda: tunnel.gateway.obj.shutdown(grace=0.5))
        # within the grace the socket still works
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"
        assert _closed_code(ws)[0] == 1001
        done.result(timeout=20)
    wait_until(lambda: disconnects(key) != [])
    assert disconnects(key)[0][0] == 1001


def test_receiver_drain_closes_with_1001_after_its_grace(tunnel: WsTunnel) -> None:
    key = f"rc-drain-{uuid.uuid4().hex}"
    receiver = tunnel.receiver
    with (
        tunnel.connect(f"/ws/echo?key={key}") as ws,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        ws.send("x")
        ws.recv(timeout=10)
        done = pool.submit(receiver.call, lambda: receiver.obj.shutdown(grace=0.3))
        assert _closed_code(ws) == (1001, "receiver shutting down")
        done.result(timeout=20)
    wait_until(lambda: disconnects(key) != [])
    assert disconnects(key) == [(1001, "receiver shutting down")]


def test_an_idle_websocket_survives_with_keepalive(pairing: tuple[str, str]) -> None:
    # pings every 0.1 s, answered within 0.5 s; 1 s of silence from the client's side
    ws_settings = WsSettings(ping_interval=0.1, ping_timeout=0.5, idle_timeout=0)
    t = WsTunnel(*pairing, gw_settings=GatewaySettings(websocket=ws_settings))
    try:
        with t.connect("/ws/echo", ping_interval=None) as ws:
            time.sleep(1.0)  # the scenario is the silence itself
            ws.send("after a while")
            assert ws.recv(timeout=10) == "after a while"
    finally:
        t.close()


# --- limits and refusals -----------------------------------------------------------------------


def test_a_receiver_without_ws_answers_501_at_once() -> None:
    settings = ReceiverSettings(websocket=WsSettings(enabled=False))
    t = WsTunnel("trio", "asyncio", rc_settings=settings)
    try:
        with pytest.raises(InvalidStatus) as info:
            t.connect("/ws/echo")
        assert info.value.response.status_code == 501
        assert b"does not support WebSocket" in info.value.response.body
        assert httpx.get(f"http://{t.base}/", timeout=10).status_code == 200
    finally:
        t.close()


def test_limits_per_address_per_receiver_and_message_size() -> None:
    gw = GatewaySettings(websocket=WsSettings(max_per_client=2, max_message_size=1024))
    rc = ReceiverSettings(websocket=WsSettings(max_open=1, max_per_client=0, idle_timeout=0))
    t = WsTunnel("asyncio", "trio", gw_settings=gw, rc_settings=rc)
    try:
        with t.connect("/ws/echo") as first:
            with pytest.raises(InvalidStatus) as info:
                t.connect("/ws/echo")
            assert info.value.response.status_code == 503  # the receiver's max_open
            first.send(b"x" * 1024)  # at the limit: passes
            assert first.recv(timeout=10) == b"x" * 1024
            first.send(b"x" * 1025)  # over it: 1009
            assert _closed_code(first)[0] == 1009
        wait_until(lambda: t.gateway.obj.core.in_flight == 0)
    finally:
        t.close()
    gw = GatewaySettings(websocket=WsSettings(max_per_client=1))
    t = WsTunnel("trio", "trio", gw_settings=gw)
    try:
        with t.connect("/ws/echo"):
            with pytest.raises(InvalidStatus) as info:
                t.connect("/ws/echo")
            assert info.value.response.status_code == 429
            assert info.value.response.headers["retry-after"] == "5"
        wait_until(lambda: t.gateway.obj.core.in_flight == 0)
        with t.connect("/ws/echo") as again:  # its place was given back
            again.send("ok")
            assert again.recv(timeout=10) == "ok"
    finally:
        t.close()


def test_a_message_over_the_receivers_smaller_limit_closes_the_client_with_1009(
    pairing: tuple[str, str],
) -> None:
    rc = ReceiverSettings(websocket=WsSettings(max_message_size=1024))
    t = WsTunnel(*pairing, rc_settings=rc)  # the gateway's own limit: 16 MiB
    key = f"rc-limit-{pairing[0]}-{pairing[1]}"
    try:
        with t.connect(f"/ws/echo?key={key}") as ws:
            ws.send(b"x" * 1024)
            assert ws.recv(timeout=10) == b"x" * 1024
            ws.send(b"x" * 300_000)
            assert _closed_code(ws) == (1009, "message over 1024 bytes")
        wait_until(lambda: disconnects(key) == [(1009, "")])
        wait_until(lambda: t.gateway.obj.core.in_flight == 0)
    finally:
        t.close()


def test_gateway_cap_per_receiver_and_idle_timeout() -> None:
    ws = WsSettings(max_open=1, idle_timeout=0.5, ping_interval=0.1)
    t = WsTunnel("asyncio", "asyncio", gw_settings=GatewaySettings(websocket=ws))
    try:
        with t.connect("/ws/echo") as first:
            with pytest.raises(InvalidStatus) as info:
                t.connect("/ws/echo")
            assert info.value.response.status_code == 503  # max_per_receiver
            assert b"too many open WebSockets on this route" in info.value.response.body
            # silence (pings do not count as activity): closed with 1001 "idle timeout"
            assert _closed_code(first) == (1001, "idle timeout")
        wait_until(lambda: t.gateway.obj.core.in_flight == 0)
        with t.connect("/ws/echo") as again:
            again.send("room again")
            assert again.recv(timeout=10) == "room again"
    finally:
        t.close()


def test_open_websockets_take_no_place_of_http_requests() -> None:
    # one HTTP request at a time per receiver; two WebSockets open do not make it "busy"
    t = WsTunnel("trio", "asyncio", gw_settings=GatewaySettings(max_streams_per_receiver=1))
    try:
        with t.connect("/ws/echo") as one, t.connect("/ws/echo") as two:
            one.send("1")
            two.send("2")
            assert (one.recv(timeout=10), two.recv(timeout=10)) == ("1", "2")
            assert httpx.get(f"http://{t.base}/", timeout=10).status_code == 200
    finally:
        t.close()


@pytest.mark.parametrize("gw", ["trio", "asyncio"])
def test_a_client_leaving_before_the_answer_cancels_the_pending_open(gw: str) -> None:
    # open_timeout far away: only the client's disconnect can end the wait
    ws = WsSettings(open_timeout=1000, max_per_client=1)
    t = WsTunnel(gw, "trio", gw_settings=GatewaySettings(websocket=ws))
    core = t.gateway.obj.core
    key = f"leave-{gw}"
    upgrade = (
        f"GET /ws/hold?key={key} HTTP/1.1\r\nHost: {t.base}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    try:
        # a FIN, then a reset (the second wait needs the first one's per-address place back)
        for reset in (False, True):
            with socket.create_connection(("127.0.0.1", t.ports.http), timeout=10) as sock:
                sock.sendall(upgrade)
                wait_until(lambda: disconnects(key)[-1:] == [(0, "held")])
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # the app's wait ends (the stream was reset) and every place is given back
            wait_until(lambda: disconnects(key)[-1][1] == "websocket.disconnect")
            wait_until(lambda: core.in_flight == 0 and not core.websockets.by_address)
        assert core.websockets.sessions == {}
        # a client that leaves as soon as it has read the 101: the app sees it go, too
        accepted = upgrade.replace(b"/ws/hold?key=", b"/ws/echo?key=after-101-")
        with socket.create_connection(("127.0.0.1", t.ports.http), timeout=10) as sock:
            sock.sendall(accepted)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, head
                head += chunk
            assert head.startswith(b"HTTP/1.1 101 ")
        wait_until(lambda: len(disconnects(f"after-101-{key}")) == 1)
        wait_until(lambda: core.in_flight == 0 and not core.websockets.by_address)
    finally:
        t.close()


# --- other clients and apps --------------------------------------------------------------------


def test_trio_websocket_client(pairing: tuple[str, str]) -> None:
    t = WsTunnel(*pairing)
    key = f"trio-ws-{uuid.uuid4().hex}"
    try:

        async def main() -> tuple[Any, ...]:
            with trio.fail_after(30):
                return await session()

        async def session() -> tuple[Any, ...]:
            async with trio_websocket.open_websocket(
                "127.0.0.1",
                t.ports.http,
                f"/ws/echo?key={key}",
                use_ssl=False,
                subprotocols=["tws"],
            ) as ws:
                await ws.send_message("from trio")
                text = await ws.get_message()
                await ws.send_message(b"\x01" * 100_000)
                data = await ws.get_message()
                proto = ws.subprotocol
                await ws.aclose(4100, "trio leaves")
            return text, len(data), proto

        assert trio.run(main) == ("from trio", 100_000, "tws")
        wait_until(lambda: disconnects(key) != [])
        assert disconnects(key) == [(4100, "trio leaves")]
    finally:
        t.close()


def test_fastapi_websocket_endpoint(pairing: tuple[str, str]) -> None:
    t = WsTunnel(*pairing, app=fastapi_app)
    room = uuid.uuid4().hex
    try:
        with t.connect(f"/chat/{room}?q=hi", subprotocols=["v1.chat", "v2.chat"]) as ws:
            assert ws.subprotocol == "v2.chat"
            assert json.loads(ws.recv(timeout=10)) == {"room": room, "q": "hi"}
            ws.send("hey")
            assert ws.recv(timeout=10) == f"{room}: hey"
            ws.close(4200, "left the room")
        wait_until(lambda: disconnects(f"fastapi-{room}") != [])
        assert disconnects(f"fastapi-{room}") == [(4200, "left the room")]
        with pytest.raises(InvalidStatus) as info:
            t.connect("/nowhere")
        assert info.value.response.status_code == 403  # Starlette closes unknown routes
    finally:
        t.close()


def test_starlette_endpoint_and_its_denial_response(pairing: tuple[str, str]) -> None:
    t = WsTunnel(*pairing, app=starlette_app)
    try:
        with pytest.raises(InvalidStatus) as info:
            t.connect("/count?token=no")
        response = info.value.response
        assert (response.status_code, response.body) == (401, b"bad token")
        assert response.headers["x-why"] == "token"
        with t.connect("/count?token=ok", max_size=None) as ws:
            ws.send(b"\x00" * 70_000)  # over one record (64 KiB): reassembled for the app
            assert ws.recv(timeout=10) == "70000"
    finally:
        t.close()


class EchoService:
    """A separate websockets server on 127.0.0.1 (forward mode's local service)."""

    def __init__(self) -> None:
        self.closes: list[tuple[int | None, str]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _handler(self, ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path.startswith("/ws/refuse"):
            return  # never happens: process_request refuses first
        try:
            async for message in ws:
                if message == "close":
                    await ws.close(4444, "service says bye")
                    break
                await ws.send(message)
        except ConnectionClosed:
            pass
        self.closes.append((ws.close_code, ws.close_reason or ""))

    @staticmethod
    def _refuse(ws: ServerConnection, request: Any) -> Any:
        if request.path.startswith("/ws/refuse"):
            return ws.respond(418, "no websockets for you\n")
        return None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=["svc"],
            process_request=self._refuse,
            max_size=None,
            compression=None,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_forward_mode_relays_a_websockets_server(pairing: tuple[str, str]) -> None:
    service = EchoService()
    t = WsTunnel(*pairing, rc_settings=ReceiverSettings(forward=("127.0.0.1", service.port)))
    try:
        with t.connect("/ws/x", subprotocols=["other", "svc"], max_size=None) as ws:
            assert ws.subprotocol == "svc"
            ws.send("through")
            assert ws.recv(timeout=10) == "through"
            big = os.urandom(3 * MiB)
            ws.send(big)
            assert ws.recv(timeout=30) == big
            ws.close(4321, "client done")
        wait_until(lambda: service.closes != [])
        assert service.closes == [(4321, "client done")]
        with t.connect("/ws/y", subprotocols=["svc"]) as ws:  # it insists on one
            ws.send("close")
            assert _closed_code(ws) == (4444, "service says bye")
        with pytest.raises(InvalidStatus) as info:
            t.connect("/ws/refuse")
        assert info.value.response.status_code == 418
        assert info.value.response.body == b"no websockets for you\n"
    finally:
        t.close()
        service.close()


# --- a real browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if the leader has not exited in 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium)")
@pytest.mark.parametrize("pairing", [("trio", "asyncio"), ("asyncio", "trio")], ids=str)
def test_a_browser_opens_a_websocket_through_the_tunnel(pairing: tuple[str, str]) -> None:
    """Headless chromium loads a page through the tunnel; its script opens a WebSocket
    (subprotocol "chat"), sends text and binary, closes with 4000 and POSTs what it got."""
    assert CHROMIUM is not None
    t = WsTunnel(*pairing)
    RESULTS.clear()
    try:
        # chromium's helper processes may still write to the profile after the browser
        # exits: the whole process group is ended, and a leftover file is no failure
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
            browser = subprocess.Popen(
                [
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    f"http://{t.base}/page",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, with its helpers
            )
            try:
                wait_until(lambda: RESULTS != [], timeout=60)
            finally:
                _end_group(browser)
        assert json.loads(RESULTS[0]) == {
            "protocol": "chat",
            "got": ["hello from the browser", "1,2,3"],
            "code": 4000,  # the app's echo of the browser's close (code only, as RFC 6455 5.5.1)
            "reason": "",
        }
        wait_until(lambda: disconnects("browser") != [])
        assert disconnects("browser")[-1] == (4000, "done")
    finally:
        t.close()
