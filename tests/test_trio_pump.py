"""The trio pump's own pieces: its wake-up event and its direct socket reads and writes
(``anpx_trio._pump``), on real loopback TCP sockets."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
import trio
import trio.testing

from anpx_host.wakers import Wakers
from anpx_trio._pump import STREAM_ERRORS, Wake, _receive, _send_all

pytestmark = pytest.mark.filterwarnings("error")


async def _connected_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
        nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
    return client, server


def test_one_fire_wakes_every_task_waiting_on_the_key() -> None:
    async def main() -> None:
        wakers = Wakers(Wake)
        woken: list[str] = []

        async def waiter(name: str) -> None:
            await wakers.wait("key")
            woken.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "a")
            nursery.start_soon(waiter, "b")
            await trio.testing.wait_all_tasks_blocked()
            wakers.fire(["other"])
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []
            wakers.fire(["key"])
        assert sorted(woken) == ["a", "b"]

    trio.run(main)


def test_a_cancelled_waiter_leaves_and_a_later_fire_still_wakes_the_others() -> None:
    async def main() -> None:
        wakers = Wakers(Wake)
        woken: list[str] = []

        async def waiter(name: str, scope: trio.CancelScope) -> None:
            with scope:
                await wakers.wait("key")
                woken.append(name)

        gone, stays = trio.CancelScope(), trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "gone", gone)
            nursery.start_soon(waiter, "stays", stays)
            await trio.testing.wait_all_tasks_blocked()
            gone.cancel()
            await trio.testing.wait_all_tasks_blocked()
            wakers.fire(["key"])
        assert woken == ["stays"]
        assert gone.cancelled_caught

    trio.run(main)


def test_a_set_wake_returns_at_once() -> None:
    async def main() -> None:
        wake = Wake()
        wake.set()
        with trio.fail_after(5):
            await wake.wait()

    trio.run(main)


def test_bytes_cross_intact_both_ways_past_full_socket_buffers() -> None:
    """8 MiB each way, more than the kernel buffers: the writer waits for room, a reader
    whose last read was short waits for data, nothing is lost or reordered; EOF reads b""."""
    size = 8 << 20
    blob = os.urandom(size)

    async def main() -> None:
        a, b = await _connected_pair()

        async def send(stream: trio.SocketStream) -> None:
            for start in range(0, size, 1 << 20):
                await _send_all(stream.socket, blob[start : start + (1 << 20)])
            await stream.send_eof()

        async def receive(stream: trio.SocketStream, digests: list[str]) -> None:
            digest, full = hashlib.sha256(), True
            while True:
                data = await _receive(stream.socket, 64 * 1024, wait_first=not full, waited=False)
                if not data:
                    break
                full = len(data) == 64 * 1024
                digest.update(data)
                await trio.sleep(0)  # a reader slower than the writer now and then
            digests.append(digest.hexdigest())

        digests: list[str] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, a)
                nursery.start_soon(send, b)
                nursery.start_soon(receive, a, digests)
                nursery.start_soon(receive, b, digests)
        assert digests == [hashlib.sha256(blob).hexdigest()] * 2
        await a.aclose()
        await b.aclose()

    trio.run(main)


def test_a_closed_stream_reads_and_writes_as_a_stream_error() -> None:
    async def main() -> None:
        a, b = await _connected_pair()
        await a.aclose()
        with pytest.raises(STREAM_ERRORS):
            await _receive(a.socket, 1024, wait_first=False, waited=False)
        with pytest.raises(STREAM_ERRORS):
            await _send_all(a.socket, b"x")
        await b.aclose()

    trio.run(main)


def test_a_reset_peer_is_a_stream_error_for_the_reader_and_the_writer() -> None:
    async def main() -> None:
        a, b = await _connected_pair()
        b.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
        await b.aclose()  # linger 0: the close sends a RST
        with trio.fail_after(10):
            with pytest.raises(STREAM_ERRORS):
                await _receive(a.socket, 1024, wait_first=True, waited=False)
            with pytest.raises(STREAM_ERRORS):
                await _send_all(a.socket, b"x")
        await a.aclose()

    trio.run(main)


def test_a_cancelled_scope_stops_reads_and_writes_before_any_byte_moves() -> None:
    """An abort cancels the connection's scope: a reader whose data is already there and a
    writer whose socket has room must both stop there, not read or write on."""

    async def main() -> None:
        a, b = await _connected_pair()
        await _send_all(b.socket, b"waiting")
        with trio.CancelScope() as scope:
            scope.cancel()
            await _receive(a.socket, 1024, wait_first=False, waited=False)
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await _send_all(a.socket, b"not sent")
        assert scope.cancelled_caught
        await a.send_eof()
        with trio.fail_after(10):
            assert await _receive(a.socket, 1024, wait_first=True, waited=False) == b"waiting"
            assert await _receive(b.socket, 1024, wait_first=True, waited=False) == b""
        await a.aclose()
        await b.aclose()

    trio.run(main)
