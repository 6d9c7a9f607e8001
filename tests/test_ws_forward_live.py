"""Forward mode against a real ``websockets`` server on 127.0.0.1: the ForwardWebSocket
unit is driven over a plain asyncio socket, the test playing the tunnel side with records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from anpx_core.meta import RequestHead
from anpx_core.ws_forward import ForwardWebSocket
from anpx_core.ws_relay import WsSettings
from anpx_core.wsstream import (
    CloseRecord,
    MessagePiece,
    RecordDecoder,
    StreamEnd,
    StreamSend,
    StreamStart,
    encode_close,
    encode_message,
    open_head,
)

CLOSES: list[tuple[int, str]] = []


async def handler(ws: ServerConnection) -> None:
    await ws.send(f"hello {ws.request.path} {ws.request.headers.get('x-user')}")
    try:
        async for message in ws:
            if message == "close":
                await ws.close(4444, "service says bye")
                return
            await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        if ws.close_code is not None:
            CLOSES.append((ws.close_code, ws.close_reason or ""))


class Tunnel:
    """The test's side of the stream: feeds records in, decodes what the unit sends."""

    def __init__(self, unit: ForwardWebSocket) -> None:
        self.unit = unit
        self.heads: list[Any] = []
        self.records: list[Any] = []
        self.ended = False
        self._decoder = RecordDecoder(64 * 1024 * 1024)

    def collect(self) -> None:
        for op in self.unit.take_ops():
            if isinstance(op, StreamStart):
                self.heads.append(op.head)
            elif isinstance(op, StreamSend):
                if self.heads and self.heads[0].status == 101:
                    self.records += self._decoder.feed(op.data)
            elif isinstance(op, StreamEnd):
                self.ended = True

    def messages(self) -> list[Any]:
        out, parts = [], []
        for r in self.records:
            if isinstance(r, MessagePiece):
                parts.append(r.data)
                if r.fin:
                    out.append(("" if isinstance(parts[0], str) else b"").join(parts))
                    parts = []
        return out


async def run_until(
    tunnel: Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, done: Any
) -> None:
    """Pump bytes between the unit and the socket until ``done()`` (bounded by a timeout)."""
    loop = asyncio.get_running_loop()

    async def pump() -> None:
        while True:
            out = tunnel.unit.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
                tunnel.unit.written()
            tunnel.collect()
            if done():
                return
            if tunnel.unit.done:
                raise AssertionError("unit finished before the condition held")
            data = await reader.read(65536)
            tunnel.unit.receive_data(data, loop.time())

    await asyncio.wait_for(pump(), 10)


@pytest.mark.parametrize("big", [False, True])
def test_forward_to_a_websockets_server(big: bool) -> None:
    CLOSES.clear()

    async def main() -> None:
        async with serve(
            handler, "127.0.0.1", 0, subprotocols=["chat.v1", "chat.v2"], max_size=None
        ) as server:
            port = server.sockets[0].getsockname()[1]
            loop = asyncio.get_running_loop()
            headers = [
                ("host", f"127.0.0.1:{port}"),
                ("x-user", "ada"),
                ("sec-websocket-extensions", "permessage-deflate"),
            ]
            head = open_head("/room?id=3", headers, ["chat.v1", "chat.v2"])
            unit = ForwardWebSocket(head, f"127.0.0.1:{port}", WsSettings(), loop.time())
            tunnel = Tunnel(unit)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await run_until(tunnel, reader, writer, lambda: tunnel.messages())
            (accept,) = tunnel.heads
            assert accept.status == 101
            assert ("sec-websocket-protocol", "chat.v1") in accept.headers  # the service's pick
            assert not any(n == "sec-websocket-extensions" for n, _ in accept.headers)  # no deflate
            assert tunnel.messages() == ["hello /room?id=3 ada"]
            payload: Any = bytes(range(256)) * (65536 if big else 4)
            unit.stream_data(encode_message(payload) + encode_message("text ✓"), loop.time())
            await run_until(tunnel, reader, writer, lambda: len(tunnel.messages()) == 3)
            assert tunnel.messages()[1:] == [payload, "text ✓"]
            unit.stream_data(encode_message("close"), loop.time())
            await run_until(tunnel, reader, writer, lambda: tunnel.ended)
            assert isinstance(tunnel.records[-1], CloseRecord)
            assert (tunnel.records[-1].code, tunnel.records[-1].reason) == (
                4444,
                "service says bye",
            )
            # the gateway side answers the close; the unit is then done
            unit.stream_data(encode_close(4444), loop.time())
            unit.stream_end(loop.time())
            writer.write(unit.data_to_send())
            await writer.drain()
            assert unit.done
            writer.close()

    asyncio.run(main())


def test_client_close_reaches_the_service_with_its_code() -> None:
    CLOSES.clear()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            loop = asyncio.get_running_loop()
            head = RequestHead("GET", "/x", [("upgrade", "websocket")])
            unit = ForwardWebSocket(head, f"127.0.0.1:{port}", WsSettings(), loop.time())
            tunnel = Tunnel(unit)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await run_until(tunnel, reader, writer, lambda: tunnel.messages())
            unit.stream_data(encode_close(4010, "client left"), loop.time())
            unit.stream_end(loop.time())
            await run_until(tunnel, reader, writer, lambda: tunnel.ended)
            close = tunnel.records[-1]
            assert isinstance(close, CloseRecord) and close.code == 4010  # the service's echo
            writer.close()
        assert CLOSES == [(4010, "client left")]

    asyncio.run(main())
