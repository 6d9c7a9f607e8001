"""Independent WebSocket implementations as tunnel peers.

trio-websocket and websockets (asyncio) play a v1-style receiver against our gateway
and a v1-style gateway against our receiver, speaking ANPX frames built with the codec.
This proves our WebSocket layer interoperates with other implementations, and that a
peer that negotiates nothing (no flow control) is served.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
import trio
import trio_websocket
import websockets

from anpx_core import messages as M
from anpx_core.meta import RequestHead, ResponseHead
from anpx_core.receiver import ReceiverSettings

from .apps import app
from .deploy import DRIVERS, start_gateway, start_receiver, wait_until


def _answer(frame: bytes, decoder: M.MessageDecoder, bodies: dict[str, list[bytes]]) -> list[bytes]:
    """A minimal v1 receiver: echo each complete request's method, target and body length."""
    out: list[bytes] = []
    for event in decoder.receive_bytes(frame):
        if isinstance(event, M.HeadReceived):
            assert isinstance(event.head, RequestHead)
            bodies[event.request_id] = [event.head.method.encode(), event.head.target.encode()]
        elif isinstance(event, M.BodyReceived):
            bodies[event.request_id].append(event.data)
        elif isinstance(event, M.MessageComplete):
            method, target, *body = bodies.pop(event.request_id)
            text = json.dumps(
                {"method": method.decode(), "target": target.decode(), "len": len(b"".join(body))}
            )
            out += M.encode_message(
                M.Response(
                    event.request_id,
                    200,
                    "OK",
                    [("content-type", "application/json"), ("x-peer", "1"), ("x-peer", "2")],
                    text.encode(),
                ),
                4096,  # small frames: the gateway must reassemble chunked responses
            )
    return out


# --- an independent client library plays the receiver against our gateway ---------------


async def _trio_websocket_receiver(url: str, stop: trio.Event) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        decoder, bodies = M.MessageDecoder(), {}
        while not stop.is_set():
            with trio.move_on_after(0.2):
                message = await ws.get_message()
                if isinstance(message, str):
                    continue
                for frame in _answer(message, decoder, bodies):
                    await ws.send_message(frame)


async def _websockets_receiver(url: str, stop: asyncio.Event) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        decoder, bodies = M.MessageDecoder(), {}
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(ws.recv(), 0.2)
            except asyncio.TimeoutError:
                continue
            if isinstance(message, str):
                continue
            for frame in _answer(message, decoder, bodies):
                await ws.send(frame)


def _run_peer(library: str, url: str) -> tuple[threading.Thread, callable]:
    """Run a peer receiver in its own thread; returns (thread, stop)."""
    holder: dict = {}
    ready = threading.Event()

    def main() -> None:
        if library == "trio-websocket":

            async def run() -> None:
                holder["stop"] = trio.Event()
                holder["token"] = trio.lowlevel.current_trio_token()
                ready.set()
                await _trio_websocket_receiver(url, holder["stop"])

            trio.run(run)
        else:

            async def run() -> None:
                holder["stop"] = asyncio.Event()
                holder["loop"] = asyncio.get_running_loop()
                ready.set()
                await _websockets_receiver(url, holder["stop"])

            asyncio.run(run())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    ready.wait(5)

    def stop() -> None:
        if library == "trio-websocket":
            trio.from_thread.run_sync(holder["stop"].set, trio_token=holder["token"])
        else:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(5)

    return thread, stop


@pytest.mark.parametrize("library", ["trio-websocket", "websockets"])
@pytest.mark.parametrize("gw_driver", DRIVERS)
def test_independent_websocket_client_serves_as_receiver(gw_driver, library):
    gateway = start_gateway(gw_driver)
    ports = gateway.obj.ports
    _, stop = _run_peer(library, f"ws://127.0.0.1:{ports.tunnel}/")
    try:
        wait_until(lambda: len(gateway.obj.core.receivers) == 1)
        assert gateway.obj.core.receivers[0]["flow"] is False  # a v1 peer: no flow control
        with httpx.Client(base_url=f"http://127.0.0.1:{ports.http}", timeout=10) as client:
            r = client.post("/x%2Fy?a=1&a=2", content=b"q" * 100_000)
            assert r.status_code == 200
            assert r.json() == {"method": "POST", "target": "/x%2Fy?a=1&a=2", "len": 100_000}
            assert r.headers.get_list("x-peer") == ["1", "2"]
    finally:
        stop()
        gateway.stop()


# --- an independent server library plays the gateway against our receiver ----------------


async def _exchange(send, recv) -> list[M.Message]:
    """Send two requests (one chunked) as a v1 gateway would; collect both responses."""
    requests = [
        M.Request(
            "11111111-1111-4111-8111-111111111111", "GET", "/echo?x=1", [("host", "gw")], b""
        ),
        M.Request(
            "22222222-2222-4222-8222-222222222222",
            "POST",
            "/upload",
            [("host", "gw")],
            b"z" * 50_000,
        ),
    ]
    for request in requests:
        for frame in M.encode_message(request, 8192):
            await send(frame)
    decoder = M.MessageDecoder()
    results: dict[str, dict] = {}
    done: list[M.Message] = []
    while len(done) < 2:
        message = await recv()
        if isinstance(message, str):
            continue
        for event in decoder.receive_bytes(message):
            entry = results.setdefault(event.request_id, {"body": []})
            if isinstance(event, M.HeadReceived):
                entry["head"] = event.head
            elif isinstance(event, M.BodyReceived):
                entry["body"].append(event.data)
            elif isinstance(event, M.MessageComplete):
                head = entry["head"]
                assert isinstance(head, ResponseHead)
                done.append(
                    M.Response(
                        event.request_id,
                        head.status,
                        head.reason,
                        head.headers,
                        b"".join(entry["body"]),
                    )
                )
    return sorted(done, key=lambda m: m.request_id)


def _check(responses: list[M.Message]) -> None:
    echo, upload = responses
    assert echo.status == 200 and json.loads(echo.body)["query_string"] == "x=1"
    assert upload.status == 200 and json.loads(upload.body) == {"bytes": 50_000}


@pytest.mark.parametrize("rc_driver", DRIVERS)
def test_trio_websocket_server_as_gateway(rc_driver):
    result: dict = {}
    port_ready = threading.Event()

    async def main() -> None:
        async def handler(request: trio_websocket.WebSocketRequest) -> None:
            ws = await request.accept()
            result["responses"] = await _exchange(ws.send_message, ws.get_message)
            result["done"].set()

        result["done"] = trio.Event()
        async with trio.open_nursery() as nursery:
            servers = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            result["port"] = servers.port
            port_ready.set()
            with trio.fail_after(15):
                await result["done"].wait()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=lambda: trio.run(main), daemon=True)
    thread.start()
    port_ready.wait(5)
    receiver = start_receiver(
        rc_driver, ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{result['port']}/"]), app
    )
    thread.join(20)
    receiver.stop()
    _check(result["responses"])


@pytest.mark.parametrize("rc_driver", DRIVERS)
def test_websockets_server_as_gateway(rc_driver):
    result: dict = {}
    port_ready = threading.Event()

    async def main() -> None:
        done = asyncio.Event()

        async def handler(ws) -> None:
            result["responses"] = await _exchange(ws.send, ws.recv)
            done.set()

        async with websockets.serve(handler, "127.0.0.1", 0, max_size=None) as server:
            result["port"] = server.sockets[0].getsockname()[1]
            port_ready.set()
            await asyncio.wait_for(done.wait(), 15)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    port_ready.wait(5)
    receiver = start_receiver(
        rc_driver, ReceiverSettings(gateway_urls=[f"ws://127.0.0.1:{result['port']}/"]), app
    )
    thread.join(20)
    receiver.stop()
    _check(result["responses"])
